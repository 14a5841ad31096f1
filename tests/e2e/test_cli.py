"""The CLI as a user drives it: help, bad input, and the local stack from `up` to `down`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metering.broker import Broker, is_alive
from projections.months import month_of, next_month, previous_month

COMMANDS = [
    "up", "down", "worker", "projector", "send", "close", "invoice", "usage", "crossings",
    "sql", "audit", "replay", "generate", "key",
]  # fmt: skip


def metering(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    done = metering(command, "--help")
    assert done.returncode == 0
    assert f"Usage: python -m metering.cli {command}" in done.stdout


def test_every_bad_setting_is_listed_at_once() -> None:
    done = metering(
        "invoice", "2026-10", env={"METERING_PARTITIONS": "0", "METERING_AUTO_CLOSE_GRACE": "soon"}
    )
    assert done.returncode == 1
    assert "METERING_PARTITIONS: Input should be greater than or equal to 1" in done.stderr
    assert "METERING_AUTO_CLOSE_GRACE: Input should be a valid timedelta" in done.stderr


def test_bad_plan_names_the_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[versions]]\nversion = "x"\neffective_from = 2026-01-01\ncurrency = "EUR"\n')
    done = metering("up", env={"METERING_PLAN_FILE": str(plan), "METERING_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert "versions[0].user_bands: Field required" in done.stderr
    assert "versions[0].services: Field required" in done.stderr


def test_bad_month_is_refused() -> None:
    done = metering("close", "2026-13")
    assert done.returncode == 2
    assert "'2026-13' is not a month; expected YYYY-MM" in done.stderr


def test_no_stack_says_how_to_start_one(tmp_path: Path) -> None:
    done = metering("crossings", "2026-10", env={"METERING_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert "no local stack with a projector runs in" in done.stderr
    assert "metering up --detach" in done.stderr


@pytest.mark.integration
def test_send_without_topics_says_so(kafka: Broker, tmp_path: Path) -> None:
    events = tmp_path / "one.jsonl"
    events.write_text('{"type": "metering.chat.started"}\n')
    env = {"METERING_KAFKA_BOOTSTRAP": kafka.bootstrap, "METERING_TOPIC_PREFIX": "nowhere-"}
    done = metering("send", str(events), env=env)
    assert done.returncode == 1
    assert "topic 'nowhere-usage-events' does not exist; is the stack up?" in done.stderr


@pytest.mark.integration
def test_up_send_close_invoice_down(tmp_path: Path) -> None:
    env = {"METERING_DATA_DIR": str(tmp_path / "data"), "METERING_AUTO_CLOSE_GRACE": "off"}
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))  # the CLI's months are UTC
    try:
        up = metering("up", "--detach", env=env)
        assert up.returncode == 0, up.stderr
        assert "stack ready: Kafka at 127.0.0.1:" in up.stdout
        record = json.loads((tmp_path / "data" / "stack.json").read_text())
        events = tmp_path / "month.jsonl"
        assert (
            metering("generate", month, "--tenants", "3", "-o", str(events), env=env).returncode
            == 0
        )
        sent = metering("send", str(events), env=env)
        assert sent.returncode == 0, sent.stderr
        assert "rejected 0 lines" in sent.stdout
        closed = metering("close", month, env=env)
        assert closed.returncode == 0, closed.stderr
        assert "3 tenants" in closed.stdout
        invoice = metering("invoice", next_month(month), "--format", "csv", env=env)
        assert invoice.returncode == 0, invoice.stderr
        assert len(invoice.stdout.splitlines()) > 1
        audit = metering("audit", month, env=env)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        replay = metering("replay", env=env)
        assert replay.returncode == 0, replay.stderr
        assert "is now the replayed one" in replay.stdout
        again = metering("invoice", next_month(month), "--format", "csv", env=env)
        assert again.stdout == invoice.stdout
    finally:
        started = time.monotonic()
        down = metering("down", env=env)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert time.monotonic() - started < 30  # no waiting out a stop timeout (60 s)
    for key in ("pid", "worker_pid", "projector_pid", "broker_pid"):
        assert not is_alive(int(record[key])), f"{key} still running after down"
    # `metering up` waited for what it started: not even a zombie is left of them. (Only init
    # can wait for `metering up` itself, which `up --detach` left to it.)
    for key in ("worker_pid", "projector_pid", "broker_pid"):
        assert not Path(f"/proc/{record[key]}").exists(), f"{key} left a zombie"
    assert not (tmp_path / "data" / "stack.json").exists()


def partitions_held(metrics_url: str) -> int:
    """The `metering_worker_partitions` gauge a worker serves (loopback: no key needed)."""
    import httpx

    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("metering_worker_partitions "):
            return int(float(line.split()[1]))
    raise AssertionError(f"{metrics_url} serves no metering_worker_partitions")


@pytest.mark.integration
def test_up_with_two_workers_splits_the_partitions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "METERING_DATA_DIR": str(data), "METERING_AUTO_CLOSE_GRACE": "off",
        "METERING_PARTITIONS": "4",
    }  # fmt: skip
    too_many = metering("up", "--workers", "5", env=env)
    assert too_many.returncode == 2
    assert "5 workers for 4 partitions: 1 would hold none" in too_many.stderr
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
    try:
        up = metering("up", "--detach", "--workers", "2", env=env)
        assert up.returncode == 0, up.stderr
        record = json.loads((data / "stack.json").read_text())
        assert len(record["worker_pids"]) == 2 and (data / "worker-2.log").exists()
        urls = record["metrics"]["metering-worker"]
        deadline = time.monotonic() + 60
        # Both work, and every partition is held once the group has settled.
        while not (all(held := [partitions_held(u) for u in urls]) and sum(held) == 4):
            assert time.monotonic() < deadline, f"the workers hold {held} of 4 partitions"
            time.sleep(0.5)
        config = metering("prometheus-config", env=env)
        assert config.returncode == 0, config.stderr
        targets = json.loads(config.stdout)["scrape_configs"]
        worker_job = next(j for j in targets if j["job_name"] == "metering-worker")
        assert len(worker_job["static_configs"][0]["targets"]) == 2

        events = tmp_path / "month.jsonl"
        assert (
            metering("generate", month, "--tenants", "6", "-o", str(events), env=env).returncode
            == 0
        )
        sent = metering("send", str(events), env=env)
        assert sent.returncode == 0 and "rejected 0 lines" in sent.stdout, sent.stderr
        closed = metering("close", month, env=env)
        assert closed.returncode == 0 and "6 tenants" in closed.stdout, closed.stderr
        audit = metering("audit", month, env=env)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "match the raw events" in audit.stdout
    finally:
        down = metering("down", env=env)
    assert down.returncode == 0
    for pid in record["worker_pids"]:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} left behind"
