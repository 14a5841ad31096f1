"""Finance SQL against hostile statements, through `POST /v1/sql` as the API serves it, on a
read model the real Projector opened and wrote. Once, a finance key could write through
EXPLAIN ANALYZE, write files, create and drop tables, change settings until a restart, read
any file of the host, and keep the CPU busy after its client had gone.

Every statement here is refused with a clear message (or answers harmlessly); afterwards
every table holds exactly what it held, no file appeared or changed, and no setting moved.
No broker: the read model is written directly and the reads skip the freshness wait."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI

from api.auth import key_hash
from api.service import ReadModelService
from billing.plan import load_plan
from metering.generate import generate_month
from readmodel.rows import Record
from runtime.settings import ApiKey, Settings
from schemas.records import DeadLetter, InvoiceLine, MonthClosed, Provenance, ThresholdCrossed
from server.app import create_app
from streams.projector import Projector

PLAN = load_plan()
KEY = "finance-secret"
ROOT = Path(__file__).parents[2]
MONTH, INVOICE_MONTH = "2026-10", "2026-11"  # the months the READMEs' examples ask for
TIMEOUT = 2.0
LOG_MS = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1000)
CROSS_JOIN = "SELECT sum(a.range * b.range) FROM range(3000000) a, range(3000000) b"
FILE_REFUSED = "file system operations are disabled"

# (test id, statement, status, what the answer says). `{loot}` is a directory holding a CSV,
# a JSON and a Parquet file, so that a read that got through would find something.
CORPUS = [
    # EXPLAIN ANALYZE runs what it explains: it wrote, and wrote files.
    ("explain-analyze-update", "EXPLAIN ANALYZE UPDATE invoice_lines SET amount = 0.01 "
     "WHERE tenant = 'tenant-00001'", 400, "only a plain EXPLAIN"),
    ("explain-analyze-insert", "EXPLAIN ANALYZE INSERT INTO month_closes "
     "SELECT * FROM month_closes", 400, "only a plain EXPLAIN"),
    ("explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM invoice_lines", 400,
     "only a plain EXPLAIN"),
    ("explain-analyze-create", "EXPLAIN ANALYZE CREATE TABLE loot AS FROM invoice_lines", 400,
     "only a plain EXPLAIN"),
    ("explain-analyze-drop", "EXPLAIN ANALYZE DROP TABLE invoice_lines", 400,
     "only a plain EXPLAIN"),
    ("explain-analyze-alter", "EXPLAIN ANALYZE ALTER TABLE invoice_lines ADD COLUMN evil INT",
     400, "only a plain EXPLAIN"),
    ("explain-analyze-copy", "EXPLAIN ANALYZE COPY (SELECT 42) TO '{loot}/out.csv'", 400,
     "only a plain EXPLAIN"),
    ("explain-analyze-checkpoint", "EXPLAIN ANALYZE CHECKPOINT", 400, "only a plain EXPLAIN"),
    ("explain-analyze-attach", "EXPLAIN ANALYZE ATTACH '{loot}/evil.duckdb' AS evil", 400,
     "syntax error"),
    ("explain-lowercase-comment", "/* plan */ explain -- just the plan\n analyze "
     "DELETE FROM invoice_lines", 400, "only a plain EXPLAIN"),
    ("explain-options", "EXPLAIN (FORMAT json) DELETE FROM invoice_lines", 400,
     "only a plain EXPLAIN"),
    ("explain-of-a-write", "EXPLAIN UPDATE invoice_lines SET amount = 0", 400,
     "only SELECT is allowed here"),
    # Writes, DDL and maintenance ran.
    ("create-table", "CREATE TABLE loot (a INT)", 400, "not CREATE"),
    ("insert", "INSERT INTO invoice_lines SELECT * FROM invoice_lines", 400, "not INSERT"),
    ("drop-table", "DROP TABLE invoice_lines", 400, "not DROP"),
    ("checkpoint", "CHECKPOINT", 400, "not CALL"),
    ("vacuum", "VACUUM", 400, "not VACUUM"),
    ("copy-to-file", "COPY invoice_lines TO '{loot}/lines.csv'", 400, "not COPY"),
    ("begin", "BEGIN TRANSACTION", 400, "not TRANSACTION"),
    ("commit", "COMMIT", 400, "not TRANSACTION"),
    ("rollback", "ROLLBACK", 400, "not TRANSACTION"),
    ("call-checkpoint", "CALL checkpoint()", 400, "not CALL"),
    ("select-checkpoint", "SELECT * FROM checkpoint()", 400, "checkpoint() is not available"),
    ("force-checkpoint", "SELECT * FROM force_checkpoint()", 400,
     "force_checkpoint() is not available"),
    ("nextval", "SELECT nextval('invoice_numbers')", 400, "nextval() is not available"),
    ("setval-in-subquery", "SELECT (SELECT setval('invoice_numbers', 100)) AS n", 400,
     "setval() is not available"),
    # Settings changed, one of them until a restart.
    ("set-threads", "SET threads = 1", 400, "not SET"),
    ("set-external-access-off", "SET enable_external_access = false", 400, "not SET"),
    ("set-external-access-on", "SET enable_external_access = true", 400, "not SET"),
    ("reset", "RESET threads", 400, "not SET"),
    ("pragma-threads", "PRAGMA threads = 1", 400, "not SET"),
    ("pragma-function", "SELECT * FROM pragma_database_size()", 400,
     "pragma_database_size() is not available"),
    ("current-setting", "SELECT current_setting('enable_external_access') AS on", 200,
     "[[false]]"),
    ("settings-table", "SELECT * FROM duckdb_settings()", 400,
     "duckdb_settings() is not available"),
    ("enable-logging", "SELECT * FROM enable_logging()", 400, "enable_logging() is not"),
    ("enable-profiling", "SELECT * FROM enable_profiling()", 400, "enable_profiling() is not"),
    ("secrets", "SELECT * FROM duckdb_secrets()", 400, "duckdb_secrets() is not available"),
    ("which-secret", "SELECT * FROM which_secret('s3://bucket/x', 's3')", 400,
     "which_secret() is not available"),
    # Files of the host were read.
    ("read-text-passwd", "SELECT * FROM read_text('/etc/passwd')", 400,
     "read_text() is not available"),
    ("read-text-environ", "SELECT * FROM read_text('/proc/self/environ')", 400,
     "read_text() is not available"),
    ("read-csv", "SELECT * FROM read_csv('{loot}/x.csv')", 400, "read_csv() is not"),
    ("read-csv-auto", "SELECT * FROM read_csv_auto('{loot}/x.csv')", 400, "read_csv_auto()"),
    ("read-blob", "SELECT * FROM read_blob('/etc/passwd')", 400, "read_blob() is not"),
    ("glob", "SELECT * FROM glob('/*')", 400, "glob() is not available"),
    ("read-parquet", "SELECT * FROM read_parquet('{loot}/file.parquet')", 400, "read_parquet()"),
    ("read-json", "SELECT * FROM read_json('{loot}/data.json')", 400, "read_json() is not"),
    ("read-json-auto", "SELECT * FROM read_json_auto('{loot}/data.json')", 400,
     "read_json_auto()"),
    ("sniff-csv", "SELECT * FROM sniff_csv('{loot}/x.csv')", 400, "sniff_csv() is not"),
    ("scan-path-passwd", "SELECT * FROM '/etc/passwd'", 400, "/etc/passwd does not exist"),
    ("scan-relative-csv", "SELECT * FROM 'x.csv'", 400, FILE_REFUSED),
    ("scan-relative-parquet", "SELECT * FROM 'file.parquet'", 400, FILE_REFUSED),
    ("scan-loot-csv", "SELECT * FROM '{loot}/x.csv'", 400, FILE_REFUSED),
    ("scan-loot-parquet", "FROM '{loot}/file.parquet'", 400, FILE_REFUSED),
    ("read-in-cte", "WITH f AS (SELECT * FROM read_text('/etc/passwd')) SELECT * FROM f", 400,
     "read_text() is not available"),
    ("read-in-subquery", "SELECT (SELECT content FROM read_text('/etc/passwd')) AS c", 400,
     "read_text() is not available"),
    ("read-in-exists", "SELECT 1 WHERE EXISTS (SELECT * FROM glob('/*'))", 400,
     "glob() is not available"),
    ("read-in-join", "SELECT * FROM invoice_lines, read_csv('{loot}/x.csv')", 400,
     "read_csv() is not"),
    ("schema-qualified", "SELECT * FROM main.READ_TEXT('/etc/passwd')", 400,
     "read_text() is not available"),
    ("scan-in-cte", "WITH f AS (FROM '{loot}/x.csv') SELECT * FROM f", 400, FILE_REFUSED),
    ("getenv", "SELECT getenv('HOME')", 400, "getenv does not exist"),
    ("python-object", "SELECT * FROM batch", 400, "batch does not exist"),
    # SQL run from a string, out of the parser's sight.
    ("query-drop", "SELECT * FROM query('DROP TABLE invoice_lines')", 400, "query() is not"),
    ("query-read", "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')", 400,
     "query() is not available"),
    ("query-table", "SELECT * FROM query_table('invoice_lines')", 400, "query_table() is not"),
    ("serialized-sql", "SELECT * FROM json_execute_serialized_sql("
     "json_serialize_sql('SELECT * FROM checkpoint()'))", 400, "json_execute_serialized_sql()"),
    # Other databases, extensions, the catalog.
    ("attach-memory", "ATTACH ':memory:' AS scratch", 400, "not ATTACH"),
    ("attach-file", "ATTACH '{loot}/evil.duckdb' AS evil", 400, "not ATTACH"),
    ("detach", "DETACH rm", 400, "not DETACH"),
    ("use", "USE system", 400, "not SET"),
    ("install", "INSTALL httpfs", 400, "not LOAD"),
    ("load", "LOAD httpfs", 400, "not LOAD"),
    ("copy-from-database", "COPY FROM DATABASE rm TO scratch", 400, "not PRAGMA"),
    ("export-database", "EXPORT DATABASE '{loot}/export'", 400, "not EXPORT"),
    ("import-database", "IMPORT DATABASE '{loot}'", 400, "not PRAGMA"),
    # More than one statement, and comments that hide one.
    ("two-statements", "SELECT 1; DROP TABLE invoice_lines", 400, "send exactly one statement"),
    ("after-line-comment", "SELECT 1 -- harmless\n; DELETE FROM invoice_lines", 400,
     "send exactly one statement"),
    ("inside-block-comment", "SELECT 1 AS one /* ; DROP TABLE invoice_lines */", 200, "[[1]]"),
    ("nothing", "-- only a comment", 400, "send exactly one statement"),
    ("deeply-nested", "SELECT " + "abs(" * 990 + "1" + ")" * 990, 400,
     "nested too deeply"),
    # CPU until a restart.
    ("cross-join", CROSS_JOIN, 504, "METERING_SQL_TIMEOUT"),
]  # fmt: skip


@dataclass
class ReadModel:
    app: FastAPI
    projector: Projector
    data_dir: Path
    loot: Path

    def post(self, sql: str) -> httpx.Response:
        async def ask() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.post(
                    "/v1/sql?consistent=false", json={"sql": sql},
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                )  # fmt: skip

        return asyncio.run(ask())

    def state(self) -> dict[str, Any]:
        """Every table's rows, the catalog, the settings, and every file with its bytes."""
        with self.projector.reader() as cur:
            tables = [
                t for (t,) in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            ]
            found: dict[str, Any] = {
                table: cur.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()
                for table in sorted(tables)
            }
            for catalog in ("duckdb_tables", "duckdb_views", "duckdb_sequences", "duckdb_settings"):
                found[catalog] = cur.execute(f"SELECT * FROM {catalog}() ORDER BY ALL").fetchall()
        found["files"] = {
            str(path.relative_to(self.data_dir)): (path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(self.data_dir.rglob("*"))
            if path.is_file()
        }
        return found


def records() -> list[Record]:
    """A month of usage, its invoice lines, a crossing, a close and a dead letter."""
    found = [
        Record("usage-events", 0, n, LOG_MS, b"k", orjson.dumps(event))
        for n, event in enumerate(generate_month(MONTH, tenants=2, seed=3))
    ]
    for n, tenant in enumerate(("tenant-00001", "tenant-00002")):
        line = InvoiceLine(
            id=f"line-{n}", invoice_month=INVOICE_MONTH, usage_month=MONTH, tenant=tenant,
            service="form", kind="overage", usage=Decimal(2500), unit="submissions",
            users=40, included=Decimal(1000), packages=2, unit_price=Decimal("32.40"),
            amount=Decimal("64.80"), currency="EUR", plan_version="2026",
            provenance=Provenance(events=25, partition=0, first_offset=0, last_offset=24,
                                  close_id="close-1"),
        )  # fmt: skip
        found.append(Record("invoice-lines", 0, n, LOG_MS, tenant.encode(), line_bytes(line)))
    crossing = ThresholdCrossed(
        id="c1", tenant="tenant-00001", service="form", usage_month=MONTH, level="package",
        package=2, usage=2000, included=1000, users=40, crossed_by="crm/1",
        crossed_at=dt.datetime(2026, 10, 9, tzinfo=dt.UTC),
    )  # fmt: skip
    closed = MonthClosed(
        id="m1", close_id="close-1", month=MONTH, partition=0, tenants=2, lines=2,
        amount=Decimal("129.60"),
    )  # fmt: skip
    letter = DeadLetter(
        id="usage-events/0/99", topic="usage-events", partition=0, offset=99,
        reason="invalid_field", field="data.quantity", detail="zero", payload="{}",
    )  # fmt: skip
    found += [
        Record("threshold-crossings", 0, 0, LOG_MS, b"t", line_bytes(crossing)),
        Record("month-closes", 0, 0, LOG_MS, b"t", line_bytes(closed)),
        Record("dead-letters", 0, 0, LOG_MS, b"t", line_bytes(letter)),
    ]
    return found


def line_bytes(model: Any) -> bytes:
    return str(model.model_dump_json()).encode()


@pytest.fixture(scope="module")
def read_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadModel]:
    data_dir = tmp_path_factory.mktemp("finance-sql")
    loot = data_dir / "loot"
    loot.mkdir()
    (loot / "x.csv").write_text("secret\nhunter2\n")
    (loot / "data.json").write_text('{"secret": "hunter2"}\n')
    pq.write_table(pa.table({"secret": ["hunter2"]}), loot / "file.parquet")
    settings = Settings(
        kafka_bootstrap="unused:1", data_dir=data_dir, duckdb_path=data_dir / "rm.duckdb",
        api_keys=[ApiKey(role="finance", sha256=key_hash(KEY))], sql_timeout=TIMEOUT,
        sql_max_rows=1000,
    )  # fmt: skip
    projector = Projector(settings, PLAN, data_dir / "rm.duckdb")
    projector.write(records())
    projector.con.execute("CREATE SEQUENCE invoice_numbers")
    service = ReadModelService(settings, PLAN)
    service.projector = projector  # no broker: the reads below skip the freshness wait
    yield ReadModel(create_app(service), projector, data_dir, loot)
    projector.close()


