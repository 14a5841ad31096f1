"""The read model's DuckDB instance as this process holds it: locked down once its schema exists,
and the one error a read meets while the file is being closed."""

from __future__ import annotations

import duckdb

# What the database may do once its schema exists, for every connection and cursor of the
# process: finance SQL runs on a cursor of this connection, so these switches (and not any
# reading of the SQL text) are what keep it off the file system, the network and the
# settings. The projector itself needs none of it: it writes Arrow tables it registers.
# All are global settings; `python_enable_replacements` is not (each cursor starts with its
# default), but without external access no cursor scans the caller's Python objects anyway.
HARDENING = {
    "enable_external_access": False,  # no file, URL, ATTACH, COPY, INSTALL/LOAD or Python scan
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def harden(
    con: duckdb.DuckDBPyConnection, memory_limit: str | None, temp_limit: str | None = None
) -> None:
    """Apply HARDENING, the memory limit and the limit on spilled temporary files (a finance
    query that spills without one can fill the disk within seconds), then lock the
    configuration for good.

    DuckDB keeps one database instance per file and process: a second Projector on a file
    whose instance is still alive (a cursor outlived the first) finds it locked already, and
    only checks that it is locked the way it would have locked it."""
    # fetchall: DuckDB 2.0 refuses a relation on a connection with a half-fetched result.
    current = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    if current["lock_configuration"] == "true":
        wrong = {n: current[n] for n, v in HARDENING.items() if current[n] != str(v).lower()}
        if wrong:
            raise RuntimeError(f"the read model's configuration is locked with {wrong}")
        return
    for name, value in HARDENING.items():
        con.execute(f"SET {name} = {str(value).lower()}")
    if memory_limit is not None:
        con.execute("SET memory_limit = ?", [memory_limit])
    if temp_limit is not None:
        con.execute("SET max_temp_directory_size = ?", [temp_limit])
    con.execute("SET lock_configuration = true")


class Closing(RuntimeError):
    """A read asked for while the file is being closed (a swap, or the process stopping)."""
