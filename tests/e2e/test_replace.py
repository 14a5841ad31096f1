"""Replacing the read model is a local operation of `metering replay`, checked before the
swap: no HTTP route names a file, and a file that fails the check leaves the live one serving
(and the next start of the projector works)."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pytest

from api.replace import Paths, answered, ask
from projections.months import month_of, previous_month
from tests.conftest import Stack
from tests.factories import cloudevent, stored_keys

pytestmark = pytest.mark.integration

MONTH = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
FINANCE = {"Authorization": "Bearer f-secret"}


def _answer(paths: Paths, request: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while (found := answered(paths, request)) is None:
        assert time.monotonic() < deadline, "the projector did not answer the request"
        time.sleep(0.2)
    return found


def test_replace_only_through_the_data_dir_and_only_a_checked_file(stack: Stack) -> None:
    stack.create_topics()
    stack.start_worker()
    keys = stored_keys({"finance": "f-secret"})
    projector = stack.start_projector(METERING_API_KEYS=keys)
    events = [
        cloudevent(
            "metering.chat.started",
            {"quantity": 7},
            tenant="acme",
            id=f"e{n}",
            time=f"{MONTH}-0{n + 1}T10:00:00Z",
        )
        for n in range(3)
    ]
    stack.cli("send", str(stack.write("events.jsonl", events)))
    api = httpx.Client(base_url=stack.env["METERING_API_URL"], headers=FINANCE, timeout=120)
    usage = api.get("/v1/tenants/acme/usage", params={"month": MONTH})
    assert usage.status_code == 200, usage.text

    # The route that once swapped in any file of the data dir is gone.
    ready_file = next(stack.data_dir.glob("projector-*.ready"))
    gone = api.post("/v1/admin/replace", json={"path": str(ready_file)})
    assert gone.status_code == 404
    assert all("replace" not in path for path in api.get("/openapi.json").json()["paths"])

    paths = Paths(stack.data_dir / "metering.duckdb")
    paths.candidate.write_bytes(ready_file.read_bytes())
    refused = _answer(paths, ask(paths))
    assert refused["replaced"] is False
    assert "not a readable DuckDB file" in str(refused["problems"])
    assert api.get("/readyz").status_code == 200
    assert api.get("/v1/tenants/acme/usage", params={"month": MONTH}).json() == usage.json()

    replayed = stack.cli("replay", METERING_API_KEY="f-secret")
    assert "is now the replayed one" in replayed.stdout
    assert api.get("/v1/tenants/acme/usage", params={"month": MONTH}).json() == usage.json()

    # The live file stays one the projector starts from.
    api.close()
    stack.stop(projector)
    stack.start_projector(METERING_API_KEYS=keys)
    with httpx.Client(
        base_url=stack.env["METERING_API_URL"], headers=FINANCE, timeout=120
    ) as again:
        assert again.get("/v1/tenants/acme/usage", params={"month": MONTH}).json() == usage.json()
