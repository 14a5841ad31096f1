"""Pipeline benchmark: end-to-end throughput, latency, replay and memory of the real worker
and projector, against a plain aiokafka consumer of the same topic in the same run.

    python -m bench.pipeline                 # 2,000,000 events, 10,000 tenants (make bench)
    python -m bench.pipeline --quick         # a harness check for CI

Phases, all on one local broker:
1. end to end: worker and projector running, every licence then usage record produced as
   fast as the broker takes it; from the first send until the worker group has committed
   every input offset and the read model holds every usage record;
2. baseline: a plain aiokafka consumer reading the usage topic from the start and decoding
   every record with orjson (what Kafka and JSON alone cost);
3. latency: usage produced at steady rates (`--rate`, one run each); from each send to the
   record being visible in the read model's `usage` (polled every 10 ms), and the worker's
   own lag histogram;
4. replay: a worker with a new group and empty state rebuilds everything from the log;
5. memory: a fresh worker's peak and current RSS after each of the memory points (same
   tenants, one month, more events).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.load import (
    Load,
    build_load,
    fast_producer,
    fresh_ids,
    produce_all,
    produce_steady,
    unkeyed,
)
from bench.readmodel import consume_baseline
from bench.report import report
from bench.stack import Component, cpu_seconds, environment, histogram_quantile, start
from metering.broker import start_broker
from projections.months import month_of, previous_month
from runtime.settings import Settings
from streams.kafka import ensure_topics
from streams.progress import OffsetsProbe, behind


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Watch:
    """How far the worker group and the read model are behind the input topics."""

    def __init__(self, settings: Settings, api_url: str) -> None:
        self.settings = settings
        self.probe = OffsetsProbe(settings)
        self.http = httpx.AsyncClient(base_url=api_url, timeout=30)

    async def __aenter__(self) -> Watch:
        await self.probe.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.probe.stop()
        await self.http.aclose()

    async def read_model(self) -> dict[int, int]:
        topic = self.settings.topics.usage
        # our own topic name, validated by Settings
        sql = f"SELECT partition, next_offset FROM offsets WHERE topic = '{topic}'"  # noqa: S608  # nosec B608
        response = await self.http.post(
            "/v1/sql", params={"consistent": "false"}, json={"sql": sql}
        )
        response.raise_for_status()
        return {int(p): int(o) for p, o in response.json()["rows"]}

    async def behind(self, group: str, read_model: bool = True) -> tuple[int, int]:
        """Records the worker group and the read model still have to take."""
        topics = self.settings.topics
        ends = await self.probe.end_offsets(*topics.inputs)
        committed = await self.probe.committed(group, list(ends))
        model = 0
        if read_model:
            held = await self.read_model()
            model = sum(
                max(0, end - held.get(tp.partition, 0))
                for tp, end in ends.items()
                if tp.topic == topics.usage
            )
        return behind(committed, ends), model

    async def until_caught_up(
        self, group: str, what: str, total: int, read_model: bool = True
    ) -> tuple[float, float]:
        """Wait until both have taken everything; returns when each did (monotonic)."""
        worker_at = model_at = 0.0
        shown = time.monotonic()
        while not (worker_at and model_at):
            worker, model = await self.behind(group, read_model)
            now = time.monotonic()
            worker_at = worker_at or (now if worker == 0 else 0.0)
            model_at = model_at or (now if model == 0 else 0.0)
            if now - shown > 5:
                say(f"  {what}: worker {worker:,} behind, read model {model:,} behind of {total:,}")
                shown = now
            await asyncio.sleep(0.05)
        return worker_at, model_at


async def end_to_end(
    settings: Settings, load: Load, watch: Watch, cpu: dict[str, int]
) -> dict[str, float]:
    """`cpu` names the processes (pid) whose CPU time per event is reported as well: on a
    2-core machine the sum of those is what bounds the rate."""
    topics = settings.topics
    total = len(load.usage)
    sent = 0

    def progress(n: int) -> None:
        nonlocal sent
        sent += n
        if sent % 200_000 < n:
            say(f"  end to end: produced {sent:,} of {total:,}")

    before = {name: cpu_seconds(pid) for name, pid in cpu.items()}
    own_before = time.process_time()
    async with watch:
        started = time.monotonic()
        await produce_all(settings, topics.licenses, load.licences, lambda n: None)
        await produce_all(settings, topics.usage, load.usage, progress)
        produced = time.monotonic()
        worker_at, model_at = await watch.until_caught_up(settings.app_id, "end to end", total)
    done = max(worker_at, model_at)
    used = {
        f"cpu_us_per_event_{name}": (cpu_seconds(pid) - before[name]) / total * 1e6
        for name, pid in cpu.items()
    }
    used["cpu_us_per_event_producer"] = (time.process_time() - own_before) / total * 1e6
    return used | {
        "e2e_usage_events": total,
        "e2e_duplicate_share": load.duplicate_share,
        "e2e_produce_events_per_s": total / (produced - started),
        "e2e_worker_events_per_s": total / (worker_at - started),
        "e2e_read_model_events_per_s": total / (model_at - started),
        "e2e_events_per_s": total / (done - started),
    }


async def baseline(settings: Settings) -> dict[str, float]:
    count, seconds, cpu = await consume_baseline(settings)
    return {
        "baseline_records": count,
        "baseline_events_per_s": count / seconds,
        "baseline_cpu_us_per_event": cpu / count * 1e6,
    }


async def split(workers: list[Component]) -> dict[str, float]:
    """With more than one worker: the usage-log partitions each holds (its
    `metering_worker_partitions`), and all workers' CPU per event together."""
    if len(workers) < 2:
        return {}
    figures: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for n, component in enumerate(workers, start=1):
            text = (await http.get(component.ready["metrics_url"])).text
            held = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("metering_worker_partitions ")
            )
            figures[f"worker_{n}_partitions"] = held
    return figures


