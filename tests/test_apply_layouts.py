"""``apply`` with other tools' layouts: the plan's layout and substitutions, baselines, foreign histories.

Real PostgreSQL targets (``db_dsn``); the production baseline test rehearses
on the session server's provider like the other apply tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import CheckFailed, GuardError
from harness.postgres import Server
from tests.fix_db import execute, history_versions, query, table_exists
from tests.projects import apply, cli, load, rehearse, write_project

THREE = {
    "1_users.sql": "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);",
    "2_orders.sql": "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));",
    "3_items.sql": "CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, order_id bigint REFERENCES orders (id));",
}

# What the first two migrations build, written by hand: a database that existed before the harness.
BUILT_BY_HAND = """
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));
"""


def _modes(dsn: str) -> list[tuple[str, str]]:
    return query(dsn, "SELECT version, mode FROM harness.schema_migrations ORDER BY version::numeric")


def test_apply_reads_the_plan_layout_and_substitutions(tmp_path: Path, db_dsn: str) -> None:
    plan = 'layout: flyway\nsubstitutions:\n  - {literal: "${table}", value: accounts}\n'
    plan_path = write_project(tmp_path, {
        "V1__create.sql": "CREATE TABLE ${table} (id int PRIMARY KEY);",
        "V1_1__seed.sql": "INSERT INTO ${table} VALUES (1), (2);",
    }, plan)
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["1_create", "1.1_seed"]
    assert query(db_dsn, "SELECT count(*) FROM accounts") == [(2,)]
    assert [v for v, _ in _modes(db_dsn)] == ["1", "1.1"]


# ---------------------------------------------------------------------- baseline


def test_baseline_on_a_database_built_before_the_harness(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, BUILT_BY_HAND)
    plan_path = write_project(tmp_path, THREE, 'baseline: "2"\n')
    dry, out, error = apply(load(plan_path, db_dsn), dry_run=True)
    assert error is None and dry is not None and dry.baselined == ["1_users", "2_orders"] and dry.pending == ["3_items"]
    assert "record 2 migrations up to 2_orders as applied (mode baseline) without running them" in out

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.baselined == ["1_users", "2_orders"] and result.applied == ["3_items"]
    assert "the history is empty but the schema is not" in out
    assert "recorded 2 migrations up to 2_orders as applied (mode baseline); they were not run" in out
    assert _modes(db_dsn) == [("1", "baseline"), ("2", "baseline"), ("3", "development")]
    assert result.to_dict()["baselined"] == ["1_users", "2_orders"]

    again, out, error = apply(load(plan_path, db_dsn))
    assert error is None and again is not None and again.applied == [] and again.baselined == []
    assert "nothing to apply" in out


def test_baseline_on_an_empty_database_runs_everything(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, THREE, 'baseline: "2"\n')
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.baselined == [] and result.applied == ["1_users", "2_orders", "3_items"]
    assert "the target's schema is empty: every migration runs, the baseline ones included" in out
    assert [m for _, m in _modes(db_dsn)] == ["development"] * 3


def test_baseline_with_history_rows_runs_what_is_missing(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, THREE, 'baseline: "2"\n')
    apply(load(write_project(tmp_path / "earlier", {"1_users.sql": THREE["1_users.sql"]}), db_dsn))
    assert history_versions(db_dsn) == ["1"]
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.baselined == [] and result.applied == ["2_orders", "3_items"]


def test_production_baseline_is_checked_against_the_rehearsal(
    tmp_path: Path, db_dsn: str, pg_server: Server, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan_path = write_project(tmp_path, THREE, 'baseline: "2"\nbackup: {mode: none}\n', mode="production")
    rehearse(plan_path, db_dsn, capsys, monkeypatch)

    # A target whose schema is not what the baseline migrations build: refused, showing the difference.
    pg_server.create_database("t_baseline_drift")
    try:
        drifted = pg_server.dsn("t_baseline_drift")
        execute(drifted, BUILT_BY_HAND.replace("email text NOT NULL", "email text"))
        _, out, error = apply(load(plan_path, drifted))
        assert isinstance(error, GuardError) and "differs from the rehearsed schema after 2_orders" in str(error)
        assert history_versions(drifted) == []
    finally:
        pg_server.drop_database("t_baseline_drift")

    execute(db_dsn, BUILT_BY_HAND)
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert "drift: none (schema digest matches the rehearsal after 2_orders)" in out
    assert result is not None and result.baselined == ["1_users", "2_orders"] and result.applied == ["3_items"]
    assert result.verification.startswith("passed")
    assert _modes(db_dsn) == [("1", "baseline"), ("2", "baseline"), ("3", "production")]


# ---------------------------------------------------------------------- foreign histories

GOLANG = {
    "1_users.up.sql": THREE["1_users.sql"],
    "1_users.down.sql": "DROP TABLE IF EXISTS users;",
    "2_orders.up.sql": THREE["2_orders.sql"],
    "2_orders.down.sql": "DROP TABLE IF EXISTS orders;",
}
GOLANG_TABLE = "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);"


def test_a_dirty_foreign_history_blocks_apply(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, GOLANG_TABLE + "INSERT INTO schema_migrations VALUES (1, true);")
    plan_path = write_project(tmp_path, GOLANG, "layout: golang-migrate\n")
    _, out, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, GuardError) and error.exit_code == 1
    assert "dirty at version 1" in str(error) and "migrate force" in str(error)
    assert not table_exists(db_dsn, "public.users") and history_versions(db_dsn) == []
    dry, out, error = apply(load(plan_path, db_dsn), dry_run=True)
    assert dry is not None and not dry.ok and "foreign history: apply WOULD REFUSE" in out


def test_a_foreign_history_must_be_adopted_first(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(db_dsn, THREE["1_users.sql"] + GOLANG_TABLE + "INSERT INTO schema_migrations VALUES (1, false);")
    plan_path = write_project(tmp_path, GOLANG, "layout: golang-migrate\n")
    _, out, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, GuardError) and "run `harness adopt p` first" in str(error)
    assert "says 1 migrations are applied" in str(error) and "1_users" in str(error)

    monkeypatch.setenv("TARGET_URL", db_dsn)
    code, out, err = cli(["adopt", str(plan_path)], capsys)
    assert code == 0, err
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["2_orders"] and result.skipped == ["1_users"]
    assert _modes(db_dsn) == [("1", "adopted"), ("2", "development")]


# ---------------------------------------------------------------------- downs declared non-transactional


def test_a_down_declared_non_transactional_runs_outside_a_transaction(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, "CREATE TABLE txlog (xid xid8)")
    plan = "layout: dbmate\nhealth: {checks: [{name: never, sql: 'SELECT false'}], on_failure: rollback}\n"
    plan_path = write_project(tmp_path, {"1_a.sql": """
        -- migrate:up
        CREATE TABLE a (id int);

        -- migrate:down transaction:false
        INSERT INTO txlog SELECT pg_current_xact_id();
        INSERT INTO txlog SELECT pg_current_xact_id();
        DROP TABLE a;
    """}, plan)
    _, out, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, CheckFailed) and "Rolled back with their down migrations" in str(error), out
    assert not table_exists(db_dsn, "public.a") and history_versions(db_dsn) == []
    assert query(db_dsn, "SELECT count(DISTINCT xid::text) FROM txlog") == [(2,)]  # not one transaction


# ---------------------------------------------------------------------- Flyway repeatables in production

FLYWAY = {
    "V1__users.sql": "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);",
    "R__active_users.sql": "CREATE OR REPLACE VIEW active_users AS SELECT id FROM users;",
}


def test_flyway_repeatables_rerun_when_changed_and_never_block_versioned_ones(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Flyway: a repeatable runs after the pending versioned migrations whenever its checksum changed."""
    plan = "layout: flyway\nbackup: {mode: none}\n"
    plan_path = write_project(tmp_path, FLYWAY, plan, mode="production")
    rehearse(plan_path, db_dsn, capsys, monkeypatch)
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["1_users", "R__active_users"]

    # A new versioned migration after the repeatable ran: not "out of order"; and an edited repeatable is
    # run again after it, not refused as changed.
    folder = tmp_path / "migrations"
    (folder / "V2__name.sql").write_text("ALTER TABLE users ADD COLUMN IF NOT EXISTS name text;")
    (folder / "R__active_users.sql").write_text("CREATE OR REPLACE VIEW active_users AS SELECT id, name FROM users;")
    code, status_out, _ = cli(["status", str(plan_path), "--dsn", db_dsn], capsys)
    assert "outdated" in status_out and "CHANGED" not in status_out, status_out
    rehearse(plan_path, db_dsn, capsys, monkeypatch)
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["2_name", "R__active_users"]
    assert query(db_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'active_users' "
                         "ORDER BY ordinal_position") == [("id",), ("name",)]
    assert result.verification.startswith("passed")

    # Nothing changed: nothing to run, the repeatable included.
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == []
