"""Turn one raw record into a decoded event or a dead letter, judged against the log alone.

"Future" and "too late" are measured from the record's log-append time, never the processing
clock, so a replay rejects exactly what the first run rejected.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from billing.plan import Plan
from projections.binding import Headers, header_bytes, header_echo, is_binary, structured
from projections.events import (
    CloseMarkerSeen,
    Decoded,
    LicenceSnapshotTaken,
    Position,
    TenantRegistered,
    UsageRecorded,
)
from projections.months import month_end, month_of
from projections.plain import MAX_EVENT_BYTES, MAX_FUTURE, RETENTION, micros, plain_decoder
from projections.rejection import Rejected as Rejected  # re-exported: callers catch it here
from schemas.envelope import MAX_ATTRIBUTE_LENGTH, CloudEvent
from schemas.licenses import LICENSES_CHANGED, TENANT_REGISTERED, LicensesChanged
from schemas.licenses import TenantRegistered as TenantRegisteredData
from schemas.records import CLOSE_REQUESTED, DeadLetter, MonthCloseRequested
from schemas.services import ServiceSpec, payload_model
from schemas.system_events import SYSTEM_EVENT_TYPES, SystemEventData

M = TypeVar("M", bound=BaseModel)

MAX_PAYLOAD_ECHO = 2048  # bytes of a rejected payload kept in its dead letter


# Every reason code a dead letter can carry (`unroutable` comes from `metering send`).
REASONS = (
    "empty", "too_large", "bad_json", "missing_field", "invalid_field", "unknown_type", "future",
    "too_late", "no_plan", "unroutable",
)  # fmt: skip


def _field_of(loc: tuple[int | str, ...], prefix: str = "") -> str:
    return prefix + ".".join(str(p) for p in loc)


def _validation(exc: ValidationError, prefix: str = "") -> Rejected:
    first = exc.errors(include_url=False)[0]
    field = _field_of(tuple(first["loc"]), prefix) or prefix.rstrip(".") or None
    reason = "missing_field" if first["type"] == "missing" else "invalid_field"
    detail = "; ".join(
        f"{_field_of(tuple(e['loc']), prefix) or 'event'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return Rejected(reason, field, detail)


def _data(model: type[M], event: CloudEvent) -> M:
    """The event's `data` as `model`; a bad field is rejected naming `data.<field>`."""
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise _validation(exc, "data.") from None


def _json(value: bytes | None) -> Any:
    if not value:
        raise Rejected("empty", None, "empty message")
    if len(value) > MAX_EVENT_BYTES:
        raise Rejected("too_large", None, f"{len(value)} bytes; at most {MAX_EVENT_BYTES}")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected("bad_json", None, f"not JSON: {exc}") from None


def parse_envelope(value: bytes | None, obj: Any = None) -> CloudEvent:
    """Parse and validate the envelope only; raises Rejected."""
    if obj is None:
        obj = _json(value)
    if not isinstance(obj, dict):
        raise Rejected("bad_json", None, "a CloudEvent must be a JSON object")
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as exc:
        raise _validation(exc) from None


def _check_time(event: CloudEvent, month: str, log_time: dt.datetime, plan: Plan) -> None:
    if event.time > log_time + MAX_FUTURE:
        raise Rejected(
            "future",
            "time",
            f"time {event.time.isoformat()} is more than 5 minutes after the record entered "
            f"the log ({log_time.isoformat()})",
        )
    if log_time >= month_end(month, plan.zone) + RETENTION:
        raise Rejected(
            "too_late",
            "time",
            f"usage month {month} is past its retention window (month end + 90 days)",
        )


def _usage(event: CloudEvent, spec: ServiceSpec, position: Position, plan: Plan) -> UsageRecorded:
    try:
        month = month_of(event.time, plan.zone)
    except OverflowError:
        # Year 1 or 9999 near midnight: no month in the billing zone (it stopped the worker).
        raise Rejected("invalid_field", "time", "time is out of range") from None
    if plan.version_for(month) is None:
        raise Rejected("no_plan", "time", f"no plan version is in force for {month}")
    _check_time(event, month, position.log_time, plan)
    amount = getattr(_data(payload_model(spec), event), spec.field)
    return UsageRecorded(
        tenant=event.subject,
        service=spec.name,
        month=month,
        amount=amount,
        source=event.source,
        id=event.id,
        time=event.time,
        position=position,
    )


def _licence(event: CloudEvent, position: Position) -> Decoded:
    if event.type == LICENSES_CHANGED:
        snapshot = _data(LicensesChanged, event)
        return LicenceSnapshotTaken(
            tenant=event.subject, time=event.time, users=snapshot.users, position=position
        )
    registered = _data(TenantRegisteredData, event)
    return TenantRegistered(
        tenant=event.subject,
        company=registered.company,
        serial_number=registered.serial_number,
        position=position,
    )


def _close(event: CloudEvent, position: Position) -> CloseMarkerSeen:
    command = _data(MonthCloseRequested, event)
    return CloseMarkerSeen(close_id=command.close_id, month=command.month, position=position)


LICENCE_TYPES = (LICENSES_CHANGED, TENANT_REGISTERED)


