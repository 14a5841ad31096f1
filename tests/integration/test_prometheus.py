"""Dashboards, alert rules and the compose file against the real things: Debian's Prometheus
scraping a running stack, promtool on the rules, the compose file's references."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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
from tests.factories import stored_keys

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
        # Annotations query Prometheus too: they must find data like the panels.
        for annotation in board.get("annotations", {}).get("list", []):
            found.append((board["title"], f"annotation {annotation['name']}", annotation["expr"]))
    return found


def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(OPS / "prometheus" / "rules" / "metering.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "metering_test.yml"],
        cwd=OPS / "prometheus" / "tests", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """With the container's paths (the rules, the key secret) pointed at local files."""
    key_file = tmp_path / "metrics-key"
    key_file.write_text("a-metrics-key\n")
    text = (OPS / "prometheus" / "prometheus.yml").read_text()
    text = text.replace("/run/secrets/metrics-key", str(key_file))
    text = text.replace("/etc/prometheus/rules", str(OPS / "prometheus" / "rules"))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_file_refers_to_files_that_exist_and_agree() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if ":" not in volume and source.startswith("/"):
                continue  # an anonymous volume: one per container (a worker replica's own)
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: {source} is not a named volume"
        assert "healthcheck" in service, f"{name} has no health check"
    prometheus = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"metering-worker", "metering-projector", "metering-notifier"}
    # Compose runs with API keys, so every job sends the metrics key that compose mounts.
    assert all(
        "METERING_API_KEYS" in compose["services"][s]["environment"] for s in ("worker", "api")
    )
    mounted = compose["services"]["prometheus"]["secrets"]
    assert set(mounted) <= set(compose["secrets"])
    for job in prometheus["scrape_configs"]:
        key_file = job["authorization"]["credentials_file"]
        assert key_file.removeprefix("/run/secrets/") in mounted, job["job_name"]
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


@contextlib.contextmanager
def prometheus_on(config: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """Debian's Prometheus with `config`, ready; yields a client of its HTTP API."""
    port = free_port()
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(config)
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config_file}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
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
        yield api
    finally:
        api.close()
        stop_process(prometheus.pid, timeout=20)
        prometheus.wait(timeout=20)
        log.close()


def test_every_dashboard_panel_has_data_and_a_crossing_alert_fires(
    stack: Stack, tmp_path: Path
) -> None:
    stack.create_topics()
    worker, worker_ready = stack.start("worker")
    stack.start_projector(METERING_METRICS_TENANT_TOP="5", METERING_METRICS_REFRESH="1")
    _, notifier_ready = stack.start("notifier")
    month = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
    # A running import: the system-events annotation has something to draw.
    running = tmp_path / "system.jsonl"
    running.write_bytes(orjson.dumps({
        "specversion": "1.0", "id": "import-1", "source": "ops", "type": "system.event.registered",
        "subject": "tenant-00001", "time": dt.datetime.now(dt.UTC).isoformat(),
        "data": {"key": "import", "scope": "database", "status": "running"},
    }) + b"\n")  # fmt: skip
    stack.cli("send", str(running))
    generated = tmp_path / "month.jsonl"
    stack.cli("generate", month, "--tenants", "8", "--scale", "0.3", "-o", str(generated))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"specversion": "1.0", "type": "metering.chat.started"}\n')
    stack.cli("send", str(generated))
    stack.cli("send", str(bad), check=False)
    stack.cli("close", month)
    lines = stack.json("invoice", next_month(month))
    assert lines, "the generated month must bill something, or the money panels test nothing"

    config = scrape_config(
        {
            "metering-worker": orjson.loads(worker_ready)["metrics_url"],
            "metering-projector": stack.env["METERING_API_URL"] + "/metrics",
            "metering-notifier": orjson.loads(notifier_ready)["metrics_url"],
        },
        interval="1s",
    )
    with prometheus_on(config, tmp_path) as api:

        def targets_up() -> bool:
            active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_for(targets_up, 60, "the three targets to be scraped")

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


def test_with_api_keys_only_a_metrics_key_scrapes(stack: Stack, tmp_path: Path) -> None:
    """With METERING_API_KEYS set, Prometheus scrapes both processes with the metrics key of
    `--credentials-file`; without it, or with a finance key, every target is down."""
    secrets = {"metrics": "metrics-key-for-prometheus", "finance": "finance-key-not-a-scraper"}
    keys = stored_keys(secrets)
    stack.create_topics()
    _, worker_ready = stack.start("worker", METERING_API_KEYS=keys)
    stack.start_projector(METERING_API_KEYS=keys)
    urls = {
        "metering-worker": orjson.loads(worker_ready)["metrics_url"],
        "metering-projector": stack.env["METERING_API_URL"] + "/metrics",
    }
    (tmp_path / "metrics.key").write_text(secrets["metrics"] + "\n")
    (tmp_path / "finance.key").write_text(secrets["finance"] + "\n")
    # One Prometheus, three pairs of jobs: the metrics key, no key, a finance key.
    config = json.loads(scrape_config(urls, "1s"))
    config["scrape_configs"] = [
        {**job, "job_name": prefix + job["job_name"]}
        for prefix, key_file in (
            ("", "metrics.key"),
            ("no-key-", None),
            ("finance-", "finance.key"),
        )
        for job in json.loads(
            scrape_config(urls, "1s", credentials_file=tmp_path / key_file if key_file else None)
        )["scrape_configs"]
    ]
    with prometheus_on(json.dumps(config), tmp_path) as api:

        def scraped() -> dict[str, tuple[str, str]]:
            active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            found = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active}
            # Until its first scrape a target's health is "unknown".
            done = len(found) == 6 and all(health != "unknown" for health, _ in found.values())
            return found if done else {}

        found = wait_for(scraped, 60, "every target to be scraped once")
    for job in urls:
        assert found[job] == ("up", ""), job
        health, error = found["no-key-" + job]
        assert health == "down" and "401" in error, (job, error)
        health, error = found["finance-" + job]
        assert health == "down" and "403" in error, (job, error)
