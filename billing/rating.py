"""Rate one service-month: usage and users against a plan version, in exact decimals."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict

from billing.plan import PlanVersion
from schemas.services import Service

CENT = Decimal("0.01")


class Rating(BaseModel):
    """Everything an invoice line or a usage view needs; base units are bytes for storage."""

    model_config = ConfigDict(frozen=True)

    service: Service
    usage: int
    users: int
    band: int  # 1-based
    included: int  # base units
    package_size: int  # base units
    packages: int
    unit_price: Decimal
    amount: Decimal
    currency: str
    unit: str
    unit_size: int
    plan_version: str

    def in_units(self, base: int) -> Decimal:
        return Decimal(base) / Decimal(self.unit_size)

    @property
    def percent(self) -> Decimal:
        """Usage as a percentage of included, to one decimal (0 included: 0 when unused)."""
        if self.included == 0:
            return Decimal(0) if self.usage == 0 else Decimal(100)
        return (Decimal(self.usage) * 100 / Decimal(self.included)).quantize(
            Decimal("0.1"), ROUND_HALF_UP
        )


def band_of(users: int, user_bands: tuple[int, ...]) -> int:
    """1-based band: users up to the first bound are band 1, and so on; 0 users are band 1."""
    for index, bound in enumerate(user_bands):
        if users <= bound:
            return index + 1
    return len(user_bands) + 1


def packages_for(usage: int, included: int, package_size: int) -> int:
    """The fewest whole packages that cover the overage (ceiling division on integers)."""
    overage = usage - included
    if overage <= 0:
        return 0
    return -(-overage // package_size)


def rate(service: Service, usage: int, users: int, version: PlanVersion) -> Rating:
    rate_ = version.services[service]
    band = band_of(users, version.user_bands)
    included = rate_.included[band - 1] * rate_.unit_size
    package_size = rate_.package * rate_.unit_size
    packages = packages_for(usage, included, package_size)
    amount = (rate_.price * packages).quantize(CENT, ROUND_HALF_UP)
    return Rating(
        service=service,
        usage=usage,
        users=users,
        band=band,
        included=included,
        package_size=package_size,
        packages=packages,
        unit_price=rate_.price,
        amount=amount,
        currency=version.currency,
        unit=rate_.unit,
        unit_size=rate_.unit_size,
        plan_version=version.version,
    )
