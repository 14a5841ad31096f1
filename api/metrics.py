"""Metrics of the read-model process: `/metrics`, HTTP counts by route template, and a loop
that refreshes consumer lag and the gauges read from the model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import duckdb
from aiokafka.errors import KafkaError
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import service_of
from api.service import ReadModelService
from observability.access import CHALLENGE, REFUSALS, scrape_status
from observability.figures import figures, windows
from observability.metrics import ReadModelMetrics
from projections.months import month_of
from readmodel import queries
from runtime.clock import Clock, system_clock

log = logging.getLogger("metering.api.metrics")
# A client may send any method name; only these become label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def instrument(app: FastAPI, metrics: ReadModelMetrics) -> None:
    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # The route's template, never the raw path: ids in paths would be unbounded labels.
            route = getattr(request.scope.get("route"), "path", None) or "unmatched"
            method = request.method if request.method in METHODS else "other"
            metrics.http.labels(route, method, str(status)).inc()
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)

    @app.get("/metrics", include_in_schema=False)
    async def exposition(request: Request) -> Response:
        # Revenue and usage are in here: with keys configured, only a metrics key may look.
        keys = service_of(request).settings.api_keys
        status = scrape_status(keys, request.headers.get("authorization"))
        if status in REFUSALS:
            challenge = CHALLENGE if status is HTTPStatus.UNAUTHORIZED else None
            raise HTTPException(status, REFUSALS[status], headers=challenge)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def refresh(
    service: ReadModelService, metrics: ReadModelMetrics, clock: Clock = system_clock
) -> None:
    settings = service.settings
    projector = service.projector
    if projector is None:
        return
    stored = await asyncio.to_thread(projector.offsets)
    ends = await service.probe.end_offsets(*projector.tables)
    worker_topics = (settings.topics.usage, settings.topics.licenses, settings.topics.system)
    worker_tps = [tp for tp in ends if tp.topic in worker_topics]
    committed = await service.probe.committed(settings.app_id, worker_tps)
    for tp, end in ends.items():
        partition = str(tp.partition)
        metrics.offset.labels(tp.topic, partition).set(stored.get(tp, 0))
        metrics.consumer_lag.labels("projector", tp.topic, partition).set(
            max(0, end - stored.get(tp, 0))
        )
        if tp.topic in worker_topics:
            metrics.consumer_lag.labels("worker", tp.topic, partition).set(
                max(0, end - committed.get(tp, 0))
            )
    zone = service.plan.zone
    current = month_of(clock(), zone)

    def read(cur: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        closed = queries.closed_months(cur)
        return {"closed": closed, **queries.metric_rows(cur, *windows(current, closed))}

    rows = await service.read(read)
    metrics.set_figures(
        figures(rows, current, settings.metrics_tenant_top, settings.auto_close_grace, zone)
    )


async def keep_fresh(
    service: ReadModelService, metrics: ReadModelMetrics, clock: Clock = system_clock
) -> None:
    """Refresh every `METERING_METRICS_REFRESH` seconds until cancelled; a failed round (the
    broker away, the model being replaced) is logged and tried again, never fatal."""
    while True:
        started = time.monotonic()
        with contextlib.suppress(asyncio.TimeoutError):
            try:
                await asyncio.wait_for(
                    refresh(service, metrics, clock), service.settings.metrics_refresh * 4
                )
            except (KafkaError, OSError, RuntimeError, duckdb.Error) as exc:
                log.warning("metrics refresh failed: %r", exc)
        # A round summarises the read model; on a large archive it takes seconds, and the
        # projector must keep most of the CPU: never spend more than a tenth of the time here.
        spent = time.monotonic() - started
        await asyncio.sleep(max(service.settings.metrics_refresh, 10 * spent))
