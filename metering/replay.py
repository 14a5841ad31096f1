"""`metering replay`: rebuild the read model from the topics into a fresh file, then swap it in.

The running projector (if any) is asked to swap the file and continue from its offsets, so
nothing written meanwhile is lost; without one, the file is simply replaced.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from metering.cli_common import call_api, cli_plan, cli_settings, run_async
from metering.client import ApiError, request
from metering.settings import Settings, SettingsError
from projections.readmodel.projector import Projector
from streams.kafka import end_offsets


def live_path(settings: Settings) -> Path:
    return settings.duckdb_path or settings.data_dir / "metering.duckdb"


def _api_running(settings: Settings) -> bool:
    try:
        request(settings, "GET", "/healthz")
    except (ApiError, SettingsError):
        return False
    return True


@click.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the rebuilt read model to this file and leave the live one alone.",
)
def replay(output: Path | None) -> None:
    """Rebuild the read model from the topics (from offset 0) into a fresh DuckDB file, with a
    progress bar, then swap it in for the live one."""
    settings = cli_settings()
    plan = cli_plan(settings)
    target = output or live_path(settings).with_suffix(".replay.duckdb")
    for leftover in (target, target.with_name(target.name + ".wal")):
        leftover.unlink(missing_ok=True)

    async def rebuild() -> int:
        projector = Projector(settings, plan, target)
        try:
            ends = await end_offsets(settings, tuple(projector.tables))
            columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
            with Progress(
                *columns, TimeRemainingColumn(), disable=not sys.stderr.isatty(), transient=True
            ) as progress:
                task = progress.add_task("replaying records", total=sum(ends.values()))
                await projector.run(
                    asyncio.Event(), until=ends, on_batch=lambda n: progress.advance(task, n)
                )
            return sum(ends.values())
        finally:
            projector.close()

    started = time.monotonic()
    records = run_async(rebuild())
    elapsed = time.monotonic() - started
    click.echo(
        f"replayed {records} records into {target} in {elapsed:.1f}s "
        f"({records / max(elapsed, 1e-9):,.0f} records/s)"
    )
    if output is not None:
        return
    if _api_running(settings):
        call_api(settings, "POST", "/v1/admin/replace", json={"path": str(target.resolve())})
    else:
        os.replace(target, live_path(settings))
    click.echo(f"the read model {live_path(settings)} is now the replayed one")
