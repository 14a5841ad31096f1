"""Kafka records -> rows -> Arrow tables for the read model (pure: no Kafka, no DuckDB)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from pydantic import BaseModel, ValidationError

from projections.binding import is_binary, structured
from projections.rejection import Rejected
from schemas.records import DeadLetter, InvoiceLine, MonthClosed, ThresholdCrossed

FORWARDED_FROM = (
    "metering-forwarded-from"  # streams.routing writes it; readmodel may not import streams
)


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


def _event_text(record: Record) -> str | None:
    """The record as a structured-mode event: a binary-mode record (attributes in `ce_`
    headers) is archived as the one JSON object it stands for; an unreadable one as it is."""
    if record.headers and is_binary(record.headers):
        try:
            return orjson.dumps(structured(record.headers, record.value)).decode()
        except Rejected:
            pass
    return _text(record.value)


def raw_batch(records: Sequence[Record]) -> pa.Table:
    """Archive records as columns; the envelope is parsed in DuckDB (`schema.ARCHIVE`), which
    is an order of magnitude faster than decoding JSON here, record by record."""
    return pa.table(
        {
            "topic": pa.array([r.topic for r in records], pa.string()),
            "partition": pa.array([r.partition for r in records], pa.int32()),
            "offset": pa.array([r.offset for r in records], pa.int64()),
            "log_time": pa.array([r.timestamp_ms for r in records], pa.timestamp("ms", tz="UTC")),
            "key": pa.array([_text(r.key) for r in records], pa.string()),
            "forwarded_from": pa.array(
                [
                    next((_text(v) for k, v in r.headers if k == FORWARDED_FROM), None)
                    for r in records
                ],
                pa.string(),
            ),
            "value": pa.array([_event_text(r) for r in records], pa.string()),
        }
    )


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
        if isinstance(value, dict):
            row[key] = orjson.dumps(value).decode()  # a JSON column
        elif hasattr(value, "value") and not isinstance(value, int):
            row[key] = value.value  # enums to their wire text
    return row


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "invoice_lines": InvoiceLine,
    "threshold_crossings": ThresholdCrossed,
    "dead_letters": DeadLetter,
    "month_closes": MonthClosed,
}


def rows_for(table: str, record: Record) -> dict[str, Any] | None:
    return _model_row(OUTPUT_MODELS[table], record)


def to_arrow(schema: pa.Schema, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of the target table's own schema (read from DuckDB)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
