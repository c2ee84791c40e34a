"""The history table, the run lock and status, against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from harness.errors import ConnectionFailed, HarnessError, LockTimeout, RunLockLost
from harness.history import (
    APPLICATION_NAME,
    RUN_LOCK_KEY,
    AppliedMigration,
    Progress,
    compute_status,
    ensure_table,
    format_status,
    read_applied,
    record_applied,
    lock_session,
    remove_applied,
    run_lock,
    take_fence,
    verify_lock,
)
from tests._history_worker import FakeMigration
from tests.projects import wait_until as _wait_until

# Shared with the worker process (FakeMigration) and the apply tests (wait_until) rather than written again.
WORKER = Path(__file__).with_name("_history_worker.py")
WAIT = 10.0  # upper bound for every wait: a regression fails, it does not hang


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return _wait_until(predicate, what, timeout)



def mig(version: str, name: str | None = None, checksum: str | None = None) -> FakeMigration:
    return FakeMigration(version, name or f"step_{version}", checksum or f"sum{version}")


def row(version: str, *, checksum: str | None = None, success: bool = True, minute: int = 0) -> AppliedMigration:
    return AppliedMigration(
        version=version,
        name=f"step_{version}",
        checksum=checksum or f"sum{version}",
        applied_at=datetime(2024, 5, 1, 12, minute, tzinfo=timezone.utc),
        execution_ms=1500,
        applied_by="postgres via ci@host",
        mode="development",
        success=success,
    )


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_dsn, autocommit=True) as c:
        yield c


class LockWaiter(threading.Thread):
    """A second runner in a thread: takes run_lock, reports, holds it until told to leave."""

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.dsn, self.kwargs = dsn, kwargs
        self.acquired = threading.Event()
        self.leave = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with run_lock(self.dsn, **self.kwargs):
                self.acquired.set()
                self.leave.wait(WAIT)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc


def find_waiter(observer: psycopg.Connection[Any], holder_pid: int) -> int:
    """The pid of the other harness lock session of this database, once it has polled for the lock."""

    def poll() -> int | None:
        row = observer.execute(
            """SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s AND pid <> %s
                 AND query LIKE %s""",
            [APPLICATION_NAME, holder_pid, "%advisory_lock%"],
        ).fetchone()
        return row[0] if row else None

    return int(wait_until(poll, "the waiter to poll for the lock"))


def session(observer: psycopg.Connection[Any], pid: int) -> dict[str, Any] | None:
    """The pg_stat_activity row of *pid*, if it is still connected."""
    with observer.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT state, xact_start, backend_xmin, wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()


# --------------------------------------------------------------------------
# The table


def test_run_lock_key_is_derived_from_the_project_name() -> None:
    expected = int.from_bytes(hashlib.sha256(b"migration-harness").digest()[:8], "big", signed=True)
    assert RUN_LOCK_KEY == expected


def test_ensure_table_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    ensure_table(conn)
    ensure_table(conn)
    columns = conn.execute(
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'harness' AND table_name = 'schema_migrations' ORDER BY ordinal_position"""
    ).fetchall()
    assert [c for c, _ in columns] == [
        "version", "name", "checksum", "applied_at", "execution_ms", "applied_by", "mode", "success"
    ]
    assert dict(columns)["applied_at"] == "timestamp with time zone"
    assert read_applied(conn) == []


def test_ensure_table_by_two_concurrent_creators(db_dsn: str, conn: psycopg.Connection[Any]) -> None:
    # The first creator keeps its transaction open; the second must wait and
    # then find the table, not die on a unique violation in pg_namespace.
    errors: list[BaseException] = []
    with psycopg.connect(db_dsn) as first, psycopg.connect(db_dsn, autocommit=True) as second:
        second_pid = second.info.backend_pid

        def create() -> None:
            try:
                ensure_table(second)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)

        with first.transaction():
            ensure_table(first)
            thread = threading.Thread(target=create, daemon=True)
            thread.start()
            wait_until(
                lambda: conn.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [second_pid]
                ).fetchone()[0],
                "the second creator to wait for the first",
            )
        thread.join(WAIT)
        assert not thread.is_alive()
    assert errors == []
    assert read_applied(conn) == []


def test_read_applied_without_table_is_empty(conn: psycopg.Connection[Any]) -> None:
    assert read_applied(conn) == []
    assert conn.execute("SELECT to_regnamespace('harness')").fetchone()[0] is None


def test_record_in_rolled_back_transaction_leaves_no_row(conn: psycopg.Connection[Any]) -> None:
    ensure_table(conn)
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute("CREATE TABLE t (id int)")
        record_applied(conn, mig("1"), execution_ms=5, mode="development")
        raise RuntimeError("migration failed after its statements ran")
    assert read_applied(conn) == []
    assert conn.execute("SELECT to_regclass('t')").fetchone()[0] is None


