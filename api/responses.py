"""Response helpers shared by the routers: money leaves as strings, never as floats."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.responses import Response

from projections.months import parse_month


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def json_response(body: Any, status: int = 200) -> Response:
    try:
        content = orjson.dumps(body, default=_default)
    except orjson.JSONEncodeError:
        # orjson writes integers of at most 64 bits; usage and packages (HUGEINT) may be more.
        content = json.dumps(body, default=_default, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json")


def csv_response(rows: list[dict[str, Any]]) -> Response:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv(v) for k, v in row.items()})
    return Response(buffer.getvalue(), media_type="text/csv")


def _csv(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def month_param(value: str) -> str:
    """A `YYYY-MM` path or query value, or 400."""
    try:
        return parse_month(value)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
