"""When a delivery is tried again, and when it is given up: pure, over integer microseconds.

Retries back off exponentially (5 s, 10 s, 20 s, ... at most an hour apart), each delay
scaled by a jitter in [0.5, 1) so that endpoints that fail together are not all retried
together; the last try is 24 hours after the delivery was planned, and if it fails too the
delivery is marked failed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SECOND = 1_000_000
FIRST_DELAY = 5 * SECOND
LONGEST_DELAY = 3600 * SECOND
GIVE_UP_AFTER = 24 * 3600 * SECOND

Status = Literal["pending", "delivered", "failed"]


class Delivery(BaseModel):
    """One notice on its way to one subscription: the notifier's outbox entry."""

    model_config = ConfigDict(frozen=True)

    subscription: str
    webhook_id: str
    event_type: str
    tenant: str | None
    body: str
    created: int  # µs since the epoch: when it was planned
    attempts: int = 0
    next_try: int = 0  # µs; due at or after this
    status: Status = "pending"

    @property
    def key(self) -> str:
        return delivery_key(self.subscription, self.webhook_id)

    def due(self, now: int) -> bool:
        return self.status == "pending" and self.next_try <= now


def delivery_key(subscription: str, webhook_id: str) -> str:
    return f"{subscription}/{webhook_id}"


def retry_delay(attempt: int, jitter: float) -> int:
    """The wait after failed attempt number `attempt` (from 1); `jitter` in [0, 1)."""
    base = min(LONGEST_DELAY, FIRST_DELAY << min(attempt - 1, 30))
    return int(base * (0.5 + jitter / 2))


def after_attempt(delivery: Delivery, ok: bool, now: int, jitter: float) -> Delivery:
    """The delivery after an attempt at `now` that succeeded (`ok`) or not."""
    attempts = delivery.attempts + 1
    if ok:
        return delivery.model_copy(update={"attempts": attempts, "status": "delivered"})
    if now - delivery.created >= GIVE_UP_AFTER:
        return delivery.model_copy(update={"attempts": attempts, "status": "failed"})
    # The last try falls at 24 hours exactly, whatever the backoff would say.
    next_try = min(now + retry_delay(attempts, jitter), delivery.created + GIVE_UP_AFTER)
    return delivery.model_copy(update={"attempts": attempts, "next_try": next_try})
