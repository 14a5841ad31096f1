"""The usage views and the monthly-usage SQL: what finance sees, the tenant's pages show and
`audit` recomputes from the raw archive, as one piece of SQL.

Written for speed on a large archive (10M events a month): the joins that leave records out
compare integers, the duplicate search sorts only the events whose key occurs more than
once, and a month asked for alone is found by a time range instead of a month computed for
every event (`monthly_usage(one_month=True)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from schemas.services import Catalog, ServiceSpec


# The services table's facts as SQL: which type is which service, which data field carries
# its amount (a sum's may be left out and counts 1), and whether a month is its peak. The
# table holds names, types and fields to plain identifiers (schemas/services.py), so they are
# safe to splice.
def _case(column: str, catalog: Catalog, value: Callable[[ServiceSpec], str]) -> str:
    whens = " ".join(f"WHEN '{s.event_type}' THEN {value(s)}" for s in catalog.services)
    return f"CASE {column} {whens} END"


def _amount(spec: ServiceSpec) -> str:
    read = f"TRY_CAST(r.data->>'$.{spec.field}' AS HUGEINT)"
    return read if spec.peak else f"COALESCE({read}, 1)"


NO_CUTOFF = 'SELECT NULL::INTEGER AS "partition", NULL::BIGINT AS before WHERE false'


# A month in the billing time zone, as every view and query works it out: the month of an
# instant, and the instants at which a month ("YYYY-MM") starts and ends.
def _month_of(tz: str, instant: str) -> str:
    return f"strftime(timezone('{tz}', {instant}), '%Y-%m')"


def _month_starts(tz: str, month: str) -> str:
    return f"timezone('{tz}', strptime({month} || '-01', '%Y-%m-%d')::TIMESTAMP)"


def _month_ends(tz: str, month: str) -> str:
    return (
        f"timezone('{tz}', (strptime({month} || '-01', '%Y-%m-%d') + INTERVAL 1 MONTH)::TIMESTAMP)"
    )


def version_in_force(month: str) -> str:
    """The plan version in force on the first day of `month` (an SQL "YYYY-MM"), as
    `billing.plan.Plan.version_for` picks it."""
    return f"""(SELECT v.version FROM plan_versions v
          WHERE v.effective_from <= strptime({month} || '-01', '%Y-%m-%d')::DATE
          ORDER BY v.effective_from DESC LIMIT 1)"""


def month_bounds(cur: duckdb.DuckDBPyConnection, tz: str, month: str) -> dict[str, Any]:
    """The parameters of `monthly_usage(one_month=True)`: the month and its first and last
    instant in `tz`, worked out by DuckDB as the views work out an event's month."""
    # fetchall: DuckDB 2.0 refuses other work on a connection with a half-fetched result.
    (starts, ends), *_ = cur.execute(
        f"SELECT {_month_starts(tz, '$m')}, {_month_ends(tz, '$m')}", {"m": month}
    ).fetchall()
    return {"month": month, "starts": starts, "ends": ends}


_MAX = 9223372036854775807


# The rated rows as the views show them, in billing units and exact decimals.
# DuckDB divides decimals into DOUBLE; multiplying by the exact 1/unit_size keeps DECIMAL.
_PRICED = """
SELECT tenant, month, service, (usage::DECIMAL(38, 0) * unit_factor)::DECIMAL(38, 9) AS usage,
       unit, users, band, (included::DECIMAL(38, 0) * unit_factor)::DECIMAL(38, 9) AS included,
       CASE WHEN included = 0 THEN NULL
            ELSE ((usage * 1000 + included // 2) // included)::DECIMAL(38, 0) * 0.1 END
         AS percent,
       packages::HUGEINT AS packages, price AS unit_price,
       round(packages::DECIMAL(38, 0) * price, 2)::DECIMAL(38, 2) AS amount, currency,
       plan_version, events, first_offset, last_offset
FROM rated"""


