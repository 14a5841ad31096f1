"""The services table: what it refuses, and that a service added to it alone (with its rates
in the plan) is decoded, folded, rated, counted and shown like the five it ships with."""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from billing.plan import DEFAULT_PLAN, PlanError, load_plan, parse_plan
from observability.metrics import WorkerMetrics
from projections.batch import fold_batch
from projections.decode import decode, validated
from projections.events import Position, UsageRecorded
from projections.memory import MemoryState
from projections.tenant import rate_month
from schemas.records import DeadLetter
from schemas.services import (
    DEFAULT_SERVICES,
    Catalog,
    ServicesError,
    default_catalog,
    load_catalog,
    parse_catalog,
)
from tests.integration.test_sixth_service import SMS_RATE, SMS_ROW
from web.view import Formats, metered_services

LOGGED = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)


def table() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_SERVICES.read_text())


def sms_plan(tmp_path: Path) -> Any:
    services = tmp_path / "services.toml"
    services.write_text(DEFAULT_SERVICES.read_text() + SMS_ROW)
    plan = tmp_path / "plan.toml"
    plan.write_text(DEFAULT_PLAN.read_text() + SMS_RATE)
    return load_plan(plan, services)


def test_the_packaged_table_lists_the_five_services_in_order() -> None:
    catalog = default_catalog()
    assert catalog.names == ("storage", "mailing", "customer_center", "chat", "form")
    assert [s.name for s in catalog.services if s.peak] == ["storage"]
    assert catalog.by_type["metering.storage.measured"].field == "bytes"
    assert catalog["storage"].unit_size == 10**9


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t["services"]["chat"].update(event_type="metering.form.submitted"),
         "services: each service needs its own event_type"),
        (lambda t: t["services"]["chat"].update(order=1), "each service needs its own order"),
        (lambda t: t["services"]["chat"].update(field="quantity'; DROP"), "services.chat.field:"),
        (lambda t: t["services"]["chat"].update(aggregation="mean"), "services.chat.aggregation:"),
        (lambda t: t["services"]["storage"].update(unit_size=3), "must be a power of ten"),
        (lambda t: t["services"]["chat"].pop("label"), "services.chat.label: Field required"),
        (lambda t: t["services"]["chat"].update(colour="red"), "services.chat.colour:"),
        (lambda t: t.update(versions=[]), "only [services.<name>] tables"),
        (lambda t: t["services"]["chat"].update(event_type="chat.started"), "event_type:"),
        (lambda t: t["services"]["chat"].update(field="model_dump"), "is reserved"),
        (lambda t: t["services"]["chat"].update(field="copy"), "is reserved"),
        (lambda t: t["services"]["chat"].update(name="sms"), "the table's key names the service"),
        (lambda t: t["services"]["chat"].update(order=True), "services.chat.order:"),
        (lambda t: t["services"]["storage"].update(unit_size="1000"), "storage.unit_size:"),
        (lambda t: t["services"]["chat"].update(event_type="metering.control.x"), "for commands"),
    ],
)  # fmt: skip
def test_a_bad_table_is_refused_naming_the_field(change: Any, problem: str) -> None:
    data = table()
    change(data)
    with pytest.raises(ServicesError) as info:
        parse_catalog(data)
    assert problem in str(info.value)


def test_the_plan_prices_exactly_the_table_and_leaves_units_to_it(tmp_path: Path) -> None:
    plan = tomllib.loads(DEFAULT_PLAN.read_text())
    catalog = parse_catalog(tomllib.loads(DEFAULT_SERVICES.read_text() + SMS_ROW))
    with pytest.raises(PlanError, match=r"versions\[0\]\.services: missing sms"):
        parse_plan(plan, catalog=catalog)
    plan["versions"][0]["services"]["fax"] = {"included": [1, 2, 3], "package": 1, "price": "1"}
    with pytest.raises(PlanError, match="fax not in the services table"):
        parse_plan(plan)
    del plan["versions"][0]["services"]["fax"]
    # A plan written before the table had units per rate: it loads where they agree.
    plan["versions"][0]["services"]["chat"].update(unit="chat sessions", unit_size=1)
    assert parse_plan(plan).versions[0].services["chat"].unit == "chat sessions"
    plan["versions"][0]["services"]["chat"]["unit"] = "chats"
    with pytest.raises(PlanError, match=r"services\.chat\.unit: 'chats' differs from the"):
        parse_plan(plan)


