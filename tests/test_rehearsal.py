"""The rehearsal engine on a corpus of migrations broken in one way each, and correct ones.

Every broken case must be caught by the matching assertion with a message a
reviewer can act on; every correct case must pass with no false alarm.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness import rehearsal_model
from harness.errors import HarnessError
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, SKIPPED, Rehearsal
from harness.snapshot import Snapshot

USERS = "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);"
USERS_DOWN = "DROP TABLE IF EXISTS users;"


def make_project(tmp_path: Path, migrations: dict[str, str], plan: str = "", seed: str | None = None) -> Path:
    """Write migrations and a plan into *tmp_path*; return the plan path."""
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    for name, text in migrations.items():
        (mdir / name).write_text(textwrap.dedent(text))
    (tmp_path / "plans").mkdir()
    head = "migrations: migrations/\nrehearsal: {provider: embedded" + (", seed: seed.sql" if seed else "") + "}\n"
    if seed:
        (tmp_path / "seed.sql").write_text(textwrap.dedent(seed))
    path = tmp_path / "plans" / "p.yaml"
    path.write_text(head + textwrap.dedent(plan))
    return path


def rehearse(pg_server: Server, plan_path: Path) -> dict[str, tuple[str, str]]:
    plan = load_plan(plan_path)
    with Rehearsal(plan, pg_server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


DEFAULTS = "defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false}\n"

BROKEN = {
    "not idempotent (schema)": (
        {"1_t.sql": "CREATE TABLE t (id int);", "1_t.down.sql": "DROP TABLE t;"},
        DEFAULTS,
        "1_t::idempotent",
        ["second time fails", 'relation "t" already exists', "1_t.sql:1:1"],
    ),
    "not idempotent (data)": (
        {
            "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);",
            "1_t.down.sql": "DROP TABLE t;",
            "2_fill.sql": "INSERT INTO t VALUES (1);",
            "2_fill.down.sql": "DELETE FROM t WHERE id = 1;",
        },
        DEFAULTS,
        "2_fill::idempotent",
        ["changes data", "public.t: 1 rows → 2 rows"],
    ),
    "down leaves a type behind": (
        {
            "1_mood.sql": "CREATE TYPE mood AS ENUM ('ok', 'meh');\nCREATE TABLE feelings (m mood);",
            "1_mood.down.sql": "DROP TABLE feelings;",
        },
        "defaults: {idempotent: false, rollback: true, backward_compatible: false, lint: false}\n",
        "1_mood::rollback",
        ["after down", "mood"],
    ),
    "down leaves an index behind": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_idx.sql": "CREATE INDEX IF NOT EXISTS users_email_idx ON users (email);",
            "2_idx.down.sql": "SELECT 1;",
        },
        DEFAULTS,
        "2_idx::rollback",
        ["after down", "users_email_idx"],
    ),
    "down leaves a sequence behind": (
        {
            "1_seq.sql": "CREATE SEQUENCE IF NOT EXISTS invoice_no;",
            "1_seq.down.sql": "SELECT 1;",
        },
        DEFAULTS,
        "1_seq::rollback",
        ["after down", "invoice_no"],
    ),
    "down deletes pre-existing data": (
        {
            "1_users.sql": USERS + "\nINSERT INTO users VALUES (1, 'a@example.com') ON CONFLICT DO NOTHING;",
            "1_users.down.sql": USERS_DOWN,
            "2_col.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
            "2_col.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS nick;\nDELETE FROM users;",
        },
        DEFAULTS,
        "2_col::rollback",
        ["data of tables that existed before", "public.users: 1 rows → 0 rows"],
    ),
    "rename breaks an old query": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_rename.sql": "ALTER TABLE users RENAME COLUMN email TO mail;",
            "2_rename.down.sql": "ALTER TABLE users RENAME COLUMN mail TO email;",
        },
        DEFAULTS.replace("idempotent: true", "idempotent: false")
        + "steps:\n  - migration: '2'\n    backward_compatible:\n      queries: ['SELECT email FROM users WHERE id = $1']\n",
        "2_rename::backward_compatible",
        ["breaks the previous application version", "no longer works", 'column "email" does not exist', "p.yaml"],
    ),
    "NOT NULL without default": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_nn.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS tenant int NOT NULL;",
            "2_nn.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS tenant;",
        },
        DEFAULTS,
        "2_nn::backward_compatible",
        ["not-null-without-default", "tenant"],
    ),
    "no down where the plan requires one": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_idx.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
        },
        "require_down: true\n" + DEFAULTS,
        "2_idx::rollback",
        ["no down migration", "require_down", "2_idx.down.sql", "rollback: none"],
    ),
    "empty down (the usual irreversible marker)": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_nick.sql": "ALTER TABLE users ADD COLUMN nick text;",
            "2_nick.down.sql": "-- This migration cannot be undone.\n",
        },
        DEFAULTS,
        "2_nick::rollback",
        ["2_nick.down.sql is empty", "would leave", "nick", "rollback: none"],
    ),
    "down that does not parse": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_nick.sql": "ALTER TABLE users ADD COLUMN nick text;",
            "2_nick.down.sql": "ALTER TABLE users DROP COLUMN nick;\nALTER TABLE users DROP COLUM x;\n",
        },
        DEFAULTS,
        "2_nick::rollback",
        ["cannot be run", "2_nick.down.sql:2:", "syntax error"],
    ),
    "lint: index built without CONCURRENTLY on an existing table": (
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_idx.sql": "CREATE INDEX IF NOT EXISTS users_email_idx ON users (email);",
            "2_idx.down.sql": "DROP INDEX IF EXISTS users_email_idx;",
        },
        "defaults: {idempotent: true, rollback: true, lint: true}\n",
        "2_idx::lint",
        ["CONCURRENTLY", "2_idx.sql:1:"],
    ),
}


def without_locks(plan: str) -> str:
    """*plan* with the locks item off: applies are then sent ahead with the migration before's follow-up."""
    head, sep, rest = plan.partition("defaults: {")
    assert sep, plan
    return f"{head}defaults: {{locks: false, {rest}"


