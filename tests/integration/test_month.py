"""A month through the real broker: the cases of issue 2, hand-computed to the cent.

Months are relative to today so that nothing is "too late": M is the month before last,
M1 last month and M2 this month.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest

from metering.settings import Settings
from projections.months import month_of, next_month, previous_month
from projections.tenant import TenantState
from streams.kafka import read_all
from streams.progress import wait_for_workers
from tests.conftest import Stack
from tests.factories import cloudevent as ce

pytestmark = pytest.mark.integration

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
M2 = month_of(NOW, UTC)
M1 = previous_month(M2)
M = previous_month(M1)
M0 = previous_month(M)
GB = 10**9


def at(month: str, day: int, clock: str = "12:00:00", offset: str = "Z") -> str:
    return f"{month}-{day:02d}T{clock}{offset}"


def last_day(month: str) -> int:
    first_next = dt.date(int(next_month(month)[:4]), int(next_month(month)[5:]), 1)
    return (first_next - dt.timedelta(days=1)).day


LAST = last_day(M)
MAILING = "metering.mailing.sent"
STORAGE = "metering.storage.measured"
CHAT = "metering.chat.started"
FORM = "metering.form.submitted"
LOGIN = "metering.customer_center.login"
MAIL, MAIL_EU = "crm/mailing", "crm/mailing-eu"

LICENCES = [
    ce(
        "licensing.tenant.registered",
        {"company": "Acme", "serial_number": "1", "database": {"type": "central", "engine": "x"}},
        tenant="acme", time=at(M0, 19), id="reg-acme", source="licensing",
    ),
    ce("licensing.licenses.changed", {"users": 40, "modules": []},
               tenant="acme", time=at(M0, 20), id="lic-1", source="licensing"),
    # mid-month seat change across the 50-user band: all of M is rated for 60 users
    ce("licensing.licenses.changed", {"users": 60, "modules": []},
               tenant="acme", time=at(M, 15), id="lic-2", source="licensing"),
]  # fmt: skip

USAGE = [
    ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(M, 2), id="m1", source=MAIL),
    ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(M, 3), id="m2", source=MAIL),
    ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(M, 4), id="m3", source=MAIL),
    # a retry of m2: counted once
    ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(M, 3), id="m2", source=MAIL),
    # the same id from another source is another event
    ce(MAILING, {"quantity": 5_000}, tenant="acme", time=at(M, 5), id="m1", source=MAIL_EU),
    # out of order, and storage going down after its peak: billed on the 130 GB peak
    ce(STORAGE, {"bytes": 40 * GB}, tenant="acme", time=at(M, 20), id="s3"),
    ce(STORAGE, {"bytes": 130 * GB}, tenant="acme", time=at(M, 10), id="s2"),
    ce(STORAGE, {"bytes": 80 * GB}, tenant="acme", time=at(M, 3), id="s1"),
    ce(CHAT, {"quantity": 1_000}, tenant="acme", time=at(M, 6), id="c1"),
    ce(FORM, {"quantity": 1_500}, tenant="acme", time=at(M, 7), id="f1"),
    # UTC offsets move these into the neighbouring months
    ce(FORM, {"quantity": 5_000}, tenant="acme", time=at(M, LAST, "23:30:00", "-02:00"), id="fn"),
    ce(CHAT, {"quantity": 3_000}, tenant="acme", time=at(M, 1, "01:00:00", "+02:00"), id="cp"),
    # next month's usage: on the next close, not this one
    ce(LOGIN, {"quantity": 5_000}, tenant="acme", time=at(M1, 5), id="l-next"),
    # beta has no licence snapshot: 0 users, first band
    ce(LOGIN, {"quantity": 900}, tenant="beta", time=at(M, 8), id="l1"),
    ce(LOGIN, {"quantity": 1_600}, tenant="beta", time=at(M, 9), id="l2"),
    ce(CHAT, {"quantity": 1_400}, tenant="beta", time=at(M, 9), id="c1"),
    ce(FORM, {}, tenant="beta", time=at(M, 9), id="f0"),  # quantity defaults to 1
    ce(FORM, {"quantity": 799}, tenant="beta", time=at(M, 9), id="f1"),
]  # fmt: skip

NO_SUBJECT = ce(MAILING, {}, time=at(M, 3), id="b6")
del NO_SUBJECT["subject"]
FUTURE = (NOW + dt.timedelta(hours=1)).isoformat()
BAD = [
    b"{not json",
    orjson.dumps(ce("billing.unknown", {}, time=at(M, 3), id="x1")),
    orjson.dumps(ce(MAILING, {"quantity": 0}, tenant="acme", time=at(M, 3), id="b1")),
    orjson.dumps(ce("metering.teleport.used", {}, tenant="acme", time=at(M, 3), id="b2")),
    orjson.dumps(ce(STORAGE, {"bytes": -5}, tenant="acme", time=at(M, 3), id="b3")),
    orjson.dumps(ce(MAILING, {"quantity": 9_999}, tenant="acme", time=f"{M}-03T12:00", id="b4")),
    orjson.dumps(ce(MAILING, {"quantity": 9_999}, tenant="acme", time=FUTURE, id="b5")),
    orjson.dumps(NO_SUBJECT),
    orjson.dumps(ce("system.event.registered", {"key": "Import"}, time=at(M, 3), id="b7")),
]  # fmt: skip


def line_view(line: dict[str, Any]) -> tuple[Any, ...]:
    return (
        line["tenant"], line["usage_month"], line["service"], line["kind"], line["usage"],
        line["users"], line["included"], line["packages"], line["unit_price"], line["amount"],
    )  # fmt: skip


def settings_of(stack: Stack, **overrides: str) -> Settings:
    env = {**stack.env, **overrides}
    return Settings(
        kafka_bootstrap=env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=env["METERING_TOPIC_PREFIX"],
        app_id=env["METERING_APP_ID"],
    )


def records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """A topic's records, in an order that does not depend on how partitions were fetched."""
    found = [orjson.loads(r.value) for r in asyncio.run(read_all(settings, topic))]
    return sorted(found, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))


