"""Notifier benchmark: how many signed webhooks per second `metering notifier` delivers, its
CPU per delivery and its memory, beside a plain httpx client posting to the same receiver.

    python -m bench.notifier              # 4,000 threshold crossings (make bench)
    python -m bench.notifier --quick      # a harness check for CI

Threshold crossings are written straight to `threshold-crossings` (no worker), one
subscription wants them all, and a local receiver answers 204 at once. Timed from the first
crossing produced until the receiver has every webhook. The baseline posts as many bodies to
the same receiver with one httpx client, 32 at a time: what the receiver and HTTP alone allow.
Then crossings at a steady rate (`--rate`, below the throughput) for `--seconds`: the lag
from each crossing produced to its webhook's arrival, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.report import report
from bench.stack import Component, environment, start
from metering.broker import start_broker
from runtime.settings import Settings
from streams.kafka import ensure_topics, producer


class Receiver(ThreadingHTTPServer):
    """Counts POSTs and answers each 204 at once, keeping connections alive."""

    request_queue_size = 256
    daemon_threads = True

    def __init__(self) -> None:
        self.count = 0
        self.arrived: dict[str, float] = {}  # webhook id -> when it first arrived (monotonic)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server's name
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.count += 1
                    webhook_id = self.headers.get("webhook-id")
                    if webhook_id is not None:  # the baseline's posts have none
                        receiver.arrived.setdefault(webhook_id, time.monotonic())
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_port}/hook"
        threading.Thread(target=self.serve_forever, daemon=True).start()


async def baseline(url: str, count: int) -> float:
    async with httpx.AsyncClient() as client:
        slots = asyncio.Semaphore(32)

        async def one() -> None:
            async with slots:
                await client.post(url, content=b"{}")

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.monotonic() - started)


def crossings(count: int, now: dt.datetime) -> list[tuple[bytes, bytes]]:
    records = []
    for n in range(count):
        tenant = f"tenant-{n % 1000:04d}"
        crossing = {
            "id": str(uuid.uuid4()), "tenant": tenant, "service": "chat",
            "usage_month": now.strftime("%Y-%m"), "level": "warning", "package": None,
            "usage": 900, "included": 1000, "users": 40, "crossed_by": f"crm/{n}",
            "crossed_at": now.isoformat(),
        }  # fmt: skip
        records.append((tenant.encode(), orjson.dumps(crossing)))
    return records


async def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    async with producer(settings) as client:
        for key, value in records:
            await client.send(settings.topics.crossings, value, key=key)
        await client.flush()


async def steady(
    settings: Settings, records: list[tuple[bytes, bytes]], rate: float
) -> dict[str, float]:
    """Produce at `rate` per second; each crossing's id -> when it was sent (monotonic)."""
    sent: dict[str, float] = {}
    async with producer(settings) as client:
        started = time.monotonic()
        for n, (key, value) in enumerate(records):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            sent[orjson.loads(value)["id"]] = time.monotonic()
            await client.send(settings.topics.crossings, value, key=key)
        await client.flush()
    return sent


def lag_figures(receiver: Receiver, sent: dict[str, float], rate: float) -> dict[str, float]:
    """Produced -> first arrival at the receiver, p50 and p99, at a steady rate."""
    deadline = time.monotonic() + 120
    while not all(i in receiver.arrived for i in sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    lags = sorted(receiver.arrived[i] - t for i, t in sent.items() if i in receiver.arrived)
    if len(lags) < len(sent):
        raise TimeoutError(f"{len(lags)} of {len(sent)} delivered at {rate}/s")
    return {
        f"lag_at_{rate:.0f}_per_s_p50_s": lags[len(lags) // 2],
        f"lag_at_{rate:.0f}_per_s_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
    }


def run(count: int, workdir: Path, rate: float, seconds: float) -> dict[str, Any]:
    broker = start_broker(workdir / "kafka", Settings().cache_dir)
    receiver = Receiver()
    components: list[Component] = []
    try:
        figures: dict[str, Any] = {"deliveries": count}
        figures["baseline_posts_per_s"] = asyncio.run(baseline(receiver.url, count))
        receiver.count = 0
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, partitions=8)
        asyncio.run(ensure_topics(settings))
        env = environment(broker.bootstrap, prefix, prefix.rstrip("-"), workdir)
        env["METERING_WEBHOOK_ALLOW_PRIVATE"] = "true"
        components.append(api := start("projector", env, workdir))
        components.append(notifier := start("notifier", env, workdir))
        made = httpx.post(
            f"{api.ready['api_url']}/v1/webhooks",
            json={"url": receiver.url, "event_types": ["threshold.warning"]}, timeout=30,
        )  # fmt: skip
        made.raise_for_status()
        time.sleep(2)  # the notifier reads the new subscription
        records = crossings(count, dt.datetime.now(dt.UTC))
        cpu, started = notifier.cpu_seconds(), time.monotonic()
        asyncio.run(produce(settings, records))
        while receiver.count < count:
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{receiver.count} of {count} delivered in 10 minutes")
            time.sleep(0.2)
        took = time.monotonic() - started
        figures["notifier_deliveries_per_s"] = count / took
        figures["notifier_cpu_us_per_delivery"] = (notifier.cpu_seconds() - cpu) / count * 1e6
        # Lag at a steady rate below the throughput: the webhook ids are the crossings' ids.
        records = crossings(int(rate * seconds), dt.datetime.now(dt.UTC))
        figures.update(lag_figures(receiver, asyncio.run(steady(settings, records, rate)), rate))
        figures["notifier_peak_rss_mib"] = notifier.peak_rss_mib()
        figures["notifier_vs_baseline"] = (
            figures["notifier_deliveries_per_s"] / figures["baseline_posts_per_s"]
        )
        return figures
    finally:
        for component in components:
            component.stop()
        receiver.shutdown()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=4_000)
    parser.add_argument("--rate", type=float, default=50.0, help="crossings/s of the lag run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the lag run")
    parser.add_argument("--quick", action="store_true", help="200 deliveries, 3 s of lag run")
    args = parser.parse_args()
    count, seconds = (200, 3.0) if args.quick else (args.deliveries, args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-notifier-") as tmp:
        figures = run(count, Path(tmp), args.rate, seconds)
    report(figures, "notifier", args.quick)


if __name__ == "__main__":
    main()
