"""The projector: topics -> DuckDB, each batch and the offsets it reached in one transaction.

It consumes without a consumer group: where it stands is the `offsets` table of the very file
it writes, so a crash anywhere (even mid-transaction) resumes exactly after the last committed
batch. No duplicates, no gaps, no distributed transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition

from billing.plan import Plan
from readmodel import schema
from readmodel.rows import OUTPUT_MODELS, Record, raw_batch, rows_for, to_arrow
from readmodel.store import Closing, harden
from runtime.settings import Settings
from streams.kafka import partitions_of

log = logging.getLogger("metering.projector")

# Errors that a record's own values cause (a number its column cannot hold, a value of the
# wrong type): writing the record again fails again, so it is set aside. Anything else (I/O,
# memory, a broken file) is no fault of the record and stops the projector.
RECORD_ERRORS: tuple[type[Exception], ...] = (
    pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, duckdb.DataError, duckdb.IntegrityError,
)  # fmt: skip


def table_of(settings: Settings) -> dict[str, str]:
    """Topic -> read-model table."""
    t = settings.topics
    return {
        t.usage: "raw_events",
        t.licenses: "raw_events",
        t.system: "raw_events",
        t.crossings: "threshold_crossings",
        t.lines: "invoice_lines",
        t.dead_letters: "dead_letters",
        t.closes: "month_closes",
        t.subscriptions: "webhook_subscriptions",
        t.deliveries: "webhook_deliveries",
    }


class Projector:
    def __init__(self, settings: Settings, plan: Plan, path: Path) -> None:
        self.settings = settings
        self.plan = plan
        self.path = path
        self.tables = table_of(settings)
        self.rows_written = 0
        # Told the rows each committed batch wrote, by table (the process's metrics).
        self.on_written: Callable[[dict[str, int]], None] | None = None
        # Told the table and reason of each record set aside (see `write`).
        self.on_set_aside: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()  # one writer transaction at a time
        self._readers: set[duckdb.DuckDBPyConnection] = set()  # cursors of running reads
        self._streams: set[Stream] = set()  # Arrow readers of answers still being sent
        self._readers_lock = threading.Lock()
        self._closing = False
        self.con = self._open()
        # The DDL in schema.py is the one description of each table; Arrow follows it.
        self.schemas = {
            table: self.con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema  # noqa: S608
            for table in (set(self.tables.values()) - {"raw_events"}) | {"set_aside"}
        }

    def _open(self) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.path))
        schema.create(con, self.plan, self.settings.topics.usage, self.settings.topics.system)
        harden(con, self.settings.duckdb_memory_limit, self.settings.duckdb_temp_limit)
        return con

    def offsets(self) -> dict[TopicPartition, int]:
        with self.reader() as cur:
            rows = cur.execute('SELECT topic, "partition", next_offset FROM offsets').fetchall()
        return {TopicPartition(t, p): o for t, p, o in rows}

    @contextlib.contextmanager
    def reader(self) -> Any:
        """A cursor of its own: reads see the last committed batch and never wait for one."""
        with self._held(self._readers, self.con.cursor) as cur:
            yield cur

    @contextlib.contextmanager
    def stream(self, batches: pa.RecordBatchReader) -> Iterator[Stream]:
        """`batches` read one at a time while an answer is sent, closed by `close` too: a live
        Arrow reader keeps the file open (a replace could not reopen it) however long the
        client takes."""
        with self._held(self._streams, lambda: Stream(batches)) as stream:
            yield stream

    @contextlib.contextmanager
    def _held(self, held: set[Any], make: Callable[[], Any]) -> Iterator[Any]:
        """`make()`, in `held` (where `close` finds it) until it is closed; refused once the
        file is being closed."""
        with self._readers_lock:
            if self._closing:
                raise Closing("the read model is being closed (replaced or stopping)")
            item = make()
            held.add(item)
        try:
            yield item
        finally:
            with self._readers_lock:
                held.discard(item)
            item.close()

    def write(self, records: list[Record]) -> int:
        """Write a batch: its rows and the offsets it reached, in one transaction.

        A record whose values its table cannot hold (an `ArrowInvalid`, a DuckDB conversion
        error) spoils the transaction. The batch is then split in halves, each written in a
        transaction of its own with its own offsets, until that record is alone; it is then
        set aside (table `set_aside`, with its reason) together with its offset, and
        projection goes on. Any other error (disk, memory, the file) stops the projector."""
        try:
            return self._commit(self._prepare(records))
        except RECORD_ERRORS as exc:
            if len(records) == 1:
                record = records[0]
                log.warning(
                    "setting aside %s/%d/%d: %r", record.topic, record.partition, record.offset,
                    exc,
                )  # fmt: skip
                return self._commit(self._prepare(records, spoiled=exc))
            # Each partition's records are in offset order, so the first half's offsets lie
            # below the second's and every committed half resumes exactly after itself.
            half = len(records) // 2
            return self.write(records[:half]) + self.write(records[half:])

    def _prepare(self, records: list[Record], spoiled: BaseException | None = None) -> _Batch:
        batch = _Batch()
        reached: dict[tuple[str, int], int] = {}
        for record in records:
            table = self.tables[record.topic]
            if spoiled is not None:
                batch.aside.append(_aside(record, table, "unwritable", repr(spoiled)))
            elif table == "raw_events":
                batch.archive.append(record)
            elif (row := rows_for(table, record)) is not None:
                batch.rows[table].append(row)
            else:
                model = OUTPUT_MODELS[table].__name__
                batch.aside.append(_aside(record, table, "invalid_record", f"not a {model}"))
            key = (record.topic, record.partition)
            reached[key] = max(reached.get(key, 0), record.offset + 1)
        batch.offsets = [
            {"topic": t, "partition": p, "next_offset": o} for (t, p), o in reached.items()
        ]
        return batch

    def _commit(self, batch: _Batch) -> int:
        with self._lock:
            con = self.con
            con.execute("BEGIN")
            try:
                if batch.archive:
                    con.register("raw_batch", raw_batch(batch.archive))
                    con.execute(schema.ARCHIVE)
                    con.unregister("raw_batch")
                tables = {**batch.rows, "set_aside": batch.aside} if batch.aside else batch.rows
                for table, rows in tables.items():
                    con.register("batch", to_arrow(self.schemas[table], rows))
                    # Output ids are unique: a record the worker sent twice is one row. The
                    # archive has no key; the offsets alone keep it free of duplicates.
                    sql = f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM batch"  # noqa: S608
                    con.execute(sql)
                    con.unregister("batch")
                con.register("reached", _offsets_arrow(batch.offsets))
                con.execute("INSERT OR REPLACE INTO offsets BY NAME SELECT * FROM reached")
                con.unregister("reached")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self._committed(batch)

    def _committed(self, batch: _Batch) -> int:
        """Tell the process's metrics what a committed batch wrote and set aside."""
        written = len(batch.archive) + sum(len(rows) for rows in batch.rows.values())
        self.rows_written += written
        if self.on_written is not None:
            counts = {table: len(rows) for table, rows in batch.rows.items()}
            self.on_written(
                {**counts, "raw_events": len(batch.archive)} if batch.archive else counts
            )
        if self.on_set_aside is not None:
            for row in batch.aside:
                self.on_set_aside(row["table"], row["reason"])
        return written

    async def run(
        self,
        stop: asyncio.Event,
        until: dict[TopicPartition, int] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """Project until `stop` is set, or until every partition reached `until`."""
        tps = await partitions_of(self.settings, *self.tables)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=100,  # queries wait for the projector: keep its idle rounds short
            **self.settings.kafka_options(),
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            stored = self.offsets()
            for tp in tps:
                if tp in stored:
                    consumer.seek(tp, stored[tp])
            # One reset for all: each awaited reset would wait out a whole fetch round.
            fresh = [tp for tp in tps if tp not in stored]
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            while not stop.is_set():
                if until is not None and _reached(self.offsets(), until):
                    return
                batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
                records = [
                    Record(
                        r.topic, r.partition, r.offset, r.timestamp, r.key, r.value,
                        tuple(r.headers) if r.headers else (),
                    )
                    for batch in batches.values()
                    for r in batch
                ]  # fmt: skip
                if records:
                    await asyncio.to_thread(self.write, records)
                    if on_batch is not None:
                        on_batch(len(records))
        finally:
            await consumer.stop()

    def close(self, timeout: float = 60) -> None:
        """Close the file once no read runs: DuckDB refuses to close a connection one of whose
        cursors is busy (and the read would go on), so running reads are interrupted and the
        close is tried again; new reads are refused meanwhile."""
        deadline = time.monotonic() + timeout
        with self._lock:
            with self._readers_lock:
                self._closing = True
            while True:
                with self._readers_lock:
                    for cur in self._readers:
                        cur.interrupt()
                    streams = list(self._streams)
                for stream in streams:
                    stream.close()
                try:
                    self.con.close()
                    return
                except duckdb.ResourceInUseException:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)


