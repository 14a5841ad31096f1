"""The worker's memory housekeeping: freed heap goes back to the system, on a rate limit."""

from __future__ import annotations

import sys

import pytest

from runtime import collector
from runtime.collector import HeapTrimmer, release_freed_memory


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_goes_back_to_the_system() -> None:
    # Chunks above glibc's mmap threshold would go back on their own; these do not.
    held = [bytearray(100_000) for _ in range(2_000)]
    keep = held[-1]  # the top of the heap stays in use, so glibc cannot just shrink it
    del held
    before = _resident_mib()
    assert release_freed_memory() is True
    assert before - _resident_mib() > 100  # of the ~190 MiB freed
    assert keep


def test_the_trimmer_trims_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(collector, "release_freed_memory", lambda: calls.append(1) or True)
    now = [100.0]
    trim = HeapTrimmer(lambda: now[0], every=10.0)
    assert trim() is False  # just started
    now[0] = 109.9
    assert trim() is False
    now[0] = 110.0
    assert trim() is True
    now[0] = 115.0
    assert trim() is False
    now[0] = 120.0
    assert trim() is True
    assert len(calls) == 2
