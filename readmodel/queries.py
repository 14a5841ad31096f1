"""Finance queries over the read model; each takes a DuckDB cursor and returns plain rows.

The SQL finance sends itself is judged and run by `finance_sql.py`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb
import orjson

from readmodel.usage_sql import NO_CUTOFF, month_bounds, monthly_usage
from schemas.records import CLOSE_REQUESTED

CENT = Decimal("0.01")


class QueryError(ValueError):
    pass


MONEY = {
    "amount", "unit_price", "recomputed_amount", "streamed_amount", "rerated_amount", "difference",
}  # fmt: skip


def decimal_text(name: str, value: Decimal) -> str:
    """Exact text for a decimal column: money keeps its cents, quantities lose the padding
    of their column type (130.000000000 GB -> 130)."""
    if name in MONEY and value == value.quantize(CENT):
        return str(value.quantize(CENT))
    return format(value.normalize(), "f")


def _rows(
    cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any]
) -> list[dict[str, Any]]:
    result = cur.execute(sql, params)
    names = [d[0] for d in result.description or ()]
    return [
        {
            name: decimal_text(name, value) if isinstance(value, Decimal) else value
            for name, value in zip(names, row, strict=True)
        }
        for row in result.fetchall()
    ]


def plan_zone(cur: duckdb.DuckDBPyConnection) -> str:
    """The billing time zone of the loaded plan."""
    tz = cur.execute("SELECT billing_timezone FROM plan_versions LIMIT 1").fetchone()
    return str(tz[0]) if tz else "UTC"


def _recomputed(cur: duckdb.DuckDBPyConnection, upto: str, one_tenant: bool = False) -> str:
    """The monthly-usage SQL in the billing time zone of the loaded plan."""
    return monthly_usage(upto, plan_zone(cur), one_tenant)


def invoice_lines(cur: duckdb.DuckDBPyConnection, month: str) -> list[dict[str, Any]]:
    return _rows(
        cur,
        "SELECT * FROM invoice_lines WHERE invoice_month = ? "
        "ORDER BY tenant, usage_month, service, kind",
        [month],
    )


def crossings(
    cur: duckdb.DuckDBPyConnection, month: str, tenant: str | None = None
) -> list[dict[str, Any]]:
    return _rows(
        cur,
        "SELECT * FROM threshold_crossings WHERE usage_month = ? AND (? IS NULL OR tenant = ?) "
        "ORDER BY tenant, service, "
        "CASE level WHEN 'warning' THEN 0 WHEN 'exceeded' THEN 1 ELSE 2 END, package",
        [month, tenant, tenant],
    )


def usage(cur: duckdb.DuckDBPyConnection, tenant: str, month: str) -> list[dict[str, Any]]:
    """`usage_monthly` for one tenant and month, computed for that tenant alone."""
    recomputed = _recomputed(cur, NO_CUTOFF, one_tenant=True)
    return _rows(
        cur,
        f"""
        SELECT u.*, (SELECT string_agg(c.level || COALESCE(' ' || c.package, ''), ', '
                             ORDER BY CASE c.level WHEN 'warning' THEN 0
                                      WHEN 'exceeded' THEN 1 ELSE 2 END, c.package)
                     FROM threshold_crossings c
                     WHERE c.tenant = u.tenant AND c.usage_month = u.month
                       AND c.service = u.service) AS crossings,
               u.month IN (SELECT month FROM month_closes) AS closed
        FROM ({recomputed}) u WHERE u.month = $month
        ORDER BY (SELECT s.display_order FROM services s WHERE s.service = u.service)
        """,  # noqa: S608 - our own SQL; values are bound
        {"tenant": tenant, "month": month},
    )


def usage_history(
    cur: duckdb.DuckDBPyConnection, tenant: str, first: str, last: str
) -> list[dict[str, Any]]:
    """Per month and service from `first` to `last` ("YYYY-MM"): what the tenant's
    metered-services dashboard plots."""
    recomputed = _recomputed(cur, NO_CUTOFF, one_tenant=True)
    return _rows(
        cur,
        f"""
        SELECT month, service, usage, unit, users, band, included, percent, packages, amount,
               currency
        FROM ({recomputed}) WHERE month BETWEEN $first AND $last ORDER BY month, service
        """,  # noqa: S608 - our own SQL; values are bound
        {"tenant": tenant, "first": first, "last": last},
    )


def licences(cur: duckdb.DuckDBPyConnection, tenant: str) -> dict[str, Any] | None:
    """The tenant's registration and its latest licence snapshot, modules with availability."""
    found = _rows(
        cur,
        """
        SELECT t.company, t.serial_number, t.database_type,
               l.users, l.expires_on, l.grace_to, l.modules, l.time AS snapshot_time
        FROM (SELECT 1) one
        LEFT JOIN tenants t ON t.tenant = $tenant
        LEFT JOIN (SELECT * FROM licences WHERE tenant = $tenant
                   ORDER BY "partition", "offset" DESC LIMIT 1) l ON true
        WHERE t.tenant IS NOT NULL OR l.tenant IS NOT NULL
        """,
        {"tenant": tenant},
    )
    if not found:
        return None
    row = found[0]
    modules = orjson.loads(row.pop("modules") or "[]")
    row["modules"] = [
        {**m, "available": max(0, int(m.get("total", 0)) - int(m.get("in_use", 0)))}
        for m in modules
        if isinstance(m, dict)
    ]
    return {"tenant": tenant, **row}


