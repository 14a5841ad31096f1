"""Real clients, as a new user would bring them (issue 13, item 5): every event counts once for
its tenant whichever client, content mode and partition it took.

Seven tenants, each through its own path: `confluent-kafka` keyed by tenant (librdkafka hashes
keys with CRC32, not murmur2: `conf-a`'s records land off its home partition), `kcat -P`
without a key, the CloudEvents SDK in binary and in structured mode over Kafka (unkeyed) and
over HTTP, and `mixed-x` through confluent-kafka, kcat and `metering send`, with two
duplicates each sent through another client than its original. After the close, the invoice
lines equal the hand-computed lines to the cent, the audit is clean, the accounting identity
holds by the worker's metrics and by the read model, and records really were moved. The second
variant SIGKILLs the worker twice during the load and must reach the same lines.

The month is last month (in the plan's zone, UTC): it has ended, so it can be closed, and its
end is at most 31 days ago, far inside the 90 days its usage is accepted; every event time in
it is in the past, so none is "future". That holds on every day of the year.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import subprocess
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings import http, kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import KafkaError, Message, Producer

from projections.months import month_of, next_month, previous_month
from runtime.settings import Settings
from schemas.services import default_catalog
from streams.progress import wait_for_workers
from streams.routing import home
from tests.conftest import Stack
from tests.factories import cloudevent

pytestmark = pytest.mark.integration

UTC = dt.UTC
GB = 10**9
M = previous_month(month_of(dt.datetime.now(UTC), UTC))  # the plan bills in UTC
INVOICE = next_month(M)
PARTITIONS = 4  # tests.conftest.make_stack

CHAT, FORM, MAIL = "metering.chat.started", "metering.form.submitted", "metering.mailing.sent"
LOGIN, STORAGE = "metering.customer_center.login", "metering.storage.measured"

# Users per tenant (licence snapshots, sent first): bands are 1-50, 51-100, 101+.
USERS = {"conf-a": 40, "kcat-b": 60, "kbin-c": 10, "kstruct-d": 120, "httpbin-e": 50,
         "httpstruct-f": 51, "mixed-x": 75}  # fmt: skip


def at(n: int) -> str:
    """A time in M: days 1-27, one minute apart within the day."""
    return f"{M}-{n % 27 + 1:02d}T10:{n % 60:02d}:00Z"


def events(tenant: str, type_: str, amounts: list[int], source: str) -> list[dict[str, Any]]:
    field = "bytes" if type_ == STORAGE else "quantity"
    return [
        cloudevent(type_, {field: amount}, tenant=tenant, time=at(n), source=source,
                   id=f"{tenant}-{type_.split('.')[1]}-{source.rsplit('/', 1)[-1]}-{n}")
        for n, amount in enumerate(amounts)
    ]  # fmt: skip


LICENCES = [
    cloudevent("licensing.licenses.changed", {"users": users, "modules": []}, tenant=tenant,
               time=f"{previous_month(M)}-20T00:00:00Z", id=f"lic-{tenant}", source="licensing")
    for tenant, users in USERS.items()
]  # fmt: skip

# (1) confluent-kafka, default partitioner, key = tenant
CONFLUENT = [
    *events("conf-a", CHAT, [130] * 20, "crm/confluent"),
    *events("conf-a", FORM, [95] * 10, "crm/confluent"),  # 950 of 1,000 included: no line
    *events("conf-a", STORAGE, [60 * GB, 120 * GB, 90 * GB, 30 * GB], "crm/confluent"),
]
# (2) kcat -P, no key
KCAT = [
    *events("kcat-b", MAIL, [2_000] * 20, "crm/kcat"),
    *events("kcat-b", LOGIN, [100] * 25, "crm/kcat"),
]
# (3) the SDK's Kafka binding, binary mode (ce_ headers), unkeyed, through confluent-kafka
SDK_KAFKA_BINARY = [
    *events("kbin-c", FORM, [250] * 15, "crm/sdk-kafka-binary"),
    *events("kbin-c", MAIL, [5_000] * 4, "crm/sdk-kafka-binary"),
]
# (4) the SDK's Kafka binding, structured mode, unkeyed, through aiokafka
SDK_KAFKA_STRUCTURED = [
    *events("kstruct-d", CHAT, [300] * 12, "crm/sdk-kafka-structured"),
    *events("kstruct-d", LOGIN, [500] * 10, "crm/sdk-kafka-structured"),
]
# (5) the SDK's HTTP binding, binary (ce- headers, percent-encoded) and structured
SDK_HTTP_BINARY = [
    *events("httpbin-e", LOGIN, [200] * 14, "crm/sdk http binary"),  # a space: %20 on the wire
    *events("httpbin-e", STORAGE, [40 * GB, 75 * GB], "crm/sdk http binary"),
]
SDK_HTTP_STRUCTURED = [
    *events("httpstruct-f", MAIL, [5_000] * 8, "crm/sdk-http-structured"),
    *events("httpstruct-f", FORM, [300] * 9, "crm/sdk-http-structured"),
]
# (6) one tenant through confluent-kafka, kcat and `metering send`; a duplicate of a
# confluent-kafka event goes through `metering send`, one of a `metering send` event through kcat.
MIXED_CONFLUENT = events("mixed-x", CHAT, [150] * 10, "crm/confluent")
MIXED_SEND = [
    *events("mixed-x", CHAT, [200] * 5, "crm/send"),
    *events("mixed-x", STORAGE, [100 * GB, 150 * GB, 120 * GB], "crm/send"),
]
MIXED_KCAT = events("mixed-x", CHAT, [150] * 10, "crm/kcat")
DUPLICATES = {"send": [MIXED_CONFLUENT[0]], "kcat": [MIXED_SEND[0]]}

ALL_USAGE = [
    *CONFLUENT, *KCAT, *SDK_KAFKA_BINARY, *SDK_KAFKA_STRUCTURED, *SDK_HTTP_BINARY,
    *SDK_HTTP_STRUCTURED, *MIXED_CONFLUENT, *MIXED_SEND, *MIXED_KCAT,
    *DUPLICATES["send"], *DUPLICATES["kcat"],
]  # fmt: skip

# The invoice of M, by hand (plan.toml 2020-01: 32.40 per package; included per band):
# (tenant, service, usage, users, included, packages, amount, events)
EXPECTED_LINES = [
    # 20 x 130 = 2,600 chats - 1,500 = 1,100: 2 packages of 1,000
    ("conf-a", "chat", "2600", 40, "1500", 2, Decimal("64.80"), 20),
    # peak 120 GB - 50 GB = 70 GB: 2 packages of 50 GB
    ("conf-a", "storage", "120", 40, "50", 2, Decimal("64.80"), 4),
    # 14 x 200 = 2,800 logins - 1,000 (band 1: 50 users) = 1,800: 2 packages of 1,000
    ("httpbin-e", "customer_center", "2800", 50, "1000", 2, Decimal("64.80"), 14),
    # peak 75 GB - 50 GB = 25 GB: 1 package
    ("httpbin-e", "storage", "75", 50, "50", 1, Decimal("32.40"), 2),
    # 9 x 300 = 2,700 forms - 2,000 (band 2: 51 users) = 700: 1 package
    ("httpstruct-f", "form", "2700", 51, "2000", 1, Decimal("32.40"), 9),
    # 8 x 5,000 = 40,000 e-mails - 30,000 = 10,000: 1 package of 50,000
    ("httpstruct-f", "mailing", "40000", 51, "30000", 1, Decimal("32.40"), 8),
    # 15 x 250 = 3,750 forms - 1,000 = 2,750: 3 packages
    ("kbin-c", "form", "3750", 10, "1000", 3, Decimal("97.20"), 15),
    # 4 x 5,000 = 20,000 e-mails - 15,000 = 5,000: 1 package
    ("kbin-c", "mailing", "20000", 10, "15000", 1, Decimal("32.40"), 4),
    # 25 x 100 = 2,500 logins - 2,000 = 500: 1 package
    ("kcat-b", "customer_center", "2500", 60, "2000", 1, Decimal("32.40"), 25),
    # 20 x 2,000 = 40,000 e-mails - 30,000 = 10,000: 1 package
    ("kcat-b", "mailing", "40000", 60, "30000", 1, Decimal("32.40"), 20),
    # 12 x 300 = 3,600 chats - 2,500 (band 3) = 1,100: 2 packages
    ("kstruct-d", "chat", "3600", 120, "2500", 2, Decimal("64.80"), 12),
    # 10 x 500 = 5,000 logins - 4,000 = 1,000: 1 package
    ("kstruct-d", "customer_center", "5000", 120, "4000", 1, Decimal("32.40"), 10),
    # 10 x 150 + 10 x 150 + 5 x 200 = 4,000 chats (the two duplicates not counted) - 2,000
    # = 2,000: exactly 2 packages, so that one duplicate counted would add a third
    ("mixed-x", "chat", "4000", 75, "2000", 2, Decimal("64.80"), 25),
    # peak 150 GB - 100 GB = 50 GB: 1 package
    ("mixed-x", "storage", "150", 75, "100", 1, Decimal("32.40"), 3),
]
EXPECTED_TOTAL = Decimal("680.40")
MIXED_USAGE = {"chat": "4000", "storage": "150", "mailing": "0", "customer_center": "0",
               "form": "0"}  # fmt: skip


def settings_of(stack: Stack) -> Settings:
    return Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
        app_id=stack.env["METERING_APP_ID"],
        partitions=PARTITIONS,
    )


def sdk_event(event: dict[str, Any]) -> CloudEvent:
    attributes = {k: v for k, v in event.items() if k != "data"}
    attributes["time"] = dt.datetime.fromisoformat(attributes["time"])
    attributes["datacontenttype"] = "application/json"
    return CloudEvent(attributes=attributes, data=event["data"])


def confluent(bootstrap: str, topic: str, messages: list[dict[str, Any]]) -> None:
    """Produce with confluent-kafka: `key`, `value` and `headers` of each message as given."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failed: list[KafkaError] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failed.append(error)

    for message in messages:
        producer.produce(topic, on_delivery=delivered, **message)
    assert producer.flush(60) == 0, "confluent-kafka did not deliver every message"
    assert not failed, failed


