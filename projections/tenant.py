"""A tenant's metering state and the pure folds over it.

`apply_usage`, `apply_licence` and `close_month` each take a state and an event and return the
new state with the records the decision produces; nothing here knows about Kafka or clocks.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from billing.plan import Plan, PlanVersion
from billing.rating import Rating, rate
from billing.thresholds import reached_levels, warning_at
from projections.events import LicenceSnapshotTaken, UsageRecorded
from projections.months import month_start, next_month
from projections.plain import PlainUsage
from schemas.records import ThresholdCrossed
from schemas.services import Service

ID_NAMESPACE = uuid.UUID("6f1c7a52-3a8e-4c55-9d1e-2b9a6c0f4e11")


def stable_id(*parts: str) -> str:
    """A deterministic id: the same decision always gets the same id, on every replay."""
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(parts)))


class ServiceMonth(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: int = 0  # sum, or peak bytes for storage
    events: int = 0
    first_offset: int | None = None
    last_offset: int | None = None


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: dt.datetime
    users: int


class TenantState(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    partition: int
    company: str | None = None
    serial_number: str | None = None
    snapshots: tuple[Snapshot, ...] = ()  # sorted by time
    usage: dict[str, dict[Service, ServiceMonth]] = Field(default_factory=dict)
    crossings: frozenset[str] = frozenset()
    closed: tuple[str, ...] = ()  # months closed for this tenant, sorted
    billed: dict[str, Decimal] = Field(default_factory=dict)  # "YYYY-MM/service" -> amount
    billed_packages: dict[str, int] = Field(default_factory=dict)
    # Offset (in the tenant's partition of the usage log) of the last usage event this state
    # includes: a worker killed after its state reached the changelog but before it committed
    # its offsets sees those events again, and must not count them twice.
    applied_through: int = -1


def users_in_month(snapshots: tuple[Snapshot, ...], month: str, plan: Plan) -> int:
    """Highest `users` in force at any moment of the month; the one in force at its start counts."""
    start = month_start(month, plan.zone)
    end = month_start(next_month(month), plan.zone)
    in_force = 0
    highest = 0
    for snap in snapshots:
        if snap.time <= start:
            in_force = snap.users
        elif snap.time < end:
            highest = max(highest, snap.users)
    return max(in_force, highest)


def _version(plan: Plan, month: str) -> PlanVersion:
    version = plan.version_for(month)
    if version is None:  # decode() dead-letters such events before they reach a fold
        raise ValueError(f"no plan version in force for {month}")
    return version


def rate_month(state: TenantState, month: str, service: Service, plan: Plan) -> Rating:
    usage = state.usage.get(month, {}).get(service, ServiceMonth()).value
    users = users_in_month(state.snapshots, month, plan)
    return rate(service, usage, users, _version(plan, month))


def next_crossing_at(state: TenantState, month: str, service: Service, plan: Plan) -> int:
    """The least usage of the service-month at which `reached_levels` holds a level that is
    not crossed yet. Below it, counting more usage decides nothing, so a batch can count
    without rating every event; at or above it, the event is rated as usual."""
    rating = rate_month(state, month, service, plan)
    included, size, crossed = rating.included, rating.package_size, state.crossings
    candidates = []
    if crossing_id(state.tenant, service, month, "warning", None) not in crossed:
        candidates.append(warning_at(included))
    if crossing_id(state.tenant, service, month, "exceeded", None) not in crossed:
        candidates.append(included + 1)
    # The next package to announce: the first above the current one that is not crossed yet
    # (a licence change can lower the count below packages announced before).
    package = max(rating.packages, 2)
    while crossing_id(state.tenant, service, month, "package", package) in crossed:
        package += 1
    candidates.append(included + (package - 1) * size + 1)
    return min(candidates)


class Triggers:
    """`next_crossing_at`, remembered across batches for the same plan.

    A trigger only changes when the tenant's crossings or seat snapshots do, and both are
    immutable: a new crossing or snapshot makes a new object. An entry is reused while the
    state holds the very objects it was computed from (it keeps them alive, so identities
    cannot be reused). Usage that grew meanwhile without reaching the trigger changes
    nothing; reaching it makes a crossing, hence a new object."""

    def __init__(self, plan: Plan, limit: int = 100_000) -> None:
        self.plan = plan
        self.limit = limit
        self._memo: dict[tuple[str, str, Service], tuple[object, object, int]] = {}

    def at(self, state: TenantState, month: str, service: Service) -> int:
        key = (state.tenant, month, service)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is state.crossings and hit[1] is state.snapshots:
            return hit[2]
        trigger = next_crossing_at(state, month, service, self.plan)
        if len(self._memo) >= self.limit:
            self._memo.clear()
        self._memo[key] = (state.crossings, state.snapshots, trigger)
        return trigger


@functools.lru_cache(maxsize=16_384)
def crossing_id(tenant: str, service: Service, month: str, level: str, n: int | None) -> str:
    # Remembered: every trigger a batch works out asks for the same few ids (a uuid5 each).
    return stable_id("crossing", tenant, service, month, level, str(n or ""))


def _crossings(
    state: TenantState, month: str, service: Service, plan: Plan, by: str, at: dt.datetime
) -> tuple[TenantState, list[ThresholdCrossed]]:
    rating = rate_month(state, month, service, plan)
    new: list[ThresholdCrossed] = []
    for level, n in reached_levels(rating):
        cid = crossing_id(state.tenant, service, month, level, n)
        if cid in state.crossings:
            continue
        new.append(
            ThresholdCrossed(
                id=cid,
                tenant=state.tenant,
                service=service,
                usage_month=month,
                level=level,
                package=n,
                usage=rating.usage,
                included=rating.included,
                users=rating.users,
                crossed_by=by,
                crossed_at=at,
            )
        )
    if not new:
        return state, new
    return state.model_copy(update={"crossings": state.crossings | {c.id for c in new}}), new


def apply_usage(
    state: TenantState, event: UsageRecorded, plan: Plan
) -> tuple[TenantState, list[ThresholdCrossed]]:
    """Count one (already deduplicated) usage event and decide the crossings it causes."""
    months = dict(state.usage)
    services = dict(months.get(event.month, {}))
    before = services.get(event.service, ServiceMonth())
    offset = event.position.offset
    value = plan.catalog[event.service].combine(before.value, event.amount)
    services[event.service] = ServiceMonth(
        value=value,
        events=before.events + 1,
        first_offset=offset if before.first_offset is None else min(before.first_offset, offset),
        last_offset=offset if before.last_offset is None else max(before.last_offset, offset),
    )
    months[event.month] = services
    state = state.model_copy(update={"usage": months})
    return crossings_at(state, event, plan)


def crossings_at(
    state: TenantState, event: UsageRecorded | PlainUsage, plan: Plan
) -> tuple[TenantState, list[ThresholdCrossed]]:
    """The crossings of the event's service-month in `state`, which already counts `event`."""
    return _crossings(
        state, event.month, event.service, plan, f"{event.source}/{event.id}", event.time
    )


def apply_licence(
    state: TenantState, event: LicenceSnapshotTaken, plan: Plan
) -> tuple[TenantState, list[ThresholdCrossed]]:
    """Record a licence snapshot. A late, older snapshot can lower a month's band, so the
    months it touches are checked for crossings again."""
    snap = Snapshot(time=event.time, users=event.users)
    if snap in state.snapshots:
        return state, []
    snapshots = tuple(sorted((*state.snapshots, snap), key=lambda s: (s.time, s.users)))
    state = state.model_copy(update={"snapshots": snapshots})
    crossings: list[ThresholdCrossed] = []
    by = f"licence/{event.position.topic}/{event.position.partition}/{event.position.offset}"
    for month in sorted(state.usage):
        if month_start(next_month(month), plan.zone) <= event.time:
            continue
        for service in sorted(state.usage[month]):
            state, new = _crossings(state, month, service, plan, by, event.time)
            crossings.extend(new)
    return state, crossings
