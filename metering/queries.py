"""Read-side queries over the output topics and the workers' state (until the DuckDB read
model exists). Each waits, boundedly, until the workers have processed everything written to
the input topics before the call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from billing.plan import Plan
from metering.settings import Settings
from projections.tenant import TenantState, rate_month
from schemas.records import InvoiceLine, ThresholdCrossed
from schemas.usage import Service
from streams.kafka import committed_offsets, end_offsets, read_all

R = TypeVar("R", bound=BaseModel)

LEVEL_ORDER = {"warning": 0, "exceeded": 1, "package": 2}


class NotCaughtUp(TimeoutError):
    pass


async def wait_caught_up(settings: Settings, wait_seconds: float) -> None:
    ends = await end_offsets(settings, settings.topics.inputs)
    wanted = [tp for tp, end in ends.items() if end > 0]
    deadline = time.monotonic() + wait_seconds
    while True:
        committed = await committed_offsets(settings, settings.app_id, wanted)
        behind = {tp: ends[tp] - committed.get(tp, 0) for tp in wanted}
        behind = {tp: n for tp, n in behind.items() if n > 0}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise NotCaughtUp(
                f"the workers ({settings.app_id}) are still {sum(behind.values())} records "
                f"behind after {wait_seconds:.0f}s; is `metering worker` running?"
            )
        await asyncio.sleep(0.25)


async def _distinct(
    settings: Settings, topic: str, model: type[R], keep: Callable[[R], bool]
) -> list[R]:
    """The records of an output topic that `keep` selects, each id once."""
    found: dict[str, R] = {}
    for record in await read_all(settings, topic):
        item = model.model_validate_json(record.value or b"{}")
        if keep(item):
            found.setdefault(str(getattr(item, "id")), item)  # noqa: B009 - every output has one
    return list(found.values())


async def invoice_lines(settings: Settings, invoice_month: str) -> list[InvoiceLine]:
    await wait_caught_up(settings, settings.query_timeout)
    lines = await _distinct(
        settings, settings.topics.lines, InvoiceLine, lambda ln: ln.invoice_month == invoice_month
    )
    return sorted(lines, key=lambda ln: (ln.tenant, ln.usage_month, ln.service.value, ln.kind))


async def _crossings(settings: Settings, usage_month: str) -> list[ThresholdCrossed]:
    found = await _distinct(
        settings,
        settings.topics.crossings,
        ThresholdCrossed,
        lambda c: c.usage_month == usage_month,
    )
    return sorted(
        found, key=lambda c: (c.tenant, c.service.value, LEVEL_ORDER[c.level], c.package or 0)
    )


async def crossings(settings: Settings, usage_month: str) -> list[ThresholdCrossed]:
    await wait_caught_up(settings, settings.query_timeout)
    return await _crossings(settings, usage_month)


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


async def tenant_state(settings: Settings, tenant: str) -> TenantState | None:
    """The tenant's state as the workers last wrote it to their changelog."""
    latest: bytes | None = None
    for record in await read_all(settings, changelog_topic(settings, "tenants")):
        if record.key == tenant.encode():
            latest = record.value
    return None if latest is None else TenantState.model_validate_json(latest)


async def usage_rows(
    settings: Settings, plan: Plan, tenant: str, month: str
) -> list[dict[str, Any]]:
    await wait_caught_up(settings, settings.query_timeout)
    state = await tenant_state(settings, tenant)
    if state is None:
        raise LookupError(f"no usage or licence is known for tenant {tenant!r}")
    levels: dict[Service, list[str]] = {}
    for crossing in await _crossings(settings, month):
        if crossing.tenant == tenant:
            label = crossing.level + (f" {crossing.package}" if crossing.package else "")
            levels.setdefault(crossing.service, []).append(label)
    rows = []
    for service in Service:
        rating = rate_month(state, month, service, plan)
        counted = state.usage.get(month, {}).get(service)
        rows.append(
            {
                "tenant": tenant,
                "month": month,
                "service": service.value,
                "usage": rating.in_units(rating.usage),
                "unit": rating.unit,
                "users": rating.users,
                "band": rating.band,
                "included": rating.in_units(rating.included),
                "percent": rating.percent,
                "packages": rating.packages,
                "amount": rating.amount,
                "currency": rating.currency,
                "events": counted.events if counted else 0,
                "crossings": ", ".join(levels.get(service, [])),
                "closed": month in state.closed,
            }
        )
    return rows


def as_rows(models: list[Any]) -> list[dict[str, Any]]:
    """Flatten models for display: nested provenance becomes prefixed columns."""
    rows = []
    for model in models:
        row = orjson.loads(model.model_dump_json())
        for key, value in row.pop("provenance", {}).items():
            row[f"provenance_{key}"] = value
        rows.append(row)
    return rows