def test_a_missing_table_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ServicesError, match="cannot read"):
        load_catalog(tmp_path / "nope.toml")


def event(type_: str, data: dict[str, Any], id_: str = "e1") -> bytes:
    return orjson.dumps({
        "specversion": "1.0", "id": id_, "source": "crm/sms", "type": type_,
        "subject": "texter", "time": "2026-09-14T10:00:00Z", "data": data,
    })  # fmt: skip


def position(offset: int) -> Position:
    return Position(topic="usage-events", partition=0, offset=offset, log_time=LOGGED)


def test_a_sixth_service_is_decoded_folded_rated_and_counted(tmp_path: Path) -> None:
    plan = sms_plan(tmp_path)
    values = [event("metering.sms.sent", {"quantity": n}, f"s{n}") for n in (150, 99)]
    values.append(event("metering.sms.sent", {}, "s-none"))  # counts 1
    decoded = [decode(v, position(i), plan) for i, v in enumerate(values)]
    assert all(isinstance(d, UsageRecorded) and d.service == "sms" for d in decoded)
    # Both decoders know it, and both refuse what its row refuses.
    assert validated(values[0], orjson.loads(values[0]), position(0), plan) == decoded[0]
    bad = decode(event("metering.sms.sent", {"quantity": 0}), position(9), plan)
    assert isinstance(bad, DeadLetter) and (bad.reason, bad.field) == (
        "invalid_field",
        "data.quantity",
    )
    # Without the row, the same event is of an unknown type.
    unknown = decode(values[0], position(0), load_plan())
    assert isinstance(unknown, DeadLetter) and unknown.reason == "unknown_type"

    state = MemoryState()
    result = fold_batch(decoded, state, plan, frozenset({"usage-events/0"}))
    state.commit(result)
    rating = rate_month(state.tenants["texter"], "2026-09", "sms", plan)
    # 250 texts, 0 users (band 1: 100 included): 150 over, 2 packages of 100 at 5.00.
    assert (rating.usage, rating.packages, rating.amount, rating.unit) == (
        250, 2, Decimal("10.00"), "text messages",
    )  # fmt: skip
    assert {(c.service, c.level) for c in result.crossings} >= {
        ("sms", "warning"),
        ("sms", "exceeded"),
    }

    metrics = WorkerMetrics(CollectorRegistry(), plan.catalog.names)
    metrics.observe(decoded, result, LOGGED)
    counted = metrics.registry.get_sample_value(
        "metering_events_total", {"service": "sms", "outcome": "accepted"}
    )
    assert counted == 3


@pytest.mark.parametrize(
    ("language", "name", "unit"),
    [
        ("en", "Text messages sent", "text messages"),
        ("nl", "Verzonden sms-berichten", "sms-berichten"),
    ],
)
def test_the_page_names_a_sixth_service_from_its_row(
    tmp_path: Path, language: Any, name: str, unit: str
) -> None:
    plan = sms_plan(tmp_path)
    history = [{
        "service": "sms", "month": "2026-09", "usage": "250", "included": "100", "percent": "250.0",
        "amount": "10.00", "packages": 2, "currency": "EUR", "unit": "text messages",
    }]  # fmt: skip
    shown = metered_services(["2026-08", "2026-09"], history, plan, Formats(language, dt.UTC))
    assert [s.chart.service for s in shown][-1] == "sms"
    sms = shown[-1]
    assert (sms.chart.name, sms.chart.unit) == (name, unit)
    assert sms.usage.endswith(unit) and sms.packages == 2 and sms.over


def test_the_catalog_is_read_once_and_not_at_import() -> None:
    assert isinstance(default_catalog(), Catalog)
    assert default_catalog() is default_catalog()
