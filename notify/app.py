"""The notifier: a Faust app (`metering notifier`) that turns threshold crossings into signed
webhooks, each delivered at least once to every subscription that wants it.

- `webhook-subscriptions` (compacted; the API writes it) is read whole by every notifier
  (`notify.subscriptions`).
- An agent per source topic makes the notices (`notify.notices`) and plans one delivery per
  subscription, sent to the outbox topic keyed by delivery; the outbox agent alone writes
  the `outbox` table (a delivery planned twice, by a replay, is kept once) and `pending`.
- A timer attempts what is due (`notify.sender`), bounded in concurrency, and sends each
  attempt's result back through the outbox topic, and to `webhook-deliveries` (the log).

A notifier killed at any point attempts again what it had not recorded: a receiver may see a
`webhook-id` twice, never miss one (Standard Webhooks asks receivers to dedupe by it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable
from typing import Any

import faust
import httpx
import orjson
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from notify.notices import Notice, crossing_notice, recipients
from notify.schedule import Delivery, after_attempt
from notify.sender import Outcome, attempt
from notify.signing import subscription_secret
from notify.subscriptions import SubscriptionMirror
from observability.notifier_metrics import NotifierMetrics
from runtime.settings import Settings
from schemas.records import ThresholdCrossed
from schemas.webhooks import WebhookAttempt, WebhookSubscription

log = logging.getLogger("metering.notifier")
CONCURRENCY = 32  # attempts in flight at once
TICK = 0.25  # seconds between looks at what is due


def _micros(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def group_of(settings: Settings) -> str:
    return f"{settings.app_id}-notifier"


def own_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """The notifier's own topics and their configs: made before Faust starts, because Faust
    makes them while it joins its group and then ignores the ones it made too late."""
    group = group_of(settings)
    compacted = {"cleanup.policy": "compact"}
    return {
        f"{group}-outbox": {},
        f"{group}-outbox-changelog": compacted,
        f"{group}-pending-changelog": compacted,
    }


class Notifier:
    def __init__(
        self,
        settings: Settings,
        key: bytes,
        registry: CollectorRegistry,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.settings, self.key, self.clock = settings, key, clock
        self.metrics = NotifierMetrics(registry)
        self.app = faust.App(
            group_of(settings),
            broker=[f"kafka://{host}" for host in settings.bootstrap().split(",")],
            store="memory://",
            datadir=str(settings.data_dir / "notifier"),
            topic_partitions=settings.partitions,
            topic_replication_factor=1,
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            web_enabled=False,
        )
        self.app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "notifier"))
        topics = settings.topics
        self.subscriptions = SubscriptionMirror(settings)
        self.app.task(self.subscriptions.follow)
        self.outbox_topic = self.app.topic(
            f"{self.app.conf.id}-outbox", internal=True, partitions=settings.partitions
        )
        as_json: faust.Schema[str, Any] = faust.Schema(
            key_serializer="json", value_serializer="json"
        )
        self.outbox = self.app.Table("outbox", schema=as_json)
        self.pending = self.app.Table("pending", schema=as_json)
        self.log_topic = self.app.topic(topics.deliveries)
        self.in_flight: dict[str, int] = {}  # delivery key -> attempts it had when taken
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.tasks: set[asyncio.Future[None]] = set()
        self.client: httpx.AsyncClient | None = None
        self.rng = random.Random()  # noqa: S311  # nosec B311  # jitter, not a secret
        self.app.agent(self.app.topic(topics.crossings), name="crossings")(self.on_crossings)
        self.app.agent(self.outbox_topic, name="outbox")(self.on_outbox)
        self.app.timer(TICK)(self.send_due)

    # Subscriptions -------------------------------------------------------------------------
    def live_subscriptions(self) -> list[WebhookSubscription]:
        found = list(self.subscriptions.live.values())
        self.metrics.subscriptions.set(len(found))
        return found

    # Planning ------------------------------------------------------------------------------
    async def on_crossings(self, stream: Any) -> None:
        topic = self.settings.topics.crossings
        async for value in stream:
            try:
                notice = crossing_notice(ThresholdCrossed.model_validate_json(value))
            except ValidationError:
                self.metrics.records.labels(topic, "unreadable").inc()
                continue
            await self.plan(topic, notice)

    async def plan(self, topic: str, notice: Notice) -> None:
        await self.subscriptions.loaded.wait()  # no notice is judged against half a list
        wanted = recipients(notice, self.live_subscriptions())
        self.metrics.records.labels(topic, "notified" if wanted else "unsubscribed").inc()
        now = _micros(self.clock())
        for subscription in wanted:
            delivery = Delivery(
                subscription=subscription.id,
                webhook_id=notice.webhook_id,
                event_type=notice.event_type,
                tenant=notice.tenant,
                body=notice.body(),
                created=now,
                next_try=now,
            )
            value = orjson.dumps({"plan": delivery.model_dump()})
            await self.outbox_topic.send(key=delivery.key.encode(), value=value)

    async def on_outbox(self, stream: Any) -> None:
        """The one writer of `outbox` and `pending`, so both follow their changelog's order."""
        async for value in stream:
            message = orjson.loads(value)
            if "plan" in message:
                delivery = Delivery.model_validate(message["plan"])
                if delivery.key in self.outbox:
                    continue  # planned before: a replay, or a notice made twice
                self.metrics.planned.labels(delivery.event_type).inc()
            else:
                delivery = Delivery.model_validate(message["result"])
                known = self.outbox.get(delivery.key)
                if known is None or known["attempts"] >= delivery.attempts:
                    continue  # a result already taken (sent again after a kill)
            self.outbox[delivery.key] = delivery.model_dump()
            if delivery.status == "pending":
                self.pending[delivery.key] = delivery.next_try
            elif delivery.key in self.pending:
                del self.pending[delivery.key]

    # Sending -------------------------------------------------------------------------------
    async def send_due(self) -> None:
        now = _micros(self.clock())
        due = []
        for key, next_try in list(self.pending.items()):
            taken = self.in_flight.get(key)
            known = self.outbox.get(key)
            if known is None or (taken is not None and known["attempts"] <= taken):
                continue  # in flight, or its result not back yet
            self.in_flight.pop(key, None)
            if next_try <= now:
                due.append(Delivery.model_validate(known))
        self.metrics.pending.set(len(self.pending))
        for delivery in due:
            self.in_flight[delivery.key] = delivery.attempts
            await self.slots.acquire()
            task = asyncio.ensure_future(self._attempt(delivery))
            self.tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self.tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            subscription = self._subscription(delivery.subscription)
            at = self.clock()
            if subscription is None:
                outcome = Outcome(False, error="the subscription was deleted", refused=True)
            else:
                outcome = await attempt(
                    self._client(), subscription.url, delivery,
                    subscription_secret(self.key, subscription.id), at,
                    self.settings.webhook_allow_private,
                )  # fmt: skip
            await self._record(delivery, outcome, at)
        except Exception:  # one delivery's failure must not stop the notifier
            log.exception("delivery %s failed unexpectedly", delivery.key)
            self.in_flight.pop(delivery.key, None)
        finally:
            self.slots.release()

    def _subscription(self, subscription_id: str) -> WebhookSubscription | None:
        return self.subscriptions.live.get(subscription_id)

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self.client

    async def _record(self, delivery: Delivery, outcome: Outcome, at: dt.datetime) -> None:
        now = _micros(at)
        after = after_attempt(delivery, outcome.ok, now, self.rng.random())
        if outcome.refused:
            after = after.model_copy(update={"status": "failed"})
        state = {"delivered": "delivered", "failed": "failed", "pending": "retrying"}[after.status]
        label = "refused" if outcome.refused else state
        self.metrics.attempts.labels(label).inc()
        record = WebhookAttempt(
            id=f"{delivery.key}/{after.attempts}",
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
        await self.log_topic.send(
            key=delivery.subscription.encode(), value=record.model_dump_json().encode()
        )
        value = orjson.dumps({"result": after.model_dump()})
        await self.outbox_topic.send(key=delivery.key.encode(), value=value)
