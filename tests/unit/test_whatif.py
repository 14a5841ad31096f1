"""Finance's what-ifs rebuild tenants' states from the read model and decide with the workers'
own folds: a preview equals the close, a re-rating with the live plan equals the invoice,
and one with another plan equals that plan's rating, to the cent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.plan import Plan, load_plan, parse_plan
from billing.rating import rate
from metering.generate import generate_month
from projections import whatif
from projections.batch import fold_batch
from projections.decode import decode
from projections.events import Position
from projections.invoicing import close_month
from projections.memory import MemoryState
from projections.tenant import ServiceMonth, Snapshot, TenantState
from readmodel import whatif as readmodel_whatif
from readmodel.queries import QueryError
from readmodel.rows import FORWARDED_FROM, Record
from runtime.settings import Settings
from schemas.records import MonthClosed
from streams.projector import Projector

PLAN = load_plan()
MONTH, NEXT = "2026-09", "2026-10"
LOG_MS = int(dt.datetime(2026, 10, 2, tzinfo=dt.UTC).timestamp() * 1000)
SETTINGS = Settings(kafka_bootstrap="unused:1")
TOPICS = SETTINGS.topics
NOW = dt.datetime(2026, 10, 3, tzinfo=dt.UTC)


def other_plan(**changes: Any) -> Plan:
    """The live plan with `changes` to its first version (per service: `services.<name>`)."""
    data = orjson.loads(PLAN.model_dump_json())
    version = data["versions"][0]
    for key, value in changes.items():
        if key.startswith("services."):
            version["services"][key.removeprefix("services.")].update(value)
        else:
            version[key] = value
    for rate_ in version["services"].values():
        rate_.pop("unit"), rate_.pop("unit_size")
    return parse_plan(data)


def usage_records(events: list[dict[str, Any]], first_offset: int = 0) -> list[Record]:
    out = []
    for offset, event in enumerate(events, start=first_offset):
        headers = ()
        if event["type"].startswith("licensing."):
            headers = ((FORWARDED_FROM, f"{TOPICS.licenses}/0/{offset}".encode()),)
        out.append(Record(TOPICS.usage, 0, offset, LOG_MS, b"k", orjson.dumps(event), headers))
    return out


def fold(state: MemoryState, log: list[Record]) -> None:
    decoded = [
        decode(
            r.value,
            Position(
                topic=r.topic, partition=r.partition, offset=r.offset,
                log_time=dt.datetime.fromtimestamp(r.timestamp_ms / 1000, dt.UTC),
                origin=TOPICS.licenses if r.headers else None,
            ),
            PLAN,
        )
        for r in log
    ]  # fmt: skip
    state.commit(fold_batch(decoded, state, PLAN, frozenset({TOPICS.usage, TOPICS.licenses})))


def close(state: MemoryState, month: str, close_id: str, offset: int) -> list[Record]:
    """The worker's close of `month` as the read model receives it: lines, then the close."""
    lines = []
    for tenant in sorted(state.tenants):
        state.tenants[tenant], new = close_month(state.tenants[tenant], month, close_id, PLAN)
        lines.extend(new)
    closed = MonthClosed(
        id=close_id, close_id=close_id, month=month, partition=0, tenants=len(state.tenants),
        lines=len(lines), amount=sum((ln.amount for ln in lines), Decimal("0.00")),
    )  # fmt: skip
    out = [
        Record(TOPICS.lines, 0, offset + n, LOG_MS, None, ln.model_dump_json().encode())
        for n, ln in enumerate(lines)
    ]
    return [*out, Record(TOPICS.closes, 0, offset, LOG_MS, None, closed.model_dump_json().encode())]


def as_previewed(lines: list[Any]) -> list[dict[str, Any]]:
    """Lines as the preview answers them (money as text, provenance flattened, no close)."""
    out = []
    for line in lines:
        row = line.model_dump(mode="json")
        provenance = row.pop("provenance")
        row.update({k: v for k, v in provenance.items() if k != "close_id"})
        out.append(row)
    return out


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = (
        "id", "kind", "tenant", "usage_month", "invoice_month", "service", "users", "packages",
        "amount", "plan_version", "events", "first_offset", "last_offset",
    )  # fmt: skip
    return [{k: str(row[k]) for k in keep} for row in rows]


@pytest.fixture
def projector(tmp_path: Path) -> Any:
    projector = Projector(SETTINGS, PLAN, tmp_path / "rm.duckdb")
    yield projector
    projector.close()


