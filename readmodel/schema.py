"""The read model's tables and views (DuckDB). Documented for finance in README.md.

Tables are written only by the projector; views derive monthly usage from the raw archive
with the plan, so that what finance sees and what `audit` recomputes is one piece of SQL.
"""

from __future__ import annotations

from decimal import Decimal

import duckdb

from billing.plan import Plan
from readmodel.usage_sql import usage_views
from schemas.services import Catalog

# Column widths: the largest values that valid events can lead to (schemas/services.py bounds an
# event to MAX_QUANTITY = 10^9 and MAX_PEAK = 10^15). A partition takes well under 10^6
# records per second and a month has at most 2.68 * 10^6 seconds, so fewer than 2.7 * 10^12
# records; we allow E = 10^13 events per partition and month (all of its tenants together).
# - usage (base units): a sum, <= E * 10^9 = 10^22; storage is a peak, <= 10^15. HUGEINT
#   holds 1.7 * 10^38; DECIMAL(38, 9) in billing units keeps 29 integer digits.
# - packages: <= the overage in base units (a package is >= 1 unit), <= 10^22. Today's
#   smallest package is 1,000 units: 10^19 packages, beyond BIGINT (9.2 * 10^18): HUGEINT.
# - amount = packages * unit price: today 10^19 * 32.40 = 3.24 * 10^20, beyond DECIMAL(18, 2)
#   (10^16); any plan (price < 10^14, the plan column) gives < 10^22 * 10^14 = 10^36, which
#   DECIMAL(38, 2) holds; so do month_closes.amount (a sum over one partition's lines, within
#   the same E) and every invoice total. Python computes in int and Decimal: 3.24 * 10^20 with
#   its cents is 23 digits, inside the default 28-digit context.
# Before this bound, one event of 3 * 10^12 chats overflowed `threshold_crossings.package`
# (INTEGER) and stopped the projector. `WIDENED` upgrades files made before.
TABLES = """
CREATE TABLE IF NOT EXISTS offsets (
    topic VARCHAR NOT NULL, "partition" INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, "partition"));
CREATE TABLE IF NOT EXISTS raw_events (
    topic VARCHAR NOT NULL, "partition" INTEGER NOT NULL, "offset" BIGINT NOT NULL,
    log_time TIMESTAMPTZ NOT NULL, key VARCHAR, forwarded_from VARCHAR,
    type VARCHAR, source VARCHAR, id VARCHAR, subject VARCHAR, time TIMESTAMPTZ,
    data JSON, payload VARCHAR);
CREATE TABLE IF NOT EXISTS invoice_lines (
    id VARCHAR PRIMARY KEY, invoice_month VARCHAR NOT NULL, usage_month VARCHAR NOT NULL,
    tenant VARCHAR NOT NULL, service VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    usage DECIMAL(38, 9) NOT NULL, unit VARCHAR, users BIGINT, included DECIMAL(38, 9),
    packages HUGEINT NOT NULL, unit_price DECIMAL(18, 4) NOT NULL, amount DECIMAL(38, 2) NOT NULL,
    currency VARCHAR NOT NULL, plan_version VARCHAR NOT NULL, events BIGINT,
    "partition" INTEGER, first_offset BIGINT, last_offset BIGINT, close_id VARCHAR);
CREATE TABLE IF NOT EXISTS threshold_crossings (
    id VARCHAR PRIMARY KEY, tenant VARCHAR NOT NULL, service VARCHAR NOT NULL,
    usage_month VARCHAR NOT NULL, level VARCHAR NOT NULL, package HUGEINT,
    usage HUGEINT, included HUGEINT, users BIGINT, crossed_by VARCHAR, crossed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS dead_letters (
    id VARCHAR PRIMARY KEY, topic VARCHAR, "partition" INTEGER, "offset" BIGINT,
    reason VARCHAR NOT NULL, field VARCHAR, detail VARCHAR, payload VARCHAR);
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS tenant VARCHAR;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS headers JSON;
CREATE TABLE IF NOT EXISTS month_closes (
    id VARCHAR PRIMARY KEY, close_id VARCHAR NOT NULL, month VARCHAR NOT NULL,
    "partition" INTEGER NOT NULL, tenants BIGINT, lines BIGINT, amount DECIMAL(38, 2));
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id VARCHAR NOT NULL, tenant VARCHAR, owner VARCHAR NOT NULL, url VARCHAR NOT NULL,
    event_types VARCHAR[] NOT NULL, description VARCHAR, created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ, version INTEGER NOT NULL, PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id VARCHAR PRIMARY KEY, subscription VARCHAR NOT NULL, webhook_id VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL, tenant VARCHAR, attempt INTEGER NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL, status_code INTEGER, error VARCHAR, outcome VARCHAR NOT NULL,
    next_try TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS plan_versions (
    version VARCHAR PRIMARY KEY, effective_from DATE NOT NULL, currency VARCHAR NOT NULL,
    billing_timezone VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS plan_rates (
    version VARCHAR NOT NULL, service VARCHAR NOT NULL, band INTEGER NOT NULL,
    max_users BIGINT, included HUGEINT NOT NULL, package HUGEINT NOT NULL,
    price DECIMAL(18, 4) NOT NULL, unit VARCHAR NOT NULL, unit_size BIGINT NOT NULL,
    unit_factor DECIMAL(38, 18) NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    service VARCHAR PRIMARY KEY, event_type VARCHAR NOT NULL, aggregation VARCHAR NOT NULL,
    field VARCHAR NOT NULL, unit VARCHAR NOT NULL, unit_size BIGINT NOT NULL,
    display_order INTEGER NOT NULL, label_en VARCHAR NOT NULL, label_nl VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (
    topic VARCHAR NOT NULL, "partition" INTEGER NOT NULL, "offset" BIGINT NOT NULL,
    "table" VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR, payload VARCHAR,
    set_aside_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (topic, "partition", "offset"));
"""

