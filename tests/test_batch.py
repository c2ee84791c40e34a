"""Batched data migrations (``-- harness:batch``): the directive, the rewrite, apply, resume and rehearsal.

Database tests run on real PostgreSQL targets (``db_dsn``); the resume test
kills a ``python -m harness.cli apply`` child process with SIGKILL between
batches and applies again.
"""

from __future__ import annotations

import re

import os
import signal
import textwrap
from pathlib import Path

import psycopg
import pytest
from pglast import ast, enums, parser

from harness.batch import DEFAULT_SIZE, BatchState, resolve_target, run_batched
from harness.errors import ConfigError, SourceError
from harness.postgres import Server
from harness.rehearsal import Rehearsal
from harness.snapshot import table_fingerprints
from harness.sources import load_migrations
from tests.fix_db import execute, history_versions, query
from tests.projects import apply, harness_process, load, wait_until, write_project

ROWS = 20_000


def _load(tmp_path: Path, files: dict[str, str]) -> list:  # type: ignore[type-arg]
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return load_migrations(folder)


# ---------------------------------------------------------------------- the directive


def test_directive_binds_to_the_statement_below_and_rewrites_its_where(tmp_path: Path) -> None:
    [migration] = _load(tmp_path, {"1_backfill.sql": """
        ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;
        -- harness:batch key=id size=5000 pause=50ms
        -- (a comment between the directive and the statement is fine)
        UPDATE public.accounts AS a SET plan = 'free' WHERE a.plan IS NULL OR a.plan = '';
        -- harness:batch key="Ref"
        DELETE FROM ONLY audit WHERE kind = 'noise';
    """})
    assert not migration.transactional  # batches commit on their own
    update, delete = migration.batches
    assert (update.index, update.line, update.statement_line) == (1, 2, 4)
    assert (update.kind, update.key, update.size, update.pause) == ("UPDATE", "id", 5000, 0.05)
    assert (update.schema, update.table, update.only) == ("public", "accounts", False)
    assert (delete.kind, delete.key, delete.size, delete.pause, delete.only) == ("DELETE", "Ref", DEFAULT_SIZE, 0.0, True)

    # The range is ANDed to the original WHERE on the parse tree: the OR stays grouped.
    where = parser.parse_sql(update.next_sql)[0].stmt.whereClause
    assert isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR
    original, lower, upper = where.args
    assert isinstance(original, ast.BoolExpr) and original.boolop == enums.BoolExprType.OR_EXPR
    assert [f.sval for f in lower.lexpr.fields] == ["a", "id"] and lower.name[0].sval == ">"
    assert lower.rexpr.number == 1 and upper.name[0].sval == "<=" and upper.rexpr.number == 2
    assert update.first_sql.endswith("AND a.id <= $1")
    assert delete.next_sql == 'DELETE FROM ONLY audit WHERE kind = \'noise\' AND audit."Ref" > $1 AND audit."Ref" <= $2'


