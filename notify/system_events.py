"""System events as the notifier follows them: each one's current state, and the notices its
changes make (pure: no Kafka, no clock).

A system event is `(tenant, key, scope, owner)`; `registered` sets it, `updated` replaces the
fields it gives, `deleted` removes it (as the read model's system-messages list does).
`system_event.started` goes out when it becomes `running`, `system_event.finished` when it
becomes `finished`, `failed` or `cancelled`, and `system_event.overdue` once a running one is
past its `eta`. Each notice's id is derived from what it is about, so a replay makes the same
id and the outbox keeps it once."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from notify.notices import Notice
from schemas.system_events import SystemEventData
from schemas.webhooks import WebhookMessage

NAMESPACE = uuid.UUID("3c0f0a52-4c1d-4d7e-8f4e-2a7d9b1e6c35")
FIELDS = ("status", "message", "activated_at", "activated_by", "eta")
ENDED = frozenset({"finished", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "running"})


class SystemEventState(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    key: str
    scope: str
    owner: str | None = None
    status: str | None = None
    message: str | None = None
    activated_at: AwareDatetime | None = None
    activated_by: str | None = None
    eta: AwareDatetime | None = None
    started_at: AwareDatetime | None = None  # when it was last seen to become running

    @property
    def identity(self) -> str:
        return identity(self.tenant, self.key, self.scope, self.owner)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def identity(tenant: str, key: str, scope: str, owner: str | None) -> str:
    return "\x1f".join((tenant, key, scope, owner or ""))


def _notice(kind: str, state: SystemEventState, at: dt.datetime, *about: str) -> Notice:
    webhook_id = str(uuid.uuid5(NAMESPACE, "\x1f".join((kind, state.identity, *about))))
    data: dict[str, Any] = state.model_dump(mode="json", exclude={"started_at"})
    message = WebhookMessage(type=f"system_event.{kind}", timestamp=at, data=data)
    return Notice(webhook_id, state.tenant, message)


def apply_system_event(
    before: SystemEventState | None,
    type_: str,
    tenant: str,
    data: SystemEventData,
    at: dt.datetime,
) -> tuple[SystemEventState | None, list[Notice]]:
    """The state after one event of type `type_` at `at` (its time), and its notices."""
    if type_.endswith(".deleted"):
        return None, []
    if before is None and not type_.endswith(".registered"):
        return None, []  # an update of nothing registered (or deleted): the list ignores it
    # As the list: an update replaces the fields it gives, but a status of null is no status.
    given = {
        name: getattr(data, name)
        for name in FIELDS
        if name in data.model_fields_set and not (name == "status" and data.status is None)
    }
    if before is None or type_.endswith(".registered"):
        state = SystemEventState(
            tenant=tenant, key=data.key, scope=data.scope, owner=data.owner, **given
        )
    else:
        state = before.model_copy(update=given)
    was = before.status if before is not None else None
    notices = []
    if state.status == "running" and was != "running":
        state = state.model_copy(update={"started_at": state.activated_at or at})
        notices.append(_notice("started", state, at, _text(state.started_at)))
    if state.status in ENDED and was not in ENDED:
        notices.append(_notice("finished", state, at, state.status or "", _text(state.started_at)))
    return state, notices


def overdue(state: SystemEventState, now: dt.datetime) -> Notice | None:
    """`system_event.overdue` for a running event whose `eta` has passed, else None."""
    if state.status != "running" or state.eta is None or state.eta > now:
        return None
    return _notice("overdue", state, state.eta, _text(state.eta), _text(state.started_at))


def _text(moment: dt.datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""
