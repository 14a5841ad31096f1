"""Faults change no amount: SIGKILLed workers and projectors, a broker restart and a worker
joining and leaving mid-run all end with exactly the usage, crossings and invoice lines of an
uninterrupted run of the same events, and the accounting identity holds after each.

CI runs METERING_FAULT_EVENTS=20,000 with 2 kills per run; `make soak` runs 500,000 with 5.
Each run appends its figures to build/fault-runs.jsonl.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metering.broker import Broker, start_broker
from projections.months import month_of, previous_month
from tests.conftest import CACHE, Stack, make_stack
from tests.faults.harness import (
    KILLS,
    WAIT,
    Corpus,
    accounting,
    differences,
    make_corpus,
    output_ids,
    results,
    send_in_background,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MONTH = previous_month(month_of(dt.datetime.now(dt.UTC), dt.UTC))
FIGURES = Path("build/fault-runs.jsonl")
Fault = Callable[[Stack, subprocess.Popen[bytes]], dict[str, Any]]


def record(name: str, corpus: Corpus, figures: dict[str, Any]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(json.dumps({"run": name, "events": corpus.total, **figures}) + "\n")


def run(stack: Stack, corpus: Corpus, fault: Fault | None = None) -> dict[str, Any]:
    """One whole run; returns its results and what the fault did."""
    stack.env["METERING_QUERY_TIMEOUT"] = str(WAIT)
    stack.create_topics()
    stack.start_worker()
    stack.start_projector()
    stack.cli("send", str(corpus.licences))
    stack.cli("crossings", corpus.month)  # waits until the licences are counted
    started = time.monotonic()
    sender = send_in_background(stack, corpus.usage)
    done = fault(stack, sender) if fault else {}
    if sender.wait(timeout=WAIT * 4) != 0:  # the producer gave up (a broker away): send again
        stack.cli("send", str(corpus.usage), timeout=WAIT)
        done["sends"] = 2
    stack.cli("close", corpus.month, "--timeout", str(WAIT), timeout=WAIT * 2)
    found = results(stack)
    done["seconds"] = round(time.monotonic() - started, 1)
    done["accounting"] = accounting(stack, corpus, done.get("sends", 1))
    done["outputs"] = output_ids(stack)
    return {"results": found, "done": done}


@pytest.fixture(scope="module")
def corpus_and_reference(kafka: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    stack = make_stack(kafka.bootstrap, tmp_path_factory.mktemp("reference"))
    try:
        corpus = make_corpus(stack, MONTH)
        reference = run(stack, corpus)
        reference["done"]["metrics"] = worker_counts(stack)
        record("reference", corpus, reference["done"])
        yield corpus, reference
    finally:
        stack.stop_workers()


def worker_counts(stack: Stack) -> dict[str, float]:
    """The uninterrupted worker's own counters, summed over services."""
    ready = next(stack.data_dir.glob("worker-*.ready")).read_text()
    with urllib.request.urlopen(json.loads(ready)["metrics_url"], timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("metering_events_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            totals[outcome] = totals.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_reference_run_balances_by_metrics_too(corpus_and_reference: Any) -> None:
    _, reference = corpus_and_reference
    table = reference["done"]["accounting"]
    metrics = reference["done"]["metrics"]
    assert metrics["accepted"] == sum(r["counted"] for r in table.values())
    assert metrics["duplicate"] == sum(r["duplicates"] for r in table.values())
    assert sum(r["duplicates"] for r in table.values()) > 0  # the corpus has duplicates
    assert reference["results"]["lines"], "nothing billed: the comparison would prove little"
    assert all(n == distinct for n, distinct in reference["done"]["outputs"].values())


def kill_repeatedly(component: str, kills: int, seed: int) -> Fault:
    def fault(stack: Stack, sender: subprocess.Popen[bytes]) -> dict[str, Any]:
        rng = random.Random(seed)
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 3.0))
            victim = next(p for p in stack.workers if component in " ".join(map(str, p.args)))
            stack.stop(victim, kill=True)
            if component == "worker":
                stack.start_worker()
            else:
                stack.start_projector()
        return {"kills": kills, "sender_running_at_last_kill": sender.poll() is None}

    return fault


def check(name: str, corpus: Corpus, reference: dict[str, Any], run_: dict[str, Any]) -> None:
    found = differences(reference["results"], run_["results"])
    run_["done"]["differences"] = len(found)
    record(name, corpus, run_["done"])
    assert not found, f"{name} differs from the uninterrupted run: {found}"
    assert all(n == distinct for n, distinct in run_["done"]["outputs"].values()), run_["done"]


def faulted(
    name: str, bootstrap: str, data_dir: Path, corpus_and_reference: Any, fault: Fault
) -> None:
    """A run with `fault` on a stack of its own, compared with the reference."""
    corpus, reference = corpus_and_reference
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = make_stack(bootstrap, data_dir)
    try:
        outcome = run(stack, corpus, fault)
    finally:
        stack.stop_workers()
    check(name, corpus, reference, outcome)


@pytest.mark.parametrize(("component", "seed"), [("worker", 7), ("projector", 11)])
def test_sigkilled_components_change_nothing(
    component: str, seed: int, corpus_and_reference: Any, kafka: Broker, tmp_path: Path
) -> None:
    fault = kill_repeatedly(component, KILLS, seed)
    faulted(f"{component}-sigkill", kafka.bootstrap, tmp_path, corpus_and_reference, fault)


def test_a_worker_joining_and_leaving_changes_nothing(
    corpus_and_reference: Any, kafka: Broker, tmp_path: Path
) -> None:
    def second_worker(stack: Stack, sender: subprocess.Popen[bytes]) -> dict[str, Any]:
        time.sleep(1.0)
        joined = stack.start_worker()  # partitions move to it ...
        time.sleep(4.0)
        stack.stop(joined)  # ... and back
        return {"rebalances": 2}

    faulted("second-worker", kafka.bootstrap, tmp_path, corpus_and_reference, second_worker)


def test_a_broker_restart_mid_run_changes_nothing(
    corpus_and_reference: Any, tmp_path: Path
) -> None:
    broker = start_broker(tmp_path / "kafka", CACHE)
    holder = {"broker": broker}

    def restart_broker(stack: Stack, sender: subprocess.Popen[bytes]) -> dict[str, Any]:
        time.sleep(2.0)
        holder["broker"].stop()
        time.sleep(3.0)
        holder["broker"] = start_broker(tmp_path / "kafka", CACHE, ports=broker.ports)
        # A component that gave up while the broker was away is restarted, as a supervisor
        # (systemd, compose's restart policy) would.
        restarted = []
        for process in list(stack.workers):
            if process.poll() is not None:
                component = (
                    "worker" if "worker" in " ".join(map(str, process.args)) else "projector"
                )
                stack.workers.remove(process)
                restarted.append(component)
                if component == "worker":
                    stack.start_worker()
                else:
                    stack.start_projector()
        return {"broker_restarts": 1, "restarted": restarted}

    try:
        faulted("broker-restart", broker.bootstrap, tmp_path / "stack", corpus_and_reference,
                restart_broker)  # fmt: skip
    finally:
        holder["broker"].stop()
