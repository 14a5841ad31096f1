"""aiokafka's failed coordinator lookups while a fresh broker creates its offsets topic are
logged at INFO, not ERROR; every other aiokafka error passes as it is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
)

from streams.logs import COORDINATOR_LOGGER, CoordinatorStartupFilter, quiet_coordinator_startup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A filter on the coordinator logger, on a clock the test moves; removed afterwards."""
    logger = logging.getLogger(COORDINATOR_LOGGER)
    time = Clock()
    installed = CoordinatorStartupFilter(grace=30.0, clock=time)
    logger.addFilter(installed)
    try:
        yield time
    finally:
        logger.removeFilter(installed)


async def lookup_failing_with(*errors: KafkaError) -> None:
    """aiokafka's own `ensure_coordinator_known`, over a client whose first lookups fail."""
    answers: list[Any] = [*errors, 1]

    async def coordinator_lookup(*_: Any) -> int:
        answer = answers.pop(0)
        if isinstance(answer, KafkaError):
            raise answer
        return int(answer)

    async def nothing(*_: Any, **__: Any) -> bool:
        return True

    client = SimpleNamespace(
        coordinator_lookup=coordinator_lookup, force_metadata_update=nothing, ready=nothing
    )
    closing = asyncio.get_running_loop().create_future()
    coordinator = SimpleNamespace(
        coordinator_id=None,
        _coordinator_lookup_lock=asyncio.Lock(),
        _retry_backoff_ms=1,
        _closing=closing,
        _client=client,
        group_id="metering",
    )
    await GroupCoordinator.ensure_coordinator_known(coordinator)
    assert coordinator.coordinator_id == 1


def lookups(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == COORDINATOR_LOGGER and "Coordinator Request failed" in r.getMessage()
    ]


async def test_a_coordinator_not_yet_there_is_info(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await lookup_failing_with(GroupCoordinatorNotAvailableError(), NotCoordinatorForGroupError())
    assert lookups(caplog) == [
        ("INFO", "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"),
        ("INFO", "Group Coordinator Request failed: [Error 16] NotCoordinatorForGroupError"),
    ]


async def test_other_aiokafka_errors_stay_errors(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await lookup_failing_with(RequestTimedOutError())  # retried too, but not a missing coordinator
    logging.getLogger(COORDINATOR_LOGGER).error("Heartbeat session expired - marking dead")
    logging.getLogger("aiokafka.conn").error("Group Coordinator Request failed: %s", "other")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            COORDINATOR_LOGGER,
            "ERROR",
            "Group Coordinator Request failed: [Error 7] RequestTimedOutError",
        ),
        (COORDINATOR_LOGGER, "INFO", "Discovered coordinator 1 for group metering"),
        (COORDINATOR_LOGGER, "ERROR", "Heartbeat session expired - marking dead"),
        ("aiokafka.conn", "ERROR", "Group Coordinator Request failed: other"),
    ]


async def test_a_coordinator_missing_for_long_is_a_warning(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    clock.now += 30
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    clock.now += 1
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    assert [level for level, _ in lookups(caplog)] == ["INFO", "INFO", "WARNING"]


async def test_a_coordinator_lost_long_after_start_is_a_warning_at_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock.now += 3 * 86400  # days of running with the coordinator there, then it goes
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    assert [level for level, _ in lookups(caplog)] == ["WARNING"]


async def test_a_lowered_record_respects_the_log_level(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # METERING_LOG_LEVEL=warning: no INFO records
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    assert lookups(caplog) == []
    clock.now += 60
    await lookup_failing_with(GroupCoordinatorNotAvailableError())
    assert [level for level, _ in lookups(caplog)] == ["WARNING"]


def test_installing_twice_installs_one_filter() -> None:
    logger = logging.getLogger(COORDINATOR_LOGGER)
    first = quiet_coordinator_startup()
    try:
        assert quiet_coordinator_startup() is first
        assert sum(isinstance(f, CoordinatorStartupFilter) for f in logger.filters) == 1
    finally:
        logger.removeFilter(first)
