"""The worker's state: dicts in memory (the folds' `StateView`), backed by compacted changelog
topics that it writes at each flush and reads back when it is given partitions.

Changelog `P` of each table holds the state that belongs to input partition `P`, so a worker
restores exactly the partitions it is assigned. Formats (keys and values are UTF-8 / JSON):

| topic | key | value |
|---|---|---|
| `{app}-tenants-changelog` | tenant | `TenantState` JSON (last write wins) |
| `{app}-seen-changelog` | `first-last/flush id` | `[[dedupe key, month, offset], ...]` |
| `{app}-barriers-changelog` | `close id \\x1f partition` | input topics whose marker arrived |
| `{app}-partitions-changelog` | `p<partition>` | months closed in the partition |
| `{app}-partitions-changelog` | `h<partition>` | its horizon, µs (`projections.horizon`) |

Dedupe entries are packed per flush and partition (one record instead of one per event). Each
such record has a key of its own, so compaction never drops one: a flush repeated after a kill
may cover the same offsets and yet hold fewer entries (those its tenants already include).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import NewTopic

from billing.plan import Plan
from projections.batch import BatchResult
from projections.horizon import forgotten
from projections.tenant import TenantState
from runtime.settings import Settings
from streams.kafka import admin_client, create_missing, read_to_end, send_many
from streams.seen import SeenIndex

TABLES = ("tenants", "seen", "barriers", "partitions")
# Segments roll hourly so that the cleaner can compact them: with Kafka's 1 GB default a
# restore after a long run would read every tenant write (10,000 tenants flushed each second
# is 36M records a day).
COMPACTED = {"cleanup.policy": "compact", "segment.ms": str(3600 * 1000)}
SEEN_PER_RECORD = 4000


def changelog(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


class Store:
    """State of the assigned partitions, and what changed since the last flush. Dedupe
    entries live in a `SeenIndex` on disk; `prefetch` reads a batch's keys in a few queries."""

    def __init__(self, index: SeenIndex) -> None:
        self.tenants: dict[str, TenantState] = {}
        self.index = index
        self._known: dict[str, int] = {}
        self._asked: set[str] = set()
        self.barriers: dict[str, tuple[str, ...]] = {}
        self.closed: dict[int, tuple[str, ...]] = {}
        self.horizons: dict[int, int] = {}
        self.held: frozenset[int] = frozenset()  # the input partitions restored into it
        self._dirty_tenants: set[str] = set()
        self._new_seen: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
        self._dirty_barriers: set[str] = set()
        self._dirty_closed: set[int] = set()
        self._dirty_horizons: set[int] = set()

    # StateView
    def tenant(self, tenant: str) -> TenantState | None:
        return self.tenants.get(tenant)

    def tenants_in(self, partition: int) -> Iterable[str]:
        return [t for t, s in self.tenants.items() if s.partition == partition]

    def seen(self, key: str) -> int | None:
        if key in self._known:
            return self._known[key]
        if key in self._asked:
            return None
        return self.index.get(key)

    def prefetch(self, keys: Iterable[str]) -> None:
        """Look up a batch's dedupe keys at once, before the fold asks for them one by one."""
        self._asked = set(keys)
        self._known = self.index.get_many(self._asked)

    def barrier(self, key: str) -> tuple[str, ...]:
        return self.barriers.get(key, ())

    def partition_closed(self, partition: int) -> tuple[str, ...]:
        return self.closed.get(partition, ())

    def horizon(self, partition: int) -> int:
        return self.horizons.get(partition, 0)

    def apply(self, result: BatchResult) -> None:
        """Take a batch's result into memory; it reaches the changelog at the next flush."""
        self.tenants.update(result.tenants)
        self._dirty_tenants.update(result.tenants)
        new_seen = self._new_seen
        for key, (partition, month, offset) in result.seen.items():
            self._known[key] = offset
            new_seen[partition].append((key, month, offset))
        # Fresh: the fold claims a key only where `seen` found none.
        self.index.add(
            ((key, month, offset) for key, (_, month, offset) in result.seen.items()), fresh=True
        )
        self.horizons.update(result.horizons)
        self._dirty_horizons.update(result.horizons)
        self.barriers.update(result.barriers)
        self._dirty_barriers.update(result.barriers)
        self.closed.update(result.partition_closed)
        self._dirty_closed.update(result.partition_closed)

    def prune(self, plan: Plan) -> int:
        """Drop the dedupe entries of every month that each partition held is closed to
        (`projections.horizon`); returns how many went."""
        if not self.held:
            return 0
        horizon = min(self.horizon(partition) for partition in self.held)
        months = [month for month in self.index.months if forgotten(month, horizon, plan)]
        return self.index.prune(months) if months else 0

    @property
    def dirty(self) -> bool:
        return bool(
            self._dirty_tenants
            or self._new_seen
            or self._dirty_barriers
            or self._dirty_closed
            or self._dirty_horizons
        )

    async def flush(self, producer: AIOKafkaProducer, app_id: str) -> int:
        """Write every change since the last flush and wait for the broker; returns records."""
        pending = []

        async def put(table: str, partition: int, key: str, value: bytes) -> None:
            topic = changelog(app_id, table)
            pending.append(await producer.send(topic, value, key=key.encode(), partition=partition))

        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for tenant in self._dirty_tenants:
            state = self.tenants[tenant]
            by_partition[state.partition].append(
                (tenant.encode(), state.model_dump_json().encode())
            )
        for partition, states in by_partition.items():
            pending.extend(
                await send_many(producer, changelog(app_id, "tenants"), partition, states)
            )
        for partition, entries in self._new_seen.items():
            # A second of a busy partition holds tens of thousands of entries: split, so that
            # no record comes near Kafka's 1 MB message limit (~70 bytes per entry).
            for start in range(0, len(entries), SEEN_PER_RECORD):
                chunk = entries[start : start + SEEN_PER_RECORD]
                span = f"{chunk[0][2]}-{chunk[-1][2]}/{uuid.uuid4().hex}"
                await put("seen", partition, span, orjson.dumps(chunk))
        for key in self._dirty_barriers:
            partition = int(key.rsplit("\x1f", 1)[1])
            await put("barriers", partition, key, orjson.dumps(self.barriers[key]))
        for partition in self._dirty_closed:
            months = orjson.dumps(self.closed[partition])
            await put("partitions", partition, f"p{partition}", months)
        await asyncio.gather(*pending)
        written = len(pending)
        # Horizons last, once the rest is in: a restart whose state lacks this flush's
        # changes must not find a horizon that moved in it, or it would turn away events
        # that the lost state had counted (`_Batch.past_horizon`).
        pending.clear()
        for partition in self._dirty_horizons:
            horizon = orjson.dumps(self.horizons[partition])
            await put("partitions", partition, f"h{partition}", horizon)
        await asyncio.gather(*pending)
        written += len(pending)
        self._dirty_horizons.clear()
        self._dirty_tenants.clear()
        self._new_seen.clear()
        self._dirty_barriers.clear()
        self._dirty_closed.clear()
        return written


