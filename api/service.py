"""The read-model service: runs the projector in the background of the API process and lets
requests read the same DuckDB file concurrently (each through its own cursor)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from prometheus_client import CollectorRegistry

from api.replace import Paths, ReplaceRefused, answer, check, expected_columns, swap, taken
from billing.plan import Plan
from observability.metrics import ReadModelMetrics
from runtime.settings import Settings
from streams.progress import NotCaughtUp, OffsetsProbe, behind
from streams.projector import Projector, table_of

T = TypeVar("T")
log = logging.getLogger("metering.api")


class ReadModelService:
    def __init__(
        self, settings: Settings, plan: Plan, metrics: ReadModelMetrics | None = None
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.metrics = metrics or ReadModelMetrics(CollectorRegistry())
        self.projector: Projector | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._answering: asyncio.Task[None] | None = None
        self.probe = OffsetsProbe(settings)

    @property
    def path(self) -> Path:
        return self.settings.duckdb_path or self.settings.data_dir / "metering.duckdb"

    async def start(self) -> None:
        if not self.probe.started:
            await self.probe.start()
        self.projector = await asyncio.to_thread(Projector, self.settings, self.plan, self.path)
        self.projector.on_written = self._count_rows
        self.projector.on_set_aside = self._count_set_aside
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.projector.run(self._stop), name="projector")
        if self._answering is None:
            self._answering = asyncio.create_task(self.answer_requests(), name="replace")

    def _count_rows(self, by_table: dict[str, int]) -> None:
        for table, rows in by_table.items():
            self.metrics.rows.labels(table).inc(rows)

    def _count_set_aside(self, table: str, reason: str) -> None:
        self.metrics.set_aside.labels(table, reason).inc()

    async def close(self) -> None:
        """Stop for good: the projector and the Kafka clients of the freshness probe."""
        if self._answering is not None:
            self._answering.cancel()
            await asyncio.wait([self._answering])
            self._answering = None
        await self.stop()
        await self.probe.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # a failed projector's error is `failed()`'s
        projector, self.projector = self.projector, None  # new reads: "being replaced"
        if projector is not None:
            # In a thread: closing waits for running reads to stop (they are interrupted).
            await asyncio.to_thread(projector.close)

    async def wait_failed(self) -> BaseException:
        """Return the error that stops the projector (never returns while it runs)."""
        while True:
            task = self._task
            if task is not None:
                # `wait`, not `await task`: the task's own error must come back as the
                # answer, not end this waiter (which then never told anyone).
                await asyncio.wait([task])
                error = self.failed()
                if error is not None:
                    return error
            await asyncio.sleep(0.5)

    def failed(self) -> BaseException | None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.projector is None:
            raise RuntimeError("the read model is not open")
        with self.projector.reader() as cur:
            yield cur

    async def read(self, query: Callable[..., T], *args: Any) -> T:
        """Run `query(cursor, *args)` in a thread: a long finance query must not stall the
        projector's fetch loop or other requests, which share this event loop."""

        def run() -> T:
            with self.cursor() as cur:
                return query(cur, *args)

        return await asyncio.to_thread(run)

    async def caught_up(self, wait_seconds: float) -> None:
        """Wait until the workers and then this projector have everything written before now."""
        deadline = time.monotonic() + wait_seconds
        await self.probe.wait_for_workers(wait_seconds)
        projector = self.projector
        if projector is None:
            raise NotCaughtUp("the read model is being replaced; try again")
        ends = await self.probe.end_offsets(*projector.tables)
        while (missing := behind(projector.offsets(), ends)) > 0:
            if error := self.failed():
                raise NotCaughtUp(f"the projector stopped: {error!r}")
            if time.monotonic() > deadline:
                raise NotCaughtUp(f"the read model is {missing} records behind the topics")
            await asyncio.sleep(0.05)

    async def replace(self) -> None:
        """Swap in the file `metering replay` rebuilt beside the live one and continue from its
        offsets, once it has been opened and checked; a refused file leaves the live one
        serving (raises ReplaceRefused with the problems)."""
        paths = Paths(self.path)
        expected = await asyncio.to_thread(
            expected_columns, self.plan, self.settings.topics.usage, self.settings.topics.system
        )
        projector = self.projector
        tables = projector.tables if projector is not None else table_of(self.settings)
        ends = await self.probe.end_offsets(*tables)
        problems = await asyncio.to_thread(check, paths.candidate, expected, ends)
        if problems:
            raise ReplaceRefused(problems)
        await self.stop()
        await asyncio.to_thread(swap, paths.candidate, self.path)
        await self.start()

    async def _replace_answering(self) -> list[str]:
        """Replace, and say what went wrong; whatever failed, a projector serves afterwards
        (the live file, reopened), or the process is told to stop (`failed()`)."""
        try:
            await self.replace()
            return []
        except ReplaceRefused as refused:
            log.warning("%s", refused)
            return refused.problems
        except Exception as exc:  # answered and logged, never the silent end of this task
            problem = f"the swap failed: {exc!r}"
        log.error("replacing the read model failed: %s", problem)
        if self.projector is None:
            try:
                await self.start()
            except Exception as exc:  # handed to the supervisor through `failed()`
                self._task = asyncio.create_task(_raise(exc), name="projector")
                problem += f"; the live file could not be reopened: {exc!r}"
        return [problem]

    async def answer_requests(self, every: float = 0.5) -> None:
        """Answer replace requests left in the data dir by `metering replay`, until cancelled."""
        paths = Paths(self.path)
        while True:
            request = await asyncio.to_thread(taken, paths)
            if request is not None:
                problems = await self._replace_answering()
                try:
                    await asyncio.to_thread(answer, paths, request, problems)
                except OSError as exc:  # the next request may be answered: keep listening
                    log.error("the answer to replace request %s was not written: %r", request, exc)
            await asyncio.sleep(every)


async def _raise(error: BaseException) -> None:
    """A task that ends with `error`: how a failure reaches `failed()` and the supervisor."""
    raise error
