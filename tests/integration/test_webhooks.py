"""Webhooks end to end: a subscription made over HTTP, a tenant crossing its thresholds, and
a real local receiver that gets one signed webhook per crossing (checked with the
`standardwebhooks` package), also when it answers 500 at first."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from billing.plan import load_plan
from projections.months import month_of, next_month
from runtime.settings import Settings
from streams.kafka import admin_client, consumer, partitions_of, read_all
from tests.conftest import Stack
from tests.factories import cloudevent

pytestmark = pytest.mark.integration
MAILING = "metering.mailing.sent"
THRESHOLDS = ["threshold.warning", "threshold.exceeded", "threshold.package"]


class Receiver:
    """An HTTP endpoint that records every request, and answers 500 to the first
    `failures` requests of each webhook id; each answer takes `delay` seconds."""

    def __init__(
        self, failures: int = 0, delay: float = 0.0, first_delay: float = 0.0, port: int = 0
    ) -> None:
        self.failures, self.delay, self.first_delay = failures, delay, first_delay
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                webhook_id = self.headers.get("webhook-id")
                with receiver.lock:
                    first = all(h.get("webhook-id") != webhook_id for h, _, _ in receiver.requests)
                time.sleep(receiver.first_delay if first else receiver.delay)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    seen = sum(
                        1
                        for h, _, _ in receiver.requests
                        if h.get("webhook-id") == headers.get("webhook-id")
                    )
                    status = 500 if seen < receiver.failures else 204
                    receiver.requests.append((headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b, status in self.requests if status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(failures=1)
    yield found
    found.close()


def _up(stack: Stack) -> tuple[str, Any]:
    """Worker, read model and notifier on the test's topics; the API's URL and the notifier.
    Endpoints may be on loopback: the receivers are."""
    stack.env["METERING_WEBHOOK_ALLOW_PRIVATE"] = "true"
    stack.create_topics()
    stack.start_worker()
    stack.start_projector()
    notifier, _ = stack.start("notifier")
    return stack.env["METERING_API_URL"], notifier


def _subscribe(api: str, url: str, types: list[str], tenant: str | None = None) -> Any:
    """A new subscription as `POST /v1/webhooks` answers it (with its secret)."""
    body: dict[str, Any] = {"url": url, "event_types": types}
    if tenant is not None:
        body["tenant"] = tenant
    made = httpx.post(f"{api}/v1/webhooks", json=body, timeout=30)
    assert made.status_code == 201, made.text
    return made.json()


def _events(now: dt.datetime) -> list[dict[str, Any]]:
    at = lambda minutes: (now - dt.timedelta(minutes=minutes)).isoformat()  # noqa: E731
    return [
        cloudevent("licensing.licenses.changed", {"users": 40, "modules": []},
                   tenant="acme", time=at(90), id="lic-1", source="licensing"),
        cloudevent("licensing.licenses.changed", {"users": 40, "modules": []},
                   tenant="other", time=at(90), id="lic-2", source="licensing"),
        cloudevent(MAILING, {"quantity": 9_000}, tenant="acme", time=at(30), id="m1"),
        cloudevent(MAILING, {"quantity": 90_000}, tenant="acme", time=at(20), id="m2"),
        cloudevent(MAILING, {"quantity": 90_000}, tenant="other", time=at(20), id="m3"),
    ]  # fmt: skip


def test_every_crossing_reaches_its_subscriber_once_signed(
    stack: Stack, receiver: Receiver
) -> None:
    api, _ = _up(stack)
    subscription = _subscribe(api, receiver.url, THRESHOLDS, tenant="acme")
    assert subscription["secret"].startswith("whsec_")
    answer = httpx.get(f"{api}/v1/webhooks", timeout=60)
    assert answer.status_code == 200, answer.text
    listed = answer.json()["webhooks"]
    assert [w["id"] for w in listed] == [subscription["id"]]
    assert "secret" not in listed[0]

    stack.cli("send", str(stack.write("events.jsonl", _events(dt.datetime.now(dt.UTC)))))
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
    )
    crossings = _wait_for_crossings(settings)
    expected = {c["id"]: c for c in crossings if c["tenant"] == "acme"}
    assert {c["level"] for c in expected.values()} == {"warning", "exceeded", "package"}
    assert any(c["tenant"] == "other" for c in crossings)  # and those must not arrive

    deadline = time.monotonic() + 90
    while {h["webhook-id"] for h, _ in receiver.delivered()} != set(expected):
        assert time.monotonic() < deadline, (receiver.requests, expected)
        time.sleep(0.2)
    verify = Webhook(subscription["secret"])
    for headers, body in receiver.delivered():
        message = verify.verify(body, headers)
        crossing = expected[headers["webhook-id"]]
        assert message["type"] == f"threshold.{crossing['level']}"
        assert message["data"] == crossing
    # Each webhook was refused once (500) and delivered on its retry: two attempts each.
    attempts = Counter(h["webhook-id"] for h, _, _ in receiver.requests)
    assert attempts == {webhook_id: 2 for webhook_id in expected}

    # The log is written after each answer: it may trail the receiver by a moment.
    log_url = f"{api}/v1/webhooks/{subscription['id']}/deliveries"
    while len(httpx.get(log_url, timeout=60).json()["deliveries"]) < 2 * len(expected):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    log = httpx.get(log_url, timeout=60).json()["deliveries"]
    outcomes = sorted((d["webhook_id"], d["attempt"], d["status_code"], d["outcome"]) for d in log)
    assert outcomes == sorted(
        row for webhook_id in expected
        for row in ((webhook_id, 1, 500, "retrying"), (webhook_id, 2, 204, "delivered"))
    )  # fmt: skip


def _wait_for_crossings(settings: Settings) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 90
    while True:
        records = asyncio.run(read_all(settings, settings.topics.crossings))
        found = [orjson.loads(r.value) for r in records if r.value]
        if {c["level"] for c in found if c["tenant"] == "acme"} >= {
            "warning",
            "exceeded",
            "package",
        }:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


USAGE_AGO = dt.timedelta(minutes=20)


def _crossing_month(tenants: list[str], now: dt.datetime) -> list[dict[str, Any]]:
    """Seats, then usage over each tenant's threshold, all of it at `now - USAGE_AGO`: one
    usage month whatever the day (a month can begin between two earlier moments)."""
    at = lambda minutes: (now - dt.timedelta(minutes=minutes)).isoformat()  # noqa: E731
    used = USAGE_AGO.total_seconds() / 60
    events = []
    for n, tenant in enumerate(tenants):
        events += [
            cloudevent("licensing.licenses.changed", {"users": 40, "modules": []},
                       tenant=tenant, time=at(90), id=f"lic-{n}", source="licensing"),
            cloudevent(MAILING, {"quantity": 9_000}, tenant=tenant, time=at(used), id=f"a{n}"),
            cloudevent(MAILING, {"quantity": 90_000}, tenant=tenant, time=at(used), id=f"b{n}"),
        ]  # fmt: skip
    return events


def test_a_notifier_killed_mid_burst_delivers_everything_after_a_restart(stack: Stack) -> None:
    # Every first attempt fails, so every delivery waits in the outbox for its retry; the
    # retries are slow enough that the kill finds them in flight.
    receiver = Receiver(failures=1, delay=0.5)
    try:
        api, notifier = _up(stack)
        secret = _subscribe(api, receiver.url, THRESHOLDS)["secret"]
        tenants = [f"tenant-{n:02d}" for n in range(40)]
        events = _crossing_month(tenants, dt.datetime.now(dt.UTC))
        stack.cli("send", str(stack.write("events.jsonl", events)))
        settings = Settings(
            kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
            topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
        )
        expected = set()
        deadline = time.monotonic() + 90
        while len(expected) < 3 * len(tenants):
            assert time.monotonic() < deadline, len(expected)
            records = asyncio.run(read_all(settings, settings.topics.crossings))
            expected = {orjson.loads(r.value)["id"] for r in records if r.value}
            time.sleep(0.5)
        # The crossings' offsets committed: what the restarted notifier sends must come from
        # its recovered outbox, not from reading the crossings again.
        while not asyncio.run(_committed(settings, f"{stack.env['METERING_APP_ID']}-notifier")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        while len(receiver.delivered()) < 10:  # some delivered, most still to go
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stack.stop(notifier, kill=True)
        got_before_kill = {h["webhook-id"] for h, _ in receiver.delivered()}
        assert got_before_kill < expected
        stack.start("notifier")
        while {h["webhook-id"] for h, _ in receiver.delivered()} != expected:
            assert time.monotonic() < deadline + 60, len(receiver.delivered())
            time.sleep(0.2)
        verify = Webhook(secret)
        for headers, body in receiver.delivered():
            verify.verify(body, headers)
        # At least once: a few may come twice (in flight at the kill); never a third time.
        counts = Counter(h["webhook-id"] for h, _ in receiver.delivered())
        assert max(counts.values()) <= 2, counts.most_common(3)
    finally:
        receiver.close()


async def _committed(settings: Settings, group: str) -> bool:
    """Whether `group` committed every crossing the topic holds."""
    topic = settings.topics.crossings
    async with admin_client(settings) as admin:
        offsets = await admin.list_consumer_group_offsets(group)
    tps = await partitions_of(settings, topic)
    async with consumer(settings) as client:
        ends = await client.end_offsets(tps)
    return all(
        offsets.get(tp) is not None and offsets[tp].offset >= end for tp, end in ends.items()
    )


def test_a_close_sends_each_tenant_its_invoice_once(stack: Stack, receiver: Receiver) -> None:
    api, _ = _up(stack)
    made = _subscribe(api, receiver.url, ["invoice.closed"])
    now = dt.datetime.now(dt.UTC)
    tenants = [f"tenant-{n:02d}" for n in range(6)]
    stack.cli("send", str(stack.write("events.jsonl", _crossing_month(tenants, now))))
    month = month_of(now - USAGE_AGO, load_plan().zone)
    # The usage month is the current one (or, just after a month began, the last): closed
    # early if need be, as `--force` allows.
    stack.cli("close", month, "--force")
    invoice_month = next_month(month)  # a month's usage is billed on the next month's invoice
    lines = httpx.get(f"{api}/v1/invoices/{invoice_month}", timeout=60).json()["lines"]
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_tenant.setdefault(line["tenant"], []).append(line)
    assert set(by_tenant) == set(tenants)  # each tenant went over: each has an invoice

    deadline = time.monotonic() + 90
    while len({h["webhook-id"] for h, _ in receiver.delivered()}) < len(tenants):
        assert time.monotonic() < deadline, receiver.requests
        time.sleep(0.2)
    time.sleep(1)  # nothing more may come
    verify = Webhook(made["secret"])
    invoices = [verify.verify(body, headers) for headers, body in receiver.delivered()]
    assert len({h["webhook-id"] for h, _ in receiver.delivered()}) == len(tenants)
    for invoice in invoices:
        assert invoice["type"] == "invoice.closed"
        data = invoice["data"]
        expected = by_tenant[data["tenant"]]
        assert sorted(line["id"] for line in data["lines"]) == sorted(
            line["id"] for line in expected
        )
        total = sum(Decimal(line["amount"]) for line in expected)
        assert Decimal(data["total"]) == total


def _system(tenant: str, type_: str, data: dict[str, Any], at: dt.datetime, n: int) -> Any:
    return cloudevent(
        f"system.event.{type_}", data, tenant=tenant, time=at.isoformat(), id=f"s{n}",
        source="ops",
    )  # fmt: skip


def test_system_events_are_told_started_finished_and_overdue_once(
    stack: Stack, receiver: Receiver
) -> None:
    api, _ = _up(stack)
    types = ["system_event.started", "system_event.finished", "system_event.overdue"]
    made = _subscribe(api, receiver.url, types)
    now = dt.datetime.now(dt.UTC)
    past, later = (
        (now - dt.timedelta(minutes=5)).isoformat(),
        (now + dt.timedelta(hours=2)).isoformat(),
    )
    events = [
        # An import running past its expected finish: started, then overdue (once).
        _system("acme", "registered", {"key": "import", "scope": "database", "status": "running",
                "activated_at": past, "eta": past}, now - dt.timedelta(minutes=6), 1),
        # A rebuild that finishes before its expected finish: started, finished, never overdue.
        _system("acme", "registered", {"key": "rebuild", "scope": "system", "status": "running",
                "activated_at": past, "eta": later}, now - dt.timedelta(minutes=6), 2),
        _system("acme", "updated", {"key": "rebuild", "scope": "system", "status": "finished"},
                now - dt.timedelta(minutes=1), 3),
        # Queued only: nothing to tell.
        _system("beta", "registered", {"key": "maintenance", "scope": "system",
                "status": "queued"}, now - dt.timedelta(minutes=1), 4),
    ]  # fmt: skip
    stack.cli("send", str(stack.write("system.jsonl", events)))
    verify = Webhook(made["secret"])
    wanted = {("import", "started"), ("import", "overdue"), ("rebuild", "started"),
              ("rebuild", "finished")}  # fmt: skip
    deadline = time.monotonic() + 90
    while True:
        told = [verify.verify(body, headers) for headers, body in receiver.delivered()]
        got = {(m["data"]["key"], m["type"].split(".")[1]) for m in told}
        if got >= wanted:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    time.sleep(3)  # three more looks of the overdue timer: nothing new may come
    ids = Counter(h["webhook-id"] for h, _ in receiver.delivered())
    assert len(ids) == len(wanted) and max(ids.values()) == 1, ids


def test_a_receiver_that_hangs_or_is_down_gets_everything_once_it_answers(stack: Stack) -> None:
    hanging = Receiver(first_delay=20.0)  # longer than a whole attempt may take (15 s)
    with socket.socket() as probe:  # a port nobody listens on, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down_url = f"http://127.0.0.1:{port}/hooks"
    try:
        api, _ = _up(stack)
        made = {
            name: _subscribe(api, url, ["threshold.exceeded"])
            for name, url in (("hanging", hanging.url), ("down", down_url))
        }
        now = dt.datetime.now(dt.UTC)
        stack.cli("send", str(stack.write("events.jsonl", _crossing_month(["acme"], now))))
        time.sleep(8)  # the down endpoint refuses a first attempt or two meanwhile
        down = Receiver(port=port)
        try:
            deadline = time.monotonic() + 90
            for receiver in (hanging, down):
                while not receiver.delivered():
                    assert time.monotonic() < deadline, receiver.requests
                    time.sleep(0.2)
            log_url = f"{api}/v1/webhooks/{made['down']['id']}/deliveries"
            while not any(d["outcome"] == "delivered" for d in _log(log_url)):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            attempts = _log(log_url)
            refused = [d for d in attempts if d["outcome"] == "retrying"]
            assert refused and all(d["status_code"] is None for d in refused), attempts
            assert all(d["error"] for d in refused)
            hung = _log(f"{api}/v1/webhooks/{made['hanging']['id']}/deliveries")
            assert any(d["error"] == "timed out" for d in hung), hung
            for receiver, name in ((hanging, "hanging"), (down, "down")):
                verify = Webhook(made[name]["secret"])
                for headers, body in receiver.delivered():
                    assert verify.verify(body, headers)["type"] == "threshold.exceeded"
        finally:
            down.close()
    finally:
        hanging.close()


def _log(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(url, timeout=60)
    assert answer.status_code == 200, answer.text
    deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
    return deliveries
