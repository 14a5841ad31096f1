"""Pure folds: usage sums and peaks, dedupe, users of a month, crossings, close and adjustments."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.batch import fold_batch
from projections.events import CloseMarkerSeen, LicenceSnapshotTaken, Position
from projections.memory import MemoryState
from projections.months import auto_close_due, months_until
from projections.tenant import (
    Snapshot,
    TenantState,
    Triggers,
    apply_licence,
    apply_usage,
    users_in_month,
)
from schemas.services import Service, default_catalog
from tests.factories import licence, usage

PLAN = load_plan()
UTC = dt.UTC
# Two partitions of the usage log and one of the licence topic: a partition closes once the
# marker from each has reached it (its own directly, the others as copies).
BARRIER = frozenset({"usage-events/0", "usage-events/1", "licenses/0"})
GB = 10**9


def logged(items: list, ends: dict[int, int]) -> list:  # type: ignore[type-arg]
    """The items as a log delivers them: offsets rise in delivery order per partition."""
    placed = []
    for item in items:
        if hasattr(item, "position"):
            partition = item.position.partition
            offset = ends.get(partition, 0)
            ends[partition] = offset + 1
            position = item.position.model_copy(update={"offset": offset})
            item = item.model_copy(update={"position": position})
        placed.append(item)
    return placed


def run(*batches: list) -> tuple[MemoryState, list]:  # type: ignore[type-arg]
    """Append batches to a log in order, fold them, and return the final state and every
    output record."""
    state = MemoryState()
    outputs: list = []  # type: ignore[type-arg]
    ends: dict[int, int] = {}
    for items in batches:
        result = fold_batch(logged(items, ends), state, PLAN, BARRIER)
        state.commit(result)
        outputs.extend(result.crossings + result.lines + result.closes + result.dead_letters)
    return state, outputs


def close(month: str, close_id: str = "c1", partition: int = 0) -> list[CloseMarkerSeen]:
    at = dt.datetime(2026, 11, 5, tzinfo=UTC)
    return [
        CloseMarkerSeen(
            close_id=close_id,
            month=month,
            position=Position(
                topic="usage-events",
                partition=partition,
                offset=0,
                log_time=at,
                origin=None if origin == f"usage-events/{partition}" else origin,
                origin_offset=None if origin == f"usage-events/{partition}" else 0,
            ),
        )
        for origin in sorted(BARRIER)
    ]


def values(state: MemoryState, tenant: str = "t1", month: str = "2026-10") -> dict[str, int]:
    return {s: u.value for s, u in state.tenants[tenant].usage.get(month, {}).items()}


events = st.lists(
    st.tuples(
        st.sampled_from(default_catalog().names),
        st.integers(min_value=1, max_value=10**6),
        st.sampled_from(["a", "b"]),  # source
        st.integers(min_value=0, max_value=30),  # id: collisions make duplicates
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=events, data=st.data())
def test_usage_is_independent_of_order_and_duplicates(events: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    # The first occurrence of an identity wins, so fix each identity's amount up front:
    # a redelivered event carries the same data as the original.
    amount_of: dict[tuple[str, int], tuple[Service, int]] = {}
    for service, amount, source, n in events:
        amount_of.setdefault((source, n), (service, amount))
    decoded = [
        usage(amount_of[(src, n)][0], amount_of[(src, n)][1], source=src, id=str(n))
        for _, _, src, n in events
    ]
    shuffled = data.draw(st.permutations(decoded))
    once = [usage(s, a, source=src, id=str(n)) for (src, n), (s, a) in amount_of.items()]
    first, _ = run(decoded)
    second, _ = run(shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2 :])
    third, _ = run(once, once)  # everything delivered twice
    if not decoded:
        return
    assert values(first) == values(second) == values(third)
    expected: dict[str, int] = {}
    for service, amount in amount_of.values():
        if service == "storage":
            expected["storage"] = max(expected.get("storage", 0), amount)
        else:
            expected[service] = expected.get(service, 0) + amount
    assert values(first) == expected


# Dense on purpose: few tenants, months and services, so that usage walks through every
# level (85 %, included, packages) in small steps as well as in big jumps.
mixed = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["form", "chat", "storage"]),
            st.one_of(st.integers(1, 250), st.integers(1, 10**11)),
            st.integers(0, 60),  # id: collisions make duplicates
            st.integers(0, 1),  # tenant
            st.sampled_from(["2026-10", "2026-10", "2026-09"]),
        ),
        st.tuples(st.integers(0, 160), st.integers(0, 1), st.integers(1, 60)),  # users, tenant, day
    ),
    min_size=20,
    max_size=80,
)


def one_by_one(log: list) -> tuple[dict[str, TenantState], list]:  # type: ignore[type-arg]
    """The reference: `apply_usage` / `apply_licence` on every record, deduplicated."""
    states: dict[str, TenantState] = {}
    seen: set[str] = set()
    crossings: list = []  # type: ignore[type-arg]
    for item in log:
        state = states.get(item.tenant) or TenantState(tenant=item.tenant, partition=0)
        if isinstance(item, LicenceSnapshotTaken):
            state, new = apply_licence(state, item, PLAN)
        elif item.dedupe_key in seen:
            continue
        else:
            seen.add(item.dedupe_key)
            state, new = apply_usage(state, item, PLAN)
            state = state.model_copy(update={"applied_through": item.position.offset})
        states[item.tenant] = state
        crossings.extend(new)
    return states, crossings


@settings(max_examples=200, deadline=None)
@given(items=mixed, cut=st.integers(0, 60))
def test_a_batch_decides_exactly_what_single_events_decide(items: list, cut: int) -> None:  # type: ignore[type-arg]
    """The batch fold counts usage in place and rates only near a level; it must emit the
    same crossings (same ids, usage, crossed_by, order) and end in the same states as
    `apply_usage` on every record, across seat changes, duplicates and months."""
    decoded = []
    for item in items:
        if len(item) == 5:
            service, amount, n, t, month = item
            decoded.append(usage(service, amount, tenant=f"t{t}", month=month, id=str(n)))
        else:
            users, t, day = item
            when = dt.datetime(2026, 9, 1, tzinfo=UTC) + dt.timedelta(days=day - 1)
            decoded.append(licence(users, when, tenant=f"t{t}"))
    log = logged(decoded, {})
    expected_states, expected_crossings = one_by_one(log)
    state = MemoryState()
    crossings = []
    triggers = Triggers(PLAN)  # shared, as the worker shares it
    for batch in (log[:cut], log[cut:]):
        result = fold_batch(batch, state, PLAN, BARRIER, triggers)
        state.commit(result)
        crossings.extend(result.crossings)
    assert crossings == expected_crossings
    assert state.tenants == expected_states


def test_a_later_snapshot_that_lowers_the_band_moves_the_next_level_down() -> None:
    """Remembered levels must follow the seats: 120 users put the warning at 2,550 forms;
    a snapshot of 10 users in force from October puts it at 850, which 900 then reaches."""
    sep = dt.datetime(2026, 9, 1, tzinfo=UTC)
    log = logged(
        [
            licence(120, sep),
            usage("form", 500, id="a"),
            licence(10, sep + dt.timedelta(days=14)),
            usage("form", 400, id="b"),
        ],
        {},
    )
    _, expected = one_by_one(log)
    assert [(c.level, c.usage) for c in expected] == [("warning", 900)]
    state, triggers, crossings = MemoryState(), Triggers(PLAN), []
    for batch in ([log[0], log[1]], [log[2]], [log[3]]):
        result = fold_batch(batch, state, PLAN, BARRIER, triggers)
        state.commit(result)
        crossings.extend(result.crossings)
    assert crossings == expected


@settings(max_examples=80, deadline=None)
@given(events=events, data=st.data())
def test_a_worker_killed_mid_write_counts_every_record_once(
    events: list,  # type: ignore[type-arg]
    data: st.DataObject,
) -> None:
    """A kill after part of a batch's state reached the changelog, before its offsets were
    committed: the batch is delivered again on top of that partial state. Usage, crossings
    and dedupe must end exactly as in a run without the kill."""
    log = logged(
        [usage(s, a, source=src, id=str(n), tenant=f"t{n % 3}") for s, a, src, n in events],
        {},
    )
    if not log:
        return
    cut = data.draw(st.integers(0, len(log) - 1))
    size = data.draw(st.integers(1, len(log) - cut))
    before, crashed, after = log[:cut], log[cut : cut + size], log[cut + size :]
    clean = MemoryState()
    clean_out = set()
    for batch in (before, crashed, after):
        result = fold_batch(batch, clean, PLAN, BARRIER)
        clean.commit(result)
        clean_out |= {c.id for c in result.crossings}

    state = MemoryState()
    out = set()
    result = fold_batch(before, state, PLAN, BARRIER)
    state.commit(result)
    out |= {c.id for c in result.crossings}
    lost = fold_batch(crashed, state, PLAN, BARRIER)
    out |= {c.id for c in lost.crossings}  # sent and acknowledged before any state write
    kept_tenants = data.draw(st.sets(st.sampled_from(sorted(lost.tenants) or ["-"])))
    kept_seen = data.draw(st.sets(st.sampled_from(sorted(lost.seen) or ["-"])))
    lost.tenants = {t: s for t, s in lost.tenants.items() if t in kept_tenants}
    lost.seen = {k: v for k, v in lost.seen.items() if k in kept_seen}
    state.commit(lost)  # part of the changelog made it, the offset commit did not
    for batch in (crashed, after):  # redelivered from the last committed offset
        result = fold_batch(batch, state, PLAN, BARRIER)
        state.commit(result)
        out |= {c.id for c in result.crossings}
    for tenant in clean.tenants:
        assert state.tenants[tenant].usage == clean.tenants[tenant].usage
        assert state.tenants[tenant].crossings == clean.tenants[tenant].crossings
    assert out == clean_out
    assert set(state.seen_keys) == set(clean.seen_keys)


def test_same_id_from_two_sources_counts_twice() -> None:
    state, _ = run([usage("chat", 5, source="a", id="1"), usage("chat", 7, source="b", id="1")])
    assert values(state) == {"chat": 12}


def test_storage_is_billed_on_its_peak() -> None:
    state, _ = run([usage("storage", 180 * GB), usage("storage", 20 * GB, day=20)])
    assert values(state) == {"storage": 180 * GB}


def test_users_in_month_counts_snapshot_in_force_at_start() -> None:
    snaps = (
        Snapshot(time=dt.datetime(2026, 9, 1, tzinfo=UTC), users=120),
        Snapshot(time=dt.datetime(2026, 9, 20, tzinfo=UTC), users=40),
        Snapshot(time=dt.datetime(2026, 10, 15, tzinfo=UTC), users=60),
        Snapshot(time=dt.datetime(2026, 10, 20, tzinfo=UTC), users=30),
        Snapshot(time=dt.datetime(2026, 11, 1, tzinfo=UTC), users=200),
    )
    assert users_in_month(snaps, "2026-09", PLAN) == 120
    assert users_in_month(snaps, "2026-10", PLAN) == 60
    assert users_in_month(snaps, "2026-11", PLAN) == 200
    assert users_in_month(snaps, "2026-12", PLAN) == 200  # no snapshot in December itself
    assert users_in_month(snaps, "2026-08", PLAN) == 0  # before the first snapshot
    assert users_in_month((), "2026-10", PLAN) == 0


def test_crossings_warning_exceeded_packages_once_each() -> None:
    batch = [
        usage("mailing", 12_749),  # 84.99 %: nothing
        usage("mailing", 1),  # 12,750 = 85 %: warning
        usage("mailing", 2_250),  # 15,000 = included: nothing new
        usage("mailing", 1),  # 15,001: exceeded (package 1 starts)
        usage("mailing", 50_000),  # 65,001: package 2
        usage("mailing", 10),
    ]
    _, outputs = run(batch[:3], batch[3:])
    assert [(c.level, c.package, c.usage) for c in outputs] == [
        ("warning", None, 12_750),
        ("exceeded", None, 15_001),
        ("package", 2, 65_001),
    ]
    _, again = run(batch, batch)
    assert len(again) == 3  # redelivery decides nothing new


def test_one_event_can_reach_several_levels() -> None:
    _, outputs = run([usage("form", 3_500)])
    assert [(c.level, c.package) for c in outputs] == [
        ("warning", None),
        ("exceeded", None),
        ("package", 3),
    ]


def test_close_bills_packages_and_is_idempotent() -> None:
    batch = [
        licence(60, dt.datetime(2026, 9, 1, tzinfo=UTC)),  # band 2 for all of October
        usage("storage", 151 * GB),  # 100 GB included, 51 over: 2 packages
        usage("chat", 1_999),  # 2,000 included: none
        usage("form", 2_001),  # 2,000 included: 1 package
    ]
    state, outputs = run(batch, close("2026-10"), close("2026-10"), close("2026-10", "c2"))
    lines = [o for o in outputs if getattr(o, "kind", None)]
    got = [(ln.service, ln.packages, ln.amount, ln.invoice_month, ln.users) for ln in lines]
    assert got == [
        ("form", 1, Decimal("32.40"), "2026-11", 60),
        ("storage", 2, Decimal("64.80"), "2026-11", 60),
    ]
    storage = lines[1]
    assert (storage.usage, storage.included, storage.unit) == (Decimal(151), Decimal(100), "GB")
    assert storage.provenance.events == 1
    assert state.tenants["t1"].closed == ("2026-10",)


def test_close_waits_for_every_barrier_topic() -> None:
    markers = close("2026-10")
    _, outputs = run([usage("form", 2_001)], markers[:1])
    assert not [o for o in outputs if getattr(o, "kind", None)]
    _, outputs = run([usage("form", 2_001)], markers[:1], markers[1:])
    assert [o.amount for o in outputs if getattr(o, "kind", None)] == [Decimal("64.80")]


def test_mid_month_seat_change_raises_the_band() -> None:
    batch = [
        licence(40, dt.datetime(2026, 9, 1, tzinfo=UTC)),
        usage("customer_center", 1_500),
        licence(55, dt.datetime(2026, 10, 20, tzinfo=UTC)),
        licence(45, dt.datetime(2026, 10, 25, tzinfo=UTC)),
    ]
    _, outputs = run(batch, close("2026-10"))
    lines = [o for o in outputs if getattr(o, "kind", None)]
    assert lines == []  # 55 users at some moment: band 2, 2,000 included


def test_late_event_gives_adjustment_and_leaves_closed_lines_alone() -> None:
    first = [usage("form", 2_500)]
    late = [usage("form", 600, id="late")]  # 3,100 logins: 3 packages instead of 2
    _state, outputs = run(first, close("2026-10", "c1"), late, close("2026-11", "c2"))
    lines = [o for o in outputs if getattr(o, "kind", None)]
    got = [(ln.kind, ln.usage_month, ln.invoice_month, ln.packages, ln.amount) for ln in lines]
    assert got == [
        ("overage", "2026-10", "2026-11", 2, Decimal("64.80")),
        ("adjustment", "2026-10", "2026-12", 1, Decimal("32.40")),
    ]
    assert lines[0].id != lines[1].id


def test_tenant_first_seen_after_close_is_adjusted_not_forgotten() -> None:
    late = [usage("form", 1_001, tenant="newcomer")]
    _, outputs = run([usage("chat", 1)], close("2026-10"), late, close("2026-11", "c2"))
    lines = [o for o in outputs if getattr(o, "kind", None)]
    assert [(ln.tenant, ln.kind, ln.usage_month, ln.amount) for ln in lines] == [
        ("newcomer", "adjustment", "2026-10", Decimal("32.40"))
    ]


def test_usage_going_down_gives_negative_adjustment() -> None:
    # A storage peak never goes down, but an older licence snapshot that arrives late can
    # raise the band of a closed month: the refund is an adjustment line.
    _state, outputs = run(
        [usage("form", 1_500)],
        close("2026-10"),
        [licence(60, dt.datetime(2026, 10, 2, tzinfo=UTC))],
        close("2026-11", "c2"),
    )
    lines = [o for o in outputs if getattr(o, "kind", None)]
    assert [(ln.kind, ln.packages, ln.amount) for ln in lines] == [
        ("overage", 1, Decimal("32.40")),
        ("adjustment", -1, Decimal("-32.40")),
    ]


def test_auto_close_asks_for_last_month_once_its_grace_has_passed() -> None:
    grace = dt.timedelta(days=3)
    assert auto_close_due(dt.datetime(2026, 11, 3, 23, 59, tzinfo=UTC), grace, UTC) is None
    assert auto_close_due(dt.datetime(2026, 11, 4, tzinfo=UTC), grace, UTC) == "2026-10"
    assert auto_close_due(dt.datetime(2027, 1, 10, tzinfo=UTC), grace, UTC) == "2026-12"


def test_months_until_counts_back_across_years() -> None:
    assert months_until("2026-02", 4) == ["2025-11", "2025-12", "2026-01", "2026-02"]
    assert months_until("2026-02", 1) == ["2026-02"]
