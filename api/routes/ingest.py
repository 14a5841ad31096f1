"""`POST /v1/events`: CloudEvents in (see `api.ingest` for the rules)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.auth import POSTERS, require
from api.deps import Caller
from api.ingest import BatchRejected, Ingestor, OutOfScope
from api.responses import json_response
from schemas.envelope import CloudEvent

router = APIRouter()


def _ingest_body() -> dict[str, Any]:
    event_schema = CloudEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
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


def ingestor_of(request: Request) -> Ingestor:
    ingestor: Ingestor = request.app.state.ingestor
    return ingestor


@router.post("/v1/events", status_code=202, openapi_extra=_ingest_body())
async def ingest(
    request: Request,
    principal: Caller,
    ingestor: Annotated[Ingestor, Depends(ingestor_of)],
) -> Response:
    """One CloudEvent (application/cloudevents+json) or a batch
    (application/cloudevents-batch+json); all or nothing, 202 once the broker has them.
    A producer key posts usage events, a licensing key licence snapshots and registrations,
    an operations key system events; 403 names each event outside the key's scope."""
    require(principal, *POSTERS)
    try:
        accepted = await ingestor.ingest(await ingestor.events(request), principal)
    except OutOfScope as refused:
        return json_response(refused.body, 403)
    except BatchRejected as rejected:
        return json_response(rejected.body, 400)
    return json_response({"accepted": accepted}, 202)
