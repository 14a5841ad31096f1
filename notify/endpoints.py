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
    if not all(inner.is_global for inner in _within(address)):
        raise RefusedEndpoint(
            f"{address} is not a public address (METERING_WEBHOOK_ALLOW_PRIVATE allows it)"
        )


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address and any IPv4 address it carries (mapped, 6to4, NAT64)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None:
                found.append(inner)
        if address in NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


async def check_resolved(url: str, allow_private: bool) -> None:
    """check_url, then every address the host resolves to."""
    host, port = check_url(url, allow_private)
    if allow_private:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise RefusedEndpoint(f"{host} does not resolve: {error}") from None
    for *_, sockaddr in found:
        check_address(ipaddress.ip_address(sockaddr[0]), allow_private)
