"""From read-model rows to the gauges' values: pure, so that the rules they feed are testable.

The gauges cover the current and the previous usage month (and any older month not closed yet)
and the last 13 invoice months, so their label sets stay bounded as years pass.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from projections.months import month_end, months_until, next_month, previous_month

INVOICE_MONTHS = 13


def windows(current: str, closed: list[str]) -> tuple[str, str]:
    """(first usage month to read, first invoice month to read)."""
    # Nothing closed yet: any month with usage may be overdue, so read them all.
    since = min(previous_month(current), next_month(max(closed))) if closed else "0000-01"
    return since, months_until(current, INVOICE_MONTHS)[0]


def figures(
    rows: dict[str, Any],
    current: str,
    top: int,
    grace: dt.timedelta | None,
    zone: dt.tzinfo,
) -> dict[str, Any]:
    closed = set(rows["closed"])
    shown = {current, previous_month(current)}
    totals: dict[tuple[str, str], list[Decimal | int]] = defaultdict(
        lambda: [Decimal(0), Decimal(0), 0]
    )
    ratios: dict[tuple[str, str], list[tuple[Decimal, str]]] = defaultdict(list)
    months_with_usage = set()
    for row in rows["usage"]:
        month, service = row["month"], row["service"]
        usage, included = Decimal(row["usage"]), Decimal(row["included"])
        if usage > 0:
            months_with_usage.add(month)
        if month not in shown:
            continue
        total = totals[(month, service)]
        total[0] += usage
        total[1] += included
        if usage > included:
            total[2] += 1
        if top and usage > 0:
            ratio = usage / included if included > 0 else Decimal("Infinity")
            ratios[(month, service)].append((ratio, row["tenant"]))
    overdue = sorted(m for m in months_with_usage if m < current and m not in closed)
    close_due = month_end(overdue[0], zone) + (grace or dt.timedelta(0)) if overdue else None
    tenants = [
        {"month": month, "service": service, "tenant": tenant, "ratio": ratio}
        for (month, service), found in ratios.items()
        for ratio, tenant in sorted(found, key=lambda r: (-r[0], r[1]))[:top]
    ]
    amounts: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    lines: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows["lines"]:
        amounts[(row["invoice_month"], row["currency"])] += Decimal(row["amount"])
        lines[(row["invoice_month"], row["kind"])] += int(row["lines"])
    return {
        "usage": [
            {"month": m, "service": s, "usage": t[0], "included": t[1], "over": t[2]}
            for (m, s), t in sorted(totals.items())
        ],
        "tenants": tenants,
        "lines": [{"invoice_month": m, "kind": k, "lines": n} for (m, k), n in lines.items()],
        "amounts": [
            {"invoice_month": m, "currency": c, "amount": a} for (m, c), a in amounts.items()
        ],
        "crossings": rows["crossings"],
        "closed_months": len(closed),
        "close_due": close_due,
    }
