"""Load and validate the versioned plan file; every problem is reported at once."""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.usage import Service

DEFAULT_PLAN = Path(__file__).with_name("plan.toml")


class PlanError(ValueError):
    """The plan file cannot be used; `problems` names each bad field with its reason."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: invalid plan:\n" + "\n".join(f"  - {p}" for p in problems))


class ServiceRate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str = Field(min_length=1)
    unit_size: int = Field(default=1, gt=0, description="Base units per billing unit.")
    included: tuple[int, ...] = Field(min_length=1, description="Included units per user band.")
    package: int = Field(gt=0)
    price: Decimal = Field(ge=0, decimal_places=4)

    @field_validator("price", mode="before")
    @classmethod
    def _price_not_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError('write prices as strings, e.g. price = "32.40" (floats round)')
        return value

    @field_validator("unit_size")
    @classmethod
    def _power_of_ten(cls, value: int) -> int:
        # Units convert to decimals exactly (bytes -> GB) only for powers of ten.
        if value < 1 or 10 ** (len(str(value)) - 1) != value:
            raise ValueError("must be a power of ten (1, 1000, 1000000000, ...)")
        return value

    @field_validator("included")
    @classmethod
    def _included_non_negative(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 0 for v in value):
            raise ValueError("included amounts must be >= 0")
        return value


class PlanVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    effective_from: dt.date
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    billing_timezone: str = "UTC"
    user_bands: tuple[int, ...] = Field(description="Upper bounds of each band but the last.")
    services: dict[Service, ServiceRate]

    @field_validator("billing_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PlanVersion:
        problems: list[str] = []
        if list(self.user_bands) != sorted(set(self.user_bands)) or any(
            b <= 0 for b in self.user_bands
        ):
            problems.append("user_bands: must be positive and strictly increasing")
        missing = sorted(set(Service) - set(self.services))
        if missing:
            problems.append(f"services: missing {', '.join(missing)}")
        for name, rate in self.services.items():
            if len(rate.included) != len(self.user_bands) + 1:
                problems.append(
                    f"services.{name.value}.included: needs {len(self.user_bands) + 1} amounts "
                    f"(one per user band), has {len(rate.included)}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.billing_timezone)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: tuple[PlanVersion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Plan:
        dates = [v.effective_from for v in self.versions]
        names = [v.version for v in self.versions]
        problems = []
        if dates != sorted(set(dates)):
            problems.append("versions: effective_from must be strictly increasing")
        if len(set(names)) != len(names):
            problems.append("versions: version names must be unique")
        zones = {v.billing_timezone for v in self.versions}
        if len(zones) > 1:
            # A month's boundaries must not move between versions, or usage would be re-sorted.
            problems.append("versions: all versions must share one billing_timezone")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> ZoneInfo:
        return self.versions[0].zone

    def version_for(self, month: str) -> PlanVersion | None:
        """The version in force on the first day of `month` ("YYYY-MM"), if any."""
        first = dt.date(int(month[:4]), int(month[5:7]), 1)
        chosen = None
        for version in self.versions:
            if version.effective_from <= first:
                chosen = version
        return chosen


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_plan(data: dict[str, Any], path: Path = DEFAULT_PLAN) -> Plan:
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = _location(tuple(err["loc"]))
            # Model-level checks report several "field: reason" parts in one message.
            for part in str(err["msg"]).removeprefix("Value error, ").split("; "):
                field, sep, reason = part.partition(": ")
                if sep and " " not in field:
                    problems.append(f"{where}.{field}: {reason}" if where else part)
                else:
                    problems.append(f"{where or 'plan'}: {part}")
        raise PlanError(path, problems) from None


def load_plan(path: Path = DEFAULT_PLAN) -> Plan:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(path, [f"not valid TOML: {exc}"]) from None
    return parse_plan(data, path)
