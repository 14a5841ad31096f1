"""The HTTP API as producers, finance and tenant administrators drive it, with keys."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest

from projections.months import month_of, next_month, previous_month
from runtime.settings import Settings
from streams.kafka import end_offsets
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

pytestmark = pytest.mark.integration

MONTH = previous_month(previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC)))
KEYS = {"producer": "p-secret", "finance": "f-secret", "acme": "a-secret", "beta": "b-secret",
        "licensing": "l-secret", "operations": "o-secret"}  # fmt: skip
BATCH = "application/cloudevents-batch+json"


def keyed(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def usage(tenant: str, type_: str, quantity: int, n: int, **extra: Any) -> dict[str, Any]:
    event = cloudevent(type_, {"quantity": quantity}, tenant=tenant,
                       time=f"{MONTH}-{n % 27 + 1:02d}T10:00:00Z", id=f"{tenant}-{n}")  # fmt: skip
    event.update(extra)
    return event


def test_ingest_and_read_over_http_with_keys(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    stack.start_projector(METERING_API_KEYS=stored_keys(KEYS), METERING_INGEST_MAX_EVENTS="50")
    api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=120)
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
    )

    assert api.get(f"/v1/invoices/{MONTH}").status_code == 401
    assert api.get(f"/v1/invoices/{MONTH}", headers={"X-API-Key": "nope"}).status_code == 401

    licence = cloudevent("licensing.licenses.changed", {"users": 40, "modules": []},
                         tenant="acme", time=f"{previous_month(MONTH)}-20T00:00:00Z",
                         id="lic-1", source="licensing")  # fmt: skip
    posted = api.post(
        "/v1/events", content=orjson.dumps(licence), headers=keyed("licensing")
        | {"Content-Type": "application/cloudevents+json"},
    )  # fmt: skip
    assert (posted.status_code, posted.json()) == (202, {"accepted": 1})

    events = [usage("acme", "metering.form.submitted", 100, n) for n in range(25)]
    events += [usage("beta", "metering.chat.started", 104, n) for n in range(25)]
    for start in range(0, len(events), 20):
        posted = api.post(
            "/v1/events", content=orjson.dumps(events[start : start + 20]),
            headers=keyed("producer") | {"Content-Type": BATCH},
        )  # fmt: skip
        assert posted.status_code == 202, posted.text
    as_json = {"Content-Type": "application/json"}
    finance_posts = api.post(
        "/v1/events", content=orjson.dumps(events[0]), headers=keyed("finance") | as_json
    )
    assert finance_posts.status_code == 403

    before = asyncio.run(end_offsets(settings, (settings.topics.usage,)))
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    too_late = (dt.datetime.now(dt.UTC) - dt.timedelta(days=200)).isoformat()
    bad = [
        usage("acme", "metering.form.submitted", 1, 100),
        usage("acme", "metering.form.submitted", 0, 101),
        usage("acme", "metering.form.submitted", 1, 102, time=f"{MONTH}-03T10:00:00"),
        usage("acme", "metering.teleport.used", 1, 103),
        usage("acme", "metering.form.submitted", 1, 104, time=future),
        "not an object",
        usage("acme", "metering.form.submitted", 1, 105, time=too_late),
    ]
    rejected = api.post("/v1/events", content=orjson.dumps(bad),
                        headers=keyed("producer") | {"Content-Type": BATCH})  # fmt: skip
    assert rejected.status_code == 400
    assert [(e["index"], e["reason"], e["field"]) for e in rejected.json()["errors"]] == [
        (1, "invalid_field", "data.quantity"),
        (2, "invalid_field", "time"),
        (3, "unknown_type", "type"),
        (4, "future", "time"),
        (5, "bad_json", None),
        (6, "too_late", "time"),
    ]
    assert asyncio.run(end_offsets(settings, (settings.topics.usage,))) == before

    wrong_type = api.post("/v1/events", content=b"{}", headers=keyed("producer")
                          | {"Content-Type": "text/plain"})  # fmt: skip
    assert wrong_type.status_code == 415
    too_many = api.post("/v1/events", content=orjson.dumps(events[:51] + events[:1]),
                        headers=keyed("producer") | {"Content-Type": BATCH})  # fmt: skip
    assert too_many.status_code == 413

    stack.cli("close", MONTH)
    invoice_month = next_month(MONTH)
    body = api.get(f"/v1/invoices/{invoice_month}", headers=keyed("finance")).json()
    assert [
        (ln["tenant"], ln["service"], ln["packages"], ln["amount"]) for ln in body["lines"]
    ] == [
        ("acme", "form", 2, "64.80"),
        ("beta", "chat", 2, "64.80"),
    ]
    assert body["total"] == "129.60"
    csv = api.get(f"/v1/invoices/{invoice_month}",
                  headers=keyed("finance") | {"Accept": "text/csv"})  # fmt: skip
    assert csv.headers["content-type"].startswith("text/csv")
    assert len(csv.text.splitlines()) == 3 and ",64.80," in csv.text

    # A tenant key sees its own tenant only; another tenant is 404, finance-only paths 403.
    own = api.get(f"/v1/invoices/{invoice_month}", headers=keyed("acme")).json()
    assert [ln["tenant"] for ln in own["lines"]] == ["acme"]
    usage_acme = api.get("/v1/tenants/acme/usage", params={"month": MONTH}, headers=keyed("acme"))
    assert usage_acme.status_code == 200
    form = next(s for s in usage_acme.json()["services"] if s["service"] == "form")
    assert (form["usage"], form["users"], form["packages"]) == ("2500", 40, 2)
    for path, params in [
        ("/v1/tenants/beta/usage", {"month": MONTH}),
        ("/v1/tenants/beta/usage/history", {"until": MONTH}),
        ("/v1/tenants/beta/licenses", {}),
        ("/v1/tenants/beta/system-events", {}),
        ("/v1/threshold-crossings", {"month": MONTH, "tenant": "beta"}),
    ]:
        assert api.get(path, params=params, headers=keyed("acme")).status_code == 404
    crossings = api.get("/v1/threshold-crossings", params={"month": MONTH}, headers=keyed("acme"))
    assert {c["tenant"] for c in crossings.json()["crossings"]} == {"acme"}
    assert api.post("/v1/sql", json={"sql": "SELECT 1"}, headers=keyed("acme")).status_code == 403
    assert api.get(f"/v1/audit/{MONTH}", headers=keyed("producer")).status_code == 403
    assert api.get(f"/v1/audit/{MONTH}", headers=keyed("finance")).json()["differences"] == []
    finance_questions(api, invoice_month)

    # The Licences screen's data: registration, licence snapshot, system messages, history.
    def system(kind: str, n: int, **data: Any) -> dict[str, Any]:
        return cloudevent(f"system.event.{kind}", data, tenant="acme", id=f"sys-{n}",
                          source="jobs", time=f"{MONTH}-2{n}T08:00:00Z")  # fmt: skip

    eta = f"{next_month(MONTH)}-01T12:00:00Z"
    admin = [
        cloudevent("licensing.tenant.registered",
                   {"company": "Acme", "serial_number": "SN-7",
                    "database": {"type": "satellite", "engine": "mssql"}},
                   tenant="acme", time=f"{MONTH}-01T00:00:00Z", id="reg", source="licensing"),
        cloudevent("licensing.licenses.changed",
                   {"users": 40, "expires_on": "2027-06-30", "grace_to": "2027-07-31",
                    "modules": [{"name": "CRM", "kind": "user", "total": 40, "in_use": 38}]},
                   tenant="acme", time=f"{MONTH}-02T00:00:00Z", id="lic-2", source="licensing"),
        system("registered", 1, key="Import", scope="database", status="running",
               message="Importing 2,000 contacts", activated_at=f"{MONTH}-21T08:00:00Z",
               activated_by="u17", eta=eta),
        system("registered", 2, key="NoLogin", scope="system", status="running",
               message="Maintenance", activated_at=f"{MONTH}-22T08:00:00Z", activated_by="u1"),
        system("updated", 3, key="NoLogin", scope="system", status="finished"),
        system("registered", 4, key="FreetextRebuild", scope="database", status="running"),
        system("deleted", 5, key="FreetextRebuild", scope="database"),
    ]  # fmt: skip
    for name, batch in (("licensing", admin[:2]), ("operations", admin[2:])):
        posted = api.post("/v1/events", content=orjson.dumps(batch),
                          headers=keyed(name) | {"Content-Type": BATCH})  # fmt: skip
        assert posted.status_code == 202, posted.text
    lic = api.get("/v1/tenants/acme/licenses", headers=keyed("acme")).json()
    assert (lic["company"], lic["serial_number"], lic["database_type"]) == (
        "Acme",
        "SN-7",
        "satellite",
    )
    assert (lic["expires_on"], lic["grace_to"]) == ("2027-06-30", "2027-07-31")
    assert lic["modules"] == [
        {"name": "CRM", "kind": "user", "total": 40, "in_use": 38, "available": 2}
    ]
    assert api.get("/v1/tenants/beta/licenses", headers=keyed("acme")).status_code == 404
    listed = api.get("/v1/tenants/acme/system-events", headers=keyed("acme")).json()["events"]
    assert [(e["event"], e["status"], e["system_wide"]) for e in listed] == [
        ("NoLogin", "active", True),  # added by an administrator: only a delete ends it
        ("Import", "running", False),
    ]
    assert listed[1]["expected_completion"].startswith(f"{next_month(MONTH)}-01T12:00:00")
    assert listed[1]["activated_by"] == "u17"
    running = api.get("/v1/tenants/acme/system-events", params={"status": "running"},
                      headers=keyed("acme")).json()["events"]  # fmt: skip
    assert [e["event"] for e in running] == ["Import"]
    history = api.get("/v1/tenants/acme/usage/history", params={"until": next_month(MONTH)},
                      headers=keyed("acme")).json()  # fmt: skip
    first = next_month(MONTH)
    for _ in range(11):
        first = previous_month(first)
    assert (history["from"], history["until"]) == (first, next_month(MONTH))
    forms = [m for m in history["months"] if m["service"] == "form"]
    assert [(m["month"], m["usage"], m["amount"]) for m in forms] == [(MONTH, "2500", "64.80")]

    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    spec = api.get("/openapi.json").json()
    assert {"/v1/events", "/v1/invoices/{month}", "/v1/tenants/{tenant}/usage"} <= set(
        spec["paths"]
    )
    api.close()


def finance_questions(api: httpx.Client, invoice_month: str) -> None:
    """Preview, re-rating and exports: who may ask, and what a bad question is told."""
    preview = api.get("/v1/invoices/preview", params={"month": MONTH}, headers=keyed("finance"))
    assert (preview.json()["closed"], preview.json()["lines"]) == (True, [])
    own = api.get("/v1/invoices/preview", params={"month": invoice_month}, headers=keyed("acme"))
    assert own.status_code == 200 and {ln["tenant"] for ln in own.json()["lines"]} <= {"acme"}
    other = api.get("/v1/invoices/preview", params={"tenant": "beta"}, headers=keyed("acme"))
    assert other.status_code == 404
    assert api.get("/v1/invoices/preview", headers=keyed("producer")).status_code == 403

    plan = (Path(__file__).parents[2] / "billing" / "plan.toml").read_text()
    rerate = {"month": MONTH, "plan": plan}
    assert api.post("/v1/rerate", json=rerate, headers=keyed("acme")).status_code == 403
    same = api.post("/v1/rerate", json=rerate, headers=keyed("finance")).json()
    assert same["totals"] == {"amount": "129.60", "rerated_amount": "129.60", "difference": "0.00"}
    floats = plan.replace('price = "32.40"', "price = 32.40", 1)
    refused = api.post("/v1/rerate", json=rerate | {"plan": floats}, headers=keyed("finance"))
    assert refused.status_code == 422
    assert any("write prices as strings" in p for p in refused.json()["detail"])
    not_toml = api.post("/v1/rerate", json=rerate | {"plan": "[["}, headers=keyed("finance"))
    assert not_toml.status_code == 422
    open_month = api.post("/v1/rerate", json=rerate | {"month": invoice_month},
                          headers=keyed("finance"))  # fmt: skip
    assert open_month.status_code == 409
    assert open_month.json()["detail"].startswith(f"{invoice_month} has not been closed")
    huge = api.post("/v1/rerate", json=rerate | {"plan": "#" * 20_000}, headers=keyed("finance"))
    assert huge.status_code == 413

    path = f"/v1/exports/{MONTH}/invoice_lines"
    assert api.get(path, headers=keyed("acme")).status_code == 403
    assert api.get(f"/v1/exports/{MONTH}/secrets", headers=keyed("finance")).status_code == 404
    exported = api.get(path, headers=keyed("finance"))
    assert exported.headers["content-type"] == "application/vnd.apache.arrow.stream"
    rows = pa.ipc.open_stream(exported.content).read_all().to_pylist()
    assert sorted((r["tenant"], str(r["amount"])) for r in rows) == [
        ("acme", "64.80"), ("beta", "64.80")
    ]  # fmt: skip
