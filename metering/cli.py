"""`metering`: run the local stack and workers, send events, close months, query results."""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, get_args

import click
import orjson

from metering.cli_common import cli_plan, cli_settings, month_callback, run_async
from projections.months import month_of, next_month, previous_month
from runtime.clock import Clock, system_clock
from runtime.settings import Role

T = TypeVar("T")
# "Now" for the defaults and checks that depend on the day (a test may replace it).
clock: Clock = system_clock


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Usage metering: CloudEvents through Kafka into monthly usage, threshold crossings and
    invoice lines.

    Settings come from METERING_* environment variables (see README). Without
    METERING_KAFKA_BOOTSTRAP every command uses the local stack of METERING_DATA_DIR
    (default ./.metering), started with `metering up`.
    """


@main.command()
@click.option("--detach", is_flag=True, help="Start in the background; return once ready.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes in the consumer group; they split the partitions "
    "(at most METERING_PARTITIONS).",
)
def up(detach: bool, workers: int) -> None:
    """Run the local stack: a Kafka broker (KRaft), the topics, the workers and the read
    model (projector and API).

    In the foreground until Ctrl-C; with --detach it returns once topics exist and every
    worker has its partitions, and `metering down` stops it.
    """
    from metering.stack import StackError, run_stack, start_detached

    settings = cli_settings()
    cli_plan(settings)  # a bad plan fails here, not in the background
    if workers > settings.partitions:
        raise click.BadParameter(
            f"{workers} workers for {settings.partitions} partitions: "
            f"{workers - settings.partitions} would hold none (raise METERING_PARTITIONS)",
            param_hint="--workers",
        )
    try:
        if detach:
            record = start_detached(settings, workers=workers)
            click.echo(
                f"stack ready: Kafka at {record['bootstrap']}, read model API at "
                f"{record['api_url']}, data in {settings.data_dir}\n"
                f"tenants' Licences pages: {record['api_url']}/ui"
            )
            return
        run_stack(
            settings,
            on_ready=lambda b: click.echo(f"stack ready: Kafka at {b}; Ctrl-C stops it"),
            workers=workers,
        )
        click.echo("stack stopped")
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def down() -> None:
    """Stop the local stack of this data dir and every process it started."""
    from metering.stack import stop_stack

    settings = cli_settings()
    if stop_stack(settings):
        click.echo(f"stack in {settings.data_dir} stopped")
    else:
        click.echo(f"no stack runs in {settings.data_dir}")


@main.command()
def worker() -> None:
    """Run one stream worker in the foreground (what a cluster or docker-compose runs)."""
    from streams.kafka import ensure_topics
    from streams.worker import run_worker

    settings = cli_settings()
    plan = cli_plan(settings)
    run_async(ensure_topics(settings))
    run_worker(settings, plan)


@main.command()
def projector() -> None:
    """Run the read model: project every topic into DuckDB and serve its queries over HTTP.

    The file is METERING_DUCKDB_PATH (default <data dir>/metering.duckdb); the API listens
    on METERING_API_HOST:METERING_API_PORT (port 0: a free one, printed at start).
    """
    from server.run import run_projector

    settings = cli_settings()
    run_projector(settings, cli_plan(settings))


@main.command()
def notifier() -> None:
    """Run the notifier in the foreground: signed webhooks for threshold crossings and closed
    invoices to every subscription that wants them (`POST /v1/webhooks`), retried for 24 hours.

    A Faust app in the consumer group `<METERING_APP_ID>-notifier`; its metrics are served
    like a worker's (METERING_METRICS_HOST:METERING_METRICS_PORT)."""
    from notify.run import run_notifier
    from streams.kafka import ensure_topics

    settings = cli_settings()
    run_async(ensure_topics(settings))
    run_notifier(settings)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def send(file: Path) -> None:
    """Publish a JSONL FILE of CloudEvents, each to the topic of its type.

    metering.* go to usage-events, licensing.* to licenses, system.* to system-events. A line
    that cannot be routed goes to dead-letters and is reported with its number; the exit
    status is then 1.
    """
    from rich.progress import Progress

    from metering.send import send_file

    settings = cli_settings()
    started = time.monotonic()
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"sending {file.name}", total=file.stat().st_size)
        report = run_async(send_file(settings, file, lambda n: progress.advance(task, n)))
    elapsed = time.monotonic() - started
    total = sum(report.sent.values())
    for number, reason in report.rejected:
        click.echo(f"{file}:{number}: rejected: {reason}", err=True)
    per_topic = ", ".join(f"{topic}: {n}" for topic, n in sorted(report.sent.items()))
    click.echo(
        f"sent {total} events ({per_topic or 'none'}) in {elapsed:.1f}s "
        f"({total / max(elapsed, 1e-9):,.0f}/s); rejected {len(report.rejected)} lines"
    )
    if report.rejected:
        sys.exit(1)


