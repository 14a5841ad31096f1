"""HTTP over the read model (DESIGN.md section 5): invoices, usage, crossings, finance SQL and
the audit. Every read first waits, boundedly, for the workers and the projector to catch up.
Money leaves as strings, never as floats."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api.auth import Principal, authenticate, presented_key, require, require_tenant
from api.ingest import BatchRejected, Ingestor
from api.metrics import instrument
from api.service import ReadModelService
from projections.months import months_until, parse_month
from projections.readmodel import queries
from schemas.envelope import CloudEvent
from streams.kafka import broker_answers
from streams.progress import NotCaughtUp
from web.routes import register as register_web


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def json_response(body: Any, status: int = 200) -> Response:
    try:
        content = orjson.dumps(body, default=_default)
    except orjson.JSONEncodeError:
        # orjson writes integers of at most 64 bits; usage and packages (HUGEINT) may be more.
        content = json.dumps(body, default=_default, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json")


def csv_response(rows: list[dict[str, Any]]) -> Response:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv(v) for k, v in row.items()})
    return Response(buffer.getvalue(), media_type="text/csv")


def _csv(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _month(value: str) -> str:
    try:
        return parse_month(value)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


class SqlRequest(BaseModel):
    sql: str


class ReplaceRequest(BaseModel):
    path: str


def create_api(service: ReadModelService) -> FastAPI:
    app = FastAPI(title="metering read model", version="0.1.0")
    wait = service.settings.query_timeout
    keys = service.settings.api_keys

    def who(request: Request) -> Principal:
        return authenticate(keys, presented_key(request))

    caller = Depends(who)

    async def fresh() -> None:
        try:
            await service.caught_up(wait)
        except NotCaughtUp as exc:
            raise HTTPException(503, str(exc)) from None
        except (KafkaError, OSError) as exc:  # the broker is away: unavailable, not broken
            raise HTTPException(503, f"the broker is unreachable: {exc!r}") from None

    ingestor = Ingestor(service.settings, service.plan)
    app.state.ingestor = ingestor

    event_schema = CloudEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    ingest_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/cloudevents+json": {"schema": event_schema},
                "application/cloudevents-batch+json": {
                    "schema": {"type": "array", "items": event_schema}
                },
            },
        }
    }

    @app.post("/v1/events", status_code=202, openapi_extra=ingest_body)
    async def ingest(request: Request, principal: Principal = caller) -> Response:
        """One CloudEvent (application/cloudevents+json) or a batch
        (application/cloudevents-batch+json); all or nothing, 202 once the broker has them."""
        require(principal, "producer")
        try:
            accepted = await ingestor.ingest(await ingestor.events(request))
        except BatchRejected as rejected:
            return json_response(rejected.body, 400)
        return json_response({"accepted": accepted}, 202)

    @app.get("/healthz")
    async def healthz() -> Response:
        """Alive unless the projector stopped (the process is then about to exit)."""
        error = service.failed()
        if error is not None:
            return json_response({"status": "projector stopped", "error": repr(error)}, 503)
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready when the read model is open and projecting, and the broker answers."""
        error = service.failed()
        if error is not None or service.projector is None:
            return json_response({"status": "not ready", "error": repr(error)}, 503)
        try:
            await asyncio.wait_for(broker_answers(service.settings), timeout=5)
        except (KafkaError, TimeoutError, OSError) as exc:
            return json_response({"status": "not ready", "error": f"broker: {exc!r}"}, 503)
        return json_response({"status": "ready", "rows_written": service.projector.rows_written})

    @app.get("/v1/invoices/{month}")
    async def invoice(month: str, request: Request, principal: Principal = caller) -> Response:
        require(principal, "finance", "tenant")
        month = _month(month)
        await fresh()
        lines = await service.read(queries.invoice_lines, month)
        if principal.role == "tenant":
            lines = [line for line in lines if line["tenant"] == principal.tenant]
        if "text/csv" in request.headers.get("accept", ""):
            return csv_response(lines)
        total = sum((Decimal(line["amount"]) for line in lines), Decimal("0.00"))
        return json_response({"invoice_month": month, "lines": lines, "total": total})

    @app.get("/v1/tenants/{tenant}/usage")
    async def usage(
        tenant: str, month: str = Query(...), principal: Principal = caller
    ) -> Response:
        require_tenant(principal, tenant)
        month = _month(month)
        await fresh()
        rows = await service.read(queries.usage, tenant, month)
        if not rows:
            raise HTTPException(404, f"no usage of tenant {tenant!r} in {month}")
        return json_response({"tenant": tenant, "month": month, "services": rows})

    @app.get("/v1/tenants/{tenant}/usage/history")
    async def usage_history(
        tenant: str, until: str = Query(...), months: int = Query(12, ge=1, le=120),
        principal: Principal = caller,
    ) -> Response:  # fmt: skip
        """Usage per month and service for the `months` months up to `until`."""
        require_tenant(principal, tenant)
        last = _month(until)
        first = months_until(last, months)[0]
        await fresh()
        rows = await service.read(queries.usage_history, tenant, first, last)
        return json_response({"tenant": tenant, "from": first, "until": last, "months": rows})

    @app.get("/v1/tenants/{tenant}/licenses")
    async def tenant_licences(tenant: str, principal: Principal = caller) -> Response:
        require_tenant(principal, tenant)
        await fresh()
        found = await service.read(queries.licences, tenant)
        if found is None:
            raise HTTPException(404, f"no tenant {tenant!r}")
        return json_response(found)

    @app.get("/v1/tenants/{tenant}/system-events")
    async def tenant_system_events(
        tenant: str, status: str | None = None, principal: Principal = caller
    ) -> Response:
        require_tenant(principal, tenant)
        await fresh()
        rows = await service.read(queries.system_events, tenant, status)
        return json_response({"tenant": tenant, "events": rows})

    @app.get("/v1/threshold-crossings")
    async def crossings(
        month: str = Query(...), tenant: str | None = None, principal: Principal = caller
    ) -> Response:
        require(principal, "finance", "tenant")
        if principal.role == "tenant":
            require_tenant(principal, tenant or str(principal.tenant))
            tenant = principal.tenant
        month = _month(month)
        await fresh()
        rows = await service.read(queries.crossings, month, tenant)
        return json_response({"usage_month": month, "crossings": rows})

    @app.get("/v1/audit/{month}")
    async def audit(month: str, principal: Principal = caller) -> Response:
        require(principal, "finance")
        month = _month(month)
        await fresh()
        try:
            diffs = await service.read(queries.audit, month, service.settings.topics.usage)
        except queries.QueryError as exc:
            raise HTTPException(409, str(exc)) from None
        return json_response({"usage_month": month, "differences": diffs})

    @app.post("/v1/sql")
    async def sql(
        body: SqlRequest, consistent: bool = True, principal: Principal = caller
    ) -> Response:
        require(principal, "finance")
        if consistent:
            await fresh()
        try:
            columns, rows = await service.read(queries.read_only_sql, body.sql)
        except queries.QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        return json_response({"columns": columns, "rows": rows})

    @app.post("/v1/admin/replace")
    async def replace(body: ReplaceRequest, principal: Principal = caller) -> Response:
        require(principal, "finance")
        try:
            return json_response(await service.replace(Path(body.path)))
        except FileNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None

    register_web(app, service, fresh)
    instrument(app, service.metrics)
    return app
