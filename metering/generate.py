"""A generated month of usage for the demo and the benchmarks: realistic, seeded, JSONL.

Tenants get a registration and a licence snapshot before the month (some change seats mid-
month), daily storage measurements, mailings, customer-centre logins, chats and forms; about
2 % of the usage events are sent twice, as producers that retry do.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

from projections.months import month_start, next_month

UTC = dt.UTC
GB = 10**9


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
    month: str, tenants: int, seed: int = 1, scale: float = 1.0
) -> Iterator[dict[str, Any]]:
    """Events of `month` for `tenants` tenants; `scale` multiplies the per-tenant volumes."""
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
        stored = rng.randint(10, 120) * GB
        for day in range(seconds // 86400):
            stored = max(0, stored + rng.randint(-3, 6 if heavy else 2) * GB)
            time = start + dt.timedelta(days=day, hours=rng.randint(0, 23))
            events.append(
                _event("metering.storage.measured", tenant, time, {"bytes": stored}, n := n + 1)
            )
        volumes = {
            "metering.mailing.sent": (rng.randint(2, 12), 500, 9000 if heavy else 2500),
            "metering.customer_center.login": (int(rng.randint(200, 900) * scale), 1, 5),
            "metering.chat.started": (int(rng.randint(150, 700) * scale), 1, 5),
            "metering.form.submitted": (int(rng.randint(100, 600) * scale), 1, 6),
        }
        for type_, (count, low, high) in volumes.items():
            for _ in range(count):
                time = start + dt.timedelta(seconds=rng.randrange(seconds))
                quantity = rng.randint(low, high)
                events.append(_event(type_, tenant, time, {"quantity": quantity}, n := n + 1))
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