def test_directive_key_is_folded_like_an_identifier(tmp_path: Path) -> None:
    [migration] = _load(tmp_path, {"1_a.sql": "-- harness:batch key=ID size=10\nDELETE FROM t;\n"})
    assert migration.batches[0].key == "id"
    assert migration.batches[0].first_sql == "DELETE FROM t WHERE t.id <= $1"


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("-- harness:batch key=id chunk=5\nUPDATE t SET n = 1;\n", ":1", "unknown option 'chunk'"),
        ("-- harness:batch key=id size=0\nUPDATE t SET n = 1;\n", ":1", "size=0 must be a whole number of rows > 0"),
        ("-- harness:batch key=id size=-5\nUPDATE t SET n = 1;\n", ":1", "size=-5 must be a whole number"),
        ("-- harness:batch key=id size=lots\nUPDATE t SET n = 1;\n", ":1", "size=lots must be a whole number"),
        ("-- harness:batch size=10\nUPDATE t SET n = 1;\n", ":1", "key= is required"),
        ("-- harness:batch key=id pause=soon\nUPDATE t SET n = 1;\n", ":1", "pause=soon is not a duration"),
        ("-- harness:batch key=id size\nUPDATE t SET n = 1;\n", ":1", "option size needs a value"),
        ("-- harness:batch key=id key=n\nUPDATE t SET n = 1;\n", ":1", "option key is given twice"),
        ("-- harness:batch key=a-b\nUPDATE t SET n = 1;\n", ":1", "key=a-b is not a column name"),
        ("SELECT 1;\n-- harness:batch key=id\nINSERT INTO t VALUES (1);\n", ":3:1",
         "applies to one UPDATE or DELETE, but the statement below it is Insert"),
        ("-- harness:batch key=id\nUPDATE t SET n = 1, id = id + 1;\n", ":2:1", "changes the key column id"),
        ("-- harness:batch key=id\nUPDATE t SET (n, id) = (1, 2);\n", ":2:1", "changes the key column id"),
        ("-- harness:batch key=id\nDELETE FROM t WHERE CURRENT OF c;\n", ":2:1", "WHERE CURRENT OF"),
        ("-- harness:batch key=id\nWITH d AS (DELETE FROM u RETURNING id) UPDATE t SET n = 1 FROM d;\n", ":2:1",
         "the WITH query d changes data"),
        ("UPDATE t SET n = 1; -- harness:batch key=id\n", ":1", "on a line of its own"),
        ("-- harness:batch key=id\n\nUPDATE t SET n = 1;\n", ":1", "not directly above a statement"),
        ("UPDATE t SET n = 1;\n-- harness:batch key=id\n", ":2", "not directly above a statement"),
        ("UPDATE t SET n = 1\n-- harness:batch key=id\nWHERE true;\n", ":2", "inside a statement"),
        ("-- harness:batch key=id\n-- harness:batch key=n\nUPDATE t SET n = 1;\n", ":2", "a second harness:batch"),
        ("BEGIN;\n-- harness:batch key=id\nUPDATE t SET n = 1;\nCOMMIT;\n", ":2",
         "cannot be inside the file's own BEGIN"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 and "\n" not in v else None,
)
def test_bad_directives_name_file_and_line(tmp_path: Path, text: str, where: str, fragment: str) -> None:
    # A bad directive fails its own migration (its apply item), not the whole folder.
    [migration] = _load(tmp_path, {"1_bad.sql": text})
    message = migration.error or ""
    assert f"1_bad.sql{where}" in message, message
    assert fragment in message, message
    assert migration.statements == () and migration.batches == ()


def test_directive_in_a_down_migration_is_refused(tmp_path: Path) -> None:
    [migration] = _load(tmp_path, {"1_a.sql": "UPDATE t SET n = 1;\n",
                                   "1_a.down.sql": "-- harness:batch key=id\nUPDATE t SET n = 0;\n"})
    assert migration.error is None and not migration.reversible
    assert re.search(r"1_a\.down\.sql:1: harness:batch in a down migration", migration.down_error or "")


@pytest.mark.parametrize(
    ("ddl", "fragment"),
    [
        ("CREATE TABLE t (id int, n int)", "key column id of public.t may be NULL"),
        ("CREATE TABLE t (key int PRIMARY KEY, n int)", "key=id is not a column of public.t (its columns: key, n)"),
    ],
)
def test_key_must_be_a_not_null_column(db_dsn: str, tmp_path: Path, ddl: str, fragment: str) -> None:
    [migration] = _load(tmp_path, {"1_a.sql": "-- harness:batch key=id\nUPDATE t SET n = 1;\n"})
    execute(db_dsn, ddl)
    with psycopg.connect(db_dsn, autocommit=True) as conn, pytest.raises(SourceError) as info:
        resolve_target(conn, migration.batches[0])
    assert "1_a.sql:1: harness:batch" in str(info.value) and fragment in str(info.value)


# ---------------------------------------------------------------------- batched equals unbatched


SEEDS = {
    "int": (
        "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, label text NOT NULL);"
        # ids with gaps: ranges are over key values, not positions
        f"INSERT INTO t (id, label) SELECT g * 3, 'row ' || g FROM generate_series(1, {ROWS}) g;"
    ),
    "text": (
        "CREATE TABLE t (id text PRIMARY KEY, n int NOT NULL DEFAULT 0, label text NOT NULL);"
        f"INSERT INTO t (id, label) SELECT md5(g::text), 'row ' || g FROM generate_series(1, {ROWS}) g;"
    ),
}

STATEMENTS = {
    "update": "UPDATE t SET n = n + 1, label = upper(label) WHERE length(label) % 3 <> 0 OR label LIKE '%7'",
    "delete": "DELETE FROM t WHERE length(label) % 2 = 0 AND label NOT LIKE '%1'",
}


