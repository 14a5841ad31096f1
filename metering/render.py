"""Print rows as a table, JSON or CSV: the same rows and columns in every format."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # money stays exact: never a float in JSON
    raise TypeError


def render(rows: Sequence[dict[str, Any]], fmt: str, title: str, columns: Sequence[str]) -> None:
    if fmt == "json":
        sys.stdout.write(
            orjson.dumps(
                [{c: row.get(c) for c in columns} for row in rows],
                default=_json_default,
                option=orjson.OPT_INDENT_2,
            ).decode()
            + "\n"
        )
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(c)) for c in columns])
        sys.stdout.write(buffer.getvalue())
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        numeric = bool(rows) and isinstance(rows[0].get(column), int | Decimal)
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_text(row.get(c)) for c in columns))
    Console(width=250).print(table)
