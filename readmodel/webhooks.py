"""Webhook subscriptions and their delivery log, as the read model projects them. Secrets
are never here: the notifier derives them (`notify.signing`)."""

from __future__ import annotations

from typing import Any

import duckdb

# The latest state of each subscription: created once, deleted at most once.
_LIVE = """
SELECT id, any_value(tenant) AS tenant, any_value(owner) AS owner, any_value(url) AS url,
       any_value(event_types) AS event_types, any_value(description) AS description,
       min(created_at) AS created_at
FROM webhook_subscriptions
GROUP BY id
HAVING max(deleted_at) IS NULL
"""


def _dicts(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in result.description or ()]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def subscriptions(cur: duckdb.DuckDBPyConnection, owner: str | None) -> list[dict[str, Any]]:
    """Live subscriptions, oldest first; `owner` None: everyone's."""
    sql = f"SELECT * FROM ({_LIVE}) WHERE $owner IS NULL OR owner = $owner ORDER BY created_at, id"  # noqa: S608
    return _dicts(cur.execute(sql, {"owner": owner}))


def subscription(cur: duckdb.DuckDBPyConnection, id_: str) -> dict[str, Any] | None:
    found = _dicts(cur.execute(f"SELECT * FROM ({_LIVE}) WHERE id = $id", {"id": id_}))  # noqa: S608
    return found[0] if found else None


def deliveries(cur: duckdb.DuckDBPyConnection, id_: str, limit: int) -> list[dict[str, Any]]:
    """A subscription's attempts, newest first."""
    sql = (
        "SELECT webhook_id, event_type, tenant, attempt, attempted_at, status_code, error, "
        "outcome, next_try FROM webhook_deliveries WHERE subscription = $id "
        "ORDER BY attempted_at DESC, webhook_id, attempt DESC LIMIT $limit"
    )
    return _dicts(cur.execute(sql, {"id": id_, "limit": limit}))
