"""`metering projector`: the process that owns the DuckDB file, projects the topics into it
and serves its queries over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json

import uvicorn

from api.metrics import keep_fresh
from api.service import ReadModelService
from billing.plan import Plan
from runtime.collector import tune_collector
from runtime.settings import Settings
from server.app import create_app

# uvicorn's own bounds, below the app's body limits (api/limits.py). A request's line and
# headers must fit in 16 KiB (h11's default, set here so that it is a decision): h11 keeps an
# incomplete header block in memory, and a larger one is answered 400 before the app sees
# it. This also bounds a binary-mode event's ce-* attributes, which ingest counts towards
# METERING_INGEST_MAX_BYTES as well. The bound is h11's: the protocol is pinned to it, so
# that installing httptools (where this setting does not apply) does not lift it.
MAX_HEADER_BYTES = 16 << 10
# Open connections (idle keep-alive ones too) and requests in flight; past it, uvicorn
# answers 503 at once. What a client without a key can make the process hold is bounded
# per connection (its headers, uvicorn's read-ahead of a body, and what a route reads before
# it checks a key: at most METERING_SQL_MAX_BYTES or METERING_HTTP_MAX_BODY), so this
# bounds it in total.
MAX_CONNECTIONS = 512


class ProjectorStopped(RuntimeError):
    """The projector met an error it could not set aside; the API stopped with it."""


async def serve(settings: Settings, plan: Plan) -> None:
    service = ReadModelService(settings, plan)
    await service.start()
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
    )
    server = uvicorn.Server(config)
    ready = asyncio.create_task(_announce(server, settings))
    failure: list[BaseException] = []

    async def watch() -> None:
        # A projector that cannot write must not leave an API serving stale data forever:
        # stop the process so that its supervisor sees it and restarts it.
        failure.append(await service.wait_failed())
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    gauges = asyncio.create_task(keep_fresh(service, service.metrics), name="metrics")
    try:
        await server.serve()
    finally:
        ready.cancel()
        watcher.cancel()
        gauges.cancel()
        await app.state.ingestor.close()
        await service.close()
    if failure:
        raise ProjectorStopped(f"the projector failed: {failure[0]!r}")


async def _announce(server: uvicorn.Server, settings: Settings) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{settings.api_host}:{port}"
    print(f"read model API at {url}", flush=True)
    if settings.ready_file is not None:
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.write_text(json.dumps({"api_url": url}))


def run_projector(settings: Settings, plan: Plan) -> None:
    """Serve until stopped; a stopped projector ends the process with status 1, so that its
    supervisor (`metering up`, systemd, Kubernetes) restarts it."""
    tune_collector()
    try:
        asyncio.run(serve(settings, plan))
    except ProjectorStopped as stopped:
        raise SystemExit(str(stopped)) from None
