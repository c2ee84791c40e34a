"""The history table ``harness.schema_migrations``, the run lock, and status.

This module is the only reader and writer of the history table (alembic
keeps one ``HeadMaintainer`` for the same reason): everything else asks it
what was applied, tells it what was just applied, and takes the run lock
through it.

The run lock is a session-level advisory lock held on a dedicated autocommit
connection.  A runner that waits for it polls ``pg_try_advisory_lock`` from
that idle connection instead of blocking inside a statement or a transaction:
a blocked ``pg_advisory_lock`` call holds a snapshot, and the lock holder's
``CREATE INDEX CONCURRENTLY`` waits for every older snapshot to go away, so
holder and waiter would deadlock (the Flyway / golang-migrate bug).

The lock session can end under a run (``idle_session_timeout``,
``pg_terminate_backend``, a pooler, a network failure) while the run goes
on.  So the run lock is *fenced*: the session that writes (apply's migrating
session) holds a second advisory lock, the fence (:func:`fence_key`), for as
long as it lives, taken after the run lock and before the history is read
(:func:`take_fence`); every migration transaction, statement or batch first
proves, in that session, that the lock session still holds the run lock and
that it holds the fence (:func:`verify_lock`).  A run whose lock session died
stops (:class:`~harness.errors.RunLockLost`); a run that took the lock after
it waits for the fence until the first run's writing session is gone, and
only then reads the history: two runs never write at the same time, and the
second one sees everything the first committed.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from .errors import ConnectionFailed, HarnessError, LockTimeout, RunLockLost
from .redact import describe_dsn, scrub

__all__ = [
    "SCHEMA",
    "TABLE",
    "MODES",
    "APPLICATION_NAME",
    "RUN_LOCK_KEY",
    "history_schema",
    "tenant_history_schema",
    "scoped",
    "qualified",
    "Qualified",
    "run_lock_key",
    "PROGRESS_TABLE",
    "BATCH_PROGRESS_TABLE",
    "MigrationLike",
    "AppliedMigration",
    "Progress",
    "LockSession",
    "Status",
    "ensure_table",
    "read_applied",
    "read_progress",
    "record_applied",
    "remove_applied",
    "run_lock",
    "fence_key",
    "keep_alive",
    "lock_session",
    "take_fence",
    "release_fence",
    "verify_lock",
    "compute_status",
    "format_status",
]

log = logging.getLogger(__name__)

#: Schema and table of the history on a target database.
SCHEMA = "harness"
TABLE = "schema_migrations"

#: How a history row came to be.  "baseline": recorded by apply without running it, because the
#: target's schema already had everything up to the plan's baseline (docs/apply.md).
MODES = ("development", "production", "rehearsal", "adopted", "baseline")

#: ``application_name`` of the lock connection, so people can see who holds it.
APPLICATION_NAME = "migration-harness"

#: Key of the run lock: the first 8 bytes of sha256(b"migration-harness") as a
#: signed big-endian 64-bit integer.  Fixed forever: every version of the
#: harness must contend for the same lock.
RUN_LOCK_KEY = -4595217716265846067

#: Where apply keeps the progress of a migration that commits part by part (written by harness.apply,
#: read here for status): the statements completed, and the batches of a ``-- harness:batch`` statement.
PROGRESS_TABLE = "apply_progress"
BATCH_PROGRESS_TABLE = "batch_progress"

# Key of the transaction-level lock that serialises creators of the table.
# Deliberately different from RUN_LOCK_KEY: a process holding the run lock on
# one connection creates the table on another.  sha256(b"migration-harness:history-table")[:8].
_CREATE_LOCK_KEY = 5652701778334204274

# Seconds to wait for the lock connection when the DSN does not say.
_CONNECT_TIMEOUT = 10

# The history schema of the current thread: SCHEMA, or a tenant's own (see scoped()).
_SCOPE: ContextVar[str] = ContextVar("harness_history_schema", default=SCHEMA)


def history_schema() -> str:
    """The schema holding the history this thread reads and writes: ``harness``, or a tenant's (:func:`scoped`)."""
    return _SCOPE.get()


