"""The worker's dedupe index on disk, and the store's batched lookups through it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from projections.batch import BatchResult
from streams import seen
from streams.kafka import send_many
from streams.seen import SeenIndex, index_path
from streams.store import Store


def test_entries_are_facts_a_repeat_does_not_change(tmp_path: Path) -> None:
    index = SeenIndex(tmp_path / "seen")
    index.add([("t1\x1fcrm\x1fa", "2026-10", 5), ("t1\x1fcrm\x1fb", "2026-11", 6)])
    # claimed again after a restart, even under another month: the first claim stays
    index.add([("t1\x1fcrm\x1fa", "2026-10", 99), ("t1\x1fcrm\x1fa", "2026-11", 98)])
    assert index.get("t1\x1fcrm\x1fa") == 5 and index.get("nope") is None
    assert index.get_many(["t1\x1fcrm\x1fb", "nope", "t1\x1fcrm\x1fa"] * 400) == {
        "t1\x1fcrm\x1fa": 5,
        "t1\x1fcrm\x1fb": 6,
    }
    assert index.count == 2 and index.months == ["2026-10", "2026-11"]
    index.close()
    assert not (tmp_path / "seen").exists()


def test_a_month_is_pruned_whole_and_the_others_stay_exact(tmp_path: Path) -> None:
    index = SeenIndex(tmp_path / "seen")
    months = ["2026-08", "2026-09", "2026-10"]
    index.add((f"k{n}", months[n % 3], n) for n in range(30_000))
    assert index.prune(["2026-08", "2026-12"]) == 10_000
    assert index.months == ["2026-09", "2026-10"] and index.count == 20_000
    found = index.get_many(f"k{n}" for n in range(30_000))
    assert found == {f"k{n}": n for n in range(30_000) if n % 3}
    index.add([("k0", "2026-10", 7)])  # forgotten, so claimable again
    assert index.get("k0") == 7
    index.close()


def test_a_filter_that_fills_up_grows_and_misses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seen, "FIRST_CAPACITY", 1000)
    index = SeenIndex(tmp_path / "seen")
    for start in range(0, 20_000, 700):  # batches, as the worker adds them
        index.add((f"k{n}", "2026-10", n) for n in range(start, min(start + 700, 20_000)))
    assert index.get_many(f"k{n}" for n in range(20_000)) == {f"k{n}": n for n in range(20_000)}
    filters = index._filters["2026-10"]
    # 1,000 + 2,000 + 4,000 + 8,000 + 16,000: none holds more than it was made for.
    assert all(b.approx_items <= 1.1 * 1000 * 2**n for n, b in enumerate(filters.blooms))
    assert len(filters.blooms) == 5
    # Still few false positives: few keys that were never added would be read from disk.
    assert sum(f"other-{n}" in filters for n in range(10_000)) < 300
    index.close()


def test_a_batch_sees_its_prefetched_keys_and_what_it_claims(tmp_path: Path) -> None:
    store = Store(SeenIndex(tmp_path / "seen"))
    store.index.add([("old", "2026-10", 1)])
    store.prefetch(["old", "new"])
    assert store.seen("old") == 1 and store.seen("new") is None
    store.apply(BatchResult(seen={"new": (0, "2026-10", 7)}))
    assert store.seen("new") == 7  # the next batch of the same fetch must see the claim
    store.prefetch(["other"])
    assert store.seen("new") == 7  # not prefetched: asked of the index itself
    assert store.index.get("new") == 7


def test_index_files_of_dead_workers_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "worker"
    folder.mkdir()
    dead = folder / "app.999999999.seen"
    alive = folder / f"app.{os.getppid()}.seen"
    other = folder / "other.999999999.seen"
    older = folder / "app.999999998.seen.sqlite"  # as versions before the RocksDB index left it
    for path in (dead, alive, other):
        path.mkdir()
        (path / "CURRENT").write_text("")
    older.write_text("")
    assert index_path(tmp_path, "app") == folder / f"app.{os.getpid()}.seen"
    assert not dead.exists() and not older.exists() and alive.exists() and other.exists()


class RecordingBatch:
    """aiokafka's `BatchBuilder` as `send_many` uses it: full at `room` bytes; an empty
    batch takes any record, as aiokafka's does."""

    def __init__(self, room: int) -> None:
        self.room, self.records, self.closed = room, [], False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> Any:
        used = sum(len(v) for _, v in self.records)
        if self.closed or (self.records and used + len(value) > self.room):
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class RecordingProducer:
    """Collects what a flush sends, record by record and in batches, in order; the real
    producer is exercised by every stack test."""

    def __init__(self, batch_room: int = 1 << 20) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.batches: list[int] = []  # records per batch sent
        self.batch_room = batch_room

    @staticmethod
    def _done() -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> Any:
        self.sent.append((topic, key, value, partition))
        return self._done()

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(self.batch_room)

    async def send_batch(self, batch: RecordingBatch, topic: str, *, partition: int) -> Any:
        self.sent.extend((topic, key, value, partition) for key, value in batch.records)
        self.batches.append(batch.record_count())
        return self._done()


async def test_send_many_fills_batches_in_order_and_gives_a_large_record_its_own() -> None:
    producer = RecordingProducer(batch_room=30)
    records = [(f"k{n}".encode(), b"x" * 10) for n in range(7)]
    records.insert(4, (b"big", b"y" * 100))  # larger than a batch: alone in one
    futures = await send_many(producer, "t", 2, records)  # type: ignore[arg-type]
    assert [(k, v) for _, k, v, _ in producer.sent] == records  # nothing lost, order kept
    assert {(t, p) for t, _, _, p in producer.sent} == {("t", 2)}
    assert producer.batches == [3, 1, 1, 3] and len(futures) == 4


async def test_a_busy_flush_splits_dedupe_entries_below_the_message_limit(tmp_path: Path) -> None:
    store = Store(SeenIndex(tmp_path / "seen"))
    claims = {
        f"tenant-{n % 97}\x1fcrm/chat\x1f{'x' * 40}-{n}": (3, "2026-10", n) for n in range(20_001)
    }
    store.apply(BatchResult(seen=claims))
    producer = RecordingProducer()
    await store.flush(producer, "app")
    records = [
        (key, value) for topic, key, value, p in producer.sent if topic == "app-seen-changelog"
    ]
    assert all(p == 3 for _, _, _, p in producer.sent)
    assert len(records) == 6 and all(len(value) < 1_000_000 for _, value in records)
    assert len({key for key, _ in records}) == 6
    entries = [entry for _, value in records for entry in orjson.loads(value)]
    assert sorted(e[0] for e in entries) == sorted(claims)
