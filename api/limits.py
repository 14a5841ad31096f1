"""Request body limits, enforced before anything reads a body (issue 14, item 3).

`BodyLimit` is a plain ASGI middleware, installed as the outermost layer: it sees a request
before routing, metrics or a key are looked at, and it owns the `receive` every layer below
reads the body through. A body over its route's limit is answered 413 and the connection is
ended, so that the server neither keeps nor drains the rest:

- a declared `Content-Length` over the limit is refused at once, the app never called and
  not a byte of the body read (whatever the method: a GET may carry a body too);
- a body of unknown length (chunked) is counted as it is read, and reading stops at the
  first chunk past the limit. When the app answers before reading it (a 401 from a key
  check, a redirect), the rest is read first, counted and thrown away, so an oversized
  body is 413 on every route whatever the app would have said, and nothing is kept.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import anyio
import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.settings import Settings

log = logging.getLogger("metering.api.limits")
DISCONNECT: Message = {"type": "http.disconnect"}
# A Content-Length with more digits than this is over any limit; it is never converted, since
# Python refuses to turn very long digit strings into ints.
MAX_DIGITS = 18


@dataclass(frozen=True)
class Limit:
    size: int  # bytes
    setting: str  # the environment variable that sets it, named in the 413 for operators

    def detail(self) -> str:
        return f"the body is over {self.size} bytes (the limit set by {self.setting})"


class BadLength(ValueError):
    """A Content-Length that is not one non-negative decimal number."""


class BodyTooLarge(RuntimeError):
    """Raised to the server once the response has started: its only way to end the request
    (uvicorn closes the connection when an app raises after the response began)."""


def install_body_limits(app: FastAPI, settings: Settings) -> None:
    """The outermost middleware: `/v1/events` may have `ingest_max_bytes`, `/v1/sql`
    `sql_max_bytes`, every other path (known or not) `http_max_body`."""
    app.add_middleware(
        BodyLimit,
        default=_limit(settings, "http_max_body"),
        # Ingest counts a binary event's ce-* headers towards its limit as well, but never
        # accepts a body over it: at exactly `ingest_max_bytes` this guard refuses nothing
        # that ingest accepts, and ingest keeps its own finer checks (and messages) below it.
        routes={
            "/v1/events": _limit(settings, "ingest_max_bytes"),
            "/v1/sql": _limit(settings, "sql_max_bytes"),
        },
    )


def _limit(settings: Settings, field: str) -> Limit:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return Limit(int(getattr(settings, field)), f"{prefix}{field}".upper())


class BodyLimit:
    """Refuses request bodies over their path's limit with 413 (a malformed Content-Length
    with 400), before the wrapped app reads them."""

    def __init__(
        self, app: ASGIApp, *, default: Limit, routes: Mapping[str, Limit] | None = None
    ) -> None:
        self.app = app
        self.default = default
        self.routes = dict(routes or {})

    def limit_for(self, scope: Scope) -> Limit:
        # Routing matches the path below the server's root path; so must the limit, or a
        # root path would send every request to the default.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        return self.routes.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            declared = declared_length(headers)
        except BadLength as bad:
            await answer(send, 400, str(bad))
            return
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in headers)
        if chunked and declared is not None:
            # h11 lets Transfer-Encoding win, so the Content-Length would hide a chunked body
            # of any size from the checks below; RFC 9112 section 6.3 lets a server refuse.
            await answer(send, 400, "a request may not have both Content-Length and "
                         "Transfer-Encoding")  # fmt: skip
            return
        if declared is not None and declared > limit.size:
            await answer(send, 413, limit.detail())
            return
        guard = _Guard(receive, send, limit, unknown_length=chunked)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.over:
                raise
            # The app was told the client went away; whatever it made of that (a 400, an
            # exception) is moot once the 413 went out, and not worth an error in the log.
            log.debug("the app failed after its request body was refused", exc_info=True)
        if guard.over and guard.started and not guard.completed:
            raise BodyTooLarge(f"{limit.detail()}, found after the response had started")


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length, or None without one; raises BadLength for a malformed one (a
    list of equal values, "42, 42", is one value, as RFC 9110 allows)."""
    values = {
        part.strip()
        for name, value in headers
        if name.lower() == b"content-length"
        for part in value.split(b",")
    }
    if not values:
        return None
    if len(values) > 1 or not all(value.isdigit() for value in values):
        shown = b", ".join(sorted(values)).decode("latin-1")[:100]
        raise BadLength(f"Content-Length must be one non-negative number, not {shown!r}")
    digits = values.pop().lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= MAX_DIGITS else sys.maxsize


async def answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read to its end: closing is the only way not to read the rest
        # (uvicorn would otherwise read and discard it to keep the connection alive).
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Guard:
    """One request: its body counted as the app reads it; past the limit, the 413 goes out
    (or the connection is ended) and whatever the app answers is dropped."""

    def __init__(self, receive: Receive, send: Send, limit: Limit, unknown_length: bool) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.pending = unknown_length  # a body of unknown length, not read to its end yet
        self.over = False
        self.started = False
        self.completed = False
        # A response may listen for a disconnect while another task drains the body: one
        # reader at a time, or both could wait for a message only the other one gets.
        self._reading = anyio.Lock()

    async def receive(self) -> Message:
        async with self._reading:
            if self.over:
                return DISCONNECT
            message = await self._receive()
            await self._count(message)
        return DISCONNECT if self.over else message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self.pending:
            await self._drain()
        if self.over:
            return
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.completed = True
        await self._send(message)

    async def _drain(self) -> None:
        """The app answers before reading a chunked body: read the rest, counted and not
        kept, so that an oversized one is 413 whatever the app meant to say. The app gets
        no more of the body afterwards: a later read waits for the disconnect, as after any
        body read to its end."""
        while self.pending and not self.over:
            async with self._reading:
                if self.pending and not self.over:
                    await self._count(await self._receive())

    async def _count(self, message: Message) -> None:
        if message["type"] != "http.request":
            self.pending = False  # a disconnect: no more body will come
            return
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False):
            self.pending = False
        if self.received > self.limit.size and not self.over:
            self.over = True
            self.pending = False
            if not self.started:
                await answer(self._send, 413, self.limit.detail())
