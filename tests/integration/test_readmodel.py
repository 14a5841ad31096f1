"""The DuckDB read model against the real broker: exactly once through SIGKILLs, a replay
equal to the live file, finance queries while events stream in, and an audit that catches
an altered line or raw event."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

from metering.generate import generate_month
from projections.months import month_of, next_month, previous_month
from tests.conftest import Stack

pytestmark = pytest.mark.integration

MONTH = previous_month(previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC)))
TABLES = ("raw_events", "invoice_lines", "threshold_crossings", "dead_letters", "month_closes")
FINANCE_QUERY = (
    "SELECT tenant, sum(amount) AS total, max(percent) AS worst FROM usage_monthly "
    "GROUP BY tenant ORDER BY total DESC LIMIT 10"
)


def differences(left: Path, right: Path) -> dict[str, tuple[int, int, int]]:
    """Per table: rows only in left, rows only in right, rows in left (as a multiset)."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{left}' AS l (READ_ONLY)")
    con.execute(f"ATTACH '{right}' AS r (READ_ONLY)")
    found = {}
    for table in (*TABLES, "offsets"):
        only_left = con.execute(
            f"SELECT count(*) FROM (FROM l.{table} EXCEPT ALL FROM r.{table})"
        ).fetchone()
        only_right = con.execute(
            f"SELECT count(*) FROM (FROM r.{table} EXCEPT ALL FROM l.{table})"
        ).fetchone()
        rows = con.execute(f"SELECT count(*) FROM l.{table}").fetchone()
        assert only_left and only_right and rows
        found[table] = (only_left[0], only_right[0], rows[0])
    con.close()
    return found


def test_sigkill_replay_and_concurrent_finance_queries(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    steady, steady_ready = stack.start(
        "projector", METERING_DUCKDB_PATH=str(stack.data_dir / "b.duckdb")
    )
    steady_url = orjson.loads(steady_ready)["api_url"]
    victim_env = {"METERING_DUCKDB_PATH": str(stack.data_dir / "a.duckdb")}
    victim, ready = stack.start("projector", **victim_env)

    month = list(generate_month(MONTH, tenants=30, seed=7, scale=1.5))
    for n, event in enumerate(month[1000:1010]):  # rejected by the workers: dead letters
        month.append({**event, "id": f"bad-{n}", "data": {"quantity": 0}})
    events = stack.write("month.jsonl", month)
    sender = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "send", str(events)],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip

    # Finance reads while events stream in: never an error, never a wait over a second.
    latencies: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def finance() -> None:
        with httpx.Client(base_url=steady_url, timeout=10) as client:
            while not done.is_set():
                started = time.monotonic()
                response = client.post("/v1/sql?consistent=false", json={"sql": FINANCE_QUERY})
                latencies.append(time.monotonic() - started)
                if response.status_code != 200:
                    failures.append(response.text)
                time.sleep(0.05)

    reader = threading.Thread(target=finance)
    reader.start()
    rng = random.Random(3)
    kills = 0
    try:
        while sender.poll() is None or kills < 3:
            time.sleep(rng.uniform(0.5, 2.0))
            stack.stop(victim, kill=True)
            kills += 1
            victim, ready = stack.start("projector", **victim_env)
    finally:
        done.set()
        reader.join()
    output, _ = sender.communicate(timeout=120)
    assert sender.returncode == 0, output
    assert kills >= 3
    assert not failures, failures[:3]
    assert len(latencies) > 10 and max(latencies) < 1.0, max(latencies)

    stack.cli("close", MONTH)
    victim_url = orjson.loads(ready)["api_url"]
    lines = stack.json("invoice", next_month(MONTH), METERING_API_URL=victim_url)
    assert lines == stack.json("invoice", next_month(MONTH), METERING_API_URL=steady_url)
    assert len(lines) > 10
    assert "match the raw events" in stack.cli("audit", MONTH, METERING_API_URL=victim_url).stdout

    replayed = stack.data_dir / "replayed.duckdb"
    out = stack.cli("replay", "--output", str(replayed))
    assert "replayed" in out.stdout
    stack.stop(victim)
    stack.stop(steady)
    for left, right in (("a.duckdb", "b.duckdb"), ("replayed.duckdb", "b.duckdb")):
        found = differences(stack.data_dir / left, stack.data_dir / right)
        for table, (only_left, only_right, rows) in found.items():
            assert (only_left, only_right) == (0, 0), f"{left} vs {right}: {table} differs"
            assert rows > 0, f"{table} is empty"


def test_audit_catches_an_altered_line_and_an_altered_event(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    path = stack.data_dir / "readmodel.duckdb"
    projector = stack.start_projector(METERING_DUCKDB_PATH=str(path))
    events = stack.write("month.jsonl", list(generate_month(MONTH, tenants=4, seed=11)))
    stack.cli("send", str(events))
    stack.cli("close", MONTH)
    assert "match the raw events" in stack.cli("audit", MONTH).stdout

    def alter(sql: str) -> None:
        nonlocal projector
        stack.stop(projector)
        con = duckdb.connect(str(path))
        con.execute(sql)
        con.close()
        projector = stack.start_projector(METERING_DUCKDB_PATH=str(path))

    line = stack.json("invoice", next_month(MONTH))[0]
    alter(f"UPDATE invoice_lines SET amount = amount + 32.40 WHERE id = '{line['id']}'")
    audit = stack.cli("audit", MONTH, "--format", "csv", check=False)
    assert audit.returncode == 1
    rows = audit.stdout.splitlines()
    assert rows[0].startswith("tenant,service,recomputed_usage")
    assert len(rows) == 2 and rows[1].startswith(f"{line['tenant']},{line['service']},")
    assert rows[1].endswith(f",{line['amount']},{float(line['amount']) + 32.40:.2f},1")

    alter(
        f"UPDATE invoice_lines SET amount = amount - 32.40 WHERE id = '{line['id']}';"
        "UPDATE raw_events SET data = '{\"quantity\": 999999}' WHERE rowid = ("
        "  SELECT min(rowid) FROM raw_events WHERE type = 'metering.chat.started'"
        "  AND subject = 'tenant-00002')"
    )
    audit = stack.cli("audit", MONTH, "--format", "json", check=False)
    assert audit.returncode == 1
    diffs = orjson.loads(audit.stdout)
    assert [(d["tenant"], d["service"]) for d in diffs] == [("tenant-00002", "chat")]
    assert diffs[0]["recomputed_amount"] != diffs[0]["streamed_amount"]
