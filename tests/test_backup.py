"""Backups before apply: written privately, verified, listed, pruned, and restored to identical data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from harness.backup import (
    newest_tools,
    list_backups,
    prune_backups,
    take_backup,
    touched_tables,
    verify_backup,
)
from harness.errors import BackupError
from harness.postgres import Server
from harness.snapshot import table_fingerprints
from harness.sources import load_migrations
from tests.fix_db import execute, history_versions, holding, query
from tests.projects import apply, cli, load, rehearse, write_project

SEED = """
CREATE SCHEMA billing;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 200) g;
CREATE TABLE billing."Invoice Lines" (id int PRIMARY KEY, customer_id int REFERENCES customers (id), amount numeric);
INSERT INTO billing."Invoice Lines" SELECT g, 1 + g % 200, g * 1.5 FROM generate_series(1, 300) g;
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
INSERT INTO audit (what) VALUES ('seeded');
CREATE TABLE notes (body text);
INSERT INTO notes VALUES ('hello');
"""

DESTRUCTIVE = {
    "1_rework.sql": """
        ALTER TABLE customers ADD COLUMN IF NOT EXISTS tier text;
        UPDATE customers SET name = upper(name), tier = 'gold' WHERE id <= 20;
        DELETE FROM billing."Invoice Lines" WHERE amount > 300;
    """,
}


@pytest.fixture
def seeded(db_dsn: str) -> str:
    execute(db_dsn, SEED)
    return db_dsn


def test_backup_is_private_verified_and_restores_identical_data(
    tmp_path: Path,
    seeded: str,
    pg_server: Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan_path = write_project(tmp_path, DESTRUCTIVE, "backup: {mode: full, dir: var/backups}\n",
                              mode="production", seed=SEED)
    with psycopg.connect(seeded, autocommit=True) as conn:
        before = table_fingerprints(conn)
    rehearse(plan_path, seeded, capsys, monkeypatch)
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 0, out + err
    with psycopg.connect(seeded, autocommit=True) as conn:
        assert table_fingerprints(conn) != before  # the migration did change data

    directory = tmp_path / "var" / "backups"
    dumps = list(directory.glob("p-*.dump"))
    assert len(dumps) == 1
    dump = dumps[0]
    manifest = dump.with_suffix(".json")
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    assert oct(manifest.stat().st_mode & 0o777) == "0o600"
    data = json.loads(manifest.read_text())
    assert data["plan"] == "p" and data["mode"] == "full" and data["verified"] is True
    assert data["versions"] == ["1_rework"]
    assert data["size"] == dump.stat().st_size and len(data["sha256"]) == 64
    assert data["server_version"].startswith(str(pg_server.major))
    assert {"public.customers", 'billing.Invoice Lines', "public.audit"} <= set(data["tables"])
    verify_backup(dump, expected_tables=["public.customers"])

    code, out, _ = cli(["backups", str(plan_path)], capsys)
    assert code == 0 and str(dump) in out and "verified" in out and "1_rework" in out
    code, out, _ = cli(["backups", str(plan_path), "--check", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["state"] == "verified (checked now)"

    # Without --yes and without a terminal, restore refuses (usage error) and changes nothing.
    code, _, err = cli(["restore", str(dump)], capsys)
    assert code == 2 and "--yes" in err

    # Into a new database: the data as it was before the migration.
    copy = f"{pg_server.dsn('x').rsplit('dbname=', 1)[0]}dbname=restored_copy"
    try:
        code, out, err = cli(["restore", str(dump), "--into", "restored_copy", "--yes"], capsys)
        assert code == 0, err
        with psycopg.connect(copy, autocommit=True) as conn:
            assert table_fingerprints(conn) == before
    finally:
        pg_server.drop_database("restored_copy")

    # Into the target (the plan recorded in the manifest names it): identical data, history as before.
    code, out, err = cli(["restore", str(dump), "--yes"], capsys)
    assert code == 0, err
    assert "restored" in out
    with psycopg.connect(seeded, autocommit=True) as conn:
        assert table_fingerprints(conn) == before
    assert history_versions(seeded) == []


def test_touched_backup_holds_only_the_tables_the_migrations_name(tmp_path: Path, seeded: str) -> None:
    migrations_dir = tmp_path / "m"
    migrations_dir.mkdir()
    (migrations_dir / "1_a.sql").write_text(
        'ALTER TABLE billing."Invoice Lines" ADD COLUMN note text;\n'
        "WITH c AS (SELECT 1) UPDATE customers SET name = name FROM c WHERE false;\n"
        "CREATE TABLE brand_new (id int);\n"
        "INSERT INTO brand_new SELECT 1;\n"
        "DROP TABLE IF EXISTS no_such_table;\n"
    )
    (migrations_dir / "2_b.sql").write_text("DROP TABLE audit;\n")
    pending = load_migrations(migrations_dir)
    with psycopg.connect(seeded, autocommit=True) as conn:
        touched = touched_tables(conn, pending)
        assert [(s, n) for s, n, _ in touched] == [("billing", "Invoice Lines"), ("public", "audit"), ("public", "customers")]
        info = take_backup(plan_name="t", directory=tmp_path / "bk", dsn=seeded, conn=conn,
                           pending=pending[:1], mode="touched")
    assert info.tables == ("billing.Invoice Lines", "public.customers")
    listing = subprocess.run(
        [str(newest_tools().tool("pg_restore")), "--list", str(info.path)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public customers" in listing and "TABLE DATA billing Invoice Lines" in listing
    assert "audit" not in listing


def test_retention_keeps_the_newest(tmp_path: Path, seeded: str) -> None:
    directory = tmp_path / "bk"
    with psycopg.connect(seeded, autocommit=True) as conn:
        made = [take_backup(plan_name="r", directory=directory, dsn=seeded, conn=conn, pending=[], mode="full")
                for _ in range(3)]
        other = take_backup(plan_name="other", directory=directory, dsn=seeded, conn=conn, pending=[], mode="full")
    assert [b.path for b in list_backups(directory, "r")] == [m.path for m in reversed(made)]
    removed = prune_backups(directory, "r", keep=2)
    assert removed == [made[0].path]
    assert not made[0].path.exists() and not made[0].path.with_suffix(".json").exists()
    assert all(m.path.exists() for m in made[1:]) and other.path.exists()


def test_failed_backup_stops_the_run_before_any_migration(tmp_path: Path, seeded: str) -> None:
    guards = "guards: {lock_timeout: 200ms, retry_delay: 100ms, max_retries: 1, lock_wait: 1s}\n"
    plan_path = write_project(tmp_path, DESTRUCTIVE, "backup: {mode: full}\n", mode="production", seed=SEED,
                              guards=guards)
    # A session holding an ACCESS EXCLUSIVE lock: pg_dump cannot read the table within lock_wait.
    with holding(seeded, "LOCK TABLE notes IN ACCESS EXCLUSIVE MODE"):
        result, out, error = apply(load(plan_path, seeded), force=True)
    assert isinstance(error, BackupError) and error.exit_code == 1
    assert "pg_dump" in str(error) and "lock" in str(error) and "Nothing was changed" in str(error)
    assert not list((tmp_path / "backups").glob("*.dump")) and not list((tmp_path / "backups").glob("*.json"))
    assert history_versions(seeded) == []
    assert query(seeded, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'tier'") == [(0,)]
    assert result is not None and result.applied == [] and result.backup is None


def test_guard_queries_do_not_hang_behind_a_lock(tmp_path: Path, seeded: str) -> None:
    guards = "guards: {lock_timeout: 200ms, retry_delay: 100ms, max_retries: 1, lock_wait: 500ms}\n"
    plan_path = write_project(tmp_path, DESTRUCTIVE, mode="production", seed=SEED, guards=guards)
    # The drift check reads column defaults, which needs ACCESS SHARE on audit.
    with holding(seeded, "LOCK TABLE audit IN ACCESS EXCLUSIVE MODE"):
        _, _, error = apply(load(plan_path, seeded), force=True)
    assert error is not None and error.exit_code == 1
    assert "lock timeout" in str(error) and "held by another session" in str(error)
    assert history_versions(seeded) == []
