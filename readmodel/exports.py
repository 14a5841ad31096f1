"""A month of the read model as tables a warehouse reads: what `metering export` writes.

Each table's rows for one month, in a fixed order (so that exporting a closed month again
gives the same files), with the month they belong to as `month` (the Hive partition) and the
plan version that rated it. Streamed as Arrow record batches: a month of raw events does not
fit in memory, and the read model's connection may not write files itself.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from readmodel.queries import plan_zone
from readmodel.usage_sql import (
    NO_CUTOFF,
    accepted_events,
    month_bounds,
    monthly_usage,
    version_in_force,
)

BATCH_ROWS = 50_000

_VERSION = version_in_force("$month")

# table -> (what one row is, {column: meaning}); the README of an export is written from it.
TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "invoice_lines": (
        "Every invoice line billing usage of the month: its overages (on the next month's "
        "invoice) and any adjustment a later close made for events that arrived late.",
        {
            "id": "The line's stable id (the same on every replay).",
            "invoice_month": "The invoice the line is on (YYYY-MM).",
            "usage_month": "The month whose usage it bills (YYYY-MM).",
            "tenant": "The tenant billed.",
            "service": "storage, mailing, customer_center, chat or form.",
            "kind": "overage, or adjustment (a change since the month was billed).",
            "usage": "The month's usage in billing units (GB for storage).",
            "unit": "The billing unit.",
            "users": "The users the month was rated for (its highest).",
            "included": "The amount the users' band includes, in billing units.",
            "packages": "Packages billed by this line (an adjustment's: the change).",
            "unit_price": "The price of one package.",
            "amount": "packages x unit_price, rounded to the cent (an exact decimal).",
            "currency": "ISO 4217 currency.",
            "plan_version": "The plan version that rated the line.",
            "events": "Usage events counted.",
            "partition": "The usage log partition holding the tenant.",
            "first_offset": "First counted event's offset in that partition.",
            "last_offset": "Last counted event's offset.",
            "close_id": "The close that emitted the line.",
        },
    ),
    "threshold_crossings": (
        "Every threshold crossing (warning at 80 %, exceeded, each package) of the month.",
        {
            "id": "The crossing's stable id.",
            "tenant": "The tenant.",
            "service": "The service.",
            "usage_month": "The month (YYYY-MM).",
            "level": "warning, exceeded or package.",
            "package": "For level package: which package (2 and up).",
            "usage": "Usage when it crossed, in base units (bytes for storage).",
            "included": "Included amount then, in base units.",
            "users": "Users then.",
            "crossed_by": "The event (source/id) or licence record that crossed it.",
            "crossed_at": "When (the event's time).",
            "plan_version": "The plan version in force for the month (the live plan's).",
        },
    ),
    "monthly_usage": (
        "Usage per tenant and service, recomputed from the accepted raw events and rated.",
        {
            "tenant": "The tenant.",
            "service": "The service.",
            "usage": "Usage in billing units.",
            "unit": "The billing unit.",
            "users": "The month's users (its highest).",
            "band": "The user band (1-based).",
            "included": "Included in billing units.",
            "percent": "usage / included, in %, to one decimal.",
            "packages": "Packages above the included amount.",
            "unit_price": "Price of one package.",
            "amount": "packages x unit_price, for every event counted so far (late ones "
            "too: the invoice lines hold what was billed).",
            "currency": "ISO 4217 currency.",
            "plan_version": "The plan version that rated it.",
            "events": "Usage events counted.",
        },
    ),
    "usage_events": (
        "Every accepted usage event of the month, once (duplicates, copies and dead letters "
        "left out), as the workers counted it.",
        {
            "partition": "The usage log partition (the tenant's).",
            "offset": "Its offset there.",
            "log_time": "When the broker appended it.",
            "tenant": "The CloudEvent subject.",
            "source": "The CloudEvent source.",
            "id": "The CloudEvent id.",
            "type": "The CloudEvent type.",
            "time": "The CloudEvent time (UTC).",
            "service": "The service it meters.",
            "amount": "What it adds (a peak service: the value measured), in base units.",
            "data": "The CloudEvent data, as JSON text.",
            "plan_version": "The plan version in force for the month (the live plan's).",
        },
    ),
}


# Each table's row order: a key, so that the same rows are always written the same way.
ORDER = {
    "invoice_lines": "id",
    "threshold_crossings": "id",
    "monthly_usage": "tenant, service",
    "usage_events": '"partition", "offset"',
}


def _sql(table: str, tz: str, usage_topic: str) -> str:
    """The table's rows of the month bound as `$month` (with `$starts` and `$ends`)."""
    if table == "invoice_lines":
        return "SELECT * FROM invoice_lines WHERE usage_month = $month"
    if table == "threshold_crossings":
        return (
            f"SELECT *, {_VERSION} AS plan_version FROM threshold_crossings "  # noqa: S608
            "WHERE usage_month = $month"
        )
    if table == "monthly_usage":
        usage = monthly_usage(NO_CUTOFF, tz, one_month=True)
        return (
            "SELECT tenant, service, usage, unit, users, band, included, percent, packages, "  # noqa: S608
            f"unit_price, amount, currency, plan_version, events FROM ({usage})"
        )
    if table == "usage_events":
        return f"""
            SELECT e."partition", e."offset", r.log_time, e.tenant, r.source, r.id, r.type,
                   r.time, e.service, e.amount, r.data::VARCHAR AS data,
                   {_VERSION} AS plan_version
            FROM ({accepted_events(tz)}) e
            JOIN raw_events r ON r.topic = '{usage_topic}' AND r."partition" = e."partition"
             AND r."offset" = e."offset"
        """  # noqa: S608 - our own SQL; the topic name is validated by Settings
    raise KeyError(table)


def reader(
    cur: duckdb.DuckDBPyConnection, table: str, month: str, usage_topic: str
) -> pa.RecordBatchReader:
    """The table's rows of `month` as Arrow record batches, with `month` as the last column."""
    tz = plan_zone(cur)
    # The order on the outermost query: one inside a subquery need not survive.
    order = ORDER[table]
    sql = f"SELECT *, $month AS month FROM ({_sql(table, tz, usage_topic)}) ORDER BY {order}"  # noqa: S608
    # A relation (not a result set, which Arrow would copy whole) takes only the parameters
    # its SQL names.
    params = {k: v for k, v in month_bounds(cur, tz, month).items() if f"${k}" in sql}
    reader: pa.RecordBatchReader = cur.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)
    return reader
