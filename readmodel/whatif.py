"""Finance's what-ifs over the read model: tenants' states rebuilt from the raw archive, then
decided by the workers' own folds (`projections.whatif`): `rerate` a closed month against
another plan, `preview` the next close. Neither writes anything.

A state holds what a worker's would for the same events: usage counted as the views count it
(deduplicated, dead letters left out), the licence snapshots, the months closed in the
tenant's partition and what the invoice lines billed per usage month and service.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import duckdb

from billing.plan import Plan
from projections import whatif
from projections.months import next_month
from projections.tenant import ServiceMonth, Snapshot, TenantState
from readmodel.queries import QueryError, close_cutoff, decimal_text
from readmodel.usage_sql import NO_CUTOFF, licence_snapshots, month_bounds, monthly_counts
from schemas.services import Service

# tenant -> (usage month, service) -> what its lines billed
Billed = dict[str, dict[tuple[str, Service], whatif.Billed]]


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def tenant_states(
    cur: duckdb.DuckDBPyConnection,
    plan: Plan,
    upto: str = NO_CUTOFF,
    tenant: str | None = None,
    month: str | None = None,
) -> dict[str, TenantState]:
    """Every tenant with usage (or `tenant` alone), counted from events below `upto`; with
    `month`, only that month's usage is counted."""
    tz = plan.zone.key
    params: dict[str, Any] = month_bounds(cur, tz, month) if month else {}
    if tenant is not None:
        params["tenant"] = tenant
    usage: dict[str, dict[str, dict[Service, ServiceMonth]]] = defaultdict(dict)
    # A tenant's events are in its own partition once moved there; until an original is
    # copied it counts where it landed, so the partition holding most of them is the tenant's.
    held: dict[str, Counter[int]] = defaultdict(Counter)
    counts = monthly_counts(upto, tz, one_tenant=tenant is not None, one_month=month is not None)
    for name, mon, service, part, events, first, last, value in cur.execute(
        f'SELECT tenant, month, service, "partition", events, first_offset, last_offset, usage '  # noqa: S608
        f"FROM ({counts}) ORDER BY tenant, month, service",
        params,
    ).fetchall():
        usage[name].setdefault(mon, {})[service] = ServiceMonth(
            value=int(value), events=events, first_offset=first, last_offset=last
        )
        held[name][part] += events
    snapshots: dict[str, list[Snapshot]] = defaultdict(list)
    snaps_params = {"tenant": tenant} if tenant is not None else {}
    for name, time, users in cur.execute(
        licence_snapshots(upto, one_tenant=tenant is not None), snaps_params
    ).fetchall():
        snapshots[name].append(Snapshot(time=_aware(time), users=users))
    closed: dict[int, list[str]] = defaultdict(list)
    for part, mon in cur.execute(
        'SELECT DISTINCT "partition", month FROM month_closes ORDER BY month'
    ).fetchall():
        closed[part].append(mon)
    billed = billed_lines(cur, tenant)
    partition = {name: parts.most_common(1)[0][0] for name, parts in held.items()}
    return {
        name: TenantState(
            tenant=name,
            partition=partition[name],
            snapshots=tuple(sorted(snapshots[name], key=lambda s: (s.time, s.users))),
            usage=months,
            closed=tuple(closed[partition[name]]),
            billed={f"{m}/{s}": b.amount for (m, s), b in billed[name].items()},
            billed_packages={f"{m}/{s}": b.packages for (m, s), b in billed[name].items()},
        )
        for name, months in usage.items()
    }


def billed_lines(
    cur: duckdb.DuckDBPyConnection, tenant: str | None = None, month: str | None = None
) -> Billed:
    """The invoice lines summed per tenant, usage month and service (every close's; an
    adjustment line holds the change, so the sum is what is billed now)."""
    billed: Billed = defaultdict(dict)
    for name, mon, service, packages, amount, version, lines in cur.execute(
        "SELECT tenant, usage_month, service, sum(packages), sum(amount), max(plan_version), "
        "count(*) FROM invoice_lines WHERE ($tenant IS NULL OR tenant = $tenant) "
        "AND ($month IS NULL OR usage_month = $month) GROUP BY ALL",
        {"tenant": tenant, "month": month},
    ).fetchall():
        billed[name][(mon, service)] = whatif.Billed(
            packages=int(packages), amount=amount, plan_version=version, lines=lines
        )
    return billed