def _counted(of: str, tenant: str, tz: str, one_month: bool) -> str:
    """The CTEs up to `counted`: the usage events that count, each once.

    An event counts unless an earlier one (by partition and offset) has its tenant, source
    and id. Hashing the three finds the keys that may occur twice (every real repeat, and
    the rare hash collision) in one pass; only the events under those hashes are sorted
    to tell first from later, so the result is exact. A whole-archive window sorted every
    event and took 3/4 of an audit."""
    if one_month:
        # Bound as `$starts` and `$ends` (`month_bounds`): constants, so that the common
        # case is one comparison per row. Within a day of either bound the event's own month
        # decides: where midnight of the 1st happens twice (a clock set back at 01:00), the
        # range alone would cut wrongly. A CASE computes that month only for those rows.
        month, within = (
            "$month",
            f"""CASE WHEN l.time >= $starts + INTERVAL 1 DAY AND l.time < $ends - INTERVAL 1 DAY
                     THEN true
                     WHEN l.time >= $starts - INTERVAL 1 DAY AND l.time < $ends + INTERVAL 1 DAY
                     THEN {_month_of(tz, "l.time")} = $month
                     ELSE false END""",
        )
    else:
        month, within = "l.month", "true"
    return f"""
log AS NOT MATERIALIZED (
    SELECT * FROM usage_events_of({of}) u
    WHERE u."offset" < COALESCE((SELECT x.before FROM upto x WHERE x."partition" = u."partition"),
                                {_MAX}) {tenant}
), repeated AS (
    SELECT hash(tenant, source, id) AS h FROM log GROUP BY h HAVING count(*) > 1
), later AS (
    SELECT "partition", "offset" FROM log WHERE hash(tenant, source, id) IN (SELECT h FROM repeated)
    QUALIFY row_number() OVER (PARTITION BY tenant, source, id ORDER BY "partition", "offset") > 1
), counted AS (
    SELECT l.tenant, {month} AS month, l.service, l."partition", l."offset", l.amount, l.peak
    FROM log l
    WHERE {within} AND NOT EXISTS (SELECT 1 FROM later x WHERE x."partition" = l."partition"
                                   AND x."offset" = l."offset")
)"""


# A tenant-month-service's count from `counted`: a peak service's month is its highest value.
_SUMS = """
    SELECT tenant, month, service, min("partition") AS "partition", count(*) AS events,
           min("offset") AS first_offset, max("offset") AS last_offset,
           CASE WHEN bool_or(peak) THEN max(amount) ELSE sum(amount) END AS usage
    FROM counted GROUP BY tenant, month, service"""


def _scope(one_tenant: bool) -> tuple[str, str]:
    """The macro argument and the filter that restrict a query to the tenant `$tenant`."""
    return ("$tenant", "AND tenant = $tenant") if one_tenant else ("NULL", "")


def _snaps(one_tenant: bool) -> str:
    of, tenant = _scope(one_tenant)
    return f"""
    SELECT * FROM licence_snapshots_of({of}) s
    WHERE s."offset" < COALESCE((SELECT x.before FROM upto x WHERE x."partition" = s."partition"),
                                {_MAX}) {tenant}"""


def monthly_counts(upto: str, tz: str, one_tenant: bool = False, one_month: bool = False) -> str:
    """Usage in base units, events and offsets per tenant, month and service, from the events
    that count (as `monthly_usage` counts them, before any rating); each row also names
    the tenant's partition. What `readmodel.whatif` rebuilds a tenant's state from."""
    of, tenant = _scope(one_tenant)
    return f"WITH upto AS ({upto}), {_counted(of, tenant, tz, one_month)} {_SUMS}"


def accepted_events(tz: str) -> str:
    """The usage events of the month bound as `$month` (with `$starts`, `$ends`) that count,
    each once: (tenant, month, service, partition, offset, amount)."""
    return f"""WITH upto AS ({NO_CUTOFF}), {_counted("NULL", "", tz, True)}
    SELECT tenant, month, service, "partition", "offset", amount FROM counted"""


