"""Finance only: the audit of a month against the raw events, the re-rating of a closed month
against another plan, and read-only SQL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.deps import Caller, Service, fresh
from api.finance_sql import TIMED_OUT, Busy, FinanceSql, Stopped, Unavailable
from api.finance_sql import runner as finance_runner
from api.responses import json_response, month_param
from billing.plan import PlanError, loads_plan
from readmodel import queries, whatif


def finance(principal: Caller) -> Principal:
    require(principal, "finance")
    return principal


router = APIRouter(dependencies=[Depends(finance)])


class SqlRequest(BaseModel):
    sql: str


class RerateRequest(BaseModel):
    month: str
    plan: str = Field(description="The plan file's text (TOML), validated like the live one.")


@router.get("/v1/audit/{month}")
async def audit(month: str, request: Request, service: Service) -> Response:
    month = month_param(month)
    await fresh(request)
    try:
        diffs = await service.read(queries.audit, month, service.settings.topics.usage)
    except queries.QueryError as exc:
        raise HTTPException(409, str(exc)) from None
    return json_response({"usage_month": month, "differences": diffs})


@router.post("/v1/rerate")
async def rerate(body: RerateRequest, request: Request, service: Service) -> Response:
    """The closed month's usage rated with another plan beside its invoice lines, per tenant
    and service, with totals. Writes nothing. 422 names every problem of the plan; 409 when
    the month is not closed or the plan cannot rate it."""
    month = month_param(body.month)
    try:
        plan = loads_plan(body.plan, service.plan.catalog)
    except PlanError as exc:
        raise HTTPException(422, exc.problems) from None
    await fresh(request)
    try:
        answer = await service.read(
            whatif.rerate, month, plan, service.plan, service.settings.topics.usage
        )
    except queries.QueryError as exc:
        raise HTTPException(409, str(exc)) from None
    return json_response(answer)


@router.post("/v1/sql")
async def sql(
    body: SqlRequest,
    request: Request,
    service: Service,
    runner: Annotated[FinanceSql, Depends(finance_runner)],
    consistent: bool = True,
) -> Response:
    """One SELECT (or plain EXPLAIN of one), read-only, on a connection that cannot write,
    reach files or the network, or change settings (readmodel/README.md)."""
    if consistent:
        await fresh(request)
    try:
        answer = await runner.run(service, body.sql, request)
    except queries.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    except Busy as busy:
        raise HTTPException(
            429,
            f"{service.settings.sql_concurrency} finance queries are running already; "
            f"try again in {busy.retry_after}s",
            headers={"Retry-After": str(busy.retry_after)},
        ) from None
    except Stopped as stopped:
        if stopped.reason != TIMED_OUT:  # nobody is listening any more
            return Response(status_code=499)
        raise HTTPException(
            504,
            f"the query ran longer than METERING_SQL_TIMEOUT ({runner.timeout:g}s) and was "
            "stopped; narrow it down (WHERE, LIMIT) or ask for a longer timeout",
        ) from None
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from None
    return json_response(
        {"columns": answer.columns, "rows": answer.rows, "truncated": answer.truncated}
    )
