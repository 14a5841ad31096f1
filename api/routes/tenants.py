"""Tenants: usage, usage history, licences, system events and threshold crossings.

A tenant key reads its own tenant only; another tenant's data answers 404, so that its
existence does not leak. Every read first waits, boundedly, for the pipeline to catch up."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from api.auth import require, require_tenant
from api.deps import Caller, Service, caller, fresh
from api.responses import json_response, month_param
from projections.months import months_until
from readmodel import queries

router = APIRouter(dependencies=[Depends(caller)])


@router.get("/v1/tenants/{tenant}/usage")
async def usage(
    tenant: str,
    request: Request,
    principal: Caller,
    service: Service,
    month: str = Query(...),
) -> Response:
    require_tenant(principal, tenant)
    month = month_param(month)
    await fresh(request)
    rows = await service.read(queries.usage, tenant, month)
    if not rows:
        raise HTTPException(404, f"no usage of tenant {tenant!r} in {month}")
    return json_response({"tenant": tenant, "month": month, "services": rows})


@router.get("/v1/tenants/{tenant}/usage/history")
async def usage_history(
    tenant: str,
    request: Request,
    principal: Caller,
    service: Service,
    until: str = Query(...),
    months: int = Query(12, ge=1, le=120),
) -> Response:
    """Usage per month and service for the `months` months up to `until`."""
    require_tenant(principal, tenant)
    last = month_param(until)
    first = months_until(last, months)[0]
    await fresh(request)
    rows = await service.read(queries.usage_history, tenant, first, last)
    return json_response({"tenant": tenant, "from": first, "until": last, "months": rows})


@router.get("/v1/tenants/{tenant}/licenses")
async def tenant_licences(
    tenant: str,
    request: Request,
    principal: Caller,
    service: Service,
) -> Response:
    require_tenant(principal, tenant)
    await fresh(request)
    found = await service.read(queries.licences, tenant)
    if found is None:
        raise HTTPException(404, f"no tenant {tenant!r}")
    return json_response(found)


@router.get("/v1/tenants/{tenant}/system-events")
async def tenant_system_events(
    tenant: str,
    request: Request,
    principal: Caller,
    service: Service,
    status: str | None = None,
) -> Response:
    require_tenant(principal, tenant)
    await fresh(request)
    rows = await service.read(queries.system_events, tenant, status)
    return json_response({"tenant": tenant, "events": rows})


@router.get("/v1/threshold-crossings")
async def crossings(
    request: Request,
    principal: Caller,
    service: Service,
    month: str = Query(...),
    tenant: str | None = None,
) -> Response:
    require(principal, "finance", "tenant")
    if principal.role == "tenant":
        require_tenant(principal, tenant or str(principal.tenant))
        tenant = principal.tenant
    month = month_param(month)
    await fresh(request)
    rows = await service.read(queries.crossings, month, tenant)
    return json_response({"usage_month": month, "crossings": rows})
