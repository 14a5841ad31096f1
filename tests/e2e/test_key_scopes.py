"""Keys scoped to their job, through the real API and broker: a product service's producer key
cannot change a tenant's seats, limited keys post only their sources and tenants, and a batch
with any event outside the key's scope is refused whole, with nothing written to the log."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent

from projections.months import month_of, previous_month
from runtime.settings import Settings
from streams.kafka import end_offsets
from tests.conftest import Stack
from tests.factories import cloudevent, limited_key, stored_keys

pytestmark = pytest.mark.integration

MONTH = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
KEYS = {"producer": "p-scope", "licensing": "l-scope", "operations": "o-scope",
        "finance": "f-scope", "metrics": "m-scope"}  # fmt: skip
LIMITED = {"crm only": "p-crm", "acme only": "p-acme"}
BATCH = "application/cloudevents-batch+json"
ONE = "application/cloudevents+json"


def usage(n: int, *, tenant: str = "acme", source: str = "crm") -> dict[str, Any]:
    return cloudevent("metering.chat.started", {"quantity": 5}, tenant=tenant, source=source,
                      time=f"{MONTH}-10T10:00:00Z", id=f"u-{n}")  # fmt: skip


def licence(users: int, n: int) -> dict[str, Any]:
    return cloudevent("licensing.licenses.changed", {"users": users, "modules": []},
                      tenant="acme", source="licensing", time=f"{MONTH}-01T00:00:0{n}Z",
                      id=f"lic-{n}")  # fmt: skip


def system(n: int) -> dict[str, Any]:
    return cloudevent("system.event.registered", {"key": "Import", "scope": "database"},
                      tenant="acme", source="jobs", time=f"{MONTH}-12T08:00:00Z",
                      id=f"sys-{n}")  # fmt: skip


@dataclass
class Api:
    client: httpx.Client
    settings: Settings

    def post(self, key: str, body: Any, media: str = ONE) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": media}
        return self.client.post("/v1/events", content=orjson.dumps(body), headers=headers)

    def seats(self) -> Any:
        finance = {"Authorization": f"Bearer {KEYS['finance']}"}
        return self.client.get("/v1/tenants/acme/licenses", headers=finance).json()["users"]

    def written(self) -> dict[Any, int]:
        topics = self.settings.topics
        return asyncio.run(
            end_offsets(self.settings, (topics.usage, topics.licenses, topics.system))
        )


def refused(answer: httpx.Response) -> list[tuple[int, str]]:
    """(index, field) of each event a 403 names as outside the key's scope."""
    assert answer.status_code == 403, answer.text
    assert {e["reason"] for e in answer.json()["errors"]} == {"out_of_scope"}
    return [(e["index"], e["field"]) for e in answer.json()["errors"]]


def test_keys_post_only_what_their_role_and_limits_allow(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    limited = [
        limited_key("producer", LIMITED["crm only"], sources=["crm"]),
        limited_key("producer", LIMITED["acme only"], tenants=["acme"]),
    ]
    stack.start_projector(METERING_API_KEYS=stored_keys(KEYS, *limited))
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
    )
    with httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=120) as client:
        api = Api(client, settings)
        a_producer_key_cannot_change_seats(api)
        limited_keys_post_their_own_sources_and_tenants(api)
        operations_keys_post_system_events_only(api)
        a_mixed_batch_is_refused_whole(api)
        a_metrics_key_reads_and_posts_nothing(api)


def a_producer_key_cannot_change_seats(api: Api) -> None:
    assert api.post(KEYS["licensing"], licence(40, 1)).status_code == 202
    assert api.seats() == 40
    before = api.written()
    assert refused(api.post(KEYS["producer"], licence(4000, 2))) == [(0, "type")]
    # Binary mode (ce-* headers) is judged the same way.
    attributes = {k: v for k, v in licence(4000, 3).items() if k not in {"data", "time"}}
    attributes |= {"time": dt.datetime.fromisoformat(f"{MONTH}-01T00:00:03Z"),
                   "datacontenttype": "application/json"}  # fmt: skip
    message = http.to_binary_event(CloudEvent(attributes=attributes, data={"users": 4000}))
    producer = {"Authorization": f"Bearer {KEYS['producer']}"}
    binary = api.client.post(
        "/v1/events", content=message.body, headers=dict(message.headers) | producer
    )
    assert refused(binary) == [(0, "type")]
    assert api.written() == before
    assert api.seats() == 40
    assert api.post(KEYS["licensing"], licence(41, 4)).status_code == 202
    assert api.seats() == 41


def limited_keys_post_their_own_sources_and_tenants(api: Api) -> None:
    before = api.written()
    assert refused(api.post(LIMITED["crm only"], usage(1, source="erp"))) == [(0, "source")]
    assert refused(api.post(LIMITED["acme only"], usage(2, tenant="beta"))) == [(0, "subject")]
    assert api.written() == before
    assert api.post(LIMITED["crm only"], usage(3, tenant="beta")).status_code == 202
    assert api.post(LIMITED["acme only"], usage(4, source="erp")).status_code == 202


def operations_keys_post_system_events_only(api: Api) -> None:
    assert api.post(KEYS["operations"], system(1)).status_code == 202
    before = api.written()
    assert refused(api.post(KEYS["operations"], usage(5))) == [(0, "type")]
    assert refused(api.post(KEYS["operations"], licence(1, 5))) == [(0, "type")]
    assert refused(api.post(KEYS["licensing"], system(2))) == [(0, "type")]
    assert api.written() == before


def a_mixed_batch_is_refused_whole(api: Api) -> None:
    before = api.written()
    mixed = [usage(6), usage(7), licence(1, 6), usage(8), system(3)]
    assert refused(api.post(KEYS["producer"], mixed, BATCH)) == [(2, "type"), (4, "type")]
    assert api.written() == before  # its usage events are not written either
    assert api.post(KEYS["producer"], [usage(6), usage(7), usage(8)], BATCH).status_code == 202
    assert api.seats() == 41


def a_metrics_key_reads_and_posts_nothing(api: Api) -> None:
    metrics = {"Authorization": f"Bearer {KEYS['metrics']}"}
    assert api.post(KEYS["metrics"], usage(9)).status_code == 403
    for path in ("/v1/tenants/acme/licenses", f"/v1/invoices/{MONTH}", f"/v1/audit/{MONTH}"):
        assert api.client.get(path, headers=metrics).status_code == 403, path