def kcat(bootstrap: str, topic: str, lines: list[dict[str, Any]]) -> None:
    """`kcat -P` without a key: librdkafka's partitioner spreads the records."""
    binary = shutil.which("kcat") or shutil.which("kafkacat")
    assert binary, "kcat is needed: Debian's kcat package (scripts/bootstrap.sh)"
    done = subprocess.run(
        [binary, "-P", "-b", bootstrap, "-t", topic],
        input=b"".join(orjson.dumps(line) + b"\n" for line in lines),
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()


def aiokafka_unkeyed(bootstrap: str, topic: str, messages: list[tuple[bytes, Any]]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value, headers=headers) for value, headers in messages
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(send())


def post(api: httpx.Client, message: http.HTTPMessage) -> None:
    answer = api.post("/v1/events", content=message.body, headers=dict(message.headers))
    assert (answer.status_code, answer.json()) == (202, {"accepted": 1}), answer.text


def loads(stack: Stack) -> list[Callable[[], None]]:
    """The load, in the order it is sent: one step per client."""
    bootstrap = stack.env["METERING_KAFKA_BOOTSTRAP"]
    usage = settings_of(stack).topics.usage
    fmt = JSONFormat()

    def step_confluent() -> None:
        keyed = [*CONFLUENT, *MIXED_CONFLUENT]
        messages = [{"key": e["subject"].encode(), "value": orjson.dumps(e)} for e in keyed]
        confluent(bootstrap, usage, messages)

    def step_send() -> None:
        stack.cli("send", str(stack.write("mixed.jsonl", [*MIXED_SEND, *DUPLICATES["send"]])))

    def step_kcat() -> None:
        kcat(bootstrap, usage, [*KCAT, *MIXED_KCAT, *DUPLICATES["kcat"]])

    def step_sdk_kafka_binary() -> None:
        messages = [kafka.to_binary(sdk_event(e), fmt) for e in SDK_KAFKA_BINARY]
        assert all(m.key is None and "ce_specversion" in m.headers for m in messages)
        unkeyed = [{"value": m.value, "headers": list(m.headers.items())} for m in messages]
        confluent(bootstrap, usage, unkeyed)

    def step_sdk_kafka_structured() -> None:
        messages = [kafka.to_structured(sdk_event(e), fmt) for e in SDK_KAFKA_STRUCTURED]
        assert all(m.key is None for m in messages)
        aiokafka_unkeyed(bootstrap, usage, [(m.value, list(m.headers.items())) for m in messages])

    def step_sdk_http() -> None:
        with httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=60) as api:
            for event in SDK_HTTP_BINARY:
                message = http.to_binary_event(sdk_event(event))
                assert message.headers["ce-source"] == "crm/sdk%20http%20binary"
                post(api, message)
            for event in SDK_HTTP_STRUCTURED:
                post(api, http.to_structured_event(sdk_event(event)))

    return [step_confluent, step_send, step_kcat, step_sdk_kafka_binary,
            step_sdk_kafka_structured, step_sdk_http]  # fmt: skip


