"""Oversized bodies from a client without a key, against the real projector (uvicorn): each is
answered 413 at once, whether its length is declared or chunked, and the process does not
grow while refusing it (issue 14, item 3). Legitimate requests with keys still work."""

from __future__ import annotations

import datetime as dt
import select
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from projections.months import month_of, previous_month
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

pytestmark = pytest.mark.integration

KEYS = {"producer": "p-secret", "finance": "f-secret"}
BODY = 64 << 20  # what the attacker offers
PIECE = 1 << 16
GROWTH = 20 << 20  # what refusing one such body may add to the process, at its peak
PROMPT = 5.0  # seconds; well under the 10 s the issue allows
CASES = [
    ("/v1/sql", "application/json", "METERING_SQL_MAX_BYTES"),
    ("/ui/login", "application/x-www-form-urlencoded", "METERING_HTTP_MAX_BODY"),
    ("/v1/events", "application/cloudevents-batch+json", "METERING_INGEST_MAX_BYTES"),
]


@dataclass
class Offer:
    """What a client offering a body saw: the server's reply, how long it took, how much of
    the body went out before the reply was complete, and how the server ended it."""

    reply: bytes
    seconds: float
    sent: int
    ending: str  # "closed", "reset" (after the reply), or "open"

    @property
    def status_line(self) -> bytes:
        return self.reply.split(b"\r\n", 1)[0]

    @property
    def body(self) -> bytes:
        return self.reply.partition(b"\r\n\r\n")[2]


def complete(reply: bytes) -> bool:
    head, found, body = reply.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def offer(url: str, path: str, media: str, size: int, chunked: bool) -> Offer:
    """POST `size` bytes over a raw socket, reading while writing as a careful client does:
    a reset only counts once the reply has been read whole (a client that only writes would
    meet the reset first and never learn why)."""
    parts = urllib.parse.urlsplit(url)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {media}\r\n"
    piece = b"x" * PIECE
    frame = b"%x\r\n%b\r\n" % (PIECE, piece) if chunked else piece
    pending = memoryview(f"{head}{framing}\r\n\r\n".encode())
    sent, reply, ending, write_failed = 0, b"", "open", False
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.setblocking(False)
        while time.monotonic() - started < 30 and not complete(reply):
            if not pending and sent < size:
                pending, sent = memoryview(frame), sent + PIECE
            elif not pending and chunked and sent == size:
                pending, sent = memoryview(b"0\r\n\r\n"), sent + 1
            writing = [sock] if pending and not write_failed else []
            readable, writable, _ = select.select([sock], writing, [], 1)
            if readable:
                try:
                    data = sock.recv(PIECE)
                except ConnectionResetError:
                    ending = "reset"
                    break
                if not data:
                    ending = "closed"
                    break
                reply += data
            if writable:
                try:
                    pending = pending[sock.send(pending) :]
                except (BrokenPipeError, ConnectionResetError):
                    write_failed = True  # the reply may still be waiting: read on
        seconds = time.monotonic() - started
        if complete(reply) and ending == "open":
            ending = _ending(sock)
    return Offer(reply, seconds, min(sent, size), ending)


def _ending(sock: socket.socket) -> str:
    """After the reply: does the server end the connection rather than read on?"""
    readable, _, _ = select.select([sock], [], [], 5)
    if not readable:
        return "open"
    try:
        return "closed" if sock.recv(PIECE) == b"" else "open"
    except ConnectionResetError:
        return "reset"


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak since the last reset), in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def reset_peak(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (proc(5)): each case's peak is its own.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_oversized_bodies_without_a_key_are_413_at_once_and_cost_no_memory(
    stack: Stack,
) -> None:
    stack.create_topics()
    stack.start_worker()
    projector = stack.start_projector(METERING_API_KEYS=stored_keys(KEYS))
    url, pid = stack.env["METERING_API_URL"], projector.pid
    assert stack.workers[-1].pid == pid
    figures = []
    for path, media, setting in CASES:
        for chunked in (False, True):
            # A small oversized body first: what the first refusal loads (code, buffers) is
            # not what a large body costs.
            assert b" 413 " in offer(url, path, media, 2 << 20, chunked).status_line
            before = memory(pid)
            reset_peak(pid)
            seen = offer(url, path, media, BODY, chunked)
            after = memory(pid)
            figures.append((path, chunked, before, after, seen))
            assert seen.status_line == b"HTTP/1.1 413 Request Entity Too Large", seen.reply[:300]
            assert setting in orjson.loads(seen.body)["detail"]
            assert seen.seconds < PROMPT
            assert seen.ending in ("closed", "reset")  # the rest is never read
            assert seen.sent < BODY  # the client stopped when it was told to
            assert after["VmHWM"] - before["VmRSS"] < GROWTH
            assert after["VmRSS"] - before["VmRSS"] < GROWTH
    report(figures)
    with httpx.Client(base_url=url, timeout=60) as api:
        legitimate_requests_still_work(api)


def legitimate_requests_still_work(api: httpx.Client) -> None:
    assert api.get("/healthz").status_code == 200
    small = api.post("/v1/events", content=b"[]", headers={"Content-Type": CASES[2][1]})
    assert small.status_code == 401  # within the limit, the key is what is missing
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
    when = [f"{month}-0{n + 1}T10:00:00Z" for n in range(5)]
    usage = {"quantity": 3}
    batch = [
        cloudevent("metering.form.submitted", usage, tenant="acme", time=t, id=f"limits-{t}")
        for t in when
    ]
    posted = api.post(
        "/v1/events", content=orjson.dumps(batch),
        headers={"Authorization": "Bearer p-secret", "Content-Type": CASES[2][1]},
    )  # fmt: skip
    assert (posted.status_code, posted.json()) == (202, {"accepted": 5}), posted.text
    answered = api.post(
        "/v1/sql", json={"sql": "SELECT 40 + 2 AS answer"},
        headers={"Authorization": "Bearer f-secret"},
    )  # fmt: skip
    assert answered.status_code == 200, answered.text
    assert "42" in str(answered.json()["rows"])


def report(figures: list[tuple[str, bool, dict[str, int], dict[str, int], Offer]]) -> None:
    mib = 1 << 20
    for path, chunked, before, after, seen in figures:
        print(
            f"{path:12} {'chunked' if chunked else 'declared':8} {seen.status_line.decode()}"
            f" in {seen.seconds:.3f}s, {seen.sent / mib:.1f} MiB sent, {seen.ending};"
            f" RSS {before['VmRSS'] / mib:.1f} -> {after['VmRSS'] / mib:.1f} MiB,"
            f" peak {after['VmHWM'] / mib:.1f} MiB"
        )
