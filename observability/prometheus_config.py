"""A Prometheus configuration for a stack whose processes listen on loopback (the local
stack, the tests): the same job names and rule file as ops/prometheus/prometheus.yml, which
docker-compose.yml mounts."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

RULES = Path(__file__).resolve().parent.parent / "ops" / "prometheus" / "rules"


def scrape_config(
    metrics_urls: dict[str, str | list[str]],
    interval: str = "15s",
    rules: Path = RULES,
    credentials_file: Path | None = None,
) -> str:
    """`metrics_urls` maps a job name (metering-worker, metering-projector) to its /metrics,
    or to the /metrics of each of its processes (every worker of `metering up --workers N`);
    `credentials_file` holds a metrics key, which every job then sends as a bearer token
    (needed once METERING_API_KEYS is set: every /metrics then wants that key)."""
    jobs = []
    for job, urls in sorted(metrics_urls.items()):
        # The processes of a job serve the same path and scheme on their own host:port.
        split = [urllib.parse.urlsplit(u) for u in ([urls] if isinstance(urls, str) else urls)]
        scrape: dict[str, object] = {
            "job_name": job,
            "metrics_path": split[0].path or "/metrics",
            "scheme": split[0].scheme or "http",
            "static_configs": [{"targets": [parts.netloc for parts in split]}],
        }
        if credentials_file is not None:
            # A file, not the key itself: the printed configuration holds no secret, and
            # Prometheus re-reads the file on every scrape, so a new key needs no reload.
            scrape["authorization"] = {"type": "Bearer", "credentials_file": str(credentials_file)}
        jobs.append(scrape)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": jobs,
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML: no YAML writer needed
