"""Queries through the read-model API: invoice, usage, crossings, finance SQL and audit.

Each sees everything written before the call: the API waits, boundedly, for the workers and
the projector to catch up first.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import click

from metering.cli_common import call_api, cli_settings, format_option, month_callback
from metering.render import render
from projections.months import previous_month

LINE_COLUMNS = (
    "invoice_month", "usage_month", "tenant", "service", "kind", "usage", "unit", "users",
    "included", "packages", "unit_price", "amount", "currency", "plan_version", "id",
    "events", "partition", "first_offset", "last_offset", "close_id",
)  # fmt: skip
# The terminal table shows what a reader checks; JSON and CSV carry every column.
LINE_TABLE_COLUMNS = (
    "usage_month", "tenant", "service", "kind", "usage", "unit", "users", "included",
    "packages", "amount", "currency", "events",
)  # fmt: skip
CROSSING_COLUMNS = (
    "usage_month", "tenant", "service", "level", "package", "usage", "included", "users",
    "crossed_at", "crossed_by", "id",
)  # fmt: skip
USAGE_COLUMNS = (
    "tenant", "month", "service", "usage", "unit", "users", "band", "included", "percent",
    "packages", "amount", "currency", "events", "crossings", "closed",
)  # fmt: skip
AUDIT_COLUMNS = (
    "tenant", "service", "recomputed_usage", "recomputed_users", "recomputed_packages",
    "streamed_packages", "recomputed_amount", "streamed_amount", "streamed_lines",
)  # fmt: skip


@click.command()
@click.argument("month", callback=month_callback)
@format_option
def invoice(month: str, fmt: str) -> None:
    """Invoice lines of invoice MONTH (usage of the month before, plus adjustments)."""
    body = call_api(cli_settings(), "GET", f"/v1/invoices/{month}")
    columns = LINE_TABLE_COLUMNS if fmt == "table" else LINE_COLUMNS
    render(body["lines"], fmt, f"Invoice {month} (usage of {previous_month(month)})", columns)
    if fmt == "table":
        click.echo(f"{len(body['lines'])} lines, total {Decimal(body['total']):.2f}")


@click.command()
@click.argument("tenant")
@click.argument("month", callback=month_callback)
@format_option
def usage(tenant: str, month: str, fmt: str) -> None:
    """Usage of TENANT in MONTH per service, against what its users include."""
    body = call_api(cli_settings(), "GET", f"/v1/tenants/{quote(tenant, safe='')}/usage",
                    params={"month": month})  # fmt: skip
    render(body["services"], fmt, f"Usage of {tenant} in {month}", USAGE_COLUMNS)


@click.command()
@click.argument("month", callback=month_callback)
@click.option("--tenant", help="Only this tenant.")
@format_option
def crossings(month: str, tenant: str | None, fmt: str) -> None:
    """Threshold crossings (warning, exceeded, package) of usage MONTH."""
    params = {"month": month} | ({"tenant": tenant} if tenant else {})
    body = call_api(cli_settings(), "GET", "/v1/threshold-crossings", params=params)
    render(body["crossings"], fmt, f"Threshold crossings of {month}", CROSSING_COLUMNS)


@click.command()
@click.argument("query")
@format_option
def sql(query: str, fmt: str) -> None:
    """Run one read-only SQL QUERY on the read model (tables and views: see README).

    QUERY may be `-` to read it from standard input, or `@FILE`. One SELECT (or a plain
    EXPLAIN of one); it is stopped after METERING_SQL_TIMEOUT seconds, and an answer holds at
    most METERING_SQL_MAX_ROWS rows (a warning on stderr says when rows were left out).
    """
    if query == "-":
        query = sys.stdin.read()
    elif query.startswith("@"):
        query = Path(query[1:]).read_text()
    body = call_api(cli_settings(), "POST", "/v1/sql", json={"sql": query})
    rows = [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]
    render(rows, fmt, "", body["columns"])
    if body.get("truncated"):
        click.echo(
            f"warning: only the first {len(rows)} rows; the answer was cut at the server's "
            "limit (METERING_SQL_MAX_ROWS, or about 64 MiB): aggregate or add a LIMIT",
            err=True,
        )


@click.command()
@click.argument("month", callback=month_callback)
@format_option
def audit(month: str, fmt: str) -> None:
    """Recompute closed usage MONTH from the raw event archive in SQL and diff it against the
    streamed invoice lines; exits 1 on any difference."""
    body = call_api(cli_settings(), "GET", f"/v1/audit/{month}")
    differences = body["differences"]
    if differences:
        render(differences, fmt, f"Audit of {month}: {len(differences)} differences", AUDIT_COLUMNS)
        sys.exit(1)
    click.echo(f"audit of {month}: the streamed invoice lines match the raw events")


COMMANDS = (invoice, usage, crossings, sql, audit)
