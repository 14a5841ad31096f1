"""Property-based: no generated request makes the API answer 5xx (hypothesis, real broker)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = [
    "metering.storage.measured", "metering.mailing.sent", "metering.customer_center.login",
    "metering.chat.started", "metering.form.submitted", "licensing.licenses.changed",
    "licensing.tenant.registered", "system.event.registered",
    "metering.control.month_close_requested",
]  # fmt: skip
times = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(9999, 12, 31),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-2))]),
).map(lambda t: t.isoformat()) | st.text(max_size=30)  # fmt: skip
events = st.fixed_dictionaries(
    {"specversion": st.sampled_from(["1.0", "0.3"]), "id": st.text(max_size=10),
     "source": st.text(max_size=10), "type": st.sampled_from(TYPES) | st.text(max_size=10),
     "subject": st.text(max_size=10), "time": times, "data": json_values},
) | json_values  # fmt: skip
media = st.sampled_from(
    ["application/cloudevents+json", "application/json", "application/cloudevents-batch+json",
     "text/plain", ""]
)  # fmt: skip


def test_no_generated_request_gets_a_5xx(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    stack.start_projector()
    client = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=60)
    # Settle first: a query answers 503 while the workers have not yet caught up after start.
    deadline = time.monotonic() + 120
    while client.get("/v1/invoices/2026-10").status_code != 200:
        assert time.monotonic() < deadline, "the stack did not settle"

    # Derandomized, so that CI runs the examples that passed here; explore further by
    # raising max_examples and dropping derandomize locally.
    @settings(
        max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        body=st.lists(events, max_size=3) | events,
        raw=st.binary(max_size=40),
        use_raw=st.booleans(),
        content_type=media,
        month=st.text(max_size=8) | st.just("2026-10"),
        tenant=st.text(min_size=1, max_size=8).filter(lambda t: "/" not in t and t.strip(".")),
    )  # fmt: skip
    def check(
        body: Any, raw: bytes, use_raw: bool, content_type: str, month: str, tenant: str
    ) -> None:
        content = raw if use_raw else orjson.dumps(body)
        tenant, month_path = quote(tenant, safe=""), quote(month, safe="")
        responses = [
            client.post("/v1/events", content=content, headers={"Content-Type": content_type}),
            client.get(f"/v1/invoices/{month_path}"),
            client.get(f"/v1/tenants/{tenant}/usage", params={"month": month}),
            client.get(f"/v1/tenants/{tenant}/licenses"),
            client.get(f"/v1/tenants/{tenant}/system-events", params={"status": month}),
            client.get("/v1/threshold-crossings", params={"month": month, "tenant": tenant}),
            client.post("/v1/sql", json={"sql": month}),
        ]
        for response in responses:
            assert response.status_code < 500, (response.request.url, response.text)

    check()
    client.close()
