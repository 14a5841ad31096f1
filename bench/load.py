"""A realistic load for the pipeline benchmark, encoded once and kept in memory, and the
producers that write it (as fast as the broker takes it, or at a steady rate).

The load is `metering.generate`'s month (registrations, licence snapshots with mid-month seat
changes, daily storage, mailings, logins, chats, forms, about 2 % producer retries) scaled to
the requested number of usage events over a fixed number of tenants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from metering.generate import generate_month
from runtime.settings import Settings
from streams.kafka import new_producer

# Per tenant and month at scale 1: about 30 storage measurements, 7 mailings and 1,325
# logins, chats and forms; the scale brings the tenant-month to the wanted size.
FIXED_PER_TENANT = 40
SCALED_PER_TENANT = 1325

Record = tuple[bytes | None, bytes]  # key (None: any partition), value


@dataclass
class Load:
    licences: list[Record] = field(default_factory=list)
    usage: list[Record] = field(default_factory=list)
    duplicates: int = 0
    tenants: int = 0

    @property
    def duplicate_share(self) -> float:
        return self.duplicates / max(1, len(self.usage))


def build_load(events: int, tenants: int, month: str, seed: int = 42) -> Load:
    """`events` usage events over `tenants` tenants in `month`, with their licence records."""
    scale = max(0.0, (events / tenants - FIXED_PER_TENANT) / SCALED_PER_TENANT)
    load = Load(tenants=tenants)
    seen: set[bytes] = set()
    times: list[str] = []
    for event in generate_month(month, tenants, seed=seed, scale=scale):
        # A copy: orjson's result keeps its 4 KiB working buffer, 20x the event, and the load
        # holds millions of them.
        value = bytes(memoryview(orjson.dumps(event)))
        record = (event["subject"].encode(), value)
        if event["type"].startswith("licensing."):
            load.licences.append(record)
            continue
        if len(load.usage) < events:
            identity = f"{event['source']}\x1f{event['id']}".encode()
            load.duplicates += identity in seen
            seen.add(identity)
            load.usage.append(record)
            times.append(event["time"])
    # In time order, as a month arrives: every tenant is active throughout (the generator
    # writes one tenant's month after another's, which made each flush write a few tenants'
    # states and a memory point after 1M events hold a fifth of them). A stable sort keeps
    # each producer retry right after its original.
    order = sorted(range(len(times)), key=times.__getitem__)
    load.usage = [load.usage[i] for i in order]
    return load


def unkeyed(records: list[Record], share: float) -> list[Record]:
    """The records with no key for every `1/share`-th of them (evenly spread), as an unkeyed
    producer sends them: they land on any partition and the worker moves them home."""
    if share <= 0:
        return records
    every = 1 / share
    return [
        (None if int(i / every) != int((i + 1) / every) else key, value)
        for i, (key, value) in enumerate(records)
    ]


def fresh_ids(records: list[Record], tag: str) -> list[Record]:
    """The same records with new event ids, so that they count again instead of as duplicates."""
    marker = f'"id":"{tag}-'.encode()
    return [(key, value.replace(b'"id":"', marker, 1)) for key, value in records]


def fast_producer(settings: Settings) -> AIOKafkaProducer:
    # Large batches and a short linger: the benchmark's producer must not be what limits it.
    return new_producer(settings, linger_ms=20, max_batch_size=1 << 20)


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """The settings' broker and security as librdkafka (confluent-kafka) names them."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap(),
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    for name, path in (
        ("ssl.ca.location", settings.kafka_ssl_cafile),
        ("ssl.certificate.location", settings.kafka_ssl_certfile),
        ("ssl.key.location", settings.kafka_ssl_keyfile),
    ):
        if path is not None:
            config[name] = str(path)
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def _produce_all(
    settings: Settings, topic: str, records: list[Record], on_sent: Callable[[int], None]
) -> None:
    producer = Producer(
        {
            **librdkafka_config(settings),
            # Java's default partitioner for keyed records, as every producer of ours uses
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1 << 20,
        }
    )
    failed: list[object] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failed.append(error)

    chunk = 20_000
    for start in range(0, len(records), chunk):
        for key, value in records[start : start + chunk]:
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
        producer.poll(0)
        on_sent(min(chunk, len(records) - start))
    if producer.flush(120) or failed:
        raise RuntimeError(f"the load was not all delivered: {failed[:3]}")


async def produce_all(
    settings: Settings, topic: str, records: list[Record], on_sent: Callable[[int], None]
) -> None:
    """Send every record as fast as the broker takes it and wait for every acknowledgement.

    With librdkafka (confluent-kafka), in a thread: aiokafka's `send` costs ~18 us of Python
    per record, and the benchmark's producer, sharing the two cores, was what limited the
    end-to-end rate (38,000 events/s). `on_sent` is told the records queued, from that
    thread; the call returns once every record is acknowledged."""
    await asyncio.to_thread(_produce_all, settings, topic, records, on_sent)


async def produce_steady(
    client: AIOKafkaProducer, topic: str, records: list[Record], rate: float
) -> list[tuple[float, int, int]]:
    """Send at `rate` records per second in 10 ms ticks; returns (sent at, partition, offset)
    of every record, the time taken on the monotonic clock when the send was issued."""
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    sent: list[tuple[float, asyncio.Future[object]]] = []
    started = time.monotonic()
    for n, start in enumerate(range(0, len(records), per_tick)):
        delay = started + n * tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        for key, value in records[start : start + per_tick]:
            sent.append((now, await client.send(topic, value, key=key)))
    positions = []
    for at, future in sent:
        meta = await future
        positions.append((at, getattr(meta, "partition"), getattr(meta, "offset")))  # noqa: B009
    return positions
