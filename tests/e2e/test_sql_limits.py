"""Finance SQL cannot take the process down: a storm of pathological queries gets a few slots
(the rest 429 with Retry-After) and ends at METERING_SQL_TIMEOUT with 504, while tenant reads
keep answering within a second and the projector keeps writing; a client that leaves frees
its slot at once. Once, a few cross joins kept the CPU busy after their clients had gone,
tenant reads and /ui stopped answering and only a restart cleared it."""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from projections.months import month_of, previous_month
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

pytestmark = pytest.mark.integration

MONTH = previous_month(previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC)))
KEYS = {"producer": "p-secret", "finance": "f-secret", "acme": "a-secret"}
TIMEOUT = 3.0
CROSS_JOIN = "SELECT sum(a.range * b.range) FROM range(3000000) a, range(3000000) b"
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def keyed(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def forms(first: int, count: int) -> bytes:
    return orjson.dumps([
        cloudevent("metering.form.submitted", {"quantity": 100}, tenant="acme",
                   time=f"{MONTH}-{n % 27 + 1:02d}T10:00:00Z", id=f"acme-{n}")
        for n in range(first, first + count)
    ])  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float = 1.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def test_pathological_queries_are_bounded_and_tenants_keep_reading(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    stack.create_topics()
    stack.start_worker(METERING_COMMIT_INTERVAL="0.2")  # reads wait for its flushes
    projector = stack.start_projector(
        METERING_API_KEYS=stored_keys(KEYS), METERING_SQL_TIMEOUT=str(TIMEOUT),
        METERING_SQL_CONCURRENCY="2",
    )  # fmt: skip
    url = stack.env["METERING_API_URL"]
    api = httpx.Client(base_url=url, timeout=60)
    request.addfinalizer(api.close)

    def finance_sql(sql: str, timeout: float = 30) -> httpx.Response:
        return httpx.post(f"{url}/v1/sql?consistent=false", json={"sql": sql},
                          headers=keyed("finance"), timeout=timeout)  # fmt: skip

    def form_usage() -> tuple[str, float]:
        started = time.monotonic()
        answer = api.get("/v1/tenants/acme/usage", params={"month": MONTH}, headers=keyed("acme"))
        assert answer.status_code == 200, answer.text
        form = next(s for s in answer.json()["services"] if s["service"] == "form")
        return form["usage"], time.monotonic() - started

    assert api.post("/v1/events", content=forms(0, 10), headers=keyed("producer") | BATCH)\
        .status_code == 202  # fmt: skip
    assert form_usage()[0] == "1000"

    with ThreadPoolExecutor(4) as pool:
        storm = [pool.submit(finance_sql, CROSS_JOIN) for _ in range(4)]
        time.sleep(0.3)  # the storm has its slots
        posted = api.post("/v1/events", content=forms(10, 5), headers=keyed("producer") | BATCH)
        assert posted.status_code == 202
        reads: list[tuple[str, float]] = []
        while not all(f.done() for f in storm):
            reads.append(form_usage())
        answers = [f.result() for f in storm]

    assert sorted(a.status_code for a in answers) == [429, 429, 504, 504]
    for busy in (a for a in answers if a.status_code == 429):
        assert 1 <= int(busy.headers["Retry-After"]) <= TIMEOUT
        assert "finance queries are running already" in busy.json()["detail"]
    assert all(
        "METERING_SQL_TIMEOUT (3s)" in a.json()["detail"] for a in answers if a.status_code == 504
    )
    # Tenant reads wait for the projector to have written what was posted before them: the
    # events posted during the storm were projected during the storm.
    assert reads and max(seconds for _, seconds in reads) < 1.0, reads
    assert reads[-1][0] == "1500"
    assert idle_cpu(projector.pid) < 0.5

    # Clients that leave: their queries are interrupted and the slots are free long before
    # the timeout would have freed them.
    left = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        gone = list(pool.map(lambda _: _leaves(finance_sql), range(2)))
    assert gone == ["left", "left"]
    answer = finance_sql("SELECT 42 AS answer")
    while answer.status_code == 429 and time.monotonic() - left < TIMEOUT:
        time.sleep(0.05)
        answer = finance_sql("SELECT 42 AS answer")
    assert (answer.status_code, answer.json()["rows"]) == (200, [[42]])
    assert time.monotonic() - left < TIMEOUT - 0.5
    assert idle_cpu(projector.pid) < 0.5

    assert stack.json("sql", "SELECT 42 AS answer", METERING_API_KEY=KEYS["finance"]) == [
        {"answer": 42}
    ]


def _leaves(finance_sql: Any) -> str:
    try:
        finance_sql(CROSS_JOIN, timeout=0.7)
    except httpx.ReadTimeout:
        return "left"
    return "answered"
