"""The read model's SQL recomputes exactly what the pure folds decide, on a generated month:
the views finance reads and `audit` relies on agree with the workers to the cent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import orjson
import pytest

from billing.plan import load_plan
from metering.generate import generate_month
from projections.batch import fold_batch
from projections.decode import decode
from projections.events import Position
from projections.memory import MemoryState
from projections.tenant import rate_month
from readmodel.queries import decimal_text, usage
from readmodel.rows import FORWARDED_FROM, Record
from readmodel.usage_sql import NO_CUTOFF, month_bounds, monthly_usage, usage_views
from runtime.settings import Settings
from schemas.services import default_catalog
from streams.projector import Projector

PLAN = load_plan()
MONTH = "2026-09"
LOG_MS = int(dt.datetime(2026, 10, 2, tzinfo=dt.UTC).timestamp() * 1000)


def records() -> list[Record]:
    """A month as the usage log holds it: licence records arrive forwarded, in log order."""
    found = []
    # An older snapshot with more seats than the one in force at the month's start: only
    # the one in force counts (plus any raised during the month).
    earlier = [
        {"specversion": "1.0", "id": f"old-{users}", "source": "licensing",
         "type": "licensing.licenses.changed", "subject": "tenant-00001",
         "time": f"2026-0{month}-01T00:00:00Z", "data": {"users": users, "modules": []}}
        for month, users in ((7, 150), (8, 4))
    ]  # fmt: skip
    for offset, event in enumerate([*earlier, *generate_month(MONTH, tenants=6, seed=5)]):
        headers = ()
        if event["type"].startswith("licensing."):
            headers = ((FORWARDED_FROM, f"licenses/0/{offset}".encode()),)
        found.append(Record("usage-events", 0, offset, LOG_MS, b"k", orjson.dumps(event), headers))
    return found


def test_usage_monthly_equals_the_folds(tmp_path: Path) -> None:
    log = records()
    state = MemoryState()
    decoded = [
        decode(
            r.value,
            Position(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                log_time=dt.datetime.fromtimestamp(r.timestamp_ms / 1000, dt.UTC),
                origin="licenses" if r.headers else None,
            ),
            PLAN,
        )
        for r in log
    ]
    state.commit(fold_batch(decoded, state, PLAN, frozenset({"usage-events", "licenses"})))

    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    projector.write(log)
    checked = 0
    with projector.reader() as cur:
        for tenant, tenant_state in state.tenants.items():
            rows = {row["service"]: row for row in usage(cur, tenant, MONTH)}
            for service in default_catalog().names:
                rating = rate_month(tenant_state, MONTH, service, PLAN)
                row = rows[service]
                assert row["usage"] == decimal_text("usage", rating.in_units(rating.usage))
                assert (row["users"], row["band"], row["packages"]) == (
                    rating.users, rating.band, rating.packages,
                )  # fmt: skip
                assert row["amount"] == str(rating.amount)
                checked += 1
    projector.close()
    assert checked == 6 * 5
    assert any(s.billed or s.usage for s in state.tenants.values())


ARCHIVED = [
    # (raw value, payload kept, type, time): what does not parse is kept as text
    (b"\xff\xfe", "\\xff\\xfe", None, None),
    (b"[1]", "[1]", None, None),
    (b"{not json", "{not json", None, None),
    (b'{"type": "metering.chat.started", "time": "2026-10-01T10:00:00"}', None,
     "metering.chat.started", None),  # a time without offset is no time
    (b'{"type": 5, "time": "2026-10-01T10:00:00+02:00"}', None, None,
     dt.datetime(2026, 10, 1, 8, tzinfo=dt.UTC)),
]  # fmt: skip


def test_the_archive_keeps_what_does_not_parse(tmp_path: Path) -> None:
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    projector.write(
        [
            Record("usage-events", 3, n, LOG_MS, None, value)
            for n, (value, *_) in enumerate(ARCHIVED)
        ]
    )
    with projector.reader() as cur:
        rows = cur.execute(
            'SELECT payload, type, time, topic, "partition", log_time FROM raw_events '
            'ORDER BY "offset"'
        ).fetchall()
    projector.close()
    assert [row[:3] for row in rows] == [expected[1:] for expected in ARCHIVED]
    assert {row[3:5] for row in rows} == {("usage-events", 3)}
    assert rows[0][5] == dt.datetime(2026, 10, 2, tzinfo=dt.UTC)


ENVELOPES = [
    # (raw value, (type, source, id, subject, data, payload)): a field is read only where it
    # is a JSON string (`data`: an object); the first of repeated keys wins; a value that
    # is no JSON object is kept whole as `payload`
    (b'{"type":"a","type":"b","id":"x","id":7,"data":{"q":1},"data":[1]}',
     ("a", None, "x", None, '{"q":1}', None)),
    (b'{"type":null,"source":"s","subject":"t\\u0000x","data":{}}',
     (None, "s", None, "t\x00x", "{}", None)),
    (b'  {"id":"a","source":5}  ', (None, None, "a", None, None, None)),
    (b'{"data":{"a":{"b":[1,{"c":"d"}]}},"subject":"\\"q\\""}',
     (None, None, None, '"q"', '{"a":{"b":[1,{"c":"d"}]}}', None)),
    (b'{"data":"x"}', (None, None, None, None, None, None)),
    (b'"str"', (None, None, None, None, None, '"str"')),
    (b'{"id":"a"} x', (None, None, None, None, None, '{"id":"a"} x')),
    (b"", (None, None, None, None, None, "")),
]  # fmt: skip


def test_the_archive_reads_each_envelope_field_as_json_has_it(tmp_path: Path) -> None:
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    projector.write(
        [Record("usage-events", 0, n, LOG_MS, None, raw) for n, (raw, _) in enumerate(ENVELOPES)]
    )
    with projector.reader() as cur:
        rows = cur.execute(
            'SELECT type, source, id, subject, data, payload FROM raw_events ORDER BY "offset"'
        ).fetchall()
    projector.close()
    assert rows == [expected for _, expected in ENVELOPES]


def test_one_month_alone_counts_an_event_in_a_midnight_that_happens_twice(
    tmp_path: Path,
) -> None:
    """Havana set its clocks back from 01:00 to 00:00 on 2020-11-01, so midnight came twice
    (04:00 and 05:00 UTC); an event at 04:30 UTC belongs to November by its own time. The
    month asked for alone must count it where the whole view does."""

    def chat(id_: str, time: str) -> bytes:
        return orjson.dumps({
            "specversion": "1.0", "id": id_, "source": "crm/chat",
            "type": "metering.chat.started", "subject": "tenant-00001", "time": time,
            "data": {"quantity": 1},
        })  # fmt: skip

    times = ["2020-10-31T12:00:00Z", "2020-11-01T03:30:00Z", "2020-11-01T04:30:00Z",
             "2020-11-01T05:30:00Z", "2020-11-30T12:00:00Z", "2020-12-01T04:59:00Z"]  # fmt: skip
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    projector.write(
        [Record("usage-events", 0, n, LOG_MS, None, chat(str(n), t)) for n, t in enumerate(times)]
    )
    tz = "America/Havana"
    with projector.reader() as cur:
        cur.execute(usage_views("usage-events", tz, default_catalog()))
        whole = cur.execute(f"{monthly_usage(NO_CUTOFF, tz)} ORDER BY ALL").fetchall()
        for month in ("2020-10", "2020-11", "2020-12"):
            alone = cur.execute(
                f"{monthly_usage(NO_CUTOFF, tz, one_month=True)} ORDER BY ALL",
                month_bounds(cur, tz, month),
            ).fetchall()
            assert alone == [row for row in whole if row[1] == month]
    projector.close()
    events = {(row[1], row[2]): row[-3] for row in whole}
    assert (events[("2020-10", "chat")], events[("2020-11", "chat")]) == (2, 4)


def test_decimal_text_keeps_cents_and_drops_padding() -> None:
    from decimal import Decimal

    assert decimal_text("amount", Decimal("32.4000")) == "32.40"
    assert decimal_text("amount", Decimal("-32.40")) == "-32.40"
    assert decimal_text("unit_price", Decimal("32.4050")) == "32.405"
    assert decimal_text("usage", Decimal("130.000000000")) == "130"
    assert decimal_text("usage", Decimal("130.500000000")) == "130.5"


def test_finance_sql_is_read_only(tmp_path: Path) -> None:
    from readmodel.finance_sql import run
    from readmodel.queries import QueryError

    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    with projector.reader() as cur:
        answer = run(cur, "SELECT 32.4::DECIMAL(18, 2) AS amount, 1 AS n", max_rows=10)
        assert (answer.columns, answer.rows, answer.truncated) == (
            ["amount", "n"],
            [["32.40", 1]],
            False,
        )
        cut = run(cur, "SELECT range AS n FROM range(5) ORDER BY n", max_rows=3)
        assert (cut.rows, cut.truncated) == ([[0], [1], [2]], True)
        # Bytes bound an answer too: rows of 1 MB, 3.5 MB allowed, so four rows come back.
        big = run(cur, "SELECT repeat('x', 1000000) AS s FROM range(100)", 10, 3_500_000)
        assert (len(big.rows), big.truncated) == (4, True)
        whole = run(cur, "SELECT repeat('x', 1000000) AS s FROM range(3)", 10, 3_500_000)
        assert (len(whole.rows), whole.truncated) == (3, False)
        plan = run(cur, "EXPLAIN SELECT * FROM invoice_lines", max_rows=10)
        assert "invoice_lines" in str(plan.rows)
        for sql, reason in [
            ("DROP TABLE invoice_lines", "only SELECT is allowed here, not DROP"),
            ("DELETE FROM invoice_lines", "only SELECT is allowed here, not DELETE"),
            ("SELECT 1; DROP TABLE invoice_lines", "send exactly one statement"),
            ("SELEC 1", "syntax error"),
            ("EXPLAIN ANALYZE DELETE FROM invoice_lines", "only a plain EXPLAIN"),
            ("EXPLAIN DELETE FROM invoice_lines", "only SELECT is allowed here"),
            ("SELECT * FROM checkpoint()", r"checkpoint\(\) is not available here"),
        ]:
            with pytest.raises(QueryError, match=reason):
                run(cur, sql, max_rows=10)
        assert cur.execute("SELECT count(*) FROM invoice_lines").fetchone() == (0,)
    projector.close()


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        ("SELECT * FROM read_text('/etc/passwd')", "file system operations are disabled"),
        ("COPY (SELECT 42) TO '{dir}/out.csv'", "file system operations are disabled"),
        ("ATTACH '{dir}/other.duckdb' AS other", "file system operations are disabled"),
        ("INSTALL httpfs", "file system operations are disabled"),
        ("LOAD httpfs", "Loading external extensions is disabled"),
        ("SET threads = 1", "the configuration has been locked"),
        ("SET enable_external_access = true", "the configuration has been locked"),
        ("RESET memory_limit", "the configuration has been locked"),
    ],
    ids=["read-file", "copy-to-file", "attach-file", "install", "load", "set", "unlock", "reset"],
)
def test_the_read_models_own_switches_refuse_what_no_read_needs(
    tmp_path: Path, sql: str, refusal: str
) -> None:
    """DuckDB itself refuses, without any judging of the text: every cursor of the read
    model's connection, finance's included, is off the file system and the settings."""
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    with projector.reader() as cur, pytest.raises(duckdb.Error, match=refusal):
        cur.execute(sql.format(dir=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm.duckdb", "rm.duckdb.wal"]
    projector.write([Record("usage-events", 0, 0, LOG_MS, b"k", b"{}")])  # still writes
    with projector.reader() as cur:
        assert cur.execute("SELECT count(*) FROM raw_events").fetchone() == (1,)
    projector.close()


def test_a_read_only_transaction_refuses_writes(tmp_path: Path) -> None:
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    with projector.reader() as cur:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        with pytest.raises(duckdb.Error, match="transaction is launched in read-only mode"):
            cur.execute("INSERT INTO month_closes SELECT * FROM month_closes UNION ALL "
                        "SELECT 'x', 'x', '2026-10', 0, 0, 0, 0")  # fmt: skip
        cur.execute("ROLLBACK")
    projector.close()


def test_a_second_projector_on_a_locked_file_opens(tmp_path: Path) -> None:
    """DuckDB hands a second connection to an open file the same, already locked, instance."""
    settings = Settings(kafka_bootstrap="unused:1")
    first = Projector(settings, PLAN, tmp_path / "rm.duckdb")
    second = Projector(settings, PLAN, tmp_path / "rm.duckdb")
    with second.reader() as cur, pytest.raises(duckdb.Error, match="disabled by configuration"):
        cur.execute("SELECT * FROM read_text('/etc/hostname')")
    second.close()
    first.close()


def test_the_memory_and_spill_limits_are_set_and_locked(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap="unused:1", duckdb_memory_limit="512MB", duckdb_temp_limit="1GiB"
    )
    projector = Projector(settings, PLAN, tmp_path / "rm.duckdb")
    with projector.reader() as cur:
        assert cur.execute("SELECT current_setting('memory_limit')").fetchone() == ("488.2 MiB",)
        spill = cur.execute("SELECT current_setting('max_temp_directory_size')").fetchone()
        assert spill == ("1.0 GiB",)
        with pytest.raises(duckdb.Error, match="lock"):
            cur.execute("SET max_temp_directory_size = '1TB'")
    projector.close()


def test_moved_records_count_once_before_and_after_their_copies_arrive(tmp_path: Path) -> None:
    """An unkeyed producer wrote a tenant's chats to partition 1; the worker copied them to
    the tenant's partition 0, one of them twice (it was restarted). The archive holds
    originals and copies; the views count each event once, before and after the copies."""

    def chat(id_: str, quantity: int) -> bytes:
        return orjson.dumps({
            "specversion": "1.0", "id": id_, "source": "crm/chat",
            "type": "metering.chat.started", "subject": "tenant-00001",
            "time": f"{MONTH}-10T12:00:00Z", "data": {"quantity": quantity},
        })  # fmt: skip

    def copy(offset: int, of: int, value: bytes) -> Record:
        headers = ((FORWARDED_FROM, f"usage-events/1/{of}".encode()),)
        return Record("usage-events", 0, offset, LOG_MS, None, value, headers)

    e1, e2, e3 = chat("1", 5), chat("2", 7), chat("3", 11)
    originals = [Record("usage-events", 1, n, LOG_MS, None, v) for n, v in enumerate([e1, e2, e1])]
    direct = [Record("usage-events", 0, 0, LOG_MS, b"tenant-00001", e3)]
    copies = [copy(1, 0, e1), copy(2, 1, e2), copy(3, 0, e1), copy(4, 2, e1)]
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")

    def chats() -> tuple[str, int, int]:
        with projector.reader() as cur:
            row = next(r for r in usage(cur, "tenant-00001", MONTH) if r["service"] == "chat")
            logged = cur.execute("SELECT count(*) FROM usage_events").fetchone()
        assert logged is not None
        return row["usage"], row["events"], logged[0]

    projector.write(originals + direct)
    assert chats() == ("23", 3, 4)  # the duplicate (third original) is logged, not counted
    projector.write(copies)
    # originals give way to their copies; the second copy of the first one is no record
    assert chats() == ("23", 3, 4)


def test_metering_sql_warns_when_the_answer_was_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from metering import query_commands

    def answer(truncated: bool) -> dict[str, object]:
        return {"columns": ["n"], "rows": [[0], [1]], "truncated": truncated}

    monkeypatch.setattr(query_commands, "cli_settings", lambda: None)
    for truncated in (True, False):
        monkeypatch.setattr(query_commands, "call_api", lambda *a, t=truncated, **k: answer(t))
        result = CliRunner().invoke(query_commands.sql, ["SELECT 1", "--format", "csv"])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["n", "0", "1"]
        assert ("only the first 2 rows" in result.stderr) is truncated


def test_the_duplicate_search_is_exact_whatever_the_hash_says(tmp_path: Path) -> None:
    """Hashing a key only narrows where duplicates are looked for: with every key hashed
    alike, or only by tenant (collisions everywhere), the months are the same, each repeat
    is left out and its first send counts. One month asked for alone equals that month of
    the whole view."""
    log = records()
    # Repeats as a retrying producer sends them: same tenant, source and id, later offsets.
    usage_records = [r for r in log if b'"metering.' in (r.value or b"")]
    repeats = [
        Record(r.topic, r.partition, len(log) + n, r.timestamp_ms, r.key, r.value)
        for n, r in enumerate(usage_records[:40:4])
    ]
    projector = Projector(Settings(kafka_bootstrap="unused:1"), PLAN, tmp_path / "rm.duckdb")
    projector.write(log + repeats)
    tz = PLAN.versions[0].billing_timezone
    exact = monthly_usage(NO_CUTOFF, tz)
    with projector.reader() as cur:
        expected = cur.execute(f"{exact} ORDER BY ALL").fetchall()
        for hashed in ("0", "hash(tenant)"):
            sql = exact.replace("hash(tenant, source, id)", hashed)
            assert sql != exact
            assert cur.execute(f"{sql} ORDER BY ALL").fetchall() == expected
        alone = cur.execute(
            f"{monthly_usage(NO_CUTOFF, tz, one_month=True)} ORDER BY ALL",
            month_bounds(cur, tz, MONTH),
        ).fetchall()
        events = cur.execute(
            "SELECT count(DISTINCT (tenant, source, id)) FROM usage_events WHERE month = ?",
            [MONTH],
        ).fetchone()
    projector.close()
    assert alone == [row for row in expected if row[1] == MONTH]
    assert sum(row[-3] for row in alone) == (events or (0,))[0]
    assert max(row[-1] or 0 for row in alone) < len(log)  # no repeat is the one counted
