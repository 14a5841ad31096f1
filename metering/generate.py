"""A generated month of usage for the demo and the benchmarks: realistic, seeded, JSONL.

Tenants get a registration and a licence snapshot before the month (some change seats mid-
month), then usage of every service of the services table: a daily measurement of each peak
service (storage), and events of each summed one (mailings, customer-centre logins, chats,
forms); about 2 % of the usage events are sent twice, as producers that retry do.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

from projections.months import month_start, next_month
from schemas.services import Catalog, ServiceSpec, default_catalog

UTC = dt.UTC

# How much of a summed service a tenant uses in a month, as sample data (not a fact of the
# service, so not in its table): events per month (scaled by `scale`), and the least and most
# one event counts. Mailings are few and large, and larger for heavy users; a service not
# named here gets the default.
SAMPLE_EVENTS: dict[str, tuple[int, int, int]] = {
    "customer_center": (200, 900, 5),
    "chat": (150, 700, 5),
    "form": (100, 600, 6),
}
DEFAULT_SAMPLE = (100, 600, 5)


def _volume(
    spec: ServiceSpec, rng: random.Random, scale: float, heavy: bool
) -> tuple[int, int, int]:
    if spec.name == "mailing":
        return rng.randint(2, 12), 500, 9000 if heavy else 2500
    fewest, most_events, most = SAMPLE_EVENTS.get(spec.name, DEFAULT_SAMPLE)
    return int(rng.randint(fewest, most_events) * scale), 1, most


def _event(
    type_: str, tenant: str, time: dt.datetime, data: dict[str, Any], n: int
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"{tenant}-{n}",
        "source": f"crm/{type_.split('.')[1]}",
        "type": type_,
        "subject": tenant,
        "time": time.isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def generate_month(
    month: str, tenants: int, seed: int = 1, scale: float = 1.0, catalog: Catalog | None = None
) -> Iterator[dict[str, Any]]:
    """Events of `month` for `tenants` tenants; `scale` multiplies the per-tenant volumes."""
    catalog = catalog or default_catalog()
    peaks = [s for s in catalog.services if s.peak]
    sums = [catalog[name] for name in catalog.names if not catalog[name].peak]
    rng = random.Random(seed)  # noqa: S311  # nosec B311  # seeded sample data, not a secret
    start = month_start(month, UTC)
    seconds = int((month_start(next_month(month), UTC) - start).total_seconds())
    for t in range(1, tenants + 1):
        tenant = f"tenant-{t:05d}"
        n = 0
        users = rng.choice([8, 25, 45, 60, 90, 140])
        before = start - dt.timedelta(days=3)
        yield _event(
            "licensing.tenant.registered",
            tenant,
            before,
            {
                "company": f"Company {t}",
                "serial_number": f"SN-{100000 + t}",
                "database": {"type": rng.choice(["central", "satellite"]), "engine": "mssql"},
            },
            n := n + 1,
        )
        yield _licences(tenant, before, users, n := n + 1)
        if rng.random() < 0.2:  # a mid-month seat change, sometimes across a band
            users += rng.choice([-10, 15, 30])
            mid = start + dt.timedelta(days=rng.randint(5, 25))
            yield _licences(tenant, mid, max(users, 1), n := n + 1)
        heavy = rng.random() < 0.4  # tenants over their threshold
        events: list[dict[str, Any]] = []
        for spec in peaks:  # a level measured daily, in billing units (GB for storage)
            level = rng.randint(10, 120) * spec.unit_size
            for day in range(seconds // 86400):
                level = max(0, level + rng.randint(-3, 6 if heavy else 2) * spec.unit_size)
                time = start + dt.timedelta(days=day, hours=rng.randint(0, 23))
                data = {spec.field: level}
                events.append(_event(spec.event_type, tenant, time, data, n := n + 1))
        volumes = [(spec, _volume(spec, rng, scale, heavy)) for spec in sums]
        for spec, (count, low, high) in volumes:
            for _ in range(count):
                time = start + dt.timedelta(seconds=rng.randrange(seconds))
                data = {spec.field: rng.randint(low, high)}
                events.append(_event(spec.event_type, tenant, time, data, n := n + 1))
        rng.shuffle(events)
        for event in events:
            yield event
            if rng.random() < 0.02:
                yield event  # a producer retry: the same (source, id) again


def _licences(tenant: str, time: dt.datetime, users: int, n: int) -> dict[str, Any]:
    return _event(
        "licensing.licenses.changed",
        tenant,
        time,
        {
            "users": users,
            "modules": [
                {"name": "CRM", "kind": "user", "total": users, "in_use": max(users - 2, 0)},
                {"name": "Marketing", "kind": "site", "total": 1, "in_use": 1},
            ],
            "expires_on": None,
            "grace_to": None,
        },
        n,
    )
