"""API keys: stored as SHA-256 hashes in the settings, compared in constant time, never logged.

Roles: `producer` may only ingest; `finance` may read everything; `tenant` may read its own
tenant only (another tenant's data answers 404, so its existence does not leak).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from metering.settings import ApiKey

OPEN = "open"  # no keys configured: a loopback-only API for the local stack


@dataclass(frozen=True)
class Principal:
    role: str
    tenant: str | None = None

    def may_read(self, tenant: str) -> bool:
        return self.role in {"finance", OPEN} or (self.role == "tenant" and self.tenant == tenant)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
    digest = key_hash(presented)
    found = None
    for key in keys:  # every hash is compared, so timing does not tell which one matched
        if hmac.compare_digest(digest, key.sha256):
            found = key
    if found is None:
        raise HTTPException(401, "unknown API key")
    return Principal(found.role, found.tenant)


def require(principal: Principal, *roles: str) -> None:
    if principal.role != OPEN and principal.role not in roles:
        raise HTTPException(403, f"a {' or '.join(roles)} key is needed here")


def require_tenant(principal: Principal, tenant: str) -> None:
    if not principal.may_read(tenant):
        raise HTTPException(404, f"no tenant {tenant!r}")