def tenant_history_schema(tenant: str) -> str:
    """Where the history of tenant schema *tenant* lives: ``harness_<tenant>``, shortened with a hash past 63 bytes."""
    name = f"{SCHEMA}_{tenant}"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:10]
    return f"{SCHEMA}_{tenant.encode()[:40].decode(errors='ignore')}_{digest}"


@contextmanager
def scoped(schema: str) -> Iterator[None]:
    """Read and write the history in *schema* for the ``with`` block, in this thread only.

    A fleet of tenant schemas in one database keeps one history per tenant,
    each with its own run lock; threads migrating different tenants each
    enter their own scope.
    """
    token = _SCOPE.set(schema)
    try:
        yield
    finally:
        _SCOPE.reset(token)


class Qualified(sql.Composable):
    """``<history schema>.<table>``, rendered in the scope current when the query runs (not when it is built)."""

    def __init__(self, table: str = TABLE) -> None:
        super().__init__(table)
        self.table = table

    def _now(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(history_schema()), sql.Identifier(self.table))

    def as_bytes(self, context: Any = None) -> bytes:
        return self._now().as_bytes(context)

    def as_string(self, context: Any = None) -> str:
        return self._now().as_string(context)

    def regclass(self) -> str:
        """The name as ``to_regclass`` reads it."""
        return self.as_string(None)


def qualified(table: str = TABLE) -> Qualified:
    """``<history schema>.<table>`` as SQL, rendered in the scope current when it runs."""
    return Qualified(table)


