"""The local stack: a Kafka broker (unless one is configured), the topics, one or more workers
(one consumer group: they split the partitions), the projector with the read-model API, and
the notifier (webhooks).

`run_stack` runs it in the foreground and records it in `<data dir>/stack.json`, so that every
later command with the same data dir finds it; `start_detached` runs it in the background and
returns once it is ready; `stop_stack` stops it and everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from metering.broker import Broker, is_alive, start_broker, stop_process
from runtime.settings import Settings
from streams.kafka import ensure_topics


class StackError(RuntimeError):
    pass


# The stacks `start_detached` started from this process, by pid. Only a parent can wait for
# a child, and a child not waited for stays a zombie once stopped. `metering up --detach`
# exits at once and leaves its stack to init; a process that starts a stack and later stops
# it itself (a test, a benchmark) is its parent, and `stop_stack` waits for it there.
_detached: dict[int, subprocess.Popen[bytes]] = {}


def read_record(settings: Settings) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(settings.stack_file.read_text())
    except (OSError, ValueError):
        return None
    if not is_alive(int(record.get("pid", 0))):
        return None  # a stale record of a stack that died
    return record


def _write_record(settings: Settings, **record: Any) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(settings.stack_file)


def _start(
    component: str, settings: Settings, bootstrap: str, ready_file: Path, name: str = ""
) -> subprocess.Popen[bytes]:
    """Start `metering COMPONENT` (worker, projector) in its own session, logging to
    `<name or component>.log`."""
    env = dict(os.environ)
    env.update(
        METERING_KAFKA_BOOTSTRAP=bootstrap,
        METERING_DATA_DIR=str(settings.data_dir),
        METERING_READY_FILE=str(ready_file),
    )
    ready_file.unlink(missing_ok=True)
    log = (settings.data_dir / f"{name or component}.log").open("ab")
    process = subprocess.Popen(  # noqa: S603  # nosec B603  # `component` is one of our own subcommands
        [sys.executable, "-m", "metering.cli", component],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return process


def _wait_ready(
    component: str, process: subprocess.Popen[bytes], ready_file: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while not ready_file.exists() or not ready_file.read_text().strip():
        if process.poll() is not None:
            raise StackError(
                f"the {component} exited with {process.returncode}; see {component}.log"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"the {component} was not ready within {timeout:.0f}s; see {component}.log"
            )
        time.sleep(0.2)
    return ready_file.read_text()


def worker_names(workers: int) -> list[str]:
    """`worker` for the first (its files keep their names), then `worker-2`, `worker-3`, ..."""
    return ["worker" if n == 1 else f"worker-{n}" for n in range(1, workers + 1)]


def run_stack(
    settings: Settings, on_ready: Any = None, timeout: float = 180.0, workers: int = 1
) -> None:
    """Run broker, `workers` workers, the projector and the notifier until SIGINT/SIGTERM;
    `on_ready()` is called once all is up."""
    if read_record(settings) is not None:
        raise StackError(f"a stack already runs in {settings.data_dir}; `metering down` first")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = {"now": False}

    def _stop(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    broker: Broker | None = None
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        bootstrap = settings.kafka_bootstrap
        if not bootstrap:
            broker = start_broker(settings.data_dir / "kafka", settings.cache_dir)
            bootstrap = broker.bootstrap
        record: dict[str, Any] = {
            "pid": os.getpid(),
            "bootstrap": bootstrap,
            "broker_pid": broker.process.pid if broker else None,
            "ready": False,
        }
        _write_record(settings, **record)
        local = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        asyncio.run(ensure_topics(local))
        for name in [*worker_names(workers), "projector", "notifier"]:
            component = name if name in {"projector", "notifier"} else "worker"
            ready_file = settings.data_dir / f"{name}.ready"
            started[name] = _start(component, local, bootstrap, ready_file, name)
        pids = [started[name].pid for name in worker_names(workers)]
        record.update(
            worker_pid=pids[0], worker_pids=pids, projector_pid=started["projector"].pid,
            notifier_pid=started["notifier"].pid,
        )  # fmt: skip
        _write_record(settings, **record)
        record.update(_when_ready(settings, started, workers, timeout))
        record["ready"] = True
        _write_record(settings, **record)
        if on_ready is not None:
            on_ready(bootstrap)
        while not stop["now"]:
            for name, process in started.items():
                if process.poll() is not None:
                    raise StackError(f"the {name} exited with {process.returncode}; see {name}.log")
            time.sleep(0.2)
    finally:
        _stop_started(settings, broker, *started.values())


def _when_ready(
    settings: Settings, started: dict[str, subprocess.Popen[bytes]], workers: int, timeout: float
) -> dict[str, Any]:
    """Wait for every component's ready file; the record's API URL and metrics targets."""
    ready = {
        name: json.loads(_wait_ready(name, process, settings.data_dir / f"{name}.ready", timeout))
        for name, process in started.items()
    }
    api_url = ready["projector"]["api_url"]
    # What Prometheus scrapes: `metering prometheus-config` writes a config from these.
    metrics = {
        "metering-worker": [ready[name]["metrics_url"] for name in worker_names(workers)],
        "metering-projector": f"{api_url}/metrics",
        "metering-notifier": ready["notifier"]["metrics_url"],
    }
    return {"api_url": api_url, "metrics": metrics}


def _stop_started(
    settings: Settings, broker: Broker | None, *children: subprocess.Popen[bytes] | None
) -> None:
    """Stop what `run_stack` started, and wait for each: a child it leaves unwaited stays a
    zombie, adopted by init when `metering up` exits (and for good under an init that does
    not reap, as in many containers)."""
    for child in children:
        if child is not None:
            stop_process(child.pid, timeout=30)
            _wait(child)
    if broker is not None:
        broker.stop()
    with contextlib.suppress(FileNotFoundError):
        settings.stack_file.unlink()


def _wait(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Wait for a stopped child, so that it leaves no zombie (`stop_process` has usually
    waited for it already; `Popen` then still learns that it ended)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)


def start_detached(settings: Settings, timeout: float = 240.0, workers: int = 1) -> dict[str, Any]:
    """Start `metering up` in the background; return its record once it is ready. A stack
    that runs already is returned as it is, whatever its number of workers."""
    existing = read_record(settings)
    if existing is not None and existing.get("ready"):
        return existing
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.data_dir / "stack.log").open("ab")
    process = subprocess.Popen(  # noqa: S603  # nosec B603  # our own interpreter and subcommand
        [sys.executable, "-m", "metering.cli", "up", "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "METERING_DATA_DIR": str(settings.data_dir)},
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_record(settings)
        if record is not None and record.get("ready") and record.get("pid") == process.pid:
            # Ours to wait for once it is stopped: `stop_stack` in this process does.
            _detached[process.pid] = process
            return record
        if process.poll() is not None:
            tail = (settings.data_dir / "stack.log").read_text()[-2000:]
            raise StackError(f"`metering up` exited with {process.returncode}:\n{tail}")
        time.sleep(0.2)
    stop_process(process.pid)
    _wait(process)
    raise StackError(f"the stack was not ready within {timeout:.0f}s; see stack.log")


def stop_stack(settings: Settings, timeout: float = 60.0) -> bool:
    """Stop the stack of this data dir; False when none was running."""
    try:
        record = json.loads(settings.stack_file.read_text())
    except (OSError, ValueError):
        return False
    pids = [
        record.get(k) for k in ("pid", "worker_pid", "projector_pid", "notifier_pid", "broker_pid")
    ]
    pids += record.get("worker_pids") or []
    stop_process(int(record["pid"]), timeout)
    started_here = _detached.pop(int(record["pid"]), None)
    if started_here is not None:
        _wait(started_here)
    for pid in pids:  # whatever a killed supervisor could not stop itself
        if pid and is_alive(int(pid)):
            stop_process(int(pid), timeout=10)
    with contextlib.suppress(FileNotFoundError):
        settings.stack_file.unlink()
    return True
