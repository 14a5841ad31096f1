"""Serving a registry: the worker's own small HTTP server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def serve(registry: CollectorRegistry, host: str, port: int) -> str:
    """Serve /metrics in a daemon thread; returns its URL (port 0 picks a free port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return f"http://{host}:{server.server_port}/metrics"
