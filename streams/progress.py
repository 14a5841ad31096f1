"""How far the workers have come: queries wait until they have processed everything written
to the input topics before the call."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from metering.settings import Settings
from streams.kafka import committed_offsets, end_offsets


class NotCaughtUp(TimeoutError):
    pass


async def wait_for_workers(settings: Settings, wait_seconds: float) -> None:
    ends = await end_offsets(settings, settings.topics.inputs)
    wanted = [tp for tp, end in ends.items() if end > 0]
    deadline = time.monotonic() + wait_seconds
    while True:
        committed = await committed_offsets(settings, settings.app_id, wanted)
        behind = {tp: ends[tp] - committed.get(tp, 0) for tp in wanted}
        behind = {tp: n for tp, n in behind.items() if n > 0}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise NotCaughtUp(
                f"the workers ({settings.app_id}) are still {sum(behind.values())} records "
                f"behind after {wait_seconds:.0f}s; is `metering worker` running?"
            )
        await asyncio.sleep(0.1)


def behind(stored: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
    return sum(max(0, end - stored.get(tp, 0)) for tp, end in ends.items())
