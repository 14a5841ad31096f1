"""The tenant's Licences screen in real headless Chromium (Debian's package, through
Playwright), against a real stack: sign in through the form (its CSRF token as a browser sends
it), both tabs, both languages, another tenant refused, sign out; the session cookie holds no
key, and the page's Content-Security-Policy blocks nothing it needs.
Screenshots of both tabs in both languages go to build/screenshots/ (METERING_SCREENSHOTS)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.auth import key_hash
from projections.months import month_of, previous_month
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.integration

KEYS = {"producer": "p-web", "finance": "f-web", "acme": "a-web", "beta": "b-web",
        "licensing": "l-web", "operations": "o-web"}  # fmt: skip
SHOTS = Path(os.environ.get("METERING_SCREENSHOTS") or "build/screenshots")
BATCH = "application/cloudevents-batch+json"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is needed (scripts/bootstrap.sh installs it)")
    return found


def the_events(now: dt.datetime) -> tuple[str, list[dict[str, Any]]]:
    """Three months of acme: forms under, then twice over the 1,000 included (40 users)."""
    this = month_of(now, dt.UTC)
    before, earlier = previous_month(this), previous_month(previous_month(this))
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def used(tenant: str, type_: str, data: dict[str, Any], month: str | None, n: int) -> Any:
        time = stamp if month is None else f"{month}-10T10:00:00Z"
        return cloudevent(type_, data, tenant=tenant, time=time, id=f"{tenant}-{type_}-{n}")

    events = [
        cloudevent("licensing.tenant.registered",
                   {"company": "Acme Holding", "serial_number": "SN-4711",
                    "database": {"type": "central", "engine": "mssql"}},
                   tenant="acme", time=f"{earlier}-01T00:00:00Z", id="reg", source="lic"),
        cloudevent("licensing.licenses.changed",
                   {"users": 40, "expires_on": "2027-06-30", "grace_to": None,
                    "modules": [{"name": "CRM", "kind": "user", "total": 40, "in_use": 38},
                                {"name": "Marketing", "kind": "site", "total": 1, "in_use": 1}]},
                   tenant="acme", time=f"{earlier}-01T00:00:01Z", id="lic", source="lic"),
        used("acme", "metering.form.submitted", {"quantity": 800}, earlier, 1),
        used("acme", "metering.form.submitted", {"quantity": 2500}, before, 2),
        used("acme", "metering.form.submitted", {"quantity": 1700}, None, 3),
        used("acme", "metering.storage.measured", {"bytes": 30 * 10**9}, None, 4),
        used("acme", "metering.mailing.sent", {"quantity": 9000}, None, 5),
        used("beta", "metering.chat.started", {"quantity": 5}, None, 6),
        cloudevent("system.event.registered",
                   {"key": "Import", "scope": "database", "owner": None, "status": "running",
                    "message": "Importing 2,000 contacts", "activated_at": stamp,
                    "activated_by": "u17", "eta": "2030-01-01T12:00:00Z"},
                   tenant="acme", time=stamp, id="sys-1", source="jobs"),
        cloudevent("system.event.registered",
                   {"key": "MessageOfTheDay", "scope": "system", "owner": None,
                    "status": "running", "message": "Welcome back", "activated_at": stamp,
                    "activated_by": "u1", "eta": None},
                   tenant="acme", time=stamp, id="sys-2", source="jobs"),
    ]  # fmt: skip
    return this, events


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    # Playwright's sync API runs an event loop in this thread while it is open, so the stack
    # (which uses asyncio.run) is set up before it starts.
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def policy_violations(page: Any) -> list[str]:
    """Console messages of the page in which Chromium reports a blocked resource or script."""
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text))
    return seen


def month_label(month: str) -> str:
    """A month as the English page names it."""
    return dt.date.fromisoformat(f"{month}-01").strftime("%B %Y")


def check_session_cookie(context: Any, key: str) -> None:
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["metering_session"]
    assert key not in session["value"] and key_hash(key) not in session["value"]
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/ui")
    assert "metering_key" not in cookies


def check_headers(response: Any) -> None:
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"


def test_licences_screen_in_chromium(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    stack.start_projector(METERING_API_KEYS=stored_keys(KEYS))
    with chromium_browser() as browser:
        drive(stack, browser)


def drive(stack: Stack, browser: Any) -> None:
    base = stack.env["METERING_API_URL"]
    month, events = the_events(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    # Each kind of event takes its own key.
    kinds = (("licensing", "licensing."), ("producer", "metering."), ("operations", "system."))
    for name, prefix in kinds:
        batch = [e for e in events if e["type"].startswith(prefix)]
        posted = httpx.post(f"{base}/v1/events", content=orjson.dumps(batch), timeout=60,
                            headers={"Authorization": f"Bearer {KEYS[name]}",
                                     "Content-Type": BATCH})  # fmt: skip
        assert posted.status_code == 202, posted.text
    SHOTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    console = policy_violations(page)
    page_url = f"{base}/ui/tenants/acme?month={month}"

    # Not signed in: the sign-in form, then back to the page asked for.
    page.goto(page_url)
    assert "/ui/login" in page.url
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Unknown API key."
    page.get_by_label("API key").fill(KEYS["acme"])
    with page.expect_navigation() as signed_in:
        page.get_by_role("button", name="Sign in").click()
    assert page.url.startswith(f"{base}/ui/tenants/acme")
    check_headers(signed_in.value)
    check_session_cookie(context, KEYS["acme"])
    # The stylesheet loads under the policy (no inline style is needed).
    assert page.locator("header.top").evaluate("e => getComputedStyle(e).display") == "flex"

    # Licences tab: owner, expiry, the list; a licence name opens its details.
    assert page.locator("h1").inner_text() == "Licences: Acme Holding"
    facts = page.locator("#owner-heading + dl").inner_text()
    assert "SN-4711" in facts and "30 Jun 2027" in facts
    # The next invoice as it stands: last month is not closed, its 2,500 forms are 2
    # packages above the 1,000 that 40 users include; nothing billed needs adjusting.
    assert page.locator("#invoice-heading").inner_text().endswith(month_label(month))
    assert page.locator("#invoice-total").inner_text() == "€64.80"
    assert page.locator("#pending-total").inner_text() == "€0.00"
    rows = page.locator("#licence-list tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().split("\t") == ["CRM", "User", "38", "2", "40"]
    page.get_by_role("link", name="CRM").click()
    assert "Available\n2" in page.locator("#licence-details").inner_text()
    page.screenshot(path=str(SHOTS / "licences-en.png"), full_page=True)

    # The Status tab, reached from the keyboard.
    page.focus("#tab-status")
    page.keyboard.press("Enter")
    page.wait_for_url("**tab=status**")
    database = page.locator("#database-heading + dl").inner_text()
    assert "Central database" in database and "SN-4711" in database
    form = page.locator("article[data-service=form]")
    assert "is-over" in (form.get_attribute("class") or "")
    assert form.locator(".percent").inner_text() == "170 %"
    assert form.locator(".amount").inner_text() == "€32.40"
    included = form.locator("path[data-kind=included]")
    assert included.count() == 1 and (included.get_attribute("d") or "").startswith("M")
    assert form.locator("path[data-kind=package-boundary]").count() >= 1
    over_months = [b.get_attribute("data-month") for b in form.locator("rect.bar.over").all()]
    assert over_months == [previous_month(month), month]
    storage = page.locator("article[data-service=storage]")
    assert "is-over" not in (storage.get_attribute("class") or "")
    assert storage.locator(".percent").inner_text() == "60 %"

    messages = page.locator("#system-messages tbody tr")
    listed = {r.locator("th").inner_text(): r.inner_text() for r in messages.all()}
    assert set(listed) == {"Import", "MessageOfTheDay"}
    assert "Running" in listed["Import"] and "expected 1 Jan 2030" in listed["Import"]
    assert "Active" in listed["MessageOfTheDay"] and "System-wide" in listed["MessageOfTheDay"]
    page.get_by_role("link", name="Import").click()
    assert "Importing 2,000 contacts" in page.locator("#description").inner_text()
    page.get_by_role("button", name="Refresh").click()
    assert "Importing 2,000 contacts" in page.locator("#description").inner_text()
    page.screenshot(path=str(SHOTS / "status-en.png"), full_page=True)

    # Switching language changes every label, and is remembered.
    page.get_by_role("link", name="Nederlands").click()
    assert page.locator("#tab-status").inner_text() == "Status"
    assert page.locator("#metered-heading").inner_text().startswith("Diensten met datalimiet")
    assert page.locator("#messages-heading").inner_text() == "Systeemmeldingen"
    assert form.locator(".amount").inner_text() == "€\u00a032,40"  # a no-break space in Dutch
    assert "Bezig" in page.locator("#system-messages").inner_text()
    page.screenshot(path=str(SHOTS / "status-nl.png"), full_page=True)
    page.locator("#tab-licences").click()
    assert page.locator("h1").inner_text() == "Licenties: Acme Holding"
    assert page.locator("#licence-list thead").inner_text().split("\t")[:3] == [
        "Licentie", "Soort", "In gebruik"
    ]  # fmt: skip
    page.screenshot(path=str(SHOTS / "licences-nl.png"), full_page=True)
    page.goto(page_url)  # no lang parameter: the choice was remembered
    assert page.locator("#tab-licences").inner_text() == "Licenties"

    # Every control has a name, every chart a title: what a screen reader needs.
    page.goto(page_url + "&tab=status")
    for chart in page.locator("svg[role=img]").all():
        assert (chart.locator("title").first.text_content() or "").strip()
    assert page.locator("input:not([type=hidden]):not([id])").count() == 0

    # Another tenant's page does not exist for this key; its own key opens it.
    assert page.goto(f"{base}/ui/tenants/beta").status == 404
    assert page.goto(f"{base}/ui/tenants/beta?lang=en").status == 404

    # Signing out posts the page's token; the page then asks to sign in again.
    page.goto(page_url)
    page.get_by_role("button", name="Afmelden").click()  # Dutch is still the remembered choice
    page.wait_for_url("**/ui/login")
    assert "metering_session" not in {c["name"] for c in context.cookies()}
    page.goto(page_url)
    assert "/ui/login" in page.url
    assert not [text for text in console if "Content Security Policy" in text], console
    context.close()

    dutch = browser.new_context(locale="nl-NL")
    page = dutch.new_page()
    page.set_extra_http_headers({"Authorization": f"Bearer {KEYS['beta']}"})
    assert page.goto(f"{base}/ui/tenants/beta?month={month}&tab=status").status == 200
    assert page.locator("#metered-heading").inner_text().startswith("Diensten met datalimiet")
    assert page.goto(f"{base}/ui/tenants/acme").status == 404
    assert page.goto(f"{base}/ui").url == f"{base}/ui/tenants/beta"  # a tenant key: its page
    dutch.close()

    # Finance signs in at /ui and picks any tenant from the list.
    finance = browser.new_context(locale="en-GB")
    page = finance.new_page()
    page.goto(f"{base}/ui")
    page.get_by_label("API key").fill(KEYS["finance"])
    page.get_by_role("button", name="Sign in").click()
    check_session_cookie(finance, KEYS["finance"])
    assert page.locator("#tenants li").all_inner_texts() == ["Acme Holding (acme)", "beta"]
    page.get_by_role("link", name="Acme Holding").click()
    assert page.locator("h1").inner_text() == "Licences: Acme Holding"

    # FastAPI's docs page has a policy of its own that allows its inline script and its CDN
    # (out of reach here, so Swagger UI itself does not load): Chromium refuses nothing.
    console = policy_violations(page)
    page.goto(f"{base}/docs", wait_until="domcontentloaded", timeout=60_000)
    assert not [text for text in console if "Content Security Policy" in text], console
    finance.close()
