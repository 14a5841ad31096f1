"""The common shape of a usage event, decoded without pydantic: the worker's fast lane.

Nearly every usage record is a structured-mode CloudEvent with the six attributes and one data
field. `PlainDecoder` recognises exactly that shape from the JSON object (or the raw value)
and judges the time rules with integers and remembered month bounds; anything unusual gives
None, and `projections.decode.validated` decides (naming the reason if it rejects). What it
accepts, the models accept too, with the same result: `tests/unit/test_plain.py` compares the
two on valid and mangled events.

`PlainUsage` is the decision for one record, a slotted object with the attributes the folds
read from `UsageRecorded`; its `Position` and its `UsageRecorded` are built only when asked
for (a crossing, a dead letter, a test).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

import msgspec

from billing.plan import Plan
from projections.events import Position, UsageRecorded, dedupe_key, trusted
from projections.months import month_end, month_of
from schemas.envelope import MAX_ATTRIBUTE_LENGTH

MAX_FUTURE = dt.timedelta(minutes=5)
RETENTION = dt.timedelta(days=90)
# A usage event is a few hundred bytes; far larger is an error or an attack, and would cost
# every consumer of the log (and the archive) its size again.
MAX_EVENT_BYTES = 64 * 1024

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_FUTURE_US = MAX_FUTURE // _MICROSECOND
# Every time zone's offset is a multiple of 15 minutes today: a month boundary falls on one of
# these steps, so a step lies in one month and its month is looked up, not computed. A step
# that straddles a boundary (historic offsets) is computed each time.
_STEP = 900
_STEPS_KEPT = 100_000  # about 3 years of steps; then the memo starts over

# An offset's hours and minutes as the models take them (`fromisoformat` alone takes +00:60).
_PLAIN_TIME = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
_NAME_LENGTH = range(1, MAX_ATTRIBUTE_LENGTH + 1)


def micros(time: dt.datetime) -> int:
    """An aware time as whole microseconds since the epoch (exact, unlike `timestamp()`)."""
    return (time - EPOCH) // _MICROSECOND


class PlainUsage:
    """A usage event accepted by the fast lane: what `UsageRecorded` holds, flat."""

    __slots__ = (
        "_position", "amount", "dedupe_key", "id", "log_us", "month", "offset", "partition",
        "service", "source", "tenant", "time", "topic",
    )  # fmt: skip

    copy_key = None  # never a copy: copies carry headers and take the full path

    def __init__(
        self, tenant: str, service: str, month: str, amount: int, source: str, id_: str,
        time: dt.datetime, where: tuple[str, int, int, int],
    ) -> None:  # fmt: skip
        self.tenant, self.service, self.month, self.amount = tenant, service, month, amount
        self.source, self.id, self.time = source, id_, time
        self.topic, self.partition, self.offset, self.log_us = where
        self.dedupe_key = dedupe_key(tenant, source, id_)
        self._position: Position | None = None

    @property
    def log_seconds(self) -> float:
        return self.log_us / 1e6

    @property
    def position(self) -> Position:
        if self._position is None:
            log_time = EPOCH + dt.timedelta(microseconds=self.log_us)
            self._position = trusted(
                Position, topic=self.topic, partition=self.partition, offset=self.offset,
                log_time=log_time, origin=None, origin_offset=None,
            )  # fmt: skip
        return self._position

    def recorded(self, position: Position | None = None) -> UsageRecorded:
        """As the models decode it; `position` where it differs (a copy names its original)."""
        return trusted(
            UsageRecorded, tenant=self.tenant, service=self.service, month=self.month,
            amount=self.amount, source=self.source, id=self.id, time=self.time,
            position=position or self.position,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"PlainUsage({self.recorded()!r})"


class _Shape(msgspec.Struct, forbid_unknown_fields=True):
    """The attributes the common shape has, typed. The models allow others (extensions),
    but msgspec would skip them unread (bad UTF-8 or 1e400 in one would pass): a record with
    any other attribute than these goes the full way."""

    specversion: Literal["1.0"]
    type: str
    id: str
    source: str
    subject: str
    time: str
    data: dict[str, Any]
    # Attributes SDKs set on nearly every event: typed, so msgspec reads them whole.
    datacontenttype: str | None = None
    dataschema: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


class PlainDecoder:
    """Decodes the common shape against one plan, remembering what every record would
    otherwise work out again: each event type's row, each month's bounds and plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.zone = plan.zone
        # event type -> (service, data field, least amount, most amount)
        self.types = {
            spec.event_type: (spec.name, spec.field, *spec.bounds) for spec in plan.catalog.services
        }
        self._shape = msgspec.json.Decoder(_Shape)
        self._steps: dict[int, str | None] = {}
        # month -> the first log time (µs) at which it is past its retention window, or None
        # when no plan version is in force for it
        self._months: dict[str, int | None] = {}

    def month(self, at: dt.datetime, since_epoch: dt.timedelta) -> str:
        step = since_epoch.days * (86400 // _STEP) + since_epoch.seconds // _STEP
        month = self._steps.get(step)
        if month is None:
            if step in self._steps:  # a step that straddles a month boundary
                return month_of(at, self.zone)
            if len(self._steps) >= _STEPS_KEPT:
                self._steps.clear()
            start = EPOCH + dt.timedelta(seconds=step * _STEP)
            first = month_of(start, self.zone)
            last = month_of(start + dt.timedelta(seconds=_STEP) - _MICROSECOND, self.zone)
            self._steps[step] = first if first == last else None
            return month_of(at, self.zone)
        return month

    def retention_end(self, month: str) -> int | None:
        if month in self._months:
            return self._months[month]
        end = None
        if self.plan.version_for(month) is not None:
            end = micros(month_end(month, self.zone) + RETENTION)
        self._months[month] = end
        return end

    def decode(
        self, value: bytes | None, topic: str, partition: int, offset: int, log_ms: int
    ) -> PlainUsage | None:
        """A record's value (structured mode, no headers), or None for the full path.

        Parsed by msgspec straight into `_Shape` (typed in C): half the cost of a dict and
        its lookups. Where msgspec and orjson differ, msgspec refuses (it nests less deep, it
        takes no unknown attribute), and a refusal only sends the record the full way."""
        if not value or len(value) > MAX_EVENT_BYTES:
            return None
        try:
            event = self._shape.decode(value)
        except (msgspec.DecodeError, RecursionError):  # msgspec: too deep is a RecursionError
            return None
        where = (topic, partition, offset, log_ms * 1000)
        return self.judge(
            event.type, event.id, event.source, event.subject, event.time, event.data, where
        )

    def usage(self, obj: Any, where: tuple[str, int, int, int]) -> PlainUsage | None:
        """`obj` (a parsed event) read at `where` (topic, partition, offset, log time in
        µs), if it has the common shape and passes the time rules; else None."""
        if type(obj) is not dict or obj.get("specversion") != "1.0":
            return None
        type_, id_, source, subject, time, data = (
            obj.get("type"), obj.get("id"), obj.get("source"), obj.get("subject"),
            obj.get("time"), obj.get("data"),
        )  # fmt: skip
        if (
            type(type_) is not str or type(id_) is not str or type(source) is not str
            or type(subject) is not str or type(time) is not str or type(data) is not dict
        ):  # fmt: skip
            return None
        return self.judge(type_, id_, source, subject, time, data, where)

    def judge(
        self, type_: str, id_: str, source: str, subject: str, time: str,
        data: dict[str, Any], where: tuple[str, int, int, int],
    ) -> PlainUsage | None:  # fmt: skip
        row = self.types.get(type_)
        if (
            row is None
            or len(id_) not in _NAME_LENGTH
            or len(source) not in _NAME_LENGTH
            or len(subject) not in _NAME_LENGTH
            or not _PLAIN_TIME.fullmatch(time)
            or len(data) != 1
        ):
            return None
        service, field, low, high = row
        amount = data.get(field)
        if type(amount) is not int or not low <= amount <= high:
            return None
        log_us = where[3]
        try:
            at = dt.datetime.fromisoformat(time)
            since_epoch = at - EPOCH
            if since_epoch // _MICROSECOND > log_us + _FUTURE_US:
                return None  # future; checked first, as the models do: year 9999 has no end
            month = self.month(at, since_epoch)
            retention_end = self.retention_end(month)
        except (ValueError, OverflowError):
            return None  # the models name what is wrong with it
        if retention_end is None or log_us >= retention_end:
            return None
        return PlainUsage(subject, service, month, amount, source, id_, at, where)


_DECODERS: dict[int, tuple[Plan, PlainDecoder]] = {}


def plain_decoder(plan: Plan) -> PlainDecoder:
    """The decoder of `plan`, made once (a process holds one plan, tests a few)."""
    held = _DECODERS.get(id(plan))
    if held is None or held[0] is not plan:
        if len(_DECODERS) >= 16:
            _DECODERS.clear()
        held = _DECODERS[id(plan)] = (plan, PlainDecoder(plan))
    return held[1]
