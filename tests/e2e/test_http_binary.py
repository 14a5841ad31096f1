"""`POST /v1/events` in CloudEvents binary content mode through the real API and broker: the
`ce-*` headers are the attributes (percent-decoded), the body is `data`; a bad one is 400 with
index, reason and field, as in structured mode, and nothing reaches the log."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent

from projections.months import month_of, next_month, previous_month
from runtime.settings import Settings
from streams.kafka import end_offsets
from tests.conftest import Stack
from tests.factories import stored_keys

pytestmark = pytest.mark.integration

MONTH = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
KEYS = {"producer": "p-secret", "finance": "f-secret"}


def binary(n: int, **attributes: str) -> http.HTTPMessage:
    base = {
        "id": f"chat {n}/é", "source": "crm chat", "type": "metering.chat.started",
        "subject": "acme é", "time": dt.datetime.fromisoformat(f"{MONTH}-{n % 27 + 1:02d}T10:00Z"),
        "datacontenttype": "application/json",
    }  # fmt: skip
    return http.to_binary_event(CloudEvent(attributes=base | attributes, data={"quantity": 100}))


def test_binary_mode_over_http(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    stack.start_projector(METERING_API_KEYS=stored_keys(KEYS))
    api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=120)
    producer = {"Authorization": f"Bearer {KEYS['producer']}"}
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
    )

    message = binary(0)
    assert message.headers["ce-subject"] == "acme%20%C3%A9"  # percent-encoded on the wire
    anonymous = api.post("/v1/events", content=message.body, headers=dict(message.headers))
    assert anonymous.status_code == 401
    for n in range(26):  # 2,600 chats; n = 25 is sent twice: counted once
        message = binary(n)
        answer = api.post("/v1/events", content=message.body,
                          headers=dict(message.headers) | producer)  # fmt: skip
        assert (answer.status_code, answer.json()) == (202, {"accepted": 1}), answer.text
    again = binary(25)
    assert api.post("/v1/events", content=again.body,
                    headers=dict(again.headers) | producer).status_code == 202  # fmt: skip

    before = asyncio.run(end_offsets(settings, (settings.topics.usage,)))
    no_id = {k: v for k, v in binary(30).headers.items() if k != "ce-id"}
    refused = api.post("/v1/events", content=b'{"quantity": 1}', headers=no_id | producer)
    assert refused.status_code == 400
    assert [(e["index"], e["reason"], e["field"]) for e in refused.json()["errors"]] == [
        (0, "missing_field", "id")
    ]
    bad_data = api.post("/v1/events", content=b'{"quantity": 0}',
                        headers=dict(binary(31).headers) | producer)  # fmt: skip
    assert [(e["reason"], e["field"]) for e in bad_data.json()["errors"]] == [
        ("invalid_field", "data.quantity")
    ]
    plain = dict(binary(32).headers) | producer | {"content-type": "text/plain"}
    not_json = api.post("/v1/events", content=b"100", headers=plain)
    assert (not_json.status_code, not_json.json()["errors"][0]["field"]) == (400, "datacontenttype")
    assert asyncio.run(end_offsets(settings, (settings.topics.usage,))) == before

    stack.cli("close", MONTH)
    finance = {"Authorization": f"Bearer {KEYS['finance']}"}
    lines = api.get(f"/v1/invoices/{next_month(MONTH)}", headers=finance).json()["lines"]
    # 2,600 chats - 1,500 included (no licence: band 1) = 1,100: 2 packages
    assert [(ln["tenant"], ln["service"], ln["usage"], ln["amount"]) for ln in lines] == [
        ("acme é", "chat", "2600", "64.80")
    ]
    api.close()
