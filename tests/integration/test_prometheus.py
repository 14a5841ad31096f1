"""Dashboards, alert rules and the compose file against the real things: Debian's Prometheus
scraping a running stack, promtool on the rules, the compose file's references."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from metering.broker import stop_process
from observability.prometheus_config import scrape_config
from projections.months import month_of, next_month, previous_month
from tests.conftest import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DASHBOARDS = sorted((OPS / "grafana" / "dashboards").glob("*.json"))


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed: Debian's prometheus package (scripts/bootstrap.sh)")
    return found


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every target of every committed dashboard."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((board["title"], panel["title"], target["expr"]))
    return found


def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(OPS / "prometheus" / "rules" / "metering.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "metering_test.yml"],
        cwd=OPS / "prometheus" / "tests", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_compose_file_refers_to_files_that_exist_and_agree() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: {source} is not a named volume"
        assert "healthcheck" in service, f"{name} has no health check"
    prometheus = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"metering-worker", "metering-projector"}
    rules = yaml.safe_load((OPS / "prometheus" / "rules" / "metering.yml").read_text())
    ruled_jobs = {j for g in rules["groups"] for r in g["rules"] for j in jobs if j in r["expr"]}
    assert ruled_jobs == jobs
    sources = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in sources["datasources"]}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']}"


def test_readme_lists_every_panel_with_its_query() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        (title, expr)
        for _, title, expr in panel_queries()
        if f"| {title} | `{expr}` |" not in readme
    ]
    assert not missing, f"README lacks these panels: {missing}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_every_dashboard_panel_has_data_and_a_crossing_alert_fires(
    stack: Stack, tmp_path: Path
) -> None:
    stack.create_topics()
    worker, worker_ready = stack.start("worker")
    stack.start_projector(METERING_METRICS_TENANT_TOP="5", METERING_METRICS_REFRESH="1")
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
    generated = tmp_path / "month.jsonl"
    stack.cli("generate", month, "--tenants", "8", "--scale", "0.3", "-o", str(generated))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"specversion": "1.0", "type": "metering.chat.started"}\n')
    stack.cli("send", str(generated))
    stack.cli("send", str(bad), check=False)
    stack.cli("close", month)
    lines = stack.json("invoice", next_month(month))
    assert lines, "the generated month must bill something, or the money panels test nothing"

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        scrape_config(
            {
                "metering-worker": orjson.loads(worker_ready)["metrics_url"],
                "metering-projector": stack.env["METERING_API_URL"] + "/metrics",
            },
            interval="1s",
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:

        def ready() -> bool:
            try:
                return api.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "Prometheus to start")

        def targets_up() -> bool:
            active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        wait_for(targets_up, 60, "both targets to be scraped")

        def query(expr: str) -> list[Any]:
            answer = api.get("/api/v1/query", params={"query": expr}).json()
            assert answer["status"] == "success", (expr, answer)
            return list(answer["data"]["result"])

        # Every target of every panel, as Grafana would send it (its rate interval at 1 s
        # scrapes is a minute at most); all must return series, within a bounded wait.
        pending = {(b, t, e.replace("$__rate_interval", "1m")) for b, t, e in panel_queries()}
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            pending = {(b, t, e) for b, t, e in pending if not query(e)}
            time.sleep(1)
        assert not pending, f"panels without data: {sorted(pending)}"

        def crossing_alerts() -> list[dict[str, Any]]:
            alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
            return [
                a for a in alerts
                if a["labels"]["alertname"] == "MeteringTenantOverThreshold"
                and a["state"] == "firing"
            ]  # fmt: skip

        firing = wait_for(crossing_alerts, 60, "the crossing alert to fire")
        over = {(line["tenant"], line["service"]) for line in lines}
        alerted = {(a["labels"]["tenant"], a["labels"]["service"]) for a in firing}
        assert alerted and alerted <= over  # every alert names a tenant that is billed for it
        assert {a["labels"]["month"] for a in firing} == {month}
        names = {
            a["labels"]["alertname"] for a in api.get("/api/v1/alerts").json()["data"]["alerts"]
        }
        assert "MeteringWorkerDown" not in names and "MeteringProjectorDown" not in names

        # A worker that stops is noticed: its target goes down (the alert waits a minute).
        stack.stop(worker)
        wait_for(lambda: query('up{job="metering-worker"} == 0'), 30, "the worker to be down")
    finally:
        api.close()
        stop_process(prometheus.pid, timeout=20)
        prometheus.wait(timeout=20)
        log.close()
