"""Fold a batch of decoded records into state: dedupe, usage, licences and close barriers.

The stream agent reads current state through a `StateView`, calls `fold_batch`, and writes what
the `BatchResult` holds: one state write per key per batch, then the output records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from billing.plan import Plan
from projections.events import (
    CloseMarkerSeen,
    Decoded,
    LicenceSnapshotTaken,
    TenantRegistered,
    UsageRecorded,
    trusted,
)
from projections.horizon import forgotten, past_horizon
from projections.invoicing import close_month
from projections.plain import PlainUsage, micros
from projections.tenant import (
    ServiceMonth,
    TenantState,
    Triggers,
    apply_licence,
    crossings_at,
    stable_id,
)
from schemas.records import DeadLetter, InvoiceLine, MonthClosed, ThresholdCrossed
from schemas.services import Service

Usage = UsageRecorded | PlainUsage  # the same event, decoded by the models or the fast lane


class StateView(Protocol):
    def tenant(self, tenant: str) -> TenantState | None: ...
    def tenants_in(self, partition: int) -> Iterable[str]: ...
    def seen(self, key: str) -> int | None: ...
    def barrier(self, key: str) -> tuple[str, ...]: ...
    def partition_closed(self, partition: int) -> tuple[str, ...]: ...
    def horizon(self, partition: int) -> int: ...


@dataclass
class BatchResult:
    tenants: dict[str, TenantState] = field(default_factory=dict)
    # dedupe key -> (partition, month, offset of the record that claimed it)
    seen: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    barriers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    partition_closed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    horizons: dict[int, int] = field(default_factory=dict)  # see `projections.horizon`
    crossings: list[ThresholdCrossed] = field(default_factory=list)
    lines: list[InvoiceLine] = field(default_factory=list)
    closes: list[MonthClosed] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (service or record kind, outcome) -> count, for metrics and the accounting identity
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)


class _Running:
    """A service-month being counted in this batch, ahead of the tenant's state."""

    __slots__ = ("events", "first", "last", "peak", "trigger", "value")

    def __init__(self, before: ServiceMonth | None, trigger: int, peak: bool) -> None:
        self.peak = peak  # the service's rule (peak or sum), looked up once per batch
        self.value = before.value if before else 0
        self.events = before.events if before else 0
        self.first = before.first_offset if before else None
        self.last = before.last_offset if before else None
        self.trigger = trigger


class _Counting:
    """A tenant whose usage this batch counts in place; `settle` makes it a state again.

    Equivalent to `apply_usage` per event (the property tests compare the two): usage is
    only rated when it reaches `next_crossing_at`, the least value that can cross a level.
    """

    __slots__ = ("applied", "origin", "running", "state")

    def __init__(self, state: TenantState) -> None:
        self.origin = self.state = state
        self.running: dict[tuple[str, Service], _Running] = {}
        self.applied = state.applied_through

    def count(self, event: Usage, triggers: Triggers) -> list[ThresholdCrossed]:
        key = (event.month, event.service)
        running = self.running.get(key)
        if running is None:
            before = self.state.usage.get(event.month, {}).get(event.service)
            trigger = triggers.at(self.state, event.month, event.service)
            peak = triggers.plan.catalog[event.service].peak
            running = self.running[key] = _Running(before, trigger, peak)
        # `ServiceSpec.combine`, `min` and `max`, spelled out: this runs for every event.
        offset, amount = event.offset, event.amount
        if not running.peak:
            running.value += amount
        elif amount > running.value:
            running.value = amount
        running.events += 1
        if running.first is None or offset < running.first:
            running.first = offset
        if running.last is None or offset > running.last:
            running.last = offset
        self.applied = offset
        if running.value < running.trigger:
            return []
        self.state, crossings = crossings_at(self.settle(), event, triggers.plan)
        self.running.clear()
        return crossings

    def settle(self) -> TenantState:
        if not self.running and self.applied == self.state.applied_through:
            return self.state
        months = dict(self.state.usage)
        copied: set[str] = set()
        for (month, service), running in self.running.items():
            if month not in copied:
                months[month] = dict(months.get(month, {}))
                copied.add(month)
            months[month][service] = trusted(
                ServiceMonth,
                value=running.value,
                events=running.events,
                first_offset=running.first,
                last_offset=running.last,
            )
        return self.state.model_copy(update={"usage": months, "applied_through": self.applied})


