"""The worker's fast lane (`projections.plain`) decides exactly as the validated path does:
the same events accepted with the same fields, every other one left to the models, the same
month for every instant, and the same fold over what it accepts."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.batch import fold_batch
from projections.decode import decode, validated
from projections.events import Position, UsageRecorded
from projections.memory import MemoryState
from projections.months import month_of
from projections.plain import MAX_EVENT_BYTES, PlainDecoder, PlainUsage, plain_decoder
from projections.tenant import Triggers
from tests.unit.test_decode import log_days, mutated_events

PLAN = load_plan()
TOPIC = "usage-events"
BARRIER = frozenset({"usage-events/0", "licenses/0"})


def _log_ms(day: int) -> int:
    at = dt.datetime(2026, 11 if day == 1 else 10, day, 12, 0, 0, 123000, tzinfo=dt.UTC)
    return int(at.timestamp() * 1000)


def _position(offset: int, log_ms: int) -> Position:
    # As the worker builds it from a record (`streams.routing.position`).
    log_time = dt.datetime.fromtimestamp(log_ms / 1000, dt.UTC)
    return Position(topic=TOPIC, partition=3, offset=offset, log_time=log_time)


def _agrees(value: bytes, log_ms: int) -> PlainUsage | None:
    """The lane's verdict, held to the models': `validated` alone (not `decode`, which
    runs the same judge) on what orjson reads, a dead letter on what it cannot."""
    fast = plain_decoder(PLAN).decode(value, TOPIC, 3, 9, log_ms)
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        assert fast is None
        return None
    full = validated(value, obj, _position(9, log_ms), PLAN)
    if fast is not None:
        recorded = fast.recorded()
        assert isinstance(full, UsageRecorded)
        assert recorded == full and recorded.model_dump_json() == full.model_dump_json()
        assert (fast.partition, fast.offset, fast.copy_key) == (3, 9, None)
        assert fast.dedupe_key == recorded.dedupe_key
        assert fast.log_seconds == full.position.log_time.timestamp()
    return fast


@settings(max_examples=1500, deadline=None)
@given(value=mutated_events, log_day=log_days)
def test_the_fast_lane_accepts_only_what_the_models_accept_alike(
    value: bytes, log_day: int
) -> None:
    _agrees(value, _log_ms(log_day))


def test_the_fast_lane_takes_the_common_shape_and_declines_raw_oddities() -> None:
    """Without this the property above would also pass if the lane never accepted."""
    good = {
        "specversion": "1.0", "id": "e1", "source": "crm", "type": "metering.chat.started",
        "subject": "t1", "time": "2026-10-31T23:30:00.5+01:00", "data": {"quantity": 2},
    }  # fmt: skip
    accepted = _agrees(orjson.dumps(good), _log_ms(1))
    assert accepted is not None and (accepted.month, accepted.amount) == ("2026-10", 2)
    padded = orjson.dumps({**good, "pad": "x" * MAX_EVENT_BYTES})
    for value in (b"", b"{", b"[]", b"null", padded, "\u00e9".encode("latin-1")):
        assert _agrees(value, _log_ms(1)) is None
    # Where msgspec and orjson could part ways, the lane agrees with the models or declines.
    text = orjson.dumps(good)[:-1]
    for extra, taken in [
        (b',"id":"e2"', True),  # a repeated attribute: the last one counts, as in orjson
        (b',"x":"\\ud800"', False),  # a lone surrogate: not JSON text
        (b',"x":NaN', False),
        (b',"x":18446744073709551617', False),
        (b',"x":"\\u0000"', False),  # an extension attribute: the full way
        (b',"x":"\xff"', False),  # not UTF-8: not JSON text
        (b',"x":1e400', False),  # orjson refuses it; msgspec would skip it unread
        (b',"datacontenttype":"application/json"', True),
        (b',"traceparent":7', False),  # typed as text here; the models take it
        *[(b',"data":{"quantity":' + b"[" * d + b"]" * d + b"}", False) for d in (899, 1023)],
    ]:
        assert (_agrees(text + extra + b"}", _log_ms(1)) is not None) is taken, extra[:20]
    repeated = _agrees(text + b',"id":"e2"}', _log_ms(1))
    assert repeated is not None and repeated.id == "e2"
    # Past the retention window, five minutes in the future, no plan, out of range: declined.
    for time in ("2026-10-10T12:00:00Z", "2026-10-20T12:05:01Z", "1999-01-01T00:00:00Z",
                 "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):  # fmt: skip
        late = dt.datetime(2027, 1, 30, tzinfo=dt.UTC) if time.startswith("2026-10-10") else None
        log_ms = int(late.timestamp() * 1000) if late else _log_ms(20)
        assert _agrees(orjson.dumps({**good, "time": time}), log_ms) is None


@settings(max_examples=400, deadline=None)
@given(
    seconds=st.integers(-(10**9), 4 * 10**9),
    micros=st.sampled_from([0, 1, 999_999]),
    zone=st.sampled_from(["Europe/Amsterdam", "Asia/Kathmandu", "America/St_Johns", "UTC"]),
    shift=st.sampled_from([0, -1, 1]),
)
def test_every_instant_gets_the_month_its_zone_gives_it(
    seconds: int, micros: int, zone: str, shift: int
) -> None:
    """Months are looked up per 15-minute step; a step that straddles a boundary (a zone's
    historic offsets are not whole quarters) is computed. Instants sit on and next to
    boundaries as often as inside months."""
    decoder = PlainDecoder(PLAN)
    decoder.zone = ZoneInfo(zone)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC)
    local = base.astimezone(decoder.zone)
    boundary = dt.datetime(local.year, local.month, 1, tzinfo=decoder.zone)
    for at in (
        base + dt.timedelta(microseconds=micros),
        boundary + dt.timedelta(microseconds=shift),
    ):
        for _ in range(2):  # computed, then looked up
            assert decoder.month(at, at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) == month_of(
                at, decoder.zone
            )


SOME_TYPES = ["metering.storage.measured", "metering.mailing.sent", "metering.form.submitted"]
usage_events = st.lists(
    st.tuples(
        st.sampled_from(SOME_TYPES),
        st.integers(1, 3000),  # amount
        st.integers(0, 3),  # tenant
        st.integers(0, 25),  # id: collisions make duplicates
        st.sampled_from(["2026-09-30T22:30:00Z", "2026-10-10T12:00:00Z", "2026-10-31T23:30:00Z"]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(items=usage_events, cut=st.integers(0, 60))
def test_a_fold_over_the_fast_lane_equals_a_fold_over_the_models(
    items: list[tuple[str, int, int, int, str]], cut: int
) -> None:
    """The same records, decoded by the lane and by `decode`, folded in two batches: the same
    states, dedupe entries, crossings and outcomes."""
    log_ms = _log_ms(1)
    fast: list[PlainUsage] = []
    full: list[UsageRecorded] = []
    for offset, (type_, amount, tenant, n, time) in enumerate(items):
        field = "bytes" if type_.startswith("metering.storage") else "quantity"
        value = orjson.dumps({
            "specversion": "1.0", "id": f"e{n}", "source": "crm", "type": type_,
            "subject": f"t{tenant}", "time": time, "data": {field: amount},
        })  # fmt: skip
        lane = plain_decoder(PLAN).decode(value, TOPIC, 0, offset, log_ms)
        assert lane is not None
        fast.append(lane)
        decoded = decode(value, Position(topic=TOPIC, partition=0, offset=offset,
                                         log_time=lane.position.log_time), PLAN)  # fmt: skip
        assert isinstance(decoded, UsageRecorded)
        full.append(decoded)
    outcomes = []
    for events in (fast, full):
        state, triggers, results = MemoryState(), Triggers(PLAN), []
        for batch in (events[:cut], events[cut:]):
            result = fold_batch(batch, state, PLAN, BARRIER, triggers)
            state.commit(result)
            results.append((result.seen, result.crossings, dict(result.outcomes)))
        outcomes.append((state.tenants, results))
    assert outcomes[0] == outcomes[1]
