"""Keys scoped to their job: a producer key posts usage only, a licensing key licence
snapshots and registrations, an operations key system events; a posting key may be limited to
sources and tenants, and a batch with any event outside the key's scope is refused whole."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from functools import partial
from typing import Any, get_args

import orjson
import pytest
from click.testing import CliRunner
from cloudevents.core.bindings import http
from fastapi import HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st

from api.auth import (
    OPEN,
    POSTERS,
    POSTS,
    Principal,
    authenticate,
    key_hash,
    out_of_scope,
    refusals,
    require,
    require_tenant,
)
from api.ingest import BatchRejected, Ingestor, OutOfScope
from billing.plan import load_plan
from metering.cli import main
from projections.decode import admit
from runtime.settings import Role, Settings
from schemas.envelope import CloudEvent
from tests.factories import TYPE_OF, cloudevent, limited_key, sdk_event, stored_keys
from tests.unit.test_ingest_binary import Producer, request

PLAN = load_plan()
NOW = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
ROLES: tuple[str, ...] = (*get_args(Role), OPEN)
TIME = "2026-10-10T12:00:00Z"

SYSTEM = {"key": "Import", "scope": "database"}
DATA: dict[str, dict[str, Any]] = {
    **{type_: {"bytes" if "storage" in type_ else "quantity": 3} for type_ in TYPE_OF.values()},
    "licensing.licenses.changed": {"users": 40, "modules": []},
    "licensing.tenant.registered": {
        "company": "Acme", "serial_number": "SN-1", "database": {"type": "central", "engine": "pg"},
    },
    "system.event.registered": SYSTEM,
    "system.event.updated": SYSTEM | {"status": "finished"},
    "system.event.deleted": SYSTEM,
}  # fmt: skip
KIND_OF_TYPE = {
    **dict.fromkeys(TYPE_OF.values(), "usage"),
    "licensing.licenses.changed": "licenses",
    "licensing.tenant.registered": "licenses",
    "system.event.registered": "system",
    "system.event.updated": "system",
    "system.event.deleted": "system",
}


def offered(type_: str, *, source: str = "crm", tenant: str = "acme", n: int = 0) -> Any:
    return cloudevent(type_, DATA[type_], tenant=tenant, time=TIME, id=f"e{n}", source=source)


def decoded(type_: str, **attributes: Any) -> tuple[str, CloudEvent]:
    """The event as the ingest path sees it once admitted: its topic's kind and the event."""
    return admit(offered(type_, **attributes), NOW, PLAN)


def test_every_event_type_admitted_at_ingest_is_of_a_known_kind() -> None:
    assert {type_: decoded(type_)[0] for type_ in DATA} == KIND_OF_TYPE
    assert set(POSTS.values()) == set(KIND_OF_TYPE.values())


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("type_", list(DATA))
def test_each_role_posts_its_own_kind_of_event_only(role: str, type_: str) -> None:
    kind, event = decoded(type_)
    found = out_of_scope(Principal(role), kind, event)
    if role == OPEN or POSTS.get(role) == kind:
        assert found == []
    else:
        [(field, why)] = found
        assert field == "type"
        assert why.startswith(f"a {role} key may not post {type_}")


def test_a_producer_key_cannot_change_seats() -> None:
    kind, event = decoded("licensing.licenses.changed")
    assert out_of_scope(Principal("producer"), kind, event) == [
        (
            "type",
            "a producer key may not post licensing.licenses.changed (licence snapshots and "
            "tenant registrations take a licensing key)",
        )
    ]


names = st.sampled_from(["a", "b", "c"])
limits = st.none() | st.frozensets(names, max_size=3)


@settings(max_examples=200, deadline=None)  # the machine's load is not the test's
@given(role=st.sampled_from(POSTERS), sources=limits, tenants=limits, source=names, tenant=names)
def test_limits_refuse_exactly_the_sources_and_tenants_outside_them(
    role: str,
    sources: frozenset[str] | None,
    tenants: frozenset[str] | None,
    source: str,
    tenant: str,
) -> None:
    type_ = next(t for t, kind in KIND_OF_TYPE.items() if kind == POSTS[role])
    kind, event = decoded(type_, source=source, tenant=tenant)
    principal = Principal(role, sources=sources, tenants=tenants)
    expected = {
        *(["source"] if sources is not None and source not in sources else []),
        *(["subject"] if tenants is not None and tenant not in tenants else []),
    }
    assert {field for field, _ in out_of_scope(principal, kind, event)} == expected


