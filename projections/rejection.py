"""Why a record or an offered event is refused: a reason code, the field, a detail."""

from __future__ import annotations


class Rejected(Exception):
    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail
