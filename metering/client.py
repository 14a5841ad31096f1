"""The CLI's side of the read-model API."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from runtime.settings import Settings


class ApiError(RuntimeError):
    pass


def request(settings: Settings, method: str, path: str, **kwargs: Any) -> Any:
    url = settings.api() + path
    headers = {}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    try:
        response = httpx.request(
            method, url, headers=headers, timeout=settings.query_timeout + 30, **kwargs
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the read model at {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiError(f"{response.status_code}: {detail}")
    return orjson.loads(response.content)
