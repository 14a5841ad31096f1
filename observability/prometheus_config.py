"""A Prometheus configuration for a stack whose processes listen on loopback (the local
stack, the tests): the same job names and rule file as ops/prometheus/prometheus.yml, which
docker-compose.yml mounts."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

RULES = Path(__file__).resolve().parent.parent / "ops" / "prometheus" / "rules"


def scrape_config(
    metrics_urls: dict[str, str],
    interval: str = "15s",
    rules: Path = RULES,
    credentials_file: Path | None = None,
) -> str:
    """`metrics_urls` maps a job name (metering-worker, metering-projector) to its /metrics;
    `credentials_file` holds a metrics key, which every job then sends as a bearer token
    (needed once METERING_API_KEYS is set: every /metrics then wants that key)."""
    jobs = []
    for job, url in sorted(metrics_urls.items()):
        parts = urllib.parse.urlsplit(url)
        scrape: dict[str, object] = {
            "job_name": job,
            "metrics_path": parts.path or "/metrics",
            "scheme": parts.scheme or "http",
            "static_configs": [{"targets": [parts.netloc]}],
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
