"""The read-model process's app: the HTTP API with the Licences page mounted beside it, behind
the same limits, headers and metrics."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from api.app import create_api
from api.deps import wait_fresh
from api.service import ReadModelService
from web.routes import register as register_web


def create_app(service: ReadModelService) -> FastAPI:
    async def fresh() -> None:
        await wait_fresh(service)

    return create_api(service, extra=[partial(register_web, service=service, fresh=fresh)])
