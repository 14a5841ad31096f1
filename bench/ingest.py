"""HTTP ingest benchmark: batched throughput and single-event latency of POST /v1/events,
against a raw aiokafka producer writing the same events in the same run (the baseline).

    python -m bench.ingest            # 50,000 events per batch size, 1,000 single posts
    python -m bench.ingest --quick    # a harness check for CI
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.report import report
from bench.stack import Component, environment, start
from metering.broker import start_broker
from metering.generate import generate_month
from projections.months import month_of, previous_month
from runtime.settings import Settings
from streams.kafka import ensure_topics, producer

BATCH = "application/cloudevents-batch+json"


def usage_events(count: int, month: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for event in generate_month(month, tenants=count // 1000 + 1, seed=9):
        if event["type"].startswith("metering."):
            events.append({**event, "id": f"{event['id']}-{len(events)}"})
        if len(events) >= count:
            break
    return events


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def raw_baseline(
    settings: Settings, events: list[dict[str, Any]], singles: int
) -> dict[str, float]:
    """The same events straight to Kafka: throughput, and per-event acknowledged latency."""
    payloads = [(orjson.dumps(e), e["subject"].encode()) for e in events]
    async with producer(settings) as client:
        started = time.perf_counter()
        futures = [await client.send(settings.topics.usage, v, key=k) for v, k in payloads]
        await asyncio.gather(*futures)
        throughput = len(payloads) / (time.perf_counter() - started)
        latencies = []
        for value, key in payloads[:singles]:
            t = time.perf_counter()
            await client.send_and_wait(settings.topics.usage, value, key=key)
            latencies.append((time.perf_counter() - t) * 1000)
    return {
        "raw_producer_events_per_s": throughput,
        "raw_single_p50_ms": percentile(latencies, 50),
        "raw_single_p99_ms": percentile(latencies, 99),
    }


def http_figures(url: str, events: list[dict[str, Any]], singles: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for size in (100, 1000):
            started = time.perf_counter()
            for start in range(0, len(events), size):
                response = client.post(
                    "/v1/events", content=orjson.dumps(events[start : start + size]),
                    headers={"Content-Type": BATCH},
                )  # fmt: skip
                response.raise_for_status()
            figures[f"http_batch_{size}_events_per_s"] = len(events) / (
                time.perf_counter() - started
            )
        latencies = []
        for event in events[:singles]:
            t = time.perf_counter()
            response = client.post(
                "/v1/events", content=orjson.dumps(event),
                headers={"Content-Type": "application/cloudevents+json"},
            )  # fmt: skip
            response.raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
    figures["http_single_p50_ms"] = percentile(latencies, 50)
    figures["http_single_p99_ms"] = percentile(latencies, 99)
    return figures


def run(count: int, singles: int, workdir: Path) -> dict[str, Any]:
    broker = start_broker(workdir / "kafka", Settings().cache_dir)
    api: Component | None = None
    try:
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, partitions=8)
        asyncio.run(ensure_topics(settings))
        env = environment(broker.bootstrap, prefix, prefix.rstrip("-"), workdir)
        env["METERING_INGEST_MAX_BYTES"] = str(8 << 20)
        api = start("projector", env, workdir)
        url = api.ready["api_url"]
        month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
        events = usage_events(count, month)
        figures: dict[str, Any] = {"events": len(events), "single_posts": singles}
        figures.update(asyncio.run(raw_baseline(settings, events, singles)))
        figures.update(http_figures(url, events, singles))
        for size in (100, 1000):
            figures[f"http_batch_{size}_vs_raw"] = (
                figures[f"http_batch_{size}_events_per_s"] / figures["raw_producer_events_per_s"]
            )
        return figures
    finally:
        if api is not None:
            api.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--singles", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 50 single posts")
    args = parser.parse_args()
    count, singles = (2_000, 50) if args.quick else (args.events, args.singles)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        figures = run(count, singles, Path(tmp))
    report(figures, "ingest", args.quick)


if __name__ == "__main__":
    main()
