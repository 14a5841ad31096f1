"""A partition's horizon: once it has folded a close requested 97 days or more after a month
ended, that month takes no more events there, and a worker holding only such partitions
forgets the month's dedupe keys, without ever counting a duplicate twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson

from billing.plan import load_plan
from projections.batch import fold_batch
from projections.events import CloseMarkerSeen, Position, UsageRecorded
from projections.memory import MemoryState
from projections.months import month_end
from projections.plain import micros
from streams.seen import SeenIndex
from streams.store import Store
from tests.unit.test_seen import RecordingProducer

PLAN = load_plan()
UTC = dt.UTC
BARRIER = frozenset({"usage-events/0", "licenses/0"})
# October's window closes at its end + 90 days; the horizon rule 7 days after that.
WINDOW_END = month_end("2026-10", PLAN.zone) + dt.timedelta(days=90)


def at(offset: int, log_time: dt.datetime, partition: int = 0) -> Position:
    return Position(topic="usage-events", partition=partition, offset=offset, log_time=log_time)


def mail(offset: int, log_time: dt.datetime, month: str = "2026-10", id_: str = "e1",
         partition: int = 0) -> UsageRecorded:  # fmt: skip
    time = dt.datetime(int(month[:4]), int(month[5:]), 10, 12, tzinfo=UTC)
    return UsageRecorded(
        tenant="t1", service="mailing", month=month, amount=5, source="crm", id=id_, time=time,
        position=at(offset, log_time, partition),
    )  # fmt: skip


def marker(offset: int, requested: dt.datetime, partition: int = 0) -> CloseMarkerSeen:
    # A close of a month long past: only its request time matters here.
    return CloseMarkerSeen(
        close_id=f"c{offset}", month="2027-01", position=at(offset, requested, partition)
    )


def test_after_a_late_enough_close_a_month_takes_no_more_events() -> None:
    state = MemoryState()
    lagging = WINDOW_END - dt.timedelta(days=1)  # within the window by its own log time
    before = marker(1, WINDOW_END + dt.timedelta(days=6))  # a day short of the rule
    first = fold_batch([mail(0, lagging), before, mail(2, lagging, id_="e0")], state, PLAN, BARRIER)
    state.commit(first)
    assert first.outcomes[("mailing", "accepted")] == 2 and not first.dead_letters
    result = fold_batch(
        [
            marker(2, WINDOW_END + dt.timedelta(days=7)),
            mail(3, lagging, id_="e2"),  # now past the horizon
            mail(4, lagging, id_="e1"),  # a duplicate: turned away before any lookup
            mail(5, WINDOW_END + dt.timedelta(days=8), month="2027-01", id_="e3"),
        ],
        state, PLAN, BARRIER,
    )  # fmt: skip
    state.commit(result)
    assert result.outcomes[("rejected", "too_late")] == 2
    assert result.outcomes[("mailing", "accepted")] == 1  # January still counts
    letters = result.dead_letters
    assert [(d.id, d.reason, d.field, d.tenant) for d in letters] == [
        ("usage-events/0/3", "too_late", "time", "t1"),
        ("usage-events/0/4", "too_late", "time", "t1"),
    ]
    assert orjson.loads(letters[0].payload)["data"] == {"quantity": 5}
    assert state.tenants["t1"].usage["2026-10"]["mailing"].value == 10
    assert state.horizons == {0: micros(WINDOW_END + dt.timedelta(days=7))}


def test_a_record_already_counted_is_not_turned_away_when_folded_again() -> None:
    """A worker killed after writing state, before committing offsets, folds its records
    again; the horizon it wrote meanwhile must not make a dead letter of a counted event."""
    state = MemoryState()
    lagging = WINDOW_END - dt.timedelta(days=1)
    batch = [mail(0, lagging), marker(1, WINDOW_END + dt.timedelta(days=30))]
    state.commit(fold_batch(batch, state, PLAN, BARRIER))
    again = fold_batch(batch[:1], state, PLAN, BARRIER)
    assert not again.dead_letters and not again.outcomes


def test_a_record_claimed_by_itself_before_a_kill_still_counts() -> None:
    """Its dedupe entry reached the changelog, its tenant's state did not: it was counted
    before the kill and is counted again, not turned away by a horizon that moved since."""
    lagging = WINDOW_END - dt.timedelta(days=1)
    state = MemoryState(seen_keys={mail(0, lagging).dedupe_key: 0})
    state.horizons[0] = micros(WINDOW_END + dt.timedelta(days=30))
    result = fold_batch([mail(0, lagging)], state, PLAN, BARRIER)
    assert not result.dead_letters and result.outcomes[("mailing", "accepted")] == 1


async def test_keys_go_once_every_partition_held_is_past_the_month(tmp_path: Path) -> None:
    store = Store(SeenIndex(tmp_path / "seen"))
    store.held = frozenset({0, 1})
    lagging = WINDOW_END - dt.timedelta(days=1)
    items = [mail(0, lagging, id_="a"), mail(0, lagging, month="2027-01", id_="b", partition=1)]
    for n, item in enumerate(items):
        store.prefetch([item.dedupe_key])
        store.apply(fold_batch([item.model_copy(update={"position": at(n, lagging, n)})],
                               store, PLAN, BARRIER))  # fmt: skip
    assert store.index.months == ["2026-10", "2027-01"]
    late = WINDOW_END + dt.timedelta(days=7)
    store.apply(fold_batch([marker(5, late, partition=0)], store, PLAN, BARRIER))
    assert store.prune(PLAN) == 0  # partition 1 has not seen such a close yet
    store.apply(fold_batch([marker(6, late, partition=1)], store, PLAN, BARRIER))
    assert store.prune(PLAN) == 1 and store.index.months == ["2027-01"]
    store.apply(fold_batch([mail(7, late, month="2027-01", id_="c", partition=1)],
                           store, PLAN, BARRIER))  # fmt: skip
    producer = RecordingProducer()
    await store.flush(producer, "app")  # type: ignore[arg-type]
    keys = [key for _, key, _, _ in producer.sent]
    # The horizons go last, after the state they belong with.
    assert [k[:1] for k in keys[-2:]] == [b"h", b"h"] and b"t1" in keys[:-2]
    horizons = {key: value for topic, key, value, _ in producer.sent if key.startswith(b"h")}
    assert horizons == {b"h0": str(micros(late)).encode(), b"h1": str(micros(late)).encode()}
