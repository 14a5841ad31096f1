"""The faust-streaming workarounds, on the consumer's own bookkeeping (no broker needed)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.faust_fixes import Consumer

PARTITION = TP("usage-events", 0)


def bookkeeping(acked: list[int], committed: int | None) -> Any:
    consumer: Any = object.__new__(Consumer)  # only the offset bookkeeping is exercised
    consumer._acked = defaultdict(list, {PARTITION: list(acked)})
    consumer._acked_index = defaultdict(set, {PARTITION: set(acked)})
    consumer._committed_offset = defaultdict(lambda: None, {PARTITION: committed})
    consumer._gap = defaultdict(lambda: None)
    return consumer


def test_duplicate_acks_do_not_stall_the_commit() -> None:
    consumer = bookkeeping([15, 16, 16, 17, 18, 18, 19], committed=15)
    assert consumer._new_offset(PARTITION) == 20  # upstream stops at the duplicate: 17


@pytest.mark.parametrize(("refused", "expected"), [(True, [10, 11, 12, 13]), (False, [])])
async def test_a_refused_commit_is_sent_again(
    monkeypatch: pytest.MonkeyPatch, refused: bool, expected: list[int]
) -> None:
    async def upstream(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        self._committed_offset.update(offsets)  # what Faust does, refused or not
        return not refused

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit_offsets", upstream)
    consumer = bookkeeping([10, 11, 12, 13], committed=10)
    offset = consumer._new_offset(PARTITION)
    assert offset == 14 and consumer._acked[PARTITION] == []
    await consumer._commit_offsets({PARTITION: offset})
    assert sorted(consumer._acked[PARTITION]) == expected
    assert consumer._committed_offset[PARTITION] == (10 if refused else 14)
    if refused:  # the next round commits the same offsets
        assert consumer._new_offset(PARTITION) == 14
