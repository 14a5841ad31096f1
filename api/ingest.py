"""`POST /v1/events`: CloudEvents in, one at a time or in batches, onto their topics.

A batch is all or nothing: every event is checked first (the same rules as the workers,
judged against the time of receipt) and any bad one rejects the whole batch with 400 naming
each bad event's index, field and reason. Every event must also lie in the key's scope (its
role's kind of event, its sources and tenants, see `api.auth`): any that does not refuses the
whole batch with 403, in the same shape, before anything is written and before the 400 of
other bad events. 202 is answered only once the broker has acknowledged every write
(idempotent producer, acks=all); an unreachable broker is 503.

Both CloudEvents content modes of the HTTP binding are read: structured
(`application/cloudevents+json`, the body is the event) and binary (`ce-*` headers carry the
attributes, percent-encoded, and the body is `data`). A binary event is turned into the
structured form, judged by the same rules, and forwarded to Kafka as structured JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import HTTPException, Request

from api.auth import OPEN, Principal, refusals
from billing.plan import Plan
from projections.binding import CONTENT_TYPE, HTTP_PREFIX, header_bytes, is_binary, structured
from projections.decode import Rejected, admit
from runtime.clock import Clock, system_clock
from runtime.settings import Settings
from schemas.envelope import CloudEvent
from streams.kafka import new_producer

SINGLE = {"application/cloudevents+json", "application/json"}
BATCH = "application/cloudevents-batch+json"
# Media types of structured mode (one event or a batch); any other with `ce-specversion`
# is binary mode, as the HTTP binding decides.
STRUCTURED_PREFIX = "application/cloudevents"
ACK_TIMEOUT = 15.0  # seconds to wait for the broker's acknowledgement before answering 503
# Who offers events when no principal is named: a caller in this process (tests, benchmarks),
# never an HTTP request, whose route always passes the key's principal.
TRUSTED = Principal(OPEN)


class BatchRejected(Exception):
    """Bad events: the whole offer is refused, each problem with its index, field, reason."""

    def __init__(self, problems: list[tuple[int | None, str, str | None, str]]) -> None:
        super().__init__(f"{len(problems)} bad events")
        self.body = _errors(problems)


class OutOfScope(Exception):
    """Events the key may not post: the whole offer is refused (403), each with its index,
    the field that puts it out of scope, and why."""

    def __init__(self, problems: list[tuple[int, str, str]]) -> None:
        super().__init__(f"{len(problems)} events outside the key's scope")
        detail = "this key may not post some of these events; nothing was written"
        errors: list[tuple[int | None, str, str | None, str]] = [
            (index, "out_of_scope", field, why) for index, field, why in problems
        ]
        self.body = {"detail": detail} | _errors(errors)


class Ingestor:
    def __init__(self, settings: Settings, plan: Plan, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.plan = plan
        self.clock = clock  # "received": what "future" and "too late" are judged against
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        topics = settings.topics
        self.topics = {"usage": topics.usage, "licenses": topics.licenses, "system": topics.system}

    async def producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = new_producer(self.settings, linger_ms=2, request_timeout_ms=10_000)
                try:
                    await asyncio.wait_for(producer.start(), timeout=15)
                except (KafkaError, TimeoutError, OSError) as exc:
                    await producer.stop()
                    raise HTTPException(503, f"the broker is unreachable: {exc!r}") from None
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def events(self, request: Request) -> list[Any]:
        """The offered events, within the limits; raises 413, 415 or BatchRejected."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        attributes = binary_headers(request) if not media.startswith(STRUCTURED_PREFIX) else []
        if not attributes and media not in SINGLE and media != BATCH:
            raise HTTPException(
                415,
                f"send application/cloudevents+json, {BATCH} for a batch, or one event in "
                f"binary mode (ce-* headers); not {media!r}",
            )
        limit = self.settings.ingest_max_bytes
        extra = header_bytes(attributes)  # a binary event's attributes count towards its size
        too_large = f"the {'event (body and ce-* headers)' if attributes else 'body'} is over"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) + extra > limit:
            raise HTTPException(413, f"{too_large} {limit} bytes")
        body = await request.body()
        if len(body) + extra > limit:
            raise HTTPException(413, f"{too_large} {limit} bytes")
        if attributes:
            try:
                return [structured(attributes, body, prefix=HTTP_PREFIX)]
            except Rejected as rejected:
                raise BatchRejected(
                    [(0, rejected.reason, rejected.field, rejected.detail)]
                ) from None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BatchRejected([(None, "bad_json", None, f"not JSON: {exc}")]) from None
        if media != BATCH:
            return [parsed]
        if not isinstance(parsed, list) or not parsed:
            raise BatchRejected([(None, "bad_batch", None, "a batch is a non-empty JSON array")])
        if len(parsed) > self.settings.ingest_max_events:
            raise HTTPException(
                413, f"a batch holds at most {self.settings.ingest_max_events} events"
            )
        return parsed

    async def ingest(self, offered: list[Any], principal: Principal = TRUSTED) -> int:
        """Write the offered events as `principal` may; raises OutOfScope, BatchRejected."""
        received = self.clock()
        routed = []
        admitted: list[tuple[int, str, CloudEvent]] = []
        problems: list[tuple[int | None, str, str | None, str]] = []
        for index, obj in enumerate(offered):
            try:
                kind, event = admit(obj, received, self.plan)
            except Rejected as rejected:
                problems.append((index, rejected.reason, rejected.field, rejected.detail))
                continue
            admitted.append((index, kind, event))
            routed.append((self.topics[kind], event.subject, obj))
        # Scope before validity: whatever else is wrong, the key may not post these at all.
        if refused := refusals(principal, admitted):
            raise OutOfScope(refused)
        if problems:
            raise BatchRejected(problems)
        producer = await self.producer()

        async def send_all() -> None:
            sent = [
                await producer.send(topic, orjson.dumps(obj), key=subject.encode())
                for topic, subject, obj in routed
            ]
            await asyncio.gather(*sent)

        try:
            # aiokafka retries an absent broker without end; a producer deserves an answer.
            # A batch refused here may still land later: resending it is safe, since events
            # are deduplicated by (source, id).
            await asyncio.wait_for(send_all(), timeout=ACK_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            raise HTTPException(
                503, f"the broker did not acknowledge the events: {exc!r}"
            ) from None
        return len(routed)


def binary_headers(request: Request) -> list[tuple[str, bytes]]:
    """The `ce-*` and `content-type` headers of a binary-mode event (values as sent, so that
    a value that is not UTF-8 is refused by name); empty when the request is not one."""
    found = [
        (name.decode("latin-1").lower(), value)
        for name, value in request.headers.raw
        if name[:3].lower() == HTTP_PREFIX.encode() or name.lower() == CONTENT_TYPE.encode()
    ]
    return found if is_binary(found, HTTP_PREFIX) else []


def _errors(problems: list[tuple[int | None, str, str | None, str]]) -> dict[str, Any]:
    return {
        "errors": [
            {"index": index, "reason": reason, "field": field, "detail": detail[:500]}
            for index, reason, field, detail in problems
        ]
    }
