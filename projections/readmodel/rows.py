"""Kafka records -> rows -> Arrow tables for the read model (pure: no Kafka, no DuckDB)."""

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


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


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


def to_arrow(schema: pa.Schema, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of the target table's own schema (read from DuckDB)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