class Stream:
    """An Arrow reader that one thread reads and another may close (the projector closing)."""

    def __init__(self, batches: pa.RecordBatchReader) -> None:
        self.batches = batches
        self._lock = threading.Lock()
        self.closed = False

    def next(self) -> pa.RecordBatch | None:
        """The next batch; None at the end. Closed before its end, it raises Closing: the
        answer must break off, not look complete."""
        with self._lock:
            if self.closed:
                raise Closing("the read model was closed while this answer was being sent")
            try:
                return self.batches.read_next_batch()
            except StopIteration:
                return None

    def close(self) -> None:
        # The reader's cursor was interrupted first, so a read holding the lock ends soon.
        with self._lock:
            if not self.closed:
                self.closed = True
                self.batches.close()


@dataclass
class _Batch:
    """What one transaction writes: archived records, output rows by table, the records set
    aside, and the offsets reached."""

    archive: list[Record] = field(default_factory=list)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    aside: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[dict[str, Any]] = field(default_factory=list)


def _aside(record: Record, table: str, reason: str, detail: str) -> dict[str, Any]:
    return {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "table": table, "reason": reason, "detail": detail[:1000],
        "payload": None if record.value is None
        else record.value.decode("utf-8", errors="backslashreplace"),
        "set_aside_at": dt.datetime.now(dt.UTC),
    }  # fmt: skip


def _reached(stored: dict[TopicPartition, int], until: dict[TopicPartition, int]) -> bool:
    return all(stored.get(tp, 0) >= end for tp, end in until.items() if end > 0)


def _offsets_arrow(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema_ = pa.schema(
        [("topic", pa.string()), ("partition", pa.int32()), ("next_offset", pa.int64())]
    )
    return pa.Table.from_pylist(rows, schema=schema_)
