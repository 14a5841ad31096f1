"""`/metrics` carries revenue and usage: with keys configured, the read model's and the
worker's answer only a metrics key (Authorization: Bearer); without keys both stay open."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api.service import ReadModelService
from billing.plan import load_plan
from observability.access import bearer, key_hash, scrape_status
from observability.exposition import serve
from observability.metrics import ReadModelMetrics
from runtime.settings import ApiKey, load_settings
from server.app import create_app

TENANT = "acme-tenant-7f3"  # must never show in a refused answer
SECRETS = {"metrics": "m-key", "finance": "f-key", "producer": "p-key", "tenant": "t-key"}
KEYS = [
    ApiKey.model_validate({"role": role, "sha256": key_hash(key)} | (
        {"tenant": TENANT} if role == "tenant" else {}))
    for role, key in SECRETS.items()
]  # fmt: skip

# (status, body, headers) of a GET /metrics with these request headers
Get = Callable[[dict[str, str]], tuple[int, str, httpx.Headers]]


def filled_metrics() -> ReadModelMetrics:
    """A registry holding what must not leak: money, usage and a tenant's ratio."""
    metrics = ReadModelMetrics(CollectorRegistry())
    metrics.set_figures(
        {
            "lines": [{"invoice_month": "2026-10", "kind": "overage", "lines": 2}],
            "amounts": [{"invoice_month": "2026-10", "currency": "EUR", "amount": "64.80"}],
            "crossings": [],
            "usage": [{"month": "2026-10", "service": "form", "usage": 1700, "included": 1000,
                       "over": 1}],
            "tenants": [{"month": "2026-10", "service": "form", "tenant": TENANT, "ratio": 1.7}],
            "closed_months": 1,
            "close_due": dt.datetime(2026, 11, 4, tzinfo=dt.UTC),
        }
    )  # fmt: skip
    return metrics


def read_model(keys: list[ApiKey], data_dir: Path) -> Get:
    settings = load_settings(kafka_bootstrap="127.0.0.1:9", data_dir=data_dir, api_keys=keys)
    service = ReadModelService(settings, load_plan(), filled_metrics())
    transport = httpx.ASGITransport(app=create_app(service))

    async def ask(headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/metrics", headers=headers)

    def get(headers: dict[str, str]) -> tuple[int, str, httpx.Headers]:
        answer = asyncio.run(ask(headers))
        return answer.status_code, answer.text, answer.headers

    return get


def worker(keys: list[ApiKey], data_dir: Path) -> Get:
    url = serve(filled_metrics().registry, "127.0.0.1", 0, keys)

    def get(headers: dict[str, str]) -> tuple[int, str, httpx.Headers]:
        answer = httpx.get(url, headers=headers, timeout=10)
        return answer.status_code, answer.text, answer.headers

    return get


@pytest.fixture(params=[read_model, worker], ids=["read-model", "worker"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Get]]:
    yield lambda keys: request.param(keys, tmp_path)


def assert_nothing_leaks(body: str) -> None:
    for secret in ("metering_", "invoice", "usage", TENANT, "64.8", "1700"):
        assert secret not in body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {SECRETS['metrics']}"},
        {"X-Api-Key": SECRETS["metrics"]},  # the API's other header: not for scrapes
    ],
    ids=["none", "unknown", "empty", "basic", "x-api-key"],
)
def test_without_a_metrics_bearer_key_the_answer_is_401_and_empty(
    endpoint: Callable[..., Get], headers: dict[str, str]
) -> None:
    status, body, answer_headers = endpoint(KEYS)(headers)
    assert status == 401
    assert answer_headers["www-authenticate"].startswith("Bearer")
    assert_nothing_leaks(body)


@pytest.mark.parametrize("role", ["finance", "producer", "tenant"])
def test_a_key_of_another_role_is_forbidden(endpoint: Callable[..., Get], role: str) -> None:
    status, body, _ = endpoint(KEYS)({"Authorization": f"Bearer {SECRETS[role]}"})
    assert status == 403
    assert_nothing_leaks(body)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_a_metrics_key_reads_the_metrics(endpoint: Callable[..., Get], scheme: str) -> None:
    status, body, _ = endpoint(KEYS)({"Authorization": f"{scheme} {SECRETS['metrics']}"})
    assert status == 200
    assert 'metering_invoice_amount{currency="EUR",invoice_month="2026-10"} 64.8' in body
    assert TENANT in body


def test_without_keys_configured_metrics_stay_open(endpoint: Callable[..., Get]) -> None:
    status, body, _ = endpoint([])({})
    assert status == 200
    assert "metering_invoice_amount" in body


def test_the_worker_server_takes_the_environments_keys_when_given_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METERING_API_KEYS", '[{"role": "metrics", "sha256": "%s"}]' % ("0" * 64))
    url = serve(filled_metrics().registry, "127.0.0.1", 0)
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 401
    assert_nothing_leaks(answer.text)


def test_scrape_status_and_bearer_parsing() -> None:
    assert bearer("Bearer  abc ") == "abc"
    assert bearer("Token abc") is None
    assert bearer(None) is None
    assert scrape_status([], None) == 200
    assert scrape_status(KEYS, f"Bearer {SECRETS['metrics']}") == 200
    assert scrape_status(KEYS, f"Bearer {SECRETS['finance']}") == 403
    assert scrape_status(KEYS, "Bearer nope") == 401
