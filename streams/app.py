"""The Faust worker: a forwarder that merges licence records into the usage log, and one
agent over the usage log that holds four tables of state.

The agents only decode records, call `projections.batch.fold_batch` and write what it
returns; every decision lives in the pure folds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from typing import Any, cast

import faust
from prometheus_client import CollectorRegistry

from billing.plan import Plan
from metering.settings import Settings
from observability.exposition import RebalanceSensor, serve
from observability.metrics import WorkerMetrics
from projections.batch import BatchResult, fold_batch
from projections.decode import check_system_event, decode
from projections.events import Position
from projections.months import auto_close_due
from streams.commands import request_close
from streams.faust_fixes import App
from streams.outputs import Outputs, load_emitted
from streams.state import TableState

log = logging.getLogger("metering.worker")

TABLES = ("tenants", "seen", "barriers", "partitions")
FORWARDED_FROM = "metering-forwarded-from"


def position_of(message: Any) -> Position:
    """Where a record sits; a forwarded licence record also names the topic it came from."""
    origin = None
    headers = message.headers or ()
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == FORWARDED_FROM and value:
            origin = bytes(value).decode().rsplit("/", 2)[0]
    return Position(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        log_time=dt.datetime.fromtimestamp(message.timestamp, dt.UTC),
        origin=origin,
    )


def _credentials(settings: Settings) -> Any:
    options = settings.kafka_options()
    if settings.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=options.get("sasl_plain_username"),
            password=options.get("sasl_plain_password"),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if "ssl_context" in options:
        return faust.SSLCredentials(options["ssl_context"])
    return None


def create_app(settings: Settings, plan: Plan) -> faust.App:
    """Build the worker app; nothing connects until the app is started."""
    topics = settings.topics
    app = App(
        settings.app_id,
        broker=[f"kafka://{hp}" for hp in settings.bootstrap().split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        # Faust's default data dir is relative to the working directory.
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # Faust's 60 s default leaves a killed worker's partitions idle for a minute.
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
    )
    tables = [
        # bytes in, bytes out: the raw codec, and we encode state with pydantic ourselves
        app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
        for name in TABLES
    ]
    state = TableState(*tables)
    metrics = WorkerMetrics(CollectorRegistry())
    app.sensors.add(RebalanceSensor(metrics))
    usage_topic = app.topic(topics.usage, key_serializer="raw", value_serializer="raw")
    licences_topic = app.topic(topics.licenses, key_serializer="raw", value_serializer="raw")
    system_topic = app.topic(topics.system, key_serializer="raw", value_serializer="raw")
    out = {
        name: app.topic(topic, key_serializer="raw", value_serializer="raw")
        for name, topic in (
            ("crossings", topics.crossings),
            ("lines", topics.lines),
            ("closes", topics.closes),
            ("dead_letters", topics.dead_letters),
        )
    }
    barrier_topics = frozenset(topics.inputs)
    outputs_ready: asyncio.Task[Outputs] | None = None

    async def shared_outputs() -> Outputs:
        # Both agents send through one Outputs, so the ids already in the output topics are
        # read once at start, and an id sent by one agent is known to the other.
        nonlocal outputs_ready
        failed = (
            outputs_ready is not None
            and outputs_ready.done()
            and (outputs_ready.cancelled() or outputs_ready.exception() is not None)
        )
        if outputs_ready is None or failed:  # a failed load is tried again on agent restart
            outputs_ready = asyncio.ensure_future(_outputs())
        return await asyncio.shield(outputs_ready)

    async def _outputs() -> Outputs:
        return Outputs(out, await load_emitted(settings))

    @app.agent(licences_topic, name="forward")
    async def forward(stream: Any) -> None:
        # Licence records are copied into the same partition of the usage topic, so that one
        # partition's order decides which seats a usage event is rated with, live and on
        # replay alike. Everything copied is idempotent to apply, so a copy made twice (a
        # restart, a replay) changes nothing.
        async for events in stream.take_events(settings.batch_size, settings.batch_within):
            metrics.received.labels(topics.licenses).inc(len(events))
            for event in events:
                message = event.message
                origin = f"{message.topic}/{message.partition}/{message.offset}".encode()
                await usage_topic.send(
                    key=message.key,
                    value=message.value,
                    partition=message.partition,
                    headers=[(FORWARDED_FROM, origin)],
                )

    @app.agent(system_topic, name="system-events")
    async def system_events(stream: Any) -> None:
        # System events carry no billing state (the read model keeps their list); the worker
        # only makes sure that none it could not read goes unnoticed: each is dead-lettered.
        outputs = await shared_outputs()
        async for events in stream.take_events(settings.batch_size, settings.batch_within):
            letters = [
                letter
                for event in events
                if (letter := check_system_event(event.message.value, position_of(event.message)))
            ]
            metrics.dead_lettered([letter.reason for letter in letters])
            metrics.received.labels(topics.system).inc(len(events))
            if letters:
                await outputs.send(BatchResult(dead_letters=letters))

    @app.agent(usage_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        outputs = await shared_outputs()
        async for events in stream.take_events(settings.batch_size, settings.batch_within):
            decoded = [
                decode(event.message.value, position_of(event.message), plan) for event in events
            ]
            try:
                result = fold_batch(decoded, state, plan, barrier_topics)
                await outputs.send(result)  # acknowledged before the state that implies them
                state.write(result)
            except Exception:
                metrics.errors.labels("ingest").inc()
                raise
            metrics.observe(topics.usage, decoded, result, dt.datetime.now(dt.UTC))
            if result.closes:
                log.info("closed %s", ", ".join(f"{c.month} p{c.partition}" for c in result.closes))

    grace = settings.auto_close_grace
    if grace is not None:
        requested: set[str] = set()

        async def auto_close() -> None:
            month = auto_close_due(dt.datetime.now(dt.UTC), grace, plan.zone)
            if month is None or month in requested:
                return
            # A deterministic id: every worker and restart asks for the same close, which
            # takes effect once per partition however often it is written.
            await request_close(settings, month, f"auto-{month}", "auto-close")
            requested.add(month)
            log.info("requested automatic close of %s", month)

        app.timer(interval=settings.auto_close_check, on_leader=True)(auto_close)

    async def start_metrics_and_announce() -> None:
        url = serve(metrics.registry, settings.metrics_host, settings.metrics_port)
        log.info("metrics at %s", url)
        if settings.ready_file is not None:
            await cast(Any, app.tables).recovery.completed.wait()
            settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready = {"ready": str(uuid.uuid4()), "metrics_url": url}
            settings.ready_file.write_text(json.dumps(ready) + "\n")

    app.task(start_metrics_and_announce)

    return app


def run_worker(settings: Settings, plan: Plan) -> None:
    """Run the worker in the foreground until SIGINT or SIGTERM."""
    app = create_app(settings, plan)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's terminal spinner lowers the root logger to DEBUG so that every record spins it;
    # every aiokafka send then builds a log record (7 % of the worker's CPU when profiled).
    worker.spinner = None
    worker.execute_from_commandline()
