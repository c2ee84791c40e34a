"""``harness rollback`` (and ``apply --to``) against real PostgreSQL targets.

Every target is a fresh database on the session server (``db_dsn``);
receipts come from real rehearsals on throwaway servers of their own.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness import DevelopmentMigrationRunner, ProductionMigrationRunner
from harness.apply import ApplyOptions
from harness.errors import ConfigError, GuardError, LockTimeout, MigrationError
from harness.history import RUN_LOCK_KEY
from harness.receipt import Receipt
from harness.rollback import rollback_plan
from harness.snapshot import take_snapshot
from tests.fix_db import execute, history_versions, query, table_exists
from tests.projects import GUARDS, apply, cli, load, rehearse, wait_until, write_project

SEED = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 20) g;
"""

MIGRATIONS = {
    "1_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);",
    "1_users.down.sql": "DROP TABLE users;",
    "2_orders.sql": """
        CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));
        ALTER TABLE customers ADD COLUMN vip boolean NOT NULL DEFAULT false;
    """,
    "2_orders.down.sql": "ALTER TABLE customers DROP COLUMN vip; DROP TABLE orders;",
    "3_index.sql": "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
    "3_index.down.sql": "DROP INDEX CONCURRENTLY users_email_idx;",
}

#: Every step rehearses its down (rollback and, with it, chain_rollback): what a production rollback needs.
ROLLBACK_STEPS = """
steps:
  - {migration: 1_users, rollback: true}
  - {migration: 2_orders, rollback: true}
  - {migration: 3_index, rollback: true}
"""


@pytest.fixture
def seeded(db_dsn: str) -> str:
    execute(db_dsn, SEED)
    return db_dsn


