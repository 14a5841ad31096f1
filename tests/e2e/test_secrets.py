"""No secret appears in a log, an error message or a response: a run with known keys at debug
log level, with right and wrong keys presented, and every byte it wrote searched for them."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import orjson
import pytest

from projections.months import month_of
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

pytestmark = pytest.mark.integration

SECRETS = {
    "producer": "producer-key-4f1c9a",
    "finance": "finance-key-8b2d7e",
    "wrong": "wrong-key-c3a5f0",
    "sasl": "sasl-password-9e8d7c",
}


def test_known_secrets_never_reach_logs_errors_or_responses(stack: Stack) -> None:
    keys = stored_keys({"producer": SECRETS["producer"], "finance": SECRETS["finance"]})
    stack.env.update(
        METERING_LOG_LEVEL="debug",
        METERING_KAFKA_SASL_PASSWORD=SECRETS["sasl"],  # set, unused on a PLAINTEXT broker
        METERING_API_KEYS=keys,
    )
    stack.create_topics()
    stack.start_worker()
    stack.start_projector()
    api = httpx.Client(base_url=stack.env["METERING_API_URL"], timeout=60)
    seen: list[str] = []

    def call(
        method: str, path: str, key: str | None, headers: dict[str, str] | None = None,
        **kwargs: object,
    ) -> httpx.Response:  # fmt: skip
        headers = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
        answer = api.request(method, path, headers=headers, **kwargs)
        seen.append(answer.text)
        seen.extend(f"{k}: {v}" for k, v in answer.headers.items())
        return answer

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    month = month_of(now, dt.UTC)
    event = cloudevent("metering.chat.started", {"quantity": 2}, tenant="acme",
                       time=now.strftime("%Y-%m-%dT%H:%M:%SZ"), id="s1")  # fmt: skip
    body = orjson.dumps(event)
    media = {"Content-Type": "application/cloudevents+json"}
    assert (
        call("POST", "/v1/events", SECRETS["wrong"], content=body, headers=media).status_code == 401
    )
    assert (
        call("POST", "/v1/events", SECRETS["finance"], content=body, headers=media).status_code
        == 403
    )
    assert (
        call("POST", "/v1/events", SECRETS["producer"], content=body, headers=media).status_code
        == 202
    )
    assert call("GET", f"/v1/invoices/{month}", SECRETS["wrong"]).status_code == 401
    assert (
        call("GET", f"/v1/tenants/acme/usage?month={month}", SECRETS["finance"]).status_code == 200
    )
    form = call("GET", "/ui/login", None)  # the client keeps the form's CSRF cookie
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text
    login = call("POST", "/ui/login", None,
                 content=f"csrf={token[1]}&key={SECRETS['wrong']}&next=/ui",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert login.status_code == 401

    for key in (SECRETS["wrong"], SECRETS["finance"]):
        done = stack.cli("invoice", month, check=False, METERING_API_KEY=key)
        seen += [done.stdout, done.stderr]
    broken = stack.cli("invoice", month, check=False, METERING_API_KEY=SECRETS["wrong"],
                       METERING_PARTITIONS="many")  # fmt: skip
    assert broken.returncode != 0 and "METERING_PARTITIONS" in broken.stderr
    seen += [broken.stdout, broken.stderr]
    api.close()
    stack.stop_workers()  # flush every log

    written = [
        path.read_bytes().decode("utf-8", "replace")
        for path in stack.data_dir.rglob("*")
        if path.is_file() and path.suffix in {".log", ".json", ".ready", ""}
    ]
    assert any("DEBUG" in text or "debug" in text.lower() for text in written)  # we did log
    for name, secret in SECRETS.items():
        leaks = [text[:200] for text in seen + written if secret in text]
        assert not leaks, f"the {name} secret leaked: {leaks}"