class _Batch:
    def __init__(
        self, view: StateView, triggers: Triggers, barrier_origins: frozenset[str]
    ) -> None:
        self.view = view
        self.plan = triggers.plan
        self.triggers = triggers
        self.barrier_origins = barrier_origins
        self.out = BatchResult()
        self.counting: dict[str, _Counting] = {}
        self._closed_to: dict[tuple[str, int], bool] = {}

    def settle(self) -> None:
        for tenant in list(self.counting):
            self.settle_one(tenant)

    def settle_one(self, tenant: str) -> None:
        counting = self.counting.pop(tenant, None)
        if counting is None:
            return
        state = counting.settle()
        if state is not counting.origin:  # only duplicates: nothing to write
            self.out.tenants[tenant] = state

    def state(self, tenant: str, partition: int) -> TenantState:
        self.settle_one(tenant)
        found = self.out.tenants.get(tenant) or self.view.tenant(tenant)
        if found is None:
            # A tenant first seen after a close starts with that close already applied, so a
            # late event for that month becomes an adjustment, not an unbilled month.
            found = TenantState(
                tenant=tenant, partition=partition, closed=self.closed_in(partition)
            )
        return found

    def closed_in(self, partition: int) -> tuple[str, ...]:
        if partition in self.out.partition_closed:
            return self.out.partition_closed[partition]
        return self.view.partition_closed(partition)

    def closed_to(self, month: str, partition: int) -> bool:
        """`projections.horizon.forgotten`, remembered per batch until a marker moves it."""
        key = (month, partition)
        closed = self._closed_to.get(key)
        if closed is None:
            closed = self._closed_to[key] = forgotten(month, self.horizon(partition), self.plan)
        return closed

    def horizon(self, partition: int) -> int:
        if partition in self.out.horizons:
            return self.out.horizons[partition]
        return self.view.horizon(partition)

    def claimed(self, key: str) -> int | None:
        if key in self.out.seen:
            return self.out.seen[key][2]
        return self.view.seen(key)

    def usage(self, event: Usage) -> None:
        key, offset, partition = event.dedupe_key, event.offset, event.partition
        counting = self.counting.get(event.tenant)
        if counting is None:
            counting = _Counting(self.state(event.tenant, partition))
            self.counting[event.tenant] = counting
        if self.past_horizon(event, counting):
            return
        if event.copy_key is not None and self.copied_again(event, event.copy_key):
            return
        claimed = self.claimed(key)
        if offset <= counting.applied:
            # Already in the tenant's state: the state was written, the offset commit was
            # not (a killed worker). Only a lost dedupe entry may need writing again (not
            # one of a month forgotten since).
            if claimed is None and not self.closed_to(event.month, partition):
                self.out.seen[key] = (partition, event.month, offset)
            return
        if claimed is not None and claimed != offset:
            self.out.outcomes[(event.service, "duplicate")] += 1
            return
        # New, or claimed by this very record: its dedupe entry was written before a kill,
        # the tenant's state was not. It has not been counted yet. Only a new claim is
        # written: the index takes `seen` as keys it does not hold (`SeenIndex.add(fresh)`).
        if claimed is None:
            self.out.seen[key] = (partition, event.month, offset)
        if crossings := counting.count(event, self.triggers):
            self.out.crossings.extend(crossings)
        self.out.outcomes[(event.service, "accepted")] += 1

    def past_horizon(self, event: Usage, counting: _Counting) -> bool:
        """Turn the event away if its month is closed to events in its partition
        (`projections.horizon`). Decided before anything the dedupe index holds, which a
        worker may have pruned for that month: the outcome is the same on every worker.
        Not for a record already counted (in the state, or claimed by itself before a kill):
        the horizon the state carries may have moved past it since."""
        if event.offset <= counting.applied or not self.closed_to(event.month, event.partition):
            return False
        if self.claimed(event.dedupe_key) == event.offset:
            return False
        self.out.dead_letters.append(past_horizon(event, self.horizon(event.partition), self.plan))
        self.out.outcomes[("rejected", "too_late")] += 1
        return True

    def copied_again(self, event: Usage, copy_key: str) -> bool:
        """Whether this is a second copy of a record moved to its tenant's partition (the
        worker that moved it was killed before committing, or a new group replays): the
        first copy decided, whether counted or duplicate; this one is no event of its own."""
        claimed = self.claimed(copy_key)
        if claimed is not None and claimed != event.offset:
            self.out.outcomes[(event.service, "recopied")] += 1
            return True
        if claimed is None and not self.closed_to(event.month, event.partition):
            self.out.seen[copy_key] = (event.partition, event.month, event.offset)
        return False

    def licence(self, event: LicenceSnapshotTaken) -> None:
        state, crossings = apply_licence(
            self.state(event.tenant, event.position.partition), event, self.plan
        )
        self.out.tenants[event.tenant] = state
        self.out.crossings.extend(crossings)
        self.out.outcomes[("licence", "accepted")] += 1

    def registered(self, event: TenantRegistered) -> None:
        state = self.state(event.tenant, event.position.partition)
        self.out.tenants[event.tenant] = state.model_copy(
            update={"company": event.company, "serial_number": event.serial_number}
        )
        self.out.outcomes[("registration", "accepted")] += 1

    def marker(self, event: CloseMarkerSeen) -> None:
        partition = event.position.partition
        requested = micros(event.position.log_time)
        if requested > self.horizon(partition):
            self.out.horizons[partition] = requested
            self._closed_to.clear()
        key = f"{event.close_id}\x1f{partition}"
        before = self.out.barriers.get(key) or self.view.barrier(key)
        if self.barrier_origins <= set(before):
            return  # this close already took effect here
        after = tuple(sorted({*before, event.position.barrier_origin}))
        self.out.barriers[key] = after
        if self.barrier_origins <= set(after):
            self.close(event.close_id, event.month, partition)

    def close(self, close_id: str, month: str, partition: int) -> None:
        self.settle()
        tenants = set(self.view.tenants_in(partition))
        tenants.update(t for t, s in self.out.tenants.items() if s.partition == partition)
        lines: list[InvoiceLine] = []
        for tenant in sorted(tenants):
            state, new = close_month(self.state(tenant, partition), month, close_id, self.plan)
            self.out.tenants[tenant] = state
            lines.extend(new)
        closed = self.closed_in(partition)
        if month not in closed:
            self.out.partition_closed[partition] = tuple(sorted((*closed, month)))
        self.out.lines.extend(lines)
        self.out.closes.append(
            MonthClosed(
                id=stable_id("close", close_id, str(partition)),
                close_id=close_id,
                month=month,
                partition=partition,
                tenants=len(tenants),
                lines=len(lines),
                amount=sum((line.amount for line in lines), Decimal("0.00")),
            )
        )


def fold_batch(
    items: Sequence[Decoded | PlainUsage | DeadLetter],
    view: StateView,
    plan: Plan,
    barrier_origins: frozenset[str],
    triggers: Triggers | None = None,
) -> BatchResult:
    """Apply records in log order; a close marker from each of `barrier_origins` (every
    partition of every input topic, as `topic/partition`) must reach a partition before the
    close takes effect there. A worker passes the same `triggers` to
    every batch (of the same plan), so that a tenant's levels are not worked out anew each
    time."""
    if triggers is None or triggers.plan is not plan:
        triggers = Triggers(plan)
    batch = _Batch(view, triggers, barrier_origins)
    for item in items:
        if isinstance(item, PlainUsage | UsageRecorded):
            batch.usage(item)
        elif isinstance(item, LicenceSnapshotTaken):
            batch.licence(item)
        elif isinstance(item, TenantRegistered):
            batch.registered(item)
        elif isinstance(item, CloseMarkerSeen):
            batch.marker(item)
        else:
            batch.out.dead_letters.append(item)
            batch.out.outcomes[("rejected", item.reason)] += 1
    batch.settle()
    return batch.out
