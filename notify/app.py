"""The notifier: a Faust app (`metering notifier`) that turns threshold crossings and closed
invoices into signed webhooks, each delivered at least once to every subscription that wants
it.

- `webhook-subscriptions` (compacted; the API writes it) is read whole by every notifier
  (`notify.subscriptions`).
- An agent per source topic makes the notices (`notify.notices`) and plans one delivery per
  subscription, sent to the outbox topic keyed by delivery; the outbox agent alone writes
  the `outbox` table (a delivery planned twice, by a replay, is kept once) and keeps `due`,
  the pending ones, in memory beside it (rebuilt from the table after each recovery).
- A close's invoice lines and its per-partition acknowledgement meet in the `invoices` table
  (through the invoices topic, keyed by close and partition); once a partition's lines are
  all there, each tenant's `invoice.closed` is planned.
- A timer attempts what is due in the partitions this notifier owns (`notify.sender`),
  bounded in concurrency, and sends each attempt's result back through the outbox topic, and
  to `webhook-deliveries` (the log).

A notifier killed at any point attempts again what it had not recorded: a receiver may see a
`webhook-id` twice, never miss one (Standard Webhooks asks receivers to dedupe by it).
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
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from notify.notices import Notice, crossing_notice, invoice_notices, recipients
from notify.schedule import Delivery, after_attempt
from notify.sender import Outcome, attempt
from notify.signing import subscription_secret
from notify.subscriptions import SubscriptionMirror
from observability.notifier_metrics import NotifierMetrics
from runtime.settings import Settings
from schemas.records import InvoiceLine, MonthClosed, ThresholdCrossed
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
        f"{group}-invoices": {},
        f"{group}-invoices-changelog": compacted,
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
            # No standby copies: a notifier attempts only the deliveries of partitions it owns.
            table_standby_replicas=0,
            # As the workers: a notifier that went silent (killed) hands its partitions over
            # after this, not after Faust's default minute.
            broker_session_timeout=settings.kafka_session_timeout,
            broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
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
        self.outbox = self.app.Table("outbox", schema=as_json, on_recover=self.reindex)
        self.log_topic = self.app.topic(topics.deliveries)
        # Pending deliveries: key -> (next try, outbox partition), kept with `outbox`.
        self.due: dict[str, tuple[int, int]] = {}
        self.in_flight: set[str] = set()  # taken by an attempt whose result is not back
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.tasks: set[asyncio.Future[None]] = set()
        self.client: httpx.AsyncClient | None = None
        self.rng = random.Random()  # noqa: S311  # nosec B311  # jitter, not a secret
        # A close's lines and its acknowledgement meet in one place: keyed by close and
        # partition, whichever topic they came from.
        self.invoices_topic = self.app.topic(
            f"{self.app.conf.id}-invoices", internal=True, partitions=settings.partitions
        )
        self.invoices = self.app.Table("invoices", schema=as_json)
        self.app.agent(self.app.topic(topics.crossings), name="crossings")(self.on_crossings)
        self.app.agent(self.app.topic(topics.lines), name="lines")(self.on_lines)
        self.app.agent(self.app.topic(topics.closes), name="closes")(self.on_closes)
        self.app.agent(self.invoices_topic, name="invoices")(self.on_invoices)
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

    async def on_lines(self, stream: Any) -> None:
        topic = self.settings.topics.lines
        async for value in stream:
            try:
                line = InvoiceLine.model_validate_json(value)
            except ValidationError:
                self.metrics.records.labels(topic, "unreadable").inc()
                continue
            key = f"{line.provenance.close_id}/{line.provenance.partition}"
            part = orjson.dumps({"line": line.model_dump(mode="json")})
            await (await self.invoices_topic.send(key=key.encode(), value=part))

    async def on_closes(self, stream: Any) -> None:
        topic = self.settings.topics.closes
        async for event in stream.events():
            try:
                closed = MonthClosed.model_validate_json(event.value)
            except ValidationError:
                self.metrics.records.labels(topic, "unreadable").inc()
                continue
            key = f"{closed.close_id}/{closed.partition}"
            at = event.message.timestamp  # seconds: when the close was acknowledged
            part = orjson.dumps({"close": {"lines": closed.lines, "at": at}})
            await (await self.invoices_topic.send(key=key.encode(), value=part))

    async def on_invoices(self, stream: Any) -> None:
        """The one writer of `invoices`: a close's lines in one partition, and how many the
        partition's acknowledgement says there are; complete, they become notices."""
        topic = self.settings.topics.closes
        async for event in stream.events():
            key, part = event.key.decode(), orjson.loads(event.value)
            held = self.invoices.get(key) or {"lines": {}, "expected": None, "at": 0, "sent": False}
            if held["sent"]:
                continue  # notified already (a replay)
            if "line" in part:
                held["lines"][part["line"]["id"]] = part["line"]
            else:
                held["expected"], held["at"] = part["close"]["lines"], part["close"]["at"]
            if held["expected"] is not None and len(held["lines"]) >= held["expected"]:
                at = dt.datetime.fromtimestamp(held["at"], dt.UTC)
                lines = [InvoiceLine.model_validate(line) for line in held["lines"].values()]
                for notice in invoice_notices(lines, at):
                    await self.plan(topic, notice)
                held = {"lines": {}, "expected": held["expected"], "at": held["at"], "sent": True}
            self.invoices[key] = held

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
        """The one writer of `outbox`, so it follows its changelog's order."""
        async for event in stream.events():
            message = orjson.loads(event.value)
            partition = event.message.partition
            delivery = Delivery.model_validate(message.get("plan") or message["result"])
            known = self.outbox.get(delivery.key)
            if "plan" in message and known is not None:
                # Planned before (a replay, a notice made twice): keep the first, and make
                # sure it is indexed even if a kill came between the write and the index.
                self.index(Delivery.model_validate(known), partition)
                continue
            if "result" in message and (known is None or known["attempts"] >= delivery.attempts):
                continue  # a result taken already (sent again after a kill)
            if "plan" in message:
                self.metrics.planned.labels(delivery.event_type).inc()
            self.outbox[delivery.key] = {**delivery.model_dump(), "partition": partition}
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
        for value in self.outbox.values():
            self.index(Delivery.model_validate(value), value["partition"])

    # Sending -------------------------------------------------------------------------------
    def owned(self) -> set[int]:
        outbox = self.outbox_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == outbox}

    async def send_due(self) -> None:
        # Not while partitions move or the subscriptions are still loading: a delivery would
        # be attempted by two notifiers, or refused for a subscription not read yet.
        if self.app.rebalancing or not self.subscriptions.loaded.is_set():
            return
        now, owned = _micros(self.clock()), self.owned()
        self.metrics.pending.set(len(self.due))
        due = [
            key
            for key, (next_try, partition) in self.due.items()
            if next_try <= now and partition in owned and key not in self.in_flight
        ]
        for key in due:
            known = self.outbox.get(key)
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
        now = _micros(at)
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
        await (await self.outbox_topic.send(key=delivery.key.encode(), value=value))
