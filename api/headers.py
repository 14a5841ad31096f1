"""Security headers on every response (issue 14, item 6): the API's JSON, the `/ui` pages and
their static files, FastAPI's docs, and every error, including the 500 that Starlette's own
outermost layer writes.

- `Content-Security-Policy`: only this origin's resources, no plugins, no `<base>`, forms post
  only here, and no framing (`frame-ancestors 'none'`). The `/ui` pages have no inline script
  or style, so nothing needs 'unsafe-inline'. FastAPI's docs pages (`/docs`, `/redoc`) load
  Swagger UI and ReDoc from their CDN and start them with an inline script: they get a policy
  of their own that allows those CDN hosts and exactly that script, by its hash.
- `X-Frame-Options: DENY` for browsers that predate `frame-ancestors`.
- `X-Content-Type-Options: nosniff`: a JSON or CSV answer is never run as a script or page.
- `Referrer-Policy: no-referrer`: the page's URLs name tenants, months and system messages,
  and nothing here needs a Referer (the forms are protected by tokens, not by origin checks).
- `Cache-Control: no-store` unless a route set its own: pages and answers show tenant data
  and must not stay in a browser's or a proxy's cache; the page's static files may.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.settings import Settings

_COMMON = (
    "base-uri 'none'",
    "object-src 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
PAGE_POLICY = "; ".join(("default-src 'self'", *_COMMON))
CDN = "https://cdn.jsdelivr.net"  # where FastAPI's docs pages load Swagger UI and ReDoc from
FIXED = (
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
CACHEABLE = ("/ui/static/",)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(html: str) -> list[str]:
    """CSP sources for each inline script of a page, by the SHA-256 of its text."""
    found = []
    for script in _INLINE_SCRIPT.findall(html):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        found.append(f"'sha256-{digest}'")
    return found


def docs_policy(hashes: Iterable[str]) -> str:
    return "; ".join(
        (
            "default-src 'self'",
            " ".join(("script-src 'self'", CDN, *sorted(set(hashes)))),
            # Swagger UI and ReDoc style their own elements; styles cannot run code.
            f"style-src 'self' {CDN} https://fonts.googleapis.com 'unsafe-inline'",
            "font-src 'self' https://fonts.gstatic.com",
            "img-src 'self' data: https://fastapi.tiangolo.com",
            "worker-src 'self' blob:",
            *_COMMON,
        )
    )


class DocsPolicies:
    """The docs pages' policy, from the pages FastAPI renders for this app (as its own routes
    call them), so that a hash matches the script FastAPI serves and nothing else."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._by_root: dict[str, str] = {}

    def paths(self) -> set[str]:
        app = self.app
        if not app.openapi_url:
            return set()
        pages = [app.docs_url, app.redoc_url]
        if app.docs_url:
            pages.append(app.swagger_ui_oauth2_redirect_url)
        return {page for page in pages if page}

    def policy(self, root_path: str) -> str:
        root = root_path.rstrip("/")
        if root not in self._by_root:
            self._by_root[root] = docs_policy(script_hashes(self._pages(root)))
        return self._by_root[root]

    def _pages(self, root: str) -> str:
        app = self.app
        openapi_url = root + str(app.openapi_url)
        redirect = app.swagger_ui_oauth2_redirect_url
        swagger = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + redirect if redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        redoc = get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc")
        pages = (swagger, redoc, get_swagger_ui_oauth2_redirect_html())
        return "\n".join(bytes(page.body).decode() for page in pages)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class SecurityHeaders:
    """Pure ASGI: adds the headers to `http.response.start`, leaving the body stream alone (a
    `BaseHTTPMiddleware` would buffer streamed answers and change how errors travel)."""

    def __init__(self, app: ASGIApp, headers_for: Callable[[Scope], list[tuple[str, str]]]):
        self.app = app
        self.headers_for = headers_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(name.encode(), value.encode()) for name, value in self.headers_for(scope)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                # A route that set its own header keeps it; every other answer gets ours.
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security_headers(app: FastAPI, settings: Settings) -> None:
    """Wrap the whole app in the headers layer. Nothing in the settings changes the headers:
    `cookie_secure` (TLS at a proxy) is the cookies' business, in `web/routes.py`."""
    docs = DocsPolicies(app)
    docs_pages = docs.paths()

    def headers_for(scope: Scope) -> list[tuple[str, str]]:
        path = _route_path(scope)
        policy = docs.policy(scope.get("root_path", "")) if path in docs_pages else PAGE_POLICY
        headers = [("content-security-policy", policy), *FIXED]
        if not path.startswith(CACHEABLE):
            headers.append(("cache-control", "no-store"))
        return headers

    build = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeaders(build(), headers_for)

    # Around the built stack rather than through add_middleware: Starlette always puts its
    # ServerErrorMiddleware outermost, and its 500 answers (like any layer's, the body limit's
    # 413 included) must carry the headers too. The layer reads no body and no key.
    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]
