"""What a fault run needs: a corpus, the results to compare, and the accounting identity.

A run sends the licence records first and waits until they are counted, then the usage
events (while the test injects its faults), then closes the month. Licences first, so that
every run rates each usage event with the same seats: the comparison is then exact.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from projections.tenant import TenantState
from runtime.settings import Settings
from schemas.services import default_catalog
from streams.kafka import read_all
from streams.progress import wait_for_workers
from tests.conftest import Stack

EVENTS = int(os.environ.get("METERING_FAULT_EVENTS") or 20_000)
KILLS = int(os.environ.get("METERING_FAULT_KILLS") or 2)
# Queries and the close wait for the workers; a soak run needs minutes to catch up.
WAIT = max(90.0, EVENTS / 500)


@dataclass(frozen=True)
class Corpus:
    month: str
    licences: Path
    usage: Path
    produced: Counter[str]  # usage events per service, as sent once
    distinct: Counter[str]  # distinct (tenant, source, id) per service

    @property
    def total(self) -> int:
        return sum(self.produced.values())


def make_corpus(stack: Stack, month: str, events: int = EVENTS) -> Corpus:
    """A generated month of about `events` usage events (2 % duplicate deliveries)."""
    generated = stack.data_dir / "generated.jsonl"
    tenants = events // 1300 + 1  # the generator makes 1,300-1,400 usage events per tenant
    stack.cli("generate", month, "--tenants", str(tenants), "-o", str(generated))
    licences, usage = [], []
    produced: Counter[str] = Counter()
    identities: dict[str, set[tuple[str, str, str]]] = {}
    for line in generated.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["type"] in default_catalog().by_type:
            service = default_catalog().by_type[event["type"]].name
            produced[service] += 1
            identities.setdefault(service, set()).add(
                (event["subject"], event["source"], event["id"])
            )
            usage.append(line)
        else:
            licences.append(line)
    (stack.data_dir / "licences.jsonl").write_bytes(b"\n".join(licences) + b"\n")
    (stack.data_dir / "usage.jsonl").write_bytes(b"\n".join(usage) + b"\n")
    return Corpus(
        month,
        stack.data_dir / "licences.jsonl",
        stack.data_dir / "usage.jsonl",
        produced,
        Counter({service: len(ids) for service, ids in identities.items()}),
    )


def send_in_background(stack: Stack, path: Path) -> subprocess.Popen[bytes]:
    log = (stack.data_dir / "send.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "send", str(path)],
        env=stack.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return process


def sql(stack: Stack, query: str) -> list[dict[str, Any]]:
    answer = httpx.post(stack.env["METERING_API_URL"] + "/v1/sql", json={"sql": query}, timeout=180)
    answer.raise_for_status()
    body = answer.json()
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def worker_state(stack: Stack) -> dict[str, Any]:
    """The worker's own tenant states, as its changelog holds them (last write per key),
    once the worker has committed everything: it writes state before it commits, so a close
    it has acknowledged may reach its changelog up to a flush later."""
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
        app_id=stack.env["METERING_APP_ID"],
    )
    asyncio.run(wait_for_workers(settings, 120))
    topic = f"{stack.env['METERING_APP_ID']}-tenants-changelog"
    latest: dict[bytes, bytes | None] = {}
    for record in asyncio.run(read_all(settings, topic)):
        latest[record.key or b""] = record.value
    states = {}
    for key, value in sorted(latest.items()):
        if value is not None:
            state = TenantState.model_validate_json(value)
            usage = {m: {s: u.value for s, u in by.items()} for m, by in state.usage.items()}
            states[key.decode()] = {
                "usage": usage,
                "crossings": sorted(state.crossings),
                "closed": state.closed,
                "billed": {k: str(v) for k, v in state.billed.items()},
            }
    return states


def output_ids(stack: Stack) -> dict[str, tuple[int, int]]:
    """Per output topic: (records, distinct ids). Equal when no id was ever sent twice."""
    settings = Settings(
        kafka_bootstrap=stack.env["METERING_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["METERING_TOPIC_PREFIX"],
    )
    found = {}
    for topic in (settings.topics.crossings, settings.topics.lines):
        ids = [orjson.loads(r.value or b"{}")["id"] for r in asyncio.run(read_all(settings, topic))]
        found[topic.removeprefix(settings.topic_prefix)] = (len(ids), len(set(ids)))
    return found


def results(stack: Stack) -> dict[str, Any]:
    """Everything a fault must not change, read once the month is closed."""
    return {
        "worker": worker_state(stack),
        "usage": sql(stack, "SELECT tenant, month, service, usage::VARCHAR AS usage, users, "
                            "packages, amount::VARCHAR AS amount, events FROM usage_monthly "
                            "ORDER BY ALL"),
        "crossings": sql(stack, "SELECT id, tenant, service, usage_month, level, package "
                                "FROM threshold_crossings ORDER BY id"),
        "lines": sql(stack, "SELECT id, tenant, service, usage_month, invoice_month, kind, "
                            "usage::VARCHAR AS usage, packages, amount::VARCHAR AS amount "
                            "FROM invoice_lines ORDER BY id"),
    }  # fmt: skip


def accounting(stack: Stack, corpus: Corpus, sends: int = 1) -> dict[str, dict[str, int]]:
    """Per service: produced (sent by the test) = counted + duplicates + dead-lettered, with
    counted from the read model's deduplicated usage and the log's records from its archive.
    Raises AssertionError naming every service where the identity fails."""
    counted = {r["service"]: int(r["n"]) for r in sql(
        stack, "SELECT service, sum(events) AS n FROM usage_monthly GROUP BY ALL")}  # fmt: skip
    logged = {r["service"]: int(r["n"]) for r in sql(
        stack, "SELECT service, count(*) AS n FROM usage_events GROUP BY ALL")}  # fmt: skip
    dead = {r["type"]: int(r["n"]) for r in sql(
        stack, "SELECT type, count(*) AS n FROM rejected GROUP BY ALL")}  # fmt: skip
    table = {}
    problems = []
    for type_, service in ((s.event_type, s.name) for s in default_catalog().services):
        name = service
        produced = corpus.produced[name] * sends
        row = {
            "produced": produced,
            "counted": counted.get(name, 0),
            "duplicates": logged.get(name, 0) - counted.get(name, 0),
            "dead_lettered": dead.get(type_, 0),
        }
        table[name] = row
        if produced != row["counted"] + row["duplicates"] + row["dead_lettered"]:
            problems.append(f"{name}: {row}")
        if row["counted"] != corpus.distinct[name]:
            problems.append(f"{name}: counted {row['counted']} of {corpus.distinct[name]}")
    assert not problems, "accounting identity broken:\n" + "\n".join(problems)
    return table


def differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Readable differences between two `results`, empty when they are equal."""
    diffs = []
    for part in expected:
        if expected[part] != found[part]:
            if isinstance(expected[part], dict):
                keys = set(expected[part]) | set(found[part])
                bad = sorted(k for k in keys if expected[part].get(k) != found[part].get(k))
                first = bad[0]
                diffs.append(
                    f"{part}: {len(bad)} keys differ, e.g. {bad[:3]}; {first} expected "
                    f"{expected[part].get(first)} found {found[part].get(first)}"
                )
            else:
                missing = [r for r in expected[part] if r not in found[part]]
                extra = [r for r in found[part] if r not in expected[part]]
                diffs.append(f"{part}: missing {missing[:3]} extra {extra[:3]}")
    return diffs
