"""`metering export`'s files: what DuckDB and pyarrow read back is the read model's rows, and
exporting a closed month again gives the same bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from metering.finance_commands import readme, write_table
from projections.memory import MemoryState
from readmodel import exports
from streams.projector import Projector
from tests.unit.test_whatif import MONTH, PLAN, SETTINGS, TOPICS, close, fold, usage_records

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def projector(tmp_path: Path) -> Iterator[Projector]:
    from metering.generate import generate_month

    projector = Projector(SETTINGS, PLAN, tmp_path / "rm.duckdb")
    state = MemoryState()
    log = usage_records(list(generate_month(MONTH, tenants=6, seed=5)))
    fold(state, log)
    projector.write([*log, *close(state, MONTH, "c-1", 0)])
    yield projector
    projector.close()


def export(projector: Projector, out: Path, fmt: str) -> dict[str, int]:
    counts = {}
    with projector.reader() as cur:
        for table in exports.TABLES:
            batches = exports.reader(cur, table, MONTH, TOPICS.usage)
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, batches.schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
            sink.seek(0)
            counts[table] = write_table(sink, out / table, MONTH, fmt)
    return counts


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def read_model_rows(projector: Projector, sql: str) -> list[tuple[Any, ...]]:
    with projector.reader() as cur:
        return sorted(cur.execute(sql, {"month": MONTH} if "$month" in sql else {}).fetchall())


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_export_is_the_read_models_rows_and_the_same_bytes_again(
    projector: Projector, tmp_path: Path, fmt: str
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    counts = export(projector, first, fmt)
    assert counts["invoice_lines"] > 0 and counts["usage_events"] > 1000
    export(projector, second, fmt)
    export(projector, second, fmt)  # over an export of the same month: replaced, not added
    assert files(first) == files(second)
    assert sorted(files(first)) == sorted(
        f"{t}/month={MONTH}/data_0.{fmt}" for t, n in counts.items() if n
    )

    lines = read_model_rows(
        projector,
        "SELECT id, tenant, service, kind, packages, amount, plan_version FROM invoice_lines "
        "WHERE usage_month = $month",
    )
    read = "read_parquet" if fmt == "parquet" else "read_csv"
    pattern = str(first / "invoice_lines" / "*" / f"*.{fmt}")
    by_duckdb = duckdb.sql(
        f"SELECT id, tenant, service, kind, packages::HUGEINT, amount::DECIMAL(38, 2), "
        f"plan_version, month FROM {read}('{pattern}', hive_partitioning = true)"
    ).fetchall()
    assert sorted(row[:-1] for row in by_duckdb) == lines
    assert {str(row[-1]) for row in by_duckdb} == {MONTH}
    if fmt == "parquet":
        table = ds.dataset(first / "invoice_lines", format="parquet", partitioning="hive")
        by_arrow = table.to_table().to_pylist()
        assert sorted(
            (r["id"], r["tenant"], r["service"], r["kind"], r["packages"], r["amount"],
             r["plan_version"])
            for r in by_arrow
        ) == lines  # fmt: skip
        assert pa.types.is_decimal(table.schema.field("amount").type)  # money stays exact
    usage = read_model_rows(
        projector,
        "SELECT tenant, service, packages::HUGEINT, amount, plan_version FROM usage_monthly "
        "WHERE month = $month",
    )
    pattern = str(first / "monthly_usage" / "*" / f"*.{fmt}")
    exported = duckdb.sql(
        f"SELECT tenant, service, packages::HUGEINT, amount::DECIMAL(38, 2), plan_version "
        f"FROM {read}('{pattern}', hive_partitioning = true)"
    ).fetchall()
    assert sorted(exported) == usage and len(usage) == 30  # 6 tenants x 5 services
    # Accepted: each event once, as the month's usage counts them (the log holds repeats).
    events = read_model_rows(
        projector, "SELECT sum(events)::BIGINT FROM usage_monthly WHERE month = $month"
    )
    assert [(counts["usage_events"],)] == events
    assert read_model_rows(projector, "SELECT count(*) FROM usage_events") > events


def test_the_readme_names_every_column_exported(projector: Projector) -> None:
    text = readme(exports.TABLES)
    with projector.reader() as cur:
        for table in exports.TABLES:
            names = exports.reader(cur, table, MONTH, TOPICS.usage).schema.names
            for name in names:
                assert f"| `{name}` |" in text.split(f"## {table}")[1].split("## ")[0], (
                    table,
                    name,
                )


def test_closing_the_read_model_ends_an_export_nobody_reads(projector: Projector) -> None:
    """A client that stops reading must not keep the file open: a replace reopens it."""
    import threading

    from readmodel.store import Closing

    def within(seconds: float, work: Any) -> None:
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(seconds)
        assert not thread.is_alive(), f"{work} still runs after {seconds}s"

    reading = projector.reader()
    cur = reading.__enter__()
    with projector.stream(exports.reader(cur, "usage_events", MONTH, TOPICS.usage)) as stream:
        assert stream.next() is not None  # then the client stalls
        within(30, projector.close)
        with pytest.raises(Closing):
            stream.next()  # broken off, not ended as if complete
    reading.__exit__(None, None, None)
    within(30, lambda: Projector(SETTINGS, PLAN, projector.path).close())
