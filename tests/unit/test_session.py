"""The `/ui` session: signed, expiring, naming a configured key without holding it, and ended
by removing the key; CSRF tokens bound to what they were issued for."""

from __future__ import annotations

import datetime as dt
import json
import zlib

import pytest
from itsdangerous import URLSafeSerializer
from itsdangerous.encoding import base64_decode
from pydantic import SecretStr

from api.auth import Principal, key_hash
from observability.access import matching_key
from runtime.settings import ApiKey
from web.session import Sessions

KEY = "tenant-key-5b1e0c"
FINANCE_KEY = "finance-key-0d9a44"
ACME = ApiKey(role="tenant", tenant="acme", sha256=key_hash(KEY))
FINANCE = ApiKey(role="finance", sha256=key_hash(FINANCE_KEY))
SECRET = SecretStr("a-test-session-secret-of-some-length")
TTL = dt.timedelta(hours=8)
START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


def sessions(keys: list[ApiKey], clock: Clock, secret: SecretStr | None = SECRET) -> Sessions:
    return Sessions(keys, secret, TTL, clock)


def decoded(cookie: str) -> str:
    """What anyone holding the cookie can read: itsdangerous signs (and may compress), it does
    not encrypt."""
    compressed = cookie.startswith(".")
    raw = base64_decode(cookie.lstrip(".").split(".")[0])
    return (zlib.decompress(raw) if compressed else raw).decode()


def test_a_session_names_its_key_and_tenant_and_lasts_the_ttl() -> None:
    clock = Clock()
    signer = sessions([FINANCE, ACME], clock)
    cookie = signer.issue(ACME)
    session = signer.load(cookie)
    assert session is not None and session.principal == Principal("tenant", "acme")
    assert session.expires - session.issued == TTL.total_seconds()
    clock.now = START + TTL - dt.timedelta(seconds=1)
    assert signer.load(cookie) is not None
    clock.now = START + TTL
    assert signer.load(cookie) is None


def test_the_cookie_holds_neither_the_key_nor_its_sha256() -> None:
    signer = sessions([ACME], Clock())
    cookie = signer.issue(ACME)
    for readable in (cookie, decoded(cookie)):
        assert KEY not in readable
        assert ACME.sha256 not in readable
        assert ACME.sha256[:16] not in readable
    assert signer.key_id(ACME) in decoded(cookie)  # an HMAC of the hash, with the secret


def test_a_tampered_or_foreign_cookie_is_no_session() -> None:
    clock = Clock()
    signer = sessions([FINANCE, ACME], clock)
    cookie = signer.issue(ACME)
    signature = cookie.rsplit(".", 1)[1]
    payload = json.loads(decoded(cookie))

    def forged(**changes: object) -> str:
        return URLSafeSerializer("any").dump_payload({**payload, **changes}).decode()

    # Only the signature stands between a reader and a longer session, or a finance one.
    clock.now = START + TTL
    assert signer.load(f"{forged(exp=payload['exp'] + 86400)}.{signature}") is None
    clock.now = START
    assert signer.load(f"{forged(r='finance', t=None)}.{signature}") is None
    assert signer.load(f"{forged()}.{signature}") is not None  # the same payload re-encoded
    assert signer.load(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert signer.load(cookie.rsplit(".", 1)[0]) is None
    assert signer.load("") is None and signer.load(None) is None
    assert signer.load("not a cookie at all") is None
    other = sessions([FINANCE, ACME], clock, SecretStr("another-deployment-secret"))
    assert other.load(cookie) is None


def test_removing_the_key_ends_its_sessions() -> None:
    clock = Clock()
    cookie = sessions([FINANCE, ACME], clock).issue(ACME)
    assert sessions([FINANCE, ACME], clock).load(cookie) is not None  # a restart, same secret
    assert sessions([FINANCE], clock).load(cookie) is None
    # The same hash now configured for another tenant is not the key the session was for.
    moved = ApiKey(role="tenant", tenant="beta", sha256=ACME.sha256)
    assert sessions([moved], clock).load(cookie) is None


def test_without_a_configured_secret_sessions_end_with_the_process() -> None:
    clock = Clock()
    first = sessions([ACME], clock, secret=None)
    cookie = first.issue(ACME)
    assert first.load(cookie) is not None
    assert sessions([ACME], clock, secret=None).load(cookie) is None


def test_csrf_tokens_are_bound_signed_and_expire() -> None:
    clock = Clock()
    signer = sessions([ACME], clock)
    token = signer.csrf_token("binding-one-0123456789")
    assert signer.csrf_valid(token, "binding-one-0123456789")
    assert not signer.csrf_valid(token, "binding-two-0123456789")
    assert not signer.csrf_valid(token, None)
    assert not signer.csrf_valid(None, "binding-one-0123456789")
    assert not signer.csrf_valid(token + "x", "binding-one-0123456789")
    # A session cookie is not a CSRF token, though both are signed with the same secret.
    assert not signer.csrf_valid(signer.issue(ACME), "binding-one-0123456789")
    clock.now = START + TTL
    assert not signer.csrf_valid(token, "binding-one-0123456789")


@pytest.mark.parametrize(
    ("presented", "expected"), [(KEY, ACME), (FINANCE_KEY, FINANCE), ("nope", None)]
)
def test_matching_key(presented: str, expected: ApiKey | None) -> None:
    assert matching_key([FINANCE, ACME], presented) == expected