@main.command()
@click.argument("month", callback=month_callback)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for lines.")
@click.option("--force", is_flag=True, help="Close a month that has not ended yet.")
def close(month: str, timeout: float, force: bool) -> None:
    """Close usage MONTH (YYYY-MM) and print its invoice summary.

    The close travels through the log behind every event sent before it, and returns once
    every partition has produced its invoice lines (billed on the invoice of the next month).
    Closing a month twice changes nothing.
    """
    from streams.commands import request_close, wait_for_close

    settings = cli_settings()
    plan = cli_plan(settings)
    if not force and month >= month_of(clock(), plan.zone):
        raise click.ClickException(f"{month} has not ended yet; use --force to close it anyway")
    close_id = f"close-{month}-{uuid.uuid4().hex[:12]}"

    async def go() -> list[Any]:
        partitions = await request_close(settings, month, close_id, "cli")
        return await wait_for_close(settings, close_id, partitions, timeout)

    started = time.monotonic()
    acks = run_async(go())
    lines = sum(a.lines for a in acks)
    amount = sum((a.amount for a in acks), start=Decimal("0.00"))
    click.echo(
        f"closed {month} ({close_id}) in {time.monotonic() - started:.1f}s: {lines} invoice "
        f"lines on invoice {next_month(month)}, {sum(a.tenants for a in acks)} tenants, "
        f"total {amount:.2f}"
    )


@main.command()
@click.argument("month", callback=month_callback, required=False, default=None)
@click.option("--tenants", default=25, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--scale", default=1.0, show_default=True, help="Multiply per-tenant volumes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def generate(month: str | None, tenants: int, seed: int, scale: float, output: Path) -> None:
    """Write a generated month of usage (default: last month) as JSONL, for demos."""
    from metering.generate import generate_month

    month = month or previous_month(month_of(clock(), dt.UTC))
    catalog = cli_plan(cli_settings()).catalog  # METERING_SERVICES_FILE's services, if set
    count = 0
    with output.open("wb") as handle:
        for event in generate_month(month, tenants, seed, scale, catalog):
            handle.write(orjson.dumps(event) + b"\n")
            count += 1
    click.echo(f"wrote {count} events of {month} for {tenants} tenants to {output}")


@main.command()
@click.argument("role", type=click.Choice(list(get_args(Role))))
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="A tenant key: the tenant it reads (exactly one). A posting key: a tenant it may post "
    "for (repeatable; default any).",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="A posting key: a source it may post as (repeatable; default any).",
)
def key(role: str, tenants: tuple[str, ...], sources: tuple[str, ...]) -> None:
    """Make a new API key for ROLE: prints the key (give it to its user; it is shown once)
    and the entry for METERING_API_KEYS, which holds only its SHA-256.

    \b
    producer    posts usage events (metering.*) to POST /v1/events
    licensing   posts licence snapshots and tenant registrations (licensing.*)
    operations  posts system events (system.*)
    finance     reads everything: invoices, every tenant, audit, SQL
    tenant      reads its own tenant only (--tenant T)
    metrics     scrapes /metrics and nothing else

    The posting keys (producer, licensing, operations) may be limited with --source and
    --tenant, each repeatable: such a key posts only events of those sources and tenants
    (the CloudEvent's `source` and `subject`).
    """
    import json
    import secrets

    from api.auth import POSTERS, key_hash

    entry: dict[str, Any] = {"role": role}
    if role == "tenant":
        if len(tenants) != 1 or sources:
            raise click.UsageError("a tenant key reads one tenant: --tenant T, and no --source")
        entry["tenant"] = tenants[0]
    elif role in POSTERS:
        # Repeats are dropped, the order kept: the entry reads as it was asked for.
        entry |= {"sources": list(dict.fromkeys(sources))} if sources else {}
        entry |= {"tenants": list(dict.fromkeys(tenants))} if tenants else {}
    elif tenants or sources:
        raise click.UsageError(f"a {role} key takes neither --tenant nor --source")
    new = secrets.token_urlsafe(32)
    entry["sha256"] = key_hash(new)
    click.echo(f"key: {new}")
    click.echo(f"METERING_API_KEYS entry: {json.dumps(entry)}")


@main.command("prometheus-config")
@click.option("--interval", default="15s", show_default=True, help="Scrape and rule interval.")
@click.option(
    "--credentials-file",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True, path_type=Path),
    help="A file holding a metrics key (`metering key metrics`), which every job then sends "
    "as a bearer token. Needed when METERING_API_KEYS is set: every /metrics then answers "
    "only a metrics key.",
)
def prometheus_config(interval: str, credentials_file: Path | None) -> None:
    """Print a Prometheus configuration that scrapes the local stack's worker and read model,
    with the alert rules of ops/prometheus/rules (run: prometheus --config.file=FILE)."""
    import json

    from observability.prometheus_config import scrape_config

    settings = cli_settings()
    try:
        urls = json.loads(settings.stack_file.read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        raise click.ClickException(
            f"no local stack runs in {settings.data_dir} (start one with `metering up --detach`)"
        ) from None
    if settings.api_keys and credentials_file is None:
        # A warning only: this shell's settings need not be those the stack started with.
        click.echo(
            "warning: METERING_API_KEYS is set, so /metrics wants a metrics key: "
            "add --credentials-file FILE",
            err=True,
        )
    click.echo(scrape_config(urls, interval, credentials_file=credentials_file), nl=False)


def _register() -> None:
    from metering.finance_commands import COMMANDS as FINANCE
    from metering.query_commands import COMMANDS
    from metering.replay import replay

    for command in (*COMMANDS, *FINANCE, replay):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
