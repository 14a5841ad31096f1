"""Commands that travel through the log: closing a month.

A close is written into every partition of every input topic. Each partition's order then
carries the barrier: the worker applies the close to a partition only once it has read the
marker from all input topics there, i.e. after every event written before the command.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import orjson

from runtime.settings import Settings
from schemas.records import CLOSE_REQUESTED, MonthClosed, MonthCloseRequested
from streams.kafka import partitions_of, producer, read_all


class CloseTimeout(TimeoutError):
    pass


async def request_close(settings: Settings, month: str, close_id: str, requested_by: str) -> int:
    """Write the close marker into every input partition; returns the partition count."""
    topics = settings.topics
    layout = await partitions_of(settings, *topics.inputs)
    count = sum(1 for tp in layout if tp.topic == topics.usage)
    command = MonthCloseRequested(
        close_id=close_id, month=month, requested_by=requested_by, partitions=count
    )
    envelope = {
        "specversion": "1.0",
        "id": close_id,
        "source": "metering/close",
        "type": CLOSE_REQUESTED,
        "subject": "*",
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "data": command.model_dump(mode="json"),
    }
    value = orjson.dumps(envelope)
    async with producer(settings) as client:
        sent = [
            await client.send(tp.topic, value, key=b"close", partition=tp.partition)
            for tp in layout
        ]
        await asyncio.gather(*sent)
    return count


async def wait_for_close(
    settings: Settings, close_id: str, partitions: int, wait_seconds: float
) -> list[MonthClosed]:
    """The acknowledgement of every partition, once all have applied the close."""
    deadline = time.monotonic() + wait_seconds
    while True:
        acks: dict[int, MonthClosed] = {}
        for record in await read_all(settings, settings.topics.closes):
            ack = MonthClosed.model_validate_json(record.value or b"{}")
            if ack.close_id == close_id:
                acks[ack.partition] = ack
        if len(acks) >= partitions:
            return [acks[p] for p in sorted(acks)]
        if time.monotonic() > deadline:
            raise CloseTimeout(
                f"close {close_id}: {len(acks)} of {partitions} partitions acknowledged "
                f"within {wait_seconds:.0f}s; is a worker running (`metering worker`), or is "
                "it still working through a backlog (wait longer with `--timeout`)?"
            )
        await asyncio.sleep(0.25)
