"""The projector: topics -> DuckDB, each batch and the offsets it reached in one transaction.

It consumes without a consumer group: where it stands is the `offsets` table of the very file
it writes, so a crash anywhere (even mid-transaction) resumes exactly after the last committed
batch. No duplicates, no gaps, no distributed transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from aiokafka import AIOKafkaConsumer, TopicPartition

from billing.plan import Plan
from metering.settings import Settings
from projections.readmodel import schema
from projections.readmodel.rows import Record, raw_batch, rows_for, to_arrow
from streams.kafka import partitions_of


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
        self._lock = threading.Lock()  # one writer transaction at a time
        self.con = self._open()
        # The DDL in schema.py is the one description of each table; Arrow follows it.
        self.schemas = {
            table: self.con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema  # noqa: S608
            for table in set(self.tables.values()) - {"raw_events"}
        }

    def _open(self) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.path))
        schema.create(con, self.plan, self.settings.topics.usage, self.settings.topics.system)
        return con

    def offsets(self) -> dict[TopicPartition, int]:
        with self.reader() as cur:
            rows = cur.execute('SELECT topic, "partition", next_offset FROM offsets').fetchall()
        return {TopicPartition(t, p): o for t, p, o in rows}

    @contextlib.contextmanager
    def reader(self) -> Any:
        """A cursor of its own: reads see the last committed batch and never wait for one."""
        cur = self.con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def write(self, records: list[Record]) -> int:
        """One transaction: every row of the batch and the offsets it reached."""
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        archive: list[Record] = []
        reached: dict[tuple[str, int], int] = {}
        for record in records:
            table = self.tables[record.topic]
            if table == "raw_events":
                archive.append(record)
            elif (row := rows_for(table, record)) is not None:
                by_table[table].append(row)
            key = (record.topic, record.partition)
            reached[key] = max(reached.get(key, 0), record.offset + 1)
        offsets = [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in reached.items()]
        with self._lock:
            con = self.con
            con.execute("BEGIN")
            try:
                if archive:
                    con.register("raw_batch", raw_batch(archive))
                    con.execute(schema.ARCHIVE)
                    con.unregister("raw_batch")
                for table, rows in by_table.items():
                    con.register("batch", to_arrow(self.schemas[table], rows))
                    # Output ids are unique: a record the worker sent twice is one row. The
                    # archive has no key; the offsets alone keep it free of duplicates.
                    sql = f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM batch"  # noqa: S608
                    con.execute(sql)
                    con.unregister("batch")
                con.register("reached", _offsets_arrow(offsets))
                con.execute("INSERT OR REPLACE INTO offsets BY NAME SELECT * FROM reached")
                con.unregister("reached")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        written = len(archive) + sum(len(rows) for rows in by_table.values())
        self.rows_written += written
        if self.on_written is not None:
            counts = {table: len(rows) for table, rows in by_table.items()}
            self.on_written({**counts, "raw_events": len(archive)} if archive else counts)
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
                        tuple((k, v) for k, v in (r.headers or ())),
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

    def close(self) -> None:
        with self._lock:
            self.con.close()


def _reached(stored: dict[TopicPartition, int], until: dict[TopicPartition, int]) -> bool:
    return all(stored.get(tp, 0) >= end for tp, end in until.items() if end > 0)


def _offsets_arrow(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema_ = pa.schema(
        [("topic", pa.string()), ("partition", pa.int32()), ("next_offset", pa.int64())]
    )
    return pa.Table.from_pylist(rows, schema=schema_)