def run_lock_key() -> int:
    """The run lock of the current scope: RUN_LOCK_KEY for ``harness``; a tenant's derived from its history schema."""
    schema = history_schema()
    if schema == SCHEMA:
        return RUN_LOCK_KEY
    digest = hashlib.sha256(f"migration-harness:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _regclass(table: str = TABLE) -> str:
    return Qualified(table).regclass()


_CREATE_TABLE = sql.SQL(
    """CREATE TABLE IF NOT EXISTS {} (
    version      text PRIMARY KEY,
    name         text NOT NULL,
    checksum     text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms bigint,
    applied_by   text,
    mode         text NOT NULL,
    success      boolean NOT NULL DEFAULT true
)"""
)

_COLUMNS = ("version", "name", "checksum", "applied_at", "execution_ms", "applied_by", "mode", "success")


class MigrationLike(Protocol):
    """What this module needs from a migration file (``harness.sources.Migration`` fits)."""

    @property
    def version(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def checksum(self) -> str: ...

    @property
    def id(self) -> str: ...  # noqa: A003 - the domain's name for "<version>_<name>"


M = TypeVar("M", bound=MigrationLike)
T = TypeVar("T")


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the history table."""

    version: str
    name: str
    checksum: str
    applied_at: datetime
    execution_ms: int | None
    applied_by: str | None
    mode: str
    success: bool

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (ISO 8601 timestamp)."""
        return {
            "version": self.version,
            "name": self.name,
            "checksum": self.checksum,
            "applied_at": self.applied_at.isoformat(),
            "execution_ms": self.execution_ms,
            "applied_by": self.applied_by,
            "mode": self.mode,
            "success": self.success,
        }


@dataclass(frozen=True)
class Progress:
    """How far an interrupted run got with a migration that commits part by part.

    A non-transactional migration commits statement by statement, one with a
    ``-- harness:batch`` statement unit by unit and batch by batch (see
    docs/apply.md); apply records each commit and resumes after the last one.
    ``statements`` completed statements (the first ones of the file);
    ``batches`` and ``rows`` committed so far of the batched statement at
    ``line`` (0 and ``None`` when none is under way).
    """

    version: str
    checksum: str
    statements: int
    batches: int = 0
    rows: int = 0
    line: int | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (ISO 8601 timestamp)."""
        return {
            "statements_done": self.statements,
            "batches": self.batches,
            "rows": self.rows,
            "batch_line": self.line,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }

    def describe(self, total: int | None = None) -> str:
        """``statement 2 of 3 done``, with the batches of a batched statement under way."""
        of = f" of {total}" if total else ""
        text = f"statement {self.statements}{of} done" if self.statements else f"0{of} statements done"
        if self.batches:
            text += f", {self.batches} batch{'' if self.batches == 1 else 'es'} ({self.rows} rows) of line {self.line}"
        return text


# --------------------------------------------------------------------------
# The table


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [_regclass()]).fetchone()
    return bool(row and row[0])


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """Create schema ``harness`` and table ``harness.schema_migrations`` if they do not exist.

    Runs in a transaction block of its own (a savepoint when the caller already
    has a transaction open, which then decides whether the table commits).
    Concurrent creators are serialised with a transaction-level advisory lock:
    without it, two ``CREATE SCHEMA IF NOT EXISTS`` racing each other end in a
    unique violation on ``pg_namespace``.
    """
    with conn.transaction():
        if _table_exists(conn):
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_CREATE_LOCK_KEY])
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(history_schema())))
        conn.execute(_CREATE_TABLE.format(qualified()))
    log.debug("history table %s.%s is in place", history_schema(), TABLE)


def read_applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    """Every row of the history, in numeric version order; empty when there is no table yet."""
    if not _table_exists(conn):
        return []
    query = sql.SQL(
        "SELECT {} FROM {} "
        "ORDER BY CASE WHEN version ~ '^[0-9]+$' THEN version::numeric END NULLS LAST, version"
    ).format(sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS), qualified())
    rows = conn.execute(query).fetchall()
    return [AppliedMigration(*row) for row in rows]


def read_progress(conn: psycopg.Connection[Any]) -> dict[str, Progress]:
    """The progress of migrations an interrupted run left part-way, by version; empty without the tables."""
    found: dict[str, Progress] = {}
    names = [_regclass(PROGRESS_TABLE), _regclass(BATCH_PROGRESS_TABLE)]
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", names).fetchone()
    has_progress, has_batches = (bool(row[0]), bool(row[1])) if row else (False, False)
    if has_progress:
        query = sql.SQL(
            "SELECT version, checksum, max(statement_index) + 1, max(completed_at) FROM {} "
            "GROUP BY version, checksum ORDER BY max(completed_at)"
        ).format(qualified(PROGRESS_TABLE))
        for version, checksum, done, at in conn.execute(query).fetchall():
            found[version] = Progress(version, checksum, int(done), updated_at=at)
    if has_batches:
        query = sql.SQL(
            "SELECT version, checksum, line, rows, batches, updated_at FROM {} ORDER BY updated_at"
        ).format(qualified(BATCH_PROGRESS_TABLE))
        for version, checksum, line, rows, batches, at in conn.execute(query).fetchall():
            before = found.get(version)
            found[version] = Progress(
                version, checksum, before.statements if before else 0, int(batches), int(rows), int(line),
                max(t for t in (at, before.updated_at if before else None) if t is not None),
            )
    return found


def _client_identity() -> str:
    """``os-user@host`` of this process, for the ``applied_by`` column."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - containers often have a uid without a passwd entry
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()}"


def record_applied(
    conn: psycopg.Connection[Any],
    migration: MigrationLike,
    *,
    execution_ms: int,
    mode: str,
    success: bool = True,
) -> None:
    """Record *migration* as applied (or as failed), replacing any earlier row for its version.

    Runs in the caller's current transaction, so the row commits or rolls
    back together with the migration; it opens none of its own (on an
    autocommit connection outside a transaction block it commits at once).
    Call :func:`ensure_table` first.
    """
    if mode not in MODES:
        raise ValueError(f"unknown history mode {mode!r}; expected one of {', '.join(MODES)}")
    query = sql.SQL(
        """INSERT INTO {table} (version, name, checksum, applied_at, execution_ms, applied_by, mode, success)
VALUES (%(version)s, %(name)s, %(checksum)s, now(), %(execution_ms)s,
        current_user || ' via ' || %(client)s, %(mode)s, %(success)s)
ON CONFLICT (version) DO UPDATE SET
    name = EXCLUDED.name,
    checksum = EXCLUDED.checksum,
    applied_at = EXCLUDED.applied_at,
    execution_ms = EXCLUDED.execution_ms,
    applied_by = EXCLUDED.applied_by,
    mode = EXCLUDED.mode,
    success = EXCLUDED.success"""
    ).format(table=qualified())
    params = {
        "version": migration.version,
        "name": migration.name,
        "checksum": migration.checksum,
        "execution_ms": int(execution_ms),
        "client": _client_identity(),
        "mode": mode,
        "success": success,
    }
    try:
        conn.execute(query, params)
    except errors.UndefinedTable:
        raise HarnessError(
            f"cannot record migration {migration.version}: the history table {history_schema()}.{TABLE} does not exist "
            "on this database. Call harness.history.ensure_table() before recording."
        ) from None
    log.debug("recorded %s_%s (%s, success=%s, %d ms)", migration.version, migration.name, mode, success, execution_ms)


def remove_applied(conn: psycopg.Connection[Any], version: str) -> None:
    """Delete the history row of *version* (after a rollback), in the caller's current transaction."""
    if not _table_exists(conn):
        log.debug("no history table; nothing to remove for %s", version)
        return
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(qualified()), [version])
    if cur.rowcount == 0:
        log.debug("no history row for version %s to remove", version)


