"""Which endpoints the notifier may call: http(s) only, no credentials in the URL, and unless
`METERING_WEBHOOK_ALLOW_PRIVATE` is set, no address that is not public (loopback, private
ranges, link-local, the cloud metadata address...): a subscription must not turn the notifier
into a way to reach the inside of the network.

The host is checked when the subscription is made and its addresses again before every
attempt, since a name can come to point elsewhere."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedEndpoint(ValueError):
    """An endpoint the notifier will not call, and why."""


def check_url(url: str, allow_private: bool) -> tuple[str, int]:
    """The URL's host and port, or RefusedEndpoint."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RefusedEndpoint(f"not a valid URL: {error}") from None
    if parts.scheme not in {"http", "https"}:
        raise RefusedEndpoint("only http and https endpoints are called")
    if parts.username is not None or parts.password is not None:
        raise RefusedEndpoint("credentials in the URL are not accepted; sign with the secret")
    host = parts.hostname
    if not host:
        raise RefusedEndpoint("the URL names no host")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allow_private)
    return host, port or (443 if parts.scheme == "https" else 80)


def check_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool
) -> None:
    if allow_private:
        return
    mapped = getattr(address, "ipv4_mapped", None)
    if not (mapped or address).is_global:
        raise RefusedEndpoint(
            f"{address} is not a public address (METERING_WEBHOOK_ALLOW_PRIVATE allows it)"
        )


async def check_resolved(url: str, allow_private: bool) -> None:
    """check_url, then every address the host resolves to."""
    host, port = check_url(url, allow_private)
    if allow_private:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RefusedEndpoint(f"{host} does not resolve: {error}") from None
    for *_, sockaddr in found:
        check_address(ipaddress.ip_address(sockaddr[0]), allow_private)