def licence_snapshots(upto: str, one_tenant: bool = False) -> str:
    """The licence snapshots (tenant, time, users) below the cutoff `upto`, as
    `monthly_usage` takes a month's users from them."""
    return f"""WITH upto AS ({upto}), snaps AS ({_snaps(one_tenant)})
    SELECT tenant, time, users FROM snaps WHERE users IS NOT NULL ORDER BY tenant, time, users"""


def monthly_usage(upto: str, tz: str, one_tenant: bool = False, one_month: bool = False) -> str:
    """Usage, users, band, included, packages and amount per tenant, month and service, from
    the accepted, deduplicated usage events; `upto` selects `(partition, before)`: only
    events at offsets below `before` count in that partition (no row: all count).
    `one_tenant` restricts it to the tenant bound as `$tenant` before deduplicating, which
    is safe (duplicates share their tenant) and spares scanning everybody else.
    `one_month` gives only the month bound as `$month` ("YYYY-MM"); duplicates are still
    looked for in every month."""
    of, tenant = _scope(one_tenant)
    # Only our own SQL and a validated time-zone name are interpolated, never user input.
    return f"""
WITH upto AS ({upto}), {_counted(of, tenant, tz, one_month)}, sums AS ({_SUMS}
), grid AS (
    -- every service of every tenant-month with any usage, so a view row exists for each
    SELECT k.tenant, k.month, s.service, COALESCE(x.events, 0) AS events, x.first_offset,
           x.last_offset, COALESCE(x.usage, 0) AS usage
    FROM (SELECT DISTINCT tenant, month FROM sums) k
    CROSS JOIN (SELECT DISTINCT service FROM plan_rates) s
    LEFT JOIN sums x ON x.tenant = k.tenant AND x.month = k.month AND x.service = s.service
), bounds AS (
    SELECT *, {_month_starts(tz, "month")} AS starts, {_month_ends(tz, "month")} AS ends
    FROM grid
), snaps AS ({_snaps(one_tenant)}
), with_users AS (
    SELECT b.*, greatest(
        COALESCE((SELECT s.users FROM snaps s WHERE s.tenant = b.tenant AND s.time <= b.starts
                  ORDER BY s.time DESC, s.users DESC LIMIT 1), 0),
        COALESCE((SELECT max(s.users) FROM snaps s WHERE s.tenant = b.tenant
                  AND s.time > b.starts AND s.time < b.ends), 0)) AS users,
        {version_in_force("b.month")} AS plan_version
    FROM bounds b
), rated AS (
    SELECT w.*, r.band, r.included, r.package, r.price, r.unit, r.unit_factor, v.currency,
           CASE WHEN w.usage > r.included
                THEN (w.usage - r.included + r.package - 1) // r.package ELSE 0 END AS packages
    FROM with_users w
    JOIN plan_versions v ON v.version = w.plan_version
    JOIN plan_rates r ON r.version = w.plan_version AND r.service = w.service
     AND w.users <= COALESCE(r.max_users, {_MAX})
    QUALIFY row_number() OVER (PARTITION BY w.tenant, w.month, w.service ORDER BY r.band) = 1
)
{_PRICED}"""