# Columns widened since the first release: (table, column, type). A file made before is
# upgraded in place at start; these tables hold a few rows per tenant and month, so the
# rewrite is cheap.
WIDENED = (
    ("invoice_lines", "packages", "HUGEINT"),
    ("invoice_lines", "amount", "DECIMAL(38,2)"),
    ("threshold_crossings", "package", "HUGEINT"),
    ("month_closes", "amount", "DECIMAL(38,2)"),
)


def widen(con: duckdb.DuckDBPyConnection) -> None:
    """Bring the columns of an older file to the widths of `TABLES` (see `WIDENED`)."""
    for table, column, type_ in WIDENED:
        found = con.execute(
            "SELECT data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ? AND column_name = ?",
            [table, column],
        ).fetchone()
        if found is not None and found[0] != type_:
            # Only names and types of this module are interpolated.
            con.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {type_}')


# Archive a batch (registered as `raw_batch`): the envelope's fields where it parses as a JSON
# object (`time` only with a UTC offset), the raw text where it does not. The document is
# parsed four times (validity, the types of all fields at once, their text at once, `data`)
# instead of once per field and check: 16 times, 3 us a record of DuckDB's time.
_FIELDS = ("type", "source", "id", "subject", "time")
_PATHS = ", ".join(f"'$.{n}'" for n in _FIELDS)
# `t` holds the JSON types of the document and of each path, `s` the paths' texts.
_TEXTS = ", ".join(
    f"CASE WHEN obj AND t[{i + 2}] = 'VARCHAR' THEN s[{i + 1}] END AS {name}"
    for i, name in enumerate(_FIELDS[:4])
)
ARCHIVE = rf"""
INSERT INTO raw_events BY NAME
WITH typed AS (
    SELECT *, CASE WHEN json_valid(value)
                   THEN json_type(value, ['$', {_PATHS}, '$.data'])
              END AS t
    FROM raw_batch
), objects AS (
    SELECT *, COALESCE(t[1] = 'OBJECT', false) AS obj FROM typed
), fields AS (
    SELECT *, CASE WHEN obj THEN json_extract_string(value, [{_PATHS}]) END AS s
    FROM objects
)
SELECT topic, "partition", "offset", log_time, key, forwarded_from, {_TEXTS},
       CASE WHEN obj AND t[6] = 'VARCHAR' AND regexp_matches(s[5], '(Z|z|[+-]\d{{2}}:?\d{{2}})$')
            THEN TRY_CAST(s[5] AS TIMESTAMPTZ) END AS time,
       CASE WHEN obj AND t[7] = 'OBJECT' THEN json_extract(value, '$.data') END AS data,
       CASE WHEN NOT obj THEN value END AS payload
FROM fields
"""


def views(usage_topic: str, tz: str, catalog: Catalog, system_topic: str = "system-events") -> str:
    """Views over the raw archive; `usage_topic` is where usage and forwarded licences live.
    Topic names are validated by Settings ([A-Za-z0-9._-]), time zones by ZoneInfo, and the
    services table's names, types and fields by schemas/services.py."""
    return (
        usage_views(usage_topic, tz, catalog)
        + _licence_views(usage_topic)
        + _system_views(system_topic)
    )


def _licence_views(usage_topic: str) -> str:
    return f"""
CREATE OR REPLACE VIEW tenants AS
SELECT subject AS tenant, arg_max(data->>'$.company', time) AS company,
       arg_max(data->>'$.serial_number', time) AS serial_number,
       arg_max(data->>'$.database.type', time) AS database_type
FROM raw_events WHERE type = 'licensing.tenant.registered' AND forwarded_from IS NULL
GROUP BY ALL;

CREATE OR REPLACE VIEW licences AS
SELECT subject AS tenant, time, TRY_CAST(data->>'$.users' AS BIGINT) AS users,
       data->'$.modules' AS modules, data->>'$.expires_on' AS expires_on,
       data->>'$.grace_to' AS grace_to, "partition", "offset"
FROM raw_events WHERE type = 'licensing.licenses.changed' AND forwarded_from IS NULL
  AND topic <> '{usage_topic}';
"""