# --------------------------------------------------------------------------
# The run lock


def _lock_parts(key: int) -> tuple[int, int]:
    """``(classid, objid)`` under which ``pg_locks`` shows an advisory lock on a bigint *key*."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _holders(conn: psycopg.Connection[Any], key: int) -> list[dict[str, Any]]:
    """Who holds advisory lock *key* in this database, from pg_locks and pg_stat_activity."""
    classid, objid = _lock_parts(key)
    query = """
SELECT l.pid, a.application_name, a.usename, a.client_addr::text, a.client_hostname, a.client_port,
       a.backend_start, a.state, a.state_change, a.xact_start, a.query
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = %s AND l.objid::bigint = %s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
ORDER BY l.pid"""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, [classid, objid]).fetchall()


def _seconds(value: float) -> str:
    """``20s``, ``19.8s``."""
    return f"{value:.1f}".rstrip("0").rstrip(".") + "s"


def _when(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else "?"


def _describe_holder(h: dict[str, Any]) -> str:
    if h.get("client_addr"):
        client = h.get("client_hostname") or h["client_addr"]
        if h.get("client_port") is not None:
            client = f"{client}:{h['client_port']}"
    elif h.get("backend_start") is not None:
        client = "local socket"
    else:
        client = "not visible to this user"
    parts = [
        f"application_name {h.get('application_name') or ''!r}",
        f"user {h.get('usename') or '?'}",
        f"client {client}",
        f"connected since {_when(h.get('backend_start'))}",
    ]
    if h.get("state"):
        parts.append(f"state {h['state']!r} since {_when(h.get('state_change'))}")
    if h.get("query"):
        last = " ".join(str(h["query"]).split())
        parts.append(f"last query {scrub(last[:120])!r}")
    return f"pid {h['pid']} (" + ", ".join(parts) + ")"


def keep_alive(conn: psycopg.Connection[Any], *, idle_in_transaction: bool = False) -> None:
    """Keep the session of *conn* from being ended for idling: it holds a lock the run depends on.

    Sets ``idle_session_timeout = 0`` (PostgreSQL 14+) and, with
    *idle_in_transaction*, ``idle_in_transaction_session_timeout = 0`` for
    this session only; a role or database setting (``ALTER ROLE ... SET``)
    would otherwise end the idle lock session and silently free the lock.
    """
    if conn.info.server_version >= 140000:
        conn.execute("SET idle_session_timeout = 0")
    if idle_in_transaction:
        conn.execute("SET idle_in_transaction_session_timeout = 0")


def _connect_lock(dsn: str, where: str) -> psycopg.Connection[Any]:
    try:
        options: dict[str, Any] = {"application_name": APPLICATION_NAME}
        given = conninfo_to_dict(dsn)
        if "connect_timeout" not in given:
            options["connect_timeout"] = _CONNECT_TIMEOUT
        if "keepalives_idle" not in given:
            # A peer that vanished (network, pooler) is noticed by TCP, and idle NAT entries stay open.
            options.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
        conn = psycopg.connect(dsn, autocommit=True, **options)
        keep_alive(conn, idle_in_transaction=True)
        return conn
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        reason = scrub(lines[0]) if lines else type(exc).__name__
        raise ConnectionFailed(
            f"cannot connect to {where} to take the migration run lock: {reason}. "
            "Check that the server is running and that the connection settings are right."
        ) from None


def _acquire(
    conn: psycopg.Connection[Any],
    key: int,
    timeout: float,
    poll: float,
    where: str,
    on_wait: Callable[[str], None] | None = None,
    what: str = "the migration run lock",
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``pg_try_advisory_lock`` from the idle autocommit *conn* until it succeeds or *timeout* passes.

    *on_wait* is told once, with the holder, that this session waits;
    *check* runs before every try (it raises to give up).
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    announced = False
    while True:
        if check is not None:
            check()
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        if row and row[0]:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not announced:
            holders = _holders(conn, key)
            text = (
                f"waiting up to {_seconds(timeout)} for {what} on {where}, held by "
                + ("; ".join(_describe_holder(h) for h in holders) or "another session")
            )
            log.info("%s", text)
            if on_wait is not None:
                on_wait(text)
            announced = True
        time.sleep(min(poll, remaining))
    holders = _holders(conn, key)
    if holders:
        who = "it is held by " + "; ".join(_describe_holder(h) for h in holders)
        advice = (
            "Another migration run is probably in progress: wait for it to finish and try again, "
            "or raise the lock timeout. If that session is stale, end it with "
            f"SELECT pg_terminate_backend({holders[0]['pid']}); on that database."
        )
    else:
        who = "its holder has just released it or is not visible to this user"
        advice = "Try again, or raise the lock timeout."
    raise LockTimeout(
        f"could not take {what} (advisory lock {key}) on {where} within {timeout:g}s: {who}. {advice}"
    )


@contextmanager
def run_lock(
    dsn: str,
    *,
    timeout: float = 60.0,
    poll: float = 0.2,
    key: int | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migration run lock on the database of *dsn* for the ``with`` block.

    The lock is a session-level advisory lock on a dedicated autocommit
    connection (``application_name`` ``migration-harness``), which is yielded.
    While another session holds it, this one polls ``pg_try_advisory_lock``
    every *poll* seconds from that idle connection, never from inside a
    transaction, so the holder's ``CREATE INDEX CONCURRENTLY`` does not wait
    for us.  After *timeout* seconds :class:`~harness.errors.LockTimeout` names
    the holder; *on_wait* is told, with the holder, when this run starts to
    wait.  The session is kept from idling out (:func:`keep_alive`).  The lock
    is released on exit, also on an exception.  A run that writes on another
    session fences it (:func:`take_fence`, :func:`verify_lock`).
    """
    where = describe_dsn(dsn)
    key = run_lock_key() if key is None else key
    conn = _connect_lock(dsn, where)
    try:
        _acquire(conn, key, timeout, poll, where, on_wait)
        log.debug("took the migration run lock on %s", where)
        try:
            yield conn
        finally:
            _release(conn, key, where)
    finally:
        conn.close()


