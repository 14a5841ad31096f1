"""A rebuilt read model is swapped in only once it is opened and checked: tables, columns and
offsets. Once, `POST /v1/admin/replace` took any file of the data dir (`projector.ready`), all
reads answered 503 and the next `metering up` failed until the file was deleted by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path

import duckdb
import pytest
from aiokafka import TopicPartition

from api.replace import Paths, answer, answered, ask, check, expected_columns, swap, taken
from api.service import ReadModelService
from billing.plan import load_plan
from readmodel.rows import Record
from readmodel.store import Closing
from runtime.settings import Settings
from schemas.records import ThresholdCrossed
from streams.projector import Projector, table_of

PLAN = load_plan()
SETTINGS = Settings(kafka_bootstrap="unused:1")
TOPICS = SETTINGS.topics
EXPECTED = expected_columns(PLAN, TOPICS.usage, TOPICS.system)
ENDS = {TopicPartition(topic, p): 10 for topic in set(table_of(SETTINGS)) for p in range(2)}
CROSSING = ThresholdCrossed(
    id="c1", tenant="t1", service="chat", usage_month="2026-10", level="package",
    package=2, usage=2000, included=1500, users=0, crossed_by="crm/1",
    crossed_at=dt.datetime(2026, 10, 10, tzinfo=dt.UTC),
).model_dump_json().encode()  # fmt: skip


def rebuilt(path: Path, offset: int = 0) -> Path:
    """A read model as `metering replay` leaves it: projected, then closed."""
    projector = Projector(SETTINGS, PLAN, path)
    try:
        projector.write([Record(TOPICS.crossings, 0, offset, 0, b"t1", CROSSING)])
    finally:
        projector.close()
    return path


def test_a_replayed_file_passes(tmp_path: Path) -> None:
    assert check(rebuilt(tmp_path / "good.duckdb"), EXPECTED, ENDS) == []


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text('{"api_url": "http://127.0.0.1:1"}'), "not a readable DuckDB"),
        (lambda p: p.write_bytes(b""), "not a readable DuckDB"),
        (lambda p: duckdb.connect(str(p)).execute("CREATE TABLE x (a INT)").close(), "missing"),
        (
            lambda p: _altered(rebuilt(p), "ALTER TABLE invoice_lines DROP COLUMN amount"),
            "invoice_lines.amount",
        ),
        (
            lambda p: _altered(rebuilt(p), "ALTER TABLE invoice_lines ADD COLUMN evil INT"),
            "not ours",
        ),
        (lambda p: rebuilt(p, offset=10), "beyond its end 10"),
        (
            lambda p: _altered(rebuilt(p), "UPDATE offsets SET topic = 'x-' || topic"),
            "does not read",
        ),
    ],
    ids=[
        "missing", "projector-ready-file", "empty", "foreign-db", "column-dropped",
        "column-added", "offsets-beyond-end", "unknown-topic",
    ],
)  # fmt: skip
def test_a_file_that_is_not_a_read_model_of_these_topics_is_refused(
    tmp_path: Path, make: object, complaint: str
) -> None:
    path = tmp_path / "metering.replay.duckdb"
    make(path)  # type: ignore[operator]
    problems = check(path, EXPECTED, ENDS)
    assert problems, "a bad file passed the check"
    assert any(complaint in problem for problem in problems), problems


def _altered(path: Path, statement: str) -> None:
    con = duckdb.connect(str(path))
    con.execute(statement)
    con.close()


def test_requests_are_answered_once_and_by_id(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "metering.duckdb")
    first = ask(paths)
    assert taken(paths) == first
    assert taken(paths) is None, "a request was answered twice"
    assert answered(paths, first) is None
    answer(paths, first, ["no"])
    assert answered(paths, first) == {"request": first, "replaced": False, "problems": ["no"]}
    second = ask(paths)
    assert answered(paths, second) is None, "an old answer was taken for a new request"


def test_swap_drops_the_live_files_wal(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "metering.duckdb")
    paths.live.write_bytes(b"old")
    wal = paths.live.with_name("metering.duckdb.wal")
    wal.write_bytes(b"old wal")
    paths.candidate.write_bytes(b"new")
    swap(paths.candidate, paths.live)
    assert paths.live.read_bytes() == b"new"
    assert not wal.exists() and not paths.candidate.exists()


def test_closing_interrupts_running_reads_and_refuses_new_ones(tmp_path: Path) -> None:
    """A swap closes the live file while reads may run (a 30 s finance query): DuckDB refuses
    to close a busy connection, which once ended the replace task and projection for good."""
    projector = Projector(SETTINGS, PLAN, tmp_path / "metering.duckdb")
    started, ended = threading.Event(), []

    def long_read() -> None:
        with projector.reader() as cur:
            started.set()
            try:
                cur.execute("SELECT sum(a.range * b.range) FROM range(100000000) a, range(100) b")
                ended.append("finished")
            except duckdb.InterruptException:
                ended.append("interrupted")

    reading = threading.Thread(target=long_read)
    reading.start()
    assert started.wait(10)
    time.sleep(0.3)
    projector.close(timeout=20)
    reading.join(20)
    assert ended == ["interrupted"]
    with pytest.raises(Closing, match="being closed"), projector.reader():
        pass


def test_a_failed_swap_is_answered_and_the_live_file_serves_again(tmp_path: Path) -> None:
    service = ReadModelService(SETTINGS.model_copy(update={"data_dir": tmp_path}), PLAN)
    started: list[str] = []

    async def broken_replace() -> None:
        raise duckdb.IOException("IO Error: No space left on device")

    async def start() -> None:
        started.append("live file reopened")

    async def replace() -> None:
        pass

    service.replace = replace  # type: ignore[method-assign]
    assert asyncio.run(service._replace_answering()) == [], "a swap that worked was not told"
    service.replace = broken_replace  # type: ignore[method-assign]
    service.start = start  # type: ignore[method-assign]
    problems = asyncio.run(service._replace_answering())
    assert problems == ["the swap failed: IOException('IO Error: No space left on device')"]
    assert started == ["live file reopened"]

    async def cannot_start() -> None:
        raise OSError("the disk is gone")

    async def reopen_fails() -> tuple[list[str], BaseException | None]:
        service.start = cannot_start  # type: ignore[method-assign]
        problems = await service._replace_answering()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return problems, service.failed()

    problems, failure = asyncio.run(reopen_fails())
    assert "could not be reopened" in problems[0]
    assert isinstance(failure, OSError), "the supervisor was not told"