def _system_views(system_topic: str) -> str:
    return f"""
CREATE OR REPLACE VIEW system_events AS
SELECT subject AS tenant, type, time, data->>'$.key' AS key, data->>'$.scope' AS scope,
       data->>'$.owner' AS owner, data->>'$.status' AS status, data->>'$.message' AS message,
       data->>'$.activated_at' AS activated_at, data->>'$.activated_by' AS activated_by,
       data->>'$.eta' AS eta, "partition", "offset"
FROM raw_events WHERE type LIKE 'system.event.%';

-- The state of each system event, identified by (tenant, key, scope, owner): fields from its
-- latest registration on, each as the last event that carried it; a delete after that
-- registration ends it. Events an administrator adds stay active until deleted.
CREATE OR REPLACE VIEW system_event_state AS
WITH events AS (
    SELECT subject AS tenant, type, time, data, "offset", "partition",
           data->>'$.key' AS key, data->>'$.scope' AS scope, data->>'$.owner' AS owner
    FROM raw_events
    WHERE topic = '{system_topic}' AND type LIKE 'system.event.%' AND forwarded_from IS NULL
      AND data->>'$.key' IS NOT NULL AND data->>'$.scope' IS NOT NULL
), lives AS (
    SELECT tenant, key, scope, owner,
           max("offset") FILTER (WHERE type = 'system.event.registered') AS born,
           max("offset") FILTER (WHERE type = 'system.event.deleted') AS died
    FROM events GROUP BY tenant, key, scope, owner
), state AS (
    SELECT l.tenant, l.key, l.scope, l.owner,
           arg_max(e.data->>'$.status', e."offset") FILTER (WHERE json_exists(e.data, '$.status')
               AND e.data->>'$.status' IS NOT NULL) AS status,
           arg_max(e.data->>'$.message', e."offset") FILTER (WHERE json_exists(e.data, '$.message'))
             AS message,
           arg_max(e.data->>'$.activated_at', e."offset")
             FILTER (WHERE json_exists(e.data, '$.activated_at')) AS activated_at,
           arg_max(e.data->>'$.activated_by', e."offset")
             FILTER (WHERE json_exists(e.data, '$.activated_by')) AS activated_by,
           arg_max(e.data->>'$.eta', e."offset") FILTER (WHERE json_exists(e.data, '$.eta'))
             AS eta,
           max(e.time) AS updated_at
    FROM lives l JOIN events e
      ON e.tenant = l.tenant AND e.key = l.key AND e.scope = l.scope
     AND e.owner IS NOT DISTINCT FROM l.owner AND e."offset" >= l.born
    WHERE l.born IS NOT NULL AND (l.died IS NULL OR l.died < l.born)
    GROUP BY l.tenant, l.key, l.scope, l.owner
)
SELECT tenant, key AS event,
       CASE WHEN key IN ('NoLogin', 'NoFreetext', 'NoTravel', 'MessageOfTheDay') THEN 'active'
            ELSE status END AS status,
       message, TRY_CAST(activated_at AS TIMESTAMPTZ) AS activated,
       activated_by,
       CASE WHEN status IN ('finished', 'failed', 'cancelled') THEN updated_at END AS finished,
       TRY_CAST(eta AS TIMESTAMPTZ) AS expected_completion,
       scope = 'system' AS system_wide, scope, owner
FROM state;
"""


def load_plan_tables(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    con.execute("DELETE FROM plan_versions")
    con.execute("DELETE FROM plan_rates")
    con.execute("DELETE FROM services")
    for spec in plan.catalog.services:
        con.execute(
            "INSERT INTO services VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                spec.name, spec.event_type, spec.aggregation, spec.field, spec.unit.en,
                spec.unit_size, spec.order, spec.label.en, spec.label.nl,
            ],
        )  # fmt: skip
    for version in plan.versions:
        con.execute(
            "INSERT INTO plan_versions VALUES (?, ?, ?, ?)",
            [version.version, version.effective_from, version.currency, version.billing_timezone],
        )
        bounds: list[int | None] = [*version.user_bands, None]
        for service, rate in version.services.items():
            for band, (bound, included) in enumerate(zip(bounds, rate.included, strict=True), 1):
                con.execute(
                    "INSERT INTO plan_rates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        version.version,
                        service,
                        band,
                        bound,
                        included * rate.unit_size,
                        rate.package * rate.unit_size,
                        rate.price,
                        rate.unit,
                        rate.unit_size,
                        Decimal(1) / Decimal(rate.unit_size),  # exact: a power of ten
                    ],
                )


def create(con: duckdb.DuckDBPyConnection, plan: Plan, usage_topic: str, system_topic: str) -> None:
    """Create or upgrade the schema and (re)load the plan; idempotent."""
    con.execute("BEGIN")
    con.execute(TABLES)
    widen(con)
    load_plan_tables(con, plan)
    con.execute(views(usage_topic, plan.versions[0].billing_timezone, plan.catalog, system_topic))
    con.execute("COMMIT")
