"""The worker's dedupe entries on local disk, so that its memory does not grow with events.

Every usage event ever counted leaves an entry (dedupe key -> offset of the record that
claimed it) for as long as duplicates may arrive. Kept in a dict, that is ~150 bytes of
memory per event; here it is a SQLite B-tree in a file of the worker's own (SQLite: in the
standard library, and it keeps only its page cache in memory).

The file is a disposable index of the `seen` changelog: a worker builds a new one each time it
is given partitions, and deletes it when it stops. It is never the source of truth, so it is
written without journal or fsync.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

CACHE_KIB = 32 * 1024  # SQLite's page cache: the memory the index may use
CHUNK = 500  # keys per lookup (SQLite allows 32,766 parameters; smaller is as fast)


class SeenIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE seen (key TEXT PRIMARY KEY, claimed_by INTEGER NOT NULL) WITHOUT ROWID"
        )
        self.count = 0

    def get(self, key: str) -> int | None:
        row = self._db.execute("SELECT claimed_by FROM seen WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """The entries of those `keys` that exist, in one query per few hundred keys."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, claimed_by FROM seen WHERE key IN ({marks})"  # noqa: S608  # only placeholders
            found.update(self._db.execute(query, chunk).fetchall())
        return found

    def add(self, entries: Iterable[tuple[str, int]]) -> None:
        """Record entries; an entry is a fact that never changes, so a repeat is ignored."""
        before = self._db.total_changes
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", entries)
        self._db.execute("COMMIT")
        self.count += self._db.total_changes - before

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)


def index_path(data_dir: Path, app_id: str) -> Path:
    """A file per worker process; those of processes that are gone (killed) are removed."""
    folder = data_dir / "worker"
    if folder.is_dir():
        for stale in folder.glob(f"{app_id}.*.seen.sqlite"):
            pid = stale.name[len(app_id) + 1 :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    stale.unlink()
    return folder / f"{app_id}.{os.getpid()}.seen.sqlite"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
