"""What "now" is, injectable. Code that judges time by the wall clock (what ingest receives, which
month a page or a command defaults to) takes a `Clock`, so that a test can pin the day; the
judging itself stays in pure functions that take `now` as an argument."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Clock = Callable[[], dt.datetime]
"""Returns the current time as an aware datetime."""


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
