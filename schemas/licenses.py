"""Data of the `licenses` topic: tenant registration and full licence snapshots."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TENANT_REGISTERED = "licensing.tenant.registered"
LICENSES_CHANGED = "licensing.licenses.changed"


class Database(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["central", "satellite"]
    engine: str = Field(min_length=1, max_length=64)


class TenantRegistered(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    company: str = Field(min_length=1, max_length=256)
    serial_number: str = Field(min_length=1, max_length=64)
    database: Database


class Module(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128)
    kind: Literal["user", "site", "satellite"]
    total: int = Field(ge=0, le=2**31 - 1)
    in_use: int = Field(ge=0, le=2**31 - 1)


class LicensesChanged(BaseModel):
    """A full snapshot: the seats (`users`) decide the tenant's band from `time` on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    users: int = Field(ge=0, le=2**31 - 1, strict=True)
    modules: list[Module] = Field(default_factory=list, max_length=1000)
    expires_on: dt.date | None = None
    grace_to: dt.date | None = None
