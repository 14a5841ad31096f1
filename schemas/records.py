"""Records the workers write: threshold crossings, invoice lines, dead letters and month closes.

Every record carries a deterministic `id`, so a consumer (and a replaying worker) can tell a
record it already has from a new one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.services import Service

Month = str  # "YYYY-MM"
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"

CLOSE_REQUESTED = "metering.control.month_close_requested"


class ThresholdCrossed(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    service: Service
    usage_month: Month = Field(pattern=MONTH_PATTERN)
    level: Literal["warning", "exceeded", "package"]
    package: int | None = Field(
        default=None, description="The package started, from 2 on; `exceeded` starts package 1."
    )
    usage: int = Field(description="Usage in base units (bytes for storage) when crossed.")
    included: int = Field(description="Included amount in base units when crossed.")
    users: int
    crossed_by: str = Field(description="`source/id` of the event that crossed the level.")
    crossed_at: AwareDatetime = Field(description="Event time of that event.")


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    events: int = Field(description="Usage events counted into this service-month.")
    partition: int
    first_offset: int | None
    last_offset: int | None
    close_id: str = Field(description="The close command that produced the line.")


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    invoice_month: Month = Field(pattern=MONTH_PATTERN)
    usage_month: Month = Field(pattern=MONTH_PATTERN)
    tenant: str
    service: Service
    kind: Literal["overage", "adjustment"]
    usage: Decimal = Field(description="In billing units: GB for storage, a count otherwise.")
    unit: str
    users: int
    included: Decimal
    packages: int = Field(description="For an adjustment: the change in packages.")
    unit_price: Decimal
    amount: Decimal
    currency: str
    plan_version: str
    provenance: Provenance


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="`topic/partition/offset` of the rejected record, or `send/...`.")
    topic: str
    partition: int | None
    offset: int | None
    reason: str = Field(description="A stable reason code, e.g. `invalid_field`, `too_late`.")
    field: str | None
    detail: str
    payload: str = Field(description="The rejected bytes, as text where they decode (truncated).")
    tenant: str | None = Field(
        default=None, description="The tenant the record names (`subject`), where readable."
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description="The record's headers as text (binary mode: the `ce_` attributes), bounded.",
    )


class MonthCloseRequested(BaseModel):
    """The close command as it travels in every partition of the input topics."""

    model_config = ConfigDict(frozen=True)

    close_id: str
    month: Month = Field(pattern=MONTH_PATTERN)
    requested_by: str
    partitions: int


class MonthClosed(BaseModel):
    """One partition's acknowledgement that a close took effect there."""

    model_config = ConfigDict(frozen=True)

    id: str
    close_id: str
    month: Month = Field(pattern=MONTH_PATTERN)
    partition: int
    tenants: int
    lines: int
    amount: Decimal
