"""The read-model service: runs the projector in the background of the API process and lets
requests read the same DuckDB file concurrently (each through its own cursor)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from prometheus_client import CollectorRegistry

from billing.plan import Plan
from metering.settings import Settings
from observability.metrics import ReadModelMetrics
from projections.readmodel.projector import Projector
from streams.progress import NotCaughtUp, OffsetsProbe, behind

T = TypeVar("T")


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

    def _count_rows(self, by_table: dict[str, int]) -> None:
        for table, rows in by_table.items():
            self.metrics.rows.labels(table).inc(rows)

    def _count_set_aside(self, table: str, reason: str) -> None:
        self.metrics.set_aside.labels(table, reason).inc()

    async def close(self) -> None:
        """Stop for good: the projector and the Kafka clients of the freshness probe."""
        await self.stop()
        await self.probe.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # a failed projector's error is `failed()`'s
        if self.projector is not None:
            self.projector.close()
            self.projector = None

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

    async def replace(self, path: Path) -> dict[str, Any]:
        """Swap in a rebuilt file (from `metering replay`) and continue from its offsets."""
        if not await asyncio.to_thread(_beside, path, self.path):
            # Only a file rebuilt beside the live one: the API must not load arbitrary files.
            raise PermissionError(f"{path} is not in {self.path.parent}")
        if not await asyncio.to_thread(path.exists):
            raise FileNotFoundError(f"{path} does not exist")
        await self.stop()
        await asyncio.to_thread(_move, path, self.path)
        await self.start()
        return {"replaced": str(self.path)}


def _move(source: Path, target: Path) -> None:
    """Replace the read model file; a replayed file is closed, so it has no WAL to carry."""
    os.replace(source, target)
    target.with_name(target.name + ".wal").unlink(missing_ok=True)


def _beside(candidate: Path, live: Path) -> bool:
    return candidate.resolve().parent == live.resolve().parent
