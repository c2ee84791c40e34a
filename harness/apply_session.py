"""Apply's connection policy: connect with retries, the writing session, the run lock and its fence, retried work.

One :class:`Session` per run (apply or rollback).  It decides once how a
session is opened (``application_name``, ``connect_timeout``, the guard
queries' ``lock_timeout``), which failures are retried and with what
backoff, how the run lock and its fence are taken and proved, and the
plan's timeouts (:func:`timeout_settings`), decided here once.  The frame
of each transaction that changes the target is built from them in
:mod:`harness.migrator`, which both runs and describes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from . import history
from ._apply_text import first_line, indent, ms, seconds
from .connection import CONNECTION_LOST, RETRYABLE, classify_connect_error
from .errors import ConnectionRefusedByConfig, HarnessError, MigrationError, TargetUnreachable
from .execute import StatementFailed, describe_pg_error
from .plan import Guards
from .redact import scrub
from .runlog import RunLog

__all__ = ["Session", "TIMEOUTS", "timeout_values", "timeout_settings", "reset_timeouts"]

T = TypeVar("T")

_APPLICATION_NAME = "migration-harness apply"
_CONNECT_TIMEOUT = 10
_MAX_DELAY = 60.0


#: The settings every change to the target runs under; the plan's guards of the same names set them.
TIMEOUTS = ("lock_timeout", "statement_timeout")


def timeout_values(guards: Any) -> dict[str, str]:
    """The plan's ``lock_timeout`` and ``statement_timeout`` as PostgreSQL settings (``'400ms'``), decided here once.

    Migrations set them with :func:`timeout_settings`; hooks get them as
    session settings (:meth:`harness.apply_context.RunContext.hook_settings`).
    """
    return {name: ms(getattr(guards, name)) for name in TIMEOUTS}


def timeout_settings(guards: Any, scope: str = "LOCAL") -> list[sql.Composed]:
    """``SET LOCAL`` (or ``SET SESSION``) of the plan's :func:`timeout_values`: what migrations run under.

    The names are the fixed ones of :data:`TIMEOUTS`, so they are written
    bare (``SET LOCAL lock_timeout = '400ms'``, as a person types it); the
    values are literals.
    """
    if scope not in ("LOCAL", "SESSION"):
        raise ValueError(f"scope: expected LOCAL or SESSION, got {scope!r}")
    return [
        sql.SQL("SET {} {} = {}").format(sql.SQL(scope), sql.SQL(name), sql.Literal(value))
        for name, value in timeout_values(guards).items()
    ]


def reset_timeouts() -> list[sql.Composed]:
    """Back to the session's own settings after :func:`timeout_settings` with ``SESSION``."""
    return [sql.SQL("RESET {}").format(sql.SQL(name)) for name in TIMEOUTS]