def _release(conn: psycopg.Connection[Any], key: int, where: str) -> None:
    # Best effort: if the connection is broken or stuck in a failed
    # transaction, closing it (by the caller) ends the session and with it the lock.
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            log.warning("a transaction was left open on the run-lock connection to %s; rolling it back", where)
            conn.rollback()
        row = conn.execute("SELECT pg_advisory_unlock(%s)", [key]).fetchone()
        if not (row and row[0]):
            log.warning("the migration run lock on %s was not held at release", where)
    except Exception as exc:  # noqa: BLE001 - never hide the error that ended the block
        log.warning("could not release the migration run lock on %s cleanly (%s); closing the connection", where, scrub(str(exc)))


def fence_key(key: int = RUN_LOCK_KEY) -> int:
    """Key of the fence of run lock *key*: the first 8 bytes of sha256 of ``migration-harness:fence:<key>``, signed."""
    digest = hashlib.sha256(f"migration-harness:fence:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class LockSession:
    """The session that holds a run lock: what :func:`verify_lock` looks for in ``pg_locks``.

    A backend pid can be reused once its session ended, so the session is
    known by its pid and its start time.
    """

    pid: int
    backend_start: datetime | None
    key: int = RUN_LOCK_KEY

    @property
    def fence(self) -> int:
        """The key of the fence that goes with this run lock."""
        return fence_key(self.key)

    def describe(self) -> str:
        """``pid 123, connected since 2026-11-01 12:00:00+00:00``."""
        return f"pid {self.pid}, connected since {_when(self.backend_start)}"


def lock_session(conn: psycopg.Connection[Any], key: int | None = None) -> LockSession:
    """The identity of *conn*, the connection :func:`run_lock` yields (*key*: the current scope's run lock)."""
    key = run_lock_key() if key is None else key
    row = conn.execute(
        "SELECT pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
    ).fetchone()
    assert row is not None
    return LockSession(int(row[0]), row[1], key)


_VERIFY = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid = %(pid)s AND a.backend_start IS NOT DISTINCT FROM %(started)s
), EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid::bigint = %(fence_classid)s AND l.objid::bigint = %(fence_objid)s
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid = pg_backend_pid()
)"""


def verify_lock(conn: psycopg.Connection[Any], lock: LockSession, *, where: str = "?", fence: bool = True) -> None:
    """Prove, on the writing session *conn*, that *lock*'s session still holds the run lock and *conn* the fence.

    One query on ``pg_locks`` (live, also inside a transaction).  Raises
    :class:`~harness.errors.RunLockLost` when either is not held: the caller
    must not run its next statement.  *fence* ``False``: check the run lock only.
    """
    classid, objid = _lock_parts(lock.key)
    fence_classid, fence_objid = _lock_parts(lock.fence)
    row = conn.execute(
        _VERIFY,
        {"classid": classid, "objid": objid, "pid": lock.pid, "started": lock.backend_start,
         "fence_classid": fence_classid, "fence_objid": fence_objid},
    ).fetchone()
    held, fenced = (bool(row[0]), bool(row[1])) if row else (False, False)
    if not held:
        raise RunLockLost(
            f"lost the migration run lock on {where}: the session that held it ({lock.describe()}) no longer does; "
            "it was ended (idle_session_timeout, pg_terminate_backend, a connection pooler or a network failure). "
            "Stopped before the next statement: nothing more runs. Another run may hold the lock now; when no run "
            "is in progress, run apply again: it carries on from what is committed."
        )
    if fence and not fenced:
        raise RunLockLost(
            f"this run's writing session on {where} does not hold the run-lock fence (advisory lock {lock.fence}); "
            "it cannot prove that no other run writes. Stopped before the next statement; run apply again."
        )


def take_fence(
    conn: psycopg.Connection[Any],
    lock: LockSession,
    *,
    timeout: float,
    poll: float = 0.2,
    where: str = "?",
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Make *conn*, the session that writes, hold the fence of *lock* (a session-level advisory lock).

    Call it after taking the run lock and before reading the history, and
    after every reconnect.  While another session holds the fence (a run
    that lost its lock session but still writes, or this run's own old
    session after a network failure, until the server notices it is gone)
    this waits, telling *on_wait*, up to *timeout* seconds
    (:class:`~harness.errors.LockTimeout`); before every try it proves that
    the run lock is still held (:class:`~harness.errors.RunLockLost`).  The
    session is kept from idling out (:func:`keep_alive`).
    """
    keep_alive(conn)

    def still_held() -> None:
        verify_lock(conn, lock, where=where, fence=False)

    _acquire(conn, lock.fence, timeout, poll, where, on_wait, what="the run-lock fence", check=still_held)