def test_record_then_read(conn: psycopg.Connection[Any]) -> None:
    ensure_table(conn)
    with conn.transaction():
        record_applied(conn, mig("10", "later"), execution_ms=12, mode="production")
        record_applied(conn, mig("2", "earlier"), execution_ms=3, mode="rehearsal", success=False)
    rows = read_applied(conn)
    assert [r.version for r in rows] == ["2", "10"]  # numeric order, not text order
    later = rows[1]
    assert (later.name, later.checksum, later.execution_ms, later.mode, later.success) == (
        "later", "sum10", 12, "production", True
    )
    assert rows[0].success is False
    assert later.applied_by is not None and later.applied_by.startswith("postgres via ")
    assert later.applied_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - later.applied_at) < timedelta(minutes=5)

    # Upsert: applying version 2 again replaces the failed row.
    record_applied(conn, mig("2", "earlier", "newsum"), execution_ms=4, mode="development")
    rows = read_applied(conn)
    assert len(rows) == 2
    assert (rows[0].checksum, rows[0].success, rows[0].mode) == ("newsum", True, "development")


def test_remove_applied(conn: psycopg.Connection[Any]) -> None:
    remove_applied(conn, "1")  # no table yet: nothing to do
    ensure_table(conn)
    record_applied(conn, mig("1"), execution_ms=1, mode="development")
    record_applied(conn, mig("2"), execution_ms=1, mode="development")
    with pytest.raises(RuntimeError), conn.transaction():
        remove_applied(conn, "2")
        raise RuntimeError("down migration failed")
    assert [r.version for r in read_applied(conn)] == ["1", "2"]
    with conn.transaction():
        remove_applied(conn, "2")
    assert [r.version for r in read_applied(conn)] == ["1"]


def test_record_checks_mode_and_table(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="unknown history mode"):
        record_applied(conn, mig("1"), execution_ms=1, mode="yolo")
    with pytest.raises(HarnessError, match="ensure_table"):
        record_applied(conn, mig("1"), execution_ms=1, mode="development")


# --------------------------------------------------------------------------
# Status


def test_compute_status_sorts_every_state() -> None:
    files = [mig("1"), mig("2", checksum="edited"), mig("4"), mig("5"), mig("10")]
    rows = [row("1", minute=1), row("2", minute=2), row("3", minute=3), row("4", success=False, minute=4)]
    status = compute_status(files, rows)

    assert [(r.version, m.id if m else None) for r, m in status.applied] == [
        ("1", "1_step_1"), ("2", "2_step_2"), ("3", None), ("4", "4_step_4")
    ]
    assert [m.version for m in status.pending] == ["5", "10"]
    assert [(r.checksum, m.checksum) for r, m in status.changed] == [("sum2", "edited")]
    assert [r.version for r in status.missing] == ["3"]
    assert [r.version for r in status.failed] == ["4"]
    assert status.last_applied_at == datetime(2024, 5, 1, 12, 4, tzinfo=timezone.utc)
    assert not status.ok

    clean = compute_status([mig("1"), mig("2")], [row("1")])
    assert clean.ok and [m.version for m in clean.pending] == ["2"]
    empty = compute_status([], [])
    assert empty.ok and empty.last_applied_at is None


def test_status_to_dict_is_json_ready() -> None:
    status = compute_status([mig("1"), mig("2", checksum="x"), mig("9")], [row("1"), row("2"), row("3")])
    data = json.loads(json.dumps(status.to_dict()))
    assert data["ok"] is False
    assert data["counts"] == {"applied": 3, "pending": 1, "changed": 1, "missing": 1, "failed": 0}
    assert data["last_applied_at"] == "2024-05-01T12:00:00+00:00"
    assert data["changed"][0]["file_checksum"] == "x" and data["changed"][0]["checksum"] == "sum2"
    assert data["applied"][2]["file"] is None
    assert data["pending"] == [{"version": "9", "name": "step_9", "id": "9_step_9", "checksum": "sum9"}]


