"""The notifier: a Faust app (`metering notifier`) that turns threshold crossings, closed
invoices and system events into signed webhooks, each delivered at least once to every
subscription that wants it.

- `webhook-subscriptions` (compacted; the API writes it) is read whole by every notifier
  (`notify.subscriptions`).
- An agent per source topic makes the notices (`notify.notices`,
  `notify.system_events`) and plans one delivery per subscription into the outbox
  (`notify.outbox`), which attempts them.
- A close's invoice lines and its per-partition acknowledgement meet in the `invoices` table
  (through the invoices topic, keyed by close and partition); once a partition's lines are
  all there, each tenant's `invoice.closed` is planned.
- Each system event's state is in the `system-events` table; a timer plans
  `system_event.overdue` for running ones past their `eta` and sets the gauge of active ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import faust
import orjson
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from notify.notices import Notice, crossing_notice, invoice_notices, recipients
from notify.outbox import Outbox, micros
from notify.schedule import Delivery
from notify.subscriptions import SubscriptionMirror
from notify.system_events import SystemEventState, apply_system_event, identity, overdue
from observability.notifier_metrics import NotifierMetrics
from projections.decode import system_event
from runtime.settings import Settings
from schemas.records import InvoiceLine, MonthClosed, ThresholdCrossed
from schemas.webhooks import WebhookSubscription

log = logging.getLogger("metering.notifier")
R = TypeVar("R", bound=BaseModel)
WATCH = 1.0  # seconds between looks at running system events
IDLE = 5.0  # seconds without a record after which a partition counts as read to its end


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
        f"{group}-system-events-changelog": compacted,
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
        as_json: faust.Schema[str, Any] = faust.Schema(
            key_serializer="json", value_serializer="json"
        )
        self.outbox = Outbox(self.app, settings, key, self.metrics, self.subscriptions, clock)
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
        self.system_events = self.app.Table("system-events", schema=as_json)
        self.overdue_planned: set[str] = set()  # in this process; the outbox keeps them once
        # Per partition of system-events: when its last record was read, and its log time.
        self.system_read: dict[int, tuple[float, dt.datetime]] = {}
        self.started = time.monotonic()
        self.app.agent(self.app.topic(topics.system), name="system")(self.on_system_events)
        self.app.timer(WATCH)(self.watch_system_events)

    # Subscriptions -------------------------------------------------------------------------
    def live_subscriptions(self) -> list[WebhookSubscription]:
        found = list(self.subscriptions.live.values())
        self.metrics.subscriptions.set(len(found))
        return found

    # Planning ------------------------------------------------------------------------------
    async def on_crossings(self, stream: Any) -> None:
        topic = self.settings.topics.crossings
        async for value in stream:
            if (crossing := self.read(ThresholdCrossed, value, topic)) is not None:
                self.count(topic, [await self.plan(crossing_notice(crossing))])

    def read(self, model: type[R], value: bytes, topic: str) -> R | None:
        """The record as `model`, or None: not the contract's shape, counted as unreadable and
        skipped (reading it again would fail again)."""
        try:
            return model.model_validate_json(value)
        except ValidationError:
            self.metrics.records.labels(topic, "unreadable").inc()
            return None

    def count(self, topic: str, planned: list[bool]) -> None:
        """A record's outcome: notified (some subscription wanted a notice it made),
        unsubscribed (nobody did), silent (it made no notice)."""
        outcome = "notified" if any(planned) else "unsubscribed" if planned else "silent"
        self.metrics.records.labels(topic, outcome).inc()

    async def on_lines(self, stream: Any) -> None:
        topic = self.settings.topics.lines
        async for value in stream:
            if (line := self.read(InvoiceLine, value, topic)) is None:
                continue
            key = f"{line.provenance.close_id}/{line.provenance.partition}"
            part = orjson.dumps({"line": line.model_dump(mode="json")})
            await (await self.invoices_topic.send(key=key.encode(), value=part))

    async def on_closes(self, stream: Any) -> None:
        topic = self.settings.topics.closes
        async for event in stream.events():
            if (closed := self.read(MonthClosed, event.value, topic)) is None:
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
                planned = [await self.plan(n) for n in invoice_notices(lines, at)]
                self.count(topic, planned)
                held = {"lines": {}, "expected": held["expected"], "at": held["at"], "sent": True}
            self.invoices[key] = held

    async def on_system_events(self, stream: Any) -> None:
        """The one writer of `system-events`: each system event's current state."""
        topic = self.settings.topics.system
        async for event in stream.events():
            headers = event.message.headers or []
            items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
            parsed = system_event(event.value, items)
            if parsed is None:
                self.metrics.records.labels(topic, "unreadable").inc()
                continue
            envelope, data = parsed
            tenant = envelope.subject or ""
            key = identity(tenant, data.key, data.scope, data.owner)
            held = self.system_events.get(key)
            before = SystemEventState.model_validate(held) if held is not None else None
            after, notices = apply_system_event(before, envelope.type, tenant, data, envelope.time)
            if after is None:
                if held is not None:
                    del self.system_events[key]
            else:
                state = after.model_dump(mode="json")
                self.system_events[key] = {**state, "partition": event.message.partition}
            self.system_read[event.message.partition] = (
                time.monotonic(),
                dt.datetime.fromtimestamp(event.message.timestamp, dt.UTC),
            )
            self.count(topic, [await self.plan(notice) for notice in notices])

    async def watch_system_events(self) -> None:
        """Overdue notices, and the gauge of active system events, for owned partitions."""
        if self.app.rebalancing or not self.subscriptions.loaded.is_set():
            return
        topic, now = self.settings.topics.system, self.clock()
        owned = self.outbox.owned(self.app.topic(topic).get_topic_name())
        active: Counter[tuple[str, str]] = Counter()
        for key, value in list(self.system_events.items()):
            if value["partition"] not in owned:
                continue
            state = SystemEventState.model_validate(value)
            if state.active:
                active[(state.key, state.scope)] += 1
            as_of = self.read_to(value["partition"], now)
            notice = overdue(state, as_of) if as_of is not None else None
            if notice is None or notice.webhook_id in self.overdue_planned:
                continue
            if self.system_events.get(key) != value:
                continue  # changed while this look planned others: the next look judges it
            self.overdue_planned.add(notice.webhook_id)
            await self.plan(notice)
        self.metrics.system_events.clear()
        for (key, scope), count in active.items():
            self.metrics.system_events.labels(key, scope).set(count)

    def read_to(self, partition: int, now: dt.datetime) -> dt.datetime | None:
        """The time up to which a partition of `system-events` has been read: now once the
        agent has read nothing there for a while (it is caught up), else the log time of the
        last record it read, so that a backlog's runs are not judged late before their
        finish is read. None: nothing read there yet, and not idle long enough to tell."""
        read = self.system_read.get(partition)
        if read is None:
            return now if time.monotonic() - self.started > IDLE else None
        read_at, log_time = read
        return now if time.monotonic() - read_at > IDLE else log_time

    async def plan(self, notice: Notice) -> bool:
        """A delivery of `notice` for each subscription that wants it; whether any did."""
        await self.subscriptions.loaded.wait()  # no notice is judged against half a list
        wanted = recipients(notice, self.live_subscriptions())
        now = micros(self.clock())
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
            await (await self.outbox.topic.send(key=delivery.key.encode(), value=value))
        return bool(wanted)
