"""The plan file: the default plan loads, and a bad one names every bad field."""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.plan import DEFAULT_PLAN, PlanError, load_plan, parse_plan


def test_default_plan_matches_design() -> None:
    plan = load_plan()
    version = plan.version_for("2026-10")
    assert version is not None
    assert version.currency == "EUR"
    storage = version.services["storage"]
    assert (storage.included, storage.package, storage.price) == (
        (50, 100, 200),
        50,
        Decimal("32.40"),
    )
    mailing = version.services["mailing"]
    assert (mailing.included, mailing.package) == ((15_000, 30_000, 60_000), 50_000)


def _default() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_PLAN.read_text())


def test_month_is_rated_with_version_in_force_on_its_first_day() -> None:
    data = _default()
    newer = copy.deepcopy(data["versions"][0])
    newer.update(version="2026-11", effective_from=dt.date(2026, 11, 2))
    data["versions"].append(newer)
    plan = parse_plan(data)
    assert plan.version_for("2026-11").version == "2020-01"  # type: ignore[union-attr]
    assert plan.version_for("2026-12").version == "2026-11"  # type: ignore[union-attr]
    assert plan.version_for("2019-12") is None


def test_bad_plan_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        """
[[versions]]
version = "v1"
effective_from = 2026-01-01
currency = "euro"
user_bands = [50, 100]
[versions.services.storage]
unit = "GB"
included = [50, 100]
package = 0
price = 32.40
"""
    )
    with pytest.raises(PlanError) as info:
        load_plan(path)
    problems = "\n".join(info.value.problems)
    assert "versions[0].currency" in problems
    assert "versions[0].services.storage.package: Input should be greater than 0" in problems
    assert "versions[0].services.storage.price: write prices as strings" in problems
    assert str(path) in str(info.value)


def test_semantic_problems_are_named() -> None:
    data = _default()
    data["versions"][0]["services"]["storage"]["included"] = [50, 100]
    del data["versions"][0]["services"]["chat"]
    with pytest.raises(PlanError) as info:
        parse_plan(data)
    problems = "\n".join(info.value.problems)
    assert (
        "versions[0].services.storage.included: needs 3 amounts (one per user band), has 2"
        in problems
    )
    assert "versions[0].services: missing chat" in problems


def test_unreadable_toml_says_where(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("[[versions]]\nversion = \n")
    with pytest.raises(PlanError, match=r"not valid TOML: .*line 2"):
        load_plan(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "nope.toml")


def test_effective_dates_must_increase() -> None:
    data = _default()
    data["versions"].append(copy.deepcopy(data["versions"][0]))
    with pytest.raises(PlanError) as info:
        parse_plan(data)
    assert info.value.problems == [
        "versions: effective_from must be strictly increasing",
        "versions: version names must be unique",
    ]


def test_api_keys_are_checked_with_the_other_settings() -> None:
    from runtime.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as info:
        load_settings(
            api_host="0.0.0.0",  # noqa: S104 - the point of the test
            api_keys=[
                {"role": "finance", "sha256": "ab"},
                {"role": "tenant", "sha256": "0" * 64},
            ],
        )
    problems = "\n".join(info.value.problems)
    assert "METERING_API_KEYS_0_SHA256: String should match pattern" in problems
    assert "METERING_API_KEYS_1: a tenant key names its tenant" in problems
    with pytest.raises(SettingsError, match="METERING_API_KEYS: an API listening beyond loopback"):
        load_settings(api_host="0.0.0.0")  # noqa: S104
