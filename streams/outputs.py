"""Sending decisions to the output topics, at most once per deterministic id.

A worker that replays the log from scratch (a new consumer group, empty state) makes the same
decisions again; the ids already present in the output topics are loaded at start-up so that
none of them is sent a second time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from projections.batch import BatchResult
from runtime.settings import Settings
from runtime.topics import Topics
from streams.kafka import read_all


async def load_emitted(settings: Settings) -> set[str]:
    topics = settings.topics
    emitted: set[str] = set()
    for topic in (topics.crossings, topics.lines, topics.closes, topics.dead_letters):
        for record in await read_all(settings, topic):
            try:
                emitted.add(str(orjson.loads(record.value or b"{}")["id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # not ours; nothing to suppress
    return emitted


class Outputs:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics, emitted: set[str]) -> None:
        self._producer = producer
        self._topics = {
            "crossings": topics.crossings,
            "lines": topics.lines,
            "closes": topics.closes,
            "dead_letters": topics.dead_letters,
        }
        self.emitted = emitted

    async def _send(self, name: str, key: str, record: BaseModel) -> asyncio.Future[Any] | None:
        record_id = str(getattr(record, "id"))  # noqa: B009 - every output model has an id
        if record_id in self.emitted:
            return None
        self.emitted.add(record_id)
        value = record.model_dump_json().encode()
        sent: asyncio.Future[Any] = await self._producer.send(
            self._topics[name], value, key=key.encode()
        )
        return sent

    async def send(self, result: BatchResult) -> list[asyncio.Future[Any]]:
        """Send the batch's decisions; returns the acknowledgements to wait for.

        The worker writes the state that implies them only after they are acknowledged: a
        worker killed in between decides the same records again (same ids, suppressed if
        they arrived), while state written ahead of its outputs would lose them for good.
        """
        pending = []
        for crossing in result.crossings:
            pending.append(await self._send("crossings", crossing.tenant, crossing))
        for line in result.lines:
            pending.append(await self._send("lines", line.tenant, line))
        for ack in result.closes:
            pending.append(await self._send("closes", ack.close_id, ack))
        for letter in result.dead_letters:
            pending.append(await self._send("dead_letters", letter.topic, letter))
        return [sent for sent in pending if sent is not None]
