"""What the notifier tells whom: the notices a record causes, and which subscriptions get each.

Pure: no Kafka, no HTTP, no clock. A notice's `webhook_id` is the id of the record it is about
(a crossing's id, a tenant's invoice for a close), so a receiver dedupes by it and a replay
makes the same notice again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schemas.records import ThresholdCrossed
from schemas.webhooks import WebhookMessage, WebhookSubscription


@dataclass(frozen=True, slots=True)
class Notice:
    webhook_id: str
    tenant: str | None
    message: WebhookMessage

    @property
    def event_type(self) -> str:
        return self.message.type

    def body(self) -> str:
        """The webhook's body, exactly as signed and sent."""
        return self.message.model_dump_json()


def crossing_notice(crossing: ThresholdCrossed) -> Notice:
    data: dict[str, Any] = crossing.model_dump(mode="json")
    message = WebhookMessage(
        type=f"threshold.{crossing.level}",
        timestamp=crossing.crossed_at,
        data=data,
    )
    return Notice(crossing.id, crossing.tenant, message)


def recipients(
    notice: Notice, subscriptions: Iterable[WebhookSubscription]
) -> list[WebhookSubscription]:
    """The live subscriptions that want `notice`, in id order (a stable order to send in)."""
    wanted = [s for s in subscriptions if s.wants(notice.event_type, notice.tenant)]
    return sorted(wanted, key=lambda s: s.id)
