"""The stream worker: one aiokafka consumer in the group `METERING_APP_ID` over the three input
topics, folding whole fetches at a time and owning its offset commits.

Each fetch (up to `METERING_BATCH_SIZE` records) is decoded, folded by
`projections.batch.fold_batch` into the in-memory `Store`, and its outputs are sent at once.
Every `METERING_COMMIT_INTERVAL` seconds the worker flushes: it waits until the broker has the
outputs, writes the changed state to the changelogs, waits again, and only then commits the
offsets it has folded. A worker killed at any instant therefore restarts from a commit whose
state and outputs are all in Kafka; what it folds again is recognised by the per-tenant
applied offset and the dedupe entries (see the README's processing guarantee).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import time
import uuid
from collections import Counter
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import CollectorRegistry

from billing.plan import Plan
from observability.exposition import serve
from observability.metrics import WorkerMetrics
from projections.batch import BatchResult, fold_batch
from projections.decode import check_system_event, decode
from projections.events import CloseMarkerSeen, Decoded, Position, UsageRecorded, trusted
from projections.months import auto_close_due
from projections.plain import PlainUsage, plain_decoder
from projections.tenant import Triggers
from runtime.collector import HeapTrimmer, freeze_long_lived, tune_collector
from runtime.settings import Settings
from schemas.records import DeadLetter
from streams import routing
from streams.commands import request_close
from streams.kafka import new_producer, partitions_of, require_started
from streams.logs import quiet_coordinator_startup
from streams.outputs import Outputs, load_emitted
from streams.routing import Route
from streams.seen import SeenIndex, index_path
from streams.store import Store, ensure_changelogs, restore

log = logging.getLogger("metering.worker")

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


def position_of(record: Record) -> Position:
    """Where a record sits; a copy also names its original and takes its log time."""
    # Built from the broker's own fields: nothing to validate, and it is done for every record.
    return trusted(
        Position,
        **routing.position(
            record.topic, record.partition, record.offset, record.timestamp,
            record.headers or (),
        ),
    )  # fmt: skip


class Worker(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, settings: Settings, plan: Plan) -> None:
        self.settings = settings
        self.plan = plan
        self.topics = settings.topics
        self.metrics = WorkerMetrics(CollectorRegistry(), plan.catalog.names)
        self._index: SeenIndex | None = None  # built by run(): it is a file
        self._store: Store | None = None
        self.barrier_origins: frozenset[str] = frozenset()  # known once the topics are
        self.partitions = 0  # of the usage log
        self.triggers = Triggers(plan)
        self.plain = plain_decoder(plan)
        self.stopping = asyncio.Event()
        self.assigned = asyncio.Event()
        # Held while a fetch is folded and while partitions move, so neither sees the other
        # half-done; `generation` tells a fetch taken before a rebalance to be dropped.
        self.lock = asyncio.Lock()
        self.generation = 0
        self.folded: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self.pending: list[asyncio.Future[Any]] = []  # sends not yet acknowledged
        self.last_flush = time.monotonic()
        self.trim_heap = HeapTrimmer(time.monotonic)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._outputs: Outputs | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return require_started(self._consumer)

    @property
    def producer(self) -> AIOKafkaProducer:
        return require_started(self._producer)

    @property
    def store(self) -> Store:
        return require_started(self._store)

    @property
    def outputs(self) -> Outputs:
        return require_started(self._outputs)

    def consumer_config(self) -> dict[str, Any]:
        settings = self.settings
        session_ms = int(settings.kafka_session_timeout * 1000)
        return {
            "bootstrap_servers": settings.bootstrap(),
            "group_id": settings.app_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": min(3000, session_ms // 3),
            "max_poll_records": settings.batch_size,
            "max_partition_fetch_bytes": 4 << 20,
            **settings.kafka_options(),
        }

    # ConsumerRebalanceListener: called by aiokafka around every rebalance
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            self.generation += 1
            with contextlib.suppress(CommitFailedError, IllegalStateError):
                await self.flush()
            # Whatever was not committed is folded again by the partitions' next owner.
            self._store = Store(self.new_index())
            self.folded.clear()
            self.metrics.partitions_held.set(0)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            self.generation += 1
            self.metrics.rebalances.inc()
            partitions = {tp.partition for tp in assigned}
            restorer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap(), enable_auto_commit=False,
                **self.settings.kafka_options(),
            )  # fmt: skip
            usage = {tp.partition for tp in assigned if tp.topic == self.topics.usage}
            await restorer.start()
            try:
                index = self.new_index()
                self._store = await restore(
                    restorer, self.settings.app_id, partitions, index, self.plan, usage
                )
            finally:
                await restorer.stop()
            self.prune()
            freeze_long_lived()  # the restored state lives until the next rebalance
            log.info("assigned partitions %s: %s", sorted(partitions), self.store_summary())
            self.metrics.partitions_held.set(len(usage))
            self.assigned.set()

    def new_index(self) -> SeenIndex:
        """An empty dedupe index in place of the current one (a rebalance rebuilds it)."""
        if self._index is not None:
            self._index.close()
        self._index = SeenIndex(index_path(self.settings.data_dir, self.settings.app_id))
        return self._index

    def prune(self) -> None:
        if dropped := self.store.prune(self.plan):
            log.info("pruned %d dedupe keys of months closed to events", dropped)
        self.metrics.dedupe_entries.set(self.store.index.count)

    def store_summary(self) -> str:
        return f"{len(self.store.tenants)} tenants, {self.store.index.count} dedupe keys"

    @property
    def unflushed(self) -> bool:
        return bool(self.pending or self.folded or self.store.dirty)

    async def flush(self) -> None:
        """Outputs acknowledged, then state written and acknowledged, then offsets committed."""
        if self.pending:
            await asyncio.gather(*self.pending)
            self.pending.clear()
        if self.store.dirty:
            await self.store.flush(self.producer, self.settings.app_id)
        if self.folded:
            await self.consumer.commit(dict(self.folded))
            self.folded.clear()
        self.last_flush = time.monotonic()
        self.trim_heap()

    async def fold(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        here: list[Decoded | PlainUsage | DeadLetter] = []
        moved: Counter[tuple[str, str]] = Counter()
        for tp, records in fetched.items():
            if not records:
                continue
            self.metrics.received.labels(tp.topic).inc(len(records))
            if tp.topic == self.topics.system:
                await self.check_system(records)
            else:
                here.extend(await self.route(records, tp.topic == self.topics.usage, moved))
            self.folded[tp] = records[-1].offset + 1
        if here or moved:
            keys = []
            for item in here:
                if isinstance(item, PlainUsage | UsageRecorded):
                    keys.append(item.dedupe_key)
                    if (copy_key := item.copy_key) is not None:
                        keys.append(copy_key)
            self.store.prefetch(keys)
            result = fold_batch(here, self.store, self.plan, self.barrier_origins, self.triggers)
            result.outcomes.update(moved)
            await self.send(result)
            self.store.apply(result)
            if result.horizons:
                self.prune()
            self.metrics.dedupe_entries.set(self.store.index.count)
            self.metrics.observe(here, result, dt.datetime.now(dt.UTC))
            if result.closes:
                log.info("closed %s", ", ".join(f"{c.month} p{c.partition}" for c in result.closes))

    async def send(self, result: BatchResult) -> None:
        self.pending.extend(await self.outputs.send(result))

    async def route(
        self, records: list[Record], in_usage_log: bool, moved: Counter[tuple[str, str]]
    ) -> list[Decoded | PlainUsage | DeadLetter]:
        """Decode one partition's records in order; return those folded here and copy the
        others to their tenant's partition (see `streams.routing`). A copy is sent before
        any later record of the same partition, so a close marker follows what preceded it.

        A usage record without headers (no copy, no binary mode) is tried on the fast lane
        first (`projections.plain`); all else takes `decode`."""
        here: list[Decoded | PlainUsage | DeadLetter] = []
        plain, home, partitions = self.plain.decode, routing.home, self.partitions
        for record in records:
            if in_usage_log and not record.headers:
                fast = plain(
                    record.value, record.topic, record.partition, record.offset,
                    record.timestamp,
                )  # fmt: skip
                if fast is not None:
                    # What `routing.route` decides for it, without decoding it again.
                    at_home = home(fast.tenant, partitions)
                    if at_home == record.partition:
                        here.append(fast)
                    else:
                        await self.copy(record, at_home)
                        moved[(fast.service, "moved")] += 1
                    continue
            item = decode(record.value, position_of(record), self.plan, record.headers)
            where = routing.route(item, in_usage_log, self.partitions)
            if where in (Route.FOLD, Route.FOLD_AND_SPREAD):
                here.append(item)
            if where is Route.MOVE and not isinstance(item, DeadLetter | CloseMarkerSeen):
                await self.copy(record, routing.home(item.tenant, self.partitions))
                kind = item.service if isinstance(item, UsageRecorded) else "licence"
                moved[(kind, "moved")] += 1
            elif where in (Route.SPREAD, Route.FOLD_AND_SPREAD):
                for partition in range(self.partitions):
                    if not (in_usage_log and partition == record.partition):
                        await self.copy(record, partition)
        return here

    async def copy(self, record: Record, partition: int) -> None:
        headers = routing.copy_headers(
            list(record.headers or ()), record.topic, record.partition, record.offset,
            record.timestamp,
        )  # fmt: skip
        self.pending.append(
            await self.producer.send(
                self.topics.usage, record.value, key=record.key, partition=partition,
                headers=headers,
            )
        )  # fmt: skip

    async def check_system(self, records: list[Record]) -> None:
        # System events carry no billing state (the read model keeps their list); the worker
        # only makes sure that none it could not read goes unnoticed: each is dead-lettered.
        letters = [
            letter
            for r in records
            if (letter := check_system_event(r.value, position_of(r), r.headers))
        ]
        self.metrics.dead_lettered([letter.reason for letter in letters])
        if letters:
            await self.send(BatchResult(dead_letters=letters))

    async def consume(self) -> None:
        wait, interval = self.settings.batch_within, self.settings.commit_interval
        while not self.stopping.is_set():
            generation = self.generation
            fetched = await self.consumer.getmany(
                timeout_ms=int(wait * 1000), max_records=self.settings.batch_size
            )
            async with self.lock:
                if generation != self.generation:
                    await self.rewind(fetched)
                    continue
                try:
                    await self.fold(fetched)
                    # Under load every `interval`; once the input runs dry, at once, so that a
                    # quiet worker has its state and offsets in Kafka within a fetch's wait.
                    due = time.monotonic() - self.last_flush >= interval
                    if due or (not any(fetched.values()) and self.unflushed):
                        await self.flush()
                except Exception:
                    self.metrics.errors.labels("ingest").inc()
                    raise

    async def rewind(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        """Drop a fetch that a rebalance overtook; partitions still ours read it again.

        The fetch may predate the rebalance (its records belong to the old state) or follow
        it within the same `getmany`; either way the restored state matches the committed
        offsets, so that is where reading resumes.
        """
        assigned = self.consumer.assignment()
        for tp in fetched:
            if tp not in assigned:
                continue
            committed = await self.consumer.committed(tp)
            if committed is None or committed < 0:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    async def auto_close(self) -> None:
        grace = self.settings.auto_close_grace
        if grace is None:
            return
        requested: set[str] = set()
        while not self.stopping.is_set():
            month = auto_close_due(dt.datetime.now(dt.UTC), grace, self.plan.zone)
            if month is not None and month not in requested:
                # A deterministic id: every worker and restart asks for the same close, which
                # takes effect once per partition however often it is written.
                await request_close(self.settings, month, f"auto-{month}", "auto-close")
                requested.add(month)
                log.info("requested automatic close of %s", month)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.auto_close_check)

    async def learn_layout(self) -> None:
        """The usage log's partition count (tenants' homes) and the close barrier's origins:
        every partition of both input topics."""
        layout = await partitions_of(self.settings, *self.topics.inputs)
        self.partitions = sum(1 for tp in layout if tp.topic == self.topics.usage)
        self.barrier_origins = frozenset(f"{tp.topic}/{tp.partition}" for tp in layout)

    async def announce(self) -> None:
        url = serve(
            self.metrics.registry,
            self.settings.metrics_host,
            self.settings.metrics_port,
            self.settings.api_keys,
        )
        log.info("metrics at %s", url)
        await self.assigned.wait()
        ready_file = self.settings.ready_file
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready = {"ready": str(uuid.uuid4()), "metrics_url": url}
            ready_file.write_text(json.dumps(ready) + "\n")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        self._store = Store(self.new_index())
        self._producer = new_producer(self.settings, linger_ms=5, max_batch_size=1 << 20)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(**self.consumer_config())
        try:
            self._outputs = Outputs(self.producer, self.topics, await load_emitted(self.settings))
            await self._consumer.start()
            await ensure_changelogs(self.settings)
            await self.learn_layout()
            inputs = [*self.topics.inputs, self.topics.system]
            self._consumer.subscribe(inputs, listener=self)
            helpers = [asyncio.ensure_future(c) for c in (self.announce(), self.auto_close())]
            try:
                await self.consume()
            finally:
                for helper in helpers:
                    helper.cancel()
            async with self.lock:
                with contextlib.suppress(CommitFailedError, IllegalStateError):
                    await self.flush()
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            self.store.index.close()


def run_worker(settings: Settings, plan: Plan) -> None:
    """Run the worker in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(message)s"
    )
    quiet_coordinator_startup()  # a fresh broker's "coordinator not available" is no error
    tune_collector()
    asyncio.run(Worker(settings, plan).run())
