"""Each subscription's signing secret, derived from the deployment's signing key and the
subscription's id: the API shows it once when the subscription is made, the notifier signs
with it, and no topic, table or log ever holds it.

The key is `METERING_WEBHOOK_SIGNING_KEY`; unset, a random one is kept in
`<data dir>/webhook-signing.key` (mode 0600), made by whichever process needs it first. The
API and the notifier must share it (the local stack shares the data dir)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "webhook-signing.key"
PREFIX = "whsec_"


def signing_key(configured: str | None, data_dir: Path) -> bytes:
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked into place: of two processes
        # starting at once, one links and both read its key, never a half-written file.
        draft = data_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no signing key (at least 32 characters)")
    return key.encode()


def subscription_secret(key: bytes, subscription: str) -> str:
    """The Standard Webhooks secret (`whsec_` + base64 of 32 bytes) of one subscription."""
    raw = hmac.new(key, b"webhook-secret\x1f" + subscription.encode(), hashlib.sha256).digest()
    return PREFIX + base64.b64encode(raw).decode()
