"""Bounds of one event, and read-model columns wide enough for whatever valid events add up
to: an oversize quantity or byte count is refused naming its field (Kafka and HTTP alike),
and the rows that the largest valid usage leads to are written and read back to the cent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, localcontext
from pathlib import Path

import duckdb
import orjson
import pytest

from billing.plan import load_plan
from billing.rating import rate
from projections.decode import Rejected, admit, decode, plain_usage, validated
from projections.events import Position, UsageRecorded
from readmodel.rows import Record
from runtime.settings import Settings
from schemas.records import InvoiceLine, MonthClosed, Provenance, ThresholdCrossed
from schemas.services import MAX_PEAK as MAX_BYTES
from schemas.services import MAX_QUANTITY, Service
from streams.projector import Projector

PLAN = load_plan()
VERSION = PLAN.versions[0]
LOG_TIME = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
POSITION = Position(topic="usage-events", partition=0, offset=7, log_time=LOG_TIME)
# The design point of readmodel/schema.py: events of one partition in a month.
EVENTS_PER_MONTH = 10**13


def event(type_: str, data: dict[str, object]) -> dict[str, object]:
    return {"specversion": "1.0", "id": "e1", "source": "crm", "type": type_, "subject": "t1",
            "time": "2026-10-10T12:00:00Z", "data": data}  # fmt: skip


CHAT, MAILING, STORAGE = (
    "metering.chat.started",
    "metering.mailing.sent",
    "metering.storage.measured",
)
TOO_MUCH = [
    (event(CHAT, {"quantity": 3_000_000_000_000}), "data.quantity"),  # the chat
    (event(MAILING, {"quantity": 2**63 - 1}), "data.quantity"),  # and its mailing
    (event(MAILING, {"quantity": MAX_QUANTITY + 1}), "data.quantity"),
    (event(STORAGE, {"bytes": MAX_BYTES + 1}), "data.bytes"),
    (event(STORAGE, {"bytes": 2**63 - 1}), "data.bytes"),
]
AT_THE_BOUND = [
    (event(MAILING, {"quantity": MAX_QUANTITY}), MAX_QUANTITY),
    (event(CHAT, {"quantity": MAX_QUANTITY}), MAX_QUANTITY),
    (event(STORAGE, {"bytes": MAX_BYTES}), MAX_BYTES),
]


def test_the_bounds_cover_real_sizes_and_fit_the_columns() -> None:
    assert MAX_QUANTITY == 10**9 and MAX_BYTES == 10**15
    assert EVENTS_PER_MONTH * MAX_QUANTITY < 2**127  # HUGEINT usage


@pytest.mark.parametrize(("obj", "field"), TOO_MUCH)
def test_more_than_the_bound_is_refused_naming_the_field(
    obj: dict[str, object], field: str
) -> None:
    value = orjson.dumps(obj)
    assert plain_usage(obj, POSITION, PLAN) is None  # the fast path declines it
    for letter in (decode(value, POSITION, PLAN), validated(value, obj, POSITION, PLAN)):
        assert not isinstance(letter, UsageRecorded)
        assert (letter.reason, letter.field) == ("invalid_field", field)
        assert "less than or equal to" in letter.detail
    with pytest.raises(Rejected) as refused:  # HTTP ingest: 400 with this reason
        admit(obj, LOG_TIME, PLAN)
    assert (refused.value.reason, refused.value.field) == ("invalid_field", field)


@pytest.mark.parametrize(("obj", "amount"), AT_THE_BOUND)
def test_the_bound_itself_is_accepted_on_both_paths(obj: dict[str, object], amount: int) -> None:
    value = orjson.dumps(obj)
    plain, checked = plain_usage(obj, POSITION, PLAN), validated(value, obj, POSITION, PLAN)
    assert isinstance(plain, UsageRecorded) and isinstance(checked, UsageRecorded)
    assert plain.amount == checked.amount == amount
    assert admit(obj, LOG_TIME, PLAN)[0] == "usage"


def crossing(usage: int, package: int) -> ThresholdCrossed:
    return ThresholdCrossed(
        id=f"c-{package}", tenant="t1", service="chat", usage_month="2026-10",
        level="package", package=package, usage=usage, included=1_500_000, users=0,
        crossed_by="crm/e1", crossed_at=LOG_TIME,
    )  # fmt: skip


def line(service: Service, usage: int, events: int) -> InvoiceLine:
    rating = rate(service, usage, 0, VERSION)
    return InvoiceLine(
        id=f"l-{service}", invoice_month="2026-11", usage_month="2026-10", tenant="t1",
        service=service, kind="overage", usage=rating.in_units(usage), unit=rating.unit,
        users=0, included=rating.in_units(rating.included), packages=rating.packages,
        unit_price=rating.unit_price, amount=rating.amount, currency="EUR",
        plan_version=VERSION.version,
        provenance=Provenance(events=events, partition=0, first_offset=0,
                              last_offset=events - 1, close_id="c1"),
    )  # fmt: skip


def records(*items: ThresholdCrossed | InvoiceLine | MonthClosed) -> list[Record]:
    topic = {ThresholdCrossed: "threshold-crossings", InvoiceLine: "invoice-lines",
             MonthClosed: "month-closes"}  # fmt: skip
    return [
        Record(topic[type(item)], 0, n, 0, b"t1", item.model_dump_json().encode())
        for n, item in enumerate(items)
    ]


def read(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_largest_usage_is_written_and_read_back_to_the_cent(tmp_path: Path) -> None:
    most = EVENTS_PER_MONTH * MAX_QUANTITY  # 10^22 chats in one month
    chats, storage = line("chat", most, EVENTS_PER_MONTH), line("storage", MAX_BYTES, 1)
    one = line("mailing", MAX_QUANTITY, 1)  # a single event of the largest mailing
    # (10^22 - 1,500) / 1,000 rounded up: one package short of 10^19, beyond BIGINT
    assert chats.packages == 10**19 - 1
    assert chats.amount == Decimal("323999999999999999967.60")
    assert (storage.packages, storage.amount) == (19_999, Decimal("647967.60"))
    assert (one.packages, one.amount) == (20_000, Decimal("648000.00"))
    total = chats.amount + storage.amount + one.amount
    closed = MonthClosed(id="m1", close_id="c1", month="2026-10", partition=0, tenants=1,
                         lines=3, amount=total)  # fmt: skip
    path = tmp_path / "rm.duckdb"
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, path)
    set_aside: list[tuple[str, str]] = []
    projector.on_set_aside = lambda table, reason: set_aside.append((table, reason))
    projector.write(records(crossing(most, chats.packages), chats, storage, one, closed))
    projector.close()
    assert set_aside == []
    assert read(path, "SELECT package, usage FROM threshold_crossings") == [(10**19 - 1, most)]
    sql = "SELECT service, packages, amount::VARCHAR, usage::VARCHAR FROM invoice_lines"
    assert read(path, sql + " ORDER BY service") == [
        ("chat", 10**19 - 1, "323999999999999999967.60", "10000000000000000000000.000000000"),
        ("mailing", 20_000, "648000.00", "1000000000.000000000"),
        ("storage", 19_999, "647967.60", "1000000.000000000"),
    ]
    assert read(path, "SELECT amount::VARCHAR FROM month_closes") == [("324000000000001295935.20",)]


def test_any_plan_within_its_columns_fits_the_amount_columns(tmp_path: Path) -> None:
    """The worst plan the plan table can hold (a package of one unit at the largest price).
    Its amounts need 38 digits: more than Python's default decimal context (28) holds."""
    most = EVENTS_PER_MONTH * MAX_QUANTITY
    price = Decimal("99999999999999.9999")
    with localcontext(prec=40):
        amount = (price * most).quantize(Decimal("0.01"))
    extreme = line("chat", most, EVENTS_PER_MONTH).model_copy(
        update={"packages": most, "unit_price": price, "amount": amount}
    )
    closed = MonthClosed(id="m1", close_id="c1", month="2026-10", partition=0, tenants=1,
                         lines=1, amount=amount)  # fmt: skip
    path = tmp_path / "rm.duckdb"
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, path)
    projector.write(records(crossing(most, most), extreme, closed))
    projector.close()
    expected = "999999999999999999000000000000000000.00"
    assert read(path, "SELECT packages, amount::VARCHAR FROM invoice_lines") == [(most, expected)]
    assert read(path, "SELECT amount::VARCHAR FROM month_closes") == [(expected,)]
    assert read(path, "SELECT package FROM threshold_crossings") == [(most,)]


