"""The month test's months, for any "now": every event it sends is accepted by the real decode
rules (and by ingest's `admit`) when its record enters the log at that now or up to
`RUN_TIME` later, every bad line is refused for its reason, and the pure part of the month
(decode, fold, two closes) bills the lines the integration test expects.

The integration test runs against a broker whose log-append time is the real clock, so it
uses the real now; here "now" is pinned: to risky days, and to any day of several years.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.batch import fold_batch
from projections.decode import admit, check_system_event, decode
from projections.events import CloseMarkerSeen, Decoded, Position, UsageRecorded
from projections.memory import MemoryState
from projections.months import month_of
from schemas.records import DeadLetter, InvoiceLine
from tests.month_case import (
    RUN_TIME,
    WORKER_LETTERS,
    Line,
    MonthCase,
    bad,
    first_invoice,
    late,
    licences,
    month_case,
    second_invoice,
    usage,
)

PLAN = load_plan()
UTC = dt.UTC
USAGE_TOPIC, LICENCE_TOPIC = "usage-events", "licenses"
BARRIER = frozenset({f"{USAGE_TOPIC}/0", f"{LICENCE_TOPIC}/0"})


def day(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


RISKY = [
    # the days of issue 13
    "2026-11-30T00:00:00", "2026-11-30T23:59:59", "2026-12-01T00:00:00", "2026-12-01T12:00:00",
    # the last day of a 31-day month, after two long months (Jul + Aug, Dec + Jan)
    "2026-08-31T00:00:00", "2026-08-31T23:59:59", "2026-10-31T12:00:00", "2027-01-31T23:59:59",
    "2027-03-31T00:00:00", "2026-12-31T23:59:59", "2027-01-01T00:00:00",
    # the 1st of a month, and just before and after the 5th (the latest day an event names)
    "2026-09-01T00:00:00", "2027-03-01T00:00:00", "2028-03-01T00:00:00", "2026-10-05T11:00:00",
    "2026-10-05T12:10:00", "2026-09-28T00:00:00", "2026-09-29T00:00:00",
    # February, leap and not
    "2027-02-28T23:59:59", "2028-02-28T12:00:00", "2028-02-29T00:00:00", "2028-02-29T23:59:59",
    "2100-02-28T23:59:59",
]  # fmt: skip


def position(log_time: dt.datetime, offset: int = 0) -> Position:
    return Position(topic=USAGE_TOPIC, partition=0, offset=offset, log_time=log_time)


def decoded(event: dict[str, Any], log_time: dt.datetime, offset: int = 0) -> Decoded:
    result = decode(orjson.dumps(event), position(log_time, offset), PLAN)
    assert not isinstance(result, DeadLetter), (log_time, event["time"], result.detail)
    return result


def check_accepted(case: MonthCase) -> None:
    good = licences(case) + usage(case) + late(case)
    for log_time in (case.now, case.now + RUN_TIME):
        for event in good:
            decoded(event, log_time)
            kind, _ = admit(event, log_time, PLAN)  # HTTP ingest, received at log_time
            assert kind == ("licenses" if event["type"].startswith("licensing.") else "usage")
    recorded = [decoded(u, case.now) for u in usage(case)]
    months = {e.id: e.month for e in recorded if isinstance(e, UsageRecorded)}
    assert len(months) == len({e["id"] for e in usage(case)})
    assert (months["cp"], months["fn"], months["l-next"]) == (case.m0, case.m1, case.m1)
    assert {m for i, m in months.items() if i not in {"cp", "fn", "l-next"}} == {case.m}
    # both months can be closed by `metering close`: M has ended, M1 has or takes --force
    current = month_of(case.now, UTC)
    assert case.m < current and (case.m1 < current or case.close_m1_early)


def check_refused(case: MonthCase) -> None:
    *usage_lines, system_line = bad(case)[2:]  # the workers' share
    letters: list[object] = [decode(value, position(case.now), PLAN) for value in usage_lines]
    letters.append(check_system_event(system_line, position(case.now)))
    assert all(isinstance(d, DeadLetter) for d in letters)
    assert {(d.reason, d.field) for d in letters if isinstance(d, DeadLetter)} == WORKER_LETTERS


def markers(month: str, close_id: str, log_time: dt.datetime) -> list[CloseMarkerSeen]:
    return [
        CloseMarkerSeen(
            close_id=close_id,
            month=month,
            position=Position(
                topic=USAGE_TOPIC, partition=0, offset=0, log_time=log_time, origin=origin
            ),
        )
        for origin in (None, f"{LICENCE_TOPIC}/0")
    ]


def line_view(line: InvoiceLine) -> Line:
    def text(value: Decimal) -> str:
        return str(int(value)) if value == value.to_integral() else str(value)

    return (
        line.tenant, line.usage_month, line.service, line.kind, text(line.usage),
        line.users, text(line.included), line.packages, f"{line.unit_price:.2f}",
        f"{line.amount:.2f}",
    )  # fmt: skip


def invoices(case: MonthCase) -> tuple[list[Line], list[Line]]:
    """The month folded as one partition delivers it: licences (copied into the usage log),
    usage, the close of M, the late event, the close of M1."""
    now = case.now
    state = MemoryState()
    offsets = iter(range(10**6))
    found: list[list[Line]] = []

    def fold(items: list[Decoded]) -> None:
        placed: list[Decoded | DeadLetter] = []
        for item in items:  # offsets rise in delivery order
            at = item.position.model_copy(update={"offset": next(offsets)})
            placed.append(item.model_copy(update={"position": at}))
        result = fold_batch(placed, state, PLAN, BARRIER)
        state.commit(result)
        found.append(sorted(line_view(ln) for ln in result.lines))

    fold([decoded(e, now) for e in licences(case) + usage(case)])
    fold(list(markers(case.m, "c1", now)))
    fold([decoded(e, now) for e in late(case)])
    fold(list(markers(case.m1, "c2", now)))
    return found[1], found[3]


def check_month(now: dt.datetime) -> None:
    case = month_case(now)
    check_accepted(case)
    check_refused(case)
    first, second = invoices(case)
    assert first == first_invoice(case)
    assert second == second_invoice(case)


@pytest.mark.parametrize("now", RISKY)
def test_the_month_passes_on_a_risky_day(now: str) -> None:
    check_month(day(now))


@settings(max_examples=300, deadline=None)
@given(now=st.datetimes(min_value=dt.datetime(2021, 1, 1), max_value=dt.datetime(2040, 12, 31)))
def test_the_month_passes_on_any_day(now: dt.datetime) -> None:
    check_month(now.replace(tzinfo=UTC))


def test_every_day_of_four_years_including_a_leap_year() -> None:
    start = day("2026-01-01T00:00:00")
    for n in range(4 * 366):
        for hour in (0, 23):
            case = month_case(start + dt.timedelta(days=n, hours=hour, minutes=59))
            check_accepted(case)


def test_the_late_month_days_pick_last_month_and_this_month() -> None:
    early, late_ = month_case(day("2026-12-01T00:00:00")), month_case(day("2026-11-30T00:00:00"))
    assert (early.m0, early.m, early.m1, early.m2) == ("2026-09", "2026-10", "2026-11", "2026-12")
    assert not early.close_m1_early
    assert (late_.m0, late_.m, late_.m1, late_.m2) == ("2026-09", "2026-10", "2026-11", "2026-12")
    assert late_.close_m1_early
