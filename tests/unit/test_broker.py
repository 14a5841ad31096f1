"""The local broker's pure helpers."""

from __future__ import annotations

from metering.broker import _cluster_id


def test_kafka_cluster_ids_never_look_like_options() -> None:
    ids = {_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