# Each case runs twice: with the locks item on (every apply on its own) and off
# (each apply travels with the previous migration's second up, down and up
# again, and a failure must still be pinned on the right item).
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["locks", "streamed"])


@STREAMED
@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_broken_migration_is_caught(pg_server: Server, tmp_path: Path, case: str, streamed: bool) -> None:
    migrations, plan, item_id, needles = BROKEN[case]
    results = rehearse(pg_server, make_project(tmp_path, migrations, without_locks(plan) if streamed else plan))
    status, message = results[item_id]
    assert status == FAILED, f"{item_id} should fail: {results}"
    for needle in needles:
        assert needle in message, f"{needle!r} missing from:\n{message}"


def test_apply_failure_skips_dependent_items_with_reason(pg_server: Server, tmp_path: Path) -> None:
    path = make_project(
        tmp_path,
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_bad.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS a int;\n"
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS b int;\nALTER TABLE nope ADD COLUMN c int;",
            "3_more.sql": "CREATE TABLE IF NOT EXISTS more ();",
        },
        DEFAULTS,
    )
    results = rehearse(pg_server, path)
    assert results["1_users::apply"][0] == PASSED
    status, message = results["2_bad::apply"]
    assert status == FAILED
    assert "2_bad.sql:3:1" in message and 'relation "nope" does not exist' in message
    assert "ALTER TABLE nope ADD COLUMN c int" in message
    assert results["2_bad::idempotent"] == (SKIPPED, "2_bad failed to apply")
    assert results["3_more::apply"] == (SKIPPED, "depends on 2_bad, which failed to apply")


