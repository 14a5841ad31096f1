"""Python's cycle collector, set for a process that makes many short-lived objects.

The worker and the projector make a handful of objects per record (a decoded event, its
strings and times, a Kafka record) and hold them until the batch is folded or written. With
the default thresholds (a young collection every 700 allocations) a batch's objects survive
a few collections and are promoted, so full collections keep running and walk every tenant's
state again: about a quarter of the worker's CPU in `bench/` runs. With a young generation of
50,000, a batch's objects are freed by reference counting before they are ever examined; cycles
(rare in this code) are still collected. `freeze` moves what exists (modules, the plan, the
restored state) out of the collector's sight for good.
"""

from __future__ import annotations

import gc

YOUNG = 50_000


def tune_collector(young: int = YOUNG) -> None:
    """Set the thresholds for throughput; call once at process start."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


def freeze_long_lived() -> None:
    """Exempt every object alive now from later collections (a restored state, a loaded
    plan): they live until the next rebalance, and walking them is waste. What an earlier
    call froze is thawed and collected first, so that a cycle alive then (a finished
    client, a replaced state) is freed now instead of never."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
