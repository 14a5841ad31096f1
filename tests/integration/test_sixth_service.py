"""A sixth metered service, added in a services table and a plan alone: no code knows it.

Text messages (`metering.sms.sent`, summed) get a row in a temporary services table and rates
in a temporary plan; a month of them goes through the real broker, the worker's folds, the
projector's SQL views, the close and the audit, and comes out as the hand-computed line.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import pytest

from billing.plan import DEFAULT_PLAN
from projections.months import month_of, next_month, previous_month
from schemas.services import DEFAULT_SERVICES
from tests.conftest import Stack

pytestmark = pytest.mark.integration

SMS_ROW = """
[services.sms]
event_type = "metering.sms.sent"
aggregation = "sum"
field = "quantity"
unit = { en = "text messages", nl = "sms-berichten" }
order = 6
label = { en = "Text messages sent", nl = "Verzonden sms-berichten" }
"""
SMS_RATE = """
[versions.services.sms]
included = [100, 200, 400]
package = 100
price = "5.00"
"""


def with_sms(tmp_path: Path) -> tuple[Path, Path]:
    """The packaged table and plan, each with text messages added: the only edits made."""
    services = tmp_path / "services.toml"
    services.write_text(DEFAULT_SERVICES.read_text() + SMS_ROW)
    plan = tmp_path / "plan.toml"
    versions = len(tomllib.loads(DEFAULT_PLAN.read_text())["versions"])
    assert versions == 1, "add SMS_RATE to each version"
    plan.write_text(DEFAULT_PLAN.read_text() + SMS_RATE)
    return services, plan


def ce(
    type_: str, data: dict[str, Any], id_: str, time: str, tenant: str = "texter"
) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": id_, "source": "crm/test", "type": type_,
        "subject": "texter", "time": time, "data": data,
    }  # fmt: skip


def test_a_sixth_service_from_a_table_row_and_a_plan_rate(stack: Stack, tmp_path: Path) -> None:
    services, plan = with_sms(tmp_path)
    stack.env.update(METERING_SERVICES_FILE=str(services), METERING_PLAN_FILE=str(plan))
    # Last month of the real now: the broker judges "too late" by its own clock.
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
    before = previous_month(month)
    texts = [40, 60, 1, 44, 100, 100]  # 345 in all; one event without a quantity counts 1
    seats = {"users": 30, "modules": []}
    events = [
        ce("licensing.licenses.changed", seats, "lic", f"{before}-20T12:00:00Z"),
        *(
            ce("metering.sms.sent", {"quantity": n}, f"sms-{i}", f"{month}-{i + 2:02d}T09:00:00Z")
            for i, n in enumerate(texts)
        ),
        ce("metering.sms.sent", {}, "sms-default", f"{month}-12T09:00:00Z"),
        ce("metering.sms.sent", {"quantity": 40}, "sms-0", f"{month}-02T09:00:00Z"),  # a retry
        ce("metering.chat.started", {"quantity": 3}, "chat-1", f"{month}-03T10:00:00Z"),
    ]  # fmt: skip
    stack.create_topics()
    stack.start_worker()
    stack.start_projector()
    stack.cli("send", str(stack.write("month.jsonl", events)))
    stack.cli("close", month)

    # 346 texts for 30 users (band 1: 100 included): 246 over, 3 packages of 100 at 5.00.
    lines = stack.json("invoice", next_month(month))
    sms = [ln for ln in lines if ln["tenant"] == "texter"]
    assert [(ln["service"], ln["kind"]) for ln in sms] == [("sms", "overage")]
    line = sms[0]
    assert (line["usage"], line["unit"], line["users"], line["included"]) == (
        "346", "text messages", 30, "100",
    )  # fmt: skip
    assert (line["packages"], line["unit_price"], line["amount"]) == (3, "5.00", "15.00")

    usage = {row["service"]: row for row in stack.json("usage", "texter", month)}
    assert list(usage)[-1] == "sms", "the table's order puts text messages last"
    assert (usage["sms"]["usage"], usage["sms"]["amount"]) == ("346", "15.00")
    assert (usage["chat"]["usage"], usage["chat"]["amount"]) == ("3", "0.00")

    crossed = stack.json("crossings", month, "--tenant", "texter")
    levels = {(c["service"], c["level"], c["package"]) for c in crossed}
    # One event can pass several packages; only the highest one it reaches is announced.
    assert {("sms", "warning", None), ("sms", "exceeded", None), ("sms", "package", 3)} <= levels
    assert {service for service, *_ in levels} == {"sms"}
    assert "match the raw events" in stack.cli("audit", month).stdout