def release_fence(conn: psycopg.Connection[Any], lock: LockSession) -> None:
    """Let go of the fence on *conn* (best effort: closing the session lets go of it too)."""
    if conn.closed or conn.broken:
        return
    try:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.execute("SELECT pg_advisory_unlock(%s)", [lock.fence])
    except psycopg.Error as exc:
        log.debug("could not release the run-lock fence (%s); it goes with the session", scrub(str(exc)))


# --------------------------------------------------------------------------
# Status


def _version_key(version: str) -> tuple[int, int, str]:
    return (0, int(version), version) if version.isdigit() else (1, 0, version)


def _with_missing(entries: Sequence[tuple[str, T]], missing: Sequence[tuple[str, T]]) -> list[tuple[str, T]]:
    """*entries* (version, item), already in the order of their files, with each *missing* one inserted.

    The files come sorted as their layout's tool applies them (diesel compares
    versions as text, Flyway's ``1.1`` sorts before ``2``), which no sort of
    the bare version strings reproduces.  A row whose file is gone has no such
    place: it goes after the last entry whose version sorts before its own
    (exact for numeric versions).
    """
    out = list(entries)
    for version, item in sorted(missing, key=lambda e: _version_key(e[0])):
        key = _version_key(version)
        at = max((i + 1 for i, (v, _) in enumerate(out) if _version_key(v) <= key), default=0)
        out.insert(at, (version, item))
    return out


