"""Request body limits, enforced before anything reads a body (issue 14, item 3)."""

from __future__ import annotations

from fastapi import FastAPI

from metering.settings import Settings


def install_body_limits(app: FastAPI, settings: Settings) -> None:
    """Placeholder: the outermost middleware that refuses oversized bodies with 413."""
