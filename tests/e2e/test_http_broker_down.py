"""With the broker gone the API says 503, never a silent loss and never a 500."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import orjson
import pytest

from metering.broker import start_broker
from projections.months import month_of, previous_month
from tests.conftest import CACHE, Stack
from tests.factories import cloudevent

pytestmark = pytest.mark.integration


def test_broker_down_is_503(stack: Stack, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "own-kafka", CACHE)
    try:
        stack.env["METERING_KAFKA_BOOTSTRAP"] = broker.bootstrap
        stack.create_topics()
        stack.start_projector()
        api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=120)
        month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
        event = cloudevent("metering.chat.started", {"quantity": 2}, time=f"{month}-05T10:00:00Z",
                           id="c1")  # fmt: skip
        headers = {"Content-Type": "application/cloudevents+json"}
        assert (
            api.post("/v1/events", content=orjson.dumps(event), headers=headers).status_code == 202
        )
        assert api.get("/readyz").status_code == 200
    finally:
        broker.stop()
    event["id"] = "c2"
    refused = api.post("/v1/events", content=orjson.dumps(event), headers=headers)
    assert refused.status_code == 503, refused.text
    assert "broker" in refused.text
    assert api.get("/readyz").status_code == 503
    assert api.get(f"/v1/invoices/{month}").status_code == 503
    api.close()