def states(settings: Settings) -> dict[str, TenantState]:
    found: dict[str, TenantState] = {}
    for record in asyncio.run(read_all(settings, f"{settings.app_id}-tenants-changelog")):
        found[record.key.decode()] = TenantState.model_validate_json(record.value)
    return found


def test_a_month_end_to_end(stack: Stack) -> None:
    stack.start_worker()
    stack.start_projector()
    stack.cli("send", str(stack.write("licences.jsonl", LICENCES)))
    stack.cli("send", str(stack.write("usage.jsonl", USAGE)))
    bad = stack.cli("send", str(stack.write("bad.jsonl", BAD)), check=False)
    assert bad.returncode == 1
    assert "bad.jsonl:1: rejected: not JSON" in bad.stderr
    assert "bad.jsonl:2: rejected: type 'billing.unknown' has no topic" in bad.stderr
    assert "rejected 2 lines" in bad.stdout

    closed = stack.cli("close", M)
    assert f"3 invoice lines on invoice {M1}" in closed.stdout
    assert "total 129.60" in closed.stdout

    lines = stack.json("invoice", M1)
    assert [line_view(ln) for ln in lines] == [
        ("acme", M, "mailing", "overage", "35000", 60, "30000", 1, "32.40", "32.40"),
        ("acme", M, "storage", "overage", "130", 60, "100", 1, "32.40", "32.40"),
        ("beta", M, "customer_center", "overage", "2500", 0, "1000", 2, "32.40", "64.80"),
    ]
    assert sum(Decimal(ln["amount"]) for ln in lines) == Decimal("129.60")
    assert [ln["events"] for ln in lines] == [4, 3, 2]  # the retry is not counted
    csv = stack.cli("invoice", M1, "--format", "csv").stdout.splitlines()
    assert len(csv) == 4 and csv[0].split(",")[:3] == ["invoice_month", "usage_month", "tenant"]
    assert csv[3].split(",")[10:12] == ["32.40", "64.80"]

    crossings = stack.json("crossings", M)
    assert [
        (c["tenant"], c["service"], c["level"], c["package"], c["usage"]) for c in crossings
    ] == [
        ("acme", "mailing", "warning", None, 30_000),
        ("acme", "mailing", "exceeded", None, 35_000),
        ("acme", "storage", "warning", None, 130 * GB),
        ("acme", "storage", "exceeded", None, 130 * GB),
        ("beta", "chat", "warning", None, 1_400),
        ("beta", "customer_center", "warning", None, 900),
        ("beta", "customer_center", "exceeded", None, 2_500),
        ("beta", "customer_center", "package", 2, 2_500),
    ]

    usage = {row["service"]: row for row in stack.json("usage", "acme", M)}
    assert {s: usage[s]["usage"] for s in usage} == {
        "storage": "130", "mailing": "35000", "customer_center": "0", "chat": "1000",
        "form": "1500",
    }  # fmt: skip
    assert (usage["mailing"]["users"], usage["mailing"]["band"]) == (60, 2)
    prev = {row["service"]: row["usage"] for row in stack.json("usage", "acme", M0)}
    assert prev["chat"] == "3000"
    nxt = {row["service"]: row["usage"] for row in stack.json("usage", "acme", M1)}
    assert (nxt["form"], nxt["customer_center"]) == ("5000", "5000")

    settings = settings_of(stack)
    letters = {(d["reason"], d["field"]) for d in records(settings, settings.topics.dead_letters)}
    assert letters == {
        ("unroutable", "type"),
        ("invalid_field", "data.quantity"),
        ("unknown_type", "type"),
        ("invalid_field", "data.bytes"),
        ("invalid_field", "time"),
        ("future", "time"),
        ("missing_field", "subject"),
        ("missing_field", "data.scope"),
    }
    assert len(records(settings, settings.topics.dead_letters)) == len(BAD)

    # The read model keeps the raw events with the worker's reasons, and the licence state.
    def sql(query: str) -> list[dict[str, Any]]:
        return list(stack.json("sql", query))

    rejected = sql("SELECT reason, field FROM rejected ORDER BY reason, field")
    assert {(r["reason"], r["field"]) for r in rejected} == letters - {("unroutable", "type")}
    assert sql("SELECT tenant, company, serial_number, database_type FROM tenants") == [
        {"tenant": "acme", "company": "Acme", "serial_number": "1", "database_type": "central"}
    ]
    assert [r["users"] for r in sql("SELECT users FROM licences ORDER BY time")] == [40, 60]

    # A late event for the closed month: the next close adjusts it, the old lines stay.
    late = [
        ce(
            MAILING,
            {"quantity": 50_000},
            tenant="acme",
            time=at(M, 28),
            id="m-late",
            source=MAIL,
        )
    ]
    stack.cli("send", str(stack.write("late.jsonl", late)))
    stack.cli("close", M1)
    assert stack.json("invoice", M1) == lines
    assert [line_view(ln) for ln in stack.json("invoice", M2)] == [
        ("acme", M, "mailing", "adjustment", "85000", 60, "30000", 1, "32.40", "32.40"),
        ("acme", M1, "customer_center", "overage", "5000", 60, "2000", 3, "32.40", "97.20"),
        ("acme", M1, "form", "overage", "5000", 60, "2000", 3, "32.40", "97.20"),
    ]
    again = stack.cli("close", M)
    assert "0 invoice lines" in again.stdout  # a closed month stays closed
    for month in (M, M1):
        audit = stack.cli("audit", month)
        assert "the streamed invoice lines match the raw events" in audit.stdout

    # Replay: fresh workers (new consumer group, empty state) over the same topics.
    outputs = {
        topic: records(settings, topic)
        for topic in (settings.topics.crossings, settings.topics.lines, settings.topics.closes)
    }
    before = states(settings)
    stack.stop_workers()
    replay_id = stack.env["METERING_APP_ID"] + "-replay"
    stack.start_worker(METERING_APP_ID=replay_id)
    replay_settings = settings_of(stack, METERING_APP_ID=replay_id)
    for _ in range(2):  # twice: the replay copies the licence records once more
        asyncio.run(wait_for_workers(replay_settings, 90))
        time.sleep(1)
    replayed = states(replay_settings)
    assert replayed == before
    for topic, found in outputs.items():
        assert records(settings, topic) == found, f"replay wrote to {topic}"
