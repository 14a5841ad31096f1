"""Load and validate the versioned plan file; every problem is reported at once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.services import Catalog, Service, default_catalog, load_catalog
from schemas.toml_file import Unreadable, loads_toml, read_toml

DEFAULT_PLAN = Path(__file__).with_name("plan.toml")


class PlanError(ValueError):
    """The plan file cannot be used; `problems` names each bad field with its reason."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: invalid plan:\n" + "\n".join(f"  - {p}" for p in problems))


class ServiceRate(BaseModel):
    """A service's price in one version. `unit` and `unit_size` are not written in the plan:
    they come from the services table (schemas/services.toml) as the plan is read."""

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
    def _consistent(self, info: ValidationInfo) -> PlanVersion:
        problems: list[str] = []
        # The services table the plan is read with (parse_plan passes it as context).
        catalog = (info.context or {}).get("catalog") or default_catalog()
        if missing := [n for n in catalog.names if n not in self.services]:
            problems.append(f"services: missing {', '.join(missing)}")
        if unknown := sorted(set(self.services) - set(catalog.names)):
            problems.append(f"services: {', '.join(unknown)} not in the services table")
        if list(self.user_bands) != sorted(set(self.user_bands)) or any(
            b <= 0 for b in self.user_bands
        ):
            problems.append("user_bands: must be positive and strictly increasing")
        for name, rate in self.services.items():
            if len(rate.included) != len(self.user_bands) + 1:
                problems.append(
                    f"services.{name}.included: needs {len(self.user_bands) + 1} amounts "
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
    # The services it prices: the table it was read with, not a section of the plan file.
    catalog: Catalog = Field(default_factory=default_catalog, exclude=True)

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


def _with_units(data: dict[str, Any], catalog: Catalog) -> tuple[dict[str, Any], list[str]]:
    """The plan's data with each rate's unit and unit_size from the table, which alone says
    them. A plan written before the table (which had them per rate) still loads where they
    agree with the table; where they differ, it is told where they belong."""
    problems: list[str] = []
    versions = data.get("versions")
    if not isinstance(versions, list):
        return data, problems
    out = []
    for index, version in enumerate(versions):
        rates = version.get("services") if isinstance(version, dict) else None
        if not isinstance(rates, dict):
            out.append(version)
            continue
        filled = {}
        for name, rate in rates.items():
            if name not in catalog:
                problems.append(f"versions[{index}].services: {name} not in the services table")
                continue
            if isinstance(rate, dict):
                spec = catalog[name]
                table = {"unit": spec.unit.en, "unit_size": spec.unit_size}
                for key, value in table.items():
                    if key in rate and rate[key] != value:
                        problems.append(
                            f"versions[{index}].services.{name}.{key}: {rate[key]!r} differs "
                            f"from the services table's {value!r}; it belongs in the table "
                            "(METERING_SERVICES_FILE), not the plan"
                        )
                rate = {**rate, **table}
            filled[name] = rate
        out.append({**version, "services": filled})
    return {**data, "versions": out}, problems


def parse_plan(
    data: dict[str, Any], path: Path = DEFAULT_PLAN, catalog: Catalog | None = None
) -> Plan:
    catalog = catalog or default_catalog()
    if "catalog" in data:
        raise PlanError(path, ["catalog: not a plan setting (the services table is its own file)"])
    data, unit_problems = _with_units(data, catalog)
    try:
        plan = Plan.model_validate({**data, "catalog": catalog}, context={"catalog": catalog})
    except ValidationError as exc:
        problems = list(unit_problems)
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
    if unit_problems:
        raise PlanError(path, unit_problems)
    return plan


def loads_plan(text: str, catalog: Catalog, name: Path = Path("plan")) -> Plan:
    """A plan file's text, sent rather than read (`POST /v1/rerate`), validated as
    `load_plan` validates a file; raises PlanError naming `name`."""
    try:
        data = loads_toml(text)
    except Unreadable as exc:
        raise PlanError(name, [str(exc)]) from None
    return parse_plan(data, name, catalog)


def load_plan(path: Path = DEFAULT_PLAN, services: Path | Catalog | None = None) -> Plan:
    """The plan at `path`, pricing the services of the table at `services` (a path, a table
    already read, or the packaged table); raises PlanError, or ServicesError for the table."""
    if isinstance(services, Path):
        services = load_catalog(services)
    try:
        data = read_toml(path)
    except Unreadable as exc:
        raise PlanError(path, [str(exc)]) from None
    return parse_plan(data, path, services)
