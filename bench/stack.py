"""Start the real components (`metering worker`, `metering projector`) for a benchmark, and
read what the benchmark measures from outside them: peak memory, offsets, metrics."""

from __future__ import annotations

import os
import subprocess  # nosec B404  # the benchmark runs our own components
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from metering.broker import stop_process


@dataclass
class Component:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log: Path

    def peak_rss_mib(self) -> float:
        """Peak resident memory of the process so far (VmHWM), in MiB."""
        return self._status_mib("VmHWM")

    def rss_mib(self) -> float:
        """Resident memory now (VmRSS), in MiB: a peak keeps the largest transient for good."""
        return self._status_mib("VmRSS")

    def _status_mib(self, field: str) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc status")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process.pid, timeout=30)
        self.process.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def environment(bootstrap: str, prefix: str, app_id: str, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERING_")}
    env.update(
        METERING_KAFKA_BOOTSTRAP=bootstrap,
        METERING_TOPIC_PREFIX=prefix,
        METERING_APP_ID=app_id,
        METERING_DATA_DIR=str(data_dir),
        METERING_AUTO_CLOSE_GRACE="off",
        METERING_LOG_LEVEL="warning",
        METERING_METRICS_PORT="0",
    )
    return env


def start(kind: str, env: dict[str, str], data_dir: Path, timeout: float = 120) -> Component:
    """Start `metering KIND` and wait until it has written its ready file."""
    ready = data_dir / f"{kind}-{uuid.uuid4().hex[:6]}.ready"
    log_path = data_dir / f"{kind}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  # nosec B603  # our own interpreter and module
            [sys.executable, "-m", "metering.cli", kind],
            env={**env, "METERING_READY_FILE": str(ready)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready.exists() or not ready.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process.pid)
            raise RuntimeError(f"{kind} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return Component(process, orjson.loads(ready.read_text()), log_path)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' `histogram_quantile` over cumulative (upper bound, count) pairs."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower
