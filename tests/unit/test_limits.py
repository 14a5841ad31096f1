"""The body limit (api/limits.py) against small ASGI apps: oversized bodies are refused with
413 before the app reads them, declared or chunked, whatever the route and the method."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import BodyLimit, BodyTooLarge, Limit, declared_length, install_body_limits
from runtime.settings import Settings

LIMIT = Limit(4096, "METERING_TEST_LIMIT")
CHUNK = 1000


class Wire:
    """The server's side of one request: the body it hands out in chunks (counting what it
    handed out), and what it was sent back. After the body it waits for the response's end
    and then reports a disconnect, as uvicorn does."""

    def __init__(self, chunks: Iterator[bytes] | list[bytes]) -> None:
        self.chunks = iter(chunks)
        self.next: bytes | None = next(self.chunks, None)
        self.reads = 0
        self.delivered = 0
        self.sent: list[Message] = []
        self.done = anyio.Event()

    async def receive(self) -> Message:
        self.reads += 1
        if self.next is None:
            await self.done.wait()
            return {"type": "http.disconnect"}
        chunk, self.next = self.next, next(self.chunks, None)
        self.delivered += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.next is not None}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done.set()

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return int(starts[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def scope(headers: dict[str, str], method: str = "POST", path: str = "/x") -> Scope:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": raw}


def chunked(size: int) -> dict[str, str]:
    return {"transfer-encoding": "chunked"} if size else {}


def pieces(total: int) -> Iterator[bytes]:
    """`total` bytes in CHUNK-sized pieces, made as they are asked for."""
    full, rest = divmod(total, CHUNK)
    return itertools.chain(itertools.repeat(b"x" * CHUNK, full), [b"x" * rest] if rest else [])


class Reader:
    """An app that reads the whole body (as Starlette does, raising when the client is
    gone) and answers with its length; records that it was called."""

    def __init__(self) -> None:
        self.calls = 0
        self.got: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.got = await Request(scope, receive).body()
        await PlainTextResponse(f"read {len(self.got)}")(scope, receive, send)


async def run(app: ASGIApp, scope: Scope, wire: Wire, limit: Limit = LIMIT) -> None:
    with anyio.fail_after(5):  # a guard that waits for a message that never comes fails here
        await BodyLimit(app, default=limit)(scope, wire.receive, wire.send)


@pytest.mark.parametrize("method", ["POST", "PUT", "GET", "HEAD", "DELETE"])
async def test_a_declared_length_over_the_limit_is_413_before_the_app_or_a_read(
    method: str,
) -> None:
    app, wire = Reader(), Wire(pieces(64 << 20))
    await run(app, scope({"content-length": str(64 << 20)}, method), wire)
    assert wire.status == 413
    assert (app.calls, wire.reads, wire.delivered) == (0, 0, 0)
    detail = orjson.loads(wire.body)["detail"]
    assert "4096 bytes" in detail and "METERING_TEST_LIMIT" in detail
    assert wire.headers[b"content-type"] == b"application/json"
    assert wire.headers[b"connection"] == b"close"  # the unread rest is not drained


@pytest.mark.parametrize("declared", ["4097", "99999999999999999999999", "0" * 40 + "5000"])
async def test_any_declared_length_past_the_limit_is_413(declared: str) -> None:
    app, wire = Reader(), Wire([])
    await run(app, scope({"content-length": declared}), wire)
    assert (wire.status, app.calls) == (413, 0)


async def test_a_huge_content_length_is_413_not_a_crash() -> None:
    app, wire = Reader(), Wire([])
    await run(app, scope({"content-length": "9" * 10_000}), wire)
    assert (wire.status, app.calls) == (413, 0)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"abc")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"+5")],
        [(b"content-length", b"0x10")],
        [(b"content-length", b"")],
        [(b"content-length", b"1 2")],
        [(b"content-length", b"\xef\xbc\x91")],  # a full-width digit: not ASCII
        [(b"content-length", b"10, 12")],
        [(b"content-length", b"10"), (b"content-length", b"12")],
    ],
)
async def test_a_malformed_content_length_is_400(headers: list[tuple[bytes, bytes]]) -> None:
    app, wire = Reader(), Wire([b"x" * 10])
    await run(app, {**scope({}), "headers": headers}, wire)
    assert (wire.status, app.calls, wire.reads) == (400, 0, 0)
    assert "Content-Length" in orjson.loads(wire.body)["detail"]


async def test_content_length_beside_transfer_encoding_is_400() -> None:
    """h11 frames such a body by Transfer-Encoding: a small Content-Length would otherwise
    pass a chunked body of any size to a route that answers without reading it."""
    headers = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    app, wire = Reader(), Wire(pieces(64 << 20))
    await run(app, {**scope({}), "headers": headers}, wire)
    assert (wire.status, app.calls, wire.reads) == (400, 0, 0)
    assert "Transfer-Encoding" in orjson.loads(wire.body)["detail"]


def test_repeated_equal_lengths_are_one_length() -> None:
    assert declared_length([(b"Content-Length", b"42, 42"), (b"content-length", b"42")]) == 42
    assert declared_length([(b"content-type", b"text/plain")]) is None
    assert declared_length([(b"content-length", b"007")]) == 7


async def test_a_chunked_body_over_the_limit_is_413_and_reading_stops_there() -> None:
    app, wire = Reader(), Wire(pieces(64 << 20))
    await run(app, scope(chunked(1)), wire)
    assert wire.status == 413
    assert "METERING_TEST_LIMIT" in orjson.loads(wire.body)["detail"]
    # The app was called (a body of unknown length is judged as it is read) but got no
    # more than one chunk past the limit, and its own answer to the cut-off body was dropped.
    assert app.calls == 1 and app.got is None
    assert wire.delivered == LIMIT.size // CHUNK * CHUNK + CHUNK
    assert wire.reads == LIMIT.size // CHUNK + 1


async def test_a_content_length_that_lies_is_counted_too() -> None:
    app, wire = Reader(), Wire(pieces(64 << 20))
    await run(app, scope({"content-length": "10"}), wire)
    assert wire.status == 413 and wire.delivered <= LIMIT.size + CHUNK


@pytest.mark.parametrize("size", [0, 1, LIMIT.size - 1, LIMIT.size])
@pytest.mark.parametrize("declare", [True, False])
async def test_a_body_up_to_the_limit_passes_through_intact(size: int, declare: bool) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    headers = {"content-length": str(size)} if declare else chunked(size)
    app, wire = Reader(), Wire([body[i : i + CHUNK] for i in range(0, size, CHUNK)] or [b""])
    await run(app, scope(headers), wire)
    assert (wire.status, wire.body, app.got) == (200, f"read {size}".encode(), body)


async def test_one_byte_over_the_limit_is_refused() -> None:
    app, wire = Reader(), Wire(pieces(LIMIT.size + 1))
    await run(app, scope(chunked(1)), wire)
    assert wire.status == 413 and app.got is None


async def test_an_app_that_answers_before_reading_cannot_hide_an_oversized_body() -> None:
    """A 401 from a key check comes before any read: the chunked body is still judged (read
    and thrown away, nothing kept), and one over the limit is 413, not 401."""

    async def unauthorised(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": "a key is needed"}, 401)(scope, receive, send)

    wire = Wire(pieces(64 << 20))
    await run(unauthorised, scope(chunked(1)), wire)
    assert wire.status == 413 and wire.delivered <= LIMIT.size + CHUNK

    wire = Wire(pieces(LIMIT.size))
    await run(unauthorised, scope(chunked(1)), wire)
    assert wire.status == 401 and wire.delivered == LIMIT.size  # read to its end: keep-alive


async def test_a_response_listening_for_a_disconnect_does_not_deadlock_the_drain() -> None:
    """Starlette's streaming and file responses (ASGI 2.3, as uvicorn speaks it) read
    `receive` in one task while another sends: both read through the guard, one at a time."""

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(3):
                await send({"type": "http.response.body", "body": b"ok", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await anyio.sleep_forever()  # until the listener hears the disconnect

    for size, status in [(64 << 20, 413), (LIMIT.size, 200)]:
        wire = Wire(pieces(size))
        await run(streaming, scope(chunked(1)), wire)
        assert wire.status == status
        assert wire.delivered <= LIMIT.size + CHUNK


async def test_past_the_limit_after_the_response_started_the_connection_is_ended() -> None:
    """No 413 can follow a started response: the rest of the app's answer is dropped and
    the server is told to end the connection (uvicorn closes it when an app raises)."""

    async def echo_late(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (message := await receive())["type"] == "http.request":
            await send({"type": "http.response.body", "body": b".", "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    wire = Wire(pieces(64 << 20))
    with pytest.raises(BodyTooLarge):
        await run(echo_late, scope({"content-length": "10"}), wire)
    assert wire.status == 200
    assert not any(m["type"] == "http.response.body" and not m.get("more_body") for m in wire.sent)
    assert wire.delivered <= LIMIT.size + CHUNK


async def test_an_error_the_app_makes_of_a_refused_body_is_not_raised() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] == "http.request":
            if not message.get("more_body"):
                break
        raise RuntimeError("the client went away")

    wire = Wire(pieces(64 << 20))
    await run(fails, scope(chunked(1)), wire)
    assert wire.status == 413
    with pytest.raises(RuntimeError):  # but an error of the app's own is not hidden
        await run(fails, scope({"content-length": "10"}), Wire([b"x" * 10]))


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await BodyLimit(app, default=LIMIT)({"type": "lifespan"}, Wire([]).receive, Wire([]).send)
    assert seen == ["lifespan"]


def routed_app(**limits: Any) -> FastAPI:
    """The limits as create_api installs them, on routes that read their bodies the way the
    real ones do: a model parsed by FastAPI, a form read by hand, a body read after a check."""
    app = FastAPI()

    @app.post("/v1/sql")
    async def sql(body: dict[str, Any]) -> dict[str, int]:
        return {"read": len(body["sql"])}

    @app.post("/v1/events")
    async def events(request: Request) -> dict[str, int]:
        if "authorization" not in request.headers:
            raise HTTPException(401, "a key is needed")
        return {"read": len(await request.body())}

    @app.post("/ui/login")
    async def login(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    install_body_limits(app, Settings(kafka_bootstrap="unused:1", **limits))
    return app


LIMITS = {"http_max_body": 2048, "sql_max_bytes": 8192, "ingest_max_bytes": 32768}


async def post(path: str, body: bytes, stream: bool, key: bool = True) -> httpx.Response:
    async def chunks() -> Any:
        for start in range(0, len(body), CHUNK):
            yield body[start : start + CHUNK]

    transport = httpx.ASGITransport(app=routed_app(**LIMITS))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        content = chunks() if stream else body
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = "Bearer k"
        return await client.post(path, content=content, headers=headers)


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "limit", "setting"),
    [
        ("/v1/sql", 8192, "METERING_SQL_MAX_BYTES"),
        ("/v1/events", 32768, "METERING_INGEST_MAX_BYTES"),
        ("/ui/login", 2048, "METERING_HTTP_MAX_BODY"),
        ("/ui/logout", 2048, "METERING_HTTP_MAX_BODY"),
        ("/nowhere", 2048, "METERING_HTTP_MAX_BODY"),
        ("/v1/sql/", 2048, "METERING_HTTP_MAX_BODY"),  # only the route itself has its limit
    ],
)
async def test_each_route_has_its_limit_from_the_settings(
    path: str, limit: int, setting: str, stream: bool
) -> None:
    over = await post(path, b"x" * (limit + 1), stream)
    assert over.status_code == 413
    assert over.json() == {"detail": f"the body is over {limit} bytes (the limit set by {setting})"}
    if path in ("/v1/sql", "/v1/events", "/ui/login"):
        at = await post(path, b'{"sql": "' + b"s" * (limit - 11) + b'"}', stream)
        read = limit - 11 if path == "/v1/sql" else limit
        assert (at.status_code, at.json()) == (200, {"read": read})


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "chunked"])
async def test_without_a_key_an_oversized_body_is_413_and_a_small_one_401(stream: bool) -> None:
    assert (await post("/v1/events", b"x" * 40_000, stream, key=False)).status_code == 413
    assert (await post("/v1/events", b"x" * 20_000, stream, key=False)).status_code == 401


async def test_limits_follow_the_root_path() -> None:
    app = Reader()
    wire = Wire(pieces(5000))
    routes = {"/v1/sql": Limit(8192, "S")}
    guarded = BodyLimit(app, default=LIMIT, routes=routes)
    where = {**scope(chunked(1), path="/api/v1/sql"), "root_path": "/api"}
    await guarded(where, wire.receive, wire.send)
    assert wire.status == 200 and app.got == b"x" * 5000