def test_seed_row_counts_are_preserved_unless_declared(pg_server: Server, tmp_path: Path) -> None:
    seed = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts SELECT generate_series(1, 50);"
    migrations = {
        "1_purge.sql": "DELETE FROM accounts WHERE id > 40;",
        "1_purge.down.sql": "SELECT 1;",
    }
    plan = "defaults: {idempotent: true, rollback: false, backward_compatible: false, lint: false}\n"
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan, seed=seed))
    status, message = results["1_purge::preserve_rows"]
    assert status == FAILED
    assert "public.accounts: 50 rows before, 40 after" in message

    other = tmp_path / "declared"
    other.mkdir()
    declared = plan + "steps:\n  - migration: 1_purge\n    preserve_rows: false\n"
    results = rehearse(pg_server, make_project(other, migrations, declared, seed=seed))
    assert "1_purge::preserve_rows" not in results
    assert all(status == PASSED for status, _ in results.values()), results


DATA_SEED = """
CREATE TABLE t (id int PRIMARY KEY, note text, extra text);
INSERT INTO t VALUES (1, 'a', 'kept'), (2, 'b', 'also kept');
"""
DATA_PLAN = "defaults: {idempotent: true, rollback: true, backward_compatible: false, lint: false}\n"


@pytest.mark.parametrize("snapshots", ["verify", "full"])
def test_a_down_that_adds_back_a_dropped_column_loses_its_data(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshots: str
) -> None:
    """The schema after down is the same (the column is back, last again), but its values are gone."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", snapshots)
    migrations = {
        "1_drop.sql": "ALTER TABLE t DROP COLUMN IF EXISTS extra;",
        "1_drop.down.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS extra text;",
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, DATA_PLAN, seed=DATA_SEED))
    status, message = results["1_drop::rollback"]
    assert status == FAILED, message
    assert "after down, data of tables that existed before 1_drop differs" in message
    assert "public.t: same row count (2) but row contents changed" in message


@pytest.mark.parametrize("snapshots", ["verify", "full"])
def test_data_checks_see_columns_added_without_writes(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshots: str
) -> None:
    """A column added by one migration is part of the data the next one's rollback must restore."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", snapshots)
    migrations = {
        "1_add.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS flag int;",
        "1_add.down.sql": "ALTER TABLE t DROP COLUMN IF EXISTS flag;",
        "2_fill.sql": "UPDATE t SET flag = 1 WHERE flag IS NULL;",
        "2_fill.down.sql": "UPDATE t SET flag = NULL;",
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, DATA_PLAN, seed=DATA_SEED))
    assert all(status == PASSED for status, _ in results.values()), results


CATALOG_UPDATE = "UPDATE pg_catalog.pg_class SET relrowsecurity = {} WHERE oid = 'public.t'::regclass"
HIDDEN_CHANGE = {
    "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);",
    "1_t.down.sql": "DROP TABLE IF EXISTS t;",
    # DDL next to a direct catalog UPDATE inside a DO block: tracking records
    # the DDL and cannot see the UPDATE (a DO block's body is opaque).
    "2_hack.sql": "CREATE TABLE IF NOT EXISTS u (id int);\n"
    f"DO $$ BEGIN {CATALOG_UPDATE.format('true')}; END $$;",
    "2_hack.down.sql": f"DROP TABLE IF EXISTS u;\nDO $$ BEGIN {CATALOG_UPDATE.format('false')}; END $$;",
}
# The same as plain statements: the rehearsal sees the catalog write in the
# parse tree and measures the migration with full snapshots.
VISIBLE_HACK = {
    "1_t.sql": HIDDEN_CHANGE["1_t.sql"],
    "1_t.down.sql": HIDDEN_CHANGE["1_t.down.sql"],
    "2_hack.sql": f"CREATE TABLE IF NOT EXISTS u (id int);\n{CATALOG_UPDATE.format('true')};",
    "2_hack.down.sql": f"DROP TABLE IF EXISTS u;\n{CATALOG_UPDATE.format('false')};",
}


