"""The worker's dedupe entries on local disk, so that its memory does not grow with events.

Every usage event counted leaves an entry (dedupe key -> offset of the record that claimed
it) for as long as a duplicate may still be counted: until its usage month is past the
retention window in every partition the worker holds (`projections.horizon`); then `prune`
drops the month whole.

- The entries live in RocksDB (`rocksdict`), keyed `month \\x1f dedupe key`: an LSM tree
  appends a batch of keys at a fraction of a B-tree's cost once the index outgrows memory
  (SQLite took 6 µs per key at 2M keys, RocksDB 1.6 µs), and a month is one key range to
  delete.
- In front of each month sits a Bloom filter (`rbloom`, ~1.2 bytes per key at 1 % false
  positives): a key that no month's filter holds is new, and is never read from disk. Only
  the ~2 % duplicates and the false positives are looked up, so the index stays exact.

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

CACHE_BYTES = 32 << 20  # RocksDB's block cache: the memory reads may use
WRITE_BUFFER_BYTES = 16 << 20  # per memtable (two at most): the memory writes may use
FIRST_CAPACITY = 1 << 20  # keys a month's filter is made for; it grows fourfold when full
FALSE_POSITIVES = 0.01
_SEP = "\x1f"


def _offset(value: bytes) -> int:
    return int.from_bytes(value, "little", signed=True)


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
        options.set_block_based_table_factory(table)
        self._db = Rdict(str(path), options)
        writes = WriteOptions()
        # A property at run time, though the stubs call it a method.
        writes.disable_wal = True  # type: ignore[method-assign, assignment]
        self._db.set_write_options(writes)
        self._filters: dict[str, Bloom] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._capacity: dict[str, int] = {}
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
            for month, bloom in filters
            if key in bloom
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
            self._filter(month, len(keys)).update(keys)
            self._counts[month] += len(keys)
            self.count += len(keys)

    def _filter(self, month: str, adding: int) -> Bloom:
        """The month's filter, made for the keys about to be added; when they would
        overfill it, a filter four times that size is made from the month's keys on disk,
        so that false positives stay near 1 % (amortised, a fraction of a µs per key)."""
        needed = self._counts[month] + adding
        bloom = self._filters.get(month)
        if bloom is None or needed > self._capacity[month]:
            capacity = max(FIRST_CAPACITY, needed if bloom is None else 4 * needed)
            bloom = Bloom(capacity, FALSE_POSITIVES)
            if month in self._filters:
                bloom.update(key.decode()[len(month) + 1 :] for key in self._keys(month))
            self._filters[month], self._capacity[month] = bloom, capacity
        return bloom

    def _keys(self, month: str) -> Iterable[bytes]:
        prefix = f"{month}{_SEP}".encode()
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key
            it.next()

    def prune(self, months: Iterable[str]) -> int:
        """Drop every entry of `months`; returns how many there were."""
        dropped = 0
        for month in months:
            if month not in self._filters:
                continue
            self._db.delete_range(f"{month}{_SEP}".encode(), f"{month}{chr(0x1F + 1)}".encode())
            del self._filters[month], self._capacity[month]
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
