"""Swapping a rebuilt read model in: only the file `metering replay` writes beside the live
one, only after it has been opened and checked, and only on request through the data dir.

No HTTP route names a file (one once did, and swapped in any file of the data dir). The
request is a file in the data dir, so only whoever may already write the read model itself
(the operator's account, a shared volume) can ask; the projector answers in a file beside it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from aiokafka import TopicPartition

from billing.plan import Plan
from readmodel import schema

COLUMNS = (
    "SELECT table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_name IN (SELECT table_name FROM information_schema.tables "
    "WHERE table_type = 'BASE TABLE') ORDER BY ALL"
)


@dataclass(frozen=True)
class Paths:
    """The files of one read model: the live file and those a replay swaps through."""

    live: Path

    @property
    def candidate(self) -> Path:
        return self.live.with_suffix(".replay.duckdb")

    @property
    def request(self) -> Path:
        return self.live.with_name(self.live.name + ".replace-request")

    @property
    def answer(self) -> Path:
        return self.live.with_name(self.live.name + ".replace-answer")


class ReplaceRefused(RuntimeError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the rebuilt read model was not swapped in: " + "; ".join(problems))


def expected_columns(plan: Plan, usage_topic: str, system_topic: str) -> list[tuple[str, ...]]:
    """The tables and columns a read model of this version has."""
    con = duckdb.connect(":memory:")
    try:
        schema.create(con, plan, usage_topic, system_topic)
        return [tuple(row) for row in con.execute(COLUMNS).fetchall()]
    finally:
        con.close()


def check(
    candidate: Path,
    expected: list[tuple[str, ...]],
    ends: dict[TopicPartition, int],
) -> list[str]:
    """What is wrong with `candidate` as the read model of topics whose end offsets are
    `ends`: not a DuckDB file, other tables or columns, offsets of unknown topics or beyond
    the topics' ends (a file of another cluster, prefix or an older topic generation)."""
    if not candidate.is_file():
        return [f"{candidate} does not exist (run `metering replay` first)"]
    try:
        con = duckdb.connect(str(candidate), read_only=True)
    except duckdb.Error as exc:
        return [f"{candidate} is not a readable DuckDB file: {exc}"]
    try:
        found = [tuple(row) for row in con.execute(COLUMNS).fetchall()]
        problems = _schema_problems(found, expected)
        if problems:
            return problems
        offsets = con.execute('SELECT topic, "partition", next_offset FROM offsets').fetchall()
        for table in sorted({row[0] for row in expected}):
            con.execute(f'SELECT count(*) FROM "{table}"').fetchall()  # noqa: S608  # nosec B608  # names from our own schema
    except duckdb.Error as exc:
        return [f"{candidate} cannot be read: {exc}"]
    finally:
        con.close()
    return _offset_problems(offsets, ends)


def _schema_problems(found: list[tuple[str, ...]], expected: list[tuple[str, ...]]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    problems = [f"column {'.'.join(c[:2])} ({c[2]}) is missing" for c in missing[:10]]
    problems += [f"column {'.'.join(c[:2])} ({c[2]}) is not ours" for c in extra[:10]]
    return problems


def _offset_problems(offsets: list[tuple[Any, ...]], ends: dict[TopicPartition, int]) -> list[str]:
    problems = []
    for topic, partition, next_offset in offsets:
        tp = TopicPartition(topic, partition)
        if tp not in ends:
            problems.append(f"offsets name {topic}/{partition}, which this projector does not read")
        elif next_offset > ends[tp]:
            problems.append(
                f"offsets reach {topic}/{partition} at {next_offset}, beyond its end {ends[tp]}"
            )
    return problems[:10]


def ask(paths: Paths) -> str:
    """Ask the running projector to swap the candidate in; returns the request's id."""
    request = uuid.uuid4().hex
    paths.answer.unlink(missing_ok=True)
    tmp = paths.request.with_suffix(".tmp")
    tmp.write_text(request)
    os.replace(tmp, paths.request)
    return request


def taken(paths: Paths) -> str | None:
    """The id of a pending request, which is removed: each is answered once."""
    try:
        request = paths.request.read_text().strip()
    except OSError:
        return None
    paths.request.unlink(missing_ok=True)
    return request or None


def answer(paths: Paths, request: str, problems: list[str]) -> None:
    tmp = paths.answer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"request": request, "replaced": not problems, "problems": problems}))
    os.replace(tmp, paths.answer)


def answered(paths: Paths, request: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(paths.answer.read_text())
    except (OSError, ValueError):
        return None
    return found if found.get("request") == request else None


def swap(candidate: Path, live: Path) -> None:
    """Replace the live file. A replayed file was closed cleanly, so it has no WAL; the live
    file's WAL must go with it, or DuckDB would replay it onto the new file."""
    os.replace(candidate, live)
    live.with_name(live.name + ".wal").unlink(missing_ok=True)
