"""Finance's questions before and after a close, through the read-model API: a closed month
re-rated against another plan, the preview of the next close, and a month exported as
Parquet or CSV files. None of them writes an invoice line or a topic record."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import orjson

from metering.cli_common import call_api, cli_plan, cli_settings, format_option, month_callback
from metering.render import render

RERATE_COLUMNS = (
    "tenant", "service", "usage", "unit", "users", "band", "included", "packages", "amount",
    "plan_version", "rerated_band", "rerated_included", "rerated_packages", "rerated_amount",
    "rerated_plan_version", "difference", "currency",
)  # fmt: skip
RERATE_TABLE_COLUMNS = (
    "tenant", "service", "usage", "unit", "users", "included", "packages", "amount",
    "rerated_included", "rerated_packages", "rerated_amount", "difference",
)  # fmt: skip
PREVIEW_COLUMNS = (
    "invoice_month", "usage_month", "tenant", "service", "kind", "pending", "usage", "unit",
    "users", "included", "packages", "unit_price", "amount", "currency", "plan_version", "id",
    "events", "partition", "first_offset", "last_offset",
)  # fmt: skip
PREVIEW_TABLE_COLUMNS = (
    "usage_month", "tenant", "service", "kind", "pending", "usage", "unit", "users",
    "included", "packages", "amount", "plan_version",
)  # fmt: skip
EXPORT_FORMATS = ("parquet", "csv")


def _json(body: Any) -> None:
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


@click.command()
@click.argument("month", callback=month_callback)
@click.option(
    "--plan", "plan_file", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The plan file to rate with (TOML, as METERING_PLAN_FILE).",
)  # fmt: skip
@format_option
def rerate(month: str, plan_file: Path, fmt: str) -> None:
    """Rate closed usage MONTH against another plan, beside its invoice lines.

    Per tenant and service: the usage and users counted, what the invoice lines billed
    (adjustments included) and what the plan at --plan would bill, with the difference and
    totals. The plan is validated like the live one; nothing is written. JSON holds the rows
    and the totals, CSV the rows.
    """
    settings = cli_settings()
    cli_plan(settings.model_copy(update={"plan_file": plan_file}))  # its problems, named here
    body = call_api(
        settings, "POST", "/v1/rerate", json={"month": month, "plan": plan_file.read_text()}
    )
    if fmt == "json":
        _json(body)
        return
    title = f"Usage of {month} re-rated with plan version {body['plan_version']}"
    render(body["rows"], fmt, title, RERATE_TABLE_COLUMNS if fmt == "table" else RERATE_COLUMNS)
    if fmt == "table":
        totals = body["totals"]
        click.echo(
            f"{len(body['rows'])} rows; billed {totals['amount']}, re-rated "
            f"{totals['rerated_amount']}, difference {totals['difference']}"
        )


@click.command()
@click.argument("tenant", required=False)
@click.option("--month", callback=month_callback,
              help="The usage month to close (default: the next close's, as auto-close picks "
                   "it: last month until it is closed, then this month).")  # fmt: skip
@format_option
def preview(tenant: str | None, month: str | None, fmt: str) -> None:
    """The invoice lines the next close would emit if MONTH ended now, for every tenant or
    TENANT alone, with the adjustments late events have caused for closed months (marked
    pending). Nothing is written."""
    params = {k: v for k, v in {"tenant": tenant, "month": month}.items() if v}
    body = call_api(cli_settings(), "GET", "/v1/invoices/preview", params=params)
    if fmt == "json":
        _json(body)
        return
    columns = PREVIEW_TABLE_COLUMNS if fmt == "table" else PREVIEW_COLUMNS
    title = f"Preview of invoice {body['invoice_month']} (usage of {body['usage_month']})"
    render(body["lines"], fmt, title, columns)
    if fmt == "table":
        note = " (already closed: nothing more to bill)" if body["closed"] else ""
        click.echo(
            f"{len(body['lines'])} lines, total {Decimal(body['total']):.2f}, of which pending "
            f"adjustments {Decimal(body['pending_total']):.2f}{note}"
        )


@click.command()
@click.argument("month", callback=month_callback)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="parquet",
              show_default=True)  # fmt: skip
@click.option(
    "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into; each table goes to TABLE/month=MONTH/ (Hive style).",
)  # fmt: skip
def export(month: str, fmt: str, output: Path) -> None:
    """Write usage MONTH's invoice lines, threshold crossings, monthly usage and accepted raw
    events as files a warehouse reads, with a README.md of their columns.

    Files are written by DuckDB, one per table, in a fixed row order: exporting a closed month
    again gives the same files. A month exported before is replaced; other months stay.
    """
    import duckdb
    import pyarrow as pa
    from rich.progress import Progress

    from metering.client import ApiError, stream
    from readmodel.exports import TABLES

    settings = cli_settings()
    output.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        for table in TABLES:
            task = progress.add_task(f"{table} of {month}", total=None)
            try:
                with stream(settings, f"/v1/exports/{quote(month)}/{table}") as body:
                    counts[table] = write_table(
                        body, output / table, month, fmt, lambda n, t=task: progress.advance(t, n)
                    )
            except ApiError as exc:
                raise click.ClickException(str(exc)) from None
            except (duckdb.Error, pa.ArrowException, OSError) as exc:
                # A stream cut off (the read model restarting, the network) or a full disk:
                # this table's earlier export, if any, is still in place.
                raise click.ClickException(f"exporting {table} failed: {exc}") from None
    (output / "README.md").write_text(readme(TABLES))
    for table, rows in counts.items():
        click.echo(f"{table}: {rows} rows -> {output / table / f'month={month}'}")


def write_table(body: Any, directory: Path, month: str, fmt: str, advance: Any = None) -> int:
    """Read an Arrow IPC stream from `body` and have DuckDB write it to
    `directory/month=MONTH/`, replaced only once the whole stream is written; the number of
    rows."""
    import duckdb
    import pyarrow as pa

    source = pa.ipc.open_stream(body)
    written = 0

    def counted() -> Any:
        nonlocal written
        for batch in source:
            written += batch.num_rows
            if advance is not None:
                advance(batch.num_rows)
            yield batch

    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=directory))
    con = duckdb.connect()
    try:
        # One thread and UTC: the same rows give the same bytes on every export.
        con.execute("SET threads = 1")
        con.execute("SET TimeZone = 'UTC'")
        con.register("rows", pa.RecordBatchReader.from_batches(source.schema, counted()))
        options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
        target = str(staging).replace("'", "''")
        # A path cannot be a bound parameter of COPY; it is quoted, and it is the caller's own.
        con.execute(
            f"COPY (SELECT * FROM rows) TO '{target}' "  # noqa: S608
            f"({options}, PARTITION_BY (month), OVERWRITE_OR_IGNORE true)"
        )
        partition = directory / f"month={month}"
        written_to = staging / f"month={month}"
        if partition.exists():
            shutil.rmtree(partition)
        if written_to.exists():  # no file at all for a month without rows
            os.replace(written_to, partition)
    finally:
        con.close()
        shutil.rmtree(staging, ignore_errors=True)
    return written


def readme(tables: dict[str, tuple[str, dict[str, str]]]) -> str:
    out = [
        "# Metering export",
        "",
        "Written by `metering export` as Parquet or CSV (the extension says which), one "
        "directory per table, one "
        "`month=YYYY-MM` directory per usage month (Hive partitioning: the partition is the "
        "`month` column). Money is an exact decimal; every table names the plan version "
        "that rated it.",
    ]
    for table, (what, columns) in tables.items():
        out += ["", f"## {table}", "", what, "", "| column | meaning |", "|---|---|"]
        out += [f"| `{name}` | {meaning} |" for name, meaning in columns.items()]
        out.append("| `month` | The usage month (the partition). |")
    return "\n".join(out) + "\n"


COMMANDS = (rerate, preview, export)