def test_a_wrong_kind_is_named_alone_even_outside_the_limits() -> None:
    kind, event = decoded("system.event.registered", source="jobs", tenant="beta")
    principal = Principal("producer", sources=frozenset({"crm"}), tenants=frozenset({"acme"}))
    assert [field for field, _ in out_of_scope(principal, kind, event)] == ["type"]


def test_the_open_mode_posts_anything_from_anywhere() -> None:
    for type_ in DATA:
        kind, event = decoded(type_, source="anything", tenant="anyone")
        assert out_of_scope(Principal(OPEN), kind, event) == []


def test_refusals_name_each_offending_event_by_its_index() -> None:
    principal = Principal("producer", sources=frozenset({"crm"}))
    batch = [
        decoded("metering.chat.started"),
        decoded("licensing.licenses.changed"),
        decoded("metering.form.submitted", source="erp"),
        decoded("metering.form.submitted"),
    ]
    found = refusals(principal, [(i, kind, event) for i, (kind, event) in enumerate(batch)])
    assert [(index, field) for index, field, _ in found] == [(1, "type"), (2, "source")]
    assert found[1][2] == "this producer key may not post as source 'erp'"


# The ingest path: the whole offer is refused, nothing is written, binary mode alike.


def ingestor() -> tuple[Ingestor, Producer]:
    ingest = Ingestor(Settings(kafka_bootstrap="unused:1"), PLAN, clock=lambda: NOW)
    producer = Producer()
    ingest._producer = producer
    return ingest, producer


def test_a_batch_with_one_event_out_of_scope_is_refused_whole() -> None:
    ingest, producer = ingestor()
    batch = [offered("metering.chat.started", n=0), offered("licensing.licenses.changed", n=1)]
    with pytest.raises(OutOfScope) as refused:
        asyncio.run(ingest.ingest(batch, Principal("producer")))
    assert producer.sent == []
    body = refused.value.body
    assert "nothing was written" in body["detail"]
    assert [(e["index"], e["reason"], e["field"]) for e in body["errors"]] == [
        (1, "out_of_scope", "type")
    ]
    assert asyncio.run(ingest.ingest(batch[1:], Principal("licensing"))) == 1
    assert [topic for topic, _, _ in producer.sent] == ["licenses"]


def test_out_of_scope_is_answered_before_bad_events() -> None:
    ingest, producer = ingestor()
    bad = offered("metering.chat.started") | {"data": {"quantity": 0}}
    batch = [bad, offered("metering.chat.started", tenant="beta")]
    with pytest.raises(OutOfScope) as refused:
        asyncio.run(ingest.ingest(batch, Principal("producer", tenants=frozenset({"acme"}))))
    assert [(e["index"], e["field"]) for e in refused.value.body["errors"]] == [(1, "subject")]
    with pytest.raises(BatchRejected):  # in scope now: the bad event is what remains
        asyncio.run(ingest.ingest(batch, Principal("producer")))
    assert producer.sent == []


def test_a_binary_event_is_judged_by_the_same_scope() -> None:
    ingest, producer = ingestor()
    message = http.to_binary_event(
        sdk_event(type="licensing.licenses.changed", source="crm", data={"users": 9})
    )

    async def post(principal: Principal) -> int:
        offer = await ingest.events(request(dict(message.headers), message.body))
        return await ingest.ingest(offer, principal)

    with pytest.raises(OutOfScope) as refused:
        asyncio.run(post(Principal("producer")))
    assert refused.value.body["errors"][0]["field"] == "type"
    with pytest.raises(OutOfScope) as refused:
        asyncio.run(post(Principal("licensing", sources=frozenset({"licensing"}))))
    assert refused.value.body["errors"][0]["field"] == "source"
    assert producer.sent == []
    assert asyncio.run(post(Principal("licensing", sources=frozenset({"crm"})))) == 1
    assert orjson.loads(producer.sent[0][1])["data"] == {"users": 9}


