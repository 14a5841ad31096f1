"""Month close: a tenant's invoice lines for a usage month, and adjustments for late events."""

from __future__ import annotations

from decimal import Decimal

from billing.plan import Plan
from billing.rating import Rating
from projections.months import next_month
from projections.tenant import ServiceMonth, TenantState, rate_month, stable_id
from schemas.records import InvoiceLine, Provenance
from schemas.services import Service


def line_id(invoice_month: str, tenant: str, usage_month: str, service: Service, kind: str) -> str:
    return stable_id("line", invoice_month, tenant, usage_month, service, kind)


def _line(
    state: TenantState,
    rating: Rating,
    usage_month: str,
    invoice_month: str,
    kind: str,
    packages: int,
    amount: Decimal,
    close_id: str,
) -> InvoiceLine:
    counted = state.usage.get(usage_month, {}).get(rating.service, ServiceMonth())
    return InvoiceLine(
        id=line_id(invoice_month, state.tenant, usage_month, rating.service, kind),
        invoice_month=invoice_month,
        usage_month=usage_month,
        tenant=state.tenant,
        service=rating.service,
        kind=kind,
        usage=rating.in_units(rating.usage),
        unit=rating.unit,
        users=rating.users,
        included=rating.in_units(rating.included),
        packages=packages,
        unit_price=rating.unit_price,
        amount=amount,
        currency=rating.currency,
        plan_version=rating.plan_version,
        provenance=Provenance(
            events=counted.events,
            partition=state.partition,
            first_offset=counted.first_offset,
            last_offset=counted.last_offset,
            close_id=close_id,
        ),
    )


def close_month(
    state: TenantState, month: str, close_id: str, plan: Plan
) -> tuple[TenantState, list[InvoiceLine]]:
    """Bill `month` on the invoice of the month after it, with adjustment lines for every
    earlier closed month whose amount changed since it was billed. Closing twice is a no-op."""
    if month in state.closed:
        return state, []
    invoice_month = next_month(month)
    billed = dict(state.billed)
    billed_packages = dict(state.billed_packages)
    lines = _adjustments(state, plan, invoice_month, close_id, billed, billed_packages)
    lines += _overages(state, month, plan, invoice_month, close_id, billed, billed_packages)
    new_state = state.model_copy(
        update={
            "closed": tuple(sorted((*state.closed, month))),
            "billed": billed,
            "billed_packages": billed_packages,
        }
    )
    return new_state, lines


def _adjustments(
    state: TenantState,
    plan: Plan,
    invoice_month: str,
    close_id: str,
    billed: dict[str, Decimal],
    billed_packages: dict[str, int],
) -> list[InvoiceLine]:
    """A line for every earlier closed month and service whose amount changed since it was
    billed; `billed` and `billed_packages` (by "usage month/service") record the new one."""
    lines: list[InvoiceLine] = []
    for earlier in state.closed:
        for service in sorted(state.usage.get(earlier, {})):
            rating = rate_month(state, earlier, service, plan)
            key = f"{earlier}/{service}"
            before = billed.get(key, Decimal("0.00"))
            if rating.amount == before:
                continue
            delta_packages = rating.packages - billed_packages.get(key, 0)
            lines.append(
                _line(
                    state,
                    rating,
                    earlier,
                    invoice_month,
                    "adjustment",
                    delta_packages,
                    rating.amount - before,
                    close_id,
                )
            )
            billed[key] = rating.amount
            billed_packages[key] = rating.packages
    return lines


def _overages(
    state: TenantState,
    month: str,
    plan: Plan,
    invoice_month: str,
    close_id: str,
    billed: dict[str, Decimal],
    billed_packages: dict[str, int],
) -> list[InvoiceLine]:
    """A line for every service used in `month` beyond what the plan includes; `billed` and
    `billed_packages` record it."""
    lines: list[InvoiceLine] = []
    for service in sorted(state.usage.get(month, {})):
        rating = rate_month(state, month, service, plan)
        if rating.packages == 0:
            continue
        lines.append(
            _line(
                state,
                rating,
                month,
                invoice_month,
                "overage",
                rating.packages,
                rating.amount,
                close_id,
            )
        )
        billed[f"{month}/{service}"] = rating.amount
        billed_packages[f"{month}/{service}"] = rating.packages
    return lines
