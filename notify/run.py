"""`metering notifier`: the notifier's process, in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import faust
from aiokafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from notify.app import Notifier, own_topics
from notify.signing import signing_key
from observability.exposition import serve
from runtime.clock import Clock, system_clock
from runtime.settings import Settings
from streams.kafka import admin_client, create_missing

log = logging.getLogger("metering.notifier")


async def ensure_own_topics(settings: Settings) -> None:
    async with admin_client(settings) as admin:
        wanted = [
            NewTopic(name, settings.partitions, 1, topic_configs=configs)
            for name, configs in own_topics(settings).items()
        ]
        await create_missing(admin, wanted)


def run_notifier(settings: Settings, clock: Clock = system_clock) -> None:
    asyncio.run(ensure_own_topics(settings))
    configured = settings.webhook_signing_key
    key = signing_key(configured.get_secret_value() if configured else None, settings.data_dir)
    registry = CollectorRegistry()
    notifier = Notifier(settings, key, registry, clock)
    url = serve(registry, settings.metrics_host, settings.metrics_port, settings.api_keys)

    async def announce() -> None:
        # Faust starts tasks once its consumer runs and the tables are recovered.
        log.info("metrics at %s", url)
        if settings.ready_file is not None:
            settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready = {"ready": str(uuid.uuid4()), "metrics_url": url}
            settings.ready_file.write_text(json.dumps(ready) + "\n")

    notifier.app.task(announce)
    worker = faust.Worker(notifier.app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
