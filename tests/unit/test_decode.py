"""Decoding raw records: every kind of bad input becomes a dead letter naming field and reason."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from billing.plan import load_plan
from projections.decode import decode
from projections.events import Position, UsageRecorded
from schemas.records import DeadLetter

PLAN = load_plan()
LOG_TIME = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


def event(**overrides: object) -> bytes:
    base: dict[str, object] = {
        "specversion": "1.0",
        "id": "e1",
        "source": "crm",
        "type": "metering.mailing.sent",
        "subject": "t1",
        "time": "2026-10-10T12:00:00Z",
        "data": {"quantity": 3},
    }
    base.update(overrides)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def run(value: bytes | None, log_time: dt.datetime = LOG_TIME) -> UsageRecorded | DeadLetter:
    result = decode(
        value, Position(topic="usage-events", partition=2, offset=7, log_time=log_time), PLAN
    )
    assert isinstance(result, UsageRecorded | DeadLetter)
    return result


def test_good_event() -> None:
    result = run(event())
    assert isinstance(result, UsageRecorded)
    assert (result.tenant, result.month, result.amount) == ("t1", "2026-10", 3)


def test_quantity_defaults_to_one() -> None:
    result = run(event(data={}))
    assert isinstance(result, UsageRecorded) and result.amount == 1


def test_utc_offset_moves_event_into_next_month() -> None:
    result = run(event(time="2026-10-31T23:30:00-02:00"))
    assert isinstance(result, UsageRecorded) and result.month == "2026-11"


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        (b"", "empty", None),
        (b"{not json", "bad_json", None),
        (b"[1, 2]", "bad_json", None),
        (b"\xff\xfe\x00garbage", "bad_json", None),
        (b'{"quantity": NaN}', "bad_json", None),
        (event(type="metering.teleport.used"), "unknown_type", "type"),
        (event(subject=None), "missing_field", "subject"),
        (event(specversion="0.3"), "invalid_field", "specversion"),
        (event(time="2026-10-10T12:00:00"), "invalid_field", "time"),
        (event(time="2026-11-01T12:06:00Z"), "future", "time"),
        (event(data={"quantity": 0}), "invalid_field", "data.quantity"),
        (event(data={"quantity": "3"}), "invalid_field", "data.quantity"),
        (event(data={"quantity": True}), "invalid_field", "data.quantity"),
        (event(data={"quantity": 1.5}), "invalid_field", "data.quantity"),
        (event(data={"quantity": 2**63}), "invalid_field", "data.quantity"),
        (event(data={"quantity": 1, "extra": 1}), "invalid_field", "data.extra"),
        (
            event(type="metering.storage.measured", data={"bytes": -1}),
            "invalid_field",
            "data.bytes",
        ),
        (event(type="metering.storage.measured", data={}), "missing_field", "data.bytes"),
        (event(time="2019-12-31T12:00:00Z"), "no_plan", "time"),
        (event(time="9999-12-31T23:59:59Z"), "future", "time"),
        (event(padding="x" * 70_000), "too_large", None),
        (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_json", None),
        # orjson reads integers beyond 64 bits as floats: still never a quantity
        (
            event().replace(b'"quantity":3', b'"quantity":18446744073709551617'),
            "invalid_field",
            "data.quantity",
        ),
        (event().replace(b'"quantity":3', b'"quantity":3.0'), "invalid_field", "data.quantity"),
        (event().replace(b'"quantity":3', b'"quantity":1e400'), "bad_json", None),
    ],
)
def test_rejections(value: bytes, reason: str, field: str | None) -> None:
    result = run(value)
    assert isinstance(result, DeadLetter)
    assert (result.reason, result.field) == (reason, field)
    assert result.id == "usage-events/2/7"
    assert result.detail


def test_too_late_is_judged_by_log_time_not_the_clock() -> None:
    # October's retention ends 90 days after 1 November.
    ok = run(event(), dt.datetime(2027, 1, 29, 23, 59, tzinfo=dt.UTC))
    late = run(event(), dt.datetime(2027, 1, 30, tzinfo=dt.UTC))
    assert isinstance(ok, UsageRecorded)
    assert isinstance(late, DeadLetter) and late.reason == "too_late"


def test_non_utf8_payload_is_kept_readably() -> None:
    result = run(b"\xff\xfe")
    assert isinstance(result, DeadLetter) and result.payload == "\\xff\\xfe"


def test_system_events_that_cannot_be_listed_are_dead_lettered() -> None:
    from projections.decode import check_system_event

    position = Position(topic="system-events", partition=0, offset=4, log_time=LOG_TIME)
    good = {"key": "Import", "scope": "database", "status": "running"}
    assert check_system_event(event(type="system.event.registered", data=good), position) is None
    missing = check_system_event(
        event(type="system.event.updated", data={"key": "Import"}), position
    )
    assert missing is not None and (missing.reason, missing.field) == (
        "missing_field",
        "data.scope",
    )
    unknown = check_system_event(event(type="system.event.exploded", data=good), position)
    assert unknown is not None and unknown.reason == "unknown_type"
    assert unknown.id == "system-events/0/4"