def test_the_preview_is_the_close_and_then_its_adjustments(projector: Projector) -> None:
    state = MemoryState()
    log = usage_records(list(generate_month(MONTH, tenants=6, seed=5)))
    fold(state, log)
    projector.write(log)
    with projector.reader() as cur:
        rebuilt = readmodel_whatif.tenant_states(cur, PLAN)
        before = readmodel_whatif.preview(cur, PLAN, NOW, None, TOPICS.usage)
    assert {t: (s.usage, s.snapshots) for t, s in rebuilt.items()} == {
        t: (s.usage, s.snapshots) for t, s in state.tenants.items()
    }
    assert before["usage_month"] == MONTH  # last month, not closed yet
    written = close(state, MONTH, "c-1", 0)
    expected = comparable(as_previewed([*_lines(written)]))
    assert expected, "the generated month bills nothing: the test shows nothing"
    assert comparable(before["lines"]) == expected
    assert before["total"] == str(sum((Decimal(r["amount"]) for r in expected), Decimal(0)))
    projector.write(written)

    # A late event for the closed month: the preview of the next close adjusts it, pending.
    tenant = expected[0]["tenant"]
    late = usage_records([_mailing(tenant, f"{MONTH}-28T12:00:00Z", 500_000)], len(log))
    fold(state, late)
    projector.write(late)
    with projector.reader() as cur:
        after = readmodel_whatif.preview(cur, PLAN, NOW, None, TOPICS.usage)
    assert after["usage_month"] == NEXT  # last month is closed: this month's close is next
    pending = [row for row in after["lines"] if row["pending"]]
    assert [(r["tenant"], r["usage_month"], r["kind"]) for r in pending] == [
        (tenant, MONTH, "adjustment")
    ]
    assert after["pending_total"] == pending[0]["amount"] != "0.00"
    closed_next = close(state, NEXT, "c-2", 100)
    assert comparable(after["lines"]) == comparable(as_previewed(_lines(closed_next)))


def test_rerating_with_the_live_plan_is_the_invoice_and_with_another_its_rating(
    projector: Projector,
) -> None:
    state = MemoryState()
    log = usage_records(list(generate_month(MONTH, tenants=6, seed=5)))
    fold(state, log)
    projector.write([*log, *close(state, MONTH, "c-1", 0)])
    cheaper = other_plan(user_bands=[40, 100], **{"services.mailing": {"price": "40.00"}})
    with projector.reader() as cur:
        live = readmodel_whatif.rerate(cur, MONTH, PLAN, PLAN, TOPICS.usage)
        other = readmodel_whatif.rerate(cur, MONTH, cheaper, PLAN, TOPICS.usage)
    assert live["rows"] and {r["difference"] for r in live["rows"]} == {"0.00"}
    assert [(r["amount"], r["packages"]) for r in live["rows"]] == [
        (r["rerated_amount"], r["rerated_packages"]) for r in live["rows"]
    ]
    version = cheaper.versions[0]
    for row in other["rows"]:
        tenant = state.tenants[row["tenant"]]
        usage = tenant.usage[MONTH][row["service"]].value
        users = row["users"]
        rating = rate(row["service"], usage, users, version)
        assert (row["rerated_packages"], row["rerated_amount"]) == (
            rating.packages, str(rating.amount)
        )  # fmt: skip
    total = sum((Decimal(r["difference"]) for r in other["rows"]), Decimal(0))
    assert other["totals"]["difference"] == str(total.quantize(Decimal("0.01")))


def _lines(records: list[Record]) -> list[Any]:
    from schemas.records import InvoiceLine

    return [InvoiceLine.model_validate_json(r.value) for r in records if r.topic == TOPICS.lines]


def _mailing(tenant: str, time: str, quantity: int) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": "late-1", "source": "crm/mailing",
        "type": "metering.mailing.sent", "subject": tenant, "time": time,
        "data": {"quantity": quantity},
    }  # fmt: skip


def _state(users: int, **usage: int) -> TenantState:
    return TenantState(
        tenant="t",
        partition=0,
        snapshots=(Snapshot(time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), users=users),),
        usage={MONTH: {s: ServiceMonth(value=v, events=1) for s, v in usage.items()}},
    )


