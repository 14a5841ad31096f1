"""`/healthz` and `/readyz`: open to anyone, for supervisors and load balancers."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import Service
from api.responses import json_response
from streams.kafka import broker_answers

router = APIRouter()


@router.get("/healthz")
async def healthz(service: Service) -> Response:
    """Alive unless the projector stopped (the process is then about to exit)."""
    error = service.failed()
    if error is not None:
        return json_response({"status": "projector stopped", "error": repr(error)}, 503)
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(service: Service) -> Response:
    """Ready when the read model is open and projecting, and the broker answers."""
    error = service.failed()
    if error is not None or service.projector is None:
        return json_response({"status": "not ready", "error": repr(error)}, 503)
    try:
        await asyncio.wait_for(broker_answers(service.settings), timeout=5)
    except (KafkaError, TimeoutError, OSError) as exc:
        return json_response({"status": "not ready", "error": f"broker: {exc!r}"}, 503)
    return json_response({"status": "ready", "rows_written": service.projector.rows_written})