def worker_metrics(url: str) -> dict[str, Counter[str]]:
    """`metering_events_total` by outcome and service, and dead letters by reason."""
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310  # our worker's URL
        text = answer.read().decode()
    found: dict[str, Counter[str]] = {"dead_letters": Counter()}
    for line in text.splitlines():
        sample = re.fullmatch(r"(metering_events_total|metering_dead_letters_total)\{(.*)\} (\S+)",
                              line)  # fmt: skip
        if sample is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample[2]))
        value = int(float(sample[3]))
        if sample[1] == "metering_dead_letters_total":
            found["dead_letters"][labels["reason"]] += value
        else:
            found.setdefault(labels["outcome"], Counter())[labels["service"]] += value
    return found


def produced_and_distinct() -> tuple[Counter[str], Counter[str]]:
    produced: Counter[str] = Counter()
    identities: dict[str, set[tuple[str, str, str]]] = {}
    for event in ALL_USAGE:
        service = default_catalog().by_type[event["type"]].name
        produced[service] += 1
        identities.setdefault(service, set()).add((event["subject"], event["source"], event["id"]))
    return produced, Counter({service: len(ids) for service, ids in identities.items()})


def line_view(line: dict[str, Any]) -> tuple[Any, ...]:
    assert (line["usage_month"], line["kind"], line["unit_price"]) == (M, "overage", "32.40")
    return (
        line["tenant"], line["service"], line["usage"], line["users"], line["included"],
        line["packages"], Decimal(line["amount"]), line["events"],
    )  # fmt: skip