def lag_buckets(text: str) -> list[tuple[float, float]]:
    for family in text_string_to_metric_families(text):
        if family.name == "metering_processing_lag_seconds":
            return sorted(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket") and s.labels.get("clock") == "log"
            )
    return []


async def latency(
    settings: Settings, load: Load, watch: Watch, worker: Component, rate: float, seconds: float
) -> dict[str, float]:
    records = fresh_ids(load.usage[: int(rate * seconds)], f"lat{uuid.uuid4().hex[:6]}")
    seen: dict[int, tuple[list[int], list[float]]] = {}
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            held = await watch.read_model()
            now = time.monotonic()
            for partition, offset in held.items():
                offsets, times = seen.setdefault(partition, ([], []))
                if not offsets or offset > offsets[-1]:
                    offsets.append(offset)
                    times.append(now)
            await asyncio.sleep(0.01)

    async with watch, httpx.AsyncClient(timeout=30) as http:
        before = lag_buckets((await http.get(worker.ready["metrics_url"])).text)
        poller = asyncio.create_task(poll())
        client = fast_producer(settings)
        await client.start()
        try:
            positions = await produce_steady(client, settings.topics.usage, records, rate)
        finally:
            await client.stop()
        await watch.until_caught_up(settings.app_id, "latency", len(records))
        await asyncio.sleep(0.05)
        done.set()
        await poller
        after = lag_buckets((await http.get(worker.ready["metrics_url"])).text)
    waits = []
    for at, partition, offset in positions:
        offsets, times = seen[partition]
        waits.append(times[bisect.bisect_right(offsets, offset)] - at)
    waits.sort()
    delta = [(le, count - dict(before).get(le, 0.0)) for le, count in after]
    return {
        "latency_rate_per_s": rate,
        "latency_events": len(waits),
        "latency_p50_s": waits[len(waits) // 2],
        "latency_p99_s": waits[int(len(waits) * 0.99)],
        "latency_max_s": waits[-1],
        "worker_lag_p50_s": histogram_quantile(0.5, delta),
        "worker_lag_p99_s": histogram_quantile(0.99, delta),
    }


async def replay(
    settings: Settings, env: dict[str, str], workdir: Path, api_url: str
) -> dict[str, float]:
    """A new group with empty state over the whole log; timed from its start."""
    group = f"{settings.app_id}-replay"
    probe = OffsetsProbe(settings)
    await probe.start()
    try:
        records = sum((await probe.end_offsets(*settings.topics.inputs)).values())
    finally:
        await probe.stop()
    started = time.monotonic()
    worker = await asyncio.to_thread(start, "worker", {**env, "METERING_APP_ID": group}, workdir)
    try:
        async with Watch(settings, api_url) as watch:
            worker_at, _ = await watch.until_caught_up(group, "replay", records, False)
    finally:
        worker.stop()
    return {"replay_records": records, "replay_events_per_s": records / (worker_at - started)}


async def memory(
    settings: Settings, env: dict[str, str], workdir: Path, api_url: str, load: Load,
    points: list[int],
) -> dict[str, float]:  # fmt: skip
    """A worker on its own topics; its peak RSS after each point of the same load."""
    figures: dict[str, float] = {}
    worker = await asyncio.to_thread(start, "worker", env, workdir)
    try:
        async with Watch(settings, api_url) as watch:
            await produce_all(settings, settings.topics.licenses, load.licences, lambda n: None)
            done = 0
            for point in points:
                batch = load.usage[done:point]
                await produce_all(settings, settings.topics.usage, batch, lambda n: None)
                done = point
                what = f"memory at {point:,}"
                await watch.until_caught_up(settings.app_id, what, point, False)
                figures[f"worker_peak_rss_mib_at_{point}"] = worker.peak_rss_mib()
                figures[f"worker_rss_mib_at_{point}"] = worker.rss_mib()
    finally:
        worker.stop()
    first, last = points[0], points[-1]
    figures["memory_growth_ratio"] = (
        figures[f"worker_peak_rss_mib_at_{last}"] / figures[f"worker_peak_rss_mib_at_{first}"]
    )
    return figures


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    broker = start_broker(workdir / "kafka", Settings().cache_dir)
    components: list[Component] = []
    try:
        tag = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, topic_prefix=f"bench-{tag}-",
            app_id=f"bench-{tag}", partitions=args.partitions,
        )  # fmt: skip
        asyncio.run(ensure_topics(settings))
        month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
        say(f"generating {args.events:,} usage events for {args.tenants:,} tenants")
        load = build_load(args.events, args.tenants, month)
        load.usage = unkeyed(load.usage, args.unkeyed)
        env = environment(broker.bootstrap, settings.topic_prefix, settings.app_id, workdir)
        env["METERING_PARTITIONS"] = str(args.partitions)
        env["METERING_BATCH_SIZE"] = str(args.batch_size)
        components.append(start("projector", env, workdir))
        api_url = components[0].ready["api_url"]
        workers = [start("worker", env, workdir) for _ in range(args.workers)]
        worker = workers[0]
        components.extend(workers)
        figures: dict[str, Any] = {
            "tenants": args.tenants, "partitions": args.partitions, "unkeyed": args.unkeyed,
            "workers": args.workers, "batch_size": args.batch_size,
        }  # fmt: skip
        say(f"end to end ({args.workers} worker{'s' if args.workers > 1 else ''})")
        cpu = {
            "worker": worker.process.pid,
            "read_model": components[0].process.pid,
            "broker": broker.process.pid,
            **{f"worker_{n}": w.process.pid for n, w in enumerate(workers[1:], start=2)},
        }
        figures.update(asyncio.run(end_to_end(settings, load, Watch(settings, api_url), cpu)))
        figures.update(asyncio.run(split(workers)))
        figures["worker_peak_rss_mib"] = worker.peak_rss_mib()
        for extra in workers[1:]:  # the later phases measure one worker
            extra.stop()
            components.remove(extra)
        say("baseline: plain aiokafka consumer")
        figures.update(asyncio.run(baseline(settings)))
        for name in ("e2e", "e2e_worker", "e2e_read_model", "e2e_produce"):
            figures[f"{name}_vs_baseline"] = (
                figures[f"{name}_events_per_s"] / figures["baseline_events_per_s"]
            )
        for rate in args.rate:
            say(f"latency at {rate:,.0f} events/s for {args.seconds:g} s")
            watch = Watch(settings, api_url)
            measured = asyncio.run(latency(settings, load, watch, worker, rate, args.seconds))
            # The first rate keeps the plain names (earlier results compare), others are tagged.
            tag = "" if rate == args.rate[0] else f"_at_{rate:.0f}"
            figures.update({f"{name}{tag}": value for name, value in measured.items()})
        worker.stop()
        components.remove(worker)
        say("replay")
        figures.update(asyncio.run(replay(settings, env, workdir, api_url)))
        replayed = figures["replay_events_per_s"]
        figures["replay_vs_live"] = replayed / figures["e2e_worker_events_per_s"]
        figures["replay_vs_baseline"] = replayed / figures["baseline_events_per_s"]
        points = sorted(args.memory)
        say(f"memory at {', '.join(f'{p:,}' for p in points)} events")
        mem = Settings(
            kafka_bootstrap=broker.bootstrap, topic_prefix=f"bench-{tag}-mem-",
            app_id=f"bench-{tag}-mem", partitions=args.partitions,
        )  # fmt: skip
        asyncio.run(ensure_topics(mem))
        big = build_load(points[-1], args.tenants, month, seed=7)
        mem_env = {**env, "METERING_TOPIC_PREFIX": mem.topic_prefix, "METERING_APP_ID": mem.app_id}
        figures.update(asyncio.run(memory(mem, mem_env, workdir, api_url, big, points)))
        return figures
    finally:
        for component in components:
            component.stop()
        broker.stop()