def test_a_change_tracking_missed_is_caught_at_head(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The head's tracked state is compared with a full snapshot; on a difference the rehearsal goes on in full.

    Its verdicts are then those of full snapshots, and one warning names the objects.
    """
    for name in ("full", "tracked"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "full")
    expected = rehearse(pg_server, make_project(tmp_path / "full", HIDDEN_CHANGE, DEFAULTS))
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    with caplog.at_level("WARNING", logger="harness.rehearsal"):
        results = rehearse(pg_server, make_project(tmp_path / "tracked", HIDDEN_CHANGE, DEFAULTS))
    assert {k: v[0] for k, v in results.items()} == {k: v[0] for k, v in expected.items()}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "after 2_hack (table public.t)" in warnings[0]
    assert "table public.t: rls_enabled changed: true -> false" in warnings[0]


@pytest.mark.parametrize(
    ("snapshots", "migrations"),
    [("full", HIDDEN_CHANGE), ("incremental", VISIBLE_HACK)],
    ids=["full snapshots, a write in a DO block", "tracking, a write among the migration's statements"],
)
def test_catalog_writes_are_measured_in_full(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshots: str, migrations: dict[str, str]
) -> None:
    monkeypatch.setenv("HARNESS_SNAPSHOTS", snapshots)
    results = rehearse(pg_server, make_project(tmp_path, migrations, DEFAULTS))
    assert all(status == PASSED for status, _ in results.values()), results


def test_a_down_that_forgets_a_catalog_write_fails_its_rollback(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    sloppy = {**VISIBLE_HACK, "2_hack.down.sql": "DROP TABLE IF EXISTS u;"}
    results = rehearse(pg_server, make_project(tmp_path, sloppy, DEFAULTS))
    status, message = results["2_hack::rollback"]
    assert status == FAILED and "rls_enabled" in message, message


STREAM_PLAN = "defaults: {locks: false, idempotent: true, rollback: true, backward_compatible: false, lint: false}\n"


def test_a_failing_second_up_sent_with_the_next_apply(pg_server: Server, tmp_path: Path) -> None:
    """The message with 1's second up also applies 2: the failure stays 1's, and 2 is applied anyway."""
    migrations = {
        "1_t.sql": "CREATE TABLE t (id int);",
        "1_t.down.sql": "DROP TABLE t;",
        "2_u.sql": "CREATE TABLE IF NOT EXISTS u (id int);",
        "2_u.down.sql": "DROP TABLE IF EXISTS u;",
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, STREAM_PLAN))
    status, message = results["1_t::idempotent"]
    assert status == FAILED and 'relation "t" already exists' in message and "1_t.sql:1:1" in message, message
    assert {k: v[0] for k, v in results.items() if k != "1_t::idempotent"} == dict.fromkeys(
        ["1_t::apply", "1_t::rollback", "2_u::apply", "2_u::idempotent", "2_u::rollback", "chain_rollback"], PASSED
    ), results


def test_a_failing_apply_sent_ahead_is_reported_on_its_own_item(pg_server: Server, tmp_path: Path) -> None:
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);",
        "1_t.down.sql": "DROP TABLE IF EXISTS t;",
        "2_bad.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int;\nALTER TABLE nope ADD COLUMN d int;",
        "2_bad.down.sql": "ALTER TABLE t DROP COLUMN IF EXISTS c;",
        "3_more.sql": "CREATE TABLE IF NOT EXISTS v (id int);",
        "3_more.down.sql": "DROP TABLE IF EXISTS v;",
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, STREAM_PLAN))
    assert all(results[f"1_t::{name}"][0] == PASSED for name in ("apply", "idempotent", "rollback")), results
    status, message = results["2_bad::apply"]
    assert status == FAILED and "2_bad.sql:2:" in message and 'relation "nope" does not exist' in message, message
    assert results["3_more::apply"][0] == SKIPPED and "2_bad" in results["3_more::apply"][1]


@pytest.mark.parametrize("defaults", ["idempotent: false, rollback: false", "idempotent: true, rollback: true"])
def test_an_apply_sent_ahead_runs_once_when_no_item_reads_the_message(
    pg_server: Server, tmp_path: Path, defaults: str
) -> None:
    """Applies only (no item lands the message that carries the next apply): each migration still runs once."""
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);",
        "1_t.down.sql": "DROP TABLE IF EXISTS t;",
        "2_u.sql": "CREATE TABLE u (id int);",  # fails if applied twice
        "2_u.down.sql": "DROP TABLE u;",
        "3_v.sql": "CREATE TABLE v (id int);",
        "3_v.down.sql": "DROP TABLE v;",
    }
    plan_text = f"defaults: {{locks: false, {defaults}, backward_compatible: false, lint: false}}\nchain_rollback: false\n"
    plan = load_plan(make_project(tmp_path, migrations, plan_text))
    with Rehearsal(plan, pg_server) as rehearsal:
        applies = [item for item in rehearsal.items() if item.assertion == "apply"]
        outcomes = rehearsal.run_all(applies)
        assert [o.status for _, o in outcomes] == [PASSED] * 3, [(i.id, o.message) for i, o in outcomes]
        final = rehearsal.final_snapshot()
    assert final is not None and {"public.t", "public.u", "public.v"} <= final.tables()


def test_the_next_follow_up_leaves_before_the_results_are_taken_in(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration's second up, down and up again go to the server once, sent before the message before is parsed."""
    migrations = {}
    for i in range(1, 6):
        migrations[f"{i}_t{i}.sql"] = f"CREATE TABLE IF NOT EXISTS t{i} (id int PRIMARY KEY);"
        migrations[f"{i}_t{i}.down.sql"] = f"DROP TABLE IF EXISTS t{i};"
    plan = load_plan(make_project(tmp_path, migrations, STREAM_PLAN))
    # Per message sent: its segments, and whether the second up of the migration before each one's was parsed then.
    sent: list[tuple[frozenset[tuple[int, str]], dict[int, bool]]] = []
    with Rehearsal(plan, pg_server) as rehearsal:
        send = rehearsal.pipeline.send

        def recorded(segments: list[tuple[int, str, str]]) -> None:
            found = frozenset((index, kind) for index, kind, _ in segments)
            parsed = {index: rehearsal.steps[index - 1].again is not None for index, kind in found
                      if kind == "ahead" and index > 0}
            sent.append((found, parsed))
            send(segments)

        monkeypatch.setattr(rehearsal.pipeline, "send", recorded)
        results = rehearsal.run_all()
    assert [(i.id, o.message) for i, o in results if o.status != PASSED] == []
    segments = [segment for found, _ in sent for segment in found]
    assert sorted(segments) == sorted({*segments}) and {*segments} == {
        *((i, "ahead") for i in range(5)), *((i, "apply") for i in range(1, 5))
    }  # each once: applies 2-5 ride with the follow-up before them
    assert [found for found, _ in sent] == [
        frozenset({(i, "ahead"), (i + 1, "apply")} - {(5, "apply")}) for i in range(5)
    ]  # each follow-up carries the next apply
    # Each migration applied by the message before sends its own follow-up before that message's results are parsed.
    assert {index: parsed for _, found in sent for index, parsed in found.items()} == dict.fromkeys(range(1, 5), False)


def test_a_check_sees_its_own_migration_even_when_applies_are_sent_ahead(
    pg_server: Server, tmp_path: Path
) -> None:
    """Migration 2 empties the table 1 filled: 1's check must still count 1's rows."""
    migrations = {
        "1_fill.sql": "CREATE TABLE IF NOT EXISTS t (id int);\nINSERT INTO t SELECT 1 WHERE NOT EXISTS (SELECT FROM t);",
        "1_fill.down.sql": "DROP TABLE IF EXISTS t;",
        "2_empty.sql": "DELETE FROM t;",
        "2_empty.down.sql": "INSERT INTO t SELECT 1 WHERE NOT EXISTS (SELECT FROM t);",
    }
    plan = STREAM_PLAN + textwrap.dedent(
        """
        steps:
          - migration: 1_fill
            checks:
              - {name: one row, sql: "SELECT count(*) FROM t", expect: 1}
        """
    )
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    assert results["1_fill::check[one row]"][0] == PASSED, results
    assert all(status == PASSED for status, _ in results.values()), results


def test_checks_compare_values_and_rows(pg_server: Server, tmp_path: Path) -> None:
    plan = DEFAULTS + textwrap.dedent(
        """
        steps:
          - migration: 1_users
            checks:
              - {name: count, sql: "SELECT count(*) FROM users", expect: 2}
              - {name: rows, sql: "SELECT id, email FROM users ORDER BY id", rows: [[1, a@x], [2, b@x]]}
              - {name: wrong, sql: "SELECT count(*) FROM users", expect: 3}
              - {name: broken sql, sql: "SELECT nope FROM users"}
        """
    )
    migrations = {
        "1_users.sql": USERS + "\nINSERT INTO users VALUES (1, 'a@x'), (2, 'b@x') ON CONFLICT DO NOTHING;",
        "1_users.down.sql": USERS_DOWN,
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    assert results["1_users::check[count]"][0] == PASSED
    assert results["1_users::check[rows]"][0] == PASSED
    status, message = results["1_users::check[wrong]"]
    assert status == FAILED and "expected 3, got 2" in message
    status, message = results["1_users::check[broken sql]"]
    assert status == FAILED and 'column "nope" does not exist' in message


CORRECT = {
    "expand: nullable column, concurrent index, enum, function, view": {
        "1_users.sql": USERS,
        "1_users.down.sql": USERS_DOWN,
        "2_col.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
        "2_col.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS nick;",
        "3_idx.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_nick_idx ON users (nick);",
        "3_idx.down.sql": "DROP INDEX CONCURRENTLY IF EXISTS users_nick_idx;",
        "4_enum.sql": """
            DO $$ BEGIN
                CREATE TYPE plan_kind AS ENUM ('free', 'pro');
            EXCEPTION WHEN duplicate_object THEN NULL;
            END $$;
            ALTER TABLE users ADD COLUMN IF NOT EXISTS kind plan_kind DEFAULT 'free';
        """,
        "4_enum.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS kind;\nDROP TYPE IF EXISTS plan_kind;",
        "5_view.sql": """
            CREATE OR REPLACE FUNCTION user_count() RETURNS bigint LANGUAGE sql STABLE AS $$
                SELECT count(*) FROM users;  -- a semicolon inside the body
            $$;
            CREATE OR REPLACE VIEW active_users AS SELECT id, email FROM users WHERE nick IS NOT NULL;
        """,
        "5_view.down.sql": "DROP VIEW IF EXISTS active_users;\nDROP FUNCTION IF EXISTS user_count();",
    },
    "grant in the up, revoke in the down": {
        "1_users.sql": USERS,
        "1_users.down.sql": USERS_DOWN,
        "2_grant.sql": "GRANT SELECT ON users TO PUBLIC;",
        "2_grant.down.sql": "REVOKE SELECT ON users FROM PUBLIC;",
    },
    "file wrapped in BEGIN/COMMIT, no down file": {
        "1_users.sql": "BEGIN;\n" + USERS + "\nCOMMIT;\n",
    },
}


@STREAMED
@pytest.mark.parametrize("case", list(CORRECT), ids=list(CORRECT))
def test_correct_migrations_raise_no_false_alarm(
    pg_server: Server, tmp_path: Path, case: str, streamed: bool
) -> None:
    results = rehearse(pg_server, make_project(tmp_path, CORRECT[case], without_locks(DEFAULTS) if streamed else DEFAULTS))
    failures = {k: v for k, v in results.items() if v[0] != PASSED and v != (SKIPPED, "no down migration")}
    assert not failures, failures
    assert any(k.endswith("::rollback") for k in results)
    for item_id, (status, _message) in results.items():
        if status == SKIPPED:  # a migration without a down still proves its failure rehearsal
            assert results[item_id.replace("::rollback", "::atomic")][0] == PASSED


def test_the_shipped_example_plan_is_green(pg_server: Server) -> None:
    root = Path(__file__).resolve().parent.parent
    plan = load_plan(root / "plans" / "example.yaml")
    with Rehearsal(plan, pg_server) as rehearsal:
        results = rehearsal.run_all()
        final = rehearsal.final_snapshot()
    failures = {i.id: o.message for i, o in results if o.status != PASSED}
    assert not failures, failures
    assert final is not None and "public.orders" in final.tables()


def test_selected_items_apply_their_predecessors_first(pg_server: Server, tmp_path: Path) -> None:
    path = make_project(
        tmp_path,
        {
            "1_users.sql": USERS,
            "1_users.down.sql": USERS_DOWN,
            "2_col.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
            "2_col.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS nick;",
        },
        DEFAULTS,
    )
    plan = load_plan(path)
    with Rehearsal(plan, pg_server) as rehearsal:
        only = [i for i in rehearsal.items() if i.id == "2_col::rollback"]
        [(item, outcome)] = rehearsal.run_all(only)
    assert outcome.status == PASSED, outcome.message


def test_chain_rollback_catches_a_down_that_breaks_in_a_chain(pg_server: Server, tmp_path: Path) -> None:
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);\n"
        "CREATE OR REPLACE FUNCTION cleanup() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "1_t.down.sql": "DROP FUNCTION IF EXISTS cleanup();\nDROP TABLE IF EXISTS t;",
        "2_c.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int;",
        "2_c.down.sql": "SELECT cleanup();\nALTER TABLE t DROP COLUMN IF EXISTS c;",
        "3_idx.sql": "CREATE INDEX IF NOT EXISTS t_c ON t (c);",
        # Wrong: also drops a function that belongs to 1_t, which 2_c's down needs.
        "3_idx.down.sql": "DROP INDEX IF EXISTS t_c;\nDROP FUNCTION IF EXISTS cleanup();",
    }
    results = rehearse(pg_server, make_project(tmp_path, migrations, DEFAULTS))
    status, message = results["chain_rollback"]
    assert status == FAILED
    assert "after the down of 3_idx the schema differs" in message
    assert "function public.cleanup(): removed" in message


