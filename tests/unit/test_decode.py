"""Decoding raw records: every kind of bad input becomes a dead letter naming field and reason."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.decode import decode, plain_usage, validated
from projections.events import Position, UsageRecorded, trusted
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
        # No month in the billing zone: these raised out of decode and stopped the worker.
        (event(time="9999-12-31T23:59:59-01:00"), "invalid_field", "time"),
        (event(time="0001-01-01T00:00:00+01:00"), "invalid_field", "time"),
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


# Values that sit on and around every condition of the plain path.
odd_text = st.one_of(
    st.just(""), st.just("x" * 256), st.just("x" * 257), st.just(" t1 "), st.integers(0, 9),
    st.none(), st.text(max_size=6),
)  # fmt: skip
times = st.one_of(
    st.sampled_from([
        "2026-10-10T12:00:00Z", "2026-10-10T12:00:00+02:00", "2026-10-31T23:30:00-01:00",
        "2026-10-10T12:00:00.5Z", "2026-10-10T12:00:00.123456Z", "2026-10-10T12:00:00.1234567Z",
        "2026-10-10 12:00:00Z", "2026-10-10T12:00:00", "2026-02-30T12:00:00Z",
        "2026-10-10T24:00:00Z", "2026-10-10T23:59:60Z", "2026-10-10t12:00:00z",
        "2026-07-01T00:00:00Z", "2026-11-01T12:04:59Z", "2026-11-01T12:05:01Z",
        "2025-01-01T00:00:00Z", "2026-10-10T12:00:00-00:00", "2026-10-10T12:00:00+14:00",
        "2026-10-10T12:00:00+24:00", "1999-01-01T00:00:00Z", "2026-10-10T12:00:00+00:60",
        "2026-10-10T12:00:00+05:99", "2026-10-10T12:00:00-23:59", "9999-12-15T00:00:00Z",
    ]),
    odd_text,
)  # fmt: skip
amounts = st.one_of(
    st.integers(-2, 3), st.integers(2**63 - 2, 2**63), st.booleans(), st.floats(0, 5),
    st.text(max_size=3), st.none(),
)  # fmt: skip
datas = st.one_of(
    st.fixed_dictionaries({}, optional={"quantity": amounts, "bytes": amounts, "x": st.just(1)}),
    st.sampled_from([None, [], "x", 3]),
)  # fmt: skip
types = st.sampled_from([
    "metering.mailing.sent", "metering.storage.measured", "metering.form.submitted",
    "metering.chat.started", "metering.customer_center.login", "licensing.tenant.registered",
    "metering.unknown", "", None, ["metering.mailing.sent"], {"a": 1}, 7,
])  # fmt: skip


MUTATIONS = {
    "specversion": st.sampled_from(["0.3", 1.0, ""]),
    "id": odd_text,
    "source": odd_text,
    "subject": odd_text,
    "type": types,
    "time": times,
    "data": datas,
    "traceparent": st.just("00-abc"),
}
_DELETE = object()


usage_types = types.filter(lambda t: isinstance(t, str) and t.startswith("metering."))
# Up to two attributes changed or removed.
changes = st.dictionaries(st.sampled_from(sorted(MUTATIONS)), st.just(_DELETE), max_size=2).flatmap(
    lambda picked: st.fixed_dictionaries(
        {k: st.one_of(st.just(_DELETE), MUTATIONS[k]) for k in picked}
    )
)


def mutated(type_: str, amount: int, changes: dict[str, object]) -> bytes:
    """A valid usage event with `changes` applied (`_DELETE` removes the attribute)."""
    field = "bytes" if type_ == "metering.storage.measured" else "quantity"
    obj: dict[str, object] = {
        "specversion": "1.0", "id": "e1", "source": "crm/mail", "type": type_,
        "subject": "tenant-1", "time": "2026-10-10T12:00:00Z", "data": {field: amount},
    }  # fmt: skip
    for key, change in changes.items():
        if change is _DELETE:
            obj.pop(key, None)
        elif change is not None:
            obj[key] = change
    return orjson.dumps(obj)


mutated_events = st.builds(mutated, usage_types, st.integers(0, 10**12), changes)
log_days = st.sampled_from([1, 20])  # the log time: 1 November or 20 October


@settings(max_examples=1500, deadline=None)
@given(value=mutated_events, log_day=log_days)
def test_the_plain_path_decides_as_the_models_do(value: bytes, log_day: int) -> None:
    """A valid usage event with up to two fields changed or removed: the plain path and the
    models must agree on every one (accepted alike, or rejected with the same reason)."""
    log_time = dt.datetime(2026, 11 if log_day == 1 else 10, log_day, 12, tzinfo=dt.UTC)
    position = Position(topic="usage-events", partition=2, offset=7, log_time=log_time)
    fast = decode(value, position, PLAN)
    slow = validated(value, orjson.loads(value), position, PLAN)
    assert fast == slow
    assert type(fast) is type(slow) and fast.model_dump_json() == slow.model_dump_json()


def test_the_plain_path_takes_the_common_shape() -> None:
    """Without this the test above would also pass if the plain path never accepted."""
    position = Position(topic="usage-events", partition=2, offset=7, log_time=LOG_TIME)
    assert plain_usage(orjson.loads(event()), position, PLAN) is not None
    assert plain_usage(orjson.loads(event(data={"quantity": 0})), position, PLAN) is None


def test_trusted_positions_equal_validated_ones() -> None:
    fields = {
        "topic": "usage-events", "partition": 3, "offset": 11, "log_time": LOG_TIME,
        "origin": "licenses/3", "origin_offset": 17,
    }  # fmt: skip
    made = trusted(Position, **fields)
    assert made == Position(**fields) and made.barrier_origin == "licenses/3"
    assert made.copy_key == "\x1elicenses/3/17"
    assert made.model_dump_json() == Position(**fields).model_dump_json()
