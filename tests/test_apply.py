"""``apply`` against real PostgreSQL targets: development and production runs, failures, locks, crashes.

Every target is a fresh database on the session server (``db_dsn``); the
rehearsals that write receipts and the drift check run on throwaway servers
of their own, as in production.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness import migrator
from harness.apply import ApplyOptions, apply_plan
from harness.errors import CheckFailed, ConfigError, GuardError, MigrationError, RunLockLost
from harness.hooks import HookContext
from tests.fix_db import execute, history_versions, holding, query, sleeping_backend, table_exists
from tests.projects import GUARDS, apply, cli, harness_process, load, rehearse, wait_until, write_project

SEED = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;
CREATE TABLE hook_marks (at timestamptz DEFAULT now());
"""

BASIC = {
    "1_users.sql": """
        CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);
        INSERT INTO users VALUES (1, 'a@example.com') ON CONFLICT DO NOTHING;
    """,
    "1_users.down.sql": "DROP TABLE IF EXISTS users;",
    "2_orders.sql": """
        BEGIN;
        CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));
        ALTER TABLE customers ADD COLUMN IF NOT EXISTS vip boolean NOT NULL DEFAULT false;
        COMMIT;
    """,
    "2_orders.down.sql": "DROP TABLE IF EXISTS orders; ALTER TABLE customers DROP COLUMN IF EXISTS vip;",
    "3_index.sql": """
        CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);
    """,
    "3_index.down.sql": "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
}


@pytest.fixture
def seeded(db_dsn: str) -> str:
    """A target with the seed loaded (a database that existed before the first migration)."""
    execute(db_dsn, SEED)
    return db_dsn


# ---------------------------------------------------------------------- end to end


def test_development_run_end_to_end(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, BASIC, seed=SEED)
    result, out, error = apply(load(plan_path, seeded))
    assert error is None, out
    assert result is not None and result.ok
    assert result.applied == ["1_users", "2_orders", "3_index"]
    assert result.backup is None  # development mode takes none
    assert "verification: skipped (development mode)" in out
    assert history_versions(seeded) == ["1", "2", "3"]
    assert query(seeded, "SELECT mode FROM harness.schema_migrations") == [("development",)] * 3
    assert table_exists(seeded, "public.orders")
    assert query(seeded, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass") == [(True,)]

    # The JSON-lines log has every phase, the statements and the outcome.
    assert result.log_path is not None and result.log_path.parent == tmp_path / "logs"
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"run_start", "phase_start", "phase_end", "statement", "run_end"} <= kinds
    assert events[-1]["event"] == "run_end" and events[-1]["ok"] is True
    migration_ends = [e for e in events if e["event"] == "phase_end" and e["phase"].startswith("migration:")]
    assert [e["statements"] for e in migration_ends] == [2, 2, 1]
    assert oct(result.log_path.stat().st_mode & 0o777) == "0o600"

    # harness status agrees; a second run applies nothing.
    monkeypatch.setenv("TARGET_URL", seeded)
    code, stdout, _ = cli(["status", str(plan_path), "--json"], capsys)
    status = json.loads(stdout)
    assert code == 0 and status["counts"] == {"applied": 3, "pending": 0, "changed": 0, "missing": 0, "failed": 0}
    again, out2, error = apply(load(plan_path, seeded))
    assert error is None and again is not None and again.applied == [] and again.skipped == ["1_users", "2_orders", "3_index"]
    assert "nothing to apply" in out2


