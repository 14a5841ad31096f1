"""The month of `tests/integration/test_month.py`, built from a given "now".

The workers accept usage of a month until its end + 90 days, and no event more than 5 minutes
after its record entered the log (both judged against the record's log-append time, which in
the integration test is the broker's real clock). `month_case(now)` picks months whose every
event is accepted when sent at any time from `now` to `now + RUN_TIME`, on every day of the
year: the integration test passes it the real now, and `tests/unit/test_month_case.py` checks
it, against the real decode rules, for pinned nows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from projections.decode import RETENTION
from projections.months import month_of, month_start, next_month, previous_month
from tests.factories import cloudevent as ce

UTC = dt.UTC
GB = 10**9
# How long after "now" the test may still send an event of its months and have it accepted.
RUN_TIME = dt.timedelta(hours=6)

MAILING = "metering.mailing.sent"
STORAGE = "metering.storage.measured"
CHAT = "metering.chat.started"
FORM = "metering.form.submitted"
LOGIN = "metering.customer_center.login"
MAIL, MAIL_EU = "crm/mailing", "crm/mailing-eu"


@dataclass(frozen=True)
class MonthCase:
    """M is the month billed first, M1 the month after it (billed second), M0 the month
    before M (it only receives one event), M2 the month after M1 (the second invoice's)."""

    now: dt.datetime
    m0: str
    m: str
    m1: str
    m2: str

    @property
    def close_m1_early(self) -> bool:
        """M1 has not ended at `now`: closing it needs `--force`."""
        return self.m1 >= month_of(self.now, UTC)

    @property
    def last(self) -> int:
        """The last day of M."""
        return (month_start(self.m1, UTC) - dt.timedelta(days=1)).day


def month_case(now: dt.datetime) -> MonthCase:
    """M is the month before last, M1 last month, so that both can be closed, unless the
    single event of M0 (M's first hour in UTC+2, the last of M0 in UTC) would be too late
    by `now + RUN_TIME` (the last days of a month after two long ones): then M is last month
    and M1 this month, which is by then past its 5th day, the latest day an event names."""
    current = month_of(now, UTC)
    m = previous_month(previous_month(current))
    if now + RUN_TIME >= month_start(m, UTC) + RETENTION:  # M0's end + 90 days
        m = previous_month(current)
    m1 = next_month(m)
    return MonthCase(now=now, m0=previous_month(m), m=m, m1=m1, m2=next_month(m1))


def at(month: str, day: int, clock: str = "12:00:00", offset: str = "Z") -> str:
    return f"{month}-{day:02d}T{clock}{offset}"


def licences(c: MonthCase) -> list[dict[str, Any]]:
    return [
        ce(
            "licensing.tenant.registered",
            {"company": "Acme", "serial_number": "1",
             "database": {"type": "central", "engine": "x"}},
            tenant="acme", time=at(c.m0, 19), id="reg-acme", source="licensing",
        ),
        ce("licensing.licenses.changed", {"users": 40, "modules": []},
                   tenant="acme", time=at(c.m0, 20), id="lic-1", source="licensing"),
        # mid-month seat change across the 50-user band: all of M is rated for 60 users
        ce("licensing.licenses.changed", {"users": 60, "modules": []},
                   tenant="acme", time=at(c.m, 15), id="lic-2", source="licensing"),
    ]  # fmt: skip


def usage(c: MonthCase) -> list[dict[str, Any]]:
    m, m1 = c.m, c.m1
    return [
        ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(m, 2), id="m1", source=MAIL),
        ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(m, 3), id="m2", source=MAIL),
        ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(m, 4), id="m3", source=MAIL),
        # a retry of m2: counted once
        ce(MAILING, {"quantity": 10_000}, tenant="acme", time=at(m, 3), id="m2", source=MAIL),
        # the same id from another source is another event
        ce(MAILING, {"quantity": 5_000}, tenant="acme", time=at(m, 5), id="m1", source=MAIL_EU),
        # out of order, and storage going down after its peak: billed on the 130 GB peak
        ce(STORAGE, {"bytes": 40 * GB}, tenant="acme", time=at(m, 20), id="s3"),
        ce(STORAGE, {"bytes": 130 * GB}, tenant="acme", time=at(m, 10), id="s2"),
        ce(STORAGE, {"bytes": 80 * GB}, tenant="acme", time=at(m, 3), id="s1"),
        ce(CHAT, {"quantity": 1_000}, tenant="acme", time=at(m, 6), id="c1"),
        ce(FORM, {"quantity": 1_500}, tenant="acme", time=at(m, 7), id="f1"),
        # UTC offsets move these into the neighbouring months
        ce(FORM, {"quantity": 5_000}, tenant="acme", time=at(m, c.last, "23:30:00", "-02:00"),
           id="fn"),
        ce(CHAT, {"quantity": 3_000}, tenant="acme", time=at(m, 1, "01:00:00", "+02:00"), id="cp"),
        # next month's usage: on the next close, not this one
        ce(LOGIN, {"quantity": 5_000}, tenant="acme", time=at(m1, 5), id="l-next"),
        # beta has no licence snapshot: 0 users, first band
        ce(LOGIN, {"quantity": 900}, tenant="beta", time=at(m, 8), id="l1"),
        ce(LOGIN, {"quantity": 1_600}, tenant="beta", time=at(m, 9), id="l2"),
        ce(CHAT, {"quantity": 1_400}, tenant="beta", time=at(m, 9), id="c1"),
        ce(FORM, {}, tenant="beta", time=at(m, 9), id="f0"),  # quantity defaults to 1
        ce(FORM, {"quantity": 799}, tenant="beta", time=at(m, 9), id="f1"),
    ]  # fmt: skip


