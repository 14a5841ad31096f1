"""Serving a registry: the worker's own small HTTP server, and Faust's rebalance hook."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CollectorRegistry, start_http_server

from observability.metrics import WorkerMetrics


def serve(registry: CollectorRegistry, host: str, port: int) -> str:
    """Serve /metrics in a daemon thread; returns its URL (port 0 picks a free port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return f"http://{host}:{server.server_port}/metrics"


class RebalanceSensor(faust.Sensor):
    """Counts the consumer group's rebalances as this worker sees them."""

    def __init__(self, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self.metrics.rebalances.inc()
        state: dict[str, Any] = super().on_rebalance_start(app)
        return state