def test_format_status_shows_each_state() -> None:
    files = [mig("1"), mig("2", checksum="edited"), mig("4"), mig("5")]
    rows = [row("1", minute=1), row("2", minute=2), row("3", minute=3), row("4", success=False, minute=4)]
    text = format_status(compute_status(files, rows), where="postgres@db.example:5432/app")
    lines = text.splitlines()
    assert lines[0] == "Migrations on postgres@db.example:5432/app:"
    by_version = {line.split()[0]: line for line in lines[3:8]}
    assert "applied" in by_version["1"] and "1.5 s" in by_version["1"] and "2024-05-01 12:01:00" in by_version["1"]
    assert "CHANGED" in by_version["2"]
    assert "MISSING" in by_version["3"]
    assert "FAILED" in by_version["4"]
    assert "pending" in by_version["5"]
    assert "4 applied, 1 pending (1 changed, 1 missing, 1 failed); last migration applied 2024-05-01 12:04:00" in text
    assert "Restore the original file" in text

    fresh = format_status(compute_status([mig("1")], []), where="x")
    assert "0 applied, 1 pending; last migration applied never" in fresh


def test_status_from_the_database(conn: psycopg.Connection[Any]) -> None:
    ensure_table(conn)
    record_applied(conn, mig("1"), execution_ms=7, mode="adopted")
    status = compute_status([mig("1"), mig("2")], read_applied(conn))
    assert status.ok and [m.version for m in status.pending] == ["2"]
    assert "7 ms" in format_status(status, where="db")


# --------------------------------------------------------------------------
# The run lock


def test_second_runner_waits_and_gets_the_lock_after_release(db_dsn: str) -> None:
    with run_lock(db_dsn) as holder:
        assert holder.autocommit
        assert holder.execute("SHOW application_name").fetchone()[0] == APPLICATION_NAME
        waiter = LockWaiter(db_dsn, timeout=WAIT, poll=0.02)
        waiter.start()
        with psycopg.connect(db_dsn, autocommit=True) as observer:
            find_waiter(observer, holder.info.backend_pid)
        assert not waiter.acquired.wait(0.2), "the waiter got the lock while it was held"
    assert waiter.acquired.wait(WAIT), f"the waiter never got the lock ({waiter.error!r})"
    waiter.leave.set()
    waiter.join(WAIT)
    assert waiter.error is None


def test_lock_is_released_when_the_block_raises(db_dsn: str) -> None:
    with pytest.raises(RuntimeError), run_lock(db_dsn):
        raise RuntimeError("migration failed")
    with run_lock(db_dsn, timeout=0):
        pass


def test_lock_timeout_names_the_holder(db_dsn: str) -> None:
    with run_lock(db_dsn) as holder:
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        with pytest.raises(LockTimeout) as info, run_lock(db_dsn, timeout=0.3, poll=0.05):
            pytest.fail("took a lock that was held")
        assert time.monotonic() - started < 3
        message = str(info.value)
    assert f"pid {holder_pid}" in message
    assert "application_name 'migration-harness'" in message
    assert "local socket" in message and "connected since" in message
    assert "pg_terminate_backend" in message and "within 0.3s" in message


def test_waiter_is_idle_not_in_a_transaction(db_dsn: str) -> None:
    with run_lock(db_dsn) as holder, psycopg.connect(db_dsn, autocommit=True) as observer:
        waiter = LockWaiter(db_dsn, timeout=WAIT, poll=0.05)
        waiter.start()
        pid = find_waiter(observer, holder.info.backend_pid)
        samples = []
        for _ in range(15):
            sample = session(observer, pid)
            assert sample is not None, "the waiter disconnected"
            samples.append(sample)
            time.sleep(0.02)
    assert waiter.acquired.wait(WAIT)
    waiter.leave.set()
    waiter.join(WAIT)
    assert waiter.error is None
    states = {s["state"] for s in samples}
    assert "idle" in states and states <= {"idle", "active"}, states
    for sample in samples:
        if sample["state"] == "idle":
            assert sample["xact_start"] is None and sample["backend_xmin"] is None
        assert sample["wait_event_type"] != "Lock"


def test_create_index_concurrently_completes_while_another_runner_waits(db_dsn: str) -> None:
    # The Flyway / golang-migrate deadlock: a waiter blocked in pg_advisory_lock
    # holds a snapshot, CREATE INDEX CONCURRENTLY waits for it, the waiter waits
    # for the lock.  Polling from an idle autocommit connection avoids it.
    with run_lock(db_dsn) as holder:
        holder.execute("SET statement_timeout = '10s'")
        holder.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text)")
        holder.execute("INSERT INTO accounts SELECT g, 'u' || g FROM generate_series(1, 2000) g")
        waiter = LockWaiter(db_dsn, timeout=WAIT * 2, poll=0.01)
        waiter.start()
        with psycopg.connect(db_dsn, autocommit=True) as observer:
            pid = find_waiter(observer, holder.info.backend_pid)
            started = time.monotonic()
            holder.execute("CREATE INDEX CONCURRENTLY accounts_email ON accounts (email)")
            assert time.monotonic() - started < 5
            valid = observer.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email'::regclass"
            ).fetchone()[0]
            assert valid
            assert session(observer, pid) is not None, "the waiter gave up"
        assert not waiter.acquired.is_set()
    assert waiter.acquired.wait(WAIT)
    waiter.leave.set()
    waiter.join(WAIT)
    assert waiter.error is None


