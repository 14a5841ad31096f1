"""Invoices: a month's invoice lines, as JSON with their total or as CSV.

Finance reads every tenant's lines; a tenant key only its own. The read first waits,
boundedly, for the pipeline to catch up."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.auth import require
from api.deps import Caller, Service, caller, fresh
from api.responses import csv_response, json_response, month_param
from readmodel import queries

router = APIRouter(dependencies=[Depends(caller)])


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
