"""Stopping the local stack leaves no zombie and does not wait on one: with trivial child
processes in place of the broker, the worker and `metering up`."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metering import stack
from metering.broker import is_alive, stop_process
from runtime.settings import Settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

RUNS = "import time\nwhile True: time.sleep(0.05)\n"
# A wedged process, which only SIGKILL stops.
IGNORES_SIGTERM = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's child processes; whatever a test leaves is killed and waited for."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def spawn(
    children: list[subprocess.Popen[bytes]], setup: str = "", then: str = RUNS
) -> subprocess.Popen[bytes]:
    """A Python child in its own session (as `metering up` starts its components): it runs
    `setup`, says it is ready, then runs `then`."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"{setup}print('ready', flush=True)\n{then}"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    children.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its signal handlers are set by now
    return process


def state(pid: int) -> str:
    """The /proc state letter; "gone" once nothing is left of the process, not even a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_zombie_is_not_alive_whatever_its_name(children: list[subprocess.Popen[bytes]]) -> None:
    # A process may name itself (setproctitle, prctl); /proc/<pid>/stat shows the name in
    # parentheses before the state, spaces and parentheses included.
    process = spawn(children, "open('/proc/self/comm', 'w').write('metering (up) x')\n", "")
    until(lambda: state(process.pid) == "Z")  # exited; we have not waited for it yet
    assert not is_alive(process.pid)


def test_no_pid_is_alive() -> None:
    assert not is_alive(0)  # what a stack record without a pid reads as
    assert not is_alive(-1)


def test_stop_process_waits_for_a_child_it_had_to_kill(
    children: list[subprocess.Popen[bytes]],
) -> None:
    process = spawn(children, IGNORES_SIGTERM)
    started = time.monotonic()
    stop_process(process.pid, timeout=0.5)
    assert time.monotonic() - started < 5
    assert state(process.pid) == "gone"  # killed and waited for: not a zombie


def test_stop_process_waits_for_a_child_that_stops(
    children: list[subprocess.Popen[bytes]],
) -> None:
    process = spawn(children)
    started = time.monotonic()
    stop_process(process.pid, timeout=30)
    assert time.monotonic() - started < 5
    assert state(process.pid) == "gone"


def test_run_stack_waits_for_the_components_it_stopped(
    children: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    worker, projector = spawn(children), spawn(children)
    settings = Settings(data_dir=tmp_path)
    settings.stack_file.write_text("{}")
    stack._stop_started(settings, None, worker, projector)
    assert worker.returncode is not None and projector.returncode is not None
    assert state(worker.pid) == state(projector.pid) == "gone"
    assert not settings.stack_file.exists()


def fake_up(tmp_path: Path, setup: str) -> Path:
    """An executable standing in for `python -m metering.cli up`: after `setup`, it records
    itself as a ready stack, as `run_stack` does, and runs until it is stopped."""
    script = tmp_path / "fake-up"
    record = (
        "import json, os, pathlib\n"
        "path = pathlib.Path(os.environ['METERING_DATA_DIR']) / 'stack.json'\n"
        "path.write_text(json.dumps({'pid': os.getpid(), 'ready': True}))\n"
    )
    script.write_text(f"#!{sys.executable}\n{setup}{record}{RUNS}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize("setup", ["", IGNORES_SIGTERM], ids=["stops", "wedged"])
def test_stop_stack_leaves_no_zombie_of_a_stack_started_here(
    setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    monkeypatch.setattr(sys, "executable", str(fake_up(tmp_path, setup)))  # what it starts
    record = stack.start_detached(settings, timeout=30)
    pid = int(record["pid"])
    assert is_alive(pid)
    started = time.monotonic()
    try:
        assert stack.stop_stack(settings, timeout=1)
        assert time.monotonic() - started < 8
        assert state(pid) == "gone"  # stopped (or killed) and waited for
        assert not settings.stack_file.exists()
        assert not stack.stop_stack(settings)
    finally:
        if state(pid) != "gone":
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
