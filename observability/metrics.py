"""Prometheus metrics of each process, on a registry the process builds at start-up.

Labels are bounded: service (5), outcome, reason (the decode reason codes), level, topic and
partition (the configured partitions), route templates (not paths), invoice month (the last
13), and tenant only in `metering_tenant_usage_ratio`, only when
`METERING_METRICS_TENANT_TOP` > 0, and then for at most that many tenants per service and
month. No event id, no key, no raw path ever becomes a label.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billing.thresholds import LEVELS
from projections.batch import BatchResult
from projections.decode import REASONS
from projections.events import CloseMarkerSeen, UsageRecorded
from projections.plain import PlainUsage
from schemas.services import Service, default_catalog

# Every usage record ends in one: events produced = accepted + duplicate + dead-lettered, per
# service; a moved record is counted again where its copy lands, as one of the others.
OUTCOMES = ("accepted", "duplicate", "moved", "recopied")
# Seconds from an event to the state that counts it: sub-second when live, hours on a backfill.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400, float("inf"))
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, float("inf"))


def observe_many(histogram: Any, values: list[float]) -> None:
    """`Histogram.observe` for a whole batch, negative values as 0: one locked add per bucket
    instead of one per value (two per event cost the worker 10 % of its time). The values
    are sorted (in C) and each bucket's count read off by bisection, so no Python runs per
    value.

    Uses prometheus-client's per-bucket values (`_upper_bounds`, `_buckets`, `_sum`, as of
    0.26); `tests/unit/test_metrics.py` checks the exposition against `observe`."""
    if not values:
        return
    total = sum(values)
    if math.isnan(total):  # a NaN (or inf - inf): NaN is observed as 0, as `max` did
        values = [0.0 if math.isnan(v) else v for v in values]
        total = sum(values)
    ordered = sorted(values)
    below = bisect.bisect_left(ordered, 0.0)  # negative: observed as 0
    histogram._sum.inc(sum(ordered[below:]) if below else total)
    counted = 0
    for index, bound in enumerate(histogram._upper_bounds):
        upto = bisect.bisect_right(ordered, bound)  # a bucket holds the values <= its bound
        if upto > counted:
            histogram._buckets[index].inc(upto - counted)
            counted = upto


class WorkerMetrics:
    """What the stream worker counts, fed from each folded batch."""

    def __init__(
        self, registry: CollectorRegistry, services: Sequence[Service] | None = None
    ) -> None:
        self.registry = registry
        # The services table's names (the plan's): each gets its series at zero from the start.
        self.services = tuple(services) if services is not None else default_catalog().names
        # In this order: the exposition lists the metrics as they were made.
        self._add_record_metrics(registry)
        self._add_batch_metrics(registry)
        self._add_output_metrics(registry)
        self._add_health_metrics(registry)
        self._zero_series()

    def _add_record_metrics(self, registry: CollectorRegistry) -> None:
        """Records taken, usage records by outcome, dead letters."""
        self.received = Counter(
            "metering_events_received", "Records taken from the input topics.", ["topic"],
            registry=registry,
        )  # fmt: skip
        self.events = Counter(
            "metering_events",
            "Usage records by service and outcome: accepted (counted), duplicate, moved (copied "
            "to the tenant's partition, counted there) or recopied (a second copy of a moved "
            "record, not an event of its own).",
            ["service", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "metering_dead_letters", "Records sent to dead-letters, by reason.", ["reason"],
            registry=registry,
        )  # fmt: skip

    def _add_batch_metrics(self, registry: CollectorRegistry) -> None:
        """How late the worker counts an event, and how large its batches are."""
        self.lag = Histogram(
            "metering_processing_lag_seconds",
            "From the event's own time (clock=event) or its log-append time (clock=log) to the "
            "worker's state counting it.",
            ["clock"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "metering_batch_size", "Records per folded batch.", buckets=BATCH_BUCKETS,
            registry=registry,
        )  # fmt: skip

    def _add_output_metrics(self, registry: CollectorRegistry) -> None:
        """What the worker emits: crossings, invoice lines, month closes."""
        self.crossings = Counter(
            "metering_threshold_crossings", "Threshold crossings emitted.", ["service", "level"],
            registry=registry,
        )  # fmt: skip
        self.lines = Counter(
            "metering_invoice_lines_emitted", "Invoice lines emitted by the worker.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.closes = Counter(
            "metering_month_close_partitions",
            "Partitions in which a month close took effect.",
            registry=registry,
        )
        self.close_seconds = Histogram(
            "metering_month_close_duration_seconds",
            "From a close marker entering the log to the partition's close.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf")),
            registry=registry,
        )

    def _add_health_metrics(self, registry: CollectorRegistry) -> None:
        """Rebalances, partitions held, and errors."""
        self.rebalances = Counter(
            "metering_rebalances", "Consumer group rebalances this worker took part in.",
            registry=registry,
        )  # fmt: skip
        # With several workers in the group, how the usage log's partitions are split: the
        # sum over workers is the partition count once the group has settled.
        self.partitions_held = Gauge(
            "metering_worker_partitions", "Partitions of the usage log this worker holds.",
            registry=registry,
        )  # fmt: skip
        self.dedupe_entries = Gauge(
            "metering_dedupe_entries",
            "Dedupe keys this worker's index holds (months still open to events).",
            registry=registry,
        )
        self.errors = Counter(
            "metering_errors", "Errors that stopped the worker's fetch loop.", ["component"],
            registry=registry,
        )  # fmt: skip

    def _zero_series(self) -> None:
        """Every series a dashboard or rule reads exists from the start, at zero."""
        for service in self.services:
            for outcome in OUTCOMES:
                self.events.labels(service, outcome)
            for level in LEVELS:
                self.crossings.labels(service, level)
        for reason in REASONS:
            self.dead_letters.labels(reason)
        for kind in ("overage", "adjustment"):
            self.lines.labels(kind)
        self.errors.labels("ingest")  # the one loop that can fail: fetch, fold, flush
        for clock in ("event", "log"):
            self.lag.labels(clock)

    def observe(self, decoded: Sequence[object], result: BatchResult, now: dt.datetime) -> None:
        """Count a folded batch (the records taken are counted as they are taken, by topic)."""
        self.batch_size.observe(len(decoded))
        for (kind, outcome), count in result.outcomes.items():
            if kind in self.services:
                self.events.labels(kind, outcome).inc(count)
        for letter in result.dead_letters:
            self.dead_letters.labels(letter.reason).inc()
        usage = [item for item in decoded if isinstance(item, PlainUsage | UsageRecorded)]
        at = now.timestamp()
        observe_many(self.lag.labels("event"), [at - item.time.timestamp() for item in usage])
        observe_many(self.lag.labels("log"), [at - item.log_seconds for item in usage])
        for crossing in result.crossings:
            self.crossings.labels(crossing.service, crossing.level).inc()
        for line in result.lines:
            self.lines.labels(line.kind).inc()
        if result.closes:
            markers = {
                (item.close_id, item.position.partition): item.position.log_time
                for item in decoded
                if isinstance(item, CloseMarkerSeen)
            }
            for close in result.closes:
                self.closes.inc()
                seen = markers.get((close.close_id, close.partition))
                if seen is not None:
                    self.close_seconds.observe(max(0.0, (now - seen).total_seconds()))

    def dead_lettered(self, reasons: Sequence[str]) -> None:
        """Dead letters decided outside a usage batch (system events)."""
        for reason in reasons:
            self.dead_letters.labels(reason).inc()


class ReadModelMetrics:
    """The projector and API process: its own progress, and gauges read from the model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # In this order: the exposition lists the metrics as they were made.
        self._add_projector_metrics(registry)
        self._add_http_metrics(registry)
        self._add_invoice_gauges(registry)
        self._add_usage_gauges(registry)
        self._add_month_gauges(registry)

    def _add_projector_metrics(self, registry: CollectorRegistry) -> None:
        """The projector's own progress: rows written and set aside, offsets, lag."""
        self.rows = Counter(
            "metering_projector_rows", "Rows the projector wrote, by table.", ["table"],
            registry=registry,
        )  # fmt: skip
        self.set_aside = Counter(
            "metering_projector_set_aside",
            "Records the projector could not write to their table and set aside (table "
            "`set_aside`), by table and reason (`unwritable`, `invalid_record`).",
            ["table", "reason"],
            registry=registry,
        )
        self.offset = Gauge(
            "metering_projector_offset", "Next offset the read model holds, per partition.",
            ["topic", "partition"], registry=registry,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "metering_consumer_lag",
            "Records not yet processed: end offset minus the worker group's committed offset "
            "(consumer=worker) or the read model's offset (consumer=projector).",
            ["consumer", "topic", "partition"],
            registry=registry,
        )

    def _add_http_metrics(self, registry: CollectorRegistry) -> None:
        """The API's requests and their times, by route template."""
        self.http = Counter(
            "metering_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=registry,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "metering_http_request_duration_seconds", "HTTP request time by route template.",
            ["route"], registry=registry,
        )  # fmt: skip

    def _add_invoice_gauges(self, registry: CollectorRegistry) -> None:
        """Invoice lines and totals in the read model."""
        self.invoice_lines = Gauge(
            "metering_invoice_lines", "Invoice lines in the read model by invoice month and kind.",
            ["invoice_month", "kind"], registry=registry,
        )  # fmt: skip
        self.invoice_amount = Gauge(
            "metering_invoice_amount",
            "Invoice total by invoice month and currency (display only: invoices use decimals).",
            ["invoice_month", "currency"],
            registry=registry,
        )

    def _add_usage_gauges(self, registry: CollectorRegistry) -> None:
        """Usage, included amounts, crossings and the top tenants, by month and service."""
        self.crossings = Gauge(
            "metering_threshold_crossings_in_month",
            "Threshold crossings in the read model by usage month, service and level.",
            ["month", "service", "level"],
            registry=registry,
        )
        self.usage = Gauge(
            "metering_usage", "Usage of all tenants in the month, in billing units.",
            ["month", "service"], registry=registry,
        )  # fmt: skip
        self.included = Gauge(
            "metering_included", "Included amount of all tenants with usage in the month.",
            ["month", "service"], registry=registry,
        )  # fmt: skip
        self.tenants_over = Gauge(
            "metering_tenants_over_threshold", "Tenants above their included amount.",
            ["month", "service"], registry=registry,
        )  # fmt: skip
        self.tenant_ratio = Gauge(
            "metering_tenant_usage_ratio",
            "Usage over included of the top tenants (METERING_METRICS_TENANT_TOP).",
            ["month", "service", "tenant"],
            registry=registry,
        )

    def _add_month_gauges(self, registry: CollectorRegistry) -> None:
        """Month closes: when the next is due, and how many there were."""
        self.close_due = Gauge(
            "metering_month_close_due_timestamp_seconds",
            "When the oldest ended but unclosed month with usage is due to be closed (its end "
            "plus the grace period); NaN when no such month exists.",
            registry=registry,
        )
        self.closed_months = Gauge(
            "metering_months_closed", "Usage months closed in the read model.", registry=registry
        )

    def set_figures(self, figures: dict[str, Any]) -> None:
        """Replace the read-model gauges with fresh `queries.metric_figures` output."""
        for gauge in (
            self.invoice_lines, self.invoice_amount, self.crossings, self.usage, self.included,
            self.tenants_over, self.tenant_ratio,
        ):  # fmt: skip
            gauge.clear()
        for row in figures["lines"]:
            self.invoice_lines.labels(row["invoice_month"], row["kind"]).set(row["lines"])
        for row in figures["amounts"]:
            self.invoice_amount.labels(row["invoice_month"], row["currency"]).set(
                float(row["amount"])
            )
        for row in figures["crossings"]:
            self.crossings.labels(row["month"], row["service"], row["level"]).set(row["n"])
        for row in figures["usage"]:
            labels = (row["month"], row["service"])
            self.usage.labels(*labels).set(float(row["usage"]))
            self.included.labels(*labels).set(float(row["included"]))
            self.tenants_over.labels(*labels).set(row["over"])
        for row in figures["tenants"]:
            self.tenant_ratio.labels(row["month"], row["service"], row["tenant"]).set(
                float(row["ratio"])
            )
        self.closed_months.set(figures["closed_months"])
        due = figures["close_due"]
        if due is None:
            self.close_due.set(float("nan"))
        else:
            self.close_due.set(due.timestamp())
