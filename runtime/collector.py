"""Python's cycle collector, set for a process that makes many short-lived objects.

The worker and the projector make a handful of objects per record (a decoded event, its
strings and times, a Kafka record) and hold them until the batch is folded or written. With
the default thresholds (a young collection every 700 allocations) a batch's objects survive
a few collections and are promoted, so full collections keep running and walk every tenant's
state again: about a quarter of the worker's CPU in `bench/` runs. With a young generation of
50,000, a batch's objects are freed by reference counting before they are ever examined; cycles
(rare in this code) are still collected. `freeze` moves what exists (modules, the plan, the
restored state) out of the collector's sight for good.

`release_freed_memory` is the other half: glibc's allocator keeps what a process freed (a
fetch's records, RocksDB's compaction buffers) for reuse instead of returning it, so the
worker's resident memory kept rising by ~15 bytes per event for no state at all. Trimming the
heap every few seconds costs well under a millisecond.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from collections.abc import Callable

YOUNG = 50_000
TRIM_EVERY = 10.0  # seconds


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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


class HeapTrimmer:
    """`release_freed_memory` at most once per `every` seconds of the clock given."""

    def __init__(self, clock: Callable[[], float], every: float = TRIM_EVERY) -> None:
        self.clock, self.every = clock, every
        self.last = clock()

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return release_freed_memory()


def release_freed_memory() -> bool:
    """Return the heap's free pages to the operating system; False where the C library
    cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
