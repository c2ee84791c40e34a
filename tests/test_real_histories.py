"""Histories shaped like the ones teams really have: verdicts stay true, one bad file never hides the rest.

Each folder here is written for the test (no project's files are copied):
placeholder migrations with no SQL, downs left empty to say "irreversible",
migrations without downs, an old down that no longer parses, an up that
does not parse in the middle of a history, and a diesel folder whose down
uses a statement diesel cannot run inside the transaction it opens.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
import pytest

from harness.cli import main
from harness.errors import EXIT_FAILED, EXIT_USAGE
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, SKIPPED, Rehearsal
from tests.projects import apply, load, write_project
from tests.projects import rehearse as rehearse_cli

# Real histories are rarely re-runnable; the items under test here are apply, rollback, atomic and lint.
DEFAULTS = "defaults: {idempotent: false, rollback: true, backward_compatible: true, lint: true}\n"


def project(root: Path, files: dict[str, str], plan: str = DEFAULTS, layout: str = "") -> Path:
    """Write a migrations folder (paths may hold sub-folders) and a plan; return the plan path."""
    folder = root / "migrations"
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    folder.mkdir(exist_ok=True)
    (root / "plans").mkdir()
    head = "migrations: migrations/\nrehearsal: {provider: embedded}\n" + (f"layout: {layout}\n" if layout else "")
    path = root / "plans" / "p.yaml"
    path.write_text(head + textwrap.dedent(plan))
    return path


def rehearse(server: Server, plan_path: Path) -> dict[str, tuple[str, str]]:
    with Rehearsal(load_plan(plan_path), server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"

# A native history with the shapes real ones have.
HISTORY = {
    "1_users.sql": USERS,
    "1_users.down.sql": "DROP TABLE users;\n",
    "2_placeholder.sql": "-- This migration exists for the MySQL build only.\n",
    "2_placeholder.down.sql": "",
    "3_nick.sql": "ALTER TABLE users ADD COLUMN nick text;\n",
    "3_nick.down.sql": "ALTER TABLE users DROP COLUMN nick;\nALTER TABLE users DROP COLUM nick2;\n",  # broken since
    "4_seed.sql": "INSERT INTO users (id, email) VALUES (1, 'a@example.com') ON CONFLICT DO NOTHING;\n",
    "4_seed.down.sql": "/* data migrations are not undone */\n",
    "5_orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users);\n",
    "5_orders.down.sql": "DROP TABLE orders;\n",
    "6_audit.sql": "CREATE TABLE audit (at timestamptz NOT NULL DEFAULT now());\n",
}


def test_one_broken_down_fails_only_its_own_items(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, project(tmp_path, HISTORY))
    # The broken down fails its migration's rollback and lint, with file, line and the parser's message.
    status, message = results["3_nick::rollback"]
    assert status == FAILED
    assert "3_nick.down.sql:2:" in message and "syntax error" in message
    status, message = results["3_nick::lint"]
    assert status == FAILED and "parse-error" in message and "3_nick.down.sql" in message
    # Everything else was rehearsed: every migration applied.
    for mid in ("1_users", "2_placeholder", "3_nick", "4_seed", "5_orders", "6_audit"):
        assert results[f"{mid}::apply"][0] == PASSED, results[f"{mid}::apply"]
        assert results[f"{mid}::backward_compatible"][0] == PASSED, results[f"{mid}::backward_compatible"]
    assert results["1_users::rollback"][0] == PASSED
    assert results["5_orders::rollback"][0] == PASSED


def test_item_names_claim_only_what_was_proven(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, project(tmp_path, HISTORY))
    # A placeholder: an empty up with an empty down changes nothing, so nothing needs undoing.
    assert results["2_placeholder::rollback"][0] == PASSED
    assert "no SQL" in results["2_placeholder::lint"][1]
    # An empty down after a data migration fails and says what would stay, and how to declare it.
    status, message = results["4_seed::rollback"]
    assert status == FAILED
    assert "4_seed.down.sql is empty" in message and "users" in message and "rollback: none" in message
    # No down file at all: rollback is skipped, the failure rehearsal runs as its own item.
    assert results["6_audit::rollback"] == (SKIPPED, "no down migration")
    assert results["6_audit::atomic"][0] == PASSED
    assert "5_orders::atomic" not in results  # a real down: rollback proves it
    # The chain stops at the last migration without a down: 6_audit has none, so there is no chain item.
    assert "chain_rollback" not in results


def test_declared_irreversible_is_skipped_with_the_reason(pg_server: Server, tmp_path: Path) -> None:
    plan = DEFAULTS + textwrap.dedent("""\
        steps:
          - migration: "4"
            rollback: none
            reason: backfills cannot be undone
          - migration: "3"
            rollback: none
        """)
    results = rehearse(pg_server, project(tmp_path, HISTORY, plan))
    assert results["4_seed::rollback"] == (
        SKIPPED, "declared irreversible in the plan (rollback: none): backfills cannot be undone"
    )
    assert results["4_seed::atomic"][0] == PASSED
    assert results["3_nick::rollback"][0] == SKIPPED
    assert results["3_nick::lint"][0] == FAILED  # the down still does not parse: lint says so


def test_require_down_fails_a_migration_without_one(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, project(tmp_path, HISTORY, "require_down: true\n" + DEFAULTS))
    status, message = results["6_audit::rollback"]
    assert status == FAILED and "require_down" in message and "6_audit.down.sql" in message


def test_chain_rollback_fails_at_a_broken_down(pg_server: Server, tmp_path: Path) -> None:
    files = {k: v for k, v in HISTORY.items() if not k.startswith(("4_", "6_", "2_"))}
    results = rehearse(pg_server, project(tmp_path, files))
    status, message = results["chain_rollback"]
    assert status == FAILED and "3_nick" in message and "cannot be run" in message


def test_an_up_that_does_not_parse_fails_apply_and_the_rest_skips(pg_server: Server, tmp_path: Path) -> None:
    files = {
        "1_users.sql": USERS,
        "2_broken.sql": "ALTER TABLE users ADD COLUMN nick text;\nALTER TABEL users ADD COLUMN x int;\n",
        "3_after.sql": "CREATE TABLE after_it (id int);\n",
        "4_index.sql": "CREATE INDEX users_email_idx ON users (email);\nCREATE INDEX after_idx ON after_it (id);\n"
                       "CREATE TABLE fresh (id int);\nCREATE INDEX fresh_idx ON fresh (id);\n",
    }
    results = rehearse(pg_server, project(tmp_path, files))
    assert results["1_users::apply"][0] == PASSED
    status, message = results["2_broken::apply"]
    assert status == FAILED and "2_broken.sql:2:" in message and "syntax error" in message
    assert results["2_broken::lint"][0] == FAILED and "parse-error" in results["2_broken::lint"][1]
    assert results["3_after::apply"] == (SKIPPED, "depends on 2_broken, which failed to apply")
    # Lint needs no database: it still runs after the failure, knowing what the history created.
    assert results["3_after::lint"][0] == PASSED
    status, message = results["4_index::lint"]
    assert status == FAILED and "index-not-concurrent" in message and "users" in message
    assert "after_it" in message  # created by 3_after, an earlier migration: it exists before 4_index
    assert "fresh" not in message  # created by 4_index itself: new, so no finding


DIESEL = {
    "00000000000000_diesel_initial_setup/up.sql": "-- diesel's own setup\nSELECT 1;\n",
    "00000000000000_diesel_initial_setup/down.sql": "SELECT 1;\n",
    "2017-09-23-182408_users/up.sql": USERS,
    "2017-09-23-182408_users/down.sql": "DROP TABLE users;\n",
    # diesel runs a down inside a transaction unless metadata.toml says otherwise: this down fails under diesel.
    "2018-01-02-000000_email_index/up.sql": "CREATE INDEX users_email_idx ON users (email);\n",
    "2018-01-02-000000_email_index/down.sql": "DROP INDEX CONCURRENTLY users_email_idx;\n",
    # Irreversible the diesel way: a down with only a comment.
    "2025-11-19-091444-0000_posts/up.sql": "CREATE TABLE posts (id bigint PRIMARY KEY);\n",
    "2025-11-19-091444-0000_posts/down.sql": "-- irreversible\n",
}


def test_diesel_downs_run_as_diesel_runs_them(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, project(tmp_path, DIESEL, layout="diesel"))
    status, message = results["2018-01-02-000000_email_index::rollback"]
    assert status == FAILED
    assert "cannot run inside a transaction block" in message and "run_in_transaction = false" in message
    status, message = results["2025-11-19-091444-0000_posts::rollback"]
    assert status == FAILED and "is empty" in message and "posts" in message
    assert results["2017-09-23-182408_users::rollback"][0] == PASSED
    # With the metadata diesel reads, the same down runs outside a transaction and passes.
    (tmp_path / "migrations" / "2018-01-02-000000_email_index" / "metadata.toml").write_text(
        "run_in_transaction = false\n"
    )
    results = rehearse(pg_server, project(tmp_path / "again", {
        **DIESEL, "2018-01-02-000000_email_index/metadata.toml": "run_in_transaction = false\n",
    }, layout="diesel"))
    assert results["2018-01-02-000000_email_index::rollback"][0] == PASSED, results


def test_an_up_its_tool_cannot_run_fails_apply_but_the_history_goes_on(pg_server: Server, tmp_path: Path) -> None:
    files = {
        "2017-09-23-182408_users/up.sql": USERS,
        "2017-09-23-182408_users/down.sql": "DROP TABLE users;\n",
        "2018-01-02-000000_email_index/up.sql": "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n",
        "2018-01-02-000000_email_index/down.sql": "DROP INDEX users_email_idx;\n",
        "2019-01-01-000000_posts/up.sql": "CREATE TABLE posts (id bigint PRIMARY KEY);\n",
    }
    results = rehearse(pg_server, project(tmp_path, files, layout="diesel"))
    status, message = results["2018-01-02-000000_email_index::apply"]
    assert status == FAILED and "diesel runs each migration in a transaction" in message
    assert results["2019-01-01-000000_posts::apply"][0] == PASSED


def test_cli_rehearse_exit_code_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = project(tmp_path, HISTORY)
    code = main(["rehearse", str(plan)])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "3_nick::rollback" in out and "6_audit::atomic" in out


@pytest.mark.parametrize(
    ("files", "fragments"),
    [
        ({}, ["no migration found in", "<version>_<name>.sql"]),
        ({"migration_lock.toml": 'provider = "postgresql"\n'},
         ["no migration found in", "the prisma layout looks for", "migration.sql"]),
        # Read as Alembic now: a revision file without its revision id is the environment's error.
        ({"env.py": "", "versions/1a2b_init.py": ""}, ["Alembic cannot read the environment", "1a2b_init.py"]),
    ],
    ids=["empty", "prisma-without-migrations", "alembic"],
)
def test_a_folder_without_migrations_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], fragments: list[str]
) -> None:
    plan = project(tmp_path, files)
    code = main(["rehearse", str(plan)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err


def test_apply_refuses_a_pending_migration_that_cannot_run(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, {
        "1_users.sql": USERS,
        "2_empty.sql": "-- placeholder\n",
        "3_broken.sql": "CREATE TABLE x (id int);\nCREATE TABEL y (id int);\n",
    })
    result, _out, error = apply(load(plan_path, db_dsn))
    assert error is not None and error.exit_code == EXIT_USAGE
    assert "3_broken.sql:2:" in str(error) and "changes nothing" in str(error)
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT to_regclass('users'), to_regclass('x')").fetchone() == (None, None)
    # Without the broken file the empty placeholder is applied and recorded like any other migration.
    (tmp_path / "migrations" / "3_broken.sql").unlink()
    result, _out, error = apply(load(plan_path, db_dsn))
    assert error is None, error
    with psycopg.connect(db_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM harness.schema_migrations ORDER BY version")]
    assert versions == ["1", "2"]


def test_a_green_history_with_migrations_without_downs_writes_its_receipt(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped items say what was not claimed (no down), not a failure: the receipt is written, apply runs."""
    plan_path = write_project(tmp_path, {
        "1_users.sql": USERS,
        "1_users.down.sql": "DROP TABLE users;\n",
        "2_audit.sql": "CREATE TABLE audit (at timestamptz NOT NULL DEFAULT now());\n",  # no down, as Prisma's
    }, 'backup: {mode: none}\nsteps:\n  - {migration: "1", rollback: true}\n  - {migration: "2", rollback: true}\n',
        mode="production")
    receipt = rehearse_cli(plan_path, db_dsn, capsys, monkeypatch)
    assert receipt.is_file()
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["1_users", "2_audit"]
    # The pytest plugin writes it too.
    receipt.unlink()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--migrate-plan", str(plan_path), "--migrate-cache", "false"])
    capsys.readouterr()
    assert code == 0 and receipt.is_file()
