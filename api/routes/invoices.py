"""Invoices: a month's invoice lines, as JSON with their total or as CSV, and the preview of
the next close.

Finance reads every tenant's lines; a tenant key only its own. The read first waits,
boundedly, for the pipeline to catch up."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.auth import require, require_tenant
from api.deps import Caller, Service, caller, fresh
from api.responses import csv_response, json_response, month_param
from readmodel import queries, whatif
from runtime.clock import Clock

router = APIRouter(dependencies=[Depends(caller)])


# Before `/v1/invoices/{month}`, which would otherwise take "preview" for a month.
@router.get("/v1/invoices/preview")
async def preview(
    request: Request,
    principal: Caller,
    service: Service,
    tenant: str | None = None,
    month: str | None = None,
) -> Response:
    """The lines closing `month` (default: the next close's month) would emit now, with the
    adjustments late events have caused for closed months, marked `pending`; nothing is
    written. A tenant key previews its own tenant only."""
    require(principal, "finance", "tenant")
    if principal.role == "tenant":
        tenant = tenant or principal.tenant
    if tenant is not None:
        require_tenant(principal, tenant)
    chosen = month_param(month) if month is not None else None
    await fresh(request)
    clock: Clock = request.app.state.clock
    body = await service.read(
        whatif.preview, service.plan, clock(), chosen, service.settings.topics.usage, tenant
    )
    if "text/csv" in request.headers.get("accept", ""):
        return csv_response(body["lines"])
    return json_response(body)


@router.get("/v1/invoices/{month}")
async def invoice(
    month: str,
    request: Request,
    principal: Caller,
    service: Service,
) -> Response:
    require(principal, "finance", "tenant")
    month = month_param(month)
    await fresh(request)
    lines = await service.read(queries.invoice_lines, month)
    if principal.role == "tenant":
        lines = [line for line in lines if line["tenant"] == principal.tenant]
    if "text/csv" in request.headers.get("accept", ""):
        return csv_response(lines)
    total = sum((Decimal(line["amount"]) for line in lines), Decimal("0.00"))
    return json_response({"invoice_month": month, "lines": lines, "total": total})
