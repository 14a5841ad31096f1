"""Finance only: the audit of a month against the raw events, and read-only SQL."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api.auth import Principal, require
from api.deps import Caller, Service, fresh
from api.responses import json_response, month_param
from projections.readmodel import queries


def finance(principal: Caller) -> Principal:
    require(principal, "finance")
    return principal


router = APIRouter(dependencies=[Depends(finance)])


class SqlRequest(BaseModel):
    sql: str


@router.get("/v1/audit/{month}")
async def audit(month: str, request: Request, service: Service) -> Response:
    month = month_param(month)
    await fresh(request)
    try:
        diffs = await service.read(queries.audit, month, service.settings.topics.usage)
    except queries.QueryError as exc:
        raise HTTPException(409, str(exc)) from None
    return json_response({"usage_month": month, "differences": diffs})


@router.post("/v1/sql")
async def sql(
    body: SqlRequest,
    request: Request,
    service: Service,
    consistent: bool = True,
) -> Response:
    if consistent:
        await fresh(request)
    try:
        columns, rows = await service.read(queries.read_only_sql, body.sql)
    except queries.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    return json_response({"columns": columns, "rows": rows})
