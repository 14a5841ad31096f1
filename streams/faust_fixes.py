"""Workarounds for faust-streaming 0.15.3 defects that the fault tests hit, kept in one place.

Offsets stop being committed after a restart or a rebalance: the consumer keeps the acked
offsets of each partition in a list and commits its first run of consecutive numbers. When a
record is delivered again (the fetcher had read ahead of the seek to the committed offset)
its offset is acked a second time after the first was committed and dropped from the index,
so the list holds duplicates (`[15, 16, 16, 17, ...]`); each commit then advances by one or
two offsets and the group's lag never falls. Reported upstream as robinhood/faust#625 and
faust-streaming/faust#318. Deduplicating the list before the scan restores normal commits;
acking twice is harmless to us, since every fold is idempotent.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class Consumer(faust_aiokafka.Consumer):
    def _new_offset(self, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            unique = sorted(set(acked))
            if len(unique) != len(acked):
                acked[:] = unique
        offset: int | None = super()._new_offset(tp)
        return offset


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
