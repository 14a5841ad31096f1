"""Automatic close: once the grace period after a month's end has passed, the worker writes
the close command into the log itself and the month's invoice lines appear."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from projections.months import month_of, previous_month
from tests.conftest import Stack
from tests.factories import cloudevent

pytestmark = pytest.mark.integration


def test_last_month_closes_by_itself(stack: Stack) -> None:
    this_month = month_of(dt.datetime.now(dt.UTC), dt.UTC)
    last_month = previous_month(this_month)
    events = [
        cloudevent(
            "metering.form.submitted", {"quantity": 1_001}, tenant="gamma",
            time=f"{last_month}-10T10:00:00Z", id="f1",
        )
    ]  # fmt: skip
    stack.create_topics()
    stack.cli("send", str(stack.write("events.jsonl", events)))
    stack.start_projector()
    stack.start_worker(METERING_AUTO_CLOSE_GRACE="PT0S", METERING_AUTO_CLOSE_CHECK="0.5")
    deadline = time.monotonic() + 120  # generous: CI machines are shared and slow
    lines: list[dict[str, str]] = []
    while not lines and time.monotonic() < deadline:
        lines = stack.json("invoice", this_month)
        time.sleep(0.5)
    assert [(ln["tenant"], ln["service"], ln["amount"]) for ln in lines] == [
        ("gamma", "form", "32.40")
    ]
    assert lines[0]["close_id"] == f"auto-{last_month}"