@pytest.mark.parametrize("key_type", sorted(SEEDS))
@pytest.mark.parametrize("kind", sorted(STATEMENTS))
def test_batched_statement_equals_unbatched(pg_server: Server, db_dsn: str, tmp_path: Path, key_type: str,
                                            kind: str) -> None:
    statement = STATEMENTS[kind]
    plan_path = write_project(tmp_path, {"1_backfill.sql": f"-- harness:batch key=id size=1000\n{statement};\n"})
    execute(db_dsn, SEEDS[key_type])
    reference = f"t_{os.urandom(6).hex()}"
    pg_server.create_database(reference)
    try:
        with pg_server.connect(reference, autocommit=True) as conn:
            conn.execute(SEEDS[key_type])  # type: ignore[arg-type]
            conn.execute(statement)  # type: ignore[arg-type]
            expected = table_fingerprints(conn, ["public.t"])
    finally:
        pg_server.drop_database(reference)

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["1_backfill"]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert table_fingerprints(conn, ["public.t"]) == expected
    assert "batch 1: " in out and "batch 10: " in out and "done: 20 batches" in out
    assert query(db_dsn, "SELECT count(*) FROM harness.batch_progress") == [(0,)]
    assert query(db_dsn, "SELECT count(*) FROM harness.apply_progress") == [(0,)]
    assert history_versions(db_dsn) == ["1"]


def test_each_batch_is_its_own_transaction(db_dsn: str, tmp_path: Path) -> None:
    execute(db_dsn, SEEDS["int"] + "CREATE TABLE runs (what text, xid xid8 DEFAULT pg_current_xact_id());")
    plan_path = write_project(tmp_path, {"1_backfill.sql": f"""
        INSERT INTO runs (what) VALUES ('before 1');
        INSERT INTO runs (what) VALUES ('before 2');
        -- harness:batch key=id size=1000
        {STATEMENTS["update"]};
        INSERT INTO runs (what) VALUES ('after');
    """})
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    updated = query(db_dsn, "SELECT count(*), count(DISTINCT xmin::text) FROM t WHERE n = 1")[0]
    assert updated[0] > ROWS // 2 and updated[1] == ROWS // 1000  # one transaction per batch of 1000 keys
    runs = query(db_dsn, "SELECT what, xid::text FROM runs ORDER BY what")
    assert [r[0] for r in runs] == ["after", "before 1", "before 2"]
    assert runs[1][1] == runs[2][1] != runs[0][1]  # the statements before it: one transaction; the rest: another
    batch_xids = {r[0] for r in query(db_dsn, "SELECT DISTINCT xmin::text FROM t WHERE n = 1")}
    assert not batch_xids & {r[1] for r in runs}

    # The JSON-lines log shows the progress; the dry run says what each batch runs.
    assert result is not None and result.log_path is not None
    log = result.log_path.read_text()
    assert '"event": "batch"' in log and '"event": "batched"' in log
    execute(db_dsn, "DELETE FROM harness.schema_migrations")
    dry, out, error = apply(load(plan_path, db_dsn), dry_run=True)
    assert error is None and dry is not None and dry.ok
    text = "\n".join(dry.dry_run_plan)
    assert "1_backfill.sql:4: UPDATE of t in batches of 1000 by id" in text
    assert "AND t.id > $1 AND t.id <= $2" in text and "SET LOCAL lock_timeout = '400ms';" in text


def test_single_transaction_refuses_a_batched_migration(db_dsn: str, tmp_path: Path) -> None:
    execute(db_dsn, SEEDS["int"])
    plan_path = write_project(
        tmp_path, {"1_backfill.sql": f"-- harness:batch key=id\n{STATEMENTS['update']};\n"},
        guards="guards: {transaction: single}\n",
    )
    _, _, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, ConfigError) and "harness:batch" in str(error)
    assert query(db_dsn, "SELECT count(*) FROM t WHERE n > 0") == [(0,)]


def test_a_failing_batch_says_what_is_committed(db_dsn: str, tmp_path: Path) -> None:
    execute(db_dsn, "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, d int NOT NULL DEFAULT 1);"
                    "INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g; UPDATE t SET d = 0 WHERE id = 55;")
    plan_path = write_project(tmp_path, {"1_divide.sql": "-- harness:batch key=id size=10\nUPDATE t SET n = 10 / d;\n"})
    _, _, error = apply(load(plan_path, db_dsn))
    assert error is not None and error.exit_code == 1
    text = str(error)
    assert "1_divide.sql:2:1" in text and "DivisionByZero" in text
    assert "in batch 6 of the batched statement at line 2" in text
    assert "5 batches (50 rows, id <= 50) are committed" in text and "harness.batch_progress" in text
    assert query(db_dsn, "SELECT count(*) FROM t WHERE n = 10") == [(50,)]
    assert query(db_dsn, "SELECT last_key, rows, batches FROM harness.batch_progress") == [("50", 50, 5)]


# ---------------------------------------------------------------------- interrupted and resumed


