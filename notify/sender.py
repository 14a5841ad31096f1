"""One attempt at delivering a webhook, as Standard Webhooks describes it: the body as
signed, `webhook-id` (the notice's deterministic id), `webhook-timestamp` (the attempt's
time, in seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 with the subscription's
secret). A 2xx answer delivers; anything else, a redirect (never followed: it could lead
anywhere), a timeout or no connection is tried again later. Connections are kept alive
between webhooks to the same endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import httpx
from standardwebhooks.webhooks import Webhook

from notify.endpoints import RefusedEndpoint, check_resolved
from notify.schedule import Delivery

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
TOTAL = 15.0  # seconds for a whole attempt: httpx's read timeout is per read
DRAIN = 64 << 10  # bytes of an answer read at most
USER_AGENT = "metering-notifier/1"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False  # the endpoint is not one the notifier calls: no retry helps


async def attempt(
    client: httpx.AsyncClient,
    url: str,
    delivery: Delivery,
    secret: str,
    now: dt.datetime,
    allow_private: bool,
) -> Outcome:
    try:
        await check_resolved(url, allow_private)
    except RefusedEndpoint as refused:
        return Outcome(False, error=str(refused), refused=True)
    signature = Webhook(secret).sign(delivery.webhook_id, now, delivery.body)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    try:
        async with (
            asyncio.timeout(TOTAL),
            client.stream(
                "POST", url, content=delivery.body.encode(), headers=headers, timeout=TIMEOUT
            ) as response,
        ):
            status = response.status_code
            # The answer's body is never used: read (a little of it) only so that the
            # connection can serve the next webhook; a long body is cut off with it.
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > DRAIN:
                    break
    except (httpx.TimeoutException, TimeoutError):
        return Outcome(False, error="timed out")
    except httpx.HTTPError as error:
        return Outcome(False, error=f"{type(error).__name__}: {error}"[:500])
    if 200 <= status < 300:
        return Outcome(True, status)
    if 300 <= status < 400:
        return Outcome(False, status, "a redirect; not followed")
    return Outcome(False, status)
