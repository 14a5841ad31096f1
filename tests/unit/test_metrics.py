"""Metric figures from read-model rows, and the worker's counters from a folded batch."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from billing.plan import load_plan
from observability.figures import figures, windows
from observability.metrics import LAG_BUCKETS, WorkerMetrics, observe_many
from projections.batch import fold_batch
from projections.memory import MemoryState
from tests.factories import usage

UTC = dt.UTC


@pytest.mark.parametrize(
    ("current", "closed", "expected"),
    [
        ("2026-11", [], ("0000-01", "2025-11")),
        ("2026-11", ["2026-09", "2026-10"], ("2026-10", "2025-11")),
        ("2026-11", ["2026-07"], ("2026-08", "2025-11")),
        ("2026-01", ["2025-12"], ("2025-12", "2025-01")),
    ],
)
def test_windows_cover_every_unclosed_month(
    current: str, closed: list[str], expected: tuple[str, str]
) -> None:
    assert windows(current, closed) == expected


def row(tenant: str, month: str, service: str, used: str, included: str) -> dict[str, str]:
    return {"tenant": tenant, "month": month, "service": service, "usage": used,
            "included": included}  # fmt: skip


def test_figures_totals_top_tenants_and_close_due() -> None:
    rows = {
        "closed": ["2026-08"],
        "usage": [
            row("a", "2026-09", "form", "10", "1000"),  # old, unclosed: makes the close overdue
            row("a", "2026-10", "form", "1700", "1000"),
            row("b", "2026-10", "form", "1200", "1000"),
            row("c", "2026-10", "form", "900", "1000"),
            row("d", "2026-10", "form", "5", "0"),
            row("a", "2026-11", "chat", "0", "1500"),
        ],
        "lines": [
            {
                "invoice_month": "2026-10",
                "kind": "overage",
                "currency": "EUR",
                "lines": 2,
                "amount": "64.80",
            },
            {
                "invoice_month": "2026-10",
                "kind": "adjustment",
                "currency": "EUR",
                "lines": 1,
                "amount": "-32.40",
            },
        ],
        "crossings": [],
    }
    found = figures(rows, "2026-11", top=2, grace=dt.timedelta(days=3), zone=UTC)
    form = next(u for u in found["usage"] if (u["month"], u["service"]) == ("2026-10", "form"))
    assert (form["usage"], form["included"], form["over"]) == (Decimal(3805), Decimal(3000), 3)
    assert [(t["tenant"], t["ratio"]) for t in found["tenants"]] == [
        ("d", Decimal("Infinity")), ("a", Decimal("1.7"))
    ]  # fmt: skip
    assert found["amounts"] == [
        {"invoice_month": "2026-10", "currency": "EUR", "amount": Decimal("32.40")}
    ]
    assert found["close_due"] == dt.datetime(2026, 10, 4, tzinfo=UTC)  # 2026-09 ends + 3 days
    assert found["closed_months"] == 1
    assert figures(rows, "2026-11", top=0, grace=None, zone=UTC)["tenants"] == []


def test_worker_counts_a_batch_by_service_and_outcome() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    plan = load_plan()
    first = usage("form", 600, tenant="t1", id="e1")
    second = usage("form", 600, tenant="t1", id="e2")
    again = usage("form", 600, tenant="t1", id="e1")  # sent twice: a new log record
    events = [first, second, again]
    result = fold_batch(events, MemoryState(), plan, frozenset({"usage-events"}))
    now = dt.datetime(2026, 11, 2, tzinfo=UTC)
    metrics.observe(events, result, now)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("metering_events_total", service="form", outcome="accepted") == 2
    assert value("metering_events_total", service="form", outcome="duplicate") == 1
    assert value("metering_events_total", service="chat", outcome="accepted") == 0
    assert value("metering_threshold_crossings_total", service="form", level="exceeded") == 1
    assert value("metering_batch_size_count") == 1
    assert value("metering_processing_lag_seconds_count", clock="event") == 3
    assert value("metering_dead_letters_total", reason="too_late") == 0


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0],
        [-1.0, 0.05, 0.0501, 7.5, 86400.0, 1e9],
        [0.1] * 5 + [2.5, 3600.0],
        [3.0, float("nan"), 1.0, 0.5],
    ],
)
def test_observe_many_exposes_what_observe_would(values: list[float]) -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("lag", "lag", buckets=LAG_BUCKETS, registry=one)
    bulk = Histogram("lag", "lag", buckets=LAG_BUCKETS, registry=many)
    for value in values:
        single.observe(max(0.0, value))
    observe_many(bulk, values)
    expected, got = samples(one), samples(many)
    # The sum may differ in its last bits: it is added in another order.
    assert got.pop(("lag_sum", "")) == pytest.approx(expected.pop(("lag_sum", "")), rel=1e-12)
    assert got == expected
    assert expected[("lag_count", "")] == len(values)


@given(
    st.lists(
        st.floats(-10.0, 1e6, allow_nan=False) | st.sampled_from([*LAG_BUCKETS[:-1], 0.0]),
        max_size=300,
    )
)
def test_observe_many_counts_every_value_in_its_bucket(values: list[float]) -> None:
    test_observe_many_exposes_what_observe_would(values)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_prometheus_config_sends_the_metrics_key_file_from_every_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from metering import cli

    urls = {"metering-worker": "http://127.0.0.1:9100/metrics",
            "metering-projector": "http://127.0.0.1:8000/metrics"}  # fmt: skip
    (tmp_path / "stack.json").write_text(json.dumps({"metrics": urls}))
    key_file = tmp_path / "metrics.key"
    key_file.write_text("a-metrics-key\n")
    monkeypatch.chdir(tmp_path)  # a relative path: Prometheus would read it from elsewhere
    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METERING_API_KEYS", json.dumps([{"role": "metrics", "sha256": "0" * 64}]))
    done = CliRunner().invoke(cli.main, ["prometheus-config", "--credentials-file", "metrics.key"])
    assert done.exit_code == 0, done.output
    jobs = json.loads(done.stdout)["scrape_configs"]  # JSON is YAML
    bearer = {"type": "Bearer", "credentials_file": str(key_file.resolve())}
    assert [job.get("authorization") for job in jobs] == [bearer, bearer]
    assert "a-metrics-key" not in done.output
    assert done.stderr == ""

    bare = CliRunner().invoke(cli.main, ["prometheus-config"])
    assert bare.exit_code == 0, bare.output
    assert all("authorization" not in job for job in json.loads(bare.stdout)["scrape_configs"])
    assert "--credentials-file" in bare.stderr  # keys set, no key file: said, not refused
    shown = CliRunner().invoke(cli.main, ["prometheus-config", "--help"]).output
    assert "--credentials-file" in shown and "METERING_API_KEYS" in shown
