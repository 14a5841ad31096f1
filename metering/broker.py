"""A real single-node Apache Kafka broker (KRaft) on loopback, from Maven Central's jars.

`ensure_jars` resolves the pinned release into a cache once (later calls only check a marker);
`start_broker` formats a KRaft log in a folder on first use and starts the broker on free
loopback ports; `stop_process` shuts it down cleanly (SIGTERM, then SIGKILL after a timeout).

    python -m metering.broker fetch              # resolve the jars into the cache
    python -m metering.broker start DIR          # run a broker in DIR until interrupted
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KAFKA_DIR = Path(__file__).with_name("kafka")
POM = KAFKA_DIR / "pom.xml"
LOG4J = KAFKA_DIR / "log4j2.properties"
KAFKA_VERSION = re.search(r"<kafka.version>(.+?)</kafka.version>", POM.read_text()).group(1)  # type: ignore[union-attr]


class BrokerError(RuntimeError):
    pass


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars(cache_dir: Path) -> Path:
    """The folder of broker jars, resolved with Maven on first use (idempotent, locked)."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    with _locked(cache_dir / f"kafka-{KAFKA_VERSION}.lock"):
        if marker.exists():
            return libs
        if shutil.which("mvn") is None:
            raise BrokerError("Maven (mvn) is needed to fetch the Kafka jars; install maven")
        staging = libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        print(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven ...", file=sys.stderr)
        # Our own mvn command line as an argv list, no shell.
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
        if done.returncode != 0:
            raise BrokerError(f"mvn failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise BrokerError("Java 17+ is needed to run the Kafka broker; install a JRE")
    return java


def _cluster_id() -> str:
    """A random KRaft cluster id, as Kafka's own `Uuid.randomUuid` makes them: never starting
    with '-', which the storage tool would read as an option (1 start in 64 failed so)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class Broker:
    process: subprocess.Popen[bytes]
    bootstrap: str
    directory: Path
    ports: tuple[int, int] = (0, 0)  # client, controller: a restart reuses them

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)


def _properties(directory: Path, port: int, controller_port: int) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={directory / 'log'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # A single local member: no reason to wait for others to join a group.
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=-1",
            "",
        ]
    )


def start_broker(
    directory: Path,
    cache_dir: Path,
    timeout: float = 60.0,
    ports: tuple[int, int] | None = None,
) -> Broker:
    """Start a broker whose log lives in `directory`, formatting it on first use; `ports`
    (client, controller) restarts a stopped broker where its clients expect it."""
    libs = ensure_jars(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    port, controller_port = ports or (free_port(), free_port())
    config = directory / "server.properties"
    config.write_text(_properties(directory, port, controller_port))
    classpath = f"{libs}/*"
    java = _java()
    if not (directory / "log" / "meta.properties").exists():
        format_command = [java, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        format_command += ["-t", _cluster_id(), "-c", str(config)]
        formatted = subprocess.run(  # noqa: S603  # nosec B603  # argv of our own java and paths
            format_command,
            capture_output=True,
            text=True,
            check=False,
        )
        if formatted.returncode != 0:
            raise BrokerError(f"formatting the KRaft log failed:\n{formatted.stderr[-4000:]}")
    log = (directory / "broker.log").open("ab")
    command = [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={LOG4J}"]
    command += ["-cp", classpath, "kafka.Kafka", str(config)]
    process = subprocess.Popen(  # noqa: S603  # nosec B603  # argv of our own java and paths
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    bootstrap = f"127.0.0.1:{port}"
    broker = Broker(process, bootstrap, directory, (port, controller_port))
    try:
        wait_for_broker(bootstrap, process, timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def wait_for_broker(
    bootstrap: str, process: subprocess.Popen[bytes] | None, timeout: float
) -> None:
    """Wait until the broker answers metadata requests (the KRaft quorum is up)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    host, port = bootstrap.split(",")[0].rsplit(":", 1)

    async def probe() -> bool:
        try:  # a plain connect first: aiokafka logs every refused connection as an error
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
        except OSError:
            return False
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            brokers = (await admin.describe_cluster())["brokers"]
            return bool(brokers)
        except Exception:
            return False
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with {process.returncode}; see broker.log")
        if asyncio.run(probe()):
            return
        time.sleep(0.3)
    raise BrokerError(f"the broker at {bootstrap} was not ready within {timeout:.0f}s")


def stop_process(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM a process group leader, wait, then SIGKILL what is left of its group."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        reap(pid)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    # SIGKILL cannot be ignored: a child of ours ends at once, and is waited for here, or it
    # would stay a zombie for as long as we run (and for good once we exit, under an init
    # that does not reap what it adopts). Bounded: a process in an uninterruptible sleep dies
    # only once that ends.
    deadline = time.monotonic() + 5
    while not reap(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def reap(pid: int) -> bool:
    """Whether `pid` is gone. A child of ours is gone once we have waited for it, which this
    does if it exited (else it stays a zombie, whose pid only its parent can release); any
    other process once it no longer runs (its own parent waits for it)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not a child of ours, or one already waited for
        return not is_alive(pid)
    return finished == pid


def is_alive(pid: int) -> bool:
    """Whether `pid` runs. A zombie (exited, not yet waited for by its parent) still answers
    kill(pid, 0), and is not running: nothing is left of it to stop."""
    if pid <= 0:  # kill() would signal a whole group (0, -n) or every process (-1)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return process_state(pid) not in {"Z", "X"}


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, D, Z, ...); None without one (not Linux).

    The field before it is the process name in parentheses, which may itself hold spaces and
    parentheses: the state is the first field after the last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def main(argv: list[str] | None = None) -> int:
    from runtime.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m metering.broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the pinned Kafka jars into the cache")
    start = sub.add_parser("start", help="run a broker in DIR until interrupted")
    start.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.command == "fetch":
        print(ensure_jars(settings.cache_dir))
        return 0
    broker = start_broker(args.directory, settings.cache_dir)
    print(f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap} (log in {args.directory})")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
