"""FastAPI dependencies shared by the routers: the service, the caller, and freshness."""

from __future__ import annotations

from typing import Annotated

from aiokafka.errors import KafkaError
from fastapi import Depends, HTTPException, Request

from api.auth import Principal, authenticate, presented_key
from api.service import ReadModelService
from streams.progress import NotCaughtUp


def service_of(request: Request) -> ReadModelService:
    service: ReadModelService = request.app.state.service
    return service


def caller(request: Request) -> Principal:
    """The key's principal (401 without a known key, unless no keys are configured)."""
    return authenticate(service_of(request).settings.api_keys, presented_key(request))


async def wait_fresh(service: ReadModelService) -> None:
    """Wait, boundedly, until the workers and the projector have everything written before
    now: 503 with the reason when they do not catch up in time or the broker is away."""
    try:
        await service.caught_up(service.settings.query_timeout)
    except NotCaughtUp as exc:
        raise HTTPException(503, str(exc)) from None
    except (KafkaError, OSError) as exc:  # the broker is away: unavailable, not broken
        raise HTTPException(503, f"the broker is unreachable: {exc!r}") from None


async def fresh(request: Request) -> None:
    await wait_fresh(service_of(request))


# Parameter types for routes: `principal: Caller`, `service: Service`.
Caller = Annotated[Principal, Depends(caller)]
Service = Annotated[ReadModelService, Depends(service_of)]