def test_chain_rollback_passes_and_reports_column_order(pg_server: Server, tmp_path: Path) -> None:
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (a int, b int);",
        "1_t.down.sql": "DROP TABLE IF EXISTS t;",
        "2_drop.sql": "ALTER TABLE t DROP COLUMN IF EXISTS a;",
        "2_drop.down.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS a int;",
        "3_c.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int;",
        "3_c.down.sql": "ALTER TABLE t DROP COLUMN IF EXISTS c;",
    }
    plan = DEFAULTS.replace("backward_compatible: true", "backward_compatible: false")
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    status, message = results["chain_rollback"]
    assert status == FAILED
    assert "column order differs" in message and "2_drop" in message
    assert results["3_c::rollback"][0] == PASSED


def test_column_order_can_be_a_warning_and_chain_can_be_turned_off(pg_server: Server, tmp_path: Path) -> None:
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (a int, b int);",
        "1_t.down.sql": "DROP TABLE IF EXISTS t;",
        "2_drop.sql": "ALTER TABLE t DROP COLUMN IF EXISTS a;",
        "2_drop.down.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS a int;",
    }
    plan = "defaults: {idempotent: false, rollback: false, backward_compatible: false, lint: false}\n"
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan + "chain_rollback: true\ncolumn_order: warn\n"))
    status, message = results["chain_rollback"]
    assert status == PASSED and "warning: column order differs" in message
    other = tmp_path / "off"
    other.mkdir()
    results = rehearse(pg_server, make_project(other, migrations, DEFAULTS + "chain_rollback: false\n"))
    assert "chain_rollback" not in results


