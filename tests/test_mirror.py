"""``history: {mirror: <tool>}``: apply and rollback keep another tool's history table in step (harness.mirror).

The round trip is the test: apply a sample folder (tests/data/layouts) with
the mirror on a real database, then read the foreign table back the way
``harness adopt`` reads it (:func:`harness.adopt.read_foreign_histories` and
:func:`~harness.adopt.match_history`): every applied migration is matched, no
problems (checksums equal); after the harness rolls the last migration back
the foreign history no longer lists it.  The rows are also compared with what
each tool's own source writes, and where the tool's own code is installed
(dbmate's CLI, drizzle-orm's migrator, from npm) it is asked itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from harness import adopt, history
from harness.errors import CheckFailed, GuardError, MigrationError
from harness.mirror import TOOLS, Mirror
from harness.plan import MIRROR_TOOLS
from harness.sources import load_migrations
from tests.fix_db import history_versions, query
from tests.projects import apply, load, rehearse, write_project

DATA = Path(__file__).parent / "data" / "layouts"

# tool: (layout, the last migration's files (held back, then rolled back), files added only at the end)
CASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "diesel": ("diesel", ("2017-09-25-120000_add_name",), ()),
    "golang-migrate": ("golang-migrate", ("000010_add_name.up.sql", "000010_add_name.down.sql"), ()),
    "goose": ("goose", ("00002_index_users_email.sql",), ()),
    "dbmate": ("dbmate", ("20240102090000_index_users_email.sql",), ()),
    # The repeatable selects the column V2 adds, and has no down: it comes last.
    "flyway": ("flyway", ("V2__add_name.sql", "U2__add_name.sql"), ("R__active_users_view.sql",)),
    "supabase": ("native", ("20240102090000_index_users_email.sql", "20240102090000_index_users_email.down.sql"),
                 ()),
    "sqlx": ("sqlx", ("20240102090000_index_users_email.up.sql", "20240102090000_index_users_email.down.sql"), ()),
}
# Tools without down migrations: the harness cannot run a down, so the writer pair is driven directly.
NO_DOWN = {"drizzle": "drizzle", "prisma": "prisma"}

ROLLBACK = "health: {checks: [{name: never, sql: 'SELECT false'}], on_failure: rollback}\n"

NODE_MODULES = Path(os.environ.get("HARNESS_TOOLS_NODE_MODULES",
                                   Path.home() / ".cache" / "harness-tools" / "node_modules"))


def _plan(root: Path, layout: str, tool: str, extra: str = "", name: str = "p") -> Path:
    return write_project(root, {}, f"layout: {layout}\nhistory: {{mirror: {tool}}}\n{extra}", name=name)


def _copy(layout: str, dest: Path, names: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in (DATA / layout).iterdir():
        if (names is not None and entry.name not in names) or entry.name in skip:
            continue
        target = dest / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


def _match(dsn: str, tool: str, folder: Path, layout: str) -> adopt.Match:
    migrations = load_migrations(folder, layout=layout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = [h for h in adopt.read_foreign_histories(conn) if h.tool == tool]
    assert len(found) == 1, f"expected one {tool} history, found {found}"
    return adopt.match_history(found[0], migrations)


def _ids(folder: Path, layout: str) -> list[str]:
    return [m.id for m in load_migrations(folder, layout=layout)]


def test_the_registry_and_the_plan_name_the_same_tools() -> None:
    assert set(TOOLS) == set(MIRROR_TOOLS)
    assert set(CASES) | set(NO_DOWN) == set(TOOLS)


@pytest.mark.parametrize("tool", list(CASES))
def test_apply_and_rollback_keep_the_tool_history_in_step(tmp_path: Path, db_dsn: str, tool: str) -> None:
    layout, last, later = CASES[tool]
    folder = DATA / layout
    plan = _plan(tmp_path, layout, tool)
    rollback = _plan(tmp_path, layout, tool, ROLLBACK, name="rb")
    migrations = tmp_path / "migrations"
    _copy(layout, migrations, skip=last + later)
    first = _ids(migrations, layout)

    result, out, error = apply(load(plan, db_dsn))
    assert error is None, out
    match = _match(db_dsn, tool, migrations, layout)
    assert [m.id for m in match.applied] == first and match.problems == []

    # The last migration, applied and rolled back by the harness (its down file, in its transaction).
    _copy(layout, migrations, names=last)
    (newest,) = [i for i in _ids(migrations, layout) if i not in first]
    result, out, error = apply(load(rollback, db_dsn))
    assert isinstance(error, CheckFailed) and result is not None and result.rolled_back == [newest], out
    match = _match(db_dsn, tool, migrations, layout)
    assert [m.id for m in match.applied] == first and match.problems == []

    # Applied again: listed again (Flyway: a new SQL row after the UNDO_SQL one).
    _copy(layout, migrations, names=later)
    result, out, error = apply(load(plan, db_dsn))
    assert error is None, out
    match = _match(db_dsn, tool, migrations, layout)
    assert [m.id for m in match.applied] == _ids(migrations, layout) == [m.id for m in load_migrations(folder)]
    assert match.problems == []


# The rows each tool's own code writes for the sample folder after the round trip above (apply without the last
# migration, apply and roll back the last, apply it again), from each tool's source: see harness/mirror.py.
ROWS: dict[str, tuple[str, list[tuple[Any, ...]]]] = {
    "diesel": ("SELECT version FROM __diesel_schema_migrations ORDER BY version",
               [("20170923182408",), ("20170924113530",), ("20170925120000",)]),
    "golang-migrate": ("SELECT version, dirty FROM schema_migrations", [(10, False)]),
    # v3 deletes the version's row on down; version 0 is written when goose creates the table.
    "goose": ("SELECT version_id, is_applied FROM goose_db_version ORDER BY id",
              [(0, True), (1, True), (2, True)]),
    "dbmate": ("SELECT version FROM schema_migrations ORDER BY version", [("20240101090000",), ("20240102090000",)]),
    "flyway": ("SELECT installed_rank, version, description, type, script, installed_by = current_user, success "
               "FROM flyway_schema_history ORDER BY installed_rank",
               [(1, "1", "create users", "SQL", "V1__create_users.sql", True, True),
                (2, "1.1", "index users email", "SQL", "V1.1__index_users_email.sql", True, True),
                (3, "2", "add name", "SQL", "V2__add_name.sql", True, True),
                (4, "2", "add name", "UNDO_SQL", "U2__add_name.sql", True, True),
                (5, "2", "add name", "SQL", "V2__add_name.sql", True, True),
                (6, None, "active users view", "SQL", "R__active_users_view.sql", True, True)]),
    "supabase": ("SELECT version, name, statements FROM supabase_migrations.schema_migrations ORDER BY version",
                 # Leading comments stay with their statement, as the CLI's SplitAndTrim keeps them.
                 [("20240101090000", "create_users",
                   ["-- The users of the sample application.\nCREATE TABLE IF NOT EXISTS users (\n    id bigint "
                    "PRIMARY KEY,\n    email text NOT NULL\n)"]),
                  ("20240102090000", "index_users_email",
                   ["CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email)"])]),
    "sqlx": ("SELECT version, description, success, length(checksum), execution_time >= 0 FROM _sqlx_migrations "
             "ORDER BY version",
             [(20240101090000, "create users", True, 48, True),
              (20240102090000, "index users email", True, 48, True)]),
}


@pytest.mark.parametrize("tool", list(ROWS))
def test_rows_are_the_ones_the_tool_writes(tmp_path: Path, db_dsn: str, tool: str) -> None:
    test_apply_and_rollback_keep_the_tool_history_in_step(tmp_path, db_dsn, tool)
    text, expected = ROWS[tool]
    assert query(db_dsn, text) == expected


def test_flyway_checksums_are_flyway_crc32(tmp_path: Path, db_dsn: str) -> None:
    _copy("flyway", tmp_path / "migrations")
    assert apply(load(_plan(tmp_path, "flyway", "flyway"), db_dsn))[2] is None
    rows = query(db_dsn, "SELECT script, checksum FROM flyway_schema_history ORDER BY installed_rank")
    assert rows == [(script, adopt.flyway_checksum((DATA / "flyway" / script).read_bytes())) for script, _ in rows]
    assert len(rows) == 4


@pytest.mark.parametrize("tool", list(NO_DOWN))
def test_tools_without_downs_round_trip(tmp_path: Path, db_dsn: str, tool: str) -> None:
    layout = NO_DOWN[tool]
    migrations = tmp_path / "migrations"
    _copy(layout, migrations)
    assert apply(load(_plan(tmp_path, layout, tool), db_dsn))[2] is None
    match = _match(db_dsn, tool, migrations, layout)
    loaded = load_migrations(migrations, layout=layout)
    assert [m.id for m in match.applied] == [m.id for m in loaded] and match.problems == []

    # What a rollback does with the last one (the hook apply's down paths call: ours, then the mirror).
    with psycopg.connect(db_dsn) as conn, conn.transaction():
        history.remove_applied(conn, loaded[-1].version)
        Mirror(tool, tuple(loaded), migrations).remove(conn, loaded[-1])
    match = _match(db_dsn, tool, migrations, layout)
    assert [m.id for m in match.applied] == [m.id for m in loaded[:-1]] and match.problems == []


def test_prisma_rows(tmp_path: Path, db_dsn: str) -> None:
    test_tools_without_downs_round_trip(tmp_path, db_dsn, "prisma")
    rows = query(db_dsn, "SELECT migration_name, checksum, finished_at IS NOT NULL, logs, rolled_back_at IS NOT NULL, "
                         "applied_steps_count, length(id) FROM _prisma_migrations ORDER BY migration_name")
    assert rows == [
        (name, hashlib.sha256((DATA / "prisma" / name / "migration.sql").read_bytes()).hexdigest(), True, None,
         rolled, 1, 36)
        for name, rolled in (("20240101090000_create_users", False), ("20240102090000_index_users_email", True))
    ]


def test_drizzle_rows(tmp_path: Path, db_dsn: str) -> None:
    test_tools_without_downs_round_trip(tmp_path, db_dsn, "drizzle")
    journal = json.loads((DATA / "drizzle" / "meta" / "_journal.json").read_text())
    first = journal["entries"][0]
    digest = hashlib.sha256((DATA / "drizzle" / f"{first['tag']}.sql").read_bytes()).hexdigest()
    assert query(db_dsn, "SELECT hash, created_at FROM drizzle.__drizzle_migrations ORDER BY id") == [
        (digest, first["when"])
    ]


# ---------------------------------------------------------------------- the tools' own code


def _url(dsn: str) -> str:
    """A postgres:// URL for *dsn* (a Unix socket directory goes in the host parameter)."""
    info = conninfo_to_dict(dsn)
    params = {"host": info.get("host", "localhost"), "port": info.get("port", "5432"), "sslmode": "disable"}
    user = urllib.parse.quote(str(info.get("user", "postgres")))
    password = info.get("password")
    auth = user + (":" + urllib.parse.quote(str(password)) if password else "")
    return f"postgres://{auth}@/{info['dbname']}?{urllib.parse.urlencode(params)}"