async def restore(
    consumer: AIOKafkaConsumer,
    app_id: str,
    partitions: Iterable[int],
    index: SeenIndex,
    plan: Plan,
    usage_partitions: Iterable[int],
) -> Store:
    """A store holding what the changelogs say about `partitions` (read to their end), its
    dedupe entries in `index`. The other tables are read first, so that the entries of a
    month its partition is closed to (`projections.horizon`) are never added.
    `usage_partitions`: those of the usage log among them (the horizon that prunes)."""
    wanted = sorted(set(partitions))
    store = Store(index)
    store.held = frozenset(usage_partitions)
    if not wanted:
        return store
    raw: dict[str, dict[bytes, bytes]] = {table: {} for table in TABLES}
    tables = [t for t in TABLES if t != "seen"]
    async for tp, records in _read(consumer, app_id, tables, wanted):
        name = tp.topic[: -len("-changelog")].rsplit("-", 1)[1]
        for record in records:
            if record.key is not None and record.value is not None:
                raw[name][record.key] = record.value
    _load(store, raw)
    async for tp, records in _read(consumer, app_id, ["seen"], wanted):
        horizon = store.horizon(tp.partition)
        for record in records:
            if record.value is not None:
                index.add(
                    (key, month, offset)
                    for key, month, offset in orjson.loads(record.value)
                    if not forgotten(month, horizon, plan)
                )
    return store


async def _read(
    consumer: AIOKafkaConsumer, app_id: str, tables: list[str], partitions: list[int]
) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
    tps = [TopicPartition(changelog(app_id, t), p) for t in tables for p in partitions]
    async for item in read_to_end(consumer, await consumer.end_offsets(tps)):
        yield item


def _load(store: Store, raw: dict[str, dict[bytes, bytes]]) -> None:
    # Only the last value of each key is decoded: an uncompacted changelog repeats keys often.
    for key, value in raw["tenants"].items():
        store.tenants[key.decode()] = TenantState.model_validate_json(value)
    for key, value in raw["barriers"].items():
        store.barriers[key.decode()] = tuple(orjson.loads(value))
    for key, value in raw["partitions"].items():
        kind, partition = key[:1], int(key.decode()[1:])
        if kind == b"h":
            store.horizons[partition] = int(orjson.loads(value))
        else:
            store.closed[partition] = tuple(orjson.loads(value))


async def ensure_changelogs(settings: Settings) -> None:
    """Create the worker group's compacted state topics, partitioned like the inputs."""
    async with admin_client(settings) as admin:
        described = await admin.describe_topics([settings.topics.usage])
        partitions = len(described[0]["partitions"])
        wanted = [
            NewTopic(changelog(settings.app_id, table), partitions, 1, topic_configs=COMPACTED)
            for table in TABLES
        ]
        await create_missing(admin, wanted)
