"""A Prometheus configuration for a stack whose processes listen on loopback (the local
stack, the tests): the same job names and rule file as ops/prometheus/prometheus.yml, which
docker-compose.yml mounts."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

RULES = Path(__file__).resolve().parent.parent / "ops" / "prometheus" / "rules"


def scrape_config(metrics_urls: dict[str, str], interval: str = "15s", rules: Path = RULES) -> str:
    """`metrics_urls` maps a job name (metering-worker, metering-projector) to its /metrics."""
    jobs = []
    for job, url in sorted(metrics_urls.items()):
        parts = urllib.parse.urlsplit(url)
        jobs.append(
            {
                "job_name": job,
                "metrics_path": parts.path or "/metrics",
                "scheme": parts.scheme or "http",
                "static_configs": [{"targets": [parts.netloc]}],
            }
        )
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": jobs,
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML: no YAML writer needed