@pytest.mark.parametrize(
    ("sql", "status", "said"),
    [pytest.param(sql, status, said, id=name) for name, sql, status, said in CORPUS],
)
def test_hostile_sql_is_refused_and_changes_nothing(
    read_model: ReadModel, sql: str, status: int, said: str
) -> None:
    before = read_model.state()
    answer = read_model.post(sql.format(loot=read_model.loot))
    assert answer.status_code == status, answer.text
    if status == 200:
        assert orjson.dumps(answer.json()["rows"]).decode() == said
    else:
        assert said in answer.json()["detail"]
    assert read_model.state() == before


def test_the_corpus_covers_every_finding() -> None:
    assert len(CORPUS) >= 40
    assert len({name for name, *_ in CORPUS}) == len(CORPUS)


def readme_queries() -> list[str]:
    """The example queries of README.md (`metering sql "..."`) and of the read model's own
    README (its ```sql block)."""
    top = (ROOT / "README.md").read_text()
    found = re.findall(r'metering sql "([^"]+)"', top)
    own = (ROOT / "readmodel/README.md").read_text()
    block = own.split("## Example queries", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    found += [q.strip() for q in block.split(";") if q.strip()]
    assert len(found) >= 8, "the READMEs' example queries moved: update readme_queries()"
    return found


@pytest.mark.parametrize(
    "sql", [pytest.param(sql, id=f"example-{n}") for n, sql in enumerate(readme_queries(), 1)]
)
def test_the_readme_examples_still_answer(read_model: ReadModel, sql: str) -> None:
    """Each example answers through the API what DuckDB answers to it directly."""
    with read_model.projector.reader() as cur:
        result = cur.execute(sql)
        direct = ([d[0] for d in result.description or ()], len(result.fetchall()))
    answer = read_model.post(sql)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["columns"], len(body["rows"]), body["truncated"]) == (*direct, False)
    if f"'{INVOICE_MONTH}'" in sql or "'tenant-00001'" in sql:
        assert body["rows"], "the example finds the lines the read model holds"


