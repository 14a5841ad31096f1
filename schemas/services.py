"""The table of metered services (`services.toml`): what each service's events look like, how
a month of them adds up, and how the service is named and counted on invoices and the page.

Everything that treats services differently reads it here; nothing else names a service."""

from __future__ import annotations

from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from schemas.toml_file import Unreadable, read_toml

DEFAULT_SERVICES = Path(__file__).with_name("services.toml")

Service: TypeAlias = str
"""A service's name: a key of the table (`storage`, `mailing`, ...)."""

Aggregation = Literal["sum", "peak"]

# The most one event may carry; more is rejected (`invalid_field`), over Kafka and HTTP alike.
# A sum: one event is one mailing, or a count of logins, chats or forms. The largest real
# mailing goes to tens of millions of addresses; 10^9 is every e-mail address of a large
# country many times over, so no honest event comes near it, and a producer with more sends
# more events.
MAX_QUANTITY = 10**9
# A peak: a level at one instant, such as a tenant's total storage in bytes. The largest CRM
# tenants store terabytes; 10^15 (1 PB) is a thousand times that. A peak is never summed.
MAX_PEAK = 10**15
# With these bounds every read-model column holds what valid events can lead to: see the
# worst case worked out in readmodel/schema.py.
BOUNDS: dict[str, tuple[int, int]] = {"sum": (1, MAX_QUANTITY), "peak": (0, MAX_PEAK)}

# Names, types and fields are spliced into the read model's SQL views, so they are held to
# plain identifiers here, where the table is read.
_NAME = r"^[a-z][a-z0-9_]{0,39}$"
# Usage event types start `metering.`: that prefix is what sends them to `usage-events`.
_EVENT_TYPE = r"^metering\.[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class Languages(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    en: str = Field(min_length=1, max_length=80)
    nl: str = Field(min_length=1, max_length=80)


class ServiceSpec(BaseModel):
    """One row of the table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Service = Field(pattern=_NAME)
    event_type: str = Field(pattern=_EVENT_TYPE, max_length=120)
    aggregation: Aggregation
    field: str = Field(pattern=_NAME)
    unit: Languages
    unit_size: int = Field(default=1, gt=0, strict=True, description="Base units per billing unit.")
    order: int = Field(ge=0, strict=True)
    label: Languages

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        # Units convert to decimals exactly (bytes -> GB) only for powers of ten.
        if 10 ** (len(str(self.unit_size)) - 1) != self.unit_size:
            raise ValueError("unit_size: must be a power of ten (1, 1000, 1000000000, ...)")
        if self.event_type.startswith("metering.control."):
            raise ValueError("event_type: metering.control.* is for commands, not usage")
        if self.field.startswith("model_") or hasattr(BaseModel, self.field):
            # The data model is a pydantic model with this field: a name pydantic keeps for
            # itself would break decoding at the first event instead of here.
            raise ValueError(f"field: {self.field!r} is reserved; name the data field otherwise")
        return self

    @property
    def peak(self) -> bool:
        return self.aggregation == "peak"

    @property
    def bounds(self) -> tuple[int, int]:
        """The least and most one event may carry."""
        return BOUNDS[self.aggregation]

    def combine(self, before: int, amount: int) -> int:
        """A month's usage after one more event: the higher level for a peak, else the sum."""
        return max(before, amount) if self.peak else before + amount


class ServicesError(ValueError):
    """The table cannot be used; `problems` names each bad field with its reason."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(
            f"{path}: invalid services table:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class Catalog(BaseModel):
    """The whole table: `services` as the file lists them, `names` in display order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    services: tuple[ServiceSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        problems = []
        for what in ("name", "event_type", "order"):
            values = [getattr(s, what) for s in self.services]
            if len(set(values)) != len(values):
                problems.append(f"services: each service needs its own {what}")
        if problems:
            raise ValueError("; ".join(problems))
        for spec in self.services:
            payload_model(spec)  # built now, so that a table that cannot decode fails to load
        return self

    @cached_property
    def names(self) -> tuple[Service, ...]:
        return tuple(s.name for s in sorted(self.services, key=lambda s: s.order))

    @cached_property
    def by_name(self) -> dict[Service, ServiceSpec]:
        return {s.name: s for s in self.services}

    @cached_property
    def by_type(self) -> dict[str, ServiceSpec]:
        return {s.event_type: s for s in self.services}

    def __getitem__(self, name: Service) -> ServiceSpec:
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name


def payload_model(spec: ServiceSpec) -> type[BaseModel]:
    """The pydantic model of a usage event's `data` for this service (JSON Schema, and the
    validating decoder that names a bad field)."""
    return _payload_model(spec.field, spec.aggregation)


@cache
def _payload_model(field: str, aggregation: Aggregation) -> type[BaseModel]:
    low, high = BOUNDS[aggregation]
    default: Any = 1 if aggregation == "sum" else ...
    doc = (
        "A countable use, summed over the month."
        if aggregation == "sum"
        else "A level at the event's `time`; the month is billed on its peak."
    )
    fields: dict[str, Any] = {field: (int, Field(default=default, ge=low, le=high))}
    model: type[BaseModel] = create_model(
        f"{field.title().replace('_', '')}{aggregation.title()}",
        __config__=ConfigDict(frozen=True, extra="forbid", strict=True),
        __doc__=doc,
        **fields,
    )
    return model


def parse_catalog(data: Any, path: Path = DEFAULT_SERVICES) -> Catalog:
    rows = data.get("services") if isinstance(data, dict) else None
    if not isinstance(rows, dict) or set(data) != {"services"}:
        raise ServicesError(path, ["the file must hold only [services.<name>] tables"])
    named = [n for n, row in rows.items() if isinstance(row, dict) and "name" in row]
    if named:
        raise ServicesError(
            path, [f"services.{n}.name: the table's key names the service" for n in named]
        )
    listed = [{"name": name, **row} if isinstance(row, dict) else row for name, row in rows.items()]
    try:
        return Catalog.model_validate({"services": listed})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "services" and isinstance(loc[1], int):
                loc[1] = (
                    str(listed[loc[1]].get("name", loc[1]))
                    if isinstance(listed[loc[1]], dict)
                    else loc[1]
                )
            where = ".".join(str(p) for p in loc)
            problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        raise ServicesError(path, problems) from None


def load_catalog(path: Path = DEFAULT_SERVICES) -> Catalog:
    try:
        data = read_toml(path)
    except Unreadable as exc:
        raise ServicesError(path, [str(exc)]) from None
    return parse_catalog(data, path)


@cache
def default_catalog() -> Catalog:
    """The packaged table, read once (on first use, not at import)."""
    return load_catalog(DEFAULT_SERVICES)
