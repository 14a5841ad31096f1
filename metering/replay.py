"""`metering replay`: rebuild the read model from the topics into a fresh file, then swap it in.

The running projector (if any) is asked, through a request file in the data dir, to check the
file and swap it in and continue from its offsets, so nothing written meanwhile is lost;
without one, the file is checked here and then replaces the live one. A file that fails the
check (tables, columns, offsets) is never swapped in; the live one keeps serving.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from api.replace import Paths, answered, ask, check, expected_columns, swap
from billing.plan import Plan
from metering.cli_common import cli_plan, cli_settings, run_async
from metering.client import ApiError, request
from runtime.settings import Settings, SettingsError
from streams.kafka import end_offsets
from streams.projector import Projector, table_of


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
    paths = Paths(live_path(settings))
    target = output or paths.candidate
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
        _ask_projector(paths)
    else:
        _swap_here(settings, plan, paths)
    click.echo(f"the read model {paths.live} is now the replayed one")


def _ask_projector(paths: Paths, timeout: float = 300) -> None:
    request = ask(paths)
    deadline = time.monotonic() + timeout
    while (found := answered(paths, request)) is None:
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"the projector did not answer the replace request within {timeout:.0f}s; "
                f"is it running with the data dir of {paths.live}?"
            )
        time.sleep(0.2)
    if not found["replaced"]:
        raise click.ClickException(_refusal(found["problems"]))


def _swap_here(settings: Settings, plan: Plan, paths: Paths) -> None:
    expected = expected_columns(plan, settings.topics.usage, settings.topics.system)
    ends = run_async(end_offsets(settings, tuple(table_of(settings))))
    problems = check(paths.candidate, expected, ends)
    if problems:
        raise click.ClickException(_refusal(problems))
    swap(paths.candidate, paths.live)


def _refusal(problems: list[str]) -> str:
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"the rebuilt read model was not swapped in; the live one keeps serving:\n{lines}"
