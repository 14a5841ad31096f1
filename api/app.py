"""The read-model process's HTTP API (the README's table): one router per area, mounted here.

Every read first waits, boundedly, for the workers and the projector to catch up. Money
leaves as strings, never as floats."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI

from api.finance_sql import FinanceSql
from api.headers import install_security_headers
from api.ingest import Ingestor
from api.limits import install_body_limits
from api.metrics import instrument
from api.routes import exports, finance, health, ingest, invoices, tenants, webhooks
from api.service import ReadModelService
from runtime.clock import Clock, system_clock


def create_api(
    service: ReadModelService,
    extra: Sequence[Callable[[FastAPI], None]] = (),
    clock: Clock = system_clock,
) -> FastAPI:
    """The API's routers, then what `extra` mounts (the page: see server.app), then the layers
    that wrap them all. `clock` is what a route that defaults to "this month" asks."""
    app = FastAPI(title="metering read model", version="0.1.0")
    app.state.service = service
    app.state.clock = clock
    app.state.ingestor = Ingestor(service.settings, service.plan)
    app.state.finance_sql = FinanceSql(service.settings)
    for area in (health, ingest, invoices, tenants, finance, exports, webhooks):
        app.include_router(area.router)
    for mount in extra:
        mount(app)

    # Middleware added later wraps what came before: the body limit is the outermost
    # add_middleware layer, so an oversized body is refused before metrics, routing or a key
    # are looked at. The headers layer wraps the whole built stack (Starlette's error layer
    # included), so every answer carries them; it reads nothing.
    instrument(app, service.metrics)
    install_security_headers(app, service.settings)
    install_body_limits(app, service.settings)
    return app
