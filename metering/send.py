"""`metering send FILE`: publish a JSONL file of CloudEvents, each to the topic of its type.

Routing needs only the `type`; validating the rest is the workers' job, which dead-letters what
they reject. A line that cannot be routed goes to `dead-letters` here, with its line number.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runtime.settings import Settings
from schemas.records import DeadLetter
from streams.kafka import partitions_of, producer

MAX_LINE = 1 << 20  # the broker's default message size limit


@dataclass
class SendReport:
    sent: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def route(settings: Settings, event: Any) -> str:
    """The topic for a parsed line; raises ValueError naming what is wrong."""
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    type_ = event.get("type")
    if not isinstance(type_, str) or not type_:
        raise ValueError("missing field 'type'")
    topics = settings.topics
    for prefix, topic in (
        ("metering.", topics.usage),
        ("licensing.", topics.licenses),
        ("system.", topics.system),
    ):
        if type_.startswith(prefix) and not type_.startswith("metering.control."):
            return topic
    raise ValueError(f"type {type_!r} has no topic (metering.*, licensing.*, system.*)")


async def send_file(
    settings: Settings, path: Path, progress: Callable[[int], None] | None = None
) -> SendReport:
    report = SendReport()
    topics = settings.topics
    # Fail fast and clearly: a producer would retry a missing topic for a minute.
    await partitions_of(settings, topics.usage, topics.licenses, topics.system, topics.dead_letters)
    pending: list[asyncio.Future[Any]] = []
    async with producer(settings, linger_ms=20, max_batch_size=256 * 1024) as client:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if progress is not None:
                    progress(len(raw))
                if not line:
                    continue
                try:
                    if len(line) > MAX_LINE:
                        raise ValueError(f"line is {len(line)} bytes, over {MAX_LINE}")
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ValueError(f"not JSON: {exc}") from None
                    topic = route(settings, event)
                except ValueError as exc:
                    report.rejected.append((number, str(exc)))
                    letter = DeadLetter(
                        id=f"send/{path.name}/{number}",
                        topic="send",
                        partition=None,
                        offset=None,
                        reason="unroutable",
                        field="type",
                        detail=f"{path}:{number}: {exc}"[:1000],
                        payload=line[:2048].decode("utf-8", errors="backslashreplace"),
                    )
                    pending.append(
                        await client.send(
                            settings.topics.dead_letters,
                            letter.model_dump_json().encode(),
                            key=b"send",
                        )
                    )
                    continue
                subject = event.get("subject")
                key = subject.encode() if isinstance(subject, str) else None
                pending.append(await client.send(topic, line, key=key))
                report.sent[topic] += 1
                if len(pending) >= 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
    return report
