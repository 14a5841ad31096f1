"""Signed, expiring `/ui` sessions and the CSRF tokens of the page's forms.

The session cookie names a configured key without holding it: it carries an identifier
derived with HMAC from the key's stored SHA-256 and the server secret, the role and tenant,
when it was issued and when it ends, and a nonce its CSRF tokens are bound to. It is signed
(itsdangerous), not encrypted, so nothing in it may help a reader: the SHA-256 itself would
let anyone who sees a cookie test guesses of the key offline, the HMAC identifier does not.
Every request looks the identifier up among the keys configured now, so removing a key from
`METERING_API_KEYS` ends its sessions at once, and a new secret (or a restart without
`METERING_SESSION_SECRET`) ends them all.

Pure apart from the clock and the random source: no request, no cookie handling.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import SecretStr

from api.auth import Principal
from runtime.clock import Clock, system_clock
from runtime.settings import ApiKey

_SESSION_SALT = "metering.ui.session"
_CSRF_SALT = "metering.ui.csrf"
_KEY_ID_CONTEXT = b"metering.ui.key-id\x00"
# Replicas behind one address share the secret but not a clock: a cookie issued by one whose
# clock runs a little ahead must still be taken by the others.
_SKEW = 60


@dataclass(frozen=True)
class Session:
    key_id: str
    role: str
    tenant: str | None
    issued: int  # seconds since the epoch
    expires: int
    nonce: str

    @property
    def principal(self) -> Principal:
        return Principal(self.role, self.tenant)


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


class Sessions:
    """Issues and checks session cookies and CSRF tokens for one set of configured keys."""

    def __init__(
        self,
        keys: list[ApiKey],
        secret: SecretStr | None,
        ttl: dt.timedelta,
        clock: Clock = system_clock,
    ) -> None:
        # No configured secret: one per process, so every session ends with the process.
        raw = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        self._secret = raw
        self._keys = keys
        self.ttl = ttl
        self._clock = clock
        self._sessions = URLSafeSerializer(raw, salt=_SESSION_SALT)
        self._tokens = URLSafeSerializer(raw, salt=_CSRF_SALT)

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def key_id(self, key: ApiKey) -> str:
        mac = hmac.new(self._secret, _KEY_ID_CONTEXT + key.sha256.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def issue(self, key: ApiKey) -> str:
        """The cookie value of a new session for a key that was just presented and matched."""
        now = self._now()
        payload = {
            "k": self.key_id(key), "r": key.role, "t": key.tenant,
            "iat": now, "exp": now + int(self.ttl.total_seconds()), "n": new_nonce(),
        }  # fmt: skip
        return self._sessions.dumps(payload)

    def load(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, if its signature is ours, it has not expired, and its
        key is still configured with the same role and tenant; otherwise None."""
        if not cookie:
            return None
        try:
            payload = self._sessions.loads(cookie)
            session = Session(
                key_id=str(payload["k"]), role=str(payload["r"]),
                tenant=None if payload["t"] is None else str(payload["t"]),
                issued=int(payload["iat"]), expires=int(payload["exp"]), nonce=str(payload["n"]),
            )  # fmt: skip
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if not session.issued - _SKEW <= self._now() < session.expires:
            return None
        key = self._configured(session.key_id)
        if key is None or (key.role, key.tenant) != (session.role, session.tenant):
            return None
        return session

    def _configured(self, key_id: str) -> ApiKey | None:
        found = None
        for key in self._keys:  # as in matching_key: no early exit
            if hmac.compare_digest(self.key_id(key), key_id):
                found = key
        return found

    def csrf_token(self, binding: str) -> str:
        """A token for a form, valid for the session TTL, bound to a session's nonce (signed
        in) or to the pre-session cookie's (the sign-in form)."""
        return self._tokens.dumps({"b": binding, "iat": self._now()})

    def csrf_valid(self, token: str | None, binding: str | None) -> bool:
        if not token or not binding:
            return False
        try:
            payload: Any = self._tokens.loads(token)
            bound, issued = str(payload["b"]), int(payload["iat"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return False
        fresh = issued - _SKEW <= self._now() < issued + int(self.ttl.total_seconds())
        return fresh and hmac.compare_digest(bound.encode(), binding.encode())
