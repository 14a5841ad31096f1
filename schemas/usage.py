"""Data of the `usage-events` topic, one model per CloudEvents `type`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# Quantities are counted in 64-bit signed integers downstream (DuckDB BIGINT); beyond is hostile.
MAX_QUANTITY = 2**63 - 1


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

    bytes: int = Field(ge=0, le=MAX_QUANTITY)


class QuantityUsed(BaseModel):
    """A countable use (mailing e-mails, logins, chats, forms); summed over the month."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    quantity: int = Field(default=1, ge=1, le=MAX_QUANTITY)