def test_a_large_answer_is_cut_and_says_so(read_model: ReadModel) -> None:
    settings = read_model.app.state.service.settings
    answer = read_model.post(f"SELECT range AS n FROM range({settings.sql_max_rows + 5})")
    assert answer.status_code == 200
    body = answer.json()
    assert (len(body["rows"]), body["truncated"]) == (settings.sql_max_rows, True)


def test_blobs_intervals_and_decimals_in_lists_answer_as_text(read_model: ReadModel) -> None:
    answer = read_model.post(
        "SELECT 'a\\xFFb'::BLOB AS b, INTERVAL 36 HOUR AS i, [1.5::DECIMAL(4, 2)] AS l, "
        "amount FROM invoice_lines ORDER BY id LIMIT 1"
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [["a\\xffb", "1 day, 12:00:00", ["1.50"], "64.80"]]
    # Inside lists and structs too (these once answered 500).
    nested = read_model.post(
        "SELECT ['a'::BLOB] AS b, [INTERVAL 1 DAY] AS i, ['10:00:00+01'::TIMETZ] AS t, "
        "{'at': '10:00'::TIME, 'amount': 1.5::DECIMAL(4, 2)} AS s"
    )
    assert nested.status_code == 200, nested.text
    assert nested.json()["rows"] == [
        [["a"], ["1 day, 0:00:00"], ["10:00:00+01:00"], {"at": "10:00:00", "amount": "1.50"}]
    ]
