"""Faust tables as the folds' `StateView`, and writing a `BatchResult` back to them.

Every write names its changelog partition explicitly: a batch mixes records of several
partitions, so Faust's default (the partition of the "current event") would be wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from projections.batch import BatchResult
from projections.tenant import TenantState


def _put(table: Any, partition: int, key: str, value: bytes) -> None:
    raw_key = key.encode()
    table.data[raw_key] = value
    table.send_changelog(partition, raw_key, value)


class TableState:
    """Reads and writes the worker's four tables (bytes keys and values; keys are UTF-8)."""

    def __init__(self, tenants: Any, seen: Any, barriers: Any, partitions: Any) -> None:
        self._tenants = tenants
        self._seen = seen
        self._barriers = barriers
        self._partitions = partitions

    def tenant(self, tenant: str) -> TenantState | None:
        raw = self._tenants.data.get(tenant.encode())
        return None if raw is None else TenantState.model_validate_json(raw)

    def tenants_in(self, partition: int) -> Iterable[str]:
        # Closes are rare; decoding only the partition field of each state is cheap enough.
        return [
            tenant.decode()
            for tenant, raw in self._tenants.data.items()
            if orjson.loads(raw)["partition"] == partition
        ]

    def seen(self, key: str) -> int | None:
        """The offset of the record that claimed this dedupe key, if any."""
        raw = self._seen.data.get(key.encode())
        return None if raw is None else int(orjson.loads(raw)[1])

    def barrier(self, key: str) -> tuple[str, ...]:
        raw = self._barriers.data.get(key.encode())
        return () if raw is None else tuple(orjson.loads(raw))

    def partition_closed(self, partition: int) -> tuple[str, ...]:
        raw = self._partitions.data.get(f"p{partition}".encode())
        return () if raw is None else tuple(orjson.loads(raw))

    def write(self, result: BatchResult) -> None:
        for tenant, state in result.tenants.items():
            _put(self._tenants, state.partition, tenant, state.model_dump_json().encode())
        for key, (partition, month, offset) in result.seen.items():
            _put(self._seen, partition, key, orjson.dumps([month, offset]))
        for key, topics in result.barriers.items():
            _put(self._barriers, int(key.rsplit("\x1f", 1)[1]), key, orjson.dumps(topics))
        for partition, months in result.partition_closed.items():
            _put(self._partitions, partition, f"p{partition}", orjson.dumps(months))