def test_lint_item_honours_plan_severities(pg_server: Server, tmp_path: Path) -> None:
    migrations = {
        "1_users.sql": USERS,
        "1_users.down.sql": USERS_DOWN,
        "2_idx.sql": "CREATE INDEX IF NOT EXISTS users_email_idx ON users (email);",
        "2_idx.down.sql": "DROP INDEX IF EXISTS users_email_idx;",
    }
    plan = "defaults: {idempotent: false, rollback: false, lint: true}\nlint: {severity: {index-not-concurrent: warning}}\n"
    results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    status, message = results["2_idx::lint"]
    assert status == PASSED and "warning index-not-concurrent" in message


def test_snapshots_let_go_are_rebuilt_exactly(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every migration's schema, kept as changes once let go, is rebuilt equal to the one taken at the time."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "verify")  # tracked and untracked ups both, whatever the suite's mode
    monkeypatch.setattr(rehearsal_model, "CHECKPOINT", 3)  # several windows in a short history
    ups = [
        "CREATE TABLE IF NOT EXISTS a (id int PRIMARY KEY, v text);",
        "ALTER TABLE a ADD COLUMN IF NOT EXISTS w int;",
        "ALTER TABLE a ADD COLUMN IF NOT EXISTS x int;",  # the same object as the one before, changed again
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a_v ON a (v);",  # not in a transaction: untracked
        "ALTER TABLE a RENAME COLUMN w TO w2;",
        "CREATE TABLE IF NOT EXISTS b (id int REFERENCES a);",
        "DROP TABLE IF EXISTS b;",
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;",
        "COMMENT ON TABLE a IS 'kept';",
    ]
    migrations = {f"{i:02d}_m.sql": up for i, up in enumerate(ups, 1)}
    only_apply = "defaults: {lint: false, locks: false, idempotent: false, rollback: false, backward_compatible: false}\n"
    plan = load_plan(make_project(tmp_path, migrations, only_apply))
    taken: dict[int, Snapshot] = {}
    with Rehearsal(plan, pg_server) as rehearsal:
        release = rehearsal._release

        def record(index: int) -> None:
            if index >= 0:
                taken[index] = rehearsal.steps[index].after
            release(index)

        monkeypatch.setattr(rehearsal, "_release", record)
        results = rehearsal.run_all()
        assert [(i.id, o.message) for i, o in results if o.status != PASSED] == []
        steps = rehearsal.steps
        assert [s.after is not None for s in steps] == [i % 3 == 0 or i >= 8 for i in range(10)]
        assert not steps[4].tracked and steps[5].tracked
        for index in range(10):
            expected = taken.get(index, steps[index].after)
            assert rehearsal.snapshot_at(index) == expected, index
        base = rehearsal.snapshot_at(-1)
        assert base is steps[0].before and "extension plpgsql" in base.objects  # the base stays whole
        assert rehearsal.schema_after(2) == taken[2]
        receipt = rehearsal.write_receipt()
    assert receipt is not None
    digests = json.loads(receipt.read_text())["digests"]
    assert list(digests.values()) == [taken.get(i, steps[i].after).digest for i in range(10)]


def test_a_long_history_keeps_only_snapshots_of_migrations_whose_items_ran(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-migration states and data are let go two migrations later; a late item says to run in order."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "verify")  # the states let go are the tracked ones
    migrations = {}
    for i in range(1, 6):
        migrations[f"{i}_t{i}.sql"] = f"CREATE TABLE IF NOT EXISTS t{i} (id int PRIMARY KEY, v text);"
        migrations[f"{i}_t{i}.down.sql"] = f"DROP TABLE IF EXISTS t{i};"
    plan = load_plan(make_project(tmp_path, migrations, without_locks(DEFAULTS)))
    with Rehearsal(plan, pg_server) as rehearsal:
        items = rehearsal.items()
        results = rehearsal.run_all(items)
        assert all(o.status == PASSED for _, o in results), [(i.id, o.message) for i, o in results]
        steps = rehearsal.steps
        assert [s.after_state is None for s in steps] == [True, True, True, False, False]
        assert all(s.tracked for s in steps)
        # Snapshots stay (receipts, chain_rollback): whole at head and every 16th, else as changes.
        assert [s.after is not None for s in steps] == [True, False, False, True, True]
        assert all(rehearsal.snapshot_at(i) is not None for i in range(-1, 5))
        assert rehearsal.write_receipt() is not None
        late = next(i for i in items if i.id.endswith("1_t1::idempotent"))
        outcome = rehearsal.run(late)
    assert outcome.status == FAILED and "run the plan's items in order" in outcome.message
