"""Kafka records -> rows -> Arrow tables for the read model (pure: no Kafka, no DuckDB)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
from pydantic import BaseModel, ValidationError

from projections.binding import is_binary, structured
from projections.rejection import Rejected
from schemas.records import DeadLetter, InvoiceLine, MonthClosed, ThresholdCrossed
from schemas.webhooks import WebhookAttempt, WebhookSubscription

FORWARDED_FROM = (
    "metering-forwarded-from"  # streams.routing writes it; readmodel may not import streams
)


class Record(NamedTuple):
    """A Kafka record as the projector writes it. A named tuple: one is made per record
    consumed, at a third of a frozen dataclass's cost."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="backslashreplace")


def _binary_event(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> Any:
    """The structured-mode event a binary-mode record (attributes in `ce_` headers) stands
    for, archived as that one JSON object; None for any other record, and for an unreadable
    one, which is archived as it is."""
    if not is_binary(headers):
        return None
    try:
        return structured(headers, value)
    except Rejected:
        return None


def _texts(values: Sequence[bytes | None]) -> pa.Array:
    """Bytes as a string column: Arrow checks the UTF-8 of the whole column at once; a column
    with a bad sequence is decoded record by record, the bad bytes kept as escapes."""
    try:
        return pa.array(values, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([_text(v) for v in values], pa.string())


def raw_batch(records: Sequence[Record]) -> pa.Table:
    """Archive records as columns; the envelope is parsed in DuckDB (`schema.ARCHIVE`), which
    is an order of magnitude faster than decoding JSON here, record by record."""
    topics, partitions, offsets, times, keys, values, headers = zip(*records, strict=True)
    if any(headers):
        forwarded = [next((v for k, v in h if k == FORWARDED_FROM), None) for h in headers]
        values = tuple(
            orjson.dumps(event) if h and (event := _binary_event(h, v)) is not None else v
            for h, v in zip(headers, values, strict=True)
        )
    else:
        forwarded = [None] * len(records)
    return pa.table(
        {
            "topic": pa.array(topics, pa.string()),
            "partition": pa.array(partitions, pa.int32()),
            "offset": pa.array(offsets, pa.int64()),
            "log_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "key": _texts(keys),
            "forwarded_from": _texts(forwarded),
            "value": _texts(values),
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
    "webhook_subscriptions": WebhookSubscription,
    "webhook_deliveries": WebhookAttempt,
}


def rows_for(table: str, record: Record) -> dict[str, Any] | None:
    return _model_row(OUTPUT_MODELS[table], record)


def to_arrow(schema: pa.Schema, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of the target table's own schema (read from DuckDB)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