@dataclass(frozen=True)
class Status(Generic[M]):
    """The history of a database compared with the migration files.

    ``applied`` holds every history row, in the order of the migration files
    (a row whose file is gone after the row before it), with its file
    (``None`` when the file is gone); ``changed``, ``missing`` and ``failed``
    are the rows among them that need attention.  A failed row is not
    ``pending``: it has to be looked at (and the row removed) before it runs again.
    ``files`` holds every migration file, in the order its layout's tool applies them.
    ``partial`` holds, by version, the progress of pending migrations an
    interrupted run left part-way (apply resumes them).
    """

    applied: list[tuple[AppliedMigration, M | None]] = field(default_factory=list)
    pending: list[M] = field(default_factory=list)
    changed: list[tuple[AppliedMigration, M]] = field(default_factory=list)
    missing: list[AppliedMigration] = field(default_factory=list)
    failed: list[AppliedMigration] = field(default_factory=list)
    last_applied_at: datetime | None = None
    files: list[M] = field(default_factory=list)
    partial: dict[str, Progress] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no applied migration was changed, lost or left failed."""
        return not (self.changed or self.missing or self.failed)

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values (ISO 8601 timestamps)."""

        def file(m: MigrationLike) -> dict[str, Any]:
            entry: dict[str, Any] = {"version": m.version, "name": m.name, "id": m.id, "checksum": m.checksum}
            progress = self.partial.get(m.version)
            if progress is not None:
                entry["progress"] = {**progress.to_dict(), "statements": _statement_count(m)}
            return entry

        return {
            "ok": self.ok,
            "last_applied_at": self.last_applied_at.isoformat() if self.last_applied_at else None,
            "counts": {
                "applied": len(self.applied),
                "pending": len(self.pending),
                "changed": len(self.changed),
                "missing": len(self.missing),
                "failed": len(self.failed),
            },
            "applied": [{**row.to_dict(), "file": m.id if m is not None else None} for row, m in self.applied],
            "pending": [file(m) for m in self.pending],
            "changed": [
                {**row.to_dict(), "file": m.id, "file_checksum": m.checksum} for row, m in self.changed
            ],
            "missing": [row.to_dict() for row in self.missing],
            "failed": [row.to_dict() for row in self.failed],
        }


def _statement_count(m: Any) -> int | None:
    statements = getattr(m, "statements", None)
    return len(statements) if statements is not None else None


def compute_status(
    migrations: Sequence[M],
    applied: Sequence[AppliedMigration],
    progress: Mapping[str, Progress] | None = None,
) -> Status[M]:
    """Compare migration files with history rows and the progress of interrupted runs (no database involved)."""
    by_version: dict[str, M] = {m.version: m for m in migrations}
    recorded = {row.version for row in applied}
    position = {m.version: i for i, m in enumerate(migrations)}
    filed = sorted((r for r in applied if r.version in position), key=lambda r: position[r.version])
    gone = [(r.version, r) for r in applied if r.version not in position]
    rows = [r for _, r in _with_missing([(r.version, r) for r in filed], gone)]
    pairs: list[tuple[AppliedMigration, M | None]] = [(row, by_version.get(row.version)) for row in rows]
    checksums = {row.version: row.checksum for row in applied}
    return Status(
        applied=pairs,
        # As Flyway: a repeatable migration whose file changed since it ran is pending again, after the
        # versioned ones (the files' order puts repeatables last); it is never "changed".
        pending=[m for m in migrations
                 if m.version not in recorded or (_repeatable(m) and checksums[m.version] != m.checksum)],
        changed=[(row, m) for row, m in pairs if m is not None and m.checksum != row.checksum and not _repeatable(m)],
        missing=[row for row, m in pairs if m is None],
        failed=[row for row in rows if not row.success],
        last_applied_at=max((row.applied_at for row in rows), default=None),
        files=list(migrations),
        partial={v: p for v, p in (progress or {}).items() if v in by_version and v not in recorded},
    )


