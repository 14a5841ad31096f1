"""Builders for decoded events and raw CloudEvents, shared by unit and integration tests."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from api.auth import key_hash
from projections.events import LicenceSnapshotTaken, Position, UsageRecorded
from schemas.services import Service

UTC = dt.UTC
_offsets = itertools.count()

TYPE_OF = {
    "storage": "metering.storage.measured",
    "mailing": "metering.mailing.sent",
    "customer_center": "metering.customer_center.login",
    "chat": "metering.chat.started",
    "form": "metering.form.submitted",
}


def position(
    partition: int = 0, topic: str = "usage-events", log_time: dt.datetime | None = None
) -> Position:
    return Position(
        topic=topic,
        partition=partition,
        offset=next(_offsets),
        log_time=log_time or dt.datetime(2026, 11, 1, tzinfo=UTC),
    )


def usage(
    service: Service,
    amount: int,
    *,
    tenant: str = "t1",
    month: str = "2026-10",
    day: int = 10,
    source: str = "crm",
    id: str | None = None,
    partition: int = 0,
) -> UsageRecorded:
    return UsageRecorded(
        tenant=tenant,
        service=service,
        month=month,
        amount=amount,
        source=source,
        id=id or f"e{next(_offsets)}",
        time=dt.datetime(int(month[:4]), int(month[5:]), day, 12, tzinfo=UTC),
        position=position(partition),
    )


def licence(
    users: int, when: dt.datetime, *, tenant: str = "t1", partition: int = 0
) -> LicenceSnapshotTaken:
    return LicenceSnapshotTaken(
        tenant=tenant, time=when, users=users, position=position(partition, "licenses")
    )


def cloudevent(
    type_: str, data: dict[str, Any], *, tenant: str = "t1", time: str, id: str, source: str = "crm"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": type_,
        "subject": tenant,
        "time": time,
        "data": data,
    }


# Names that stand for their role in `stored_keys`; any other name is a tenant.
ROLE_NAMES = ("producer", "licensing", "operations", "finance", "metrics")


def stored_keys(keys: dict[str, str], *limited: dict[str, Any]) -> str:
    """METERING_API_KEYS for `keys` (name -> key): the names of ROLE_NAMES are those roles,
    any other name is a tenant key for the tenant of that name; then the `limited` entries
    (made by `limited_key`)."""
    entries: list[dict[str, Any]] = []
    for name, key in keys.items():
        if name in ROLE_NAMES:
            entries.append({"role": name, "sha256": key_hash(key)})
        else:
            entries.append({"role": "tenant", "tenant": name, "sha256": key_hash(key)})
    return json.dumps(entries + list(limited))


def limited_key(
    role: str, key: str, *, sources: list[str] | None = None, tenants: list[str] | None = None
) -> dict[str, Any]:
    """A stored key entry of a posting `role`, limited to `sources` and `tenants` if given."""
    entry: dict[str, Any] = {"role": role, "sha256": key_hash(key)}
    if sources is not None:
        entry["sources"] = sources
    if tenants is not None:
        entry["tenants"] = tenants
    return entry


def sdk_event(**attributes: Any) -> CloudEvent:
    data = attributes.pop("data", {"quantity": 3})
    base = {
        "id": "e1", "source": "crm/mail", "type": "metering.mailing.sent",
        "subject": "tenant-1", "time": dt.datetime(2026, 10, 10, 12, tzinfo=dt.UTC),
        "datacontenttype": "application/json",
    }  # fmt: skip
    base.update(attributes)
    return CloudEvent(attributes=base, data=data)
