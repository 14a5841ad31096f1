"""API keys: stored as SHA-256 hashes in the settings, compared in constant time, never logged.

Roles: `producer` posts usage events, `licensing` licence snapshots and registrations,
`operations` system events; a posting key may be limited to `sources` and `tenants`.
`finance` reads everything; `tenant` reads its own tenant only (another tenant's data answers
404, so its existence does not leak); `metrics` scrapes `/metrics` and nothing else. A key
outside its role answers 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from observability.access import key_hash as key_hash  # re-exported: what a key is stored as
from observability.access import matching_key
from runtime.settings import ApiKey
from schemas.envelope import CloudEvent

OPEN = "open"  # no keys configured: a loopback-only API for the local stack

# What each posting role may post: the kind of topic its events go to (as
# `projections.decode.admit` names it). A product service holds a producer key, so it can
# never change seats, which decide a tenant's band and so its bill.
POSTS = {"producer": "usage", "licensing": "licenses", "operations": "system"}
POSTERS = tuple(POSTS)
_KIND_NAMES = {
    "usage": "usage events",
    "licenses": "licence snapshots and tenant registrations",
    "system": "system events",
}
_POSTER_OF = {kind: role for role, kind in POSTS.items()}


@dataclass(frozen=True)
class Principal:
    role: str
    tenant: str | None = None
    # A posting key's limits on the `source` and `subject` (tenant) of what it posts; None: any.
    sources: frozenset[str] | None = None
    tenants: frozenset[str] | None = None

    def may_read(self, tenant: str) -> bool:
        return self.role in {"finance", OPEN} or (self.role == "tenant" and self.tenant == tenant)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def authenticate(keys: list[ApiKey], presented: str | None) -> Principal:
    if not keys:
        return Principal(OPEN)
    if presented is None:
        raise HTTPException(401, "an API key is required (Authorization: Bearer <key>)")
    found = matching_key(keys, presented)
    if found is None:
        raise HTTPException(401, "unknown API key")
    return Principal(
        found.role,
        found.tenant,
        sources=None if found.sources is None else frozenset(found.sources),
        tenants=None if found.tenants is None else frozenset(found.tenants),
    )


def require(principal: Principal, *roles: str) -> None:
    if principal.role != OPEN and principal.role not in roles:
        raise HTTPException(403, f"a {' or '.join(roles)} key is needed here")


def require_tenant(principal: Principal, tenant: str) -> None:
    # Only a tenant key asking for another tenant is told "no such tenant"; a key that reads
    # no tenant at all (producer, metrics, ...) is refused as such, which leaks nothing.
    require(principal, "finance", "tenant")
    if not principal.may_read(tenant):
        raise HTTPException(404, f"no tenant {tenant!r}")


def out_of_scope(principal: Principal, kind: str, event: CloudEvent) -> list[tuple[str, str]]:
    """(field, why) for each way the key may not post `event`, which goes to the topic of
    `kind`; empty when it may. The role decides the kinds, the limits the source and tenant."""
    role = principal.role
    if role == OPEN:
        return []
    if POSTS.get(role) != kind:
        poster = _POSTER_OF.get(kind)
        hint = f" ({_KIND_NAMES[kind]} take a {poster} key)" if poster else ""
        return [("type", f"a {role} key may not post {event.type}{hint}")]
    found = []
    if principal.sources is not None and event.source not in principal.sources:
        found.append(("source", f"this {role} key may not post as source {event.source!r}"))
    if principal.tenants is not None and event.subject not in principal.tenants:
        found.append(("subject", f"this {role} key may not post for tenant {event.subject!r}"))
    return found


def refusals(
    principal: Principal, admitted: Iterable[tuple[int, str, CloudEvent]]
) -> list[tuple[int, str, str]]:
    """(index, field, why) of every event of a batch outside the key's scope; each event is
    given as (index in the batch, kind of topic, the event)."""
    return [
        (index, field, why)
        for index, kind, event in admitted
        for field, why in out_of_scope(principal, kind, event)
    ]
