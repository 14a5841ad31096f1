"""Finance SQL: what a finance key may run on the read model, judged by DuckDB's own parser.

The connection it runs on is already unable to touch files, the network or the settings
(`projector.harden`), and each query runs in a read-only transaction that is always rolled
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

from projections.readmodel.queries import QueryError, decimal_text

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


def run(cur: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> Answer:
    """Judge `sql` and run it read-only: at most `max_rows` rows; QueryError when refused or
    when DuckDB refuses it. An interrupt (`cur.interrupt()`) is raised as it is."""
    cur.execute("BEGIN TRANSACTION READ ONLY")
    try:
        result = cur.execute(canonical(cur, sql))
        names = [d[0] for d in result.description or ()]
        fetched = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    finally:
        # Also after an interrupt or an error: the transaction never outlives the query.
        # A rollback that fails leaves nothing behind either: the caller closes the cursor.
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
    rows = [[_cell(n, v) for n, v in zip(names, r, strict=True)] for r in fetched[:max_rows]]
    return Answer(names, rows, truncated=len(fetched) > max_rows)


def _cell(name: str, value: Any) -> Any:
    """A value as JSON can carry it: exact decimals as text, blobs and intervals as DuckDB
    prints them."""
    if isinstance(value, Decimal):
        return decimal_text(name, value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, dt.timedelta):
        return str(value)
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
        return _select(cur, sql)
    if kind == "EXPLAIN":
        return "EXPLAIN " + _select(cur, _explained(sql))
    raise QueryError(f"only SELECT is allowed here, not {kind}")


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
