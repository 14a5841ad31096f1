"""`POST /v1/events` in CloudEvents binary content mode (HTTP binding): the `ce-*` headers are
the attributes, the body is `data`; the same rules judge it as in structured mode, and it is
forwarded to Kafka as one structured JSON event keyed by its tenant."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import http
from fastapi import HTTPException
from starlette.requests import Request

from api.ingest import BatchRejected, Ingestor
from billing.plan import load_plan
from runtime.settings import Settings
from tests.factories import sdk_event

PLAN = load_plan()
NOW = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


class Producer:
    """Stands in for the broker: every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, value, key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def ingestor(**settings: Any) -> tuple[Ingestor, Producer]:
    ingest = Ingestor(Settings(kafka_bootstrap="unused:1", **settings), PLAN, clock=lambda: NOW)
    producer = Producer()
    ingest._producer = producer
    return ingest, producer


def request(headers: dict[str, str] | list[tuple[bytes, bytes]], body: bytes) -> Request:
    raw = (
        [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if isinstance(headers, dict)
        else headers
    )
    sent = False
    state: dict[str, bool] = {"read": False}
    scope = {"type": "http", "method": "POST", "path": "/v1/events", "headers": raw, "state": state}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        state["read"] = True
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def offer(ingest: Ingestor, headers: Any, body: bytes) -> int:
    async def run() -> int:
        return await ingest.ingest(await ingest.events(request(headers, body)))

    return asyncio.run(run())


def refused(ingest: Ingestor, headers: Any, body: bytes) -> list[tuple[Any, ...]]:
    with pytest.raises(BatchRejected) as caught:
        offer(ingest, headers, body)
    return [(e["index"], e["reason"], e["field"]) for e in caught.value.body["errors"]]


def test_a_binary_event_is_forwarded_as_structured_json_keyed_by_tenant() -> None:
    ingest, producer = ingestor()
    message = http.to_binary_event(sdk_event())
    assert offer(ingest, dict(message.headers), message.body) == 1
    [(topic, value, key)] = producer.sent
    assert (topic, key) == ("usage-events", b"tenant-1")
    assert orjson.loads(value) == {
        "specversion": "1.0", "id": "e1", "source": "crm/mail", "type": "metering.mailing.sent",
        "subject": "tenant-1", "time": "2026-10-10T12:00:00Z",
        "datacontenttype": "application/json", "data": {"quantity": 3},
    }  # fmt: skip


def test_binary_and_structured_modes_forward_the_same_event() -> None:
    event = sdk_event(subject="tenant é/1", source="crm mail%", id="id 1")
    binary, struct = http.to_binary_event(event), http.to_structured_event(event)
    assert binary.headers["ce-subject"] == "tenant%20%C3%A9/1"  # the SDK percent-encodes
    ingest, producer = ingestor()
    offer(ingest, dict(binary.headers), binary.body)
    offer(ingest, dict(struct.headers), struct.body)
    (_, from_binary, key), (_, from_structured, _) = producer.sent
    assert key == "tenant é/1".encode()
    assert orjson.loads(from_binary) == orjson.loads(from_structured)
    assert orjson.loads(from_binary)["source"] == "crm mail%"


def test_percent_encoded_attributes_are_decoded() -> None:
    ingest, producer = ingestor()
    headers = {
        "ce-specversion": "1.0", "ce-id": "a%2Fb%20c", "ce-source": "crm%3Amail",
        "ce-type": "metering.chat.started", "ce-subject": "acme%E2%82%AC",
        "ce-time": "2026-10-10T12%3A00%3A00%2B02%3A00", "content-type": "application/json",
    }  # fmt: skip
    assert offer(ingest, headers, b'{"quantity": 2}') == 1
    sent = orjson.loads(producer.sent[0][1])
    assert (sent["id"], sent["source"], sent["subject"], sent["time"]) == (
        "a/b c", "crm:mail", "acme€", "2026-10-10T12:00:00+02:00",
    )  # fmt: skip
    assert producer.sent[0][2] == "acme€".encode()


def test_a_binary_event_without_id_is_400_naming_the_field() -> None:
    ingest, producer = ingestor()
    headers = {k: v for k, v in http.to_binary_event(sdk_event()).headers.items() if k != "ce-id"}
    assert refused(ingest, headers, b'{"quantity": 3}') == [(0, "missing_field", "id")]
    assert producer.sent == []


@pytest.mark.parametrize(
    ("change", "body", "expected"),
    [
        ({"ce-time": "2026-10-10T12:00:00"}, b'{"quantity": 3}', (0, "invalid_field", "time")),
        ({}, b'{"quantity": 0}', (0, "invalid_field", "data.quantity")),
        ({}, b"{not json", (0, "bad_json", "data")),
        ({"content-type": "text/plain"}, b"3", (0, "invalid_field", "datacontenttype")),
        ({"ce-type": "metering.teleport.used"}, b"{}", (0, "unknown_type", "type")),
        ({"ce-time": "2026-11-01T13:00:00Z"}, b'{"quantity": 3}', (0, "future", "time")),
        ({"ce-specversion": "0.3"}, b'{"quantity": 3}', (0, "invalid_field", "specversion")),
    ],
)
def test_bad_binary_events_are_refused_by_the_structured_rules(
    change: dict[str, str], body: bytes, expected: tuple[Any, ...]
) -> None:
    ingest, producer = ingestor()
    headers = dict(http.to_binary_event(sdk_event()).headers) | change
    assert refused(ingest, headers, body) == [expected]
    assert producer.sent == []


def test_a_header_that_is_not_utf8_is_refused_by_name() -> None:
    ingest, _ = ingestor()
    raw = [(k.encode(), v.encode()) for k, v in http.to_binary_event(sdk_event()).headers.items()]
    raw = [(k, b"acme\xff" if k == b"ce-subject" else v) for k, v in raw]
    assert refused(ingest, raw, b'{"quantity": 3}') == [(0, "invalid_field", "ce-subject")]


def test_header_bytes_count_towards_the_size_limit_before_the_body_is_read() -> None:
    message = http.to_binary_event(sdk_event(note="x" * 1200))  # an extension attribute
    headers = dict(message.headers)
    size = len(message.body) + sum(len(k) + len(v) for k, v in headers.items())
    ingest, _ = ingestor(ingest_max_bytes=size)
    assert offer(ingest, headers, message.body) == 1
    ingest, _ = ingestor(ingest_max_bytes=size - 1)
    for declared in ({"content-length": str(len(message.body))}, {}):
        with pytest.raises(HTTPException) as caught:
            offer(ingest, headers | declared, message.body)
        assert caught.value.status_code == 413
    # Declared too large: refused before a byte of the body is read.
    late = request(headers | {"content-length": str(len(message.body))}, message.body)
    with pytest.raises(HTTPException):
        asyncio.run(ingest.events(late))
    assert late.state.read is False


def test_structured_mode_wins_over_stray_ce_headers_and_batches_still_work() -> None:
    ingest, producer = ingestor()
    struct = http.to_structured_event(sdk_event())
    headers = dict(struct.headers) | {"ce-specversion": "1.0", "ce-id": "other"}
    assert offer(ingest, headers, struct.body) == 1
    assert orjson.loads(producer.sent[0][1])["id"] == "e1"
    batch = orjson.dumps([orjson.loads(struct.body), orjson.loads(struct.body) | {"id": "e2"}])
    assert offer(ingest, {"content-type": "application/cloudevents-batch+json"}, batch) == 2
    with pytest.raises(HTTPException) as caught:
        offer(ingest, {"content-type": "text/plain"}, b"{}")
    assert caught.value.status_code == 415
