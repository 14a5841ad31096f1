"""Every list of the project's packages names the same packages: the import contracts, the
install, the type check, bandit and the image. A package left out of one of them is a layer
nobody checks, or an image that cannot import its own code."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def contract_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return set(config["importlinter"]["root_packages"].split())


def test_every_list_of_packages_names_the_same_ones() -> None:
    packages = contract_packages()
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    typed = set(pyproject["tool"]["mypy"]["packages"]) - {"bench"}
    bandit = re.search(r"bandit -q -c pyproject.toml -r ([a-z ]+)", (ROOT / "Makefile").read_text())
    assert bandit
    scanned = set(bandit.group(1).split()) - {"bench"}
    copied = set(re.findall(r"^COPY ([a-z]+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    for name, listed in [
        ("directories with __init__.py", on_disk), ("pyproject's packages", installed),
        ("mypy's packages", typed), ("bandit's paths", scanned), ("the Dockerfile", copied),
    ]:  # fmt: skip
        assert listed == packages, f"{name} differ from .importlinter: {listed ^ packages}"