class Session:
    """The run's sessions on the target: the writing session (:attr:`conn`) and the run lock (:attr:`lock`)."""

    def __init__(self, dsn: str | None, where: str, guards: Guards, runlog: RunLog) -> None:
        self.dsn = dsn
        self.where = where
        self.guards = guards
        self.rl = runlog
        self.conn: psycopg.Connection[Any] | None = None
        # The session holding the run lock; while set, the writing session self.conn holds its fence.
        self.lock: history.LockSession | None = None

    # -- connecting

    def _connect_once(self, *, read_only: bool = False) -> psycopg.Connection[Any]:
        assert self.dsn is not None
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": _APPLICATION_NAME}
        if "connect_timeout" not in conninfo_to_dict(self.dsn):
            kwargs["connect_timeout"] = _CONNECT_TIMEOUT
        # Guard queries (catalog snapshots read expressions and so take ACCESS SHARE locks) must not hang
        # behind another session's ACCESS EXCLUSIVE lock: they give up after lock_wait.  Migration
        # statements override this with the plan's lock_timeout (SET LOCAL / SET, and RESET comes back here).
        options = f"-c lock_timeout={max(int(self.guards.lock_wait * 1000), 1)}"
        if read_only:
            options += " -c default_transaction_read_only=on"
        # The target's own options (a search_path, a role's settings) come first; ours are added after them.
        given = conninfo_to_dict(self.dsn).get("options")
        kwargs["options"] = f"{given} {options}" if given else options
        conn = psycopg.connect(self.dsn, **kwargs)
        conn.add_notice_handler(self._notice)
        if conn.info.server_version >= 140000:
            # If this process dies, the server notices within seconds and rolls back,
            # instead of keeping the migration's locks until a statement finishes.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SET client_connection_check_interval = '2s'")
        return conn

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        """Show and log what a migration raises (RAISE NOTICE/WARNING/INFO) as a ``notice`` event."""
        if diag.severity_nonlocalized in ("NOTICE", "WARNING", "INFO"):
            self.rl.say(f"    {diag.severity}: {diag.message_primary}", event=False)
            self.rl.event("notice", severity=diag.severity_nonlocalized, text=scrub(str(diag.message_primary)))

    def connect(self, *, read_only: bool = False, what: str = "connect") -> psycopg.Connection[Any]:
        """Connect, retrying transient failures with exponential backoff (see :mod:`harness.connection`).

        A refusal that is the settings' fault (password, role, database, an
        option) raises :class:`ConnectionRefusedByConfig` at once; a transient
        failure that outlasts the retries raises :class:`TargetUnreachable`.
        """
        assert self.dsn is not None
        attempts = self.guards.max_retries + 1
        attempt = 1
        rechecked = False
        while True:
            try:
                return self._connect_once(read_only=read_only)
            except psycopg.Error as exc:
                verdict = classify_connect_error(exc, self.dsn, connect_timeout=_CONNECT_TIMEOUT)
            if not verdict.transient:
                if verdict.from_ping and not rechecked:
                    # Ping answered after the failure: the server may have just come up. One more try, now.
                    rechecked = True
                    continue
                raise ConnectionRefusedByConfig(
                    f"cannot connect to {self.where}: {verdict.reason}. Not retried: {verdict.advice}.",
                    where=self.where, reason=verdict.reason, attempts=attempt,
                )
            if attempt == attempts:
                raise TargetUnreachable(
                    f"cannot connect to {self.where} after {attempts} tries: {verdict.reason}. The server did not "
                    "answer, or is starting up, shutting down or out of connection slots: check that it is running "
                    "and reachable from here, then run apply again (guards.max_retries and retry_delay set how long "
                    "apply keeps trying).",
                    where=self.where, reason=verdict.reason, attempts=attempts,
                )
            delay = self.delay(attempt)
            self.rl.warning(
                f"cannot connect to {self.where} ({verdict.reason}); try {attempt + 1} of {attempts} in {delay:.1f}s"
            )
            self.rl.event("retry", what=what, attempt=attempt, reason=verdict.reason, delay=delay)
            time.sleep(delay)
            attempt += 1

    def open(self, *, read_only: bool = False) -> psycopg.Connection[Any]:
        """Connect the writing session (:attr:`conn`)."""
        self.conn = self.connect(read_only=read_only)
        return self.conn

    def live(self) -> psycopg.Connection[Any]:
        """The writing session, connected again (and fenced again) when it was lost."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.rl.say(f"  reconnecting to {self.where}")
            self.conn = self.connect(what="reconnect")
            self.fence(self.conn)
        return self.conn

    def close(self) -> None:
        """Close the writing session (best effort)."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()

    def delay(self, attempt: int) -> float:
        """Seconds before retry number *attempt* (1-based): retry_delay * retry_factor ** (attempt - 1)."""
        return min(self.guards.retry_delay * self.guards.retry_factor ** (attempt - 1), _MAX_DELAY)

    # -- retries

    @staticmethod
    def rollback_quietly(conn: psycopg.Connection[Any]) -> None:
        """Roll back an open transaction on *conn*, if it still can (errors ignored)."""
        if conn.closed or conn.broken:
            return
        with contextlib.suppress(psycopg.Error):
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")

    @staticmethod
    def retry_reason(exc: BaseException, conn: psycopg.Connection[Any]) -> str | None:
        """Why *exc* (raised inside a migration) is worth another try, or ``None``: psycopg's classes decide."""
        kind: type[BaseException] = type(exc)
        if isinstance(exc, StatementFailed):
            # A statement's failure keeps the SQLSTATE, not the exception: psycopg's class for that SQLSTATE.
            with contextlib.suppress(KeyError):
                kind = psycopg.errors.lookup(exc.sqlstate) if exc.sqlstate else psycopg.OperationalError
        for cls, reason in RETRYABLE:
            if issubclass(kind, cls):
                return reason
        if issubclass(kind, CONNECTION_LOST):
            return "connection lost"
        # A dropped socket: libpq reports it without a SQLSTATE, and the connection is broken.
        if conn.closed or conn.broken or (isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None):
            return "connection lost"
        return None

    def retrying(self, what: str, attempt_fn: Callable[[psycopg.Connection[Any], int], T]) -> T:
        """Run *attempt_fn(conn, attempt)*; retry retryable errors with backoff, reconnecting when needed."""
        attempt = 0
        while True:
            conn = self.live()
            try:
                return attempt_fn(conn, attempt)
            except (StatementFailed, psycopg.Error) as exc:
                self.rollback_quietly(conn)
                reason = self.retry_reason(exc, conn)
                if reason is None:
                    raise
                attempt += 1
                text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
                if attempt > self.guards.max_retries:
                    advice = {
                        "lock timeout": "another session holds a conflicting lock for longer than lock_timeout "
                        f"({seconds(self.guards.lock_timeout)}); find it in pg_stat_activity / pg_locks, or run "
                        "at a quieter time",
                        "connection lost": "the connection to the server keeps dropping; check the server",
                    }.get(reason, "try again later")
                    raise MigrationError(
                        f"{what}: gave up after {attempt} tries ({reason}); it was rolled back each time. "
                        f"Last error:\n{indent(text)}\n{advice[0].upper() + advice[1:]}."
                    ) from None
                delay = self.delay(attempt)
                self.rl.warning(
                    f"{what}: {reason} ({first_line(exc)}); retry {attempt} of {self.guards.max_retries} in {delay:.1f}s"
                )
                self.rl.event("retry", what=what, attempt=attempt, reason=reason, delay=delay, error=first_line(exc))
                time.sleep(delay)

    # -- the run lock and its fence (harness.history, docs/apply.md "Fencing")

    def take_lock(self, stack: contextlib.ExitStack) -> None:
        """Take the run lock (held until *stack* closes) and its fence on the writing session."""
        assert self.conn is not None and self.dsn is not None
        with self.rl.phase("lock"):
            # The writing session must not idle out while this run waits for the lock.
            history.keep_alive(self.conn)
            t0 = time.monotonic()
            holder = stack.enter_context(history.run_lock(self.dsn, timeout=self.guards.lock_wait, on_wait=self._waiting))
            lock = history.lock_session(holder)
            self.fence(self.conn, lock, timeout=max(self.guards.lock_wait - (time.monotonic() - t0), 0.0))
            self.lock = lock
            stack.callback(self._unfence)
        self.rl.say("  run lock taken")

    def _waiting(self, text: str) -> None:
        self.rl.say(f"  {text}")
        self.rl.event("lock_wait", text=text)

    def fence(self, conn: psycopg.Connection[Any], lock: history.LockSession | None = None,
              timeout: float | None = None) -> None:
        """Make *conn* (a new writing session) hold the fence of the run lock; a no-op before the lock is taken."""
        lock = lock or self.lock
        if lock is None:
            return
        history.take_fence(conn, lock, timeout=self.guards.lock_wait if timeout is None else timeout,
                           where=self.where, on_wait=self._waiting)

    def _unfence(self) -> None:
        if self.conn is not None and self.lock is not None:
            history.release_fence(self.conn, self.lock)
        self.lock = None

    def verify_lock(self, conn: psycopg.Connection[Any], *, rollback: bool = True) -> None:
        """Prove that this run still holds the run lock (and *conn* its fence) before a statement or a commit.

        When it does not, an open transaction is rolled back (*rollback*
        ``False``: inside ``conn.transaction()``, which rolls back itself) and
        the run stops (:class:`~harness.errors.RunLockLost`).
        """
        if self.lock is None:
            return
        try:
            history.verify_lock(conn, self.lock, where=self.where)
        except HarnessError as exc:
            if rollback:
                self.rollback_quietly(conn)
            self.rl.event("lock_lost", text=str(exc))
            raise
