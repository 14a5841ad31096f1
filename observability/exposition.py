"""Serving a registry: the worker's own small HTTP server, behind the metrics key check."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from observability.access import CHALLENGE, REFUSALS, scrape_status
from runtime.settings import ApiKey, load_settings


class _Quiet(WSGIRequestHandler):
    # A line per scrape on stderr would drown the worker's log (prometheus_client's is silent too).
    def log_message(self, format: str, *args: object) -> None:
        return


def guarded(app: WSGIApplication, keys: Sequence[ApiKey]) -> WSGIApplication:
    """`app`, answering only requests that `scrape_status` lets through."""

    def check(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        status = scrape_status(keys, environ.get("HTTP_AUTHORIZATION"))
        if status in REFUSALS:
            body = (REFUSALS[status] + "\n").encode()
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            headers += [("Content-Length", str(len(body)))]
            headers += list(CHALLENGE.items()) if status is HTTPStatus.UNAUTHORIZED else []
            start_response(f"{status.value} {status.phrase}", headers)
            return [body]
        return app(environ, start_response)

    return check


def serve(
    registry: CollectorRegistry, host: str, port: int, keys: Sequence[ApiKey] | None = None
) -> str:
    """Serve /metrics in a daemon thread; returns its URL (port 0 picks a free port).

    `keys` None means the keys configured in the environment (METERING_API_KEYS): a caller
    that does not pass them gets the check anyway, never an open endpoint by omission."""
    if keys is None:
        keys = load_settings().api_keys

    class Server(ThreadingWSGIServer):
        """A class per server: its address family is a class attribute."""

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    app = guarded(make_wsgi_app(registry), keys)
    server = make_server(str(address[0]), port, app, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return f"http://{host}:{server.server_port}/metrics"