def test_the_hand_computed_invoice_is_consistent() -> None:
    """The expected lines against the plan's rule, so that a typo in them cannot pass."""
    included = {"chat": (1500, 2000, 2500), "form": (1000, 2000, 3000),
                "mailing": (15_000, 30_000, 60_000), "customer_center": (1000, 2000, 4000),
                "storage": (50, 100, 200)}  # fmt: skip
    package = {"chat": 1000, "form": 1000, "mailing": 50_000, "customer_center": 1000,
               "storage": 50}  # fmt: skip
    for tenant, service, usage, users, incl, packages, amount, _ in EXPECTED_LINES:
        band = 0 if users <= 50 else 1 if users <= 100 else 2
        assert (USERS[tenant], int(incl)) == (users, included[service][band])
        assert packages == -(-(int(usage) - int(incl)) // package[service])
        assert amount == packages * Decimal("32.40")
    assert sum(line[6] for line in EXPECTED_LINES) == EXPECTED_TOTAL
    # conf-a's keys hash elsewhere under CRC32 (librdkafka) than under murmur2 (its home):
    # its records must be moved, whatever the unkeyed clients happen to do.
    assert zlib.crc32(b"conf-a") % PARTITIONS != home("conf-a", PARTITIONS)
    assert zlib.crc32(b"mixed-x") % PARTITIONS != home("mixed-x", PARTITIONS)


@pytest.mark.parametrize("kills", [0, 2], ids=["undisturbed", "worker-sigkilled-twice"])
def test_every_client_and_mode_is_invoiced_to_the_cent(stack: Stack, kills: int) -> None:
    stack.create_topics()
    worker, ready = stack.start("worker")
    stack.start_projector()
    settings = settings_of(stack)

    stack.cli("send", str(stack.write("licences.jsonl", LICENCES)))
    for _ in range(2):  # the licence records, then their copies on the tenants' partitions
        asyncio.run(wait_for_workers(settings, 90))

    steps = loads(stack)
    if kills == 0:
        for step in steps:
            step()
    else:
        # SIGKILLed right after a load reached the broker (the worker is folding and moving
        # it), more load sent while no worker runs, then the restarted worker killed while it
        # catches up: copies and state written without their commit are done again.
        steps[0]()
        stack.stop(worker, kill=True)
        steps[1]()
        steps[2]()
        worker = stack.start_worker()
        steps[3]()
        stack.stop(worker, kill=True)
        steps[4]()
        worker, ready = stack.start("worker")
        steps[5]()

    closed = stack.cli("close", M)
    assert f"{len(EXPECTED_LINES)} invoice lines on invoice {INVOICE}" in closed.stdout
    assert f"total {EXPECTED_TOTAL}" in closed.stdout

    lines = stack.json("invoice", INVOICE)
    assert sorted(line_view(ln) for ln in lines) == EXPECTED_LINES
    assert sum(Decimal(ln["amount"]) for ln in lines) == EXPECTED_TOTAL
    audit = stack.cli("audit", M)
    assert "the streamed invoice lines match the raw events" in audit.stdout
    usage = {row["service"]: row["usage"] for row in stack.json("usage", "mixed-x", M)}
    assert usage == MIXED_USAGE

    # The accounting identity in the read model: every record produced is in the archive once
    # (a second copy of a moved record is not), and counted or a duplicate.
    produced, distinct = produced_and_distinct()
    logged = stack.json("sql", f"SELECT service, count(*) AS n FROM usage_events "
                               f"WHERE month = '{M}' GROUP BY ALL")  # fmt: skip
    counted = stack.json("sql", f"SELECT service, sum(events)::BIGINT AS n FROM usage_monthly "
                                f"WHERE month = '{M}' GROUP BY ALL")  # fmt: skip
    assert {r["service"]: r["n"] for r in logged} == produced
    assert {r["service"]: r["n"] for r in counted if r["n"]} == distinct
    assert stack.json("sql", "SELECT count(*) AS n FROM dead_letters") == [{"n": 0}]

    if kills:
        return  # a killed worker's counters are gone with it: only an undisturbed one adds up
    # The worker's own counters, per service: produced = accepted + duplicate + dead-lettered
    # (none here), and moved records really were moved.
    url = orjson.loads(ready)["metrics_url"]
    deadline = time.monotonic() + 20
    while True:
        metrics = worker_metrics(url)
        balanced = all(
            metrics["accepted"][s] + metrics["duplicate"][s] == produced[s] for s in produced
        )
        if balanced or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    table = {s: (produced[s], metrics["accepted"][s], metrics["duplicate"][s]) for s in produced}
    assert all(p == a + d for p, a, d in table.values()), table
    assert metrics["accepted"] == distinct
    assert sum(metrics["duplicate"].values()) == 2
    assert sum(metrics["dead_letters"].values()) == 0
    assert sum(metrics["moved"].values()) > 0, metrics
    assert metrics["moved"]["chat"] >= 20  # conf-a's chats at least (CRC32 != its home)
