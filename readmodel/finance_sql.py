"""Finance SQL: what a finance key may run on the read model, judged by DuckDB's own parser.

The connection it runs on is already unable to touch files, the network or the settings
(`readmodel.store.harden`), and each query runs in a read-only transaction that is always rolled
back. This module adds what those switches leave open: only one statement, a SELECT or a
plain EXPLAIN of one, and none of the few functions that act rather than read. What runs is
DuckDB's own text of the SELECT it parsed (`json_deserialize_sql`), never the text sent, so
nothing the parser did not see as part of that SELECT can run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import orjson

from readmodel.queries import QueryError, decimal_text

# Table functions that only read the read model or compute: a table function can do anything
# (checkpoint, run SQL from a string, register external resources, scan Python memory), so
# only these are let through, whatever DuckDB adds in a later version.
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_tables", "duckdb_types",
    "duckdb_views", "pragma_table_info", "pragma_show", "pg_timezone_names",
    "icu_calendar_names",
})  # fmt: skip
# Scalar functions with an effect beyond their answer: sequences advance even in a query,
# and the log is the process's own.
SCALAR_FUNCTIONS_REFUSED = frozenset({"nextval", "setval", "currval", "write_log"})
# Words after EXPLAIN that make it run the statement or change its output.
EXPLAIN_OPTIONS = frozenset({"ANALYZE", "ANALYSE", "("})


@dataclass(frozen=True)
class Answer:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool  # more rows than the cap: `rows` holds the first ones


# Rows become Python objects outside DuckDB's memory limit: an answer stops growing past
# this many bytes of values (it is then marked truncated), fetched in chunks sized to stay
# under it, so that `SELECT repeat('x', 10^8) FROM range(10^5)` cannot exhaust the process.
MAX_ANSWER_BYTES = 64 << 20


def run(
    cur: duckdb.DuckDBPyConnection,
    sql: str,
    max_rows: int,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Answer:
    """Judge `sql` and run it read-only: at most `max_rows` rows and about `max_bytes` of
    values; QueryError when refused or when DuckDB refuses it. An interrupt
    (`cur.interrupt()`) is raised as it is."""
    cur.execute("BEGIN TRANSACTION READ ONLY")
    try:
        result = cur.execute(canonical(cur, sql))
        names = [d[0] for d in result.description or ()]
        rows, truncated = _fetch(result, names, max_rows, max_bytes)
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    finally:
        # Also after an interrupt or an error: the transaction never outlives the query.
        # A rollback that fails leaves nothing behind either: the caller closes the cursor.
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
    return Answer(names, rows, truncated=truncated)


def _fetch(
    result: duckdb.DuckDBPyConnection, names: list[str], max_rows: int, max_bytes: int
) -> tuple[list[list[Any]], bool]:
    """Rows as JSON carries them, up to `max_rows` rows and about `max_bytes`; whether more
    were left. The first chunk is one row, later ones as many as the bytes left allow."""
    rows: list[list[Any]] = []
    size = 0
    chunk = 1
    while len(rows) < max_rows and size < max_bytes:
        fetched = result.fetchmany(min(chunk, max_rows - len(rows)))
        if not fetched:
            return rows, False
        for row in fetched:
            cells = [_cell(n, v) for n, v in zip(names, row, strict=True)]
            rows.append(cells)
            size += len(orjson.dumps(cells, default=str))
        per_row = max(1, size // len(rows))
        chunk = max(1, min(1000, (max_bytes - size) // per_row))
    return rows, bool(result.fetchmany(1))


def _cell(name: str, value: Any) -> Any:
    """A value as JSON can carry it: a column's exact decimal as its column shows money (the
    cents kept), blobs, intervals and times as text, inside lists, structs and maps too."""
    if isinstance(value, Decimal):
        return decimal_text(name, value)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, dt.timedelta | dt.time):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)  # as DuckDB's type prints it: a nested value has no column name
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def canonical(cur: duckdb.DuckDBPyConnection, sql: str) -> str:
    """DuckDB's text of the one SELECT (or plain EXPLAIN of a SELECT) in `sql`; QueryError
    for anything else."""
    try:
        statements = cur.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    if len(statements) != 1:
        raise QueryError("send exactly one statement")
    kind = statements[0].type.name
    if kind == "SELECT":
        text = _select(cur, sql)
    elif kind == "EXPLAIN":
        text = "EXPLAIN " + _select(cur, _explained(sql))
    else:
        raise QueryError(f"only SELECT is allowed here, not {kind}")
    # Defence in depth: what runs must itself parse as that one statement, whatever a later
    # DuckDB prints for a tree.
    again = cur.extract_statements(text)
    if len(again) != 1 or again[0].type.name != kind:
        raise QueryError("the statement does not survive DuckDB's own round trip")
    return text


def _select(cur: duckdb.DuckDBPyConnection, sql: str) -> str:
    found = cur.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    serialized = str(found[0]) if found else '{"error": true}'
    try:
        tree: dict[str, Any] = orjson.loads(serialized)
    except orjson.JSONDecodeError:
        raise QueryError("the statement is nested too deeply") from None
    if tree.get("error"):
        message = str(tree.get("error_message", "not a statement"))
        if message.startswith("Only SELECT statements"):
            message = "only SELECT is allowed here"
        raise QueryError(message)
    if len(tree["statements"]) != 1:
        raise QueryError("send exactly one statement")
    for kind, name in _functions(tree):
        if kind == "table" and name not in TABLE_FUNCTIONS:
            raise QueryError(f"the table function {name}() is not available here")
        if kind == "scalar" and name in SCALAR_FUNCTIONS_REFUSED:
            raise QueryError(f"the function {name}() is not available here")
    text = cur.execute("SELECT json_deserialize_sql(?::JSON)", [serialized]).fetchone()
    if not text:
        raise QueryError("DuckDB could not print the statement back")
    return str(text[0])


def _functions(tree: Any) -> Iterator[tuple[str, str]]:
    """(table|scalar, lower-case name) of every function call in a serialized statement."""
    stack: list[tuple[Any, bool]] = [(tree, False)]  # (node, is it a table function's call)
    while stack:
        node, table_call = stack.pop()
        if isinstance(node, dict):
            if "function_name" in node:
                yield ("table" if table_call else "scalar"), str(node["function_name"]).lower()
            table_ref = node.get("type") == "TABLE_FUNCTION"
            stack += [(value, table_ref and key == "function") for key, value in node.items()]
        elif isinstance(node, list):
            stack += [(item, False) for item in node]


def _explained(sql: str) -> str:
    """The statement a plain `EXPLAIN <statement>` explains, cut where DuckDB's tokenizer
    says it starts; EXPLAIN ANALYZE (which runs it) and EXPLAIN options are refused."""
    tokens = duckdb.tokenize(sql)
    ends = [start for start, _ in tokens[1:]] + [len(sql)]
    words = [
        (start, sql[start:end].strip().upper())
        for (start, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]
    if len(words) < 2 or words[0][1] != "EXPLAIN":
        raise QueryError("only SELECT is allowed here")
    start, word = words[1]
    if word in EXPLAIN_OPTIONS:
        raise QueryError(
            "only a plain EXPLAIN is allowed here (EXPLAIN ANALYZE runs the statement)"
        )
    return sql[start:]
