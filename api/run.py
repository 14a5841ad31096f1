"""`metering projector`: the process that owns the DuckDB file, projects the topics into it
and serves its queries over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json

import uvicorn

from api.app import create_api
from api.metrics import keep_fresh
from api.service import ReadModelService
from billing.plan import Plan
from metering.settings import Settings


class ProjectorStopped(RuntimeError):
    """The projector met an error it could not set aside; the API stopped with it."""


async def serve(settings: Settings, plan: Plan) -> None:
    service = ReadModelService(settings, plan)
    await service.start()
    app = create_api(service)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
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
    try:
        asyncio.run(serve(settings, plan))
    except ProjectorStopped as stopped:
        raise SystemExit(str(stopped)) from None
