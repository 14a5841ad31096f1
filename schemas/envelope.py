"""The CloudEvents 1.0 structured-JSON envelope shared by every input topic (docs/events.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# A Kafka key or a CloudEvents attribute longer than this is hostile input, not an identifier.
MAX_ATTRIBUTE_LENGTH = 256


class CloudEvent(BaseModel):
    """One event as producers send it; `data` is validated per `type` (usage events: by
    `schemas.services.payload_model`)."""

    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=False)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_LENGTH)
    source: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_LENGTH)
    type: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_LENGTH)
    subject: str = Field(
        min_length=1, max_length=MAX_ATTRIBUTE_LENGTH, description="The tenant id."
    )
    time: AwareDatetime = Field(description="RFC 3339 with a UTC offset.")
    data: dict[str, Any] = Field(default_factory=dict)