def _object(value: bytes | None, headers: Headers | None) -> Any:
    """The record as one JSON value: the value itself (structured mode), or the event its
    `ce_` headers and value stand for (binary mode); raises Rejected."""
    if not headers or not is_binary(headers):
        return _json(value)
    if (size := len(value or b"") + header_bytes(headers)) > MAX_EVENT_BYTES:
        raise Rejected("too_large", None, f"{size} bytes; at most {MAX_EVENT_BYTES}")
    return structured(headers, value)


def decode(
    value: bytes | None, position: Position, plan: Plan, headers: Headers | None = None
) -> Decoded | DeadLetter:
    """Decode a record of `usage-events` or `licenses` (by the event's type), in CloudEvents
    structured mode (the value is the event) or binary mode (`ce_` headers, data as value)."""
    try:
        obj = _object(value, headers)
    except Rejected as rejected:
        return dead_letter(value, position, rejected, headers)
    return plain_usage(obj, position, plan) or validated(value, obj, position, plan, headers)


def plain_usage(obj: Any, position: Position, plan: Plan) -> UsageRecorded | None:
    """The fast lane's decision (`projections.plain`) for `obj` read at `position`: None
    when the event is not in the common shape or breaks a rule."""
    where = (position.topic, position.partition, position.offset, micros(position.log_time))
    plain = plain_decoder(plan).usage(obj, where)
    return None if plain is None else plain.recorded(position)


def validated(
    value: bytes | None, obj: Any, position: Position, plan: Plan, headers: Headers | None = None
) -> Decoded | DeadLetter:
    """`decode` by the models alone: every record the plain path declines comes here."""
    try:
        event = parse_envelope(value, obj)
        if event.type == CLOSE_REQUESTED:
            return _close(event, position)
        spec = plan.catalog.by_type.get(event.type)
        if spec is not None:
            return _usage(event, spec, position, plan)
        if event.type in LICENCE_TYPES:
            return _licence(event, position)
        raise Rejected("unknown_type", "type", f"unknown event type {event.type!r}")
    except Rejected as rejected:
        return dead_letter(value, position, rejected, headers, obj)


def admit(obj: Any, received: dt.datetime, plan: Plan) -> tuple[str, CloudEvent]:
    """Check an event offered for ingest by the rules the workers will apply, judged against
    the time it is received; returns the kind of topic it goes to (`usage`, `licenses`,
    `system`). Raises Rejected naming the field, so a producer can fix and resend."""
    if not isinstance(obj, dict):
        raise Rejected("bad_json", None, "a CloudEvent must be a JSON object")
    if (size := len(orjson.dumps(obj))) > MAX_EVENT_BYTES:
        raise Rejected("too_large", None, f"{size} bytes; at most {MAX_EVENT_BYTES}")
    try:
        event = CloudEvent.model_validate(obj)
    except ValidationError as exc:
        raise _validation(exc) from None
    position = Position(topic="ingest", partition=0, offset=0, log_time=received)
    spec = plan.catalog.by_type.get(event.type)
    if spec is not None:
        _usage(event, spec, position, plan)
        return "usage", event
    if event.type in LICENCE_TYPES:
        _licence(event, position)
        return "licenses", event
    if event.type in SYSTEM_EVENT_TYPES:
        _data(SystemEventData, event)
        return "system", event
    raise Rejected("unknown_type", "type", f"unknown event type {event.type!r}")


def check_system_event(
    value: bytes | None, position: Position, headers: Headers | None = None
) -> DeadLetter | None:
    """A record of `system-events` that the list could not show becomes a dead letter."""
    obj = None
    try:
        obj = _object(value, headers)
        event = parse_envelope(value, obj)
        if event.type not in SYSTEM_EVENT_TYPES:
            raise Rejected("unknown_type", "type", f"unknown event type {event.type!r}")
        _data(SystemEventData, event)
    except Rejected as rejected:
        return dead_letter(value, position, rejected, headers, obj)
    return None


def system_event(
    value: bytes | None, headers: Headers | None = None
) -> tuple[CloudEvent, SystemEventData] | None:
    """A record of `system-events` as its envelope and data; None where the list could not
    show it either (`check_system_event` dead-letters those)."""
    try:
        event = parse_envelope(value, _object(value, headers))
        if event.type not in SYSTEM_EVENT_TYPES:
            return None
        return event, _data(SystemEventData, event)
    except Rejected:
        return None


def payload_text(value: bytes | None) -> str:
    raw = (value or b"")[:MAX_PAYLOAD_ECHO]
    return raw.decode("utf-8", errors="backslashreplace")


def tenant_of(obj: Any, headers: Headers | None) -> str | None:
    """The tenant a rejected record names, if it names one readably (for finding it later)."""
    subject = obj.get("subject") if isinstance(obj, dict) else None
    if subject is None:
        subject = header_echo(headers).get("ce_subject")
    if isinstance(subject, str) and 0 < len(subject) <= MAX_ATTRIBUTE_LENGTH:
        return subject
    return None


def dead_letter(
    value: bytes | None,
    position: Position,
    rejected: Rejected,
    headers: Headers | None = None,
    obj: Any = None,
) -> DeadLetter:
    return DeadLetter(
        tenant=tenant_of(obj, headers),
        headers=header_echo(headers) or None,
        id=f"{position.topic}/{position.partition}/{position.offset}",
        topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        reason=rejected.reason,
        field=rejected.field,
        detail=rejected.detail[:1000],
        payload=payload_text(value),
    )
