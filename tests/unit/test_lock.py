"""requirements.lock pins what pyproject.toml pins, with hashes for every package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    name = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            name = match[1].lower().replace("_", "-")
            found[name] = (match[2], 0)
        elif name and "--hash=sha256:" in line:
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def test_every_pin_of_pyproject_is_locked_with_its_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    lock = locked()
    for pin in pins:
        name, version = pin.split("==")
        name = name.lower().replace("_", "-")
        assert lock.get(name, ("missing", 0))[0] == version, f"{name}: run `make lock`"
    assert all(hashes > 0 for _, hashes in lock.values())