def test_production_run_end_to_end(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    health = """
health:
  checks:
    - {name: customers kept, sql: "SELECT count(*) FROM customers", expect: 50}
hooks:
  pre_run: [{run: "python -c \\"import os; open('pre_run.txt', 'w').write(os.environ['HARNESS_PHASE'] + ' ' + os.environ['HARNESS_PLAN'])\\""}]
  post_migration: [{sql: hooks/after.sql}]
"""
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "after.sql").write_text("INSERT INTO hook_marks DEFAULT VALUES;\n")
    plan_path = write_project(tmp_path, {k: v for k, v in BASIC.items() if k.startswith(("1_", "2_"))},
                              health, mode="production", seed=SEED)
    rehearse(plan_path, seeded, capsys, monkeypatch)
    # Only the first migration at first: status shows one applied, one pending afterwards.
    monkeypatch.setenv("TARGET_URL", seeded)
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 0, out + err
    assert "drift: none" in out and "receipt: matches" in out
    assert "verification: passed" in out and "health: passed" in out
    assert history_versions(seeded) == ["1", "2"]
    assert query(seeded, "SELECT DISTINCT mode FROM harness.schema_migrations") == [("production",)]
    assert (tmp_path / "pre_run.txt").read_text() == "pre_run p"
    assert query(seeded, "SELECT count(*) FROM hook_marks") == [(2,)]  # one post_migration SQL hook each
    backups = sorted((tmp_path / "backups").glob("p-*.dump"))
    assert len(backups) == 1 and f"backup: {backups[0]}" in out

    code, out, err = cli(["status", str(plan_path), "--json"], capsys)
    status = json.loads(out)
    assert code == 0 and [row["file"] for row in status["applied"]] == ["1_users", "2_orders"] and status["pending"] == []

    # A new migration rehearsed and applied on top: the drift check uses the receipt digest.
    (tmp_path / "migrations" / "3_index.sql").write_text(BASIC["3_index.sql"])
    (tmp_path / "migrations" / "3_index.down.sql").write_text(BASIC["3_index.down.sql"])
    code, out, err = cli(["apply", str(plan_path), "--yes", "--json"], capsys)
    assert code == 1 and "3_index was not rehearsed" in err  # the receipt is stale: refused
    rehearse(plan_path, seeded, capsys, monkeypatch)
    code, out, err = cli(["apply", str(plan_path), "--yes", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] and result["applied"] == ["3_index"] and result["skipped"] == ["1_users", "2_orders"]
    assert "schema digest matches the rehearsal after 2_orders" in err  # progress went to stderr with --json
    assert history_versions(seeded) == ["1", "2", "3"]


# ---------------------------------------------------------------------- failures


def test_failure_in_third_statement_leaves_nothing(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = {
        "1_users.sql": "CREATE TABLE users (id int PRIMARY KEY);",
        "2_broken.sql": """
            CREATE TABLE invoices (id int PRIMARY KEY);
            INSERT INTO invoices VALUES (1);
            INSERT INTO invoices
                VALUES (1);
            CREATE TABLE never (id int);
        """,
    }
    plan_path = write_project(tmp_path, {"1_users.sql": migrations["1_users.sql"]})
    monkeypatch.setenv("TARGET_URL", seeded)
    assert cli(["apply", str(plan_path)], capsys)[0] == 0
    (tmp_path / "migrations" / "2_broken.sql").write_text(textwrap.dedent(migrations["2_broken.sql"]).lstrip())
    assert history_versions(seeded) == ["1"]
    rows_before = query(seeded, "SELECT * FROM harness.schema_migrations")
    code, out, err = cli(["apply", str(plan_path)], capsys)
    assert code == 1
    assert "migrations/2_broken.sql:3:1" in err  # file:line:column of the third statement
    assert "INSERT INTO invoices" in err and "VALUES (1)" in err  # the statement
    assert "UniqueViolation" in err and "duplicate key" in err  # the PostgreSQL error
    assert "nothing of it remains" in err
    assert not table_exists(seeded, "public.invoices") and not table_exists(seeded, "public.never")
    assert query(seeded, "SELECT * FROM harness.schema_migrations") == rows_before
    assert history_versions(seeded) == ["1"]


def test_single_transaction_rolls_back_every_migration(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(
        tmp_path,
        {"1_a.sql": "CREATE TABLE a (id int);", "2_b.sql": "CREATE TABLE b (id int); SELECT 1/0;"},
        guards=GUARDS.replace("}", ", transaction: single}"),
    )
    result, out, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, MigrationError)
    assert "single transaction was rolled back" in str(error) and "2_b.sql:1:26" in str(error)
    assert not table_exists(db_dsn, "public.a") and history_versions(db_dsn) == []
    (tmp_path / "migrations" / "2_b.sql").write_text("CREATE TABLE b (id int);")
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None and result.applied == ["1_a", "2_b"]


def test_refuses_changed_history_in_production(tmp_path: Path, seeded: str) -> None:
    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);"}, mode="production", seed=SEED)
    result, _, error = apply(load(plan_path, seeded), mode="development")
    assert error is None
    (tmp_path / "migrations" / "1_a.sql").write_text("CREATE TABLE a (id bigint);")
    _, _, error = apply(load(plan_path, seeded), force=True)
    assert isinstance(error, GuardError) and error.exit_code == 1
    assert "changed: 1_a" in str(error) and "restore the original file" in str(error)


# ---------------------------------------------------------------------- locks


def test_lock_held_by_another_session_is_waited_out_with_retries(tmp_path: Path, seeded: str) -> None:
    guards = "guards: {lock_timeout: 300ms, retry_delay: 150ms, retry_factor: 1.5, max_retries: 8, lock_wait: 10s}\n"
    plan_path = write_project(
        tmp_path, {"1_vip.sql": "ALTER TABLE customers ADD COLUMN vip boolean;"}, guards=guards
    )
    probe_waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        # Another application session reading the table all the time: queued behind the
        # ALTER TABLE, it must never wait much longer than lock_timeout.
        with psycopg.connect(seeded, autocommit=True) as conn:
            while not stop.is_set():
                t0 = time.perf_counter()
                conn.execute("SELECT count(*) FROM customers")
                probe_waits.append(time.perf_counter() - t0)
                time.sleep(0.01)

    with holding(seeded, "SELECT * FROM customers LIMIT 1") as holder:  # an open transaction: ACCESS SHARE
        releaser = threading.Timer(1.0, holder.rollback)
        prober = threading.Thread(target=probe)
        releaser.start()
        prober.start()
        t0 = time.perf_counter()
        try:
            result, out, error = apply(load(plan_path, seeded))
        finally:
            stop.set()
            releaser.join()
            prober.join()
        elapsed = time.perf_counter() - t0
    assert error is None, out
    assert result is not None and result.applied == ["1_vip"]
    assert "lock timeout" in out and "retry 1 of 8" in out
    assert elapsed >= 0.9  # it really waited for the holder
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]  # type: ignore[union-attr]
    retries = [e for e in events if e["event"] == "retry"]
    assert retries and all(e["reason"] == "lock timeout" for e in retries)
    assert len(retries) >= 2 and [e["delay"] for e in retries[:2]] == pytest.approx([0.15, 0.225])  # backoff
    assert probe_waits and max(probe_waits) < 0.3 + 0.5, max(probe_waits)
    assert query(seeded, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'vip'") == [(1,)]


def test_lock_never_released_fails_clearly_after_the_last_try(tmp_path: Path, seeded: str) -> None:
    guards = "guards: {lock_timeout: 200ms, retry_delay: 50ms, retry_factor: 2, max_retries: 2, lock_wait: 10s}\n"
    plan_path = write_project(tmp_path, {"1_vip.sql": "ALTER TABLE customers ADD COLUMN vip boolean;"}, guards=guards)
    with holding(seeded, "LOCK TABLE customers IN ROW EXCLUSIVE MODE"):
        t0 = time.perf_counter()
        _, _, error = apply(load(plan_path, seeded))
        elapsed = time.perf_counter() - t0
    assert isinstance(error, MigrationError) and error.exit_code == 1
    text = str(error)
    assert "gave up after 3 tries (lock timeout)" in text and "1_vip" in text
    assert "LockNotAvailable" in text and "pg_locks" in text
    assert elapsed < 3 * 0.2 + 0.05 + 0.1 + 2.0
    assert history_versions(seeded) == []


# ---------------------------------------------------------------------- lost connections and crashes


SLEEPY = {
    "1_first.sql": "CREATE TABLE first (id int);",
    "2_sleepy.sql": """
        CREATE TABLE sleepy (id int);
        SELECT pg_sleep(coalesce((SELECT seconds FROM sleep_control), 0));
        CREATE TABLE after_sleep (id int);
    """,
}


@pytest.mark.parametrize("retries", [0, 3], ids=["rerun", "auto-retry"])
def test_connection_dropped_mid_migration(tmp_path: Path, db_dsn: str, retries: int) -> None:
    execute(db_dsn, "CREATE TABLE sleep_control (seconds float); INSERT INTO sleep_control VALUES (2)")
    guards = GUARDS.replace("max_retries: 3", f"max_retries: {retries}")
    plan_path = write_project(tmp_path, SLEEPY, guards=guards)
    killed: list[bool] = []

    def kill() -> None:
        pid = wait_until(lambda: sleeping_backend(db_dsn), "the migration to sleep")
        execute(db_dsn, "UPDATE sleep_control SET seconds = 0")
        killed.append(bool(query(db_dsn, "SELECT pg_terminate_backend(%s)", [pid])[0][0]))

    killer = threading.Thread(target=kill)
    killer.start()
    result, out, error = apply(load(plan_path, db_dsn))
    killer.join()
    assert killed == [True]
    if retries == 0:
        assert isinstance(error, MigrationError) and "connection lost" in str(error)
        assert history_versions(db_dsn) == ["1"]
        assert not table_exists(db_dsn, "public.sleepy")  # no partial migration
        result, out, error = apply(load(plan_path, db_dsn))  # the re-run completes
    assert error is None, out
    assert "connection lost" in out or retries == 0
    assert history_versions(db_dsn) == ["1", "2"]
    assert table_exists(db_dsn, "public.sleepy") and table_exists(db_dsn, "public.after_sleep")


def test_sigkill_mid_run_then_rerun_completes(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, "CREATE TABLE sleep_control (seconds float); INSERT INTO sleep_control VALUES (60)")
    guards = "guards: {lock_timeout: 300ms, retry_delay: 200ms, retry_factor: 1.5, max_retries: 10, lock_wait: 20s}\n"
    plan_path = write_project(tmp_path, SLEEPY, guards=guards)
    proc = harness_process(["apply", str(plan_path)], db_dsn, tmp_path)
    try:
        wait_until(lambda: sleeping_backend(db_dsn), "the migration to sleep")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    execute(db_dsn, "UPDATE sleep_control SET seconds = 0")
    # Consistent history: the finished migration is recorded, the interrupted one is not, and
    # nothing of it is visible.
    assert history_versions(db_dsn) == ["1"]
    assert not table_exists(db_dsn, "public.sleepy")
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["2_sleepy"]
    assert history_versions(db_dsn) == ["1", "2"]


WAIT_S = 15


def test_two_apply_processes_apply_each_migration_once(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, "CREATE TABLE applied_log (migration text)")
    migrations = {
        f"{n}_step{n}.sql": f"INSERT INTO applied_log VALUES ('{n}'); SELECT pg_sleep(0.2);"
        for n in (1, 2, 3)
    }
    plan_path = write_project(tmp_path, migrations)
    procs = [harness_process(["apply", str(plan_path)], db_dsn, tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(query(db_dsn, "SELECT migration FROM applied_log")) == [("1",), ("2",), ("3",)]
    assert history_versions(db_dsn) == ["1", "2", "3"]
    applied_counts = sorted(out.count(" applied in ") for out, _ in outputs)
    assert applied_counts == [0, 3]


# ---------------------------------------------------------------------- non-transactional migrations


def test_nontransactional_migration_resumes_and_reports_invalid_index(tmp_path: Path, db_dsn: str) -> None:
    execute(db_dsn, "CREATE TABLE emails (addr text); INSERT INTO emails VALUES ('a'), ('a'); CREATE TABLE marks (n int)")
    plan_path = write_project(
        tmp_path,
        {
            "1_concurrent.sql": """
                INSERT INTO marks VALUES (1);
                CREATE UNIQUE INDEX CONCURRENTLY emails_addr_key ON emails (addr);
                INSERT INTO marks VALUES (3);
            """
        },
    )
    _, _, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, MigrationError)
    text = str(error)
    assert "1_concurrent.sql:2:1" in text and "UniqueViolation" in text
    assert "statements 1-1 are done" in text and "resumes at statement 2" in text
    assert 'DROP INDEX CONCURRENTLY IF EXISTS emails_addr_key;' in text
    assert query(db_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'emails_addr_key'::regclass") == [(False,)]
    assert history_versions(db_dsn) == []

    # Re-running as is refuses on the invalid index, naming the statement to run.
    execute(db_dsn, "DELETE FROM emails WHERE ctid = (SELECT max(ctid) FROM emails)")
    _, _, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, GuardError) and "is INVALID" in str(error)
    execute(db_dsn, "DROP INDEX CONCURRENTLY emails_addr_key")

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert "resuming 1_concurrent" in out
    assert query(db_dsn, "SELECT n FROM marks ORDER BY n") == [(1,), (3,)]  # statement 1 ran once
    assert history_versions(db_dsn) == ["1"]
    assert query(db_dsn, "SELECT count(*) FROM harness.apply_progress") == [(0,)]


# ---------------------------------------------------------------------- post-apply checks


class _Answer500(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).hits += 1
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"down")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_url() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer500)
    _Answer500.hits = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health?token=s3cr3t-t0ken"
    finally:
        server.shutdown()
        server.server_close()


