"""Records moved to their tenant's partition: each counts once, whichever way it came."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.batch import fold_batch
from projections.events import Position, UsageRecorded
from projections.memory import MemoryState
from tests.factories import usage

PLAN = load_plan()
BARRIER = frozenset({"usage-events/0", "usage-events/1", "licenses/0"})
LOG_TIME = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def at(offset: int, origin: tuple[str, int] | None = None) -> Position:
    return Position(
        topic="usage-events", partition=0, offset=offset, log_time=LOG_TIME,
        origin=origin[0] if origin else None, origin_offset=origin[1] if origin else None,
    )  # fmt: skip


def placed(event: UsageRecorded, offset: int, origin: tuple[str, int] | None) -> UsageRecorded:
    return event.model_copy(update={"position": at(offset, origin)})


def fold(state: MemoryState, *items: UsageRecorded) -> Counter[tuple[str, str]]:
    result = fold_batch(list(items), state, PLAN, BARRIER)
    state.commit(result)
    return result.outcomes


def chats(state: MemoryState) -> int:
    return state.tenants["t1"].usage["2026-10"]["chat"].value


def test_a_second_copy_of_a_moved_event_is_not_counted() -> None:
    event = usage("chat", 5, id="a")
    state = MemoryState()
    first = fold(state, placed(event, 0, ("usage-events/1", 9)))
    again = fold(state, placed(event, 1, ("usage-events/1", 9)))  # the mover was killed
    assert chats(state) == 5
    assert first == {("chat", "accepted"): 1}
    assert again == {("chat", "recopied"): 1}  # no duplicate: nobody sent it twice


def test_a_duplicate_sent_through_another_client_is_a_duplicate_once() -> None:
    event = usage("chat", 5, id="a")
    state = MemoryState()
    outcomes = fold(
        state,
        placed(event, 0, None),  # at home, via `metering send`
        placed(event, 1, ("usage-events/3", 4)),  # the same id via kcat, moved here
        placed(event, 2, ("usage-events/3", 4)),  # and that copy again
        placed(event, 3, ("licenses/0", 8)),  # and once more, written to the licence topic
    )
    assert chats(state) == 5
    assert outcomes == {
        ("chat", "accepted"): 1, ("chat", "duplicate"): 2, ("chat", "recopied"): 1,
    }  # fmt: skip


def test_a_copy_folded_again_after_a_kill_counts_once() -> None:
    event = usage("chat", 5, id="a")
    state = MemoryState()
    copy = placed(event, 0, ("usage-events/1", 9))
    fold(state, copy)
    fold(state, copy)  # state written, offsets not committed: the same record again
    assert chats(state) == 5
    lost = MemoryState(tenants=dict(state.tenants))  # state written, dedupe entries lost
    assert fold(lost, copy) == Counter()
    assert chats(lost) == 5 and len(lost.seen_keys) == 2


@settings(max_examples=60, deadline=None)
@given(
    deliveries=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([None, "usage-events/1", "licenses/0"])),
        max_size=30,
    ),
    split=st.integers(0, 30),
)
def test_usage_is_the_sum_of_distinct_events_however_they_arrive(
    deliveries: list[tuple[int, str | None]], split: int
) -> None:
    """Any mix of direct records, copies and second copies of the same originals: the tenant
    is charged each distinct event once, and every record has one outcome."""
    items = []
    for offset, (n, origin) in enumerate(deliveries):
        event = usage("chat", n + 1, id=str(n))
        where = None if origin is None else (origin, n)  # one original per (origin, id)
        items.append(placed(event, offset, where))
    state = MemoryState()
    outcomes = fold(state, *items[:split]) + fold(state, *items[split:])
    distinct = {n for n, _ in deliveries}
    assert (chats(state) if distinct else 0) == sum(n + 1 for n in distinct)
    assert outcomes[("chat", "accepted")] == len(distinct)
    # records produced: each direct one, and each original that copies stand for
    produced = sum(1 for _, origin in deliveries if origin is None)
    produced += len({(n, origin) for n, origin in deliveries if origin is not None})
    assert outcomes[("chat", "accepted")] + outcomes[("chat", "duplicate")] == produced
    assert sum(outcomes.values()) == len(deliveries)
