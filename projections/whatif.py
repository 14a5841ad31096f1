"""Finance's what-ifs, decided by the folds the workers run: a closed month re-rated against
another plan, and the lines the next close would emit (with the adjustments late events
have caused since a month was billed), both from a tenant's state as counted so far.

Pure: the read model rebuilds the states (`readmodel.whatif`); nothing here writes a line.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from billing.plan import Plan
from projections.invoicing import close_month
from projections.months import month_of, previous_month
from projections.tenant import TenantState, rate_month
from schemas.records import InvoiceLine
from schemas.services import Service

PREVIEW_CLOSE = "preview"  # the close id a previewed line names: no close made it
ZERO = Decimal("0.00")


class Billed(BaseModel):
    """What the invoice lines of one usage month and service hold, summed over every close
    that billed or adjusted it."""

    model_config = ConfigDict(frozen=True)

    packages: int
    amount: Decimal
    plan_version: str
    lines: int


class Rerated(BaseModel):
    """One tenant's service in a closed month: the lines billed beside the same usage rated
    with another plan. Quantities are in the service's billing unit."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    service: Service
    usage: Decimal
    unit: str
    users: int
    band: int
    included: Decimal
    packages: int
    amount: Decimal
    plan_version: str | None
    rerated_band: int
    rerated_included: Decimal
    rerated_packages: int
    rerated_amount: Decimal
    rerated_plan_version: str
    difference: Decimal
    currency: str


def plan_problems(live: Plan, other: Plan, month: str) -> list[str]:
    """Why `other` cannot re-rate `month` beside `live` (nothing: it can). Another billing
    time zone would move events between months, another currency make differences
    meaningless."""
    problems: list[str] = []
    version = other.version_for(month)
    if version is None:
        problems.append(f"the plan has no version in force for {month}")
    if other.zone.key != live.zone.key:
        problems.append(
            f"billing_timezone {other.zone.key} differs from the live plan's {live.zone.key}: "
            "months would hold other events"
        )
    live_version = live.version_for(month)
    if version and live_version and version.currency != live_version.currency:
        problems.append(
            f"currency {version.currency} differs from the live plan's {live_version.currency}"
        )
    return problems


def rerate(
    state: TenantState, month: str, billed: dict[Service, Billed], plan: Plan, live: Plan
) -> list[Rerated]:
    """Every service of `month` that is billed (`billed`, from the invoice lines) or would be
    under `plan`, beside what `live` rates the same usage at: its band and included amount."""
    rows: list[Rerated] = []
    used = state.usage.get(month, {})
    for service in sorted(set(used) | set(billed)):
        current = rate_month(state, month, service, live)
        new = rate_month(state, month, service, plan)
        lines = billed.get(service)
        if lines is None and new.packages == 0:
            continue  # nothing billed, nothing would be
        amount = lines.amount if lines else ZERO
        rows.append(
            Rerated(
                tenant=state.tenant,
                service=service,
                usage=current.in_units(current.usage),
                unit=current.unit,
                users=current.users,
                band=current.band,
                included=current.in_units(current.included),
                packages=lines.packages if lines else 0,
                amount=amount,
                plan_version=lines.plan_version if lines else None,
                rerated_band=new.band,
                rerated_included=new.in_units(new.included),
                rerated_packages=new.packages,
                rerated_amount=new.amount,
                rerated_plan_version=new.plan_version,
                difference=new.amount - amount,
                currency=new.currency,
            )
        )
    return rows


def preview(state: TenantState, month: str, plan: Plan) -> list[InvoiceLine]:
    """The lines closing `month` would emit for this tenant now: its overages, and an
    adjustment for every closed month whose amount changed since it was billed (pending:
    the next close emits them). Nothing for a month already closed."""
    return close_month(state, month, PREVIEW_CLOSE, plan)[1]


def preview_month(now: dt.datetime, plan: Plan, closed: list[str]) -> str:
    """The month the next close bills, as the automatic close picks it: last month (in the
    plan's zone) while it is not closed, then the month of `now`."""
    current = month_of(now, plan.zone)
    last = previous_month(current)
    return current if last in closed else last