# Each change of the plan, by hand: 45 users are band 1 of the live plan (up to 50) and band
# 2 of one whose first band ends at 40; mailing includes 15,000 (band 1) or 30,000 (band 2)
# and its package is 50,000 e-mails at 32.40.
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ("32.40", 1, "32.40", "0.00")),
        ({"services.mailing": {"price": "40.00"}}, ("32.40", 1, "40.00", "7.60")),
        ({"user_bands": [40, 100]}, ("32.40", 1, "0.00", "-32.40")),  # 30,000 included
        ({"services.mailing": {"package": 2_000}}, ("32.40", 1, "97.20", "64.80")),  # 3 of 2,000
        ({"services.mailing": {"included": [5_000, 30_000, 60_000]}},
         ("32.40", 1, "32.40", "0.00")),
        ({"services.mailing": {"included": [20_000, 30_000, 60_000]}},
         ("32.40", 1, "0.00", "-32.40")),
    ],
)  # fmt: skip
def test_each_change_of_the_plan_shows(changes: dict[str, Any], expected: tuple[Any, ...]) -> None:
    state = _state(45, mailing=20_000)
    billed = {"mailing": whatif.Billed(packages=1, amount=Decimal("32.40"), plan_version="x",
                                       lines=1)}  # fmt: skip
    (row,) = whatif.rerate(state, MONTH, billed, other_plan(**changes), PLAN)
    amount, packages, rerated, difference = expected
    assert (str(row.amount), row.packages, str(row.rerated_amount), str(row.difference)) == (
        amount, packages, rerated, difference
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    users=st.integers(0, 200),
    amounts=st.fixed_dictionaries(
        {s: st.integers(0, 10**7) for s in ("mailing", "chat", "form", "customer_center")}
    ),
    storage=st.integers(0, 10**12),
)
def test_rerating_a_close_with_its_own_plan_changes_nothing(
    users: int, amounts: dict[str, int], storage: int
) -> None:
    state = _state(users, storage=storage, **amounts)
    closed, lines = close_month(state, MONTH, "c", PLAN)
    billed = {
        ln.service: whatif.Billed(packages=ln.packages, amount=ln.amount,
                                  plan_version=ln.plan_version, lines=1)
        for ln in lines
    }  # fmt: skip
    rows = whatif.rerate(closed, MONTH, billed, PLAN, PLAN)
    assert {r.service for r in rows} == set(billed)
    assert all(r.difference == 0 and r.rerated_packages == r.packages for r in rows)
    assert whatif.preview(closed, MONTH, PLAN) == []  # closed: nothing more to bill
    previewed = whatif.preview(state, MONTH, PLAN)
    assert {ln.provenance.close_id for ln in previewed} <= {whatif.PREVIEW_CLOSE}
    assert [_closed_by(ln, "c") for ln in previewed] == lines


def _closed_by(line: Any, close_id: str) -> Any:
    return line.model_copy(
        update={"provenance": line.provenance.model_copy(update={"close_id": close_id})}
    )


@pytest.mark.parametrize(
    ("now", "closed", "month"),
    [
        ("2026-11-30T23:59:00+00:00", [], "2026-10"),
        ("2026-11-30T23:59:00+00:00", ["2026-10"], "2026-11"),
        ("2026-12-01T00:00:00+00:00", ["2026-10"], "2026-11"),
        ("2026-12-01T00:00:00+00:00", ["2026-10", "2026-11"], "2026-12"),
        ("2027-01-01T00:30:00+00:00", ["2026-11"], "2026-12"),
    ],
)
def test_the_preview_month_is_the_next_close(now: str, closed: list[str], month: str) -> None:
    assert whatif.preview_month(dt.datetime.fromisoformat(now), PLAN, closed) == month


def test_a_plan_that_would_move_months_or_currencies_is_refused() -> None:
    problems = whatif.plan_problems(
        PLAN, other_plan(billing_timezone="Europe/Amsterdam", currency="USD"), MONTH
    )
    assert any("billing_timezone" in p for p in problems)
    assert any("currency USD" in p for p in problems)
    late = other_plan(effective_from="2027-01-01")
    assert whatif.plan_problems(PLAN, late, MONTH) == [
        f"the plan has no version in force for {MONTH}"
    ]


def test_a_close_that_has_not_reached_every_partition_is_no_closed_month(
    projector: Projector,
) -> None:
    state = MemoryState()
    log = usage_records(list(generate_month(MONTH, tenants=2, seed=5)))
    fold(state, log)
    other = Record(TOPICS.usage, 1, 0, LOG_MS, b"k",
                   orjson.dumps(_mailing("elsewhere", f"{MONTH}-03T12:00:00Z", 10)))  # fmt: skip
    projector.write([*log, other, *close(state, MONTH, "c-1", 0)])  # partition 0's close only
    with projector.reader() as cur:
        with pytest.raises(QueryError, match="not taken effect in every partition"):
            readmodel_whatif.rerate(cur, MONTH, PLAN, PLAN, TOPICS.usage)
        # the next close is still that month's, not this month's
        assert readmodel_whatif.preview(cur, PLAN, NOW, None, TOPICS.usage)["usage_month"] == MONTH
