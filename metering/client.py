"""The CLI's side of the read-model API."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from runtime.settings import Settings


class ApiError(RuntimeError):
    pass


def _headers(settings: Settings) -> dict[str, str]:
    if settings.api_key is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}


def _refused(response: httpx.Response) -> ApiError:
    try:
        detail = orjson.loads(response.read()).get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):  # every problem, one per line
        detail = "\n".join(f"  - {item}" for item in detail)
    return ApiError(f"{response.status_code}: {detail}")


@contextlib.contextmanager
def stream(settings: Settings, path: str) -> Iterator[io.RawIOBase]:
    """GET `path` as a file to read from while it arrives (an export of a month of events
    does not fit in memory)."""
    url = settings.api() + path
    try:
        with httpx.stream(
            "GET", url, headers=_headers(settings), timeout=settings.query_timeout + 30
        ) as response:
            if response.status_code >= 400:
                raise _refused(response)
            yield _Body(response.iter_bytes())
    except httpx.HTTPError as exc:
        raise ApiError(f"reading {url} failed: {exc}") from None


class _Body(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.left:
            try:
                self.left = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.left))
        buffer[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


def request(settings: Settings, method: str, path: str, **kwargs: Any) -> Any:
    url = settings.api() + path
    headers = _headers(settings)
    try:
        response = httpx.request(
            method, url, headers=headers, timeout=settings.query_timeout + 30, **kwargs
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the read model at {url}: {exc}") from None
    if response.status_code >= 400:
        raise _refused(response)
    return orjson.loads(response.content)
