"""Reading one of the project's TOML files (the services table, the plan) with the reason it
cannot be used, for the caller to report with the file's own error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class Unreadable(ValueError):
    """The file cannot be read or is not TOML; the message says which."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror}") from None
    return loads_toml(raw)


def loads_toml(raw: bytes | str) -> dict[str, Any]:
    """A file's text (sent rather than read, e.g. over HTTP) as TOML."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Unreadable(f"not valid TOML: {exc}") from None
