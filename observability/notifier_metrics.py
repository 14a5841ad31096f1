"""What the notifier counts (beside Faust's own sensor, which it feeds the same registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas.webhooks import WEBHOOK_EVENT_TYPES

ATTEMPT_OUTCOMES = ("delivered", "retrying", "failed", "refused")


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter(
            "metering_notifier_records",
            "Records the notifier read, by topic and outcome: notified (one or more "
            "deliveries planned), unsubscribed (nobody wants it), unreadable (not the "
            "contract's shape; skipped and counted, never retried).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.planned = Counter(
            "metering_webhook_deliveries_planned",
            "Deliveries planned (a notice for one subscription), by event type; a replayed "
            "notice already planned is not counted again.",
            ["event_type"],
            registry=registry,
        )
        self.attempts = Counter(
            "metering_webhook_attempts",
            "Delivery attempts by outcome: delivered (2xx), retrying, failed (given up after "
            "24 h), refused (the endpoint is not one the notifier calls).",
            ["outcome"],
            registry=registry,
        )
        self.pending = Gauge(
            "metering_webhook_deliveries_pending",
            "Deliveries waiting for their next attempt, in this notifier.",
            registry=registry,
        )
        self.subscriptions = Gauge(
            "metering_webhook_subscriptions", "Live webhook subscriptions.", registry=registry
        )
        self.system_events = Gauge(
            "metering_system_events_active",
            "System events queued or running, by key and scope (the partitions this notifier "
            "owns: sum over notifiers); the services dashboard draws them as annotations.",
            ["key", "scope"],
            registry=registry,
        )
        for event_type in WEBHOOK_EVENT_TYPES:
            self.planned.labels(event_type)
        for outcome in ATTEMPT_OUTCOMES:
            self.attempts.labels(outcome)
