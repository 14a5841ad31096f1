"""CloudEvents binary content mode: attributes in headers, `data` as the body.

The Kafka protocol binding puts each attribute in a `ce_<name>` header and the content type in
`content-type`; the HTTP binding uses `ce-<name>` headers (percent-encoded) and `Content-Type`.
Both are turned here into the structured form (one JSON object) that the decoder and the
ingest checks read, so that one set of rules judges every event whichever mode it came in.
Pure: no Kafka, no HTTP.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from projections.rejection import Rejected

KAFKA_PREFIX = "ce_"
HTTP_PREFIX = "ce-"
CONTENT_TYPE = "content-type"
# A binary event has a handful of attributes; hundreds of headers are an attack on memory.
MAX_HEADERS = 64
MAX_HEADER_ECHO = 256  # characters of a header value kept in a dead letter
_JSON_MEDIA = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json|text/json", re.ASCII)
# Attribute names the binding does not carry in headers (`data` is the body).
_NOT_ATTRIBUTES = {"data", "data_base64"}

Headers = Sequence[tuple[str, bytes | str]]


def _text(value: bytes | str, name: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("invalid_field", name, f"header {name} is not UTF-8") from None


def is_binary(headers: Iterable[tuple[str, Any]] | None, prefix: str = KAFKA_PREFIX) -> bool:
    """Whether the headers carry a binary-mode event (a `specversion` attribute)."""
    wanted = prefix + "specversion"
    return any(name.lower() == wanted for name, _ in headers or ())


def structured(headers: Headers, body: bytes | None, prefix: str = KAFKA_PREFIX) -> dict[str, Any]:
    """The event as structured mode would carry it; raises Rejected naming the bad part."""
    if len(headers) > MAX_HEADERS:
        raise Rejected("too_large", None, f"{len(headers)} headers; at most {MAX_HEADERS}")
    event: dict[str, Any] = {}
    content_type: str | None = None
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == CONTENT_TYPE:
            content_type = _text(raw_value, name)
        elif name.startswith(prefix) and (attribute := name[len(prefix) :]) not in _NOT_ATTRIBUTES:
            value = _text(raw_value, name)
            event[attribute] = urllib.parse.unquote(value) if prefix == HTTP_PREFIX else value
    if content_type is not None:
        event["datacontenttype"] = content_type
    if body:
        media = (content_type or "application/json").split(";", 1)[0].strip().lower()
        if not _JSON_MEDIA.fullmatch(media):
            raise Rejected("invalid_field", "datacontenttype", f"data must be JSON, not {media!r}")
        try:
            event["data"] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected("bad_json", "data", f"data is not JSON: {exc}") from None
    return event


def header_echo(headers: Headers | None) -> dict[str, str]:
    """Headers as text for a dead letter: bounded in number and length, bytes escaped."""
    echo: dict[str, str] = {}
    for name, value in list(headers or ())[:MAX_HEADERS]:
        text = value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")
        echo[name[:MAX_HEADER_ECHO]] = text[:MAX_HEADER_ECHO]
    return echo


def header_bytes(headers: Headers | None) -> int:
    return sum(len(name) + len(value) for name, value in headers or ())
