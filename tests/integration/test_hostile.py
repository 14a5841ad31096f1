"""Hostile input, written straight to the topics and posted over HTTP: nothing crashes or
stalls, every bad record is dead-lettered once with its reason, HTTP answers 4xx and never
5xx, and the good events around the bad ones are all counted."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from billing.plan import load_plan
from projections.decode import decode
from projections.events import Position
from projections.months import month_of
from runtime.settings import Settings
from schemas.records import DeadLetter
from schemas.services import MAX_PEAK as MAX_BYTES
from schemas.services import MAX_QUANTITY
from streams.kafka import producer
from tests.conftest import Stack
from tests.faults.harness import sql

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
MONTH = month_of(NOW, dt.UTC)
STAMP = (NOW - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def good(n: int, tenant: str = "good") -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"g{n}", "source": "crm", "type": "metering.form.submitted",
            "subject": tenant, "time": STAMP, "data": {"quantity": 1}}  # fmt: skip


def raw(**changes: Any) -> bytes:
    return orjson.dumps({**good(0, "hostile"), "id": "h", **changes})


HAND = {
    "empty": (b"", "empty"),
    "binary": (bytes(range(256)), "bad_json"),
    "not UTF-8": (b'{"id": "\xff\xfe"}', "bad_json"),
    "huge": (raw(padding="x" * 200_000), "too_large"),
    "deep nesting": (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_large"),
    "deep but small": (b'{"data": ' + b"[" * 2000 + b"]" * 2000 + b"}", "bad_json"),
    "NaN": (raw().replace(b'"quantity":1', b'"quantity":NaN'), "bad_json"),
    "infinity": (raw().replace(b'"quantity":1', b'"quantity":1e999'), "bad_json"),
    "beyond 64 bits": (raw().replace(b'"quantity":1', b'"quantity":36893488147419103232'),
                       "invalid_field"),
    "wrong type": (raw(data={"quantity": "ten"}), "invalid_field"),
    "array": (b"[1, 2, 3]", "bad_json"),
    "no offset": (raw(time="2026-10-10T10:00:00"), "invalid_field"),
    "year 9999": (raw(time="9999-12-31T23:59:59Z"), "future"),
    "unknown type": (raw(type="metering.teleport.used"), "unknown_type"),
    "missing subject": (orjson.dumps({k: v for k, v in good(0).items() if k != "subject"}),
                        "missing_field"),
    "NUL in id": (raw(id="a\x00b", data={"quantity": -5}), "invalid_field"),
}  # fmt: skip

CHAT, MAILING, STORAGE = (
    "metering.chat.started",
    "metering.mailing.sent",
    "metering.storage.measured",
)
# Beyond the largest quantity or byte count one event may carry: once, these were accepted and
# the read model's narrow columns stopped the projector for good (issue 13).
OVERSIZE = {
    "3 * 10^12 chats": (raw(type=CHAT, data={"quantity": 3_000_000_000_000}), "data.quantity"),
    "2^63 - 1 e-mails": (raw(type=MAILING, data={"quantity": 2**63 - 1}), "data.quantity"),
    "one over the bound": (raw(data={"quantity": MAX_QUANTITY + 1}), "data.quantity"),
    "over a petabyte": (raw(type=STORAGE, data={"bytes": MAX_BYTES + 1}), "data.bytes"),
    "2^63 - 1 bytes": (raw(type=STORAGE, data={"bytes": 2**63 - 1}), "data.bytes"),
}  # fmt: skip
HAND.update({name: (value, "invalid_field") for name, (value, _) in OVERSIZE.items()})


def biggest(n: int, type_: str, data: dict[str, int]) -> dict[str, Any]:
    """A valid event at the bound: the largest the read model must take from one event."""
    return {**good(n, "biggest"), "type": type_, "data": data}


BIGGEST = [
    biggest(1, CHAT, {"quantity": MAX_QUANTITY}), biggest(2, CHAT, {"quantity": MAX_QUANTITY}),
    biggest(3, MAILING, {"quantity": MAX_QUANTITY}), biggest(4, STORAGE, {"bytes": MAX_BYTES}),
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def generated() -> list[bytes]:
    """A fixed set of hypothesis-made records: random bytes, and a valid event with one field
    replaced or removed (times untouched, so that the log-time checks cannot flicker)."""
    found: list[bytes] = []
    fields = ["specversion", "id", "source", "type", "subject", "data"]

    @settings(max_examples=150, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.tuples(st.sampled_from(fields), json_values, st.booleans()),
        )
    )
    def collect(case: Any) -> None:
        if isinstance(case, bytes):
            found.append(case)
            return
        name, value, remove = case
        event = good(len(found), "hostile")
        if remove:
            event.pop(name)
        else:
            event[name] = value
        # The standard library writes what orjson refuses: integers beyond 64 bits, Infinity.
        found.append(json.dumps(event, ensure_ascii=False).encode())

    collect()
    return found


def test_hostile_records_are_dead_lettered_and_good_ones_counted(stack: Stack) -> None:
    stack.create_topics()
    worker = stack.start_worker()
    projector = stack.start_projector()
    settings_ = Settings(kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
                         topic_prefix=stack.env["METERING_TOPIC_PREFIX"])  # fmt: skip
    topics = settings_.topics
    corpus = [value for value, _ in HAND.values()] + generated()
    plan = load_plan()
    oracle = [decode(v, Position(topic=topics.usage, partition=0, offset=0, log_time=NOW), plan)
              for v in corpus]  # fmt: skip
    expected_bad = [o.reason for o in oracle if isinstance(o, DeadLetter)]
    assert [o.reason for o in oracle[: len(HAND)]] == [r for _, r in HAND.values()]

    async def write() -> None:
        async with producer(settings_) as client:
            n = 0
            for value in corpus:  # every bad record between two good ones
                await client.send(topics.usage, orjson.dumps(good(n)), key=b"good")
                await client.send(topics.usage, value, key=b"hostile")
                n += 1
            await client.send(topics.usage, orjson.dumps(good(n)), key=b"good")
            for event in BIGGEST:
                await client.send(topics.usage, orjson.dumps(event), key=b"biggest")
            for value in list(HAND.values())[:5]:
                await client.send(topics.licenses, value[0], key=b"hostile")
                await client.send(topics.system, value[0], key=b"hostile")
            await client.flush()

    asyncio.run(write())
    letters = sql(stack, 'SELECT topic, reason FROM dead_letters ORDER BY topic, "offset"')
    # The worker reads a licence record to find its tenant's partition: a bad one is
    # dead-lettered where it was written, and never travels on.
    first_five = [reason for _, reason in list(HAND.values())[:5]]
    on_usage = [r["reason"] for r in letters if r["topic"] == topics.usage]
    assert sorted(on_usage) == sorted(expected_bad)
    assert sorted(r["reason"] for r in letters if r["topic"] == topics.licenses) == sorted(
        first_five
    )
    assert sorted(r["reason"] for r in letters if r["topic"] == topics.system) == sorted(first_five)
    assert len(letters) == len(expected_bad) + 10
    counted = sql(stack, "SELECT sum(events) AS n FROM usage_monthly "
                         "WHERE tenant = 'good' AND service = 'form'")  # fmt: skip
    assert int(counted[0]["n"]) == len(corpus) + 1
    assert worker.poll() is None, "the worker died on hostile input"
    usage = stack.json("usage", "good", MONTH)
    assert [s["usage"] for s in usage if s["service"] == "form"] == [str(len(corpus) + 1)]

    api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=60)
    answers: dict[int, int] = {}
    for value, verdict in zip(corpus, oracle, strict=True):
        for media, body in (
            ("application/cloudevents+json", value),
            ("application/cloudevents-batch+json", b"[" + value + b"]"),
        ):
            answer = api.post("/v1/events", content=body, headers={"Content-Type": media})
            answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (value[:200], answer.status_code, answer.text)
            if answer.status_code < 300:  # only what the workers would accept is accepted
                assert not isinstance(verdict, DeadLetter), value[:200]
    api.close()
    assert sum(answers.values()) == 2 * len(corpus)
    assert sum(n for status, n in answers.items() if 400 <= status < 500) >= 2 * len(expected_bad)
    oversize_refused_with_reason(stack)
    assert projector.poll() is None, "the projector stopped"
    assert worker.poll() is None, "the worker died on hostile input"


def oversize_refused_with_reason(stack: Stack) -> None:
    """Each oversize event is one dead letter naming its field, and a 400 naming it over
    HTTP; the largest valid events are counted and rated to the cent; and reads, `/readyz`
    and the projector carry on."""
    letters = sql(stack, "SELECT payload, reason, field FROM dead_letters")
    for value, field in OVERSIZE.values():
        found = [(r["reason"], r["field"]) for r in letters if r["payload"] == value.decode()]
        assert found == [("invalid_field", field)], (value, found)
    api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=60)
    for value, field in OVERSIZE.values():
        answer = api.post("/v1/events", content=value,
                          headers={"Content-Type": "application/cloudevents+json"})  # fmt: skip
        assert answer.status_code == 400, answer.text
        [error] = answer.json()["errors"]
        assert (error["reason"], error["field"]) == ("invalid_field", field), error
    usage = {s["service"]: s for s in stack.json("usage", "biggest", MONTH)}
    # 2 * 10^9 chats over 1,500 included: 1,999,999 packages of 1,000 at 32.40
    assert (usage["chat"]["usage"], usage["chat"]["packages"]) == ("2000000000", 1_999_999)
    assert usage["chat"]["amount"] == "64799967.60"
    assert (usage["mailing"]["packages"], usage["mailing"]["amount"]) == (20_000, "648000.00")
    assert usage["storage"]["usage"] == "1000000"  # GB: 10^15 bytes
    assert (usage["storage"]["packages"], usage["storage"]["amount"]) == (19_999, "647967.60")
    crossings = api.get("/v1/threshold-crossings", params={"month": MONTH, "tenant": "biggest"})
    assert crossings.status_code == 200, crossings.text
    packages = [c["package"] for c in crossings.json()["crossings"] if c["service"] == "chat"]
    assert max(p for p in packages if p is not None) == 1_999_999
    assert sql(stack, "SELECT count(*) AS n FROM set_aside") == [{"n": 0}]
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert api.get("/healthz").status_code == 200
    api.close()
