"""Where the code judges time by the wall clock, "now" is injected: pinned here, the same
event is accepted or refused by the day, never by the day the suite runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from api.ingest import BatchRejected, Ingestor
from billing.plan import load_plan
from runtime.clock import system_clock
from runtime.settings import Settings
from tests.factories import cloudevent

PLAN = load_plan()
EVENT = cloudevent("metering.chat.started", {"quantity": 2}, time="2026-08-31T12:00:00Z", id="c")


class Producer:
    """Stands in for the broker: every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def ingestor(now: str) -> tuple[Ingestor, Producer]:
    pinned = dt.datetime.fromisoformat(now)
    ingest = Ingestor(Settings(kafka_bootstrap="unused:1"), PLAN, clock=lambda: pinned)
    producer = Producer()
    ingest._producer = producer
    return ingest, producer


@pytest.mark.parametrize("now", ["2026-09-01T00:00:00+00:00", "2026-11-29T23:59:59+00:00"])
def test_ingest_accepts_august_until_its_end_plus_90_days(now: str) -> None:
    ingest, producer = ingestor(now)
    assert asyncio.run(ingest.ingest([EVENT])) == 1
    assert [orjson.loads(v) for _, v in producer.sent] == [EVENT]


@pytest.mark.parametrize(
    ("now", "reason"),
    [("2026-11-30T00:00:00+00:00", "too_late"), ("2026-08-31T11:54:59+00:00", "future")],
)
def test_ingest_judges_against_its_clock(now: str, reason: str) -> None:
    ingest, producer = ingestor(now)
    with pytest.raises(BatchRejected) as refused:
        asyncio.run(ingest.ingest([EVENT]))
    errors: list[dict[str, Any]] = refused.value.body["errors"]
    assert [(e["reason"], e["field"]) for e in errors] == [(reason, "time")]
    assert producer.sent == []


def test_the_system_clock_is_aware_and_utc() -> None:
    now = system_clock()
    assert now.utcoffset() == dt.timedelta(0)


def test_the_cli_defaults_and_checks_by_its_clock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from metering import cli

    monkeypatch.setattr(cli, "clock", lambda: dt.datetime(2026, 12, 1, 0, 5, tzinfo=dt.UTC))
    out = tmp_path / "month.jsonl"
    done = CliRunner().invoke(cli.main, ["generate", "--tenants", "1", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "events of 2026-11 for 1 tenants" in done.output
    refused = CliRunner().invoke(cli.main, ["close", "2026-12"])
    assert refused.exit_code != 0
    assert "2026-12 has not ended yet; use --force" in refused.output