def test_health_url_down_rolls_back_with_downs(tmp_path: Path, seeded: str, health_url: str) -> None:
    plan = f"health: {{url: '{health_url}', retries: 2, timeout: 2s, on_failure: rollback}}\n"
    plan_path = write_project(tmp_path, {k: v for k, v in BASIC.items() if k.startswith(("1_", "2_"))}, plan)
    result, out, error = apply(load(plan_path, seeded))
    assert isinstance(error, CheckFailed) and error.exit_code == 1
    text = str(error)
    assert "health check failed" in text and "HTTP 500" in text and "3 tries" in text
    assert _Answer500.hits == 3
    assert "Rolled back with their down migrations (newest first): 2_orders, 1_users" in text
    assert "s3cr3t-t0ken" not in text + out  # the URL is shown without its query string
    assert history_versions(seeded) == []
    assert not table_exists(seeded, "public.users") and not table_exists(seeded, "public.orders")
    assert query(seeded, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'vip'") == [(0,)]
    assert result is not None and result.rolled_back == ["2_orders", "1_users"] and result.applied == []


def test_health_failure_with_stop_names_the_backup(
    tmp_path: Path, seeded: str, health_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = f"health: {{url: '{health_url}', retries: 0, timeout: 2s, on_failure: stop}}\n"
    plan_path = write_project(tmp_path, {"1_users.sql": BASIC["1_users.sql"]}, plan, mode="production", seed=SEED)
    rehearse(plan_path, seeded, capsys, monkeypatch)
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 1
    backups = list((tmp_path / "backups").glob("*.dump"))
    assert len(backups) == 1
    assert f"harness restore {backups[0]}" in err
    assert "health.on_failure is stop" in err and "stay applied" in err
    assert history_versions(seeded) == ["1"]


# ---------------------------------------------------------------------- production guards


def test_drift_is_refused_with_the_difference(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, {"1_users.sql": BASIC["1_users.sql"]}, mode="production", seed=SEED)
    rehearse(plan_path, seeded, capsys, monkeypatch)
    assert cli(["apply", str(plan_path), "--yes"], capsys)[0] == 0
    execute(seeded, "ALTER TABLE users ADD COLUMN rogue int; DROP TABLE customers")
    (tmp_path / "migrations" / "2_more.sql").write_text("CREATE TABLE IF NOT EXISTS more (id int);")
    rehearse(plan_path, seeded, capsys, monkeypatch)
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 1
    assert "drift: the schema of" in err and "after 1_users" in err
    assert "+ column public.users.rogue: added" in err and "- table public.customers: removed" in err
    assert history_versions(seeded) == ["1"] and not table_exists(seeded, "public.more")


def test_missing_receipt_is_refused_and_force_is_loud(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, {"1_users.sql": BASIC["1_users.sql"]}, mode="production", seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 1 and "no green rehearsal receipt for plan 'p'" in err and "harness rehearse p" in err
    assert history_versions(seeded) == [] and not list(tmp_path.glob("backups/*"))

    code, out, err = cli(["apply", str(plan_path), "--yes", "--force"], capsys)
    assert code == 0, err
    assert "WARNING: --force: applying WITHOUT a matching green rehearsal receipt" in out
    assert "verification: skipped (no matching receipt)" in out
    lines = [line for f in (tmp_path / "logs").glob("p-*.jsonl") for line in f.read_text().splitlines()]
    warnings = [json.loads(line) for line in lines if '"event": "warning"' in line]
    assert any("--force" in w["text"] for w in warnings)
    assert history_versions(seeded) == ["1"]


def test_production_needs_confirmation_without_a_terminal(
    tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, {"1_users.sql": BASIC["1_users.sql"]}, mode="production", seed=SEED)
    monkeypatch.setenv("TARGET_URL", seeded)
    code, _, err = cli(["apply", str(plan_path), "--force"], capsys)
    assert code == 2 and "pass --yes" in err
    assert history_versions(seeded) == []


def test_password_never_appears(
    tmp_path: Path, pg_server: object, db_name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Pw-9f3c2e71d"
    role = f"app_{db_name}"
    base = pg_server.dsn(db_name)  # type: ignore[attr-defined]
    execute(base, f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'")
    execute(base, SEED)
    dsn = f"{base} user={role} password={secret}"
    hook = (
        "python -c \"import os; u = os.environ['HARNESS_DATABASE_URL']; "
        f"print('hook sees', u); print('has password:', '{secret}' in u)\""
    )
    plan = f"hooks:\n  pre_run: [{{run: {json.dumps(hook)}}}]\n"
    # Fails on the target (not the superuser postgres), not in the rehearsal.
    bad = "DO $$ BEGIN IF current_user <> 'postgres' THEN RAISE EXCEPTION 'not on this target'; END IF; END $$;"
    migrations = {"1_users.sql": BASIC["1_users.sql"], "2_bad.sql": bad}
    plan_path = write_project(tmp_path, migrations, plan, mode="production", seed=SEED)
    rehearse(plan_path, dsn, capsys, monkeypatch)
    code, out, err = cli(["apply", str(plan_path), "--yes", "--json"], capsys)
    assert code == 1, err  # 2_bad fails after 1_users applied, with a backup taken
    assert "not on this target" in err and json.loads(out)["applied"] == ["1_users"]
    assert "has password: True" in err  # the hook got the full DSN ...
    assert "hook sees" in err
    assert list((tmp_path / "backups").glob("*.dump"))
    dry = cli(["apply", str(plan_path), "--dry-run"], capsys)
    status = cli(["status", str(plan_path)], capsys)
    backups = cli(["backups", str(plan_path), "--json"], capsys)
    _, _, error = apply(load(plan_path, dsn))
    assert error is not None
    texts = [out, err, *dry[1:], *status[1:], *backups[1:], str(error), repr(error)]
    for path in [*tmp_path.rglob("*.jsonl"), *tmp_path.rglob("backups/*.json"), *tmp_path.rglob(".harness/**/*.json")]:
        texts.append(path.read_text())
    for text in texts:
        assert secret not in text  # ... but it is printed nowhere
    assert any(role in t for t in texts)  # the user is shown, so the check is not vacuous


# ---------------------------------------------------------------------- dry run, hooks


def test_dry_run_changes_nothing(tmp_path: Path, seeded: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plan = "backup: {mode: touched}\nhooks:\n  pre_run: [{run: 'echo hi'}]\n  post_migration: [{python: 'mod:fn'}]\n"
    plan_path = write_project(tmp_path, BASIC, plan, mode="production", seed=SEED)
    before = query(seeded, "SELECT count(*) FROM pg_class")
    monkeypatch.setenv("TARGET_URL", seeded)
    code, out, err = cli(["apply", str(plan_path), "--dry-run"], capsys)
    assert code == 1  # no receipt: it says apply would refuse
    assert "receipt: apply WOULD REFUSE" in out
    for expected in (
        "BEGIN;",
        "SET LOCAL lock_timeout = '400ms';",
        "SET LOCAL statement_timeout = '30000ms';",
        "migrations/2_orders.sql:3:1",
        "ALTER TABLE customers ADD COLUMN IF NOT EXISTS vip boolean NOT NULL DEFAULT false;",
        "COMMIT;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
        "-- non-transactional",
        "backup: pg_dump -Fc of tables public.customers ->",
        "hook pre_run: run: echo hi",
        "hook post_migration: python: mod:fn",
        # The non-transactional migration: each statement with session timeouts, its progress row after it.
        "SET SESSION lock_timeout = '400ms';",
        "RESET lock_timeout;",
        "-- record 2_orders in harness.schema_migrations (same transaction)",
    ):
        assert expected in out, expected
    assert not table_exists(seeded, "harness.schema_migrations")
    assert query(seeded, "SELECT count(*) FROM pg_namespace WHERE nspname = 'harness'") == [(0,)]
    assert query(seeded, "SELECT count(*) FROM pg_class") == before
    assert not (tmp_path / "backups").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("transaction", ["per-migration", "single"])
def test_the_dry_run_prints_what_the_run_executes(tmp_path: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch,
                                                  transaction: str) -> None:
    """One path for doing and describing: each action the run executes is the line the dry run printed for it."""
    migrations = {"1_a.sql": "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n",
                  "2_b.sql": "ALTER TABLE a ADD COLUMN b int;\n"}
    if transaction == "per-migration":  # a migration that commits statement by statement, session timeouts
        migrations["3_idx.sql"] = ("CREATE INDEX CONCURRENTLY a_idx ON a (id);\n"
                                   "CREATE INDEX CONCURRENTLY a_b_idx ON a (b);\n")
    guards = GUARDS.replace("lock_wait: 20s}", f"lock_wait: 20s, transaction: {transaction}}}")
    plan_path = write_project(tmp_path, migrations, guards=guards)
    dry, _, error = apply(load(plan_path, db_dsn), dry_run=True)
    assert error is None and dry is not None
    # The migrations' part of the dry run: its SQL and comments, without the headers, hooks and explanations.
    printed = [line.strip() for line in dry.dry_run_plan
               if line.startswith(("  ", "BEGIN", "SET", "COMMIT", "-- prove")) and not line.startswith("  -- non-")]
    executed: list[str] = []
    for cls in (migrator.SqlAction, migrator.ProveLock, migrator.Statements, migrator.Record, migrator.MarkDone,
                migrator.ClearProgress):
        def execute(self: Any, m: Any, conn: Any, original: Any = cls.execute) -> None:
            executed.extend(self.describe())
            original(self, m, conn)

        monkeypatch.setattr(cls, "execute", execute)
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None and len(result.applied) == len(migrations), out
    assert [line.strip() for line in executed] == printed
    assert any("SET LOCAL lock_timeout = '400ms';" in line for line in executed)


def test_failing_pre_run_hook_stops_before_any_change(tmp_path: Path, db_dsn: str) -> None:
    seen: list[HookContext] = []
    plan = "hooks:\n  pre_run: [{run: 'python -c \"import sys; sys.exit(3)\"'}]\n"
    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);"}, plan)
    _, _, error = apply(load(plan_path, db_dsn), hooks={"on_failure": [seen.append]})
    assert error is not None and error.exit_code == 1 and "exited with code 3" in str(error)
    assert not table_exists(db_dsn, "public.a")
    assert query(db_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'harness'") == [(0,)]
    assert [c.phase for c in seen] == ["on_failure"] and seen[0].error and "exited with code 3" in seen[0].error


def test_python_hooks_get_a_context_per_phase(tmp_path: Path, db_dsn: str) -> None:
    seen: list[HookContext] = []
    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);", "2_b.sql": "CREATE TABLE b (id int);"})
    hooks = {e: [seen.append] for e in ("pre_run", "pre_migration", "post_migration", "post_run")}
    plan = load(plan_path, db_dsn)
    result = apply_plan(plan, ApplyOptions(hooks=hooks), out=None)
    assert result.ok
    assert [(c.phase, c.migration) for c in seen] == [
        ("pre_run", None),
        ("pre_migration", "1_a"),
        ("post_migration", "1_a"),
        ("pre_migration", "2_b"),
        ("post_migration", "2_b"),
        ("post_run", None),
    ]
    assert seen[-1].applied == ("1_a", "2_b") and seen[0].plan == "p" and seen[0].mode == "development"
    with pytest.raises(AttributeError):
        seen[0].phase = "x"  # type: ignore[misc]


def test_production_without_target_is_a_usage_error(tmp_path: Path) -> None:
    plan_path = write_project(tmp_path, {"1_a.sql": "SELECT 1;"}, mode="production", target=False)
    _, _, error = apply(load(plan_path, "unused"))
    assert isinstance(error, ConfigError) and error.exit_code == 2 and "needs a target" in str(error)


# ---------------------------------------------------------------------- development database


@pytest.fixture
def dev_root(tmp_path: Path) -> Iterator[Path]:
    """A project root whose development database is stopped and deleted afterwards."""
    from harness.devdb import DevDB

    try:
        yield tmp_path
    finally:
        DevDB(tmp_path).destroy()


def test_dev_db_start_url_apply_stop(dev_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_project(dev_root, {"1_a.sql": "CREATE TABLE a (id int);"}, target=False)
    code, out, _ = cli(["dev-db", "status", "--root", str(dev_root)], capsys)
    assert code == 0 and "not created yet" in out
    code, out, _ = cli(["dev-db", "start", "--root", str(dev_root)], capsys)
    assert code == 0 and "running" in out
    code, url, _ = cli(["dev-db", "url", "--root", str(dev_root)], capsys)
    dsn = url.strip()
    assert code == 0 and "dbname=dev" in dsn and "mh-dev-" in dsn
    assert query(dsn, "SELECT current_database()") == [("dev",)]

    # A plan without a target applies to it; the server outlives the command.
    result, out, error = apply(load(plan_path, "unused"))
    assert error is None, out
    assert result is not None and result.applied == ["1_a"] and result.database.endswith("/dev")
    code, out, _ = cli(["status", str(plan_path), "--dsn", dsn], capsys)
    assert code == 0 and "1 applied, 0 pending" in out
    code, out, _ = cli(["dev-db", "status", str(plan_path), "--json"], capsys)
    assert json.loads(out)["running"] is True

    code, out, _ = cli(["dev-db", "stop", "--root", str(dev_root)], capsys)
    assert code == 0 and "stopped" in out
    with pytest.raises(psycopg.OperationalError):
        query(dsn, "SELECT 1")
    # Started again, the data is still there.
    assert cli(["dev-db", "start", "--root", str(dev_root)], capsys)[0] == 0
    assert history_versions(dsn) == ["1"]
    assert cli(["dev-db", "stop", "--root", str(dev_root)], capsys)[0] == 0


# ---------------------------------------------------------------------- notices and waiting


def test_raise_notice_from_migrations_and_sql_hooks_is_shown_and_logged(tmp_path: Path, db_dsn: str) -> None:
    (tmp_path / "hook.sql").write_text("DO $$ BEGIN RAISE NOTICE 'hook says %', 42; END $$;\n")
    plan_path = write_project(
        tmp_path,
        {"1_a.sql": "DO $$ BEGIN RAISE NOTICE 'migration says hello'; RAISE WARNING 'careful'; END $$;\n"
                    "CREATE TABLE a (id int);",
         "2_b.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS a_id ON a (id);\n"
                    "DO $$ BEGIN RAISE INFO 'statement by statement'; END $$;"},
        "hooks: {post_run: [{sql: hook.sql}]}\n",
    )
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None, out
    for line in ("NOTICE: migration says hello", "WARNING: careful", "INFO: statement by statement",
                 "| NOTICE: hook says 42"):
        assert line in out
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]  # type: ignore[union-attr]
    notices = [(e["severity"], e["text"], e.get("phase")) for e in events if e["event"] == "notice"]
    assert notices == [("NOTICE", "migration says hello", None), ("WARNING", "careful", None),
                       ("INFO", "statement by statement", None), ("NOTICE", "hook says 42", "post_run")]


def test_apply_waiting_for_the_run_lock_says_so(tmp_path: Path, db_dsn: str) -> None:
    from harness.history import RUN_LOCK_KEY

    plan = load(write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);"}), db_dsn)
    out = io.StringIO()
    done: list[object] = []
    with psycopg.connect(db_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [RUN_LOCK_KEY])
        thread = threading.Thread(target=lambda: done.append(apply_plan(plan, ApplyOptions(yes=True), out=out)))
        thread.start()
        try:
            wait_until(lambda: "waiting up to" in out.getvalue(), "apply to say that it waits for the run lock")
            assert not done and not table_exists(db_dsn, "a")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [RUN_LOCK_KEY])
            thread.join(30)
    assert done and table_exists(db_dsn, "a")
    text = out.getvalue()
    assert "waiting up to 20s" in text and "held by pid" in text, text
    log_path = done[0].log_path  # type: ignore[attr-defined]
    assert any(json.loads(line)["event"] == "lock_wait" for line in log_path.read_text().splitlines())


# ---------------------------------------------------------------------- production resume after a crash


RESUME_SEED = """
CREATE TABLE sleep_control (seconds float);
INSERT INTO sleep_control VALUES (0);
CREATE TABLE items (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO items SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 200) g;
CREATE TABLE marks (n int);
"""

RESUMABLE = {
    # Statement by statement: killed in statement 3 (the sleep), after an insert and a CONCURRENTLY index.
    "statements": """
        INSERT INTO marks VALUES (2);
        CREATE INDEX CONCURRENTLY items_email_idx ON items (email);
        SELECT pg_sleep(coalesce((SELECT seconds FROM sleep_control), 0));
        CREATE INDEX CONCURRENTLY items_id_email_idx ON items (id, email);
        INSERT INTO marks VALUES (5);
    """,
    # A batched backfill in a file that also changes the schema: killed between batches.
    "batches": """
        ALTER TABLE items ADD COLUMN touched int NOT NULL DEFAULT 0;
        INSERT INTO marks VALUES (2);
        -- harness:batch key=id size=20 pause=300ms
        UPDATE items SET touched = touched + 1;
        CREATE INDEX items_touched_idx ON items (touched);
        INSERT INTO marks VALUES (5);
    """,
}


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("kind", ["statements", "unrecorded", "batches"])
def test_production_apply_resumes_a_migration_killed_part_way(
    tmp_path: Path, db_dsn: str, kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(db_dsn, RESUME_SEED)
    migration = RESUMABLE["statements" if kind == "unrecorded" else kind]
    plan_path = write_project(tmp_path, {"1_change.sql": migration}, mode="production", seed=RESUME_SEED)
    rehearse(plan_path, db_dsn, capsys, monkeypatch)

    def batches_done() -> int:
        if not table_exists(db_dsn, "harness.batch_progress"):
            return 0
        return int(query(db_dsn, "SELECT coalesce(max(batches), 0) FROM harness.batch_progress")[0][0])

    execute(db_dsn, "UPDATE sleep_control SET seconds = 60")
    proc = harness_process(["apply", str(plan_path), "--yes"], db_dsn, tmp_path)
    try:
        if kind != "batches":
            wait_until(lambda: sleeping_backend(db_dsn), "the migration to sleep in statement 3")
        else:
            wait_until(lambda: batches_done() >= 2, "two committed batches")
    finally:
        _kill(proc)
    execute(db_dsn, "UPDATE sleep_control SET seconds = 0")
    assert history_versions(db_dsn) == []
    assert query(db_dsn, "SELECT n FROM marks") == [(2,)]
    recorded = 2
    if kind == "unrecorded":
        # As if the run had died between the index build and its progress row.
        execute(db_dsn, "DELETE FROM harness.apply_progress WHERE statement_index = 1")
        recorded = 1

    # harness status: partly applied, statement 2 of 5 (and, batched, the batches committed).
    code, out, _ = cli(["status", str(plan_path)], capsys)
    assert f"partly applied: statement {recorded} of 5 done" in out and "(1 partly applied)" in out, out
    code, out, _ = cli(["status", str(plan_path), "--json"], capsys)
    progress = json.loads(out)["pending"][0]["progress"]
    assert progress["statements_done"] == recorded and progress["statements"] == 5
    assert progress["batches"] == (batches_done() if kind == "batches" else 0)

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert "resuming 1_change: statements 1-2 of 5 were completed by an earlier run" in out
    if kind == "unrecorded":  # the index is there: statement 2 completed, and is not run again
        assert "schema equals the rehearsal after statement 2 of 1_change: it completed" in out, out
    else:
        assert "drift: none (schema equals the rehearsal after statement 2 of 5 of 1_change)" in out, out
    if kind == "batches":
        assert "resuming after" in out
        assert query(db_dsn, "SELECT touched, count(*) FROM items GROUP BY touched") == [(1, 200)]  # every row once
    assert result is not None and result.applied == ["1_change"] and result.backup is not None
    assert result.backup.is_file() and len(list((tmp_path / "backups").glob("p-*.dump"))) == 2
    assert result.verification.startswith("passed")
    assert query(db_dsn, "SELECT n FROM marks ORDER BY n") == [(2,), (5,)]  # no statement ran twice
    assert history_versions(db_dsn) == ["1"]
    assert query(db_dsn, "SELECT count(*) FROM harness.apply_progress") == [(0,)]


def test_production_apply_names_the_invalid_index_an_interrupted_build_left(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(db_dsn, RESUME_SEED)
    plan_path = write_project(tmp_path, {"1_index.sql": """
        INSERT INTO marks VALUES (1);
        CREATE INDEX CONCURRENTLY items_email_idx ON items (email);
        INSERT INTO marks VALUES (3);
    """}, mode="production", seed=RESUME_SEED)
    rehearse(plan_path, db_dsn, capsys, monkeypatch)

    def building() -> bool:
        return bool(query(db_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                  "'migration-harness apply' AND query ILIKE 'CREATE INDEX CONCURRENTLY%%' "
                                  "AND wait_event_type = 'Lock'")[0][0])

    # An open writing transaction on the table: the concurrent build waits for it, its index already INVALID.
    with holding(db_dsn, "INSERT INTO items VALUES (1000, 'x@example.com')"):
        proc = harness_process(["apply", str(plan_path), "--yes"], db_dsn, tmp_path)
        try:
            wait_until(building, "the index build to wait for the open transaction")
        finally:
            _kill(proc)
        wait_until(lambda: not building(), "the server to cancel the build of the killed run")
    assert query(db_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_email_idx'::regclass") == [(False,)]

    _, out, error = apply(load(plan_path, db_dsn))
    assert isinstance(error, GuardError) and error.exit_code == 1, out
    text = str(error)
    assert "items_email_idx exists but is INVALID" in text and "statement 2 of 3 of 1_index" in text
    assert "DROP INDEX CONCURRENTLY IF EXISTS items_email_idx;" in text and "Someone changed" not in text
    execute(db_dsn, "DROP INDEX CONCURRENTLY IF EXISTS items_email_idx")

    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None, out
    assert result is not None and result.applied == ["1_index"] and result.backup is not None
    assert query(db_dsn, "SELECT n FROM marks ORDER BY n") == [(1,), (3,)]
    assert query(db_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_email_idx'::regclass") == [(True,)]
    assert history_versions(db_dsn) == ["1"]


# ---------------------------------------------------------------------- the run lock is fenced


def _lock_holder(dsn: str) -> int | None:
    """The pid of the session holding the migration run lock on *dsn*'s database."""
    from harness.history import RUN_LOCK_KEY

    unsigned = RUN_LOCK_KEY & 0xFFFFFFFFFFFFFFFF
    rows = query(dsn, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                      "AND classid::bigint = %s AND objid::bigint = %s "
                      "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                 [unsigned >> 32, unsigned & 0xFFFFFFFF])
    return rows[0][0] if rows else None


def _lock_waiters(dsn: str) -> int:
    """How many run-lock sessions (application_name migration-harness) are connected."""
    return int(query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-harness' "
                          "AND datname = current_database()")[0][0])


# The migration waits at this gate (an advisory lock the test holds) for as long as the test wants.
GATE = 4242
GATED = f"INSERT INTO applied_log VALUES ('1');\nSELECT pg_advisory_xact_lock({GATE});\n"
GATE_GUARDS = GUARDS.replace("lock_timeout: 400ms", "lock_timeout: 20s")


def _at_gate(dsn: str, runs: int = 1) -> bool:
    """Whether *runs* apply sessions wait at the gate."""
    return int(query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-harness apply' "
                          "AND wait_event_type = 'Lock' AND wait_event = 'advisory' "
                          "AND datname = current_database()")[0][0]) >= runs


class _Applier(threading.Thread):
    """``apply`` of a plan in a thread of this process (no interpreter start-up to wait for)."""

    def __init__(self, plan_path: Path, dsn: str) -> None:
        super().__init__(daemon=True)
        self.plan = load(plan_path, dsn)
        self.out = ""
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        _, self.out, self.error = apply(self.plan)

    def finish(self) -> _Applier:
        self.join(WAIT_S)
        assert not self.is_alive(), "apply did not finish"
        return self


def test_idle_session_timeout_does_not_free_the_run_lock(
    tmp_path: Path, db_dsn: str, pg_server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if pg_server.major < 14:
        pytest.skip("idle_session_timeout is PostgreSQL 14+")
    seed = "CREATE TABLE applied_log (migration text);\n"
    execute(db_dsn, seed)
    plan_path = write_project(tmp_path, {"1_log.sql": GATED}, mode="production", seed=seed, guards=GATE_GUARDS)
    rehearse(plan_path, db_dsn, capsys, monkeypatch)
    dbname = query(db_dsn, "SELECT current_database()")[0][0]
    execute(db_dsn, f'ALTER DATABASE "{dbname}" SET idle_session_timeout = \'1s\'')
    runs: list[_Applier] = []
    with psycopg.connect(db_dsn, autocommit=True) as gate:
        gate.execute("SET idle_session_timeout = 0")
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE])
        try:
            runs.append(_Applier(plan_path, db_dsn))
            wait_until(lambda: _at_gate(db_dsn), "the first run to wait at the gate in its migration")
            time.sleep(1.2)  # its lock session has now been idle for longer than idle_session_timeout
            runs.append(_Applier(plan_path, db_dsn))
            # (Both runs at the gate: the second one took a lock that was not held any more; the test fails below.)
            wait_until(lambda: _lock_waiters(db_dsn) == 2 or _at_gate(db_dsn, 2), "the second run to wait for the run lock")
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", [GATE])
            for run in runs:
                run.finish()
    first, second = runs
    assert first.error is None and second.error is None, (first.out, second.out)
    assert query(db_dsn, "SELECT migration FROM applied_log") == [("1",)]  # ran once
    assert "waiting up to 20s for the migration run lock" in second.out, second.out
    assert "held by pid" in second.out and "application_name 'migration-harness'" in second.out
    assert "nothing to apply" in second.out
    assert len(list((tmp_path / "backups").glob("p-*.dump"))) == 1  # only the run that applied took a backup
    assert history_versions(db_dsn) == ["1"]


def test_an_applier_whose_lock_session_is_terminated_stops_and_the_next_one_applies_once(
    tmp_path: Path, db_dsn: str
) -> None:
    execute(db_dsn, "CREATE TABLE applied_log (migration text)")
    plan_path = write_project(
        tmp_path, {"1_log.sql": GATED, "2_log.sql": "INSERT INTO applied_log VALUES ('2');\n"}, guards=GATE_GUARDS
    )
    runs: list[_Applier] = []
    with psycopg.connect(db_dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE])
        try:
            runs.append(_Applier(plan_path, db_dsn))
            wait_until(lambda: _at_gate(db_dsn), "the first run to wait at the gate in its migration")
            holder = _lock_holder(db_dsn)
            assert holder is not None
            runs.append(_Applier(plan_path, db_dsn))
            wait_until(lambda: _lock_waiters(db_dsn) == 2, "the second run to wait for the run lock")
            # The first run's lock session ends while its migration still runs (a pooler, a network failure...).
            assert query(db_dsn, "SELECT pg_terminate_backend(%s)", [holder]) == [(True,)]
            wait_until(lambda: _waits_for_fence(tmp_path) or _at_gate(db_dsn, 2), "the second run to wait for the fence")
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", [GATE])
            for run in runs:
                run.finish()
    first, second = runs
    assert isinstance(first.error, RunLockLost) and first.error.exit_code == 1, first.out
    assert "lost the migration run lock" in str(first.error) and "Stopped before the next statement" in str(first.error)
    assert second.error is None, second.out
    assert "s for the run-lock fence on " in second.out and "application_name 'migration-harness apply'" in second.out
    # The first run rolled its migration back at COMMIT; the second applied both, each once.
    assert sorted(query(db_dsn, "SELECT migration FROM applied_log")) == [("1",), ("2",)]
    assert history_versions(db_dsn) == ["1", "2"]
    assert second.out.count(" applied in ") == 2


def _waits_for_fence(root: Path) -> bool:
    """Whether a run logged (in its run log under *root*) that it waits for the run-lock fence."""
    for path in (root / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "lock_wait" and "run-lock fence" in event["text"]:
                return True
    return False