def _events(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def _digest(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return take_snapshot(conn).digest


def _column_exists(dsn: str, table: str, column: str) -> bool:
    return bool(query(dsn, "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                           "AND NOT attisdropped", [table, column])[0][0])


# ---------------------------------------------------------------------- development


def test_development_rollback_of_the_last_two(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    code, out, err = cli(["apply", str(plan_path), "--to", "1"], capsys)
    assert code == 0, out + err
    assert history_versions(seeded) == ["1"]
    at_one = _digest(seeded)
    assert cli(["apply", str(plan_path)], capsys)[0] == 0
    assert history_versions(seeded) == ["1", "2", "3"] and _digest(seeded) != at_one

    code, out, err = cli(["rollback", str(plan_path), "--steps", "2", "--json"], capsys)
    assert code == 0, out + err
    result = json.loads(out)
    assert result["ok"] and result["command"] == "rollback"
    assert result["rolled_back"] == ["3_index", "2_orders"] and result["to"] == "1"
    assert result["backup"] is None and result["verification"] == "skipped (development mode)"
    assert result["pending"] == ["2_orders", "3_index"]
    assert history_versions(seeded) == ["1"]
    assert not table_exists(seeded, "public.orders") and not table_exists(seeded, "public.users_email_idx")
    assert not _column_exists(seeded, "public.customers", "vip")
    assert _digest(seeded) == at_one  # the schema is the one apply --to 1 left
    events = _events(Path(result["log"]))
    assert [e["migration"] for e in events if e["event"] == "rolled_back"] == ["3_index", "2_orders"]
    assert [e["title"] for e in events if e["event"] == "step"] == result["step_titles"]

    # Applying again brings both back; the history is consistent with the schema.
    assert cli(["apply", str(plan_path)], capsys)[0] == 0
    assert history_versions(seeded) == ["1", "2", "3"] and table_exists(seeded, "public.orders")


def test_runner_rollback_and_apply_to(tmp_path: Path, seeded: str) -> None:
    plan = load(write_project(tmp_path, MIGRATIONS, seed=SEED), seeded)
    runner = DevelopmentMigrationRunner(plan)
    first = runner.run(to="2_orders")
    assert first.applied == ["1_users", "2_orders"] and first.pending == ["3_index"]
    assert history_versions(seeded) == ["1", "2"]
    result = runner.rollback(to="1")
    assert result.rolled_back == ["2_orders"] and history_versions(seeded) == ["1"]
    with pytest.raises(ConfigError, match="not both"):
        runner.rollback(to="1", steps=1)


def test_usage_errors_and_nothing_to_roll_back(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    assert cli(["apply", str(plan_path), "--to", "2"], capsys)[0] == 0
    code, _, err = cli(["rollback", str(plan_path), "--to", "1", "--steps", "1"], capsys)
    assert code == 2 and "not both" in err
    code, _, err = cli(["rollback", str(plan_path)], capsys)
    assert code == 2 and "--to VERSION" in err
    code, _, err = cli(["rollback", str(plan_path), "--to", "17"], capsys)
    assert code == 2 and "unknown migration version '17'" in err
    code, _, err = cli(["apply", str(plan_path), "--to", "17"], capsys)
    assert code == 2 and "unknown migration version '17'" in err
    code, _, err = cli(["rollback", str(plan_path), "--steps", "3"], capsys)
    assert code == 2 and "only 2 migrations applied" in err
    code, _, err = cli(["rollback", str(plan_path), "--steps", "0"], capsys)
    assert code == 2 and ">= 1" in err
    # Nothing after 2 (or after the pending 3) is applied: exit 0, with a message, and nothing changes.
    for version in ("2", "3"):
        code, out, err = cli(["rollback", str(plan_path), "--to", version], capsys)
        assert code == 0 and "nothing to roll back" in out, out + err
    assert history_versions(seeded) == ["1", "2"]


def test_failing_down_keeps_its_migration_applied(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = {**MIGRATIONS, "2_orders.down.sql": "DROP TABLE orders;\nALTER TABLE customers DROP COLUMN nope;"}
    plan_path = write_project(tmp_path, migrations, seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    assert cli(["apply", str(plan_path)], capsys)[0] == 0
    code, out, err = cli(["rollback", str(plan_path), "--to", "1"], capsys)
    assert code == 1
    assert "the down migration of 2_orders" in err and "stays applied" in err
    assert "migrations/2_orders.down.sql:2:1" in err and "nope" in err  # file:line:column and the error
    assert "rolled back by this run before it (they stay rolled back): 3_index" in err
    # 3_index's down committed; 2_orders' down was rolled back whole: the table its first statement dropped is there.
    assert history_versions(seeded) == ["1", "2"]
    assert table_exists(seeded, "public.orders") and _column_exists(seeded, "public.customers", "vip")
    assert not table_exists(seeded, "public.users_email_idx")
    code, out, _ = cli(["status", str(plan_path), "--json"], capsys)
    assert json.loads(out)["counts"]["applied"] == 2 and json.loads(out)["ok"]


# ---------------------------------------------------------------------- production


def test_production_rollback_of_the_last_two(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = """
hooks:
  pre_run: [{run: "python -c \\"import os; open('pre_run.txt', 'a').write(os.environ['HARNESS_COMMAND'] + ' ')\\""}]
  post_migration: [{run: "python -c \\"import os; open('post.txt', 'a').write(os.environ['HARNESS_MIGRATION'] + ' ')\\""}]
"""
    plan_path = write_project(tmp_path, MIGRATIONS, ROLLBACK_STEPS + hooks, mode="production", seed=SEED)
    monkeypatch.chdir(tmp_path)  # paths in messages are shown relative to the working directory
    receipt_file = rehearse(plan_path, seeded, capsys, monkeypatch)
    receipt = Receipt.from_json(receipt_file.read_text())
    assert receipt.downs == {m: ("rollback", "chain_rollback") for m in ("1_users", "2_orders", "3_index")}
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 0, out + err
    assert (tmp_path / "pre_run.txt").read_text() == "apply "
    applied_backups = set((tmp_path / "backups").glob("*.dump"))

    code, out, err = cli(["rollback", str(plan_path), "--to", "1", "--yes", "--json"], capsys)
    assert code == 0, out + err
    result = json.loads(out)
    assert result["rolled_back"] == ["3_index", "2_orders"] and result["to"] == "1"
    assert history_versions(seeded) == ["1"]
    assert not table_exists(seeded, "public.orders") and not _column_exists(seeded, "public.customers", "vip")
    # The schema is the rehearsal's after 1_users: the receipt's digest says so, and verification checked it.
    assert _digest(seeded) == receipt.digests["1_users"]
    assert result["verification"] == "passed (schema digest matches the rehearsal after 1_users)"
    assert "the downs to run passed rollback and chain_rollback" in err and "drift: none" in err
    backup = Path(result["backup"])
    assert backup.is_file() and backup not in applied_backups
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "pre_run.txt").read_text() == "apply rollback "
    assert (tmp_path / "post.txt").read_text().split() == ["1_users", "2_orders", "3_index", "3_index", "2_orders"]
    assert result["step_titles"][:2] == ["hooks pre_run", "backup"]
    assert result["step_titles"][2].startswith("down 3_index (migrations/3_index.down.sql, 1 statement, statement by")
    assert result["step_titles"][3].startswith("down 2_orders (migrations/2_orders.down.sql, 2 statements, in one")

    # A receipt that does not prove the downs (no rollback items rehearsed) is refused before any change.
    plan_path.write_text(plan_path.read_text().replace("rollback: true", "rollback: false"))
    assert cli(["apply", str(plan_path), "--yes", "--force"], capsys)[0] == 0
    rehearse(plan_path, seeded, capsys, monkeypatch)
    code, out, err = cli(["rollback", str(plan_path), "--steps", "1", "--yes"], capsys)
    assert code == 1 and "does not prove the downs" in err and "3_index: rollback and chain_rollback did not pass" in err
    assert history_versions(seeded) == ["1", "2", "3"]


def test_production_refuses_an_old_receipt_without_down_proofs(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, {k: v for k, v in MIGRATIONS.items() if not k.startswith("3_")},
                              ROLLBACK_STEPS.replace("  - {migration: 3_index, rollback: true}\n", ""),
                              mode="production", seed=SEED)
    receipt_file = rehearse(plan_path, seeded, capsys, monkeypatch)
    assert cli(["apply", str(plan_path), "--yes"], capsys)[0] == 0
    data = json.loads(receipt_file.read_text())
    data["format"] = 3
    del data["downs"]
    receipt_file.write_text(json.dumps(data))
    assert Receipt.from_json(receipt_file.read_text()).downs is None  # format 3 still reads: apply accepts it
    code, _, err = cli(["rollback", str(plan_path), "--steps", "1", "--yes"], capsys)
    assert code == 1 and "records no rehearsed downs" in err
    assert history_versions(seeded) == ["1", "2"]
    # Without a terminal to ask, production needs --yes (exit 2), before any change.
    code, _, err = cli(["rollback", str(plan_path), "--steps", "1", "--force"], capsys)
    assert code == 2 and "production rollback to" in err and "pass --yes" in err
    assert history_versions(seeded) == ["1", "2"]
    # --force rolls back anyway, loudly.
    code, out, err = cli(["rollback", str(plan_path), "--steps", "1", "--yes", "--force"], capsys)
    assert code == 0 and "WARNING: --force: rolling back although" in out, out + err
    assert history_versions(seeded) == ["1"]


@pytest.mark.parametrize("irreversible", ["no down", "empty down", "rollback: none"])
def test_irreversible_migration_is_refused_before_any_change(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    irreversible: str,
) -> None:
    migrations = {k: v for k, v in MIGRATIONS.items() if not k.startswith("3_")}
    plan = ""
    if irreversible == "no down":
        del migrations["2_orders.down.sql"]
    elif irreversible == "empty down":
        migrations["2_orders.down.sql"] = "-- the backfill cannot be undone\n"
    else:
        plan = "steps:\n  - {migration: 2_orders, rollback: none, reason: backfill}\n"
    plan_path = write_project(tmp_path, migrations, plan, mode="production", seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    assert cli(["apply", str(plan_path), "--yes", "--force", "--to", "1"], capsys)[0] == 0
    assert cli(["apply", str(plan_path), "--yes", "--force"], capsys)[0] == 0
    backups = sorted((tmp_path / "backups").glob("*.dump"))
    assert len(backups) == 2  # one before 1_users, one before 2_orders
    before = _digest(seeded)
    code, out, err = cli(["rollback", str(plan_path), "--to", "1", "--yes"], capsys)
    assert code == 1
    reason = {"no down": "2_orders: it has no down migration", "empty down": "2_orders.down.sql) is empty",
              "rollback: none": "2_orders: its step declares it irreversible (rollback: none): backfill"}[irreversible]
    assert reason in err, err
    # The backup to restore is the one taken just before 2_orders was applied (its manifest lists it).
    (before_2,) = [b for b in backups if json.loads(b.with_suffix(".json").read_text())["versions"] == ["2_orders"]]
    assert f"harness restore {before_2}" in err and "harness backups p" in err
    assert history_versions(seeded) == ["1", "2"] and _digest(seeded) == before
    assert sorted((tmp_path / "backups").glob("*.dump")) == backups  # no backup taken: it refused first
    # The dry run says the same, and exits 1.
    code, out, _ = cli(["rollback", str(plan_path), "--to", "1", "--dry-run"], capsys)
    assert code == 1 and "irreversible: rollback WOULD REFUSE" in out


def test_dry_run_lists_exactly_the_steps_the_run_executes(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = ROLLBACK_STEPS + "hooks:\n  post_run: [{run: 'echo done'}]\n"
    plan += "health:\n  checks:\n    - {name: customers kept, sql: 'SELECT count(*) FROM customers', expect: 20}\n"
    plan_path = write_project(tmp_path, MIGRATIONS, plan, mode="production", seed=SEED)
    monkeypatch.chdir(tmp_path)  # paths in messages are shown relative to the working directory
    rehearse(plan_path, seeded, capsys, monkeypatch)
    assert cli(["apply", str(plan_path), "--yes"], capsys)[0] == 0
    rows = query(seeded, "SELECT * FROM harness.schema_migrations ORDER BY version")
    catalog = query(seeded, "SELECT count(*) FROM pg_class")
    backups = set((tmp_path / "backups").glob("*"))
    logs = set((tmp_path / "logs").glob("*"))

    code, out, err = cli(["rollback", str(plan_path), "--steps", "2", "--dry-run", "--json"], capsys)
    assert code == 0, out + err
    dry = json.loads(out)
    assert dry["dry_run"] and dry["ok"]
    text = "\n".join(dry["steps"])
    # Exactly what runs: the transactional down between BEGIN and COMMIT with SET LOCAL timeouts ...
    assert ("BEGIN;\n  SET LOCAL lock_timeout = '400ms';\n  SET LOCAL statement_timeout = '30000ms';\n"
            in text)
    # ... the non-transactional one statement by statement with session timeouts.
    assert "SET SESSION lock_timeout = '400ms';" in text and "RESET lock_timeout;" in text
    assert "ALTER TABLE customers DROP COLUMN vip;" in text and "DROP INDEX CONCURRENTLY users_email_idx;" in text
    assert "delete 2_orders from harness.schema_migrations (same transaction)" in text
    assert "rollback would refuse" not in text
    assert query(seeded, "SELECT * FROM harness.schema_migrations ORDER BY version") == rows
    assert query(seeded, "SELECT count(*) FROM pg_class") == catalog
    assert set((tmp_path / "backups").glob("*")) == backups and set((tmp_path / "logs").glob("*")) == logs

    code, out, err = cli(["rollback", str(plan_path), "--steps", "2", "--yes", "--json"], capsys)
    assert code == 0, out + err
    real = json.loads(out)
    assert real["step_titles"] == dry["step_titles"]
    assert dry["step_titles"] == ["backup", "down 3_index (migrations/3_index.down.sql, 1 statement, statement by "
                                  "statement (non-transactional))",
                                  "down 2_orders (migrations/2_orders.down.sql, 2 statements, in one transaction)",
                                  "verify", "health", "hooks post_run", "retention"]
    events = _events(Path(real["log"]))
    assert [e["title"] for e in events if e["event"] == "step"] == dry["step_titles"]
    assert real["health"].startswith("passed") and history_versions(seeded) == ["1"]


def test_apply_to_stops_at_the_version_and_verifies_there(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, mode="production", seed=SEED)
    receipt = Receipt.from_json(rehearse(plan_path, seeded, capsys, monkeypatch).read_text())
    code, out, err = cli(["apply", str(plan_path), "--to", "2", "--dry-run"], capsys)
    assert code == 0 and "[2/2] 2_orders" in out and "3_index" not in out.split("status:")[1].split("verify")[0]
    assert "verify: the schema must equal the rehearsal's schema after 2_orders" in out
    code, out, err = cli(["apply", str(plan_path), "--to", "2_orders", "--yes", "--json"], capsys)
    assert code == 0, out + err
    result = json.loads(out)
    assert result["applied"] == ["1_users", "2_orders"] and result["pending"] == ["3_index"]
    assert result["verification"] == "passed (schema digest matches the rehearsal after 2_orders)"
    assert history_versions(seeded) == ["1", "2"] and _digest(seeded) == receipt.digests["2_orders"]
    code, out, err = cli(["apply", str(plan_path), "--to", "2", "--yes"], capsys)
    assert code == 0 and "nothing to apply" in out
    # A target already past VERSION is verified where it is, not at VERSION.
    assert cli(["apply", str(plan_path), "--yes"], capsys)[0] == 0
    code, out, err = cli(["apply", str(plan_path), "--to", "1", "--yes"], capsys)
    assert code == 0 and "nothing to apply" in out and "verification: passed" in out, out + err


# ---------------------------------------------------------------------- the run lock, secrets


def test_rollback_waits_for_the_run_lock_then_refuses_after_lock_wait(tmp_path: Path, seeded: str) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, seed=SEED)
    plan = load(plan_path, seeded)
    result, out, error = apply(plan)
    assert error is None, out
    # Another applier holds the lock for a while, then lets go: the rollback waits, says so, then runs.
    text = io.StringIO()
    done: list[object] = []
    with psycopg.connect(seeded, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [RUN_LOCK_KEY])
        thread = threading.Thread(
            target=lambda: done.append(rollback_plan(plan, ApplyOptions(yes=True), steps=1, out=text)))
        thread.start()
        try:
            wait_until(lambda: "waiting up to" in text.getvalue(), "rollback to say that it waits for the run lock")
            assert not done and history_versions(seeded) == ["1", "2", "3"]
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [RUN_LOCK_KEY])
            thread.join(30)
    assert done and history_versions(seeded) == ["1", "2"]
    assert "held by pid" in text.getvalue()
    # Held for longer than lock_wait: refused, nothing changed.
    short = write_project(tmp_path, MIGRATIONS, seed=SEED, guards=GUARDS.replace("lock_wait: 20s", "lock_wait: 1s"))
    with psycopg.connect(seeded, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [RUN_LOCK_KEY])
        with pytest.raises(LockTimeout):
            rollback_plan(load(short, seeded), ApplyOptions(yes=True), steps=1, out=None)
    assert history_versions(seeded) == ["1", "2"]


def test_password_never_appears(
    tmp_path: Path, pg_server: object, db_name: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "Rb-5e1d0c93a"
    role = f"rb_{db_name}"
    base = pg_server.dsn(db_name)  # type: ignore[attr-defined]
    execute(base, f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'")
    execute(base, SEED)
    dsn = f"{base} user={role} password={secret}"
    migrations = {**MIGRATIONS, "3_index.down.sql": "SELECT 1/0;"}
    plan_path = write_project(tmp_path, migrations, ROLLBACK_STEPS, mode="production", seed=SEED)
    monkeypatch.setenv("TARGET_URL", dsn)
    assert cli(["apply", str(plan_path), "--yes", "--force"], capsys)[0] == 0
    runs = [
        cli(["rollback", str(plan_path), "--steps", "1", "--dry-run", "--json"], capsys),
        cli(["rollback", str(plan_path), "--steps", "1", "--yes", "--force", "--json"], capsys),  # the down fails
    ]
    assert runs[1][0] == 1 and "division by zero" in runs[1][2]
    with pytest.raises(MigrationError) as caught:
        ProductionMigrationRunner(load(plan_path, dsn), force=True).rollback(steps=1)
    with pytest.raises(GuardError) as refused:
        ProductionMigrationRunner(load(plan_path, dsn)).rollback(steps=1)  # no receipt
    texts = [text for run in runs for text in run[1:]]
    texts += [str(caught.value), repr(caught.value), str(refused.value)]
    texts += [p.read_text() for p in [*tmp_path.rglob("*.jsonl"), *tmp_path.rglob("backups/*.json")]]
    for text in texts:
        assert secret not in text
    assert any(role in t for t in texts)  # the user is shown, so the check is not vacuous
    assert history_versions(dsn) == ["1", "2", "3"]


def test_rollback_keeps_a_mirrored_history_in_step(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, {
        "1_a.up.sql": "CREATE TABLE a (id int);", "1_a.down.sql": "DROP TABLE a;",
        "2_b.up.sql": "CREATE TABLE b (id int);", "2_b.down.sql": "DROP TABLE b;",
    }, "layout: golang-migrate\nhistory: {mirror: golang-migrate}\n")
    plan = load(plan_path, db_dsn)
    result, out, error = apply(plan)
    assert error is None and query(db_dsn, "SELECT version, dirty FROM schema_migrations") == [(2, False)], out
    text = io.StringIO()
    dry = rollback_plan(plan, ApplyOptions(dry_run=True), steps=1, out=text)
    assert "and from golang-migrate's history table (same transaction)" in "\n".join(dry.dry_run_plan)
    rolled = rollback_plan(plan, ApplyOptions(), steps=1, out=None)
    assert rolled.rolled_back == ["2_b"] and history_versions(db_dsn) == ["1"]
    assert query(db_dsn, "SELECT version, dirty FROM schema_migrations") == [(1, False)]
    assert not table_exists(db_dsn, "public.b")
