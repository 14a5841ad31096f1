"""Read-model benchmark: projector throughput (Kafka -> DuckDB), audit time, and what a
tenant's reads (usage, 12-month history, the Licences page) take on the archive.

Baselines from the same run, on the same rows:
- a plain aiokafka consumer reading the same topic (what Kafka alone costs),
- DuckDB's own bulk load of the same rows from Parquet (what DuckDB alone costs),
- a single GROUP BY scan of the raw archive (the least an audit must read),
- a count of one tenant's raw events (the least a tenant's read must find).

    python -m bench.readmodel --events 10000000     # the full run (make bench)
    python -m bench.readmodel --quick               # 20,000 events, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq

from bench.report import report
from billing.plan import load_plan
from metering.broker import start_broker
from metering.generate import generate_month
from projections.months import month_of, months_until, next_month, previous_month
from readmodel import queries, whatif
from runtime.settings import Settings
from streams.kafka import (
    consumer,
    end_offsets,
    ensure_topics,
    partitions_of,
    producer,
    read_to_end,
)
from streams.projector import Projector
from web.routes import page_data


async def produce(settings: Settings, events: int, month: str) -> int:
    """Write `events` generated usage events (2 % duplicates included) to the usage topic."""
    tenants = max(1, events // 1000 + 1)  # a tenant-month is about 1,350 usage events
    sent = 0
    async with producer(settings, linger_ms=50, max_batch_size=512 * 1024) as client:
        pending = []
        for event in generate_month(month, tenants, seed=42):
            if not event["type"].startswith("metering."):
                continue
            pending.append(
                await client.send(
                    settings.topics.usage, orjson.dumps(event), key=event["subject"].encode()
                )
            )
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if sent >= events:
                break
        await asyncio.gather(*pending)
    return sent


async def consume_baseline(settings: Settings) -> tuple[int, float, float]:
    """Read and JSON-decode every record of the usage topic with a plain consumer: what Kafka
    and JSON alone cost. Returns the records read, the seconds and the CPU seconds (every
    thread of this process) it took."""
    tps = await partitions_of(settings, settings.topics.usage)
    async with consumer(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as client:
        ends = await client.end_offsets(tps)
        count = 0
        started, cpu = time.perf_counter(), time.process_time()
        async for _, records in read_to_end(client, ends):
            for record in records:
                orjson.loads(record.value or b"{}")
            count += len(records)
        return count, time.perf_counter() - started, time.process_time() - cpu


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def read_latencies(
    cur: duckdb.DuckDBPyConnection, month: str, usage_topic: str, tenants: int = 40
) -> dict[str, float]:
    """p50 and p99 in ms of what a tenant's reads cost the read model, each over `tenants`
    tenants drawn at random, twice: the usage endpoint (one month), the 12-month history,
    and everything the Licences page reads (`web.routes.page_data`). The baseline is one
    indexed-free point read of the same tenant's raw events (`count(*)`)."""
    sample = f"USING SAMPLE reservoir({int(tenants)} ROWS) REPEATABLE (7)"  # DuckDB binds no ?
    drawn = cur.execute(f"SELECT DISTINCT subject FROM (FROM raw_events {sample})").fetchall()  # noqa: S608  # nosec B608
    names = [row[0] for row in drawn] * 2
    first = months_until(month, 12)[0]
    # The page as seen on the 2nd of the month after: its next invoice previews `month`.
    plan, now = load_plan(), dt.datetime.fromisoformat(f"{next_month(month)}-02T00:00:00+00:00")
    reads: dict[str, Any] = {
        "usage": lambda t: queries.usage(cur, t, month),
        "history": lambda t: queries.usage_history(cur, t, first, month),
        "licences_page": lambda t: page_data(cur, t, first, month, plan, now, usage_topic),
        # the page's next invoice alone (issue 18): a tenant's state rebuilt and closed
        "next_invoice": lambda t: whatif.preview(cur, plan, now, None, usage_topic, t),
        "baseline_tenant_scan": lambda t: cur.execute(
            "SELECT count(*) FROM raw_events WHERE subject = ?", [t]
        ).fetchall(),
    }
    figures: dict[str, float] = {}
    for name, read in reads.items():
        took = sorted(timed(lambda t=tenant, r=read: r(t))[1] * 1000 for tenant in names)
        figures[f"read_{name}_p50_ms"] = took[len(took) // 2]
        figures[f"read_{name}_p99_ms"] = took[min(len(took) - 1, int(len(took) * 0.99))]
    return figures


def run(events: int, bootstrap: str | None, workdir: Path) -> dict[str, Any]:
    broker = None
    if bootstrap is None:
        broker = start_broker(workdir / "kafka", Settings().cache_dir)
        bootstrap = broker.bootstrap
    try:
        settings = Settings(
            kafka_bootstrap=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:6]}-", partitions=8
        )
        month = previous_month(previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC)))
        asyncio.run(ensure_topics(settings))
        sent, produce_s = timed(lambda: asyncio.run(produce(settings, events, month)))
        (consumed, consume_s, consume_cpu) = asyncio.run(consume_baseline(settings))

        path = workdir / "readmodel.duckdb"
        projector = Projector(settings, load_plan(), path)

        async def project() -> None:
            ends = await end_offsets(settings, tuple(projector.tables))
            await projector.run(asyncio.Event(), until=ends)

        cpu = time.process_time()  # the projector's own CPU: DuckDB's threads are ours too
        _, project_s = timed(lambda: asyncio.run(project()))
        project_cpu = time.process_time() - cpu
        rows = projector.rows_written

        parquet = workdir / "raw.parquet"
        with projector.reader() as cur:
            # Through Arrow: the read model's own connection may not write files (SECURITY.md).
            pq.write_table(cur.sql("FROM raw_events").to_arrow_table(), parquet)
        bulk = duckdb.connect(str(workdir / "bulk.duckdb"))
        _, bulk_s = timed(
            lambda: bulk.execute(f"CREATE TABLE raw AS FROM read_parquet('{parquet}')")
        )
        bulk.close()

        with projector.reader() as cur:
            # A close that took effect at the end of every partition, so that audit has a month.
            cur.execute(
                "INSERT INTO month_closes SELECT 'bench-' || p, 'bench', ?, p, 0, 0, 0 "
                "FROM range(?) t(p)",
                [month, settings.partitions],
            )
            _, scan_s = timed(
                lambda: cur.execute(
                    "SELECT subject, type, sum(TRY_CAST(data->>'$.quantity' AS BIGINT)) "
                    "FROM raw_events GROUP BY ALL"
                ).fetchall()
            )
            diffs, audit_s = timed(lambda: queries.audit(cur, month, settings.topics.usage))
            reads = read_latencies(cur, month, settings.topics.usage)
        projector.close()
        return {
            "events": sent,
            "produce_events_per_s": sent / produce_s,
            "baseline_consume_events_per_s": consumed / consume_s,
            "projector_rows": rows,
            "projector_rows_per_s": rows / project_s,
            "projector_vs_consume": (rows / project_s) / (consumed / consume_s),
            "projector_cpu_us_per_event": project_cpu / rows * 1e6,
            "baseline_consume_cpu_us_per_event": consume_cpu / consumed * 1e6,
            "baseline_parquet_load_rows_per_s": rows / bulk_s,
            "projector_vs_parquet_load": (rows / project_s) / (rows / bulk_s),
            "audit_seconds": audit_s,
            "audit_tenant_services": len(diffs),
            "baseline_scan_seconds": scan_s,
            "audit_vs_scan": audit_s / scan_s,
            **reads,
        }
    finally:
        if broker is not None:
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 events: checks the harness")
    parser.add_argument("--bootstrap", default=os.environ.get("METERING_KAFKA_BOOTSTRAP"))
    args = parser.parse_args()
    events = 20_000 if args.quick else args.events
    with tempfile.TemporaryDirectory(prefix="bench-readmodel-") as tmp:
        figures = run(events, args.bootstrap, Path(tmp))
    report(figures, "readmodel", args.quick)


if __name__ == "__main__":
    main()
