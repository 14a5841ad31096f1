"""Where the worker folds each record: its tenant's partition, whichever partition it came on."""

from __future__ import annotations

import datetime as dt

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from projections.events import CloseMarkerSeen, Position, trusted
from schemas.records import DeadLetter
from streams import routing
from streams.routing import Route
from tests.factories import licence, usage

LOG_MS = 1_793_534_400_000  # 2026-11-01T12:00:00Z


@given(tenant=st.text(min_size=1, max_size=64), partitions=st.integers(1, 64))
def test_home_is_the_default_partitioners_choice(tenant: str, partitions: int) -> None:
    """`metering send` and the HTTP ingest key by tenant with this partitioner: their records
    are home already and cost no copy."""
    every = list(range(partitions))
    assert routing.home(tenant, partitions) == DefaultPartitioner()(tenant.encode(), every, every)


def test_home_spreads_tenants_over_partitions() -> None:
    homes = {routing.home(f"tenant-{n:05d}", 8) for n in range(100)}
    assert homes == set(range(8))


def at(partition: int, origin: str | None = None) -> Position:
    return Position(
        topic="usage-events", partition=partition, offset=3, log_time=dt.datetime.now(dt.UTC),
        origin=origin, origin_offset=None if origin is None else 9,
    )  # fmt: skip


def test_each_kind_of_record_takes_its_route() -> None:
    tenant = "tenant-00001"
    home = routing.home(tenant, 8)
    away = (home + 1) % 8
    event = usage("chat", 1, tenant=tenant)
    marker = CloseMarkerSeen(close_id="c", month="2026-10", position=at(away))
    letter = DeadLetter(
        id="x", topic="usage-events", partition=away, offset=1, reason="bad_json", field=None,
        detail="", payload="",
    )  # fmt: skip
    cases = [
        (event.model_copy(update={"position": at(home)}), True, Route.FOLD),
        (event.model_copy(update={"position": at(away)}), True, Route.MOVE),
        (event.model_copy(update={"position": at(away, "usage-events/1")}), True, Route.FOLD),
        (licence(10, dt.datetime(2026, 10, 1, tzinfo=dt.UTC), tenant=tenant), False, Route.MOVE),
        (marker, True, Route.FOLD_AND_SPREAD),
        (marker, False, Route.SPREAD),
        (marker.model_copy(update={"position": at(away, "licenses/2")}), True, Route.FOLD),
        (letter, True, Route.FOLD),
    ]
    for item, in_usage_log, expected in cases:
        assert routing.route(item, in_usage_log, 8) is expected, item


def test_a_copy_names_its_original_and_is_judged_by_its_log_time() -> None:
    headers = routing.copy_headers(
        [("ce_specversion", b"1.0")], "licenses", 5, 1234, LOG_MS - 60_000
    )
    fields = routing.position("usage-events", 2, 77, LOG_MS, headers)
    copied = trusted(Position, **fields)
    assert copied == Position(**fields)
    assert (copied.origin, copied.origin_offset) == ("licenses/5", 1234)
    assert copied.log_time == dt.datetime(2026, 11, 1, 11, 59, tzinfo=dt.UTC)
    assert copied.barrier_origin == "licenses/5" and copied.copy_key == "\x1elicenses/5/1234"
    assert ("ce_specversion", b"1.0") in headers  # binary-mode attributes travel along
    # copying a copy keeps one origin: the first
    again = routing.copy_headers(headers, "usage-events", 2, 77, LOG_MS)
    assert [v for k, v in again if k == routing.FORWARDED_FROM] == [b"usage-events/2/77"]


def test_a_record_as_written_is_its_own_origin() -> None:
    fields = routing.position("usage-events", 4, 8, LOG_MS, [("other", b"x")])
    direct = trusted(Position, **fields)
    assert direct.origin is None and direct.barrier_origin == "usage-events/4"
    assert direct.copy_key is None
