"""Who may read `/metrics`: with API keys configured, only a key of role `metrics`, presented
as `Authorization: Bearer <key>` (what a Prometheus scrape config's `authorization` sends).
Without keys (the local stack on loopback) every `/metrics` is open, as the API is.

A finance key is refused here too, though it may read the same figures elsewhere: one job
per key, so the key in Prometheus's credentials file cannot also unlock invoices and SQL, and
no one is tempted to put a finance key there.

No web framework here, so the worker's WSGI server and the read model's FastAPI route share
one rule; `api.auth` may use `key_hash` and `matching_key` as well (api/ may import
observability/, never the reverse)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from http import HTTPStatus

from runtime.settings import ApiKey

SCRAPERS = frozenset({"metrics"})
# RFC 6750: a 401 tells the client which scheme to use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="metrics"'}
REFUSALS = {
    HTTPStatus.UNAUTHORIZED: "a metrics key is required (Authorization: Bearer <key>)",
    HTTPStatus.FORBIDDEN: "only a key of role metrics may read /metrics",
}


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def matching_key(keys: Sequence[ApiKey], presented: str) -> ApiKey | None:
    digest = key_hash(presented)
    found = None
    for key in keys:  # every hash is compared, so timing does not tell which one matched
        if hmac.compare_digest(digest, key.sha256):
            found = key
    return found


def scrape_status(keys: Sequence[ApiKey], authorization: str | None) -> HTTPStatus:
    """OK: may scrape; UNAUTHORIZED: no key or an unknown one; FORBIDDEN: another role's."""
    if not keys:
        return HTTPStatus.OK
    presented = bearer(authorization)
    found = None if presented is None else matching_key(keys, presented)
    if found is None:
        return HTTPStatus.UNAUTHORIZED
    return HTTPStatus.OK if found.role in SCRAPERS else HTTPStatus.FORBIDDEN
