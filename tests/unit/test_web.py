"""The Licences screen: its pure parts (language choice, chart geometry, formatting), and over
HTTP without a broker (the read model faked): sign-in through signed sessions, CSRF tokens on
every form that posts, and the security headers of the whole app."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from api.auth import key_hash
from api.headers import script_hashes
from api.service import ReadModelService
from billing.plan import load_plan
from runtime.settings import ApiKey, Settings
from server.app import create_app
from web.i18n import LABELS, choose, label
from web.view import BOTTOM, HEIGHT, TOP, Formats, chart, messages, metered_services

PLAN = load_plan()
MONTHS = ["2026-08", "2026-09", "2026-10", "2026-11"]
EN = Formats("en", dt.UTC)
NL = Formats("nl", dt.UTC)


@pytest.mark.parametrize(
    ("explicit", "remembered", "header", "expected"),
    [
        (None, None, None, "en"),
        (None, None, "nl-NL,nl;q=0.9,en;q=0.8", "nl"),
        (None, None, "de-DE, nl-BE;q=0.5, en;q=0.4", "nl"),
        (None, None, "en;q=0.2, nl;q=0.9", "nl"),
        (None, None, "nl;q=0, fr", "en"),
        (None, None, "nl;q=abc, en-GB", "en"),
        (None, "nl", "en", "nl"),
        ("en", "nl", "nl", "en"),
        ("xx", None, "nl", "nl"),
    ],
)
def test_language_choice(
    explicit: str | None, remembered: str | None, header: str | None, expected: str
) -> None:
    assert choose(explicit, remembered, header) == expected


def test_every_label_exists_in_both_languages() -> None:
    assert all(set(texts) == {"nl", "en"} and all(texts.values()) for texts in LABELS.values())
    assert LABELS["metered_services"]["nl"] == "Diensten met datalimiet"
    assert LABELS["system_messages"]["nl"] == "Systeemmeldingen"


def row(month: str, usage: str, included: str, packages: int, **extra: Any) -> dict[str, Any]:
    return {"month": month, "service": "form", "usage": usage, "included": included,
            "packages": packages, "unit": "form submissions", "percent": "0", "amount": "0.00",
            "currency": "EUR", **extra}  # fmt: skip


def test_chart_draws_included_and_package_boundaries_per_month() -> None:
    rows = {
        "2026-09": row("2026-09", "800", "1000", 0),
        "2026-10": row("2026-10", "2500", "1000", 2),
        "2026-11": row("2026-11", "1700", "2000", 0),  # more users: a higher threshold
    }
    drawn = chart("form", MONTHS, rows, PLAN, EN)
    assert [b.over for b in drawn.bars] == [False, False, True, False]
    assert [b.usage for b in drawn.bars] == [0, 800, 2500, 1700]
    top = Decimal(2500) * Decimal("1.15")

    def y(value: int) -> str:
        return f"{TOP + (HEIGHT - TOP - BOTTOM) * (1 - float(Decimal(value) / top)):.1f}"

    # August has no data: the line starts with September, and steps up in November.
    assert drawn.included_path.startswith(f"M{drawn.left + (drawn.width - 60) / 4:.1f} {y(1000)}")
    assert f"V{y(2000)}" in drawn.included_path
    # Boundaries at included + k x 1,000 up to the top of the chart (2,875).
    assert len(drawn.boundary_paths) == 1
    assert y(2000) in drawn.boundary_paths[0] and y(3000) not in drawn.boundary_paths[0]
    tallest = max(drawn.bars, key=lambda b: b.height)
    assert tallest.month == "2026-10" and tallest.y + tallest.height == HEIGHT - BOTTOM
    assert "over threshold: 2" in tallest.title


def test_chart_without_any_usage_is_flat_and_labelled() -> None:
    drawn = chart("storage", MONTHS, {}, PLAN, NL)
    assert all(b.height == 0 and not b.over for b in drawn.bars)
    assert drawn.included_path == "" and drawn.boundary_paths == []
    assert drawn.unit == "GB"
    assert (
        drawn.aria_label
        == "Gebruikte opslagruimte: gebruik per maand, augustus 2026 tot november 2026"
    )


@pytest.mark.parametrize(
    ("fmt", "money", "number", "day"),
    [
        (EN, "€1,296.00", "1,234.5", "30 Jun 2027"),
        (NL, "€\u00a01.296,00", "1.234,5", "30 jun 2027"),
    ],
)
def test_formats_to_the_cent(fmt: Formats, money: str, number: str, day: str) -> None:
    assert fmt.money(Decimal("1296.00"), "EUR") == money
    assert fmt.number(Decimal("1234.500000000")) == number
    assert fmt.day("2027-06-30") == day


def test_this_month_figures_per_service() -> None:
    history = [row("2026-11", "1700", "1000", 1, percent="170.0", amount="32.40")]
    services = {s.chart.service: s for s in metered_services(MONTHS, history, PLAN, NL)}
    assert list(services) == ["storage", "mailing", "customer_center", "chat", "form"]
    form = services["form"]
    assert (form.percent, form.amount, form.packages, form.over) == (
        "170 %",
        "€\u00a032,40",
        1,
        True,
    )
    assert (services["chat"].amount, services["chat"].over) == ("€\u00a00,00", False)
    assert form.usage == "1.700 formulierverzendingen"


def test_services_are_named_in_both_languages_by_their_table_not_the_labels() -> None:
    assert PLAN.catalog["chat"].unit.nl == "chatsessies"
    assert PLAN.catalog["chat"].label.en == "Chat sessions started"
    # The page's own labels no longer restate a service or its unit.
    assert not [key for key in LABELS if key.startswith(("service_", "unit:"))]


def test_system_messages_show_expected_completion_until_finished() -> None:
    rows = [
        {"event": "Import", "status": "running", "message": "m",
         "activated": "2026-11-02T08:00:00+00:00", "activated_by": "u17", "finished": None,
         "expected_completion": "2026-11-03T12:00:00+00:00",
         "system_wide": False, "scope": "database", "owner": None},
        {"event": "NoLogin", "status": "active", "message": None, "activated": None,
         "activated_by": None, "finished": None, "expected_completion": None,
         "system_wide": True, "scope": "system", "owner": None},
        {"event": "SAINT", "status": "finished", "message": "done", "activated": None,
         "activated_by": "u2", "finished": "2026-11-01T09:30:00+00:00",
         "expected_completion": "2026-11-01T10:00:00+00:00", "system_wide": False,
         "scope": "user", "owner": "u2"},
    ]  # fmt: skip
    shown = messages(rows, EN)
    assert [m.finished for m in shown] == [
        "expected 3 Nov 2026, 12:00:00", "\u2013", "1 Nov 2026, 09:30:00"
    ]  # fmt: skip
    assert [m.type for m in shown] == ["Database", "System-wide", "User"]
    assert [m.status for m in messages(rows, NL)] == ["Bezig", "Actief", "Voltooid"]
    assert shown[2].ident == "SAINT:user:u2"


# --- Over HTTP: sessions, CSRF and headers ---------------------------------------------------

KEYS = {
    "finance": "f-unit-7d1e",
    "acme": "a-unit-39c0",
    "beta": "b-unit-e51f",
    "producer": "p-unit",
}
CONFIGURED = [
    ApiKey(role="finance", sha256=key_hash(KEYS["finance"])),
    ApiKey(role="tenant", tenant="acme", sha256=key_hash(KEYS["acme"])),
    ApiKey(role="tenant", tenant="beta", sha256=key_hash(KEYS["beta"])),
    ApiKey(role="producer", sha256=key_hash(KEYS["producer"])),
]
SECRET = SecretStr("unit-test-session-secret-0123456789")
HOSTILE = "<script>alert('x')</script>"
LICENCES = {
    "tenant": "acme", "company": HOSTILE, "serial_number": "SN-4711", "database_type": "central",
    "users": 40, "expires_on": "2027-06-30", "grace_to": None, "snapshot_time": None,
    "modules": [{"name": "CRM", "kind": "user", "total": 40, "in_use": 38, "available": 2}],
}  # fmt: skip
PREVIEW = {
    "usage_month": "2026-10", "invoice_month": "2026-11", "closed": False, "lines": [{}, {}],
    "total": "97.20", "pending_total": "32.40",
}  # fmt: skip
TENANTS = [{"tenant": "acme", "company": HOSTILE}, {"tenant": "beta", "company": None}]
HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
FORM = re.compile(r'name="csrf" value="([^"]+)"')


async def fake_read(query: Callable[..., Any], *args: Any) -> Any:
    """The read model, faked: acme registered (with a hostile company name), beta usage only."""
    if query.__name__ == "tenant_list":
        return TENANTS
    if query.__name__ == "page_data":
        tenant = args[0]
        if tenant == "acme":
            return {"licences": dict(LICENCES), "history": [], "events": [], "preview": PREVIEW}
        if tenant == "beta":
            return {"licences": None, "history": [], "events": [
                {"event": "Import", "status": "running", "message": "m", "activated": None,
                 "activated_by": "u1", "finished": None, "expected_completion": None,
                 "system_wide": False, "scope": "database", "owner": None}]}  # fmt: skip
        return {"licences": None, "history": [], "events": []}
    return []


def settings(**overrides: Any) -> Settings:
    given: dict[str, Any] = {"api_keys": CONFIGURED, "session_secret": SECRET, **overrides}
    return Settings(kafka_bootstrap="unused:1", **given)


def app_of(config: Settings) -> FastAPI:
    service = ReadModelService(config, PLAN)
    service.read = fake_read  # type: ignore[method-assign]

    async def caught_up(wait_seconds: float) -> None:
        return None

    service.caught_up = caught_up  # type: ignore[method-assign]
    return create_app(service)


@contextlib.asynccontextmanager
async def browser(
    app: FastAPI | None = None, base: str = "http://testserver", **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app or app_of(settings(**overrides)))
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        yield client


def token_in(page: httpx.Response) -> str:
    found = FORM.search(page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str, next: str = "/ui") -> httpx.Response:
    token = token_in(await client.get("/ui/login"))
    return await client.post("/ui/login", data={"csrf": token, "key": key, "next": next})


def cookie_header(answer: httpx.Response, name: str) -> str:
    found = [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert len(found) == 1, answer.headers.get_list("set-cookie")
    return found[0]


async def test_sign_in_needs_the_forms_csrf_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with browser() as client, browser() as other:
        form = await client.get("/ui/login")
        assert form.status_code == 200 and "metering_csrf=" in form.headers["set-cookie"]
        foreign = token_in(await other.get("/ui/login"))  # another browser's own token
        for token in (None, "", "forged", foreign):
            data = {"key": KEYS["acme"], "next": "/ui"}
            if token is not None:
                data["csrf"] = token
            refused = await client.post("/ui/login", data=data)
            assert refused.status_code == 403, token
            assert label("form_expired", "en") in refused.text and 'role="alert"' in refused.text
            assert "metering_session" not in refused.headers.get("set-cookie", "")
        assert (await client.get("/ui/tenants/acme")).status_code == 303  # still signed out

        signed = await client.post(
            "/ui/login", data={"csrf": token_in(form), "key": KEYS["acme"], "next": "/ui"}
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/ui/tenants/acme"
        session = cookie_header(signed, "metering_session")
        assert KEYS["acme"] not in session and key_hash(KEYS["acme"]) not in session
        for flag in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
            assert flag in session
        assert "Secure" not in session  # plain http, no TLS proxy configured
        assert (await client.get("/ui/tenants/acme")).status_code == 200
    assert KEYS["acme"] not in caplog.text and key_hash(KEYS["acme"]) not in caplog.text


async def test_a_wrong_key_with_a_good_token_is_refused_and_may_try_again() -> None:
    async with browser() as client:
        wrong = await sign_in(client, "not-a-key")
        assert wrong.status_code == 401 and "Unknown API key." in wrong.text
        again = await client.post(
            "/ui/login", data={"csrf": token_in(wrong), "key": KEYS["acme"], "next": "/ui"}
        )
        assert again.status_code == 303


async def test_sign_out_needs_the_pages_token() -> None:
    async with browser() as client:
        assert (await sign_in(client, KEYS["acme"])).status_code == 303
        page = await client.get("/ui/tenants/acme")
        assert 'action="/ui/logout"' in page.text
        for data in ({}, {"csrf": "forged"}):
            refused = await client.post("/ui/logout", data=data)
            assert refused.status_code == 403 and label("form_expired", "en") in refused.text
            assert (await client.get("/ui/tenants/acme")).status_code == 200  # still signed in
        out = await client.post("/ui/logout", data={"csrf": token_in(page)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert (await client.get("/ui/tenants/acme")).status_code == 303


async def test_the_old_raw_key_cookie_no_longer_signs_in() -> None:
    async with browser() as client:
        client.cookies.set("metering_key", KEYS["finance"], path="/ui")
        answer = await client.get("/ui/tenants/acme")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")


async def test_a_removed_key_ends_its_sessions_across_a_restart() -> None:
    async with browser() as client:
        await sign_in(client, KEYS["acme"])
        cookie = client.cookies["metering_session"]
    restarted = app_of(settings())  # same secret: the session goes on
    async with browser(restarted) as client:
        client.cookies.set("metering_session", cookie, path="/ui")
        assert (await client.get("/ui/tenants/acme")).status_code == 200
    removed = app_of(settings(api_keys=[k for k in CONFIGURED if k.tenant != "acme"]))
    async with browser(removed) as client:
        client.cookies.set("metering_session", cookie, path="/ui")
        assert (await client.get("/ui/tenants/acme")).status_code == 303
    async with browser(app_of(settings(session_secret=None))) as client:  # a new random secret
        client.cookies.set("metering_session", cookie, path="/ui")
        assert (await client.get("/ui/tenants/acme")).status_code == 303


async def test_cookies_are_secure_on_https_or_behind_a_tls_proxy() -> None:
    async with browser(base="https://testserver") as client:
        assert "Secure" in cookie_header(await client.get("/ui/login"), "metering_csrf")
        assert "Secure" in cookie_header(await sign_in(client, KEYS["acme"]), "metering_session")
    async with browser(cookie_secure=True) as client:  # plain http, TLS at a proxy
        form = await client.get("/ui/login")
        csrf_cookie = cookie_header(form, "metering_csrf")
        assert "Secure" in csrf_cookie
        signed = await client.post(
            "/ui/login",
            data={"csrf": token_in(form), "key": KEYS["acme"], "next": "/ui"},
            headers={"cookie": csrf_cookie.split(";")[0]},  # the jar keeps Secure ones for https
        )
        assert signed.status_code == 303
        assert "Secure" in cookie_header(signed, "metering_session")
        bearer = {"Authorization": f"Bearer {KEYS['acme']}"}
        lang = await client.get("/ui/tenants/acme?lang=nl", headers=bearer)
        assert "Secure" in cookie_header(lang, "metering_lang")


async def test_tenant_isolation_escaping_and_redirects_hold() -> None:
    async with browser() as client:
        hostile = await sign_in(client, KEYS["acme"], next="https://evil.example/ui/")
        assert hostile.headers["location"] == "/ui/tenants/acme"  # not elsewhere
        page = await client.get("/ui/tenants/acme")
        assert HOSTILE not in page.text and "&lt;script&gt;" in page.text
        assert (await client.get("/ui/tenants/beta")).status_code == 404
        assert (await client.get("/ui/tenants/nobody")).status_code == 404
    async with browser() as client:
        kept = await sign_in(client, KEYS["beta"], next="/ui/tenants/beta?tab=status")
        assert kept.headers["location"] == "/ui/tenants/beta?tab=status"
        assert (await sign_in(client, KEYS["beta"], next="//evil.example")).headers[
            "location"
        ] == "/ui/tenants/beta"
        assert (await client.get("/ui/tenants/acme")).status_code == 404


async def test_finance_lists_the_tenants_and_a_bearer_key_still_opens_a_page() -> None:
    async with browser() as client:
        signed = await sign_in(client, KEYS["finance"])
        assert signed.headers["location"] == "/ui"
        listed = await client.get("/ui")
        assert listed.status_code == 200 and 'id="tenants"' in listed.text
        assert HOSTILE not in listed.text and "/ui/tenants/beta" in listed.text
        assert (await client.get("/ui/tenants/beta")).status_code == 200
    async with browser() as client:
        bearer = {"Authorization": f"Bearer {KEYS['beta']}"}
        assert (await client.get("/ui/tenants/beta", headers=bearer)).status_code == 200
        assert (await client.get("/ui/tenants/acme", headers=bearer)).status_code == 404


async def test_a_key_that_reads_no_tenant_gets_no_tenant_list() -> None:
    async with browser() as client:
        assert (await sign_in(client, KEYS["producer"])).status_code == 303
        home = await client.get("/ui")
        assert home.status_code == 200 and 'id="tenants"' not in home.text
        assert 'action="/ui/login"' in home.text
        assert (await client.get("/ui/tenants/acme")).status_code == 403


async def test_the_keyless_local_stack_needs_no_sign_in() -> None:
    async with browser(api_keys=[], session_secret=None) as client:
        listed = await client.get("/ui")
        assert listed.status_code == 200 and 'id="tenants"' in listed.text
        assert 'action="/ui/logout"' not in listed.text
        page = await client.get("/ui/tenants/acme")
        assert page.status_code == 200 and "metering_session" not in str(client.cookies)
        # The next invoice as it stands, with the adjustments still to be billed.
        assert re.search(r'id="invoice-total">€\s?97\.20<', page.text), page.text
        assert re.search(r'id="pending-total">€\s?32\.40<', page.text)
        assert "November 2026" in page.text
        assert 'id="next-invoice"' not in (await client.get("/ui/tenants/beta")).text


def assert_security_headers(answer: httpx.Response, cached: bool = False) -> None:
    for name, value in HEADERS.items():
        assert answer.headers.get(name) == value, (answer.request.url, name)
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy.split("style-src")[0]  # never for scripts
    assert (answer.headers.get("cache-control") == "no-store") is not cached


async def test_security_headers_on_every_answer() -> None:
    app = app_of(settings())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await sign_in(client, KEYS["acme"])
        finance = {"Authorization": f"Bearer {KEYS['finance']}"}
        expected = {
            "/ui": 303, "/ui/login": 200, "/ui/tenants/acme": 200, "/ui/tenants/beta": 404,
            "/ui/tenants/acme?month=bad": 400, "/v1/invoices/2026-10": 401, "/healthz": 200,
            "/openapi.json": 200, "/nowhere": 404, "/boom": 500,
        }  # fmt: skip
        for path, status in expected.items():
            answer = await client.get(path)
            assert answer.status_code == status, path
            assert_security_headers(answer)
        invoice = await client.get("/v1/invoices/2026-10", headers=finance)
        assert invoice.status_code == 200
        assert_security_headers(invoice)
        refused = await client.post("/ui/logout", data={})
        assert refused.status_code == 403
        assert_security_headers(refused)
        assert_security_headers(await client.get("/ui/static/page.css"), cached=True)
        # The body limit refuses before anything else looks, yet its answer has the headers.
        oversized = await client.post("/ui/login", content=b"k" * (64 << 10))
        assert oversized.status_code == 413
        assert_security_headers(oversized)


async def test_the_docs_pages_allow_their_cdn_and_exactly_their_inline_scripts() -> None:
    async with browser() as client:
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            page = await client.get(path)
            assert page.status_code == 200
            policy = page.headers["content-security-policy"]
            assert "script-src 'self' https://cdn.jsdelivr.net" in policy
            assert (
                "frame-ancestors 'none'" in policy
                and "'unsafe-inline'" not in policy.split("style-src")[0]
            )
            assert all(h in policy for h in script_hashes(page.text)), path
        assert script_hashes((await client.get("/docs")).text)  # Swagger UI starts inline


def test_no_page_has_inline_script_or_style() -> None:
    from pathlib import Path

    for template in (Path(__file__).parents[2] / "web" / "templates").glob("*.j2"):
        text = template.read_text()
        assert "<script" not in text and "<style" not in text and "style=" not in text
        assert not re.search(r"\son[a-z]+=", text), template
