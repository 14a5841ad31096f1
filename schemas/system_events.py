"""Data of the `system-events` topic (imports, index rebuilds, administrator events)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SYSTEM_EVENT_TYPES = ("system.event.registered", "system.event.updated", "system.event.deleted")


class SystemEventData(BaseModel):
    """`(subject, key, scope, owner)` identifies one system event; updates replace given fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=64)
    scope: Literal["system", "database", "group", "user"]
    owner: str | None = None
    status: Literal["queued", "running", "finished", "failed", "cancelled"] | None = None
    message: str | None = Field(default=None, max_length=4096)
    activated_at: AwareDatetime | None = None
    activated_by: str | None = None
    eta: AwareDatetime | None = None