def _repeatable(migration: Any) -> bool:
    """Whether *migration* is re-applied whenever its checksum changes (Flyway's ``R__`` scripts)."""
    return bool(getattr(migration, "repeatable", False))


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s"


def format_status(status: Status[Any], *, where: str) -> str:
    """A table of every migration and its state, then a summary; *where* is an already-redacted database."""
    changed = {row.version for row, _ in status.changed}

    def applied_cells(row: AppliedMigration, m: Any) -> tuple[str, str, str, str, str]:
        states = []
        if not row.success:
            states.append("FAILED")
        if m is None:
            states.append("MISSING")
        elif row.version in changed:
            states.append("CHANGED")
        elif _repeatable(m) and m.checksum != row.checksum:
            states.append("outdated (the next apply runs it again)")
        state = ",".join(states) or "applied"
        return (row.version, row.name, state, _when(row.applied_at), _duration(row.execution_ms))

    # Files in their tool's order; without status.files (a hand-made Status), in version order.
    files = list(status.files) or sorted(
        [m for _, m in status.applied if m is not None] + list(status.pending), key=lambda m: _version_key(m.version)
    )
    rows = {row.version: row for row, m in status.applied if m is not None}
    waiting = {m.version for m in status.pending}
    entries: list[tuple[str, tuple[str, str, str, str, str]]] = []
    for m in files:
        row = rows.get(m.version)
        if row is not None:
            entries.append((m.version, applied_cells(row, m)))
        elif m.version in status.partial:
            p = status.partial[m.version]
            state = "partly applied: " + p.describe(_statement_count(m))
            entries.append((m.version, (m.version, m.name, state, _when(p.updated_at), "-")))
        elif m.version in waiting:
            entries.append((m.version, (m.version, m.name, "pending", "-", "-")))
    gone = [(row.version, applied_cells(row, None)) for row, m in status.applied if m is None]
    lines = [cells for _, cells in _with_missing(entries, gone)]

    header = ("version", "name", "state", "applied at", "duration")
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [f"Migrations on {where}:"]
    if lines:
        out += [fmt(header), fmt(tuple("-" * w for w in widths)), *(fmt(c) for c in lines)]
    else:
        out.append("(no migration files and no history)")

    summary = f"{len(status.applied)} applied, {len(status.pending)} pending"
    if status.partial:
        summary += f" ({len(status.partial)} partly applied)"
    problems = [
        f"{len(items)} {label}"
        for label, items in (("changed", status.changed), ("missing", status.missing), ("failed", status.failed))
        if items
    ]
    if problems:
        summary += " (" + ", ".join(problems) + ")"
    last = _when(status.last_applied_at) if status.last_applied_at else "never"
    summary += f"; last migration applied {last}"
    out += ["", summary]
    if status.changed:
        out.append(
            "CHANGED: the file differs from what was applied. Restore the original file and put the change in a new migration."
        )
    if status.missing:
        out.append("MISSING: applied but the file is gone. Restore the file from version control.")
    if status.partial:
        out.append(
            "PARTLY APPLIED: a run stopped inside a migration that commits statement by statement or batch by batch; "
            "`harness apply` resumes after the last completed statement or batch."
        )
    if status.failed:
        out.append(
            "FAILED: a run stopped part-way. Check the database by hand, then fix forward or remove the history row."
        )
    return "\n".join(out)