T = TypeVar("T")


def numbers(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type: comma-separated numbers of `kind`."""
    return lambda text: [kind(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2_000_000, help="usage events end to end")
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, default=1,
        help="workers in the group for the end-to-end run (each one's CPU per event and "
        "partitions are reported; the later phases run one)",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=numbers(float), default=[10_000, 30_000],
        help="comma-separated events/s of the latency runs, one after another (default "
        "10000,30000)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=30, help="length of the latency run")
    parser.add_argument(
        "--memory", type=numbers(int),
        default=[1_000_000, 5_000_000], help="comma-separated event counts (default 1M,5M)",
    )  # fmt: skip
    parser.add_argument(
        "--unkeyed", type=float, default=0.0,
        help="share of usage records sent without a key (0-1): they land on any partition, "
        "and the worker moves those off their tenant's partition (default 0: all keyed)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=Settings.model_fields["batch_size"].default,
        help="METERING_BATCH_SIZE of every worker: most records fetched and folded at once "
        "(default: the setting's, 5000)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="20,000 events, 200 tenants, 3 s at 2,000/s and 4,000/s, memory at 10,000 and 40,000",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.events, args.tenants, args.rate, args.seconds = 20_000, 200, [2_000, 4_000], 3
        args.memory = [10_000, 40_000]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        figures = run(args, Path(tmp))
    report(figures, "pipeline", args.quick)


if __name__ == "__main__":
    main()
