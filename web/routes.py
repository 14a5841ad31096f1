"""The tenant's Licences screen over HTTP: server-rendered HTML, no script needed.

Tabs, the licence details, the selected system message and the language are links and query
parameters, so every control works from the keyboard and without JavaScript. A browser signs
in once with its API key (tenant or finance) and then holds a signed, expiring session in an
HttpOnly, SameSite=Strict cookie limited to `/ui` (`web/session.py`): the key itself is never
stored in the browser, nor written to a log. Every form that posts carries a CSRF token.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import duckdb
import jinja2
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from api.auth import OPEN, Principal, authenticate, presented_key, require, require_tenant
from api.service import ReadModelService
from billing.plan import Plan
from observability.access import matching_key
from projections.months import month_of, months_until, parse_month
from readmodel import queries, whatif
from runtime.clock import Clock, system_clock
from web.i18n import LABELS, Language, choose, label
from web.session import Session, Sessions, new_nonce
from web.view import Formats, messages, metered_services, next_invoice

HERE = Path(__file__).parent
log = logging.getLogger("metering.web")
SESSION_COOKIE = "metering_session"
CSRF_COOKIE = "metering_csrf"  # the sign-in form's tokens are bound to it (no session yet)
LEGACY_KEY_COOKIE = "metering_key"  # held the raw key before sessions: cleared on sign-in/out
LANG_COOKIE = "metering_lang"
MONTHS_SHOWN = 12
READERS = {"finance", "tenant", OPEN}
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
NO_TENANT: dict[str, Any] = {
    "company": None, "serial_number": None, "database_type": None, "users": None,
    "expires_on": None, "grace_to": None, "modules": [],
}  # fmt: skip

router = APIRouter(include_in_schema=False)


def page_data(
    cur: duckdb.DuckDBPyConnection, tenant: str, first: str, last: str, plan: Plan,
    now: dt.datetime, usage_topic: str,
) -> dict[str, Any]:  # fmt: skip
    """Everything one page shows, read through one cursor: with the next invoice as it
    stands `now` (`readmodel.whatif.preview`; left out if the plan cannot rate that month,
    rather than failing the whole page)."""
    try:
        preview = whatif.preview(cur, plan, now, None, usage_topic, tenant)
    except ValueError as exc:
        log.warning("no next invoice on the page of %r: %s", tenant, exc)
        preview = None
    return {
        "licences": queries.licences(cur, tenant),
        "history": queries.usage_history(cur, tenant, first, last),
        "events": queries.system_events(cur, tenant),
        "preview": preview,
    }


def _safe_next(target: str | None) -> str:
    # Only our own pages: an absolute or protocol-relative URL would make this an open redirect.
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui"


async def _form(request: Request) -> dict[str, str]:
    # A urlencoded form by hand: the page posts nothing else, and no multipart parser is needed.
    fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    return {name: values[0] for name, values in fields.items()}


class Web:
    """What the page's routes share: the read model, the templates, sessions and cookies."""

    def __init__(
        self, service: ReadModelService, fresh: Callable[[], Awaitable[None]], clock: Clock
    ) -> None:
        settings = service.settings
        self.service = service
        self.fresh = fresh
        self.clock = clock
        self.keys = settings.api_keys
        self.sessions = Sessions(self.keys, settings.session_secret, settings.session_ttl, clock)
        self.cookie_secure = settings.cookie_secure
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def language(self, request: Request) -> Language:
        return choose(
            request.query_params.get("lang"),
            request.cookies.get(LANG_COOKIE),
            request.headers.get("accept-language"),
        )

    def session(self, request: Request) -> Session | None:
        return self.sessions.load(request.cookies.get(SESSION_COOKIE))

    def principal(self, request: Request) -> Principal | None:
        """A key sent as for the API, else the session; the keyless local stack is open."""
        presented = presented_key(request)
        if presented is not None or not self.keys:
            try:
                return authenticate(self.keys, presented)
            except HTTPException:
                return None
        session = self.session(request)
        return session.principal if session else None

    def _binding(self, request: Request) -> tuple[str, str | None]:
        """What this browser's form tokens are bound to, and a pre-session nonce to set."""
        session = self.session(request)
        if session is not None:
            return session.nonce, None
        cookie = request.cookies.get(CSRF_COOKIE)
        if cookie and _NONCE.fullmatch(cookie):
            return cookie, None
        nonce = new_nonce()
        return nonce, nonce

    def csrf_ok(self, request: Request, token: str | None) -> bool:
        binding, unset = self._binding(request)
        return unset is None and self.sessions.csrf_valid(token, binding)

    def set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int = 0
    ) -> None:
        # Secure on https, and on plain http behind a TLS proxy when the deployment says so.
        response.set_cookie(
            name,
            value,
            max_age=max_age or int(self.sessions.ttl.total_seconds()),
            path="/ui",
            secure=request.url.scheme == "https" or self.cookie_secure,
            httponly=True,
            samesite="strict",
        )

    def render(
        self, request: Request, name: str, lang: Language, status: int = 200, **context: Any
    ) -> HTMLResponse:
        def t(key: str) -> str:
            return label(key, lang)

        binding, unset = self._binding(request)
        csrf = self.sessions.csrf_token(binding)
        template = self.templates.get_template(name)
        body = template.render(lang=lang, t=t, labels=LABELS, csrf=csrf, **context)
        response = HTMLResponse(body, status_code=status)
        if unset is not None:
            self.set_cookie(request, response, CSRF_COOKIE, unset)
        return response

    def login_page(
        self, request: Request, lang: Language, target: str, status: int = 200, error: str = ""
    ) -> HTMLResponse:
        signed_in = self.session(request) is not None
        return self.render(
            request, "login.html.j2", lang, status, next=target, error=error or None,
            signed_in=signed_in,
        )  # fmt: skip

    def remember_language(self, request: Request, response: Response, lang: Language) -> Response:
        if request.query_params.get("lang") == lang:
            self.set_cookie(request, response, LANG_COOKIE, lang, max_age=365 * 86400)
        return response


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


