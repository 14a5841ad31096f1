"""The worker's dedupe entries on local disk, so that its memory does not grow with events.

Every usage event counted leaves an entry (dedupe key -> offset of the record that claimed
it) for as long as a duplicate may still be counted: until its usage month is past the
retention window in every partition the worker holds (`projections.horizon`); then `prune`
drops the month whole.

- The entries live in RocksDB (`rocksdict`), keyed `month \\x1f dedupe key`: an LSM tree
  appends a batch of keys at a fraction of a B-tree's cost once the index outgrows memory
  (SQLite took 6 µs per key at 2M keys, RocksDB 1.6 µs), and a month is one key range to
  delete.
- In front of each month sit Bloom filters (`rbloom`, a new one twice the size when the last
  is full: ~2.4 bytes per key, each at 0.5 % false positives): a key that no month's filters
  hold is new, and is never read from disk. Only the ~2 % duplicates and the false positives
  are looked up, so the index stays exact.

The directory is a disposable index of the `seen` changelog: a worker builds a new one each
time it is given partitions and deletes it when it stops. It is never the source of truth, so
it is written without a write-ahead log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from rbloom import Bloom
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

# Reads are rare (a key some filter holds): a small block cache serves them, and bounds the
# index and filter blocks of the files too (`set_cache_index_and_filter_blocks`).
CACHE_BYTES = 8 << 20
WRITE_BUFFER_BYTES = 8 << 20  # per memtable (two at most): the memory writes may use
FIRST_CAPACITY = 1 << 18  # keys a month's first filter is made for; each next one holds twice
FALSE_POSITIVES = 0.005  # per filter: a month of n keys has log2(n / FIRST_CAPACITY) + 1
_SEP = "\x1f"


def _offset(value: bytes) -> int:
    return int.from_bytes(value, "little", signed=True)


class _Filters:
    """A month's Bloom filters, a scalable Bloom filter: when the newest is full, another
    twice its size is started. No filter is ever rebuilt from disk, and memory stays ~2.4
    bytes per key (the newest filter is at most half full)."""

    __slots__ = ("blooms", "capacity", "count")

    def __init__(self) -> None:
        self.blooms: list[Bloom] = []
        self.capacity = 0  # of the newest filter
        self.count = 0  # keys in the newest filter

    def __contains__(self, key: str) -> bool:
        return any(key in bloom for bloom in self.blooms)

    def update(self, keys: list[str]) -> None:
        while keys:
            if self.count >= self.capacity:
                self.capacity = 2 * self.capacity if self.blooms else FIRST_CAPACITY
                self.blooms.append(Bloom(self.capacity, FALSE_POSITIVES))
                self.count = 0
            room = self.capacity - self.count
            taken, keys = keys[:room], keys[room:]
            self.blooms[-1].update(taken)
            self.count += len(taken)


class SeenIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(CACHE_BYTES))
        # Index and filter blocks live in the cache too, so the index's memory is bounded by
        # it instead of growing with every file written.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        self._db = Rdict(str(path), options)
        writes = WriteOptions()
        # A property at run time, though the stubs call it a method.
        writes.disable_wal = True  # type: ignore[method-assign, assignment]
        self._db.set_write_options(writes)
        self._filters: dict[str, _Filters] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self.count = 0

    @property
    def months(self) -> list[str]:
        """The months that hold entries, oldest first."""
        return sorted(self._filters)

    def get(self, key: str) -> int | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """The entries of those `keys` that exist; only keys some filter holds are read."""
        filters = list(self._filters.items())
        wanted = [
            (key, f"{month}{_SEP}{key}".encode())
            for key in keys
            for month, held in filters
            if key in held
        ]
        if not wanted:
            return {}
        found: dict[str, int] = {}
        values: list[bytes | None] = self._db.get([stored for _, stored in wanted]) or []
        for (key, _), value in zip(wanted, values, strict=True):
            if value is not None and key not in found:
                found[key] = _offset(value)
        return found

    def add(self, entries: Iterable[tuple[str, str, int]], fresh: bool = False) -> None:
        """Record (dedupe key, usage month, offset) entries. An entry is a fact that never
        changes: a key already held keeps its first offset. `fresh`: the caller knows that
        none is held (a fold claims only keys it looked up), so none is looked up again."""
        entries = list(entries)
        held = {} if fresh else self.get_many(key for key, _, _ in entries)
        batch = WriteBatch(raw_mode=True)
        by_month: dict[str, list[str]] = defaultdict(list)
        for key, month, offset in entries:
            if key in held:
                continue
            held[key] = offset
            by_month[month].append(key)
            batch.put(f"{month}{_SEP}{key}".encode(), offset.to_bytes(8, "little", signed=True))
        self._db.write(batch)
        for month, keys in by_month.items():
            self._filters.setdefault(month, _Filters()).update(keys)
            self._counts[month] += len(keys)
            self.count += len(keys)

    def prune(self, months: Iterable[str]) -> int:
        """Drop every entry of `months`; returns how many there were."""
        dropped = 0
        for month in months:
            if month not in self._filters:
                continue
            self._db.delete_range(f"{month}{_SEP}".encode(), f"{month}{chr(0x1F + 1)}".encode())
            del self._filters[month]
            dropped += self._counts.pop(month, 0)
        self.count -= dropped
        return dropped

    def close(self) -> None:
        self._db.close()
        _remove(self.path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def index_path(data_dir: Path, app_id: str) -> Path:
    """A directory per worker process; those of processes that are gone (killed) are removed."""
    folder = data_dir / "worker"
    if folder.is_dir():
        for stale in folder.glob(f"{app_id}.*.seen*"):
            pid = stale.name[len(app_id) + 1 :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    _remove(stale)
    return folder / f"{app_id}.{os.getpid()}.seen"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
