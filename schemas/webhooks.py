"""The notifier's contracts: webhook subscriptions (a compacted topic the API writes), the
attempts at delivering (a topic the notifier writes and the read model projects), and the
message each webhook carries ([docs/webhooks.md](../docs/webhooks.md))."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, UrlConstraints

WebhookEventType = Literal[
    "threshold.warning",
    "threshold.exceeded",
    "threshold.package",
    "invoice.closed",
    "system_event.started",
    "system_event.finished",
    "system_event.overdue",
]
WEBHOOK_EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)
URL_MAX = 2048


class WebhookSubscription(BaseModel):
    """A record of `webhook-subscriptions`, keyed by its id. Deleting one writes it again with
    `deleted_at` (the last record of a key wins, also after compaction). No secret: the
    notifier derives each subscription's signing secret from its id and the signing key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^wh_[0-9a-f]{32}$")
    tenant: str | None = Field(
        default=None, max_length=256, description="Only this tenant's events; null: every tenant."
    )
    owner: str = Field(
        max_length=300, description="`finance`, or `tenant:<id>` for a tenant's own."
    )
    url: str = Field(max_length=URL_MAX)
    event_types: tuple[WebhookEventType, ...] = Field(min_length=1, max_length=7)
    description: str | None = Field(default=None, max_length=500)
    created_at: AwareDatetime
    deleted_at: AwareDatetime | None = None
    version: int = Field(default=1, ge=1, description="1 when made, 2 when deleted.")

    def wants(self, event_type: str, tenant: str | None) -> bool:
        """Whether a notification of this type about `tenant` goes to this endpoint."""
        if self.deleted_at is not None or event_type not in self.event_types:
            return False
        return self.tenant is None or self.tenant == tenant


class NewWebhook(BaseModel):
    """The body of `POST /v1/webhooks`."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[AnyHttpUrl, UrlConstraints(max_length=URL_MAX)]
    event_types: tuple[WebhookEventType, ...] = Field(min_length=1, max_length=7)
    tenant: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=500)


class WebhookMessage(BaseModel):
    """What a webhook's body holds (Standard Webhooks' recommended shape)."""

    model_config = ConfigDict(frozen=True)

    type: WebhookEventType
    timestamp: AwareDatetime = Field(description="When the notified fact happened.")
    data: dict[str, Any]


class WebhookAttempt(BaseModel):
    """A record of `webhook-deliveries`, keyed by subscription id: one attempt to deliver."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(
        description="`<subscription>/<webhook id>/<attempt>/<random>`: one per attempt made."
    )
    subscription: str
    webhook_id: str = Field(description="The notified record's deterministic id.")
    event_type: WebhookEventType
    tenant: str | None
    attempt: int = Field(ge=1)
    attempted_at: AwareDatetime
    status_code: int | None = Field(description="The endpoint's answer; null: none came.")
    error: str | None = Field(max_length=500)
    outcome: Literal["delivered", "retrying", "failed", "refused"]
    next_try: AwareDatetime | None