def _dbmate() -> str:
    found = shutil.which("dbmate") or (NODE_MODULES / ".bin" / "dbmate")
    if not Path(found).exists():
        pytest.skip(f"dbmate is not installed (npm install dbmate into {NODE_MODULES.parent}, or put it on PATH)")
    return str(found)


def test_dbmate_status_agrees(tmp_path: Path, db_dsn: str) -> None:
    dbmate = _dbmate()
    migrations = tmp_path / "migrations"
    _copy("dbmate", migrations)

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([dbmate, "--url", _url(db_dsn), "--migrations-dir", str(migrations), "--no-dump-schema",
                               "status", "--exit-code"], capture_output=True, text=True, timeout=60)

    before = status()
    assert before.returncode == 1 and "Pending: 2" in before.stdout, before.stdout + before.stderr
    assert apply(load(_plan(tmp_path, "dbmate", "dbmate"), db_dsn))[2] is None
    after = status()
    assert after.returncode == 0, after.stdout + after.stderr
    assert "[X] 20240101090000_create_users.sql" in after.stdout and "Applied: 2" in after.stdout
    assert "Pending: 0" in after.stdout

    # dbmate's own rollback deletes the row the harness wrote, and sees the migration pending again.
    down = subprocess.run([dbmate, "--url", _url(db_dsn), "--migrations-dir", str(migrations), "--no-dump-schema",
                           "rollback"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Pending: 1" in status().stdout


_DRIZZLE = """
const { drizzle } = require('drizzle-orm/node-postgres');
const { migrate } = require('drizzle-orm/node-postgres/migrator');
const { Client } = require('pg');
(async () => {
  const client = new Client(JSON.parse(process.argv[1]));
  await client.connect();
  try { await migrate(drizzle(client), { migrationsFolder: process.argv[2] }); } finally { await client.end(); }
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_drizzle_migrator_agrees(tmp_path: Path, db_dsn: str) -> None:
    if not (NODE_MODULES / "drizzle-orm").is_dir() or not (NODE_MODULES / "pg").is_dir() or not shutil.which("node"):
        pytest.skip(f"node with drizzle-orm and pg is not installed (npm install drizzle-orm pg into "
                    f"{NODE_MODULES.parent})")
    migrations = tmp_path / "migrations"
    _copy("drizzle", migrations)
    info = conninfo_to_dict(db_dsn)
    client = {"host": info.get("host"), "port": int(info.get("port", 5432)), "user": info.get("user"),
              "password": info.get("password"), "database": info["dbname"]}

    def migrate() -> None:
        done = subprocess.run(["node", "-e", _DRIZZLE, json.dumps(client), str(migrations)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
        assert done.returncode == 0, done.stdout + done.stderr

    def hashes() -> list[str]:
        return [r[0] for r in query(db_dsn, "SELECT hash FROM drizzle.__drizzle_migrations ORDER BY id")]

    assert apply(load(_plan(tmp_path, "drizzle", "drizzle"), db_dsn))[2] is None
    written = hashes()
    migrate()  # drizzle finds nothing to do: it would have added rows
    assert hashes() == written and len(written) == 2

    loaded = load_migrations(migrations, layout="drizzle")
    with psycopg.connect(db_dsn) as conn, conn.transaction():
        Mirror("drizzle", tuple(loaded), migrations).remove(conn, loaded[-1])
    migrate()  # the removed one is pending for drizzle again: it runs it and records the same hash
    assert hashes() == written


# ---------------------------------------------------------------------- failures and refusals


def test_a_failed_migration_leaves_neither_row(tmp_path: Path, db_dsn: str) -> None:
    plan = write_project(tmp_path, {
        "1_a.up.sql": "CREATE TABLE a (id int);",
        "1_a.down.sql": "DROP TABLE a;",
        "2_b.up.sql": "CREATE TABLE b (id int);\nSELECT 1 / 0;",
        "2_b.down.sql": "DROP TABLE b;",
    }, "layout: golang-migrate\nhistory: {mirror: golang-migrate}\n")
    result, out, error = apply(load(plan, db_dsn))
    assert isinstance(error, MigrationError) and "division by zero" in str(error), out
    assert history_versions(db_dsn) == ["1"]
    assert query(db_dsn, "SELECT version, dirty FROM schema_migrations") == [(1, False)]  # not 2, and clean
    assert not query(db_dsn, "SELECT to_regclass('public.b') IS NOT NULL")[0][0]


def test_rolling_back_the_first_golang_migration_empties_its_table(tmp_path: Path, db_dsn: str) -> None:
    # SetVersion(nil, clean): TRUNCATE and no row.
    plan = write_project(tmp_path, {"1_a.up.sql": "CREATE TABLE a (id int);", "1_a.down.sql": "DROP TABLE a;"},
                         "layout: golang-migrate\nhistory: {mirror: golang-migrate}\n" + ROLLBACK)
    result, out, error = apply(load(plan, db_dsn))
    assert isinstance(error, CheckFailed) and result is not None and result.rolled_back == ["1_a"], out
    assert query(db_dsn, "SELECT count(*) FROM schema_migrations") == [(0,)]
    assert history_versions(db_dsn) == []


def test_another_tool_table_of_the_same_name_is_refused(tmp_path: Path, db_dsn: str) -> None:
    # dbmate's schema_migrations where golang-migrate's is expected: refused before anything runs.
    query(db_dsn, "CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)")
    plan = write_project(tmp_path, {"1_a.up.sql": "CREATE TABLE a (id int);"},
                         "layout: golang-migrate\nhistory: {mirror: golang-migrate}\n")
    result, out, error = apply(load(plan, db_dsn))
    assert isinstance(error, GuardError) and "is not golang-migrate's history table" in str(error), out
    assert "dirty" in str(error) and history_versions(db_dsn) == []


def test_a_mirror_that_does_not_fit_the_detected_layout_is_refused(tmp_path: Path, db_dsn: str) -> None:
    plan = write_project(tmp_path, {"1_a.up.sql": "CREATE TABLE a (id int);"}, "history: {mirror: goose}\n")
    result, out, error = apply(load(plan, db_dsn))
    assert isinstance(error, GuardError) and "records migrations of the goose layout only" in str(error), out
    assert not query(db_dsn, "SELECT to_regclass('public.a') IS NOT NULL")[0][0]


def test_dry_run_names_the_mirrored_table(tmp_path: Path, db_dsn: str) -> None:
    _copy("goose", tmp_path / "migrations")
    result, out, error = apply(load(_plan(tmp_path, "goose", "goose"), db_dsn), dry_run=True)
    assert error is None and "and goose's goose_db_version (history.mirror)" in out, out
    assert not query(db_dsn, "SELECT to_regclass('public.goose_db_version') IS NOT NULL")[0][0]


def test_production_verification_leaves_the_mirrored_table_out(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rehearsal creates the foreign table: verification and the drift check compare the schema without it."""
    plan = write_project(tmp_path, {
        "00001_a.sql": "-- +goose Up\nCREATE TABLE a (id int);\n-- +goose Down\nDROP TABLE a;\n",
    }, "layout: goose\nhistory: {mirror: goose}\nbackup: {mode: none}\n", mode="production")
    rehearse(plan, db_dsn, capsys, monkeypatch)
    result, out, error = apply(load(plan, db_dsn))
    assert error is None and result is not None and result.verification.startswith("passed"), out
    (plan.parent.parent / "migrations" / "00002_b.sql").write_text(
        "-- +goose Up\nCREATE TABLE b (id int);\n-- +goose Down\nDROP TABLE b;\n")
    rehearse(plan, db_dsn, capsys, monkeypatch)
    result, out, error = apply(load(plan, db_dsn))  # the drift check at 00001 sees goose_db_version: not drift
    assert error is None and result is not None and result.applied == ["00002_b"], out
    assert "drift: none" in out and result.verification.startswith("passed"), out
    assert query(db_dsn, "SELECT version_id FROM goose_db_version ORDER BY id") == [(0,), (1,), (2,)]
