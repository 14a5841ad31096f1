"""Kafka plumbing shared by the worker and the CLI: topics, producers, reading to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from runtime.settings import Settings
from runtime.topics import Topics

# Decisions are judged against the time a record entered the log (docs/events.md), so the input
# topics stamp it themselves instead of trusting the producer's clock.
INPUT_CONFIG = {"message.timestamp.type": "LogAppendTime"}
# The last record of each subscription is all that matters (a deletion is a record too).
SUBSCRIPTIONS_CONFIG = {"cleanup.policy": "compact"}


class TopicLayoutError(RuntimeError):
    pass


C = TypeVar("C")


def require_started(client: C | None) -> C:
    """A client that `start()` has built, or an error naming the mistake."""
    if client is None:
        raise RuntimeError("not started: call start() (or run()) first")
    return client


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap(), **settings.kafka_options())
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _configs(topics: Topics, name: str) -> dict[str, str]:
    if name in topics.inputs or name == topics.system:
        return INPUT_CONFIG
    return SUBSCRIPTIONS_CONFIG if name == topics.subscriptions else {}


async def create_missing(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create those of `topics` that do not exist yet; one made meanwhile by another process
    (a worker and the notifier starting at once) is as good."""
    existing = set(await admin.list_topics())
    new = [topic for topic in topics if topic.name not in existing]
    if new:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)


async def ensure_topics(settings: Settings, replication: int = 1) -> None:
    """Create the contract topics if missing; input topics must be co-partitioned."""
    topics = settings.topics
    async with admin_client(settings) as admin:
        wanted = [
            NewTopic(name, settings.partitions, replication, topic_configs=_configs(topics, name))
            for name in topics.all
        ]
        await create_missing(admin, wanted)
        described = await admin.describe_topics(list(topics.inputs))
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    if len(set(counts.values())) != 1:
        raise TopicLayoutError(
            f"input topics must have the same number of partitions (co-partitioned by tenant), "
            f"found {counts}"
        )


def new_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """An idempotent, acks=all producer (not started); `options` override the defaults."""
    config: dict[str, Any] = {"enable_idempotence": True, "acks": "all", "linger_ms": 5}
    config.update(settings.kafka_options())
    config.update(options)
    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap(), **config)


@contextlib.asynccontextmanager
async def producer(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    client = new_producer(settings, **options)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@contextlib.asynccontextmanager
async def consumer(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaConsumer]:
    client = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_options(),
        **options,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def send_many(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Iterable[tuple[bytes | None, bytes]],
) -> list[asyncio.Future[Any]]:
    """Send `(key, value)` records to one partition in as few batches as fit, and return
    their delivery futures. `send` costs ~15 us of Python per record (a future and an
    accumulator call each); a flush that writes 10,000 tenant states spent a quarter of the
    worker's time there. Order and idempotence are those of `send`."""
    futures: list[asyncio.Future[Any]] = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            # An empty batch takes any record (the broker judges its size, as with `send`).
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes fits no batch")
    if batch.record_count() > 0:
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def partitions_of(settings: Settings, *topics: str) -> list[TopicPartition]:
    async with admin_client(settings) as admin:
        described = await admin.describe_topics(list(topics))
    found: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"] != 0 or not topic["partitions"]:
            raise TopicLayoutError(f"topic {topic['topic']!r} does not exist; is the stack up?")
        found.extend(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
    return sorted(found)


async def end_offsets(settings: Settings, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    tps = await partitions_of(settings, *topics)
    async with consumer(settings) as client:
        return dict(await client.end_offsets(tps))


async def read_to_end(
    client: AIOKafkaConsumer, ends: dict[TopicPartition, int]
) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
    """Assign `client` to the partitions of `ends` and yield their records from the beginning,
    a fetched batch at a time, up to (not including) each partition's end offset."""
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    if not wanted:
        return
    client.assign(list(wanted))
    await client.seek_to_beginning(*wanted)
    while wanted:
        for tp, batch in (await client.getmany(*wanted, timeout_ms=1000)).items():
            end = wanted.get(tp)
            if end is None or not batch:
                continue
            if batch[-1].offset + 1 >= end:
                del wanted[tp]
                batch = [r for r in batch if r.offset < end]
            yield tp, batch
        # The last offsets may hold no record (compacted away, a transaction marker): the
        # position says when a partition is done.
        for tp in list(wanted):
            if await client.position(tp) >= wanted[tp]:
                del wanted[tp]


async def read_all(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the beginning up to its end offsets at call time."""
    tps = await partitions_of(settings, topic)
    async with consumer(settings) as client:
        ends = await client.end_offsets(tps)
        return [r async for _, batch in read_to_end(client, ends) for r in batch]


async def broker_answers(settings: Settings) -> None:
    """Raise unless the cluster answers a metadata request."""
    async with admin_client(settings) as admin:
        await admin.describe_cluster()
