"""Calendar months in the billing time zone, as "YYYY-MM" strings."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache


def month_of(time: dt.datetime, zone: dt.tzinfo) -> str:
    local = time.astimezone(zone)
    return f"{local.year:04d}-{local.month:02d}"


# Every usage event asks for its month's bounds: a few hundred months are ever in play.
@lru_cache(maxsize=4096)
def month_start(month: str, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=zone)


@lru_cache(maxsize=4096)
def next_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"


def months_until(last: str, count: int) -> list[str]:
    """The `count` months ending with `last`, oldest first."""
    months = [last]
    while len(months) < count:
        months.append(previous_month(months[-1]))
    return months[::-1]


def month_end(month: str, zone: dt.tzinfo) -> dt.datetime:
    return month_start(next_month(month), zone)


def parse_month(text: str) -> str:
    """Validate "YYYY-MM"; raises ValueError with a readable reason."""
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"{text!r} is not a month; expected YYYY-MM, e.g. 2026-10") from None
    return parsed.strftime("%Y-%m")


def auto_close_due(now: dt.datetime, grace: dt.timedelta, zone: dt.tzinfo) -> str | None:
    """The month an automatic close should request at `now`: the previous month, once its
    grace period after month end has passed."""
    month = previous_month(month_of(now, zone))
    return month if now >= month_end(month, zone) + grace else None
