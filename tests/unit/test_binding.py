"""CloudEvents binary content mode decodes exactly as structured mode does."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from cloudevents.core.bindings import http, kafka
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.binding import HTTP_PREFIX, structured
from projections.decode import decode
from projections.events import Position
from schemas.records import DeadLetter
from tests.factories import sdk_event

PLAN = load_plan()
LOG_TIME = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
POSITION = Position(topic="usage-events", partition=2, offset=7, log_time=LOG_TIME)


def test_the_sdks_binary_and_structured_kafka_messages_decode_alike() -> None:
    event = sdk_event()
    binary = kafka.to_binary(event, JSONFormat())
    struct = kafka.to_structured(event, JSONFormat())
    headers = list(binary.headers.items())
    from_binary = decode(binary.value, POSITION, PLAN, headers)
    from_structured = decode(struct.value, POSITION, PLAN, list(struct.headers.items()))
    assert not isinstance(from_binary, DeadLetter), from_binary
    assert from_binary == from_structured
    assert (from_binary.tenant, from_binary.amount) == ("tenant-1", 3)


def test_http_binary_headers_are_percent_decoded() -> None:
    event = sdk_event(subject="tenant é/1", source="crm mail")
    message = http.to_binary_event(event)
    obj = structured(list(message.headers.items()), message.body, HTTP_PREFIX)
    assert (obj["subject"], obj["source"]) == ("tenant é/1", "crm mail")
    assert obj["data"] == {"quantity": 3}


def test_a_bad_binary_record_keeps_its_headers_and_tenant() -> None:
    event = sdk_event()
    binary = kafka.to_binary(event, JSONFormat())
    headers = [(k, v) for k, v in binary.headers.items() if k != "ce_id"]
    letter = decode(binary.value, POSITION, PLAN, headers)
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.field) == ("missing_field", "id")
    assert letter.tenant == "tenant-1"
    assert letter.headers is not None and letter.headers["ce_type"] == "metering.mailing.sent"


def test_binary_data_that_is_not_json_is_refused_with_its_reason() -> None:
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"),
        ("ce_type", b"metering.chat.started"), ("ce_subject", b"t"),
        ("ce_time", b"2026-10-10T12:00:00Z"), ("content-type", b"text/plain"),
    ]  # fmt: skip
    letter = decode(b"3 chats", POSITION, PLAN, headers)
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.field) == ("invalid_field", "datacontenttype")
    many = headers + [(f"x-{n}", b"") for n in range(100)]
    assert getattr(decode(b"{}", POSITION, PLAN, many), "reason", None) == "too_large"


attribute = st.one_of(st.none(), st.text(max_size=20), st.integers(-5, 5))


@settings(max_examples=200, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["id", "source", "type", "subject", "time", "specversion"]),
        attribute,
        max_size=2,
    ),
    data=st.one_of(
        st.fixed_dictionaries({"quantity": st.integers(-2, 10**19)}),
        st.fixed_dictionaries({"bytes": st.integers(0, 10)}),
        st.just({}),
    ),
)
def test_binary_mode_decides_as_structured_mode(changes: dict[str, Any], data: Any) -> None:
    """The same event in both modes: accepted alike, or refused with the same reason."""
    obj: dict[str, Any] = {
        "specversion": "1.0", "id": "e1", "source": "crm", "type": "metering.chat.started",
        "subject": "tenant-1", "time": "2026-10-10T12:00:00Z", "data": data,
    }  # fmt: skip
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = str(value)  # headers carry text only
    headers = [(f"ce_{k}", str(v).encode()) for k, v in obj.items() if k != "data"]
    headers.append(("content-type", b"application/json"))
    if "specversion" not in obj:
        return  # without it a record is not in binary mode at all
    binary = decode(orjson.dumps(data), POSITION, PLAN, headers)
    plain = decode(orjson.dumps({**obj, "datacontenttype": "application/json"}), POSITION, PLAN)
    if isinstance(plain, DeadLetter):
        assert isinstance(binary, DeadLetter)
        assert (binary.reason, binary.field) == (plain.reason, plain.field)
    else:
        assert binary == plain
