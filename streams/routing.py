"""Where each record is folded: its tenant's partition of the usage log.

A tenant's state lives in one partition, so that one partition's order decides everything
about the tenant (usage, seats, closes), live and on replay alike. That partition is the one
Kafka's default partitioner (Java, aiokafka, `metering send`, the HTTP ingest) picks for the
tenant id as key: `murmur2(tenant) mod partitions`. Producers that partition otherwise
(librdkafka's CRC32, no key, a partition of their choice) are welcome; the worker moves each
of their records to its tenant's partition, as Kafka Streams' repartition topics do, and sends
every close marker after them, so a close still follows every event written before it.

| record (where the worker reads it) | what happens |
|---|---|
| usage or licence event, tenant's partition of the usage log | folded |
| usage or licence event, elsewhere (licence topic too) | copied to the tenant's (`moved`) |
| close marker, usage log as written | folded, and copied to every other partition |
| close marker, licence topic | copied to every partition of the usage log |
| a copy (it carries `metering-forwarded-from`) | folded where it is |
| unreadable, no tenant | dead-lettered where it is |

A copy names its original (`topic/partition/offset`) and the original's log-append time, so
the time rules judge it as they judged the original, and a second copy of the same original
(a worker killed before its commit, a new group replaying) is recognised and not counted.
The partition count of the usage log must not change while the group's state is kept.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from enum import Enum

from aiokafka.partitioner import murmur2

from projections.events import CloseMarkerSeen, Decoded, Position
from schemas.records import DeadLetter

FORWARDED_FROM = "metering-forwarded-from"
ORIGIN_LOG_TIME = "metering-origin-log-time"  # the original's log-append time, epoch ms


class Route(Enum):
    FOLD = "fold"  # here
    MOVE = "move"  # to the tenant's partition
    FOLD_AND_SPREAD = "fold_and_spread"  # a close marker: here, and to every other partition
    SPREAD = "spread"  # a close marker on the licence topic: to every partition


@functools.lru_cache(maxsize=65_536)
def home(tenant: str, partitions: int) -> int:
    """The partition of the usage log that holds `tenant`'s state: the one the default
    partitioner of Kafka's Java client (and aiokafka's) picks for the key `tenant`.
    Remembered: aiokafka's murmur2 is pure Python, and every usage record asks."""
    hashed: int = murmur2(tenant.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def route(item: Decoded | DeadLetter, in_usage_log: bool, partitions: int) -> Route:
    """What the worker does with a decoded record (pure: it only reads the record)."""
    if isinstance(item, DeadLetter):
        return Route.FOLD
    if isinstance(item, CloseMarkerSeen):
        if not in_usage_log:
            return Route.SPREAD
        return Route.FOLD if item.position.origin else Route.FOLD_AND_SPREAD
    if item.position.origin is not None:
        return Route.FOLD  # a copy is where it belongs
    if in_usage_log and home(item.tenant, partitions) == item.position.partition:
        return Route.FOLD
    return Route.MOVE


def copy_headers(
    headers: Sequence[tuple[str, bytes]], topic: str, partition: int, offset: int, log_ms: int
) -> list[tuple[str, bytes]]:
    """The headers of a copy: the original's (binary-mode attributes travel there) and where
    and when the original entered the log."""
    kept = [(k, v) for k, v in headers if k not in (FORWARDED_FROM, ORIGIN_LOG_TIME)]
    return [
        *kept,
        (FORWARDED_FROM, f"{topic}/{partition}/{offset}".encode()),
        (ORIGIN_LOG_TIME, str(log_ms).encode()),
    ]


def position(
    topic: str, partition: int, offset: int, log_ms: int, headers: Sequence[tuple[str, bytes]]
) -> dict[str, object]:
    """A record's `Position` fields; a copy's name its original and take its log time."""
    origin = origin_offset = None
    for name, value in headers:
        if name == FORWARDED_FROM and value:
            where, _, at = bytes(value).decode("ascii", "replace").rpartition("/")
            if where and at.isdigit():
                origin, origin_offset = where, int(at)
        elif name == ORIGIN_LOG_TIME and bytes(value).isdigit():
            log_ms = int(bytes(value))
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "log_time": dt.datetime.fromtimestamp(log_ms / 1000, dt.UTC),
        "origin": origin,
        "origin_offset": origin_offset,
    }


__all__ = ["Position", "Route", "copy_headers", "home", "position", "route"]
