"""How long usage months stay open to events, as a partition's own log tells it.

An event is too late once it enters the log 90 days or more after its usage month ended
(`projections.plain`). A worker must remember each counted event's dedupe key until then, and
not one day longer, or its memory and disk grow with every event ever counted. Log times
alone cannot say when that is: a producer may set any timestamp it likes. Close markers can:
the system writes them itself (`metering close`, the automatic close), stamped when they were
requested. So each partition keeps its *horizon*, the latest request time among the close
markers it has folded, and:

- a usage event whose month's window ended `MARGIN` or more before its partition's horizon
  is too late, whatever its own log time says (a backdated timestamp, a copy that waited
  weeks to be moved); it never reaches the dedupe index;
- so once every partition a worker holds has such a horizon, the month's dedupe entries can
  go (`streams.seen.SeenIndex.prune`) without a duplicate ever being counted twice.

Both follow from the partition's log in its order, so a replay decides exactly the same.
Honest events never meet the first rule: they are too late by their own log time first.
"""

from __future__ import annotations

import datetime as dt

import orjson

from billing.plan import Plan
from projections.events import UsageRecorded
from projections.plain import EPOCH, PlainUsage, plain_decoder
from schemas.records import DeadLetter

# Leeway between the clocks of producers, brokers and whoever requested the close.
MARGIN = dt.timedelta(days=7)
_MARGIN_US = MARGIN // dt.timedelta(microseconds=1)


def forgotten(month: str, horizon_us: int, plan: Plan) -> bool:
    """Whether `month` is closed to events in a partition whose horizon is `horizon_us`
    (µs since the epoch; 0 before its first close marker)."""
    end = plain_decoder(plan).retention_end(month)
    return end is not None and end + _MARGIN_US <= horizon_us


def past_horizon(event: UsageRecorded | PlainUsage, horizon_us: int, plan: Plan) -> DeadLetter:
    """The dead letter of a usage event that `forgotten` turned away; its payload is the
    event as decoded (the fold no longer holds the raw bytes)."""
    position = event.position
    horizon = EPOCH + dt.timedelta(microseconds=horizon_us)
    spec = plan.catalog[event.service]
    payload = {
        "specversion": "1.0", "id": event.id, "source": event.source, "type": spec.event_type,
        "subject": event.tenant, "time": event.time.isoformat(),
        "data": {spec.field: event.amount},
    }  # fmt: skip
    return DeadLetter(
        tenant=event.tenant,
        id=f"{position.topic}/{position.partition}/{position.offset}",
        topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        reason="too_late",
        field="time",
        detail=(
            f"usage month {event.month} was past its retention window (month end + 90 days "
            f"+ {MARGIN.days} days) when its partition folded a close requested at "
            f"{horizon.isoformat()}"
        ),
        payload=orjson.dumps(payload).decode(),
    )
