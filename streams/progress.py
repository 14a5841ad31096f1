"""How far the workers have come: queries wait until they have processed everything written
to the input topics before the call.

An `OffsetsProbe` keeps its Kafka clients open: building a consumer and an admin client per
question cost about a second per query."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from runtime.settings import Settings
from streams.kafka import TopicLayoutError, require_started


class NotCaughtUp(TimeoutError):
    pass


class OffsetsProbe:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._layout: dict[str, list[TopicPartition]] = {}

    @property
    def started(self) -> bool:
        return self._consumer is not None

    async def start(self) -> None:
        options = self.settings.kafka_options()
        bootstrap = self.settings.bootstrap()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **options
        )
        await self._consumer.start()
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        await self._admin.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._consumer = self._admin = None

    async def partitions(self, *topics: str) -> list[TopicPartition]:
        missing = [t for t in topics if t not in self._layout]
        if missing:
            admin = require_started(self._admin)
            for described in await admin.describe_topics(missing):
                if described["error_code"] != 0 or not described["partitions"]:
                    raise TopicLayoutError(f"topic {described['topic']!r} does not exist")
                self._layout[described["topic"]] = [
                    TopicPartition(described["topic"], p["partition"])
                    for p in described["partitions"]
                ]
        return [tp for t in topics for tp in self._layout[t]]

    async def end_offsets(self, *topics: str) -> dict[TopicPartition, int]:
        consumer = require_started(self._consumer)
        return dict(await consumer.end_offsets(await self.partitions(*topics)))

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin = require_started(self._admin)
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp: meta.offset for tp, meta in offsets.items() if meta is not None}

    async def wait_for_workers(self, wait_seconds: float) -> None:
        settings = self.settings
        ends = await self.end_offsets(*settings.topics.inputs)
        wanted = [tp for tp, end in ends.items() if end > 0]
        deadline = time.monotonic() + wait_seconds
        while True:
            committed = await self.committed(settings.app_id, wanted)
            late = behind(committed, {tp: ends[tp] for tp in wanted})
            if not late:
                return
            if time.monotonic() > deadline:
                raise NotCaughtUp(
                    f"the workers ({settings.app_id}) are still {late} records behind after "
                    f"{wait_seconds:.0f}s; is `metering worker` running?"
                )
            await asyncio.sleep(0.05)


async def wait_for_workers(settings: Settings, wait_seconds: float) -> None:
    probe = OffsetsProbe(settings)
    await probe.start()
    try:
        await probe.wait_for_workers(wait_seconds)
    finally:
        await probe.stop()


def behind(stored: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
    return sum(max(0, end - stored.get(tp, 0)) for tp, end in ends.items())
