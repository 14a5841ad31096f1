"""Billing rules of docs/billing.md: bands, packages and exact amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.plan import load_plan
from billing.rating import band_of, packages_for, rate
from schemas.services import Service, default_catalog

PLAN = load_plan()
VERSION = PLAN.versions[0]
GB = 10**9


@pytest.mark.parametrize(
    ("service", "usage", "users", "band", "packages", "amount"),
    [
        # at the included amount nothing is billed; one unit above starts a whole package
        ("mailing", 15_000, 50, 1, 0, "0.00"),
        ("mailing", 15_001, 50, 1, 1, "32.40"),
        ("mailing", 65_001, 50, 1, 2, "64.80"),
        ("mailing", 65_001, 51, 2, 1, "32.40"),
        ("mailing", 60_001, 101, 3, 1, "32.40"),
        ("storage", 50 * GB, 0, 1, 0, "0.00"),
        ("storage", 50 * GB + 1, 0, 1, 1, "32.40"),
        ("storage", 201 * GB, 100, 2, 3, "97.20"),
        ("customer_center", 4_001, 150, 3, 1, "32.40"),
        ("chat", 5_600, 10, 1, 5, "162.00"),
        ("form", 3_000, 101, 3, 0, "0.00"),
    ],
)
def test_rate_table(
    service: Service, usage: int, users: int, band: int, packages: int, amount: str
) -> None:
    rating = rate(service, usage, users, VERSION)
    assert (rating.band, rating.packages, rating.amount) == (band, packages, Decimal(amount))
    assert str(rating.amount) == amount  # exactly two decimals, never a float repr


@given(
    usage=st.integers(min_value=0, max_value=2**63 - 1),
    included=st.integers(min_value=0, max_value=10**12),
    size=st.integers(min_value=1, max_value=10**11),
)
def test_packages_are_minimal(usage: int, included: int, size: int) -> None:
    packages = packages_for(usage, included, size)
    overage = usage - included
    if overage <= 0:
        assert packages == 0
    else:
        assert packages * size >= overage > (packages - 1) * size


@given(
    service=st.sampled_from(default_catalog().names),
    usage=st.integers(min_value=0, max_value=2**63 - 1),
    users=st.integers(min_value=0, max_value=10_000),
)
def test_amount_is_exact_price_times_packages(service: Service, usage: int, users: int) -> None:
    rating = rate(service, usage, users, VERSION)
    assert isinstance(rating.amount, Decimal)
    assert rating.amount == Decimal("32.40") * rating.packages
    assert rating.amount.as_tuple().exponent == -2


@given(users=st.integers(min_value=0, max_value=10**6))
def test_bands(users: int) -> None:
    expected = 1 if users <= 50 else 2 if users <= 100 else 3
    assert band_of(users, VERSION.user_bands) == expected
