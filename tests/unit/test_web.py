"""The Licences screen's pure parts: language choice, chart geometry, formatting."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from billing.plan import load_plan
from web.i18n import LABELS, choose, unit_label
from web.view import BOTTOM, HEIGHT, TOP, Formats, chart, messages, metered_services

PLAN = load_plan()
MONTHS = ["2026-08", "2026-09", "2026-10", "2026-11"]
EN = Formats("en", dt.UTC)
NL = Formats("nl", dt.UTC)


@pytest.mark.parametrize(
    ("explicit", "remembered", "header", "expected"),
    [
        (None, None, None, "en"),
        (None, None, "nl-NL,nl;q=0.9,en;q=0.8", "nl"),
        (None, None, "de-DE, nl-BE;q=0.5, en;q=0.4", "nl"),
        (None, None, "en;q=0.2, nl;q=0.9", "nl"),
        (None, None, "nl;q=0, fr", "en"),
        (None, None, "nl;q=abc, en-GB", "en"),
        (None, "nl", "en", "nl"),
        ("en", "nl", "nl", "en"),
        ("xx", None, "nl", "nl"),
    ],
)
def test_language_choice(
    explicit: str | None, remembered: str | None, header: str | None, expected: str
) -> None:
    assert choose(explicit, remembered, header) == expected


def test_every_label_exists_in_both_languages() -> None:
    assert all(set(texts) == {"nl", "en"} and all(texts.values()) for texts in LABELS.values())
    assert LABELS["metered_services"]["nl"] == "Diensten met datalimiet"
    assert LABELS["system_messages"]["nl"] == "Systeemmeldingen"


def row(month: str, usage: str, included: str, packages: int, **extra: Any) -> dict[str, Any]:
    return {"month": month, "service": "form", "usage": usage, "included": included,
            "packages": packages, "unit": "form submissions", "percent": "0", "amount": "0.00",
            "currency": "EUR", **extra}  # fmt: skip


def test_chart_draws_included_and_package_boundaries_per_month() -> None:
    rows = {
        "2026-09": row("2026-09", "800", "1000", 0),
        "2026-10": row("2026-10", "2500", "1000", 2),
        "2026-11": row("2026-11", "1700", "2000", 0),  # more users: a higher threshold
    }
    drawn = chart("form", MONTHS, rows, PLAN, EN)
    assert [b.over for b in drawn.bars] == [False, False, True, False]
    assert [b.usage for b in drawn.bars] == [0, 800, 2500, 1700]
    top = Decimal(2500) * Decimal("1.15")

    def y(value: int) -> str:
        return f"{TOP + (HEIGHT - TOP - BOTTOM) * (1 - float(Decimal(value) / top)):.1f}"

    # August has no data: the line starts with September, and steps up in November.
    assert drawn.included_path.startswith(f"M{drawn.left + (drawn.width - 60) / 4:.1f} {y(1000)}")
    assert f"V{y(2000)}" in drawn.included_path
    # Boundaries at included + k x 1,000 up to the top of the chart (2,875).
    assert len(drawn.boundary_paths) == 1
    assert y(2000) in drawn.boundary_paths[0] and y(3000) not in drawn.boundary_paths[0]
    tallest = max(drawn.bars, key=lambda b: b.height)
    assert tallest.month == "2026-10" and tallest.y + tallest.height == HEIGHT - BOTTOM
    assert "over threshold: 2" in tallest.title


def test_chart_without_any_usage_is_flat_and_labelled() -> None:
    drawn = chart("storage", MONTHS, {}, PLAN, NL)
    assert all(b.height == 0 and not b.over for b in drawn.bars)
    assert drawn.included_path == "" and drawn.boundary_paths == []
    assert drawn.unit == "GB"
    assert (
        drawn.aria_label
        == "Gebruikte opslagruimte: gebruik per maand, augustus 2026 tot november 2026"
    )


@pytest.mark.parametrize(
    ("fmt", "money", "number", "day"),
    [
        (EN, "€1,296.00", "1,234.5", "30 Jun 2027"),
        (NL, "€\u00a01.296,00", "1.234,5", "30 jun 2027"),
    ],
)
def test_formats_to_the_cent(fmt: Formats, money: str, number: str, day: str) -> None:
    assert fmt.money(Decimal("1296.00"), "EUR") == money
    assert fmt.number(Decimal("1234.500000000")) == number
    assert fmt.day("2027-06-30") == day


def test_this_month_figures_per_service() -> None:
    history = [row("2026-11", "1700", "1000", 1, percent="170.0", amount="32.40")]
    services = {s.chart.service: s for s in metered_services(MONTHS, history, PLAN, NL)}
    assert list(services) == ["storage", "mailing", "customer_center", "chat", "form"]
    form = services["form"]
    assert (form.percent, form.amount, form.packages, form.over) == (
        "170 %",
        "€\u00a032,40",
        1,
        True,
    )
    assert (services["chat"].amount, services["chat"].over) == ("€\u00a00,00", False)
    assert form.usage == "1.700 formulierverzendingen"


def test_every_unit_of_the_plan_has_a_dutch_label() -> None:
    units = {rate.unit for v in PLAN.versions for rate in v.services.values()}
    assert all(f"unit:{unit}" in LABELS for unit in units)
    assert unit_label("chat sessions", "nl") == "chatsessies"
    assert unit_label("parsecs", "nl") == "parsecs"  # unknown: shown as the plan writes it


def test_system_messages_show_expected_completion_until_finished() -> None:
    rows = [
        {"event": "Import", "status": "running", "message": "m",
         "activated": "2026-11-02T08:00:00+00:00", "activated_by": "u17", "finished": None,
         "expected_completion": "2026-11-03T12:00:00+00:00",
         "system_wide": False, "scope": "database", "owner": None},
        {"event": "NoLogin", "status": "active", "message": None, "activated": None,
         "activated_by": None, "finished": None, "expected_completion": None,
         "system_wide": True, "scope": "system", "owner": None},
        {"event": "SAINT", "status": "finished", "message": "done", "activated": None,
         "activated_by": "u2", "finished": "2026-11-01T09:30:00+00:00",
         "expected_completion": "2026-11-01T10:00:00+00:00", "system_wide": False,
         "scope": "user", "owner": "u2"},
    ]  # fmt: skip
    shown = messages(rows, EN)
    assert [m.finished for m in shown] == [
        "expected 3 Nov 2026, 12:00:00", "\u2013", "1 Nov 2026, 09:30:00"
    ]  # fmt: skip
    assert [m.type for m in shown] == ["Database", "System-wide", "User"]
    assert [m.status for m in messages(rows, NL)] == ["Bezig", "Actief", "Voltooid"]
    assert shown[2].ident == "SAINT:user:u2"