def _folded_log(usage_topic: str) -> str:
    # A copy names its original as "topic/partition/offset"; read back into integers, the
    # originals are left out by one anti join on integers with the second copies and the
    # dead letters (comparing that text for every event, in correlated subqueries that
    # DuckDB answered by copying the whole archive, took 3/4 of an audit).
    return f"""
CREATE OR REPLACE MACRO folded_log_of(t) AS TABLE
WITH copies AS (
    SELECT c."partition", c."offset", c.forwarded_from,
           regexp_extract(c.forwarded_from, '^(.*)/([0-9]+)/([0-9]+)$', ['topic', 'p', 'o'])
             AS named
    FROM raw_events c
    WHERE c.topic = '{usage_topic}' AND c.forwarded_from IS NOT NULL
      AND (t IS NULL OR c.subject = t)
), named AS (
    SELECT * FROM (SELECT named.topic AS topic, TRY_CAST(named.p AS INTEGER) AS "partition",
                          TRY_CAST(named.o AS BIGINT) AS "offset", forwarded_from FROM copies)
    -- only a name the text join matched: no leading zeros, no sign
    WHERE forwarded_from = topic || '/' || "partition" || '/' || "offset"
), left_out AS (
    -- originals of copies (a copy that a later copy names stays: only originals are moved)
    SELECT n.topic, n."partition", n."offset" FROM named n
    WHERE NOT EXISTS (SELECT 1 FROM copies c WHERE n.topic = '{usage_topic}'
                      AND c."partition" = n."partition" AND c."offset" = n."offset")
    UNION ALL
    -- a second copy of one original in one partition (a restarted worker)
    SELECT '{usage_topic}', "partition", "offset" FROM copies
    QUALIFY row_number() OVER (PARTITION BY "partition", forwarded_from ORDER BY "offset") > 1
    UNION ALL
    SELECT d.topic, d."partition", d."offset" FROM dead_letters d
    WHERE d.topic = '{usage_topic}'
)
SELECT r.* FROM raw_events r
ANTI JOIN left_out x
  ON x.topic = r.topic AND x."partition" = r."partition" AND x."offset" = r."offset"
WHERE r.topic = '{usage_topic}' AND (t IS NULL OR r.subject = t);
"""


def usage_views(usage_topic: str, tz: str, catalog: Catalog) -> str:
    usage_types = ", ".join(f"'{s.event_type}'" for s in catalog.services)
    return f"""
CREATE OR REPLACE VIEW rejected AS
SELECT r.*, d.reason, d.field, d.detail
FROM raw_events r JOIN dead_letters d
  ON d.topic = r.topic AND d."partition" = r."partition" AND d."offset" = r."offset";

-- The usage log as the worker folds it: each usage and licence record at its tenant's
-- partition. A record written elsewhere was copied there (the copy names it in
-- `forwarded_from`); the copy stands in its place, so that offsets, order and close cutoffs
-- are the worker's. A second copy of the same original (a restarted worker) is left out.
-- `_of(t)`: for the tenant `t` alone (NULL: everybody). A copy carries its original's bytes,
-- so both name the same tenant, and the whole log is never read for one tenant's page (it
-- was: 1 s at 10M events).
{_folded_log(usage_topic)}
CREATE OR REPLACE VIEW folded_log AS SELECT * FROM folded_log_of(NULL);

CREATE OR REPLACE MACRO usage_events_of(t) AS TABLE
SELECT r."partition", r."offset", r.log_time, r.subject AS tenant, r.source, r.id, r.time,
       {_case("r.type", catalog, lambda s: f"'{s.name}'")} AS service,
       {_month_of(tz, "r.time")} AS month,
       {_case("r.type", catalog, _amount)} AS amount,
       {_case("r.type", catalog, lambda s: str(s.peak).lower())} AS peak
FROM folded_log_of(t) r
WHERE r.type IN ({usage_types});

CREATE OR REPLACE VIEW usage_events AS SELECT * FROM usage_events_of(NULL);

CREATE OR REPLACE MACRO licence_snapshots_of(t) AS TABLE
SELECT r."partition", r."offset", r.subject AS tenant, r.time,
       TRY_CAST(r.data->>'$.users' AS BIGINT) AS users
FROM folded_log_of(t) r
WHERE r.type = 'licensing.licenses.changed';

CREATE OR REPLACE VIEW licence_snapshots AS SELECT * FROM licence_snapshots_of(NULL);

CREATE OR REPLACE VIEW usage_monthly AS
{monthly_usage(NO_CUTOFF, tz)};
"""