def test_an_older_file_is_widened_in_place(tmp_path: Path) -> None:
    path = tmp_path / "rm.duckdb"
    settings = Settings(kafka_bootstrap="unused:1")
    Projector(settings, PLAN, path).close()
    con = duckdb.connect(str(path))  # the column types of the first release
    for table, column, old in (("invoice_lines", "packages", "BIGINT"),
                               ("invoice_lines", "amount", "DECIMAL(18, 2)"),
                               ("threshold_crossings", "package", "INTEGER"),
                               ("month_closes", "amount", "DECIMAL(18, 2)")):  # fmt: skip
        con.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {old}')
    con.close()
    projector = Projector(settings, PLAN, path)
    projector.write(records(crossing(10**22, 3_000_000_000)))
    projector.close()
    assert read(path, "SELECT package FROM threshold_crossings") == [(3_000_000_000,)]
    types = read(path, "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE column_name IN ('package', 'packages', 'amount') "
                       "AND table_name IN ('invoice_lines', 'threshold_crossings', 'month_closes') "
                       "ORDER BY ALL")  # fmt: skip
    assert types == [
        ("invoice_lines", "amount", "DECIMAL(38,2)"), ("invoice_lines", "packages", "HUGEINT"),
        ("month_closes", "amount", "DECIMAL(38,2)"), ("threshold_crossings", "package", "HUGEINT"),
    ]  # fmt: skip