Ui = Annotated[Web, Depends(web_of)]


@router.get("/ui")
async def home(request: Request, web: Ui) -> Response:
    """A tenant key goes to its own page; finance (and the keyless local stack) pick one."""
    who = web.principal(request)
    lang = web.language(request)
    if who is None or who.role not in READERS:  # a posting or metrics key reads no tenant
        return web.login_page(request, lang, "/ui")
    if who.role == "tenant":
        return RedirectResponse(f"/ui/tenants/{urllib.parse.quote(str(who.tenant))}", 303)
    await web.fresh()
    tenants = await web.service.read(queries.tenant_list)
    response = web.render(
        request, "tenants.html.j2", lang, tenants=tenants, signed_in=who.role != OPEN,
        link=lambda **params: "?" + urllib.parse.urlencode(params),
    )  # fmt: skip
    return web.remember_language(request, response, lang)


@router.get("/ui/login")
async def login_form(request: Request, web: Ui, next: str | None = None) -> Response:
    return web.login_page(request, web.language(request), _safe_next(next))


@router.post("/ui/login")
async def login(request: Request, web: Ui) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next"))
    lang = web.language(request)
    if not web.csrf_ok(request, form.get("csrf")):
        return web.login_page(request, lang, target, 403, label("form_expired", lang))
    key = form.get("key", "").strip()
    try:
        who = authenticate(web.keys, key or None)
    except HTTPException:
        return web.login_page(request, lang, target, 401, label("bad_key", lang))
    if target == "/ui" and who.role == "tenant":
        target = f"/ui/tenants/{urllib.parse.quote(str(who.tenant))}"
    response = RedirectResponse(target, 303)
    found = matching_key(web.keys, key)
    if found is not None:  # None only on the keyless local stack, which needs no session
        web.set_cookie(request, response, SESSION_COOKIE, web.sessions.issue(found))
    # The session now binds the form tokens; a new session means new tokens.
    response.delete_cookie(CSRF_COOKIE, path="/ui")
    response.delete_cookie(LEGACY_KEY_COOKIE, path="/ui")
    return response


@router.post("/ui/logout")
async def logout(request: Request, web: Ui) -> Response:
    form = await _form(request)
    if not web.csrf_ok(request, form.get("csrf")):
        lang = web.language(request)
        return web.login_page(request, lang, "/ui", 403, label("form_expired", lang))
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    response.delete_cookie(LEGACY_KEY_COOKIE, path="/ui")
    return response


async def _tenant_data(web: Web, tenant: str, months: list[str]) -> dict[str, Any]:
    await web.fresh()
    data: dict[str, Any] = await web.service.read(
        page_data, tenant, months[0], months[-1], web.service.plan, web.clock(),
        web.service.settings.topics.usage,
    )  # fmt: skip
    if data["licences"] is None and not data["history"] and not data["events"]:
        raise HTTPException(404, f"no tenant {tenant!r}")
    # A tenant seen only through usage has no registration yet: show its usage anyway.
    data["licences"] = data["licences"] or dict(NO_TENANT)
    return data


@router.get("/ui/tenants/{tenant}")
async def tenant_page(
    request: Request,
    web: Ui,
    tenant: str,
    tab: str = "licences",
    month: str | None = None,
    module: str | None = None,
    event: str | None = None,
) -> Response:
    lang = web.language(request)
    who = web.principal(request)
    if who is None:
        target = urllib.parse.quote(str(request.url.path) + "?" + str(request.url.query))
        return RedirectResponse(f"/ui/login?next={target}", 303)
    require(who, "finance", "tenant")
    require_tenant(who, tenant)
    zone = web.service.plan.zone
    try:
        last = parse_month(month) if month else month_of(web.clock(), zone)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    months = months_until(last, MONTHS_SHOWN)
    data = await _tenant_data(web, tenant, months)
    fmt = Formats(lang, zone)
    listed = messages(data["events"], fmt)
    licences = data["licences"]
    chosen = {"tab": tab, "month": month, "lang": request.query_params.get("lang")}

    def link(**changes: str | None) -> str:
        params = {k: v for k, v in {**chosen, **changes}.items() if v}
        return "?" + urllib.parse.urlencode(params)

    response = web.render(
        request,
        "tenant.html.j2",
        lang,
        tenant=tenant,
        tab="status" if tab == "status" else "licences",
        month=last,
        month_label=fmt.month(last, "MMMM y"),
        fmt=fmt,
        licences=licences,
        selected_module=next((m for m in licences["modules"] if m.get("name") == module), None),
        services=metered_services(months, data["history"], web.service.plan, fmt),
        invoice=next_invoice(data.get("preview"), web.service.plan),
        messages=listed,
        selected_event=next((m for m in listed if m.ident == event), None),
        who="finance" if who.role in {"finance", OPEN} else f"{who.tenant}",
        signed_in=who.role != OPEN,
        other_lang="en" if lang == "nl" else "nl",
        link=link,
    )
    return web.remember_language(request, response, lang)


def register(
    app: FastAPI,
    service: ReadModelService,
    fresh: Callable[[], Awaitable[None]],
    clock: Clock = system_clock,
) -> None:
    app.state.web = Web(service, fresh, clock)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.include_router(router)
