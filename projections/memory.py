"""A dict-backed StateView: the reference store for unit tests and offline replays."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from projections.batch import BatchResult
from projections.tenant import TenantState


@dataclass
class MemoryState:
    tenants: dict[str, TenantState] = field(default_factory=dict)
    seen_keys: dict[str, int] = field(default_factory=dict)
    barriers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    closed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    horizons: dict[int, int] = field(default_factory=dict)

    def tenant(self, tenant: str) -> TenantState | None:
        return self.tenants.get(tenant)

    def tenants_in(self, partition: int) -> Iterable[str]:
        return [t for t, s in self.tenants.items() if s.partition == partition]

    def seen(self, key: str) -> int | None:
        return self.seen_keys.get(key)

    def barrier(self, key: str) -> tuple[str, ...]:
        return self.barriers.get(key, ())

    def partition_closed(self, partition: int) -> tuple[str, ...]:
        return self.closed.get(partition, ())

    def horizon(self, partition: int) -> int:
        return self.horizons.get(partition, 0)

    def commit(self, result: BatchResult) -> None:
        self.tenants.update(result.tenants)
        self.seen_keys.update({key: offset for key, (_, _, offset) in result.seen.items()})
        self.barriers.update(result.barriers)
        self.closed.update(result.partition_closed)
        self.horizons.update(result.horizons)
