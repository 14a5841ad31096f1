"""Kafka records -> Arrow tables, one per read-model table (pure: no Kafka, no DuckDB)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from pydantic import BaseModel, ValidationError

from schemas.records import DeadLetter, InvoiceLine, MonthClosed, ThresholdCrossed

FORWARDED_FROM = "metering-forwarded-from"
TZ = "UTC"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


SCHEMAS: dict[str, pa.Schema] = {
    "raw_events": pa.schema(
        [
            ("topic", pa.string()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("log_time", pa.timestamp("us", tz=TZ)),
            ("key", pa.string()),
            ("forwarded_from", pa.string()),
            ("type", pa.string()),
            ("source", pa.string()),
            ("id", pa.string()),
            ("subject", pa.string()),
            ("time", pa.timestamp("us", tz=TZ)),
            ("data", pa.string()),
            ("payload", pa.string()),
        ]
    ),
    "invoice_lines": pa.schema(
        [
            ("id", pa.string()),
            ("invoice_month", pa.string()),
            ("usage_month", pa.string()),
            ("tenant", pa.string()),
            ("service", pa.string()),
            ("kind", pa.string()),
            ("usage", pa.decimal128(38, 9)),
            ("unit", pa.string()),
            ("users", pa.int64()),
            ("included", pa.decimal128(38, 9)),
            ("packages", pa.int64()),
            ("unit_price", pa.decimal128(18, 4)),
            ("amount", pa.decimal128(18, 2)),
            ("currency", pa.string()),
            ("plan_version", pa.string()),
            ("events", pa.int64()),
            ("partition", pa.int32()),
            ("first_offset", pa.int64()),
            ("last_offset", pa.int64()),
            ("close_id", pa.string()),
        ]
    ),
    "threshold_crossings": pa.schema(
        [
            ("id", pa.string()),
            ("tenant", pa.string()),
            ("service", pa.string()),
            ("usage_month", pa.string()),
            ("level", pa.string()),
            ("package", pa.int32()),
            ("usage", pa.decimal128(38, 0)),
            ("included", pa.decimal128(38, 0)),
            ("users", pa.int64()),
            ("crossed_by", pa.string()),
            ("crossed_at", pa.timestamp("us", tz=TZ)),
        ]
    ),
    "dead_letters": pa.schema(
        [
            ("id", pa.string()),
            ("topic", pa.string()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("reason", pa.string()),
            ("field", pa.string()),
            ("detail", pa.string()),
            ("payload", pa.string()),
        ]
    ),
    "month_closes": pa.schema(
        [
            ("id", pa.string()),
            ("close_id", pa.string()),
            ("month", pa.string()),
            ("partition", pa.int32()),
            ("tenants", pa.int64()),
            ("lines", pa.int64()),
            ("amount", pa.decimal128(18, 2)),
        ]
    ),
}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="backslashreplace")


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None  # naive times were rejected


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def raw_row(record: Record) -> dict[str, Any]:
    """The archive keeps every record; envelope columns are filled where they parse."""
    forwarded = next((_text(v) for k, v in record.headers if k == FORWARDED_FROM), None)
    row: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "log_time": dt.datetime.fromtimestamp(record.timestamp_ms / 1000, dt.UTC),
        "key": _text(record.key),
        "forwarded_from": forwarded,
        "type": None,
        "source": None,
        "id": None,
        "subject": None,
        "time": None,
        "data": None,
        "payload": None,
    }
    try:
        event = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        row["payload"] = _text(record.value)
        return row
    data = event.get("data")
    row.update(
        type=_str(event.get("type")),
        source=_str(event.get("source")),
        id=_str(event.get("id")),
        subject=_str(event.get("subject")),
        time=_time(event.get("time")),
        data=orjson.dumps(data).decode() if isinstance(data, dict) else None,
    )
    return row


def _model_row(model: type[BaseModel], record: Record) -> dict[str, Any] | None:
    try:
        item = model.model_validate_json(record.value or b"")
    except ValidationError:
        return None  # not a record of ours: the worker is the only writer of these topics
    row = item.model_dump()
    provenance = row.pop("provenance", None)
    if provenance:
        row.update(provenance)
    for key, value in row.items():
        if hasattr(value, "value") and not isinstance(value, int):
            row[key] = value.value  # enums to their wire text
    return row


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "invoice_lines": InvoiceLine,
    "threshold_crossings": ThresholdCrossed,
    "dead_letters": DeadLetter,
    "month_closes": MonthClosed,
}


def rows_for(table: str, record: Record) -> dict[str, Any] | None:
    if table == "raw_events":
        return raw_row(record)
    return _model_row(OUTPUT_MODELS[table], record)


def to_arrow(table: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    schema = SCHEMAS[table]
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
