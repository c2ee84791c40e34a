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
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from .errors import ConnectionFailed, HarnessError, LockTimeout
from .redact import describe_dsn, scrub

__all__ = [
    "SCHEMA",
    "TABLE",
    "MODES",
    "APPLICATION_NAME",
    "RUN_LOCK_KEY",
    "MigrationLike",
    "AppliedMigration",
    "Status",
    "ensure_table",
    "read_applied",
    "record_applied",
    "remove_applied",
    "run_lock",
    "compute_status",
    "format_status",
]

log = logging.getLogger(__name__)

#: Schema and table of the history on a target database.
SCHEMA = "harness"
TABLE = "schema_migrations"

#: How a history row came to be.  "baseline": recorded by apply without running it, because the
#: target's schema already had everything up to the plan's baseline (issue 7, docs/apply.md).
MODES = ("development", "production", "rehearsal", "adopted", "baseline")

#: ``application_name`` of the lock connection, so people can see who holds it.
APPLICATION_NAME = "migration-harness"

#: Key of the run lock: the first 8 bytes of sha256(b"migration-harness") as a
#: signed big-endian 64-bit integer.  Fixed forever: every version of the
#: harness must contend for the same lock.
RUN_LOCK_KEY = -4595217716265846067

# Key of the transaction-level lock that serialises creators of the table.
# Deliberately different from RUN_LOCK_KEY: a process holding the run lock on
# one connection creates the table on another.  sha256(b"migration-harness:history-table")[:8].
_CREATE_LOCK_KEY = 5652701778334204274

# Seconds to wait for the lock connection when the DSN does not say.
_CONNECT_TIMEOUT = 10

_QUALIFIED = sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(TABLE))

_CREATE_SCHEMA = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA))
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
).format(_QUALIFIED)

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


# --------------------------------------------------------------------------
# The table


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{SCHEMA}.{TABLE}"]).fetchone()
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
        conn.execute(_CREATE_SCHEMA)
        conn.execute(_CREATE_TABLE)
    log.debug("history table %s.%s is in place", SCHEMA, TABLE)


def read_applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    """Every row of the history, in numeric version order; empty when there is no table yet."""
    if not _table_exists(conn):
        return []
    query = sql.SQL(
        "SELECT {} FROM {} "
        "ORDER BY CASE WHEN version ~ '^[0-9]+$' THEN version::numeric END NULLS LAST, version"
    ).format(sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS), _QUALIFIED)
    rows = conn.execute(query).fetchall()
    return [AppliedMigration(*row) for row in rows]


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
    ).format(table=_QUALIFIED)
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
            f"cannot record migration {migration.version}: the history table {SCHEMA}.{TABLE} does not exist "
            "on this database. Call harness.history.ensure_table() before recording."
        ) from None
    log.debug("recorded %s_%s (%s, success=%s, %d ms)", migration.version, migration.name, mode, success, execution_ms)


def remove_applied(conn: psycopg.Connection[Any], version: str) -> None:
    """Delete the history row of *version* (after a rollback), in the caller's current transaction."""
    if not _table_exists(conn):
        log.debug("no history table; nothing to remove for %s", version)
        return
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_QUALIFIED), [version])
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


def _connect_lock(dsn: str, where: str) -> psycopg.Connection[Any]:
    try:
        options: dict[str, Any] = {"application_name": APPLICATION_NAME}
        if "connect_timeout" not in conninfo_to_dict(dsn):
            options["connect_timeout"] = _CONNECT_TIMEOUT
        return psycopg.connect(dsn, autocommit=True, **options)
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        reason = scrub(lines[0]) if lines else type(exc).__name__
        raise ConnectionFailed(
            f"cannot connect to {where} to take the migration run lock: {reason}. "
            "Check that the server is running and that the connection settings are right."
        ) from None


def _acquire(conn: psycopg.Connection[Any], key: int, timeout: float, poll: float, where: str) -> None:
    """Poll ``pg_try_advisory_lock`` from the idle autocommit *conn* until it succeeds or *timeout* passes."""
    deadline = time.monotonic() + max(timeout, 0.0)
    announced = False
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        if row and row[0]:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not announced:
            holders = _holders(conn, key)
            log.info(
                "waiting up to %.0fs for the migration run lock on %s, held by %s",
                timeout,
                where,
                "; ".join(_describe_holder(h) for h in holders) or "another session",
            )
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
        f"could not take the migration run lock (advisory lock {key}) on {where} within {timeout:g}s: {who}. {advice}"
    )


@contextmanager
def run_lock(
    dsn: str,
    *,
    timeout: float = 60.0,
    poll: float = 0.2,
    key: int = RUN_LOCK_KEY,
) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migration run lock on the database of *dsn* for the ``with`` block.

    The lock is a session-level advisory lock on a dedicated autocommit
    connection (``application_name`` ``migration-harness``), which is yielded.
    While another session holds it, this one polls ``pg_try_advisory_lock``
    every *poll* seconds from that idle connection, never from inside a
    transaction, so the holder's ``CREATE INDEX CONCURRENTLY`` does not wait
    for us.  After *timeout* seconds :class:`~harness.errors.LockTimeout` names
    the holder.  The lock is released on exit, also on an exception.
    """
    where = describe_dsn(dsn)
    conn = _connect_lock(dsn, where)
    try:
        _acquire(conn, key, timeout, poll, where)
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
    """

    applied: list[tuple[AppliedMigration, M | None]] = field(default_factory=list)
    pending: list[M] = field(default_factory=list)
    changed: list[tuple[AppliedMigration, M]] = field(default_factory=list)
    missing: list[AppliedMigration] = field(default_factory=list)
    failed: list[AppliedMigration] = field(default_factory=list)
    last_applied_at: datetime | None = None
    files: list[M] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no applied migration was changed, lost or left failed."""
        return not (self.changed or self.missing or self.failed)

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values (ISO 8601 timestamps)."""

        def file(m: MigrationLike) -> dict[str, Any]:
            return {"version": m.version, "name": m.name, "id": m.id, "checksum": m.checksum}

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


def compute_status(migrations: Sequence[M], applied: Sequence[AppliedMigration]) -> Status[M]:
    """Compare migration files with history rows (no database involved)."""
    by_version: dict[str, M] = {m.version: m for m in migrations}
    recorded = {row.version for row in applied}
    position = {m.version: i for i, m in enumerate(migrations)}
    filed = sorted((r for r in applied if r.version in position), key=lambda r: position[r.version])
    gone = [(r.version, r) for r in applied if r.version not in position]
    rows = [r for _, r in _with_missing([(r.version, r) for r in filed], gone)]
    pairs: list[tuple[AppliedMigration, M | None]] = [(row, by_version.get(row.version)) for row in rows]
    return Status(
        applied=pairs,
        pending=[m for m in migrations if m.version not in recorded],
        changed=[(row, m) for row, m in pairs if m is not None and m.checksum != row.checksum],
        missing=[row for row, m in pairs if m is None],
        failed=[row for row in rows if not row.success],
        last_applied_at=max((row.applied_at for row in rows), default=None),
        files=list(migrations),
    )


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
    if status.failed:
        out.append(
            "FAILED: a run stopped part-way. Check the database by hand, then fix forward or remove the history row."
        )
    return "\n".join(out)
