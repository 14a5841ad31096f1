"""The tenant's Licences screen over HTTP: server-rendered HTML, no script needed.

Tabs, the licence details, the selected system message and the language are links and query
parameters, so every control works from the keyboard and without JavaScript. A browser signs
in once with its API key (tenant or finance); the key then travels in an HttpOnly,
SameSite=Strict cookie limited to `/ui`, and is never written to a log.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from api.auth import OPEN, Principal, authenticate, presented_key, require, require_tenant
from api.service import ReadModelService
from metering.clock import Clock, system_clock
from projections.months import month_of, months_until, parse_month
from projections.readmodel import queries
from web.i18n import LABELS, Language, choose, label
from web.view import Formats, messages, metered_services

HERE = Path(__file__).parent
KEY_COOKIE = "metering_key"
LANG_COOKIE = "metering_lang"
MONTHS_SHOWN = 12


def page_data(cur: duckdb.DuckDBPyConnection, tenant: str, first: str, last: str) -> dict[str, Any]:
    """Everything one page shows, read through one cursor."""
    return {
        "licences": queries.licences(cur, tenant),
        "history": queries.usage_history(cur, tenant, first, last),
        "events": queries.system_events(cur, tenant),
    }


def _safe_next(target: str | None) -> str:
    # Only our own pages: an absolute or protocol-relative URL would make this an open redirect.
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui"


def register(
    app: FastAPI,
    service: ReadModelService,
    fresh: Callable[[], Awaitable[None]],
    clock: Clock = system_clock,
) -> None:
    keys = service.settings.api_keys
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    def language(request: Request) -> Language:
        return choose(
            request.query_params.get("lang"),
            request.cookies.get(LANG_COOKIE),
            request.headers.get("accept-language"),
        )

    def render(name: str, lang: Language, status: int = 200, **context: Any) -> HTMLResponse:
        def t(key: str) -> str:
            return label(key, lang)

        body = templates.get_template(name).render(lang=lang, t=t, labels=LABELS, **context)
        return HTMLResponse(body, status_code=status)

    def principal(request: Request) -> Principal | None:
        presented = presented_key(request) or request.cookies.get(KEY_COOKIE)
        try:
            return authenticate(keys, presented)
        except HTTPException:
            return None

    def remember_language(request: Request, response: Response, lang: Language) -> Response:
        if request.query_params.get("lang") == lang:
            response.set_cookie(
                LANG_COOKIE, lang, max_age=365 * 86400, path="/ui", samesite="strict"
            )
        return response

    @app.get("/ui", include_in_schema=False)
    async def home(request: Request) -> Response:
        """A tenant key goes to its own page; finance (and the keyless local stack) pick one."""
        who = principal(request)
        lang = language(request)
        if who is None or who.role == "producer":
            return render("login.html.j2", lang, next="/ui", error=None, signed_in=False)
        if who.role == "tenant":
            return RedirectResponse(f"/ui/tenants/{urllib.parse.quote(str(who.tenant))}", 303)
        await fresh()
        tenants = await service.read(queries.tenant_list)
        response = render(
            "tenants.html.j2", lang, tenants=tenants, signed_in=who.role != OPEN,
            link=lambda **params: "?" + urllib.parse.urlencode(params),
        )  # fmt: skip
        return remember_language(request, response, lang)

    @app.get("/ui/login", include_in_schema=False)
    async def login_form(request: Request, next: str | None = None) -> Response:
        lang = language(request)
        return render("login.html.j2", lang, next=_safe_next(next), error=None, signed_in=False)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        target = _safe_next((form.get("next") or [""])[0])
        lang = language(request)
        try:
            who = authenticate(keys, key or None)
        except HTTPException:
            error = label("bad_key", lang)
            return render("login.html.j2", lang, 401, next=target, error=error, signed_in=False)
        if target == "/ui" and who.role == "tenant":
            target = f"/ui/tenants/{urllib.parse.quote(str(who.tenant))}"
        response = RedirectResponse(target, 303)
        response.set_cookie(
            KEY_COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/ui",
        )
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(KEY_COOKIE, path="/ui")
        return response

    @app.get("/ui/tenants/{tenant}", include_in_schema=False)
    async def tenant_page(
        request: Request,
        tenant: str,
        tab: str = "licences",
        month: str | None = None,
        module: str | None = None,
        event: str | None = None,
    ) -> Response:
        lang = language(request)
        who = principal(request)
        if who is None:
            target = urllib.parse.quote(str(request.url.path) + "?" + str(request.url.query))
            return RedirectResponse(f"/ui/login?next={target}", 303)
        require(who, "finance", "tenant")
        require_tenant(who, tenant)
        zone = service.plan.zone
        try:
            last = parse_month(month) if month else month_of(clock(), zone)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        months = months_until(last, MONTHS_SHOWN)
        await fresh()
        data = await service.read(page_data, tenant, months[0], months[-1])
        if data["licences"] is None and not data["history"] and not data["events"]:
            raise HTTPException(404, f"no tenant {tenant!r}")
        fmt = Formats(lang, zone)
        listed = messages(data["events"], fmt)
        # A tenant seen only through usage has no registration yet: show its usage anyway.
        licences = data["licences"] or {
            "company": None, "serial_number": None, "database_type": None, "users": None,
            "expires_on": None, "grace_to": None, "modules": [],
        }  # fmt: skip
        chosen = {"tab": tab, "month": month, "lang": request.query_params.get("lang")}

        def link(**changes: str | None) -> str:
            params = {k: v for k, v in {**chosen, **changes}.items() if v}
            return "?" + urllib.parse.urlencode(params)

        response = render(
            "tenant.html.j2",
            lang,
            tenant=tenant,
            tab="status" if tab == "status" else "licences",
            month=last,
            month_label=fmt.month(last, "MMMM y"),
            fmt=fmt,
            licences=licences,
            selected_module=next((m for m in licences["modules"] if m.get("name") == module), None),
            services=metered_services(months, data["history"], service.plan, fmt),
            messages=listed,
            selected_event=next((m for m in listed if m.ident == event), None),
            who="finance" if who.role in {"finance", OPEN} else f"{who.tenant}",
            signed_in=who.role != OPEN,
            other_lang="en" if lang == "nl" else "nl",
            link=link,
        )
        return remember_language(request, response, lang)