def late(c: MonthCase) -> list[dict[str, Any]]:
    """A late event for M, sent after M is closed: the close of M1 adjusts it."""
    return [
        ce(MAILING, {"quantity": 50_000}, tenant="acme", time=at(c.m, 28), id="m-late",
           source=MAIL),
    ]  # fmt: skip


def bad(c: MonthCase) -> list[bytes]:
    """Lines `metering send` refuses (the first two) or the workers dead-letter (the rest)."""
    m = c.m
    no_subject = ce(MAILING, {}, time=at(m, 3), id="b6")
    del no_subject["subject"]
    future = (c.now + dt.timedelta(hours=1)).isoformat()
    return [
        b"{not json",
        orjson.dumps(ce("billing.unknown", {}, time=at(m, 3), id="x1")),
        orjson.dumps(ce(MAILING, {"quantity": 0}, tenant="acme", time=at(m, 3), id="b1")),
        orjson.dumps(ce("metering.teleport.used", {}, tenant="acme", time=at(m, 3), id="b2")),
        orjson.dumps(ce(STORAGE, {"bytes": -5}, tenant="acme", time=at(m, 3), id="b3")),
        orjson.dumps(ce(MAILING, {"quantity": 9_999}, tenant="acme", time=f"{m}-03T12:00",
                        id="b4")),
        orjson.dumps(ce(MAILING, {"quantity": 9_999}, tenant="acme", time=future, id="b5")),
        orjson.dumps(no_subject),
        orjson.dumps(ce("system.event.registered", {"key": "Import"}, time=at(m, 3), id="b7")),
    ]  # fmt: skip


# (tenant, usage month, service, kind, usage, users, included, packages, unit price, amount)
Line = tuple[str, str, str, str, str, int, str, int, str, str]


def first_invoice(c: MonthCase) -> list[Line]:
    """The lines of closing M (on invoice M1)."""
    m = c.m
    return [
        ("acme", m, "mailing", "overage", "35000", 60, "30000", 1, "32.40", "32.40"),
        ("acme", m, "storage", "overage", "130", 60, "100", 1, "32.40", "32.40"),
        ("beta", m, "customer_center", "overage", "2500", 0, "1000", 2, "32.40", "64.80"),
    ]


def second_invoice(c: MonthCase) -> list[Line]:
    """The lines of closing M1 after the late event (on invoice M2)."""
    m, m1 = c.m, c.m1
    return [
        ("acme", m, "mailing", "adjustment", "85000", 60, "30000", 1, "32.40", "32.40"),
        ("acme", m1, "customer_center", "overage", "5000", 60, "2000", 3, "32.40", "97.20"),
        ("acme", m1, "form", "overage", "5000", 60, "2000", 3, "32.40", "97.20"),
    ]


# The dead letters the integration test expects from the workers (the first two bad lines
# never reach Kafka: `metering send` refuses them).
WORKER_LETTERS = {
    ("invalid_field", "data.quantity"),
    ("unknown_type", "type"),
    ("invalid_field", "data.bytes"),
    ("invalid_field", "time"),
    ("future", "time"),
    ("missing_field", "subject"),
    ("missing_field", "data.scope"),
}
