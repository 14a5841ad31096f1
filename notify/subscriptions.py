"""Every webhook subscription, mirrored from the compacted `webhook-subscriptions` topic: each
notifier reads all its partitions from the start and then follows them, with no consumer
group (every notifier needs every subscription).

A Faust `GlobalTable` over that topic would do the same, but with faust-streaming 0.15.3 and
aiokafka 0.14 a GlobalTable whose changelog is a topic of our own hangs the group's first
assignment (reproduced with a ten-line app); a plain consumer does not."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from runtime.settings import Settings
from schemas.webhooks import WebhookSubscription
from streams.kafka import partitions_of

log = logging.getLogger("metering.notifier")


class SubscriptionMirror:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live: dict[str, WebhookSubscription] = {}
        self.loaded = asyncio.Event()  # set once the topic was read to its end at start
        self.unreadable = 0

    def take(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # a tombstone
            self.live.pop((key or b"").decode(errors="replace"), None)
            return
        try:
            subscription = WebhookSubscription.model_validate_json(value)
        except ValidationError:
            self.unreadable += 1
            return
        if subscription.deleted_at is None:
            self.live[subscription.id] = subscription
        else:
            self.live.pop(subscription.id, None)

    async def follow(self) -> None:
        """Read the topic from the start, then keep reading it; returns only when cancelled."""
        settings = self.settings
        tps = await partitions_of(settings, settings.topics.subscriptions)
        client = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap(), enable_auto_commit=False,
            **settings.kafka_options(),
        )  # fmt: skip
        await client.start()
        try:
            client.assign(tps)
            await client.seek_to_beginning(*tps)
            ends = await client.end_offsets(tps)
            while True:
                fetched = await client.getmany(timeout_ms=500)
                for records in fetched.values():
                    for record in records:
                        self.take(record.key, record.value)
                if self.loaded.is_set():
                    continue
                positions = await asyncio.gather(*(client.position(tp) for tp in tps))
                if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                    log.info("%d webhook subscriptions loaded", len(self.live))
                    self.loaded.set()
        finally:
            await client.stop()
