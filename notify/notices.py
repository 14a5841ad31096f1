"""What the notifier tells whom: the notices a record causes, and which subscriptions get each.

Pure: no Kafka, no HTTP, no clock. A notice's `webhook_id` is the id of the record it is about
(a crossing's id, a tenant's invoice for a close), so a receiver dedupes by it and a replay
makes the same notice again."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.records import InvoiceLine, ThresholdCrossed
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


NAMESPACE = uuid.UUID("0b6a51f2-6f36-4c1e-9a51-3f7e0c8a2d44")


def invoice_notices(lines: Iterable[InvoiceLine], at: dt.datetime) -> list[Notice]:
    """`invoice.closed`, one per tenant and close, with its lines (in a stable order) and
    their total; `at`: when the close was acknowledged."""
    by_tenant: dict[tuple[str, str], list[InvoiceLine]] = defaultdict(list)
    for line in lines:
        by_tenant[(line.tenant, line.provenance.close_id)].append(line)
    notices = []
    for (tenant, close_id), found in sorted(by_tenant.items()):
        found.sort(key=lambda line: (line.usage_month, line.service, line.kind, line.id))
        first = found[0]
        data = {
            "tenant": tenant,
            "invoice_month": first.invoice_month,
            "close_id": close_id,
            "currency": first.currency,
            "total": str(sum((line.amount for line in found), Decimal("0.00"))),
            "lines": [line.model_dump(mode="json") for line in found],
        }
        webhook_id = str(uuid.uuid5(NAMESPACE, f"invoice.closed\x1f{close_id}\x1f{tenant}"))
        message = WebhookMessage(type="invoice.closed", timestamp=at, data=data)
        notices.append(Notice(webhook_id, tenant, message))
    return notices


def recipients(
    notice: Notice, subscriptions: Iterable[WebhookSubscription]
) -> list[WebhookSubscription]:
    """The live subscriptions that want `notice`, in id order (a stable order to send in)."""
    wanted = [s for s in subscriptions if s.wants(notice.event_type, notice.tenant)]
    return sorted(wanted, key=lambda s: s.id)
