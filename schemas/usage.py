"""Data of the `usage-events` topic, one model per CloudEvents `type`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# The most one event may carry; more is rejected (`invalid_field`), over Kafka and HTTP alike.
# Quantity: one event is one mailing, or a count of logins, chats or forms. The largest real
# mailing goes to tens of millions of addresses; 10^9 is every e-mail address of a large
# country many times over, so no honest event comes near it, and a producer with more sends
# more events.
MAX_QUANTITY = 10**9
# Bytes: a tenant's total storage at one instant. The largest CRM tenants store terabytes;
# 10^15 (1 PB) is a thousand times that. Storage is billed on the month's peak, never summed.
MAX_BYTES = 10**15
# With these bounds every read-model column holds what valid events can lead to: see the
# worst case worked out in readmodel/schema.py.


class Service(StrEnum):
    STORAGE = "storage"
    MAILING = "mailing"
    CUSTOMER_CENTER = "customer_center"
    CHAT = "chat"
    FORM = "form"


USAGE_TYPES: dict[str, Service] = {
    "metering.storage.measured": Service.STORAGE,
    "metering.mailing.sent": Service.MAILING,
    "metering.customer_center.login": Service.CUSTOMER_CENTER,
    "metering.chat.started": Service.CHAT,
    "metering.form.submitted": Service.FORM,
}


class StorageMeasured(BaseModel):
    """The tenant's total stored bytes at the event's `time`; a month is billed on its peak."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    bytes: int = Field(ge=0, le=MAX_BYTES)


class QuantityUsed(BaseModel):
    """A countable use (mailing e-mails, logins, chats, forms); summed over the month."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    quantity: int = Field(default=1, ge=1, le=MAX_QUANTITY)
