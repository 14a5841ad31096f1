"""Shared fixtures: one real Kafka broker per test session, and per test a unique topic
prefix, consumer group (app id) and data dir, with helpers to drive the CLI and workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.broker import Broker, start_broker, stop_process
from runtime.settings import Settings
from streams.kafka import ensure_topics

CACHE = Path(os.environ.get("METERING_CACHE_DIR") or Path.home() / ".cache" / "metering")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_broker(tmp_path_factory.mktemp("kafka"), CACHE)
    yield broker
    broker.stop()


@dataclass
class Stack:
    """One test's view of the system: its own topics and consumer group on the shared broker."""

    env: dict[str, str]
    data_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 240, **env: str
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "metering.cli", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"metering {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def json(self, *args: str, **env: str) -> Any:
        return orjson.loads(self.cli(*args, "--format", "json", **env).stdout)

    def create_topics(self) -> None:
        settings = Settings(
            kafka_bootstrap=self.env["METERING_KAFKA_BOOTSTRAP"],
            topic_prefix=self.env["METERING_TOPIC_PREFIX"],
            partitions=int(self.env["METERING_PARTITIONS"]),
        )
        asyncio.run(ensure_topics(settings))

    def start(self, component: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        """Start `metering COMPONENT` and wait for its ready file; returns it and the file."""
        ready = self.data_dir / f"{component}-{uuid.uuid4().hex[:6]}.ready"
        log_path = self.data_dir / f"{component}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "metering.cli", component],
            env={**self.env, "METERING_READY_FILE": str(ready), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(process)
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{component} not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return process, ready.read_text()

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.start("worker", **env)[0]

    def start_projector(self, **env: str) -> subprocess.Popen[bytes]:
        """A projector with its own DuckDB file; the CLI's queries go to its API from now on."""
        process, ready = self.start("projector", **env)
        self.env["METERING_API_URL"] = orjson.loads(ready)["api_url"]
        return process

    def stop(self, process: subprocess.Popen[bytes], kill: bool = False) -> None:
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            stop_process(process.pid, timeout=30)
        process.wait(timeout=30)
        self.workers.remove(process)

    def stop_workers(self) -> None:
        for process in self.workers:
            stop_process(process.pid, timeout=30)
            process.wait(timeout=10)
        self.workers.clear()

    def write(self, name: str, events: list[dict[str, Any]] | list[bytes]) -> Path:
        path = self.data_dir / name
        path.write_bytes(
            b"".join((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n" for e in events)
        )
        return path


def make_stack(bootstrap: str, data_dir: Path) -> Stack:
    """A stack with its own topic prefix and app id on the broker at `bootstrap`."""
    tag = uuid.uuid4().hex[:8]
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERING_")}
    env.update(
        METERING_KAFKA_BOOTSTRAP=bootstrap,
        METERING_TOPIC_PREFIX=f"t{tag}-",
        METERING_APP_ID=f"test-{tag}",
        METERING_DATA_DIR=str(data_dir),
        METERING_PARTITIONS="4",
        METERING_AUTO_CLOSE_GRACE="off",
        METERING_BATCH_WITHIN="0.05",
        METERING_LOG_LEVEL="info",
        METERING_QUERY_TIMEOUT="90",
    )
    return Stack(env=env, data_dir=data_dir)


@pytest.fixture
def stack(kafka: Broker, tmp_path: Path) -> Iterator[Stack]:
    result = make_stack(kafka.bootstrap, tmp_path)
    yield result
    result.stop_workers()
