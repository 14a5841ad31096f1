"""Log levels for what aiokafka reports louder than it is.

A consumer in a group first asks for its group coordinator. On a fresh KRaft broker the
`__consumer_offsets` topic does not exist yet when the worker starts, so the first lookups are
answered COORDINATOR_NOT_AVAILABLE (or NOT_COORDINATOR while the topic's leader moves), and
aiokafka logs every such retry as an ERROR although it retries them itself and joins a moment
later. `CoordinatorStartupFilter` logs these known transients at INFO; every other aiokafka
record, and every other error, passes as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiokafka.errors import GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError

# The logger whose `ensure_coordinator_known` logs the failed lookups (aiokafka 0.14).
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
LOOKUP_FAILED = "Group Coordinator Request failed: %s"
TRANSIENT = (GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError)
# How long after the filter is installed (the process starts) a failed lookup still counts as
# start-up. A fresh broker has its coordinator within a second or two; a lookup that fails
# later (still failing, or a coordinator lost days after start) means the broker or its
# offsets topic is really unavailable, and that must be seen: such records pass as WARNING
# (not INFO, so that they show at the default level and at `warning`; not ERROR, since
# aiokafka keeps retrying and nothing is lost yet).
STARTUP_GRACE = 30.0


class CoordinatorStartupFilter(logging.Filter):
    """Lower aiokafka's failed coordinator lookups, when the coordinator is merely not there
    yet: INFO within `grace` seconds of the filter's start, WARNING after it."""

    def __init__(self, grace: float = STARTUP_GRACE, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.grace = grace
        self.clock = clock
        self.started = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.is_transient(record):
            return True
        start_up = self.clock() - self.started <= self.grace
        level = logging.INFO if start_up else logging.WARNING
        record.levelno, record.levelname = level, logging.getLevelName(level)
        # The logger let the record through as an ERROR; at its new level it shows only where
        # such a record would have been logged in the first place.
        return logging.getLogger(record.name).isEnabledFor(level)

    @staticmethod
    def is_transient(record: logging.LogRecord) -> bool:
        args = record.args
        return (
            record.name == COORDINATOR_LOGGER
            and record.levelno == logging.ERROR
            and record.msg == LOOKUP_FAILED
            and isinstance(args, tuple)
            and len(args) == 1
            and isinstance(args[0], TRANSIENT)
        )


def quiet_coordinator_startup() -> CoordinatorStartupFilter:
    """Install the filter on aiokafka's coordinator logger (once; later calls return it)."""
    logger = logging.getLogger(COORDINATOR_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, CoordinatorStartupFilter):
            return existing
    installed = CoordinatorStartupFilter()
    logger.addFilter(installed)
    return installed
