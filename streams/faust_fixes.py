"""Workarounds for faust-streaming 0.15.3 defects that the fault tests hit, kept in one place.

1. Offsets stop being committed after a restart or a rebalance: the consumer keeps the acked
offsets of each partition in a list and commits its first run of consecutive numbers. When a
record is delivered again (the fetcher had read ahead of the seek to the committed offset)
its offset is acked a second time after the first was committed and dropped from the index,
so the list holds duplicates (`[15, 16, 16, 17, ...]`); each commit then advances by one or
two offsets and the group's lag never falls. Reported upstream as robinhood/faust#625 and
faust-streaming/faust#318. Deduplicating the list before the scan restores normal commits;
acking twice is harmless to us, since every fold is idempotent.

2. A commit the broker refuses is forgotten: when aiokafka reports that the group "already
rebalanced", Faust returns quietly but still records the offsets as committed, and the acked
offsets are gone from its list. With no later record in that partition the commit is never
sent again (seen in CI: a worker that had processed everything left 1,024 records
uncommitted, and every query waited for it). A failed commit now puts its offsets back, so the
next round (every second) sends it again.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class Consumer(faust_aiokafka.Consumer):
    def _handed_out(self) -> dict[Any, tuple[int, int]]:
        # Per partition, the offsets the last `_new_offset` took out of the acked list.
        found: dict[Any, tuple[int, int]] | None = getattr(self, "_metering_handed_out", None)
        if found is None:
            found = {}
            self._metering_handed_out = found
        return found

    def _new_offset(self, tp: Any) -> int | None:
        acked = self._acked[tp]
        first = None
        if acked:
            unique = sorted(set(acked))
            if len(unique) != len(acked):
                acked[:] = unique
            first = unique[0]
        offset: int | None = super()._new_offset(tp)
        if offset is not None and first is not None:
            committed = self._committed_offset.get(tp)
            self._handed_out()[tp] = (first if committed is None else committed, offset)
        return offset

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        did_commit: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        if not did_commit:
            handed = self._handed_out()
            for tp in offsets:
                self._committed_offset[tp] = before[tp]
                if tp in handed:
                    start, end = handed.pop(tp)
                    self._acked[tp].extend(range(start, end))
                    self._acked_index[tp].update(range(start, end))
        return did_commit


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