def test_sigkill_between_batches_then_resume_updates_every_row_once(db_dsn: str, tmp_path: Path) -> None:
    rows = 2000
    execute(db_dsn, f"""
        CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
        INSERT INTO t (id) SELECT g FROM generate_series(1, {rows}) g;
        CREATE TABLE runs (what text);
    """)
    plan_path = write_project(tmp_path, {"1_backfill.sql": """
        INSERT INTO runs VALUES ('before');
        -- harness:batch key=id size=100 pause=150ms
        UPDATE t SET n = n + 1;
        INSERT INTO runs VALUES ('after');
    """})

    def batches_done() -> int:
        found = query(db_dsn, "SELECT to_regclass('harness.batch_progress') IS NOT NULL")[0][0]
        return query(db_dsn, "SELECT coalesce(max(batches), 0) FROM harness.batch_progress")[0][0] if found else 0

    proc = harness_process(["apply", str(plan_path)], db_dsn, tmp_path)
    try:
        wait_until(lambda: batches_done() >= 3, "three committed batches", timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # Consistent after the kill: exactly the recorded batches are done, the migration is not recorded.
    done, last_key, recorded = query(db_dsn, "SELECT batches, last_key, rows FROM harness.batch_progress")[0]
    assert 3 <= done < rows // 100 and last_key == str(done * 100) and recorded == done * 100
    wait_until(lambda: query(db_dsn, "SELECT count(*) FROM t WHERE n = 1")[0][0] == recorded,
               "the server to roll back a batch in flight")
    assert query(db_dsn, "SELECT count(*) FROM t WHERE n > 1") == [(0,)]
    assert history_versions(db_dsn) == []

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert f"resuming after {done} batches ({recorded} rows, id <= {last_key})" in out
    assert result is not None and result.applied == ["1_backfill"]
    assert query(db_dsn, "SELECT n, count(*) FROM t GROUP BY n") == [(1, rows)]  # every row exactly once
    assert query(db_dsn, "SELECT what FROM runs ORDER BY what") == [("after",), ("before",)]
    assert query(db_dsn, "SELECT count(*) FROM harness.batch_progress") == [(0,)]
    assert history_versions(db_dsn) == ["1"]


# ---------------------------------------------------------------------- rehearsal


def test_run_batched_keeps_progress_in_memory(db_dsn: str, tmp_path: Path) -> None:
    [migration] = _load(tmp_path, {"1_a.sql": "-- harness:batch key=id size=7\nUPDATE t SET n = n + 1;\n"})
    execute(db_dsn, "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);"
                    "INSERT INTO t (id) SELECT g FROM generate_series(1, 50) g;")
    seen: list[BatchState] = []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        final = run_batched(conn, migration.batches[0], on_batch=seen.append)
    assert (final.batches, final.rows, final.last_key) == (8, 50, "50")
    assert [s.last_key for s in seen] == ["7", "14", "21", "28", "35", "42", "49", "50"]


def _rehearse(tmp_path: Path, pg_server: Server, migrations: dict[str, str], seed: str) -> dict[str, tuple[str, str]]:
    plan_path = write_project(tmp_path, migrations, seed=seed)
    plan = load(plan_path, "unused")
    with Rehearsal(plan, pg_server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


def test_rehearsal_batch_item_passes_when_batches_equal_one_statement(tmp_path: Path, pg_server: Server) -> None:
    seed = "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);\n" \
           "INSERT INTO t (id) SELECT g FROM generate_series(1, 2500) g;\n"
    results = _rehearse(tmp_path, pg_server, {
        "1_backfill.sql": "-- harness:batch key=id size=100 pause=1s\nUPDATE t SET n = n + 1 WHERE id % 2 = 0;\n",
    }, seed)
    assert list(results) == ["1_backfill::apply", "1_backfill::batch", "1_backfill::locks"]
    status, message = results["1_backfill::batch"]
    assert status == "passed", message
    assert "25 batches changed 1250 rows" in message and "equal the unbatched run" in message


@pytest.mark.parametrize(
    ("migration", "fragment"),
    [
        # Each batch sees what the previous ones wrote: not what one statement does.
        ("-- harness:batch key=id size=100\nUPDATE t SET n = (SELECT max(n) FROM t) + 1;\n",
         "leaves other data than run as one statement"),
        ("-- harness:batch key=m\nUPDATE t SET n = 1 WHERE id > 10;\n", "key column m of public.t may be NULL"),
    ],
)
def test_rehearsal_batch_item_fails_when_batches_differ(tmp_path: Path, pg_server: Server, migration: str,
                                                         fragment: str) -> None:
    seed = "CREATE TABLE t (id int PRIMARY KEY, n int, m int);\n" \
           "INSERT INTO t (id, n) SELECT g, 0 FROM generate_series(1, 500) g;\n"
    results = _rehearse(tmp_path, pg_server, {"1_backfill.sql": migration}, seed)
    assert results["1_backfill::apply"][0] == "passed"
    status, message = results["1_backfill::batch"]
    assert status == "failed" and fragment in message, message
