"""Security headers on every response (issue 14, item 6)."""

from __future__ import annotations

from fastapi import FastAPI

from metering.settings import Settings


def install_security_headers(app: FastAPI, settings: Settings) -> None:
    """Placeholder: CSP, frame-ancestors, nosniff and Referrer-Policy on every response."""