def system_events(
    cur: duckdb.DuckDBPyConnection, tenant: str, status: str | None = None
) -> list[dict[str, Any]]:
    """The system-messages list: newest first, optionally of one status."""
    return _rows(
        cur,
        "SELECT event, status, message, activated, activated_by, finished, "
        "expected_completion, system_wide, scope, owner FROM system_event_state "
        "WHERE tenant = $tenant AND ($status IS NULL OR status = $status) "
        "ORDER BY activated DESC NULLS LAST, event",
        {"tenant": tenant, "status": status},
    )


def close_cutoff(usage_topic: str) -> str:
    """`(partition, before)` for `usage_sql`: in each partition, the offset of the marker at
    which the last close there took effect; what a closed month is recomputed from."""
    return f"""
        SELECT "partition", max(took_effect) AS before FROM (
            -- a close takes effect at the marker of the last origin (input partition) to
            -- reach the partition: the greatest of each origin's first marker
            SELECT "partition", close_id, max(first_marker) AS took_effect FROM (
                SELECT m."partition", m.data->>'$.close_id' AS close_id,
                       COALESCE(regexp_extract(m.forwarded_from, '^(.*)/[0-9]+$', 1),
                                m.topic || '/' || m."partition") AS origin,
                       min(m."offset") AS first_marker
                FROM raw_events m
                WHERE m.topic = '{usage_topic}' AND m.type = '{CLOSE_REQUESTED}'
                  AND EXISTS (SELECT 1 FROM month_closes c
                              WHERE c.close_id = m.data->>'$.close_id'
                                AND c."partition" = m."partition")
                GROUP BY ALL
            ) GROUP BY ALL
        ) GROUP BY "partition"
    """  # noqa: S608 - the topic name is validated by Settings


def audit(cur: duckdb.DuckDBPyConnection, month: str, usage_topic: str) -> list[dict[str, Any]]:
    """Recompute `month` from the raw archive (events before the last close that took effect
    in each partition) and diff it against the streamed invoice lines. Empty: no difference."""
    closed = cur.execute("SELECT count(*) FROM month_closes WHERE month = ?", [month]).fetchone()
    if not closed or closed[0] == 0:
        raise QueryError(f"{month} has not been closed; nothing to audit")
    upto = close_cutoff(usage_topic)
    tz = plan_zone(cur)
    recomputed = monthly_usage(upto, tz, one_month=True)
    return _rows(
        cur,
        f"""
        WITH expected AS ({recomputed}),
        streamed AS (
            SELECT tenant, service, sum(packages) AS packages, sum(amount) AS amount,
                   count(*) AS lines
            FROM invoice_lines WHERE usage_month = $month GROUP BY tenant, service)
        SELECT COALESCE(e.tenant, s.tenant) AS tenant, COALESCE(e.service, s.service) AS service,
               e.usage AS recomputed_usage, e.users AS recomputed_users,
               COALESCE(e.packages, 0) AS recomputed_packages,
               COALESCE(s.packages, 0) AS streamed_packages,
               COALESCE(e.amount, 0) AS recomputed_amount, COALESCE(s.amount, 0) AS streamed_amount,
               COALESCE(s.lines, 0) AS streamed_lines
        FROM expected e FULL JOIN streamed s ON e.tenant = s.tenant AND e.service = s.service
        WHERE COALESCE(e.amount, 0) <> COALESCE(s.amount, 0)
           OR COALESCE(e.packages, 0) <> COALESCE(s.packages, 0)
        ORDER BY 1, 2
        """,  # noqa: S608 - our own SQL; month values are bound
        month_bounds(cur, tz, month),
    )


def closed_months(cur: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in cur.execute("SELECT DISTINCT month FROM month_closes").fetchall()]


def metric_rows(cur: duckdb.DuckDBPyConnection, since: str, lines_since: str) -> dict[str, Any]:
    """What the read-model gauges summarise: usage per tenant from `since` (a month), invoice
    lines and crossings by month from `lines_since`."""
    return {
        "usage": _rows(
            cur,
            "SELECT tenant, month, service, usage, included FROM usage_monthly WHERE month >= ?",
            [since],
        ),
        "lines": _rows(
            cur,
            "SELECT invoice_month, kind, currency, count(*) AS lines, sum(amount) AS amount "
            "FROM invoice_lines WHERE invoice_month >= ? GROUP BY ALL",
            [lines_since],
        ),
        "crossings": _rows(
            cur,
            "SELECT usage_month AS month, service, level, count(*) AS n "
            "FROM threshold_crossings WHERE usage_month >= ? GROUP BY ALL",
            [lines_since],
        ),
    }


def tenant_list(cur: duckdb.DuckDBPyConnection, limit: int = 1000) -> list[dict[str, Any]]:
    """Every tenant seen in any event, with its company where registered: the finance view's
    way into a tenant's Licences page."""
    return _rows(
        cur,
        "SELECT s.tenant, t.company FROM (SELECT DISTINCT subject AS tenant FROM raw_events "
        "WHERE subject IS NOT NULL) s LEFT JOIN tenants t USING (tenant) "
        "ORDER BY lower(COALESCE(t.company, s.tenant)), s.tenant LIMIT ?",
        [limit],
    )
