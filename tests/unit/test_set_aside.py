"""No poison pill in the read model: a record the projector cannot write is set aside with
its reason, in the transaction that advances its offset, and projection goes on; an error
that no record causes stops the projector, and then the process: `/healthz` and `/readyz`
answer 503 with the reason, and `metering projector` exits non-zero for its supervisor."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import duckdb
import httpx
import pytest

from api.service import ReadModelService
from billing.plan import load_plan
from readmodel import schema
from readmodel.rows import Record
from runtime.settings import Settings
from schemas.records import DeadLetter, MonthClosed, ThresholdCrossed
from server.app import create_app
from server.run import run_projector
from streams.projector import Projector

PLAN = load_plan()
SETTINGS = Settings(kafka_bootstrap="unused:1")
AT = dt.datetime(2026, 10, 10, 12, tzinfo=dt.UTC)


def crossing(n: int, package: int) -> bytes:
    return ThresholdCrossed(
        id=f"c{n}", tenant="t1", service="chat", usage_month="2026-10", level="package",
        package=package, usage=package * 1000, included=1500, users=0, crossed_by=f"crm/{n}",
        crossed_at=AT,
    ).model_dump_json().encode()  # fmt: skip


def letter(n: int) -> bytes:
    return DeadLetter(
        id=f"usage-events/0/{n}", topic="usage-events", partition=0, offset=n,
        reason="invalid_field", field="data.quantity", detail="too big", payload="{}",
    ).model_dump_json().encode()  # fmt: skip


TOO_WIDE = crossing(2, 10**40)  # beyond HUGEINT: no column can hold it
CLOSE_TOO_WIDE = MonthClosed(
    id="m1", close_id="c1", month="2026-10", partition=1, tenants=1, lines=1, amount=10**40
).model_dump_json().encode()  # fmt: skip
BATCH = [
    Record("threshold-crossings", 0, 0, 0, b"t1", crossing(0, 2)),
    Record("threshold-crossings", 0, 1, 0, b"t1", crossing(1, 3)),
    Record("threshold-crossings", 0, 2, 0, b"t1", TOO_WIDE),
    Record("threshold-crossings", 0, 3, 0, b"t1", crossing(3, 4)),
    Record("threshold-crossings", 0, 4, 0, b"t1", b"not a crossing"),
    Record("dead-letters", 0, 0, 0, b"t1", letter(7)),
    Record("month-closes", 1, 0, 0, b"t1", CLOSE_TOO_WIDE),
    Record("dead-letters", 0, 1, 0, b"t1", letter(8)),
]


def rows(projector: Projector, sql: str) -> list[tuple[object, ...]]:
    with projector.reader() as cur:
        return cur.execute(sql).fetchall()


def test_an_unwritable_record_is_set_aside_and_projection_goes_on(tmp_path: Path) -> None:
    projector = Projector(SETTINGS, PLAN, tmp_path / "rm.duckdb")
    noted: list[tuple[str, str]] = []
    projector.on_set_aside = lambda table, reason: noted.append((table, reason))
    assert projector.write(BATCH) == 5
    assert rows(projector, "SELECT id, package FROM threshold_crossings ORDER BY id") == [
        ("c0", 2), ("c1", 3), ("c3", 4),
    ]  # fmt: skip
    assert rows(projector, "SELECT id FROM dead_letters ORDER BY id") == [
        ("usage-events/0/7",), ("usage-events/0/8",),
    ]  # fmt: skip
    aside = rows(
        projector,
        'SELECT topic, "partition", "offset", "table", reason, detail, payload, set_aside_at '
        'FROM set_aside ORDER BY topic, "offset"',
    )
    assert [a[:5] for a in aside] == [
        ("month-closes", 1, 0, "month_closes", "unwritable"),
        ("threshold-crossings", 0, 2, "threshold_crossings", "unwritable"),
        ("threshold-crossings", 0, 4, "threshold_crossings", "invalid_record"),
    ]
    assert "ArrowInvalid" in str(aside[1][5]) and aside[1][6] == TOO_WIDE.decode()
    assert aside[2][5] == "not a ThresholdCrossed" and aside[2][6] == "not a crossing"
    assert all(isinstance(a[7], dt.datetime) for a in aside)
    assert sorted(noted) == sorted((str(a[3]), str(a[4])) for a in aside)
    # Every offset advanced past the batch, the set-aside records' included.
    assert rows(projector, 'SELECT topic, "partition", next_offset FROM offsets ORDER BY ALL') == [
        ("dead-letters", 0, 2), ("month-closes", 1, 1), ("threshold-crossings", 0, 5),
    ]  # fmt: skip

    # Delivered again (a crash before the offsets were read): nothing doubles.
    projector.write(BATCH)
    assert rows(projector, "SELECT count(*) FROM set_aside") == [(3,)]
    assert rows(projector, "SELECT count(*) FROM threshold_crossings") == [(3,)]
    # And the next batch is written as usual.
    projector.write([Record("threshold-crossings", 0, 5, 0, b"t1", crossing(5, 5))])
    assert rows(projector, "SELECT count(*) FROM threshold_crossings") == [(4,)]
    projector.close()


def test_the_issues_narrow_column_sets_the_record_aside(tmp_path: Path) -> None:
    """Before the columns were widened, a package of 3 * 10^9 stopped the projector for good
    (`ArrowInvalid` on an INTEGER column). A column still too narrow now costs one record."""
    projector = Projector(SETTINGS, PLAN, tmp_path / "rm.duckdb")
    projector.con.execute("ALTER TABLE threshold_crossings ALTER COLUMN package TYPE INTEGER")
    projector.schemas["threshold_crossings"] = (
        projector.con.sql("FROM threshold_crossings LIMIT 0").to_arrow_table().schema
    )
    issue = crossing(1, 3_000_000_000 - 1)
    projector.write([
        Record("threshold-crossings", 0, 0, 0, b"t1", crossing(0, 2)),
        Record("threshold-crossings", 0, 1, 0, b"t1", issue),
        Record("threshold-crossings", 0, 2, 0, b"t1", crossing(2, 3)),
    ])  # fmt: skip
    assert rows(projector, "SELECT id FROM threshold_crossings ORDER BY id") == [("c0",), ("c2",)]
    assert rows(projector, 'SELECT "offset", reason FROM set_aside') == [(1, "unwritable")]
    assert rows(projector, "SELECT next_offset FROM offsets") == [(3,)]
    projector.close()


def test_an_error_no_record_causes_stops_the_projector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    projector = Projector(SETTINGS, PLAN, tmp_path / "rm.duckdb")
    # A real database error in the middle of the transaction that no record causes: writing a
    # file, which the read model's locked configuration refuses.
    monkeypatch.setattr(schema, "ARCHIVE", f"COPY (SELECT 1) TO '{tmp_path}/no/such/dir.csv'")
    with pytest.raises(duckdb.PermissionException):
        projector.write([Record("usage-events", 0, 0, 0, b"t1", b"{}")])
    assert rows(projector, "SELECT count(*) FROM set_aside") == [(0,)]
    assert rows(projector, "SELECT count(*) FROM offsets") == [(0,)]
    projector.close()


async def _fail_soon() -> None:
    await asyncio.sleep(0.05)
    raise duckdb.IOException("IO Error: No space left on device")


def test_a_stopped_projector_is_reported_by_healthz_and_readyz() -> None:
    async def scenario() -> tuple[BaseException, list[tuple[str, int, str]]]:
        service = ReadModelService(SETTINGS, PLAN)
        service._task = asyncio.create_task(_fail_soon())
        error = await asyncio.wait_for(service.wait_failed(), 10)
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answers = [(p, (a := await client.get(p)).status_code, a.text)
                       for p in ("/healthz", "/readyz")]  # fmt: skip
        return error, answers

    error, answers = asyncio.run(scenario())
    assert isinstance(error, duckdb.IOException)
    assert [(path, status) for path, status, _ in answers] == [("/healthz", 503), ("/readyz", 503)]
    assert all("No space left on device" in text for _, _, text in answers)


@pytest.mark.timeout(30)
def test_a_stopped_projector_ends_the_process_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    async def start(self: ReadModelService) -> None:
        self._task = asyncio.create_task(_fail_soon())

    monkeypatch.setattr(ReadModelService, "start", start)
    with pytest.raises(SystemExit) as ended:
        run_projector(SETTINGS, PLAN)  # returns within a second (the watcher polls)
    assert ended.value.code not in (0, None)
    assert "No space left on device" in str(ended.value.code)


def test_the_process_counts_what_it_sets_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def project(self: Projector, stop: asyncio.Event) -> None:  # no broker: one batch
        await asyncio.to_thread(self.write, BATCH)
        await stop.wait()

    async def nothing(self: object) -> None:
        return None

    monkeypatch.setattr(Projector, "run", project)
    monkeypatch.setattr("streams.progress.OffsetsProbe.start", nothing)

    async def scenario() -> ReadModelService:
        settings = SETTINGS.model_copy(update={"duckdb_path": tmp_path / "rm.duckdb"})
        service = ReadModelService(settings, PLAN)
        await service.start()
        assert service.projector is not None
        for _ in range(1000):  # the batch is written in a thread
            if service.projector.rows_written >= 5:
                break
            await asyncio.sleep(0.01)
        await service.stop()
        return service

    metrics = asyncio.run(scenario()).metrics
    counted = {
        (s.labels["table"], s.labels["reason"]): s.value
        for family in metrics.registry.collect()
        if family.name == "metering_projector_set_aside"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counted == {
        ("threshold_crossings", "unwritable"): 1, ("threshold_crossings", "invalid_record"): 1,
        ("month_closes", "unwritable"): 1,
    }  # fmt: skip
