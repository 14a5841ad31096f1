"""The notifier's outbox: every delivery planned, in a changelog-backed Faust table that one
agent writes, and the timer that attempts what is due.

A plan or an attempt's result goes through the outbox topic, keyed by delivery; the outbox
agent alone writes the `outbox` table (a delivery planned twice, by a replay, is kept once)
and keeps `due`, the pending ones, in memory beside it (rebuilt from the table after each
recovery). The timer attempts what is due in the partitions this notifier owns, bounded in
concurrency, and sends each result back through the outbox topic and to `webhook-deliveries`
(the log). A notifier killed at any point attempts again what it had not recorded: a
receiver may see a `webhook-id` twice, never miss one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import faust
import httpx
import orjson

from notify.schedule import Delivery, after_attempt
from notify.sender import Outcome, attempt
from notify.signing import subscription_secret
from notify.subscriptions import SubscriptionMirror
from observability.notifier_metrics import NotifierMetrics
from runtime.settings import Settings
from schemas.webhooks import WebhookAttempt, WebhookSubscription

log = logging.getLogger("metering.notifier")
CONCURRENCY = 32  # attempts in flight at once
TICK = 0.25  # seconds between looks at what is due


def micros(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


class Outbox:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        key: bytes,
        metrics: NotifierMetrics,
        subscriptions: SubscriptionMirror,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.app, self.settings, self.key, self.metrics = app, settings, key, metrics
        self.subscriptions, self.clock = subscriptions, clock
        self.topic = app.topic(
            f"{app.conf.id}-outbox", internal=True, partitions=settings.partitions
        )
        as_json: faust.Schema[str, Any] = faust.Schema(
            key_serializer="json", value_serializer="json"
        )
        self.table = app.Table("outbox", schema=as_json, on_recover=self.reindex)
        self.log_topic = app.topic(settings.topics.deliveries)
        # Pending deliveries: key -> (next try, outbox partition), kept with the table.
        self.due: dict[str, tuple[int, int]] = {}
        self.in_flight: set[str] = set()  # taken by an attempt whose result is not back
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.tasks: set[asyncio.Future[None]] = set()
        self.client: httpx.AsyncClient | None = None
        self.rng = random.Random()  # noqa: S311  # nosec B311  # jitter, not a secret
        app.agent(self.topic, name="outbox")(self.on_outbox)
        app.timer(TICK)(self.send_due)

    async def on_outbox(self, stream: Any) -> None:
        """The one writer of the table, so it follows its changelog's order."""
        async for event in stream.events():
            message = orjson.loads(event.value)
            partition = event.message.partition
            delivery = Delivery.model_validate(message.get("plan") or message["result"])
            known = self.table.get(delivery.key)
            if "plan" in message and known is not None:
                # Planned before (a replay, a notice made twice): keep the first, and make
                # sure it is indexed even if a kill came between the write and the index.
                self.index(Delivery.model_validate(known), partition)
                continue
            if "result" in message and (known is None or known["attempts"] >= delivery.attempts):
                continue  # a result taken already (sent again after a kill)
            if "plan" in message:
                self.metrics.planned.labels(delivery.event_type).inc()
            self.table[delivery.key] = {**delivery.model_dump(), "partition": partition}
            self.index(delivery, partition)
            self.in_flight.discard(delivery.key)

    def index(self, delivery: Delivery, partition: int) -> None:
        if delivery.status == "pending":
            self.due[delivery.key] = (delivery.next_try, partition)
        else:
            self.due.pop(delivery.key, None)

    async def reindex(self) -> None:
        """After recovery: what the recovered outbox holds pending."""
        self.due.clear()
        for value in self.table.values():
            self.index(Delivery.model_validate(value), value["partition"])

    # Sending -------------------------------------------------------------------------------
    def owned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    async def send_due(self) -> None:
        # Not while partitions move or the subscriptions are still loading: a delivery would
        # be attempted by two notifiers, or refused for a subscription not read yet.
        if self.app.rebalancing or not self.subscriptions.loaded.is_set():
            return
        now, owned = micros(self.clock()), self.owned(self.topic.get_topic_name())
        self.metrics.pending.set(len(self.due))
        due = [
            key
            for key, (next_try, partition) in self.due.items()
            if next_try <= now and partition in owned and key not in self.in_flight
        ]
        for key in due:
            known = self.table.get(key)
            if known is None:
                continue
            self.in_flight.add(key)
            await self.slots.acquire()
            task = asyncio.ensure_future(self._attempt(Delivery.model_validate(known)))
            self.tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self.tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        at = self.clock()
        try:
            subscription = self._subscription(delivery.subscription)
            if subscription is None:
                outcome = Outcome(False, error="the subscription was deleted", refused=True)
            else:
                outcome = await attempt(
                    self._client(), subscription.url, delivery,
                    subscription_secret(self.key, subscription.id), at,
                    self.settings.webhook_allow_private,
                )  # fmt: skip
        except Exception as error:  # one delivery's failure must not stop the notifier
            log.exception("delivery %s failed unexpectedly", delivery.key)
            outcome = Outcome(False, error=f"internal error: {type(error).__name__}")
        try:
            await self._record(delivery, outcome, at)
        except Exception:  # the broker: tried again on a later tick
            log.exception("the result of delivery %s was not recorded", delivery.key)
            self.in_flight.discard(delivery.key)
        finally:
            self.slots.release()

    def _subscription(self, subscription_id: str) -> WebhookSubscription | None:
        return self.subscriptions.live.get(subscription_id)

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self.client

    async def _record(self, delivery: Delivery, outcome: Outcome, at: dt.datetime) -> None:
        now = micros(at)
        after = after_attempt(delivery, outcome.ok, now, self.rng.random())
        if outcome.refused:
            after = after.model_copy(update={"status": "failed"})
        state = {"delivered": "delivered", "failed": "failed", "pending": "retrying"}[after.status]
        label = "refused" if outcome.refused else state
        self.metrics.attempts.labels(label).inc()
        record = WebhookAttempt(
            # Unique per attempt made: one made again after a kill is logged again.
            id=f"{delivery.key}/{after.attempts}/{uuid.uuid4().hex[:12]}",
            subscription=delivery.subscription,
            webhook_id=delivery.webhook_id,
            event_type=delivery.event_type,
            tenant=delivery.tenant,
            attempt=after.attempts,
            attempted_at=at,
            status_code=outcome.status_code,
            error=outcome.error,
            outcome=label,
            next_try=(
                dt.datetime.fromtimestamp(after.next_try / 1e6, dt.UTC)
                if after.status == "pending"
                else None
            ),
        )
        # Each send awaited until the broker has it: a lost result would leave the delivery
        # taken until a restart.
        logged = record.model_dump_json().encode()
        await (await self.log_topic.send(key=delivery.subscription.encode(), value=logged))
        value = orjson.dumps({"result": after.model_dump()})
        await (await self.topic.send(key=delivery.key.encode(), value=value))