# Keys and roles: who may call which route.


def test_a_stored_key_carries_its_limits_to_its_principal() -> None:
    configured = Settings(
        api_keys=json.loads(
            stored_keys(
                {"finance": "f", "metrics": "m", "licensing": "l", "operations": "o", "acme": "a"},
                limited_key("producer", "p", sources=["crm"], tenants=["acme", "beta"]),
            )
        )
    )
    keys = configured.api_keys
    assert [(k.role, k.tenant) for k in keys] == [
        ("finance", None), ("metrics", None), ("licensing", None), ("operations", None),
        ("tenant", "acme"), ("producer", None),
    ]  # fmt: skip
    assert authenticate(keys, "p") == Principal(
        "producer", sources=frozenset({"crm"}), tenants=frozenset({"acme", "beta"})
    )
    assert authenticate(keys, "l") == Principal("licensing")


@pytest.mark.parametrize("role", ROLES)
def test_only_posting_keys_may_post(role: str) -> None:
    principal = Principal(role, tenant="acme" if role == "tenant" else None)
    if role in {*POSTERS, OPEN}:
        require(principal, *POSTERS)
    else:
        with pytest.raises(HTTPException) as refused:
            require(principal, *POSTERS)
        assert refused.value.status_code == 403


@pytest.mark.parametrize("role", ["producer", "licensing", "operations", "metrics"])
def test_a_key_that_reads_no_tenant_is_forbidden_every_read(role: str) -> None:
    principal = Principal(role)
    assert not principal.may_read("acme")
    checks: list[Callable[[], None]] = [
        partial(require, principal, "finance", "tenant"),
        partial(require, principal, "finance"),
        partial(require_tenant, principal, "acme"),
    ]
    for check in checks:
        with pytest.raises(HTTPException) as refused:
            check()
        assert refused.value.status_code == 403


def test_a_tenant_key_asking_for_another_tenant_still_gets_404() -> None:
    require_tenant(Principal("tenant", "acme"), "acme")
    require_tenant(Principal("finance"), "beta")
    with pytest.raises(HTTPException) as refused:
        require_tenant(Principal("tenant", "acme"), "beta")
    assert refused.value.status_code == 404


# `metering key`: every role, with limits for the posting keys.


def key_entry(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["key", *args])
    assert result.exit_code == 0, result.output
    key_line, entry_line = result.output.splitlines()
    entry: dict[str, Any] = json.loads(entry_line.removeprefix("METERING_API_KEYS entry: "))
    assert entry.pop("sha256") == key_hash(key_line.removeprefix("key: "))
    return entry


def test_the_key_command_makes_every_role_with_limits_for_posting_keys() -> None:
    assert key_entry("producer", "--source", "crm", "--source", "crm", "--tenant", "acme") == {
        "role": "producer", "sources": ["crm"], "tenants": ["acme"],
    }  # fmt: skip
    assert key_entry("licensing", "--source", "lic") == {"role": "licensing", "sources": ["lic"]}
    assert key_entry("operations") == {"role": "operations"}
    assert key_entry("metrics") == {"role": "metrics"}
    assert key_entry("finance") == {"role": "finance"}
    assert key_entry("tenant", "--tenant", "acme") == {"role": "tenant", "tenant": "acme"}


@pytest.mark.parametrize(
    "args",
    [["tenant"], ["tenant", "--tenant", "a", "--tenant", "b"], ["tenant", "--tenant", "a",
     "--source", "s"], ["finance", "--tenant", "a"], ["metrics", "--source", "s"], ["admin"]],
)  # fmt: skip
def test_the_key_command_refuses_options_a_role_does_not_take(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["key", *args])
    assert result.exit_code == 2, result.output


def test_the_key_help_says_what_each_role_may_do() -> None:
    text = CliRunner().invoke(main, ["key", "--help"]).output
    for role in get_args(Role):
        assert f"\n  {role} " in text
    assert "--source" in text and "licensing.*" in text
