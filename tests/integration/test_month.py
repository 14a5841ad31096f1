"""A month through the real broker: the cases of issue 2, hand-computed to the cent.

The months and events are `tests.month_case.month_case` of the real now (the broker judges
"future" and "too late" by its real clock): M is the month before last and M1 last month, or,
late in a month, M is last month and M1 this month (closed with `--force`).
`tests/unit/test_month_case.py` checks those choices and this month's pure part for pinned
days.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pytest

from projections.tenant import TenantState
from runtime.settings import Settings
from streams.kafka import read_all
from streams.progress import wait_for_workers
from tests.conftest import Stack
from tests.month_case import (
    GB,
    WORKER_LETTERS,
    bad,
    first_invoice,
    late,
    licences,
    month_case,
    second_invoice,
)
from tests.month_case import usage as month_usage

pytestmark = pytest.mark.integration
PLAN_FILE = Path(__file__).parents[2] / "billing" / "plan.toml"

CASE = month_case(dt.datetime.now(dt.UTC))
M0, M, M1, M2 = CASE.m0, CASE.m, CASE.m1, CASE.m2
LICENCES = licences(CASE)
USAGE = month_usage(CASE)
BAD = bad(CASE)


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


def same_lines(previewed: list[dict[str, Any]], emitted: list[dict[str, Any]]) -> bool:
    """The preview's lines are the close's: ids, quantities and money."""
    keys = ("id", "invoice_month", "events", "first_offset", "last_offset", "plan_version")
    return [(*line_view(ln), *(ln[k] for k in keys)) for ln in previewed] == [
        (*line_view(ln), *(ln[k] for k in keys)) for ln in emitted
    ]


def rerated_and_exported(stack: Stack, tmp: Path) -> None:
    """M re-rated with the live plan is its invoice lines (overage plus adjustment); with a
    price of 40.00 and a first band ending at 40 users, by hand: acme's 85,000 e-mails are 2
    packages above the 30,000 its 60 users include (band 2 either way), its 130 GB 1 above
    100, beta's 2,500 logins 2 above the 1,000 of band 1."""
    live = stack.json("rerate", M, "--plan", str(PLAN_FILE))
    assert [(r["tenant"], r["service"], r["amount"], r["rerated_amount"], r["difference"])
            for r in live["rows"]] == [
        ("acme", "mailing", "64.80", "64.80", "0.00"),
        ("acme", "storage", "32.40", "32.40", "0.00"),
        ("beta", "customer_center", "64.80", "64.80", "0.00"),
    ]  # fmt: skip
    text = PLAN_FILE.read_text().replace('price = "32.40"', 'price = "40.00"')
    text = text.replace("user_bands = [50, 100]", "user_bands = [40, 100]")
    text = text.replace('version = "2020-01"', 'version = "what-if-40"')
    plan_40 = tmp / "plan-40.toml"
    plan_40.write_text(text)
    other = stack.json("rerate", M, "--plan", str(plan_40))
    assert [(r["tenant"], r["service"], r["users"], r["rerated_band"], r["rerated_included"],
             r["rerated_packages"], r["rerated_amount"], r["difference"],
             r["rerated_plan_version"]) for r in other["rows"]] == [
        ("acme", "mailing", 60, 2, "30000", 2, "80.00", "15.20", "what-if-40"),
        ("acme", "storage", 60, 2, "100", 1, "40.00", "7.60", "what-if-40"),
        ("beta", "customer_center", 0, 1, "1000", 2, "80.00", "15.20", "what-if-40"),
    ]  # fmt: skip
    assert other["totals"] == {"amount": "162.00", "rerated_amount": "200.00",
                               "difference": "38.00"}  # fmt: skip
    table = stack.cli("rerate", M, "--plan", str(plan_40)).stdout
    assert "3 rows; billed 162.00, re-rated 200.00, difference 38.00" in table

    out = tmp / "export"
    stack.cli("export", M, "--output", str(out))
    expected = sorted(
        (r["id"], r["amount"], r["packages"])
        for r in stack.json(
            "sql", f"SELECT id, amount, packages FROM invoice_lines WHERE usage_month = '{M}'"
        )
    )
    assert len(expected) == 4  # 3 overages of M, 1 adjustment on the next invoice
    found = duckdb.sql(
        f"SELECT id, amount::VARCHAR, packages::BIGINT FROM "
        f"read_parquet('{out}/invoice_lines/*/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert sorted(found) == expected
    arrow = ds.dataset(out / "invoice_lines", format="parquet", partitioning="hive").to_table()
    assert sorted((r["id"], f"{r['amount']:.2f}", r["packages"]) for r in arrow.to_pylist()) == (
        expected
    )
    assert set(arrow.column("month").to_pylist()) == {M}
    assert (out / "README.md").read_text().count("| `plan_version` |") == 4


def test_a_month_end_to_end(stack: Stack, tmp_path: Path) -> None:
    stack.start_worker()
    stack.start_projector()
    stack.cli("send", str(stack.write("licences.jsonl", LICENCES)))
    stack.cli("send", str(stack.write("usage.jsonl", USAGE)))
    bad = stack.cli("send", str(stack.write("bad.jsonl", BAD)), check=False)
    assert bad.returncode == 1
    assert "bad.jsonl:1: rejected: not JSON" in bad.stderr
    assert "bad.jsonl:2: rejected: type 'billing.unknown' has no topic" in bad.stderr
    assert "rejected 2 lines" in bad.stdout

    previewed = stack.json("preview", "--month", M)
    closed = stack.cli("close", M)
    assert f"3 invoice lines on invoice {M1}" in closed.stdout
    assert "total 129.60" in closed.stdout

    lines = stack.json("invoice", M1)
    assert [line_view(ln) for ln in lines] == first_invoice(CASE)
    assert same_lines(previewed["lines"], lines) and previewed["pending_total"] == "0.00"
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
    assert letters == {("unroutable", "type"), *WORKER_LETTERS}
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
    stack.cli("send", str(stack.write("late.jsonl", late(CASE))))
    pending = stack.json("preview", "--month", M1)
    assert [(ln["usage_month"], ln["kind"], ln["amount"]) for ln in pending["lines"]
            if ln["pending"]] == [(M, "adjustment", "32.40")]  # fmt: skip
    assert pending["pending_total"] == "32.40"
    assert [ln["tenant"] for ln in stack.json("preview", "beta", "--month", M1)["lines"]] == []
    stack.cli("close", M1, *(["--force"] if CASE.close_m1_early else []))
    assert stack.json("invoice", M1) == lines
    assert [line_view(ln) for ln in stack.json("invoice", M2)] == second_invoice(CASE)
    assert same_lines(pending["lines"], stack.json("invoice", M2))
    again = stack.cli("close", M)
    assert "0 invoice lines" in again.stdout  # a closed month stays closed
    for month in (M, M1):
        audit = stack.cli("audit", month)
        assert "the streamed invoice lines match the raw events" in audit.stdout
    rerated_and_exported(stack, tmp_path)

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