def test_two_processes_record_each_version_exactly_once(db_dsn: str, conn: psycopg.Connection[Any]) -> None:
    versions = ["1", "2", "3", "4", "5"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), db_dsn, *versions],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        for proc in procs:  # both go at the same moment
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    recorded = sorted((v for r in results for v in r["recorded"]), key=int)
    assert recorded == versions, results  # every version once, by one process or the other
    assert [r.version for r in read_applied(conn)] == versions


# --------------------------------------------------------------------------
# Redaction

SECRET = "S3cret-Pw-4711"


def test_lock_timeout_message_never_shows_the_password(db_dsn: str) -> None:
    dsn = make_conninfo(db_dsn, password=SECRET)  # trust auth: the password is sent but not needed
    with run_lock(db_dsn), pytest.raises(LockTimeout) as info, run_lock(dsn, timeout=0.1, poll=0.05):
        pass
    text = "".join(traceback.format_exception(info.value))
    assert SECRET not in text
    assert "pid " in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=/nonexistent-mh-socket port=5999 user=postgres password={SECRET} dbname=app connect_timeout=2",
        f"postgresql://postgres:{SECRET}@/app?host=/nonexistent-mh-socket&port=5999&connect_timeout=2",
    ],
    ids=["keyword", "uri"],
)
def test_connection_error_never_shows_the_password(dsn: str) -> None:
    with pytest.raises(ConnectionFailed) as info, run_lock(dsn, timeout=0.1):
        pass
    text = "".join(traceback.format_exception(info.value))
    assert SECRET not in text
    assert "/nonexistent-mh-socket" in str(info.value) and "run lock" in str(info.value)


# --------------------------------------------------------------------------
# The fence


def test_the_fence_proves_the_lock_and_keeps_out_a_run_that_took_over(db_dsn: str) -> None:
    with run_lock(db_dsn) as holder, psycopg.connect(db_dsn, autocommit=True) as writer:
        lock = lock_session(holder)
        take_fence(writer, lock, timeout=1)
        verify_lock(writer, lock)  # held: no error
        with writer.transaction():
            verify_lock(writer, lock)  # also inside a transaction
        assert holder.execute("SHOW idle_session_timeout").fetchone()[0] == "0"
        assert holder.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "0"
        assert writer.execute("SHOW idle_session_timeout").fetchone()[0] == "0"

        # The lock session ends under the run: the next proof fails; another run takes the lock
        # but waits for the fence, which the first run's writing session still holds.
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [lock.pid])
            wait_until(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [lock.pid]).fetchone(),
                       "the lock session to end")
            with pytest.raises(RunLockLost, match=r"lost the migration run lock .* no longer does"):
                verify_lock(writer, lock)
            said: list[str] = []
            with run_lock(db_dsn, timeout=WAIT) as second, psycopg.connect(db_dsn, autocommit=True) as writer2:
                started = time.monotonic()
                with pytest.raises(LockTimeout, match="could not take the run-lock fence"):
                    take_fence(writer2, lock_session(second), timeout=0.3, poll=0.05, on_wait=said.append)
                assert time.monotonic() - started >= 0.3
                assert said and "for the run-lock fence" in said[0] and f"pid {writer.info.backend_pid}" in said[0]
                writer.close()  # the first run stops: its fence goes with its session
                take_fence(writer2, lock_session(second), timeout=WAIT, poll=0.05)
                verify_lock(writer2, lock_session(second))


def test_status_shows_a_partly_applied_migration() -> None:
    progress = {"2": Progress("2", "sum2", 1, batches=3, rows=60, line=4,
                              updated_at=datetime(2024, 5, 1, 12, 5, tzinfo=timezone.utc))}
    status = compute_status([mig("1"), mig("2")], [row("1")], progress)
    assert status.ok and list(status.partial) == ["2"]
    text = format_status(status, where="db")
    assert "partly applied: statement 1 done, 3 batches (60 rows) of line 4" in text
    assert "1 applied, 1 pending (1 partly applied)" in text and "PARTLY APPLIED" in text
    pending = status.to_dict()["pending"][0]
    assert pending["progress"]["statements_done"] == 1 and pending["progress"]["batches"] == 3
    # Progress of an applied migration (left over) is not shown.
    assert not compute_status([mig("1")], [row("1")], {"1": Progress("1", "sum1", 1)}).partial
