"""Finance SQL off the shared threads, a few at a time, each stopped when its time is up or
its client has gone.

Tenant reads, /ui and the projector's writes run on asyncio's default thread pool. A finance
query runs on a pool of its own with `sql_concurrency` threads: however heavy, it cannot take
their threads. A query that finds every slot taken is refused at once (429 with Retry-After,
the seconds until the soonest running query must end) rather than queued: a queue would only
hold the answer back past what the client waits for. A watchdog on the event loop interrupts
the query's cursor at `sql_timeout`, or as soon as the client disconnects; the slot is free
again only once DuckDB has let go of the thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb
from fastapi import Request

from api.service import ReadModelService
from readmodel import finance_sql
from readmodel.finance_sql import Answer
from readmodel.store import Closing
from runtime.settings import Settings

# How often the watchdog looks at the clock and the client. DuckDB forgets an interrupt that
# comes between two statements, so a stopped query is interrupted again every round.
POLL = 0.1
TIMED_OUT = "timed out"
CLIENT_GONE = "client gone"
CANCELLED = "cancelled"


class Busy(Exception):
    """Every slot is taken; try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"{retry_after}s")
        self.retry_after = retry_after


class Stopped(Exception):
    """The watchdog interrupted the query; `reason` is TIMED_OUT, CLIENT_GONE or CANCELLED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unavailable(Exception):
    """The read model is closed (being replaced, or the process is stopping)."""


class _Query:
    """One running query as its watchdog sees it: the cursor to interrupt, once it has one."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped: str | None = None
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()  # the cursor is never interrupted once closed

    def attach(self, cursor: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            if self.stopped is not None:
                raise Stopped(self.stopped)
            self._cursor = cursor

    def detach(self) -> None:
        with self._lock:
            self._cursor = None

    def stop(self, reason: str) -> None:
        with self._lock:
            self.stopped = self.stopped or reason
            if self._cursor is not None:
                self._cursor.interrupt()


class FinanceSql:
    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.sql_timeout
        self.max_rows = settings.sql_max_rows
        self._pool = ThreadPoolExecutor(settings.sql_concurrency, "finance-sql")
        self._slots = threading.BoundedSemaphore(settings.sql_concurrency)
        self._lock = threading.Lock()
        self._running: set[_Query] = set()
        self._watches: set[asyncio.Task[Answer]] = set()

    async def run(self, service: ReadModelService, sql: str, request: Request) -> Answer:
        """Run `sql` for `request`: Busy, Stopped, Unavailable or QueryError when it does not
        answer."""
        if not self._slots.acquire(blocking=False):
            raise Busy(self._retry_after())
        query = _Query(time.monotonic() + self.timeout)
        with self._lock:
            self._running.add(query)
        try:
            future = self._pool.submit(self._work, service, sql, query)
        except BaseException:
            self._release(query)
            raise
        watch = asyncio.create_task(self._watch(future, query, request), name="finance-sql")
        # The watch outlives a cancelled request: it keeps interrupting until the thread ends.
        self._watches.add(watch)
        watch.add_done_callback(self._forget)
        try:
            return await asyncio.shield(watch)
        except asyncio.CancelledError:
            query.stop(CANCELLED)
            raise

    def _forget(self, watch: asyncio.Task[Answer]) -> None:
        self._watches.discard(watch)
        if not watch.cancelled():
            watch.exception()  # retrieved: a request that was cancelled never reads it

    async def _watch(self, future: Future[Answer], query: _Query, request: Request) -> Answer:
        waited = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while not waited.done():
                reason = query.stopped
                if reason is None and time.monotonic() >= query.deadline:
                    reason = TIMED_OUT
                if reason is None and gone.done() and not gone.cancelled() and gone.result():
                    reason = CLIENT_GONE
                if reason is not None:
                    query.stop(reason)
                watched: set[asyncio.Future[Any]] = {waited} if gone.done() else {waited, gone}
                await asyncio.wait(watched, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waited.done():  # the loop is going away: one last interrupt
                query.stop(CANCELLED)
        try:
            return waited.result()
        except duckdb.InterruptException:
            raise Stopped(query.stopped or TIMED_OUT) from None

    def _work(self, service: ReadModelService, sql: str, query: _Query) -> Answer:
        try:
            projector = service.projector
            if projector is None:
                raise Unavailable("the read model is being replaced; try again")
            try:
                with projector.reader() as cur:
                    query.attach(cur)
                    try:
                        return finance_sql.run(cur, sql, self.max_rows)
                    finally:
                        query.detach()
            except (duckdb.ConnectionException, Closing) as exc:
                raise Unavailable(f"the read model closed: {exc}") from None
        finally:
            self._release(query)

    def _release(self, query: _Query) -> None:
        with self._lock:
            self._running.discard(query)
        self._slots.release()

    def _retry_after(self) -> int:
        with self._lock:
            soonest = min((q.deadline for q in self._running), default=time.monotonic())
        return max(1, math.ceil(soonest - time.monotonic()))


async def _disconnected(request: Request) -> bool:
    """Whether the client went away, once it has: the body is read, so the next ASGI message
    is the disconnect. (`Request.is_disconnected()` did not tell, behind the metrics
    middleware: its receive, run in an already cancelled scope, drops the message.)"""
    message = await request.receive()
    return bool(message["type"] == "http.disconnect")


def runner(request: Request) -> FinanceSql:
    """The app's runner: one pool and one set of slots per app (made by `create_api`)."""
    found: FinanceSql = request.app.state.finance_sql
    return found