def rerate(
    cur: duckdb.DuckDBPyConnection, month: str, plan: Plan, live: Plan, usage_topic: str
) -> dict[str, Any]:
    """The closed `month` re-rated with `plan` beside its invoice lines, per tenant and
    service, with totals. Counted as `audit` counts it: the events before the close took
    effect in each partition (late events that a later close adjusted included)."""
    if month not in _closed_months(cur, usage_topic):
        raise QueryError(
            f"{month} has not been closed (or its close has not taken effect in every "
            "partition yet); nothing to re-rate"
        )
    if problems := whatif.plan_problems(live, plan, month):
        raise QueryError("the plan cannot re-rate this month: " + "; ".join(problems))
    states = tenant_states(cur, live, close_cutoff(usage_topic), month=month)
    billed = billed_lines(cur, month=month)
    rows: list[whatif.Rerated] = []
    for name in sorted(set(states) | set(billed)):
        state = states.get(name) or TenantState(tenant=name, partition=0)
        of_month = {s: b for (_, s), b in billed.get(name, {}).items()}
        rows.extend(whatif.rerate(state, month, of_month, plan, live))
    version = plan.version_for(month)
    current = sum((r.amount for r in rows), whatif.ZERO)
    rerated = sum((r.rerated_amount for r in rows), whatif.ZERO)
    return {
        "usage_month": month,
        "plan_version": version.version if version else None,
        "rows": [_texts(r.model_dump()) for r in rows],
        "totals": _texts(
            {"amount": current, "rerated_amount": rerated, "difference": rerated - current}
        ),
    }


def preview(
    cur: duckdb.DuckDBPyConnection, plan: Plan, now: dt.datetime, month: str | None,
    usage_topic: str, tenant: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The lines closing `month` (None: the next close, `whatif.preview_month`) would emit
    now, for every tenant or `tenant` alone; adjustments are marked pending."""
    closed = _closed_months(cur, usage_topic)
    if month is None:
        month = whatif.preview_month(now, plan, sorted(closed))
    lines = []
    for _, state in sorted(tenant_states(cur, plan, tenant=tenant).items()):
        for line in whatif.preview(state, month, plan):
            row = line.model_dump(mode="python")
            provenance = row.pop("provenance")
            row.update({k: v for k, v in provenance.items() if k != "close_id"})
            row["pending"] = line.kind == "adjustment"
            lines.append(_texts(row))
    total = sum((Decimal(x["amount"]) for x in lines), whatif.ZERO)
    pending = sum((Decimal(x["amount"]) for x in lines if x["pending"]), whatif.ZERO)
    return {
        "usage_month": month,
        "invoice_month": next_month(month),
        "closed": month in closed,
        "lines": lines,
        "total": decimal_text("amount", total),
        "pending_total": decimal_text("amount", pending),
    }


def _closed_months(cur: duckdb.DuckDBPyConnection, usage_topic: str) -> set[str]:
    """Months whose close has taken effect in every partition of the usage log that holds
    anything (a close reaches each; until then, part of the month is still open)."""
    rows = cur.execute(
        'SELECT month FROM month_closes GROUP BY month HAVING count(DISTINCT "partition") >= '
        '(SELECT count(DISTINCT "partition") FROM raw_events WHERE topic = $topic)',
        {"topic": usage_topic},
    ).fetchall()
    return {month for (month,) in rows}


def _texts(row: dict[str, Any]) -> dict[str, Any]:
    """Decimals as the read model's queries give them: money with its cents."""
    return {k: decimal_text(k, v) if isinstance(v, Decimal) else v for k, v in row.items()}
