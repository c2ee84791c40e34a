"""Apply a plan's pending migrations to its target: guards, backup, execution, verification, health.

The one entry point is :func:`apply_plan`; ``harness apply``, the pytest
plugin and Python callers are front ends over it.  A run goes through these
phases, each logged with its timing (see :mod:`harness.runlog`):

1. **connect** to the target, with retries and exponential backoff
   (``guards.max_retries``, ``retry_delay``, ``retry_factor``);
2. **receipt** (production): the plan and every migration must match a green
   rehearsal receipt, unless ``--force`` (logged as a WARNING);
3. **lock**: the migration run lock (``guards.lock_wait``), held to the end,
   and its fence on the migration session; every transaction, statement and
   batch first proves that the run still holds both, else stops
   (:class:`~harness.errors.RunLockLost`; see :mod:`harness.history`);
4. **status**: refuse a history with changed, missing or failed migrations
   (production; development warns about changed and missing ones), and a
   foreign history (another tool's table) that is dirty, failed, mismatched
   or not adopted yet; decide whether the plan's ``baseline`` is recorded
   instead of run (an empty history on a non-empty schema);
5. **drift** (production): the target's schema must be the rehearsed schema
   at the target's current version (part-way through a migration an earlier
   run left there: after its completed statements);
6. **backup** (production): ``pg_dump`` archive verified before any change,
   or the plan's backup hook;
7. **pre_run hooks**, then each migration: pre_migration hooks, the
   statements (in a transaction with ``SET LOCAL lock_timeout`` and
   ``statement_timeout``, the history row in the same transaction;
   non-transactional migrations statement by statement with progress in
   ``harness.apply_progress``; a ``-- harness:batch`` statement in key-range
   batches, each its own transaction, with progress in
   ``harness.batch_progress``), post_migration hooks.  Lock timeouts,
   deadlocks, serialization failures and lost connections are retried with
   backoff; any other error rolls back and stops the run;
8. **verify** (production with a receipt): the schema must equal the
   receipt's final schema;
9. **health**: SQL checks and an HTTP URL; when verification or health fail,
   the migrations of this run are rolled back with their down files
   (``health.on_failure: rollback``) or the run stops naming the backup;
10. **post_run hooks**, backup retention, and the summary.

Failures raise the matching :class:`~harness.errors.HarnessError` subclass
with the partial :class:`ApplyResult` attached as ``exc.result``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

from . import adopt, history, mirror
from .batch import BatchSpec, BatchState, next_batch, resolve_target
from .checks import check_problem
from ._apply_text import batches as _batches
from ._apply_text import describe_url as _describe_url
from ._apply_text import first_line as _first_line
from ._apply_text import indent as _indent
from ._apply_text import ms as _ms
from ._apply_text import plural as _plural
from ._apply_text import seconds as _seconds
from .apply_session import Session, timeout_settings
from .connection import RETRYABLE, check_conninfo
from .backup import BackupInfo, prune_backups, take_backup, touched_tables
from .devdb import DevDB
from .errors import (
    BackupError,
    CheckFailed,
    ConfigError,
    ConnectionRefusedByConfig,
    GuardError,
    HarnessError,
    MigrationError,
    SourceError,
    TargetUnreachable,
)
from .execute import StatementFailed, describe_pg_error, relpath, run_statements
from .hooks import HookContext, PythonHook, describe_hook, run_hooks
from .plan import Check, Hook, Plan
from .postgres import start_server
from .receipt import Receipt, read_receipt, receipt_path, server_version_problem, verify_receipt
from .redact import describe_dsn, register_dsn, scrub
from .rehearsal import Rehearsal
from .runlog import RunLog, ensure_private_dir, human_size, utc_stamp
from .snapshot import Snapshot, diff_snapshots, format_changes, take_snapshot
from .sources import Migration, Statement, baseline_index, load_plan_migrations

__all__ = [
    "ApplyOptions",
    "ApplyResult",
    "apply_plan",
    "PROGRESS_TABLE",
    "BATCH_PROGRESS_TABLE",
    "RETRYABLE_SQLSTATES",
]

log = logging.getLogger(__name__)

#: Where statement-by-statement progress of non-transactional migrations is kept.
PROGRESS_TABLE = history.PROGRESS_TABLE

#: Where the progress of a batched statement (``-- harness:batch``) is kept: the last key done, rows, batches.
BATCH_PROGRESS_TABLE = history.BATCH_PROGRESS_TABLE

#: A console progress line every this many batches (and for the first and the last).
BATCH_REPORT_EVERY = 10

#: Errors worth another try (the statement may succeed once the other session is done), by SQLSTATE;
#: matched by psycopg's classes (harness.connection.RETRYABLE), listed here for reference.
RETRYABLE_SQLSTATES = {cls.sqlstate: reason for cls, reason in RETRYABLE}


_PROGRESS = sql.SQL("{}.{}").format(sql.Identifier(history.SCHEMA), sql.Identifier(PROGRESS_TABLE))
_CREATE_PROGRESS = sql.SQL(
    """CREATE TABLE IF NOT EXISTS {} (
    version          text NOT NULL,
    checksum         text NOT NULL,
    statement_index  integer NOT NULL,
    line             integer NOT NULL,
    completed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, statement_index)
)"""
).format(_PROGRESS)

_BATCH_PROGRESS = sql.SQL("{}.{}").format(sql.Identifier(history.SCHEMA), sql.Identifier(BATCH_PROGRESS_TABLE))
_CREATE_BATCH_PROGRESS = sql.SQL(
    """CREATE TABLE IF NOT EXISTS {} (
    version          text NOT NULL,
    checksum         text NOT NULL,
    statement_index  integer NOT NULL,
    line             integer NOT NULL,
    last_key         text NOT NULL,
    rows             bigint NOT NULL,
    batches          integer NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, statement_index)
)"""
).format(_BATCH_PROGRESS)


# --------------------------------------------------------------------------
# Public objects


@dataclass
class ApplyOptions:
    """How to run :func:`apply_plan`."""

    dry_run: bool = False  # print what would run, change nothing
    force: bool = False  # skip the receipt gate (logged as a WARNING)
    mode: str | None = None  # "development" or "production"; default: the plan's
    yes: bool = False  # do not ask for confirmation (production)
    hooks: Mapping[str, Sequence[PythonHook | Hook]] = field(default_factory=dict)  # extra hooks per event, after the plan's
    target: str | None = field(default=None, repr=False)  # override the plan's target DSN
    to: str | None = None  # stop after this migration (version or id): `harness apply --to VERSION`


@dataclass
class ApplyResult:
    """What a run did (or, for a dry run, would do)."""

    plan: str
    mode: str
    database: str = "?"
    applied: list[str] = field(default_factory=list)  # applied by this run, in order
    baselined: list[str] = field(default_factory=list)  # recorded as applied (mode baseline) without running
    skipped: list[str] = field(default_factory=list)  # already applied before this run
    pending: list[str] = field(default_factory=list)  # still pending after this run
    rolled_back: list[str] = field(default_factory=list)
    backup: Path | None = None
    verification: str = "not run"
    health: str = "not run"
    timings: dict[str, float] = field(default_factory=dict)
    log_path: Path | None = None
    ok: bool = False
    dry_run: bool = False
    dry_run_plan: list[str] = field(default_factory=list)
    forced: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (secrets scrubbed)."""
        data = {
            "plan": self.plan,
            "mode": self.mode,
            "database": self.database,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "forced": self.forced,
            "applied": self.applied,
            "baselined": self.baselined,
            "skipped": self.skipped,
            "pending": self.pending,
            "rolled_back": self.rolled_back,
            "backup": str(self.backup) if self.backup else None,
            "verification": self.verification,
            "health": self.health,
            "timings": self.timings,
            "log": str(self.log_path) if self.log_path else None,
            "warnings": self.warnings,
            "error": self.error,
        }
        if self.dry_run:
            data["steps"] = self.dry_run_plan
        cleaned: dict[str, Any] = json.loads(scrub(json.dumps(data, default=str)))
        return cleaned


def apply_plan(plan: Plan, options: ApplyOptions | None = None, *, out: TextIO | None = sys.stdout) -> ApplyResult:
    """Apply *plan*'s pending migrations to its target (see the module docstring for the phases).

    Returns the :class:`ApplyResult` of a successful run (or of a dry run);
    raises a :class:`~harness.errors.HarnessError` subclass carrying the
    partial result as ``.result`` otherwise.  Human progress goes to *out*
    (``None``: silent); the JSON-lines log goes to ``<root>/logs/``.
    """
    return _Run(plan, options or ApplyOptions(), out).run()


# --------------------------------------------------------------------------
# Helpers


class _HealthFailed(Exception):
    """Internal: verification or a health check failed, with the text to show."""


# --------------------------------------------------------------------------
# The run


class _Run:
    def __init__(self, plan: Plan, options: ApplyOptions, out: TextIO | None) -> None:
        self.plan = plan
        self.options = options
        self.out = out
        self.mode = options.mode or plan.mode
        if self.mode not in ("development", "production"):
            raise ConfigError(f"unknown mode {self.mode!r}; use development or production")
        self.guards = plan.guards
        self.production = self.mode == "production"
        # The plan says how to read its folder: layout and substitutions (docs/layouts.md).
        self.migrations = load_plan_migrations(plan)
        # `history: {mirror: <tool>}`: the other tool's history rows, written with ours (harness.mirror).
        self.mirror = mirror.mirror_for(plan.history_mirror, self.migrations, plan.migrations_dir)
        plan.bind([(m.id, m.version) for m in self.migrations])
        # Index of the last migration the plan's baseline covers (-1: no baseline).
        self.baseline_index = baseline_index(self.migrations, plan.baseline)
        # Baseline migrations this run records as applied without running them (see _baseline).
        self.baselined: list[Migration] = []
        self.result = ApplyResult(plan=plan.name, mode=self.mode, dry_run=options.dry_run, forced=options.force)
        self.runlog: RunLog | None = None
        self._session: Session | None = None
        self.dsn: str | None = None
        self.where = "?"
        self.receipt: Receipt | None = None
        self.receipt_valid = False
        self.snapshot: Snapshot | None = None
        self.backup: BackupInfo | None = None
        self.backup_path: Path | None = None
        self.applied_now: list[Migration] = []
        self.pending: list[Migration] = []
        # (version, statement index): a statement the drift check found completed without its progress row.
        self.completed_unrecorded: tuple[str, int] | None = None
        self.ctx: HookContext | None = None
        # `--to VERSION`: the index of the last migration this run may apply (None: every pending one), and
        # the pending migrations after it, which stay pending.
        self.stop = migration_index(self.migrations, options.to) if options.to is not None else None
        self.beyond: list[Migration] = []

    # ------------------------------------------------------------------ frame

    @property
    def rl(self) -> RunLog:
        assert self.runlog is not None
        return self.runlog

    @property
    def session(self) -> Session:
        assert self._session is not None
        return self._session

    def run(self) -> ApplyResult:
        t0 = time.perf_counter()
        self.dsn = self._resolve_target()
        if self.dsn is not None:
            register_dsn(self.dsn)
            self.where = describe_dsn(self.dsn)
        else:
            self.where = "the development database (not running yet)"
        self.result.database = self.where
        log_dir = None if self.options.dry_run else self.plan.root / "logs"
        self.runlog = RunLog(self.plan.name, log_dir, out=self.out)
        self._session = Session(self.dsn, self.where, self.guards, self.runlog)
        self.result.log_path = self.rl.path
        self.ctx = HookContext(
            plan=self.plan.name, phase="pre_run", mode=self.mode, database=self.where, root=str(self.plan.root)
        )
        self.rl.event(
            "run_start",
            plan=self.plan.name,
            plan_path=str(self.plan.path),
            mode=self.mode,
            database=self.where,
            dry_run=self.options.dry_run,
            force=self.options.force,
            pid=os.getpid(),
            migrations=len(self.migrations),
        )
        interrupted = True
        try:
            try:
                if self.options.dry_run:
                    self._dry_run()
                else:
                    self._apply()
            except psycopg.Error as exc:
                # A database error outside a migration (a guard query, the bookkeeping tables...).
                raise MigrationError(
                    f"database error on {self.where}: {describe_pg_error(exc)}"
                    + (" (a lock held by another session; try again when it is released)"
                       if isinstance(exc, psycopg.errors.LockNotAvailable) else "")
                ) from None
            interrupted = False
        except HarnessError as exc:
            interrupted = False
            self._failed(exc)
            exc.result = self.result  # type: ignore[attr-defined]
            raise
        finally:
            self.result.timings = {**self.rl.timings, "total": round(time.perf_counter() - t0, 4)}
            self.result.warnings = list(self.rl.warnings)
            if interrupted:
                self.rl.event("interrupted", applied=self.result.applied)
            self.rl.event(
                "run_end",
                ok=self.result.ok,
                applied=self.result.applied,
                rolled_back=self.result.rolled_back,
                pending=self.result.pending,
                backup=str(self.result.backup) if self.result.backup else None,
                verification=self.result.verification,
                health=self.result.health,
                timings=self.result.timings,
                error=self.result.error,
            )
            self.session.close()
            self.rl.close()
        return self.result

    def _resolve_target(self) -> str | None:
        dsn = self.options.target or self.plan.target_dsn
        if dsn:
            # A malformed string is a configuration problem, said at once and without the string.
            check_conninfo(dsn, describe_dsn(dsn))
            return dsn
        if self.production:
            raise ConfigError(
                f"{self.plan.display_path or self.plan.path}: production mode needs a target "
                "(target: {dsn: ...}); without one, apply runs in development mode on the local development database"
            )

        dev = DevDB(self.plan.root)
        if self.options.dry_run:
            status = dev.status()
            return status.dsn if status.running else None
        return dev.start().dsn

    def _failed(self, exc: HarnessError) -> None:
        self.result.ok = False
        self.result.error = scrub(str(exc))
        self.result.pending = [m.id for m in self.pending if m.id not in self.result.applied]
        # The front end shows the error itself (harness.cli prints it); the log keeps it.
        self.rl.event("error", error_type=type(exc).__name__, text=scrub(str(exc)))
        if self.options.dry_run or isinstance(exc, ConfigError):
            return
        hooks = self._hooks("on_failure")
        if hooks and self.dsn is not None:
            ctx = self._ctx("on_failure", error=_first_line(exc))
            try:
                run_hooks(hooks, ctx, dsn=self.dsn, runlog=self.rl, session_settings=self._hook_settings())
            except HarnessError as hook_exc:
                # Never hide the error that ended the run.
                self.rl.warning(f"an on_failure hook failed too: {hook_exc}")

    # ------------------------------------------------------------------ hooks

    def _hooks(self, event: str) -> list[Hook | PythonHook]:
        return [*getattr(self.plan.hooks, event), *self.options.hooks.get(event, ())]

    def _ctx(self, phase: str, **changes: Any) -> HookContext:
        assert self.ctx is not None
        return self.ctx.at(
            phase,
            backup=str(self.backup_path) if self.backup_path else None,
            applied=tuple(m.id for m in self.applied_now),
            **changes,
        )

    def _hook_settings(self) -> dict[str, str]:
        return {"lock_timeout": _ms(self.guards.lock_timeout), "statement_timeout": _ms(self.guards.statement_timeout)}

    def _run_hooks(self, event: str, migration: Migration | None = None) -> None:
        hooks = self._hooks(event)
        if not hooks:
            return
        assert self.dsn is not None
        with self.rl.phase(f"hooks:{event}" + (f":{migration.id}" if migration else "")):
            run_hooks(
                hooks,
                self._ctx(event, migration=migration.id if migration else None),
                dsn=self.dsn,
                runlog=self.rl,
                session_settings=self._hook_settings(),
            )

    # ------------------------------------------------------------------ connections

    # ------------------------------------------------------------------ apply

    def _apply(self) -> None:
        rl = self.rl
        rl.say(f"harness apply {self.plan.name}: {self.mode} run on {self.where}")
        if self.production:
            with rl.phase("receipt"):
                self._receipt_gate()
        with rl.phase("connect"):
            conn = self.session.open()
            rl.say(f"  connected: PostgreSQL {conn.info.parameter_status('server_version') or '?'}")
        if self.production and self.receipt is not None:
            self._receipt_server_gate(conn)
        assert self.dsn is not None
        with contextlib.ExitStack() as stack:
            self.session.take_lock(stack)
            with rl.phase("status"):
                status = self._status()
                self._stop_pending()
            if self.production:
                with rl.phase("drift"):
                    self._drift(status)
            if not self.pending and not self.baselined:
                rl.say(f"nothing to apply: all {len(self.migrations)} migrations are applied")
                self._verify_and_health(nothing_applied=True)
                self.result.ok = True
                self._summary()
                return
            self._check_transaction_scope()
            self._confirm()
            self._run_hooks("pre_run")
            self._prepare_tables()
            if self.production:
                with rl.phase("backup"):
                    self._backup()
            with rl.phase("migrate"):
                self._migrate()
            self.result.pending = [m.id for m in self.beyond]
            self._verify_and_health(nothing_applied=False)
            self._run_hooks("post_run")
            self._retention()
            self.result.ok = True
            self._summary()

    def _stop_pending(self) -> None:
        """``--to VERSION``: keep the pending migrations up to it; the later ones stay pending."""
        if self.stop is None:
            return
        stop = self.migrations[self.stop]
        self.beyond = [m for m in self.pending if self.migrations.index(m) > self.stop]
        self.pending = [m for m in self.pending if m not in self.beyond]
        self.result.pending = [m.id for m in self.pending]
        if self.beyond:
            self.rl.say(f"  --to {stop.version}: applying up to {stop.id}; {_plural(len(self.beyond), 'later migration')} "
                        "stay pending")

    # -- the run lock and its fence (harness.history, docs/apply.md "Fencing")

    # -- guards

    def _receipt_gate(self) -> None:
        rl = self.rl
        required = self.guards.require_receipt
        if self.options.force or not required:
            why = "--force" if self.options.force else "guards.require_receipt is false"
            try:
                self.receipt = verify_receipt(self.plan, self.migrations)
                self.receipt_valid = True
            except GuardError as exc:
                self.receipt = read_receipt(self.plan) if receipt_path(self.plan).exists() else None
                if self.options.force:
                    rl.warning(
                        f"--force: applying WITHOUT a matching green rehearsal receipt ({_first_line(exc)}). "
                        "Nothing proves these migrations were rehearsed; verification is skipped."
                    )
                else:
                    rl.say(f"  receipt: not required ({why}); none matches: {_first_line(exc)}")
                return
            if self.options.force:
                rl.warning("--force given, but the receipt matches anyway; the receipt gate passed")
            rl.say(f"  receipt: matches (rehearsed {self.receipt.created_at} on PostgreSQL {self.receipt.server_version})")
            return
        self.receipt = verify_receipt(self.plan, self.migrations)
        self.receipt_valid = True
        rl.say(f"  receipt: matches (rehearsed {self.receipt.created_at} on PostgreSQL {self.receipt.server_version})")

    def _receipt_server_gate(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a receipt rehearsed on another PostgreSQL major than the target's (``--force`` warns instead)."""
        assert self.receipt is not None
        reported = (conn.info.parameter_status("server_version") or "").split()
        target = reported[0] if reported else f"{conn.info.server_version // 10000}"
        problem = server_version_problem(self.receipt, target)
        if problem is None:
            return
        refuse = self.guards.require_receipt and self.receipt_valid and not self.options.force
        self.rl.event("receipt_server_version", rehearsed=self.receipt.server_version, target=target,
                      forced=self.options.force, refused=refuse)
        if refuse:
            raise GuardError(f"{problem}. `--force` applies anyway (logged as a WARNING).")
        if self.options.force:
            self.rl.warning(f"--force: applying although {problem}")
        else:
            self.rl.warning(problem)

    def _status(self) -> history.Status[Migration]:
        conn = self.session.live()
        status = history.compute_status(self.migrations, history.read_applied(conn))
        self.result.skipped = [m.id for _, m in status.applied if m is not None]
        problems: list[str] = []
        if status.failed:
            problems.append(
                "failed: " + ", ".join(f"{r.version}_{r.name}" for r in status.failed)
                + " (a run stopped part-way: check the database, then fix forward or remove the history row)"
            )
        for row, m in status.changed:
            text = f"changed: {m.id} ({relpath(m.path)}) differs from what was applied (checksum {row.checksum[:12]}... → {m.checksum[:12]}...)"
            if self.production:
                problems.append(text + "; restore the original file and put the change in a new migration")
            else:
                self.rl.warning(text + "; it is not re-run (development mode)")
        for row in status.missing:
            text = f"missing: {row.version}_{row.name} is applied but its file is gone"
            if self.production:
                problems.append(text + "; restore the file from version control")
            else:
                self.rl.warning(text)
        problems += self._foreign_problems(conn)
        self.baselined = self._baseline(conn, status)
        pending = [m for m in status.pending if m not in self.baselined]
        unrunnable = [m for m in pending if m.error is not None]
        if unrunnable:
            # Nothing has run yet: refuse before the first pending migration rather than stop half-way.
            raise SourceError(
                f"{len(unrunnable)} pending migration(s) cannot be run, so {self.mode} apply changes nothing:\n  - "
                + "\n  - ".join(m.error or "" for m in unrunnable)
            )
        # Repeatable migrations sort after every versioned one and never make a versioned one late (Flyway).
        applied_orders = [m.order for _, m in status.applied if m is not None and not m.repeatable]
        newest = max(applied_orders, default=None)
        late = [m for m in pending if newest is not None and not m.repeatable and m.order < newest]
        if late:
            text = (
                "out of order: " + ", ".join(m.id for m in late)
                + f" are older than the newest applied migration ({newest})"
            )
            if self.production:
                problems.append(text + "; renumber them after the newest applied migration")
            else:
                self.rl.warning(text + "; applying them anyway (development mode)")
        if problems:
            raise GuardError(
                f"the history of {self.where} needs attention before {self.mode} apply:\n  - "
                + "\n  - ".join(problems)
                + f"\n(`harness status {self.plan.name}` shows the details)"
            )
        self.pending = pending
        self.result.pending = [m.id for m in self.pending]
        self.rl.say(f"  status: {len(status.applied)} applied, {len(self.pending)} pending")
        if self.baselined:
            self.rl.say(
                f"  baseline: the history is empty but the schema is not: {len(self.baselined)} migrations up to "
                f"{self.baselined[-1].id} (the plan's baseline) are taken as applied and will be recorded, not run"
            )
        elif self.baseline_index >= 0 and not status.applied:
            self.rl.say("  baseline: the target's schema is empty: every migration runs, the baseline ones included")
        self.rl.event("status", applied=self.result.skipped, pending=self.result.pending)
        return status

    def _foreign_problems(self, conn: psycopg.Connection[Any]) -> list[str]:
        """What another tool's history table says that stops apply (docs/layouts.md, adopting).

        A dirty, failed or mismatched foreign history blocks apply
        (:func:`harness.adopt.blocking_problems`); so does one that lists
        migrations as applied that our history does not have yet: running
        them again would fail or, worse, repeat a data change.
        """
        layout = self.migrations[0].layout if self.migrations else self.plan.layout
        problems = [f"{p} (foreign history)" for p in adopt.blocking_problems(conn, self.migrations, layout=layout)]
        if self.mirror is not None:
            problems += [f"{p} (history.mirror)" for p in self.mirror.problems(conn)]
        if problems:
            return problems
        adoption = adopt.plan_adoption(conn, self.migrations, layout=layout)
        if adoption.to_record and adoption.source is not None:
            h = adoption.source.history
            ids = ", ".join(m.id for m in adoption.to_record[:5]) + (", ..." if len(adoption.to_record) > 5 else "")
            problems.append(
                f"{h.table} ({h.tool}) says {len(adoption.to_record)} migrations are applied that "
                f"{history.SCHEMA}.{history.TABLE} does not list ({ids}); run `harness adopt {self.plan.name}` "
                "first, so that apply does not run them a second time"
            )
        return problems

    def _baseline(self, conn: psycopg.Connection[Any], status: history.Status[Migration]) -> list[Migration]:
        """The migrations up to the plan's baseline that this run records as applied without running them.

        Flyway's ``baselineOnMigrate``: a target with an empty history whose
        schema is *not* empty already has everything up to the baseline (it
        was built before the harness took over).  An empty schema is a fresh
        database: every migration runs, the baseline ones included.  A target
        that already has history rows is behind or up to date: migrations
        missing from its history are pending like any other.  Production
        checks the claim: the drift guard compares the schema with the
        rehearsal's schema after the baseline.
        """
        if self.baseline_index < 0 or status.applied:
            return []
        if _schema_is_empty(conn):
            return []
        return list(self.migrations[: self.baseline_index + 1])

    def _record_baseline(self) -> None:
        """Record the baseline migrations as applied (mode ``baseline``), in one transaction."""
        baselined = self.baselined

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            with conn.transaction():
                self.session.verify_lock(conn, rollback=False)
                recorded = {r.version for r in history.read_applied(conn)}
                for migration in baselined:
                    if migration.version not in recorded:
                        self._record(conn, migration, execution_ms=0, mode="baseline")

        self.session.retrying("recording the baseline", attempt)
        self.result.baselined = [m.id for m in baselined]
        self.rl.say(f"baseline: recorded {_plural(len(baselined), 'migration')} up to {baselined[-1].id} as applied "
                    "(mode baseline); they were not run")
        self.rl.event("baseline", migrations=self.result.baselined)

    def _drift(self, status: history.Status[Migration]) -> None:
        rl = self.rl
        conn = self.session.live()
        if not self.baselined and self._drift_within(conn):
            return
        sequence = None if self.baselined else _applied_first(self.migrations, status)
        if sequence is not None:
            self._drift_out_of_file_order(conn, status, sequence)
            return
        # With a baseline to record, the target must already look like the rehearsal after the baseline.
        index = self.baseline_index if self.baselined else len(status.applied) - 1
        last = self.migrations[index].id if index >= 0 else None
        actual = self._schema(conn)
        self.snapshot = actual
        expected_digest = None
        if self.receipt is not None and last is not None:
            rehearsed = all(self.receipt.migrations.get(m.id) == m.checksum for m in self.migrations[: index + 1])
            if rehearsed:
                expected_digest = self.receipt.digests.get(last)
        at = f"after {last}" if last else "before the first migration"
        if expected_digest is not None and expected_digest == actual.digest:
            rl.say(f"  drift: none (schema digest matches the rehearsal {at})")
            rl.event("drift", outcome="none", at=last, digest=actual.digest)
            return
        rl.say(f"  drift: rehearsing the plan up to {last or 'its start'} to compare the schema ...")
        with rl.progress("drift rehearsal"):
            expected = self._rehearsed_schema(index)
        changes = diff_snapshots(expected, actual)
        if not changes:
            rl.say(f"  drift: none (schema equals the rehearsal {at})")
            rl.event("drift", outcome="none", at=last, digest=actual.digest, rehearsed=True)
            return
        rl.event("drift", outcome="drift", at=last, changes=[c.describe() for c in changes[:200]])
        raise GuardError(
            f"drift: the schema of {self.where} differs from the rehearsed schema {at} "
            f"(expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def _drift_out_of_file_order(
        self, conn: psycopg.Connection[Any], status: history.Status[Migration], sequence: list[Migration]
    ) -> None:
        """The drift check when what is applied is not a prefix of the files (a Flyway repeatable ran before
        versioned migrations added since): the plan is rehearsed in the order the target got its migrations."""
        rl = self.rl
        # A repeatable that changed since it ran: the target has its earlier text, which no file holds.
        outdated = [m.id for row, m in status.applied if m is not None and m.repeatable and m.checksum != row.checksum]
        applied = [m for _, m in status.applied if m is not None and m.id not in outdated]
        ids = {m.id for m in applied}
        sequence = applied + [m for m in sequence if m.id not in ids]
        actual = self._schema(conn)
        self.snapshot = actual
        rl.say(f"  drift: rehearsing the {len(applied)} applied migrations in the order they ran, to compare ...")
        with rl.progress("drift rehearsal"):
            expected = self._rehearsed_schemas(len(applied) - 1, migrations=sequence)[0]
        changes = diff_snapshots(expected, actual)
        if not changes:
            rl.say("  drift: none (schema equals the rehearsal of the applied migrations)")
            rl.event("drift", outcome="none", at=applied[-1].id, digest=actual.digest, rehearsed=True)
            return
        if outdated:
            # The target ran an earlier text of these scripts, which no file holds any more: the comparison
            # cannot be exact, and this apply runs them again anyway.
            rl.warning(
                f"drift: cannot be checked exactly: the repeatable migrations {', '.join(outdated)} changed since "
                f"they ran (this apply runs them again); differences from their current text:\n"
                f"{_indent(format_changes(changes))}"
            )
            rl.event("drift", outcome="unverifiable", outdated=outdated, changes=[c.describe() for c in changes[:200]])
            return
        rl.event("drift", outcome="drift", at=applied[-1].id, changes=[c.describe() for c in changes[:200]])
        raise GuardError(
            f"drift: the schema of {self.where} differs from the rehearsal of its applied migrations "
            f"(expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def _rehearsed_schema(self, index: int) -> Snapshot:
        return self._rehearsed_schemas(index)[0]

    def _rehearsed_schemas(
        self, index: int, completed: int | None = None, upto: int | None = None,
        migrations: Sequence[Migration] | None = None,
    ) -> list[Snapshot]:
        """The rehearsal's schema after migration *index*; with *completed*, part-way through it (see
        :meth:`harness.rehearsal.Rehearsal.schemas_within`), one schema per statement count up to *upto*.
        *migrations* orders the history otherwise than the files (the order a target got them)."""
        r = self.plan.rehearsal
        server = start_server(r.provider, r.postgres, r.dsn, data_bytes=r.seed_bytes)
        try:
            ordered = list(migrations) if migrations is not None else self.migrations
            with Rehearsal(self.plan, server, migrations=ordered, measure=False) as rehearsal:
                if completed is None:
                    return [rehearsal.schema_after(index)]
                return rehearsal.schemas_within(index, completed, upto)
        finally:
            server.stop()

    def _drift_within(self, conn: psycopg.Connection[Any]) -> bool:
        """The drift check when an earlier run left the next migration part-way; False when it did not.

        A migration that commits statement by statement (or unit by unit,
        with batched statements) and was interrupted leaves its completed
        statements on the target and says how many in its progress rows.  The
        target must then look like the rehearsal after exactly those
        statements: the plan is rehearsed up to there (the receipt keeps one
        digest per migration, not per statement).  When it instead looks
        like the rehearsal after the next statement as well, that statement
        completed and the run died before its progress row: apply resumes
        after it.  An INVALID index the interrupted statement left is named,
        with the statement that drops it.
        """
        if not self.pending or self.pending[0].transactional:
            return False
        migration = self.pending[0]
        statements = migration.statements
        progress = history.read_progress(conn).get(migration.version)
        done = self._progress(conn, migration) if progress is not None and progress.statements else -1
        self._refuse_invalid_index(conn, migration, done)
        if done < 0:
            return False  # nothing of its schema changes was committed: the usual check after the migration before
        rl = self.rl
        index = self.migrations.index(migration)
        unit = next((u for u in _units(migration) if u[1] > done), None)
        # Only a statement that commits on its own can have run without its progress row (a unit's row commits with it).
        single = unit is not None and unit[2] is None and unit[0] == unit[1] and not (
            migration.batches and not migration.no_transaction)
        upto = done + 2 if single else done + 1
        where = f"after statement {done + 1} of {len(statements)} of {migration.id}"
        actual = self._schema(conn)
        self.snapshot = actual
        rl.say(f"  drift: {migration.id} was left part-way by an earlier run ({progress.describe(len(statements)) if progress else ''}); "
               "rehearsing the plan up to there to compare the schema ...")
        with rl.progress("drift rehearsal"):
            expected = self._rehearsed_schemas(index, done + 1, upto)
        changes = diff_snapshots(expected[0], actual)
        if not changes:
            rl.say(f"  drift: none (schema equals the rehearsal {where})")
            rl.event("drift", outcome="none", at=migration.id, statements=done + 1, digest=actual.digest, rehearsed=True)
            return True
        if len(expected) > 1 and not diff_snapshots(expected[1], actual):
            self.completed_unrecorded = (migration.version, done + 1)
            rl.say(f"  drift: none (schema equals the rehearsal after statement {done + 2} of {migration.id}: it "
                   "completed, but the earlier run stopped before recording it; it is not run again)")
            rl.event("drift", outcome="none", at=migration.id, statements=done + 2, digest=actual.digest, rehearsed=True)
            return True
        rl.event("drift", outcome="drift", at=migration.id, statements=done + 1, changes=[c.describe() for c in changes[:200]])
        raise GuardError(
            f"drift: the schema of {self.where} differs from the rehearsed schema {where}, where an earlier run "
            f"stopped (expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def _refuse_invalid_index(self, conn: psycopg.Connection[Any], migration: Migration, done: int) -> None:
        """Refuse when the statement after the last completed one is a ``CREATE INDEX CONCURRENTLY`` that left an INVALID index."""
        if done + 1 >= len(migration.statements):
            return
        statement = migration.statements[done + 1]
        name = self._index_name(statement)
        state = self._index_state(conn, name) if name else None
        if state is None or state[1]:
            return
        raise GuardError(
            f"{relpath(migration.path)}:{statement.line}: index {state[0]} exists but is INVALID: an earlier run was "
            f"interrupted while building it (statement {done + 2} of {len(migration.statements)} of {migration.id}, "
            f"{statement.sql.strip().splitlines()[0][:100]}). It is not used by queries but slows down writes. Drop "
            f"it, then run apply again; it resumes at that statement:\n    DROP INDEX CONCURRENTLY IF EXISTS {state[0]};"
        )

    def _check_transaction_scope(self) -> None:
        if self.guards.transaction != "single":
            return
        bad = [m for m in self.pending if not m.transactional]
        if bad:
            raise ConfigError(
                f"guards.transaction is single, but {', '.join(m.id for m in bad)} cannot run inside a transaction "
                "(CREATE INDEX CONCURRENTLY, VACUUM..., or a statement marked -- harness:batch); use transaction: "
                "per-migration, or apply those separately"
            )

    def _confirm(self) -> None:
        if not self.production or self.options.yes:
            return
        baseline = (f" and record {_plural(len(self.baselined), 'baseline migration')} as applied"
                    if self.baselined else "")
        question = (
            f"Apply {len(self.pending)} migration{'s' if len(self.pending) != 1 else ''} "
            f"({', '.join(m.id for m in self.pending)}){baseline} to {self.where}? [y/N] "
        )
        self._ask(question, "production apply")

    def _ask(self, question: str, what: str) -> None:
        """Ask *question* on the terminal; refuse (exit 2) without one, or without a yes."""
        stdin = sys.stdin
        if stdin is None or not stdin.isatty():
            raise ConfigError(
                f"{what} to {self.where} needs confirmation and there is no terminal to ask; "
                "pass --yes to confirm (or --dry-run to see what would run)"
            )
        if self.out is not None:
            self.out.write(scrub(question))
            self.out.flush()
        answer = stdin.readline().strip().lower()
        self.rl.event("confirmation", answer=answer in ("y", "yes"))
        if answer not in ("y", "yes"):
            raise ConfigError("not confirmed; nothing was changed")

    def _prepare_tables(self) -> None:
        """Create the harness's bookkeeping tables up front, so a backup already holds them."""
        conn = self.session.live()
        history.ensure_table(conn)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{history.SCHEMA}.{PROGRESS_TABLE}"]).fetchone()
        if not (exists and exists[0]):
            with conn.transaction():
                conn.execute(_CREATE_PROGRESS)
        if any(m.batches for m in self.pending):
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f"{history.SCHEMA}.{BATCH_PROGRESS_TABLE}"]
            ).fetchone()
            if not (exists and exists[0]):
                with conn.transaction():
                    conn.execute(_CREATE_BATCH_PROGRESS)

    # -- backup

    def _backup(self) -> None:
        rl = self.rl
        custom = self._hooks("backup")
        if custom:
            directory = ensure_private_dir(self.plan.backup.dir)
            proposed = directory / f"{self.plan.name}-{utc_stamp()}.dump"
            assert self.dsn is not None
            run_hooks(
                custom,
                self._ctx("backup", backup=str(proposed)),
                dsn=self.dsn,
                runlog=rl,
                session_settings=self._hook_settings(),
            )
            if proposed.exists():
                self.backup_path = self.result.backup = proposed
                rl.say(f"  backup: written by the backup hook to {proposed}")
            else:
                rl.say("  backup: taken by the backup hook (no file at HARNESS_BACKUP)")
            rl.event("backup", mode="hook", path=str(proposed) if proposed.exists() else None)
            return
        mode = self.plan.backup.mode
        if mode == "none":
            rl.warning("no backup is taken (backup.mode: none); a failure can only be fixed forward")
            rl.event("backup", mode="none")
            return
        directory = self.plan.backup.dir
        rl.say(f"  backup: pg_dump ({mode}) into {relpath(directory)} ...")

        def written() -> str:
            dumps = sorted(directory.glob(f"{self.plan.name}-*.dump"), key=lambda p: p.stat().st_mtime)
            return f"{human_size(dumps[-1].stat().st_size)} written" if dumps else "starting"

        conn = self.session.live()
        schema = self.snapshot.objects if self.snapshot is not None else None
        t0 = time.perf_counter()
        with rl.progress("backup", detail=written):
            try:
                info = take_backup(
                    plan_name=self.plan.name,
                    directory=directory,
                    dsn=self.dsn or "",
                    conn=conn,
                    pending=self.pending,
                    mode=mode,
                    lock_wait=self.guards.lock_wait,
                    plan_path=self.plan.path,
                    schema=dict(schema) if schema is not None else None,
                )
            except OSError as exc:
                raise BackupError(f"cannot write the backup into {directory}: {exc}. Nothing was changed.") from None
        self.backup = info
        self.backup_path = self.result.backup = info.path
        rl.say(
            f"  backup: {relpath(info.path)} ({human_size(info.size)}, {len(info.tables)} tables, verified: "
            f"{info.toc_entries} archive entries) in {_seconds(time.perf_counter() - t0)}"
        )
        rl.event("backup", **{k: v for k, v in info.to_dict().items()})

    # -- migrations

    def _migrate(self) -> None:
        if self.baselined:
            self._record_baseline()
        total = len(self.pending)
        if not total:
            return
        if self.guards.transaction == "single":
            self._migrate_single()
            return
        for number, migration in enumerate(self.pending, 1):
            self._run_hooks("pre_migration", migration)
            kind = ("in one transaction" if migration.transactional
                    else "with batched statements" if migration.batches
                    else "statement by statement (non-transactional)")
            self.rl.say(f"[{number}/{total}] {migration.id} ({_plural(len(migration.statements), 'statement')}, {kind}) ...")
            t0 = time.perf_counter()
            with self.rl.phase(f"migration:{migration.id}", statements=len(migration.statements),
                               transactional=migration.transactional) as extra:
                with self.rl.progress(migration.id):
                    if migration.transactional:
                        timings = self._apply_transactional(migration)
                    else:
                        timings = self._apply_nontransactional(migration)
                extra["statements"] = len(migration.statements)
            self.applied_now.append(migration)
            self.result.applied.append(migration.id)
            for statement, seconds in timings:
                self.rl.event("statement", migration=migration.id, line=statement.line, seconds=round(seconds, 4))
            self.rl.say(f"[{number}/{total}] {migration.id} applied in {_seconds(time.perf_counter() - t0)}")
            self._run_hooks("post_migration", migration)

    def _record(self, conn: psycopg.Connection[Any], migration: Migration, *, execution_ms: int, mode: str) -> None:
        """Record *migration* as applied in our history and, with ``history.mirror``, the other tool's, in the
        caller's transaction."""
        history.record_applied(conn, migration, execution_ms=execution_ms, mode=mode)
        if self.mirror is not None:
            self.mirror.record(conn, migration, execution_ms=execution_ms)

    def _unrecord(self, conn: psycopg.Connection[Any], migration: Migration) -> None:
        """Remove *migration*'s history rows after its down ran (ours, and the mirrored tool's), in the caller's
        transaction.  Every down path calls this (a rollback command too)."""
        history.remove_applied(conn, migration.version)
        if self.mirror is not None:
            self.mirror.remove(conn, migration)

    def _schema(self, conn: psycopg.Connection[Any]) -> Snapshot:
        """The target's schema for comparing with the rehearsal's: without the mirrored tool's history table,
        which no rehearsal creates."""
        actual = take_snapshot(conn)
        return self.mirror.without_table(conn, actual) if self.mirror is not None else actual

    def _recorded(self, conn: psycopg.Connection[Any], migration: Migration) -> bool:
        """Whether the history already has *migration* (a commit whose answer was lost did happen)."""
        return any(r.version == migration.version and r.checksum == migration.checksum and r.success
                   for r in history.read_applied(conn))

    def _migration_failed(self, migration: Migration, exc: StatementFailed | psycopg.Error, *, partial: str = "") -> MigrationError:
        text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
        where = relpath(migration.path)
        lines = [f"migration {migration.id} ({where}) failed" + (partial or " and was rolled back; nothing of it remains") + ":",
                 _indent(text)]
        if self.applied_now:
            lines.append(
                "applied by this run before it (they stay applied): " + ", ".join(m.id for m in self.applied_now)
            )
        if self.backup_path is not None:
            lines.append(f"backup taken before this run: {self.backup_path} (`harness restore {self.backup_path}`)")
        lines.append("Fix the migration (or the data it trips over) and run apply again.")
        return MigrationError("\n".join(lines))

    def _apply_transactional(self, migration: Migration) -> list[tuple[Statement, float]]:
        timings: list[tuple[Statement, float]] = []

        def attempt(conn: psycopg.Connection[Any], n: int) -> list[tuple[Statement, float]]:
            if n > 0 and self._recorded(conn, migration):
                self.rl.say(f"  {migration.id} was committed before the connection was lost")
                return timings
            timings.clear()
            t0 = time.perf_counter()
            self.session.begin(conn)
            run_statements(conn, migration.statements, migration.path, timings=timings)
            self._record(conn, migration, execution_ms=int((time.perf_counter() - t0) * 1000), mode=self.mode)
            self.session.commit(conn)
            return timings

        try:
            return self.session.retrying(migration.id, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            raise self._migration_failed(migration, exc) from None

    def _migrate_single(self) -> None:
        pending = self.pending
        for migration in pending:
            self._run_hooks("pre_migration", migration)
        self.rl.say(f"applying {len(pending)} migrations in a single transaction ...")
        current: dict[str, Migration] = {}

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            if n > 0 and all(self._recorded(conn, m) for m in pending):
                return
            self.session.begin(conn)
            for number, migration in enumerate(pending, 1):
                current["m"] = migration
                t0 = time.perf_counter()
                run_statements(conn, migration.statements, migration.path)
                self._record(conn, migration, execution_ms=int((time.perf_counter() - t0) * 1000), mode=self.mode)
                self.rl.say(f"[{number}/{len(pending)}] {migration.id} ran ({_plural(len(migration.statements), 'statement')})")
            self.session.commit(conn)

        with self.rl.phase("migration:single", migrations=[m.id for m in pending]):
            try:
                self.session.retrying("the single transaction", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                failed = current.get("m", pending[0])
                raise self._migration_failed(
                    failed, exc, partial=" and the single transaction was rolled back; none of the migrations remain"
                ) from None
        self.applied_now.extend(pending)
        self.result.applied.extend(m.id for m in pending)
        self.rl.say(f"committed {len(pending)} migrations")
        for migration in pending:
            self._run_hooks("post_migration", migration)

    # -- non-transactional migrations

    def _progress(self, conn: psycopg.Connection[Any], migration: Migration) -> int:
        """Index of the last statement a previous run completed (-1: none)."""
        rows = conn.execute(
            sql.SQL("SELECT checksum, max(statement_index) FROM {} WHERE version = %s GROUP BY checksum").format(_PROGRESS),
            [migration.version],
        ).fetchall()
        if not rows:
            return -1
        if len(rows) > 1 or rows[0][0] != migration.checksum:
            raise GuardError(
                f"{migration.id} was partly applied by an earlier run from a different version of "
                f"{relpath(migration.path)} (checksums differ). Restore the file as it was, or finish the migration "
                f"by hand and then delete its rows: DELETE FROM {history.SCHEMA}.{PROGRESS_TABLE} WHERE version = "
                f"'{migration.version}';"
            )
        return int(rows[0][1])

    @staticmethod
    def _index_name(statement: Statement) -> str | None:
        node = statement.node
        if type(node).__name__ != "IndexStmt" or not getattr(node, "concurrent", False) or not node.idxname:
            return None
        schema = getattr(node.relation, "schemaname", None)
        name = '"' + node.idxname.replace('"', '""') + '"'
        return f'"{schema}".{name}' if schema else name

    @staticmethod
    def _index_state(conn: psycopg.Connection[Any], name: str) -> tuple[str, bool] | None:
        """``(qualified name, valid)`` of index *name*, or ``None`` when it does not exist."""
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT i.indexrelid::regclass::text, i.indisvalid FROM pg_index i "
                    "WHERE i.indexrelid = to_regclass(%s)",
                    [name],
                ).fetchone()
        except psycopg.Error:
            return None
        return (row[0], bool(row[1])) if row else None

    @staticmethod
    def _invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
        try:
            rows = conn.execute(
                "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE NOT i.indisvalid AND n.nspname !~ '^pg_' ORDER BY 1"
            ).fetchall()
        except psycopg.Error:
            return []
        return [r[0] for r in rows]

    def _apply_nontransactional(self, migration: Migration) -> list[tuple[Statement, float]]:
        """A migration that cannot run in one transaction: unit by unit, progress recorded after each.

        Without batched statements every statement is a unit of its own.  With
        them (``-- harness:batch``) the statements before a batched
        one run in one transaction (unless the layout declares the migration
        non-transactional), then the batches, each in its own transaction,
        then the rest: the progress row of a group or a batch commits with it,
        so a re-run resumes exactly where the last commit left off.
        """
        rl = self.rl
        conn = self.session.live()
        done = self._progress(conn, migration)
        if self.completed_unrecorded and self.completed_unrecorded[0] == migration.version:
            done = max(done, self.completed_unrecorded[1])
            self.session.retrying(f"recording progress of {migration.id}", lambda c, n: self._mark(c, migration, done))
        statements = migration.statements
        if done >= 0:
            rl.say(f"  resuming {migration.id}: statements 1-{done + 1} of {len(statements)} were completed by an earlier run")
            rl.event("resume", migration=migration.id, completed=done + 1)
        for batched in migration.batches:
            # Check keys up front when the table exists (a statement before may create it): fail before any change.
            resolve_target(conn, batched, missing_ok=True)
        timings: list[tuple[Statement, float]] = []
        for first, last, spec in _units(migration):
            if last <= done:
                continue
            first = max(first, done + 1)
            if spec is not None:
                self._apply_batched(migration, spec, timings)
            elif migration.batches and not migration.no_transaction:
                self._apply_group(migration, first, last, timings)
            else:
                self._apply_one(migration, first, timings)

        def finish(c: psycopg.Connection[Any], n: int) -> None:
            c.execute("RESET lock_timeout")
            c.execute("RESET statement_timeout")
            if n > 0 and self._recorded(c, migration):
                return
            with c.transaction():
                self.session.verify_lock(c, rollback=False)
                self._record(c, migration, execution_ms=int(sum(s for _, s in timings) * 1000), mode=self.mode)
                c.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_PROGRESS), [migration.version])
                if migration.batches:
                    c.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_BATCH_PROGRESS), [migration.version])

        self.session.retrying(f"recording {migration.id}", finish)
        return timings

    def _mark(self, c: psycopg.Connection[Any], migration: Migration, index: int) -> None:
        """Record statement *index* of *migration* as completed (in the caller's transaction, if any)."""
        c.execute(
            sql.SQL("INSERT INTO {} (version, checksum, statement_index, line) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (version, statement_index) DO NOTHING").format(_PROGRESS),
            [migration.version, migration.checksum, index, migration.statements[index].line],
        )

    def _apply_one(self, migration: Migration, index: int, timings: list[tuple[Statement, float]]) -> None:
        """One statement on its own, with session timeouts; its progress row afterwards."""
        rl = self.rl
        statements = migration.statements
        statement = statements[index]
        index_name = self._index_name(statement)
        existed = None
        if index_name:
            existed = self._index_state(self.session.live(), index_name)
            if existed is not None and not existed[1]:
                raise GuardError(
                    f"{relpath(migration.path)}:{statement.line}: index {existed[0]} exists but is INVALID, left "
                    "by an interrupted CREATE INDEX CONCURRENTLY; it is not used by queries but slows down "
                    f"writes. Drop it, then run apply again:\n    DROP INDEX CONCURRENTLY IF EXISTS {existed[0]};"
                )

        def attempt(c: psycopg.Connection[Any], n: int, statement: Statement = statement,
                    index_name: str | None = index_name, existed: Any = existed) -> None:
            if n > 0 and index_name and existed is None:
                state = self._index_state(c, index_name)
                if state is not None and not state[1]:
                    # Our own failed try left it: drop it so the retry builds it afresh.
                    rl.say(f"  dropping the invalid index {state[0]} left by the failed try")
                    c.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(state[0])))
            self.session.set_timeouts(c, "SESSION")
            self.session.verify_lock(c)
            run_statements(c, [statement], migration.path, timings=timings)

        what = f"{migration.id} statement {index + 1}/{len(statements)}"
        try:
            self.session.retrying(what, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            invalid = self._invalid_indexes(self.session.live())
            partial = (
                f" at statement {index + 1} of {len(statements)}; statements 1-{index} are done and recorded in "
                f"{history.SCHEMA}.{PROGRESS_TABLE}, so a re-run resumes at statement {index + 1}"
                if index
                else " at its first statement (it runs statement by statement, so nothing was rolled back, but nothing had run)"
            )
            error = self._migration_failed(migration, exc, partial=partial)
            if invalid:
                drops = "\n".join(f"    DROP INDEX CONCURRENTLY IF EXISTS {name};" for name in invalid)
                error = MigrationError(f"{error}\nINVALID indexes were left behind; drop them before re-running:\n{drops}")
            raise error from None
        except MigrationError as exc:
            invalid = self._invalid_indexes(self.session.live())
            if invalid:
                drops = "\n".join(f"    DROP INDEX CONCURRENTLY IF EXISTS {name};" for name in invalid)
                raise MigrationError(f"{exc}\nINVALID indexes were left behind; drop them before re-running:\n{drops}") from None
            raise

        self.session.retrying(f"recording progress of {what}", lambda c, n: self._mark(c, migration, index))
        rl.say(f"  statement {index + 1}/{len(statements)} done (line {statement.line})")

    def _apply_group(self, migration: Migration, first: int, last: int, timings: list[tuple[Statement, float]]) -> None:
        """Statements *first*..*last* in one transaction, with their progress row: all of them or none."""
        statements = migration.statements
        what = (f"{migration.id} statement {first + 1}/{len(statements)}" if first == last
                else f"{migration.id} statements {first + 1}-{last + 1}/{len(statements)}")

        def attempt(c: psycopg.Connection[Any], n: int) -> None:
            done: list[tuple[Statement, float]] = []
            self.session.begin(c)
            run_statements(c, statements[first:last + 1], migration.path, timings=done)
            self._mark(c, migration, last)
            self.session.commit(c)
            timings.extend(done)

        try:
            self.session.retrying(what, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            partial = (f" in statements {first + 1}-{last + 1}, which ran in one transaction and were rolled back"
                       + (f"; statements 1-{first} are done and recorded in {history.SCHEMA}.{PROGRESS_TABLE}, so a "
                          f"re-run resumes at statement {first + 1}" if first else "; nothing of it remains"))
            raise self._migration_failed(migration, exc, partial=partial) from None
        self.rl.say(f"  {what.split(' ', 1)[1]} done in one transaction (lines {statements[first].line}-"
                    f"{statements[last].line})")

    def _batch_state(self, conn: psycopg.Connection[Any], migration: Migration, spec: BatchSpec) -> BatchState:
        """How far an earlier run got with the batched statement (its committed progress row)."""
        row = conn.execute(
            sql.SQL("SELECT checksum, last_key, rows, batches FROM {} WHERE version = %s AND statement_index = %s")
            .format(_BATCH_PROGRESS),
            [migration.version, spec.index],
        ).fetchone()
        if row is None:
            return BatchState()
        if row[0] != migration.checksum:
            raise GuardError(
                f"{migration.id} was partly applied in batches by an earlier run from a different version of "
                f"{relpath(migration.path)} (checksums differ). Restore the file as it was, or finish the statement "
                f"by hand and then delete its row: DELETE FROM {history.SCHEMA}.{BATCH_PROGRESS_TABLE} WHERE version = "
                f"'{migration.version}';"
            )
        return BatchState(row[1], int(row[2]), int(row[3]))

    def _apply_batched(self, migration: Migration, spec: BatchSpec, timings: list[tuple[Statement, float]]) -> None:
        """A ``-- harness:batch`` statement: key-range batches, each in its own short transaction.

        Each batch runs with the plan's ``SET LOCAL`` timeouts and writes its
        progress row (last key, rows, batches) in the same transaction, so an
        interrupted run resumes after the last committed batch, and a batch
        that hits a lock timeout is retried like a migration.
        """
        rl = self.rl
        conn = self.session.live()
        target = resolve_target(conn, spec)
        assert target is not None
        state = self._batch_state(conn, migration, spec)
        label = f"{relpath(migration.path)}:{spec.statement_line}"
        if state.batches:
            rl.say(f"  {label}: resuming after {_batches(state.batches)} ({state.rows} rows, {spec.key} <= "
                   f"{state.last_key}) committed by an earlier run")
            rl.event("resume", migration=migration.id, line=spec.statement_line, batches=state.batches,
                     rows=state.rows, last_key=state.last_key)
        rl.say(f"  {label}: {spec.describe()}")
        t0 = time.perf_counter()
        started = state

        def attempt(c: psycopg.Connection[Any], n: int) -> tuple[BatchState, bool]:
            self.session.begin(c)
            # After a lost connection the COMMIT may have happened: the progress row says.
            current = self._batch_state(c, migration, spec) if n > 0 else state
            upper, rows = next_batch(c, spec, target, current.last_key)
            if upper is None:
                c.execute("ROLLBACK")
                return current, True
            after = current.after(upper, rows)
            c.execute(
                sql.SQL(
                    "INSERT INTO {} (version, checksum, statement_index, line, last_key, rows, batches) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (version, statement_index) DO UPDATE SET "
                    "checksum = EXCLUDED.checksum, last_key = EXCLUDED.last_key, rows = EXCLUDED.rows, "
                    "batches = EXCLUDED.batches, updated_at = now()"
                ).format(_BATCH_PROGRESS),
                [migration.version, migration.checksum, spec.index, spec.statement_line, after.last_key, after.rows,
                 after.batches],
            )
            self.session.commit(c)
            return after, False

        while True:
            try:
                state, finished = self.session.retrying(f"{label} batch {state.batches + 1}", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                partial = (
                    f" in batch {state.batches + 1} of the batched statement at line {spec.statement_line}, which was "
                    "rolled back; "
                    + (f"{_batches(state.batches)} ({state.rows} rows, {spec.key} <= {state.last_key}) are "
                       f"committed and recorded in {history.SCHEMA}.{BATCH_PROGRESS_TABLE}, so a re-run resumes "
                       "after them" if state.batches else "no batch of it was committed")
                )
                raise self._migration_failed(migration, exc, partial=partial) from None
            if finished:
                break
            done_now = state.batches - started.batches
            if done_now == 1 or state.batches % BATCH_REPORT_EVERY == 0:
                elapsed = time.perf_counter() - t0
                rl.say(f"  {label}: batch {state.batches}: {state.rows} rows so far ({spec.key} <= {state.last_key}), "
                       f"{_seconds(elapsed)}")
                rl.event("batch", migration=migration.id, line=spec.statement_line, batches=state.batches,
                         rows=state.rows, last_key=state.last_key, seconds=round(elapsed, 4))
            if spec.pause:
                time.sleep(spec.pause)
        seconds = time.perf_counter() - t0
        self.session.retrying(f"recording progress of {label}", lambda c, n: self._finish_batched(c, migration, spec))
        timings.append((migration.statements[spec.index], seconds))
        rl.say(f"  {label}: done: {_batches(state.batches)}, {state.rows} rows in {_seconds(seconds)}")
        rl.event("batched", migration=migration.id, line=spec.statement_line, batches=state.batches, rows=state.rows,
                 seconds=round(seconds, 4))

    def _finish_batched(self, c: psycopg.Connection[Any], migration: Migration, spec: BatchSpec) -> None:
        with c.transaction():
            self.session.verify_lock(c, rollback=False)
            self._mark(c, migration, spec.index)
            c.execute(sql.SQL("DELETE FROM {} WHERE version = %s AND statement_index = %s").format(_BATCH_PROGRESS),
                      [migration.version, spec.index])

    # -- verification and health

    def _verify_and_health(self, *, nothing_applied: bool) -> None:
        rl = self.rl
        failure: str | None = None
        with rl.phase("verify"):
            try:
                self.result.verification = self._verify()
            except _HealthFailed as exc:
                self.result.verification = "failed"
                failure = f"verification failed: {exc}"
        rl.say(f"verification: {self.result.verification}")
        if failure is None:
            with rl.phase("health"):
                try:
                    self.result.health = self._health()
                except _HealthFailed as exc:
                    self.result.health = "failed"
                    failure = f"health check failed: {exc}"
            rl.say(f"health: {self.result.health}")
        if failure is not None:
            self._after_check_failure(failure)

    def _verify(self) -> str:
        if not self.production:
            return "skipped (development mode)"
        if self.receipt is None or not self.receipt_valid:
            return "skipped (no matching receipt)"
        reached = self._reached()
        if reached is not None:
            return self._verify_at(reached)
        actual = self._schema(self.session.live())
        changes = diff_snapshots(self.receipt.final_snapshot, actual)
        self.rl.event("verification", outcome="failed" if changes else "passed",
                      changes=[c.describe() for c in changes[:200]])
        if changes:
            raise _HealthFailed(
                f"the schema of {self.where} differs from the rehearsal's final schema (expected → actual):\n"
                + _indent(format_changes(changes))
            )
        return "passed (schema equals the rehearsal's final schema)"

    def _reached(self) -> int | None:
        """With ``--to``, the index of the newest migration the target has after this run, when it is not the
        last file (verification compares there); ``None``: the receipt's final schema."""
        if self.stop is None:
            return None
        done = {*self.result.skipped, *self.result.baselined, *(m.id for m in self.pending)}
        reached = max((i for i, m in enumerate(self.migrations) if m.id in done), default=-1)
        return reached if reached < len(self.migrations) - 1 else None

    def _verify_at(self, index: int) -> str:
        """Verification against the rehearsal's schema after migration *index* (``-1``: before the first).

        The receipt's digest after it decides; on a mismatch (or without a
        digest: before the first migration) the plan is rehearsed up to there
        on a throwaway server, which also shows the difference.
        """
        if not self.production:
            return "skipped (development mode)"
        if self.receipt is None or not self.receipt_valid:
            return "skipped (no matching receipt)"
        mid = self.migrations[index].id if index >= 0 else None
        at = f"after {mid}" if mid else "before the first migration"
        actual = self._schema(self.session.live())
        digest = self.receipt.digests.get(mid) if mid else None
        if digest is not None and digest == actual.digest:
            self.rl.event("verification", outcome="passed", at=mid, digest=digest)
            return f"passed (schema digest matches the rehearsal {at})"
        self.rl.say(f"  verify: rehearsing the plan up to {mid or 'its start'} to compare the schema ...")
        with self.rl.progress("verify rehearsal"):
            expected = self._rehearsed_schema(index)
        changes = diff_snapshots(expected, actual)
        self.rl.event("verification", outcome="failed" if changes else "passed", at=mid, rehearsed=True,
                      changes=[c.describe() for c in changes[:200]])
        if changes:
            raise _HealthFailed(
                f"the schema of {self.where} differs from the rehearsal's schema {at} (expected → actual):\n"
                + _indent(format_changes(changes))
            )
        return f"passed (schema equals the rehearsal {at})"

    def _health(self) -> str:
        health = self.plan.health
        if not health.checks and not health.url:
            return "skipped (no health checks in the plan)"
        done: list[str] = []
        for check in health.checks:
            self._run_check(check)
            done.append(f"check {check.name!r}")
        if health.url:
            self._probe(health.url)
            done.append(f"url {_describe_url(health.url)}")
        return "passed (" + ", ".join(done) + ")"

    def _run_check(self, check: Check) -> None:
        conn = self.session.live()
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                cur = conn.execute(check.sql)  # plan SQL is trusted
                rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            self.rl.event("health_check", name=check.name, outcome="error", error=describe_pg_error(exc))
            raise _HealthFailed(f"check {check.name!r} failed to run: {describe_pg_error(exc)}\n    {check.sql}") from None
        problem = check_problem(check, rows)
        self.rl.event("health_check", name=check.name, outcome="failed" if problem else "passed", problem=problem)
        if problem:
            raise _HealthFailed(problem)
        self.rl.say(f"  health check {check.name!r}: ok")

    def _probe(self, url: str) -> None:
        health = self.plan.health
        shown = _describe_url(url)
        attempts = health.retries + 1
        last = "?"
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(url, method="GET", headers={"User-Agent": "migration-harness"})
            status: int | None = None
            try:
                with urllib.request.urlopen(request, timeout=health.timeout) as response:  # noqa: S310 - http(s) only, validated by the plan
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = scrub(str(reason))
            if status is not None:
                if 200 <= status < 300:
                    self.rl.event("health_url", url=shown, attempt=attempt, status=status, outcome="passed")
                    self.rl.say(f"  health url {shown}: HTTP {status}")
                    return
                last = f"HTTP {status}"
            self.rl.event("health_url", url=shown, attempt=attempt, outcome="failed", answer=last)
            if attempt < attempts:
                delay = self.session.delay(attempt)
                self.rl.say(f"  health url {shown}: {last}; try {attempt + 1} of {attempts} in {delay:.1f}s")
                time.sleep(delay)
        raise _HealthFailed(f"{shown} did not answer 2xx in {attempts} tries (last answer: {last})")

    def _restore_advice(self) -> str:
        if self.backup_path is not None:
            return f"Restore the backup taken before this run if needed: harness restore {self.backup_path}"
        if self.production:
            return "No backup file was taken by the harness; fix forward with a new migration."
        return "Development mode takes no backup; fix forward, or reset the development database."

    def _after_check_failure(self, failure: str) -> None:
        rl = self.rl
        text = [failure]
        applied = list(self.applied_now)
        if not applied:
            text.append("No migration was applied by this run.")
        elif self.plan.health.on_failure == "rollback":
            lacking = [m.id for m in applied if not m.reversible]
            if lacking:
                text.append(
                    f"Cannot roll back: no down migration for {', '.join(lacking)}; the migrations of this run "
                    f"({', '.join(m.id for m in applied)}) stay applied. {self._restore_advice()}"
                )
            else:
                try:
                    with rl.phase("rollback"):
                        self._rollback(applied)
                    text.append(
                        "Rolled back with their down migrations (newest first): "
                        + ", ".join(m.id for m in reversed(applied))
                        + "; the history no longer lists them."
                    )
                except HarnessError as exc:
                    text.append(f"The rollback failed: {exc}\n{self._restore_advice()}")
        else:
            text.append(
                f"health.on_failure is stop: the migrations of this run ({', '.join(m.id for m in applied)}) stay "
                f"applied. {self._restore_advice()}"
            )
        raise CheckFailed("\n".join(text))

    def _rollback(self, applied: Sequence[Migration]) -> None:
        for migration in reversed(applied):
            statements = migration.down_statements or ()
            path = migration.down_path or migration.path
            self.rl.say(f"rolling back {migration.id} with {relpath(path)} ...")
            # The layout may declare the down non-transactional (diesel, dbmate, goose, Flyway flags).
            transactional = migration.down_transactional

            def attempt(conn: psycopg.Connection[Any], n: int, migration: Migration = migration,
                        statements: Sequence[Statement] = statements, path: Path = path,
                        transactional: bool = transactional) -> None:
                if n > 0 and not any(r.version == migration.version for r in history.read_applied(conn)):
                    return
                if transactional:
                    self.session.begin(conn)
                    run_statements(conn, statements, path)
                    self._unrecord(conn, migration)
                    self.session.commit(conn)
                else:
                    self.session.set_timeouts(conn, "SESSION")
                    self.session.verify_lock(conn)
                    run_statements(conn, statements, path)
                    with conn.transaction():  # our row and the mirrored one go together
                        self._unrecord(conn, migration)
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")

            try:
                self.session.retrying(f"down of {migration.id}", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
                raise MigrationError(f"the down migration of {migration.id} failed:\n{_indent(text)}") from None
            self.result.rolled_back.append(migration.id)
            if migration.id in self.result.applied:
                self.result.applied.remove(migration.id)
            self.rl.event("rolled_back", migration=migration.id)

    # -- the end

    def _retention(self) -> None:
        if self.backup is None:
            return
        removed = prune_backups(self.plan.backup.dir, self.plan.name, self.plan.backup.keep)
        if removed:
            self.rl.say(f"retention: removed {len(removed)} old backup(s), keeping the newest {self.plan.backup.keep}")
            self.rl.event("retention", removed=[str(p) for p in removed], keep=self.plan.backup.keep)

    def _summary(self) -> None:
        rl = self.rl
        timings = rl.timings
        if self.result.applied:
            parts = [f"{mid} ({_seconds(timings.get(f'migration:{mid}', 0.0))})" for mid in self.result.applied]
            rl.say(f"applied {len(parts)} migration{'s' if len(parts) != 1 else ''}: " + ", ".join(parts))
        else:
            rl.say("applied nothing")
        if self.result.backup:
            rl.say(f"backup: {self.result.backup}")
        if rl.path is not None:
            rl.say(f"log: {relpath(rl.path)}")

    # ------------------------------------------------------------------ dry run

    def _dry_run(self) -> None:
        lines: list[str] = []
        rl = self.rl
        would_refuse: list[str] = []

        def add(text: str = "") -> None:
            lines.append(text)
            rl.say(text, event=False)

        add(f"DRY RUN of plan {self.plan.name}: nothing is changed, not even the history table")
        add(f"target: {self.where} ({self.mode} mode)")
        conn: psycopg.Connection[Any] | None = None
        applied_rows: list[history.AppliedMigration] = []
        if self.dsn is not None:
            conn = self.session.open(read_only=True)
            applied_rows = history.read_applied(conn)
        else:
            add("  the development database is not running: apply would start it (history assumed empty)")
        g = self.guards
        add(f"connect: with up to {g.max_retries} retries (first after {_seconds(g.retry_delay)}, x{g.retry_factor:g} each)")
        status = history.compute_status(self.migrations, applied_rows)
        if conn is not None:
            self.baselined = self._baseline(conn, status)
            foreign = self._foreign_problems(conn)
            if foreign:
                add("foreign history: apply WOULD REFUSE: " + "; ".join(foreign))
                would_refuse.append("foreign history")
        self.pending = [m for m in status.pending if m not in self.baselined]
        self.result.skipped = [m.id for _, m in status.applied if m is not None]
        self.result.pending = [m.id for m in self.pending]
        self.result.baselined = [m.id for m in self.baselined]
        self._stop_pending()
        if self.production:
            try:
                receipt = verify_receipt(self.plan, self.migrations)
                self.receipt, self.receipt_valid = receipt, True
                add(f"receipt: matches (rehearsed {receipt.created_at})")
            except GuardError as exc:
                if self.options.force:
                    add(f"receipt: WOULD BE SKIPPED by --force ({_first_line(exc)})")
                elif not g.require_receipt:
                    add(f"receipt: not required by the plan ({_first_line(exc)})")
                else:
                    add(f"receipt: apply WOULD REFUSE: {_first_line(exc)}")
                    would_refuse.append("no matching receipt")
        add(f"lock: the migration run lock, waiting up to {_seconds(g.lock_wait)}")
        add(f"status: {len(status.applied)} applied, {len(self.pending)} pending")
        if self.baselined:
            add(f"baseline: the history is empty but the schema is not: record {len(self.baselined)} migrations up to "
                f"{self.baselined[-1].id} as applied (mode baseline) without running them")
        problems = [f"{r.version}_{r.name} failed" for r in status.failed]
        if self.production:
            problems += [f"{m.id} changed" for _, m in status.changed]
            problems += [f"{r.version}_{r.name} missing" for r in status.missing]
        if problems:
            add("status: apply WOULD REFUSE: " + ", ".join(problems))
            would_refuse.append("history needs attention")
        partly = self.pending[0] if conn is not None and self.pending and not self.pending[0].transactional else None
        progress = history.read_progress(conn).get(partly.version) if partly is not None and conn is not None else None
        if progress is not None and partly is not None:
            add(f"resume: {partly.id} was left part-way by an earlier run ({progress.describe(len(partly.statements))}); "
                "apply resumes after the last completed statement or batch")
        if self.production and conn is not None and progress is not None and progress.statements:
            add("drift: apply would rehearse the plan up to the statements completed and compare schemas")
        elif self.production and conn is not None:
            index = self.baseline_index if self.baselined else len(status.applied) - 1
            last = self.migrations[index].id if 0 <= index < len(self.migrations) else None
            actual = self._schema(conn)
            digest = self.receipt.digests.get(last) if self.receipt and last else None
            if digest is None:
                add("drift: apply would rehearse the plan up to the target's version and compare schemas")
            elif digest == actual.digest:
                add(f"drift: none (schema digest matches the rehearsal after {last})")
            else:
                add(f"drift: the schema differs from the rehearsal after {last}: apply WOULD REFUSE")
                would_refuse.append("drift")
        if not self.pending:
            add("nothing to apply" + (" (only the baseline to record)" if self.baselined else ""))
        else:
            if self.guards.transaction == "single" and any(not m.transactional for m in self.pending):
                add("transaction: single, but a pending migration cannot run in a transaction: apply WOULD REFUSE")
                would_refuse.append("transaction scope")
            self._dry_hooks(add, "pre_run")
            if self.production:
                self._dry_backup(add, conn)
            if self.guards.transaction == "single":
                add("BEGIN;  -- one transaction for all migrations")
                add(f"  SET LOCAL lock_timeout = '{_ms(g.lock_timeout)}';")
                add(f"  SET LOCAL statement_timeout = '{_ms(g.statement_timeout)}';")
            total = len(self.pending)
            for number, migration in enumerate(self.pending, 1):
                self._dry_migration(add, number, total, migration)
            if self.guards.transaction == "single":
                add("COMMIT;")
        reached = self._reached()
        if self.production and self.receipt_valid and reached is not None:
            at = f"after {self.migrations[reached].id}" if reached >= 0 else "before the first migration"
            add(f"verify: the schema must equal the rehearsal's schema {at} (the receipt's digest)")
        elif self.production:
            add("verify: the schema must equal the receipt's final schema" if self.receipt_valid
                else "verify: skipped (no matching receipt)")
        for check in self.plan.health.checks:
            add(f"health check {check.name!r}: {' '.join(check.sql.split())}"
                + (f" (expect {check.expect!r})" if check.expect is not None else ""))
        h = self.plan.health
        if h.url:
            add(f"health url: GET {_describe_url(h.url)} must answer 2xx (timeout {_seconds(h.timeout)}, {h.retries} retries)")
        if self.plan.health.checks or self.plan.health.url:
            add(f"on health failure: {self.plan.health.on_failure}")
        if self.pending:
            self._dry_hooks(add, "post_run")
        self._dry_hooks(add, "on_failure", note=" (only if the run fails)")
        if would_refuse:
            add(f"apply would refuse: {', '.join(would_refuse)}")
        self.result.dry_run_plan = lines
        self.result.ok = not would_refuse

    def _dry_hooks(self, add: Callable[[str], None], event: str, *, migration: Migration | None = None,
                   note: str = "") -> None:
        for hook in self._hooks(event):
            add(f"{'  ' if migration else ''}hook {event}: {describe_hook(hook)}{note}")

    def _dry_backup(self, add: Callable[[str], None], conn: psycopg.Connection[Any] | None) -> None:
        b = self.plan.backup
        if self._hooks("backup"):
            add(f"backup: by the backup hook (HARNESS_BACKUP={relpath(b.dir)}/{self.plan.name}-<UTC time>.dump)")
            self._dry_hooks(add, "backup")
            return
        if b.mode == "none":
            add("backup: none (backup.mode: none)")
            return
        target = f"{relpath(b.dir)}/{self.plan.name}-<UTC time>.dump"
        if b.mode == "touched" and conn is not None:
            tables = [f"{s}.{n}" for s, n, _ in touched_tables(conn, self.pending)]
            what = ("tables " + ", ".join(tables)) if tables else "schema only (no existing table is touched)"
            add(f"backup: pg_dump -Fc of {what} -> {target} (+ .json manifest), verified with pg_restore --list")
        else:
            add(f"backup: pg_dump -Fc ({b.mode}) -> {target} (+ .json manifest), verified with pg_restore --list")
        add(f"retention: keep the newest {b.keep} backups of plan {self.plan.name}")

    def _dry_migration(self, add: Callable[[str], None], number: int, total: int, migration: Migration) -> None:
        g = self.guards
        single = g.transaction == "single"
        add(f"[{number}/{total}] {migration.id} ({relpath(migration.path)}, {_plural(len(migration.statements), 'statement')})")
        self._dry_hooks(add, "pre_migration", migration=migration)
        record = f"-- record {migration.id} in {history.SCHEMA}.{history.TABLE}"
        if self.mirror is not None:
            record += f" and {self.mirror.tool}'s {self.mirror.spec.table} (history.mirror)"
        if migration.transactional:
            if not single:
                add("  BEGIN;")
                add(f"  SET LOCAL lock_timeout = '{_ms(g.lock_timeout)}';")
                add(f"  SET LOCAL statement_timeout = '{_ms(g.statement_timeout)}';")
            for statement in migration.statements:
                add(f"  -- {relpath(migration.path)}:{statement.line}:{statement.column}")
                add(_indent(statement.sql.strip() + ";", "  "))
            add(f"  {record}" + ("" if single else " (same transaction)"))
            if not single:
                add("  COMMIT;")
        elif migration.batches:
            self._dry_batched(add, migration, record)
        else:
            add("  -- non-transactional: statement by statement, each committed on its own; progress is recorded in "
                f"{history.SCHEMA}.{PROGRESS_TABLE} so a re-run resumes after the last completed statement")
            add(f"  SET lock_timeout = '{_ms(g.lock_timeout)}';")
            add(f"  SET statement_timeout = '{_ms(g.statement_timeout)}';")
            for index, statement in enumerate(migration.statements, 1):
                add(f"  -- statement {index}/{len(migration.statements)}, "
                    f"{relpath(migration.path)}:{statement.line}:{statement.column}")
                add(_indent(statement.sql.strip() + ";", "  "))
            add(f"  {record}")
            add("  RESET lock_timeout; RESET statement_timeout;")
        self._dry_hooks(add, "post_migration", migration=migration)


    def _dry_batched(self, add: Callable[[str], None], migration: Migration, record: str) -> None:
        """Dry run of a migration with ``-- harness:batch`` statements: its units, and what each batch runs."""
        g = self.guards
        statements = migration.statements
        add(f"  -- with batched statements: each unit below commits on its own; progress is recorded in "
            f"{history.SCHEMA}.{PROGRESS_TABLE} and {history.SCHEMA}.{BATCH_PROGRESS_TABLE}, so a re-run resumes "
            "after the last committed unit or batch")
        for first, last, spec in _units(migration):
            if spec is not None:
                add(f"  -- batched, {relpath(migration.path)}:{spec.statement_line}: {spec.describe()}")
                add(f"  --   the next upper key: SELECT {spec.key} FROM {spec.table_name} WHERE {spec.key} > <last key> "
                    f"ORDER BY {spec.key} OFFSET {spec.size - 1} LIMIT 1 (else the greatest key); then per batch:")
                add("  BEGIN;")
                add(f"  SET LOCAL lock_timeout = '{_ms(g.lock_timeout)}';")
                add(f"  SET LOCAL statement_timeout = '{_ms(g.statement_timeout)}';")
                add(_indent(spec.first_sql + ";  -- the first batch: $1 = its upper key", "  "))
                add(_indent(spec.next_sql + ";  -- the others: $1 = the last key done, $2 = the upper key", "  "))
                add(f"  -- record the last key done in {history.SCHEMA}.{BATCH_PROGRESS_TABLE} (same transaction)")
                add("  COMMIT;" + (f"  -- then wait {_seconds(spec.pause)}" if spec.pause else ""))
                continue
            grouped = migration.batches and not migration.no_transaction
            if grouped:
                add("  BEGIN;")
                add(f"  SET LOCAL lock_timeout = '{_ms(g.lock_timeout)}';")
                add(f"  SET LOCAL statement_timeout = '{_ms(g.statement_timeout)}';")
            else:
                add(f"  SET lock_timeout = '{_ms(g.lock_timeout)}';")
                add(f"  SET statement_timeout = '{_ms(g.statement_timeout)}';")
            for index in range(first, last + 1):
                statement = statements[index]
                add(f"  -- statement {index + 1}/{len(statements)}, "
                    f"{relpath(migration.path)}:{statement.line}:{statement.column}")
                add(_indent(statement.sql.strip() + ";", "  "))
            if grouped:
                add(f"  -- record statements up to {last + 1} in {history.SCHEMA}.{PROGRESS_TABLE} (same transaction)")
                add("  COMMIT;")
        add(f"  {record}")

def migration_index(migrations: Sequence[Migration], ref: str) -> int:
    """The position of the migration *ref* names (its version or its id); :class:`ConfigError` (exit 2) when none does."""
    for index, migration in enumerate(migrations):
        if ref in (migration.version, migration.id):
            return index
    known = ", ".join(m.id for m in migrations[-5:]) or "none"
    raise ConfigError(f"unknown migration version {ref!r}: no migration file has it (the latest are: {known})")


def _units(migration: Migration) -> list[tuple[int, int, BatchSpec | None]]:
    """How a non-transactional migration runs: ``(first, last, batch)`` statement ranges, in order.

    A batched statement is a unit of its own.  With batched statements, runs
    of transactional statements between them form one unit (one
    transaction); otherwise, and in a migration the layout declares
    non-transactional, every statement is a unit.
    """
    specs = {spec.index: spec for spec in migration.batches}
    group = bool(specs) and not migration.no_transaction
    statements = migration.statements
    units: list[tuple[int, int, BatchSpec | None]] = []
    index = 0
    while index < len(statements):
        if index in specs:
            units.append((index, index, specs[index]))
            index += 1
            continue
        last = index
        if group and statements[index].transactional:
            while last + 1 < len(statements) and last + 1 not in specs and statements[last + 1].transactional:
                last += 1
        units.append((index, last, None))
        index = last + 1
    return units


_SCHEMA_IS_EMPTY = """
WITH user_ns AS (
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('information_schema', 'harness') AND nspname !~ '^pg_'
), ext AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
)
SELECT NOT EXISTS (
    SELECT 1 FROM pg_class c
    WHERE c.relnamespace IN (SELECT oid FROM user_ns) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND (c.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_class'::regclass))
) AND NOT EXISTS (
    SELECT 1 FROM pg_proc p
    WHERE p.pronamespace IN (SELECT oid FROM user_ns)
      AND (p.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_proc'::regclass))
) AND NOT EXISTS (
    SELECT 1 FROM pg_type t
    WHERE t.typnamespace IN (SELECT oid FROM user_ns) AND t.typtype IN ('e', 'd', 'r', 'm')
      AND (t.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_type'::regclass))
)
"""


def _applied_first(migrations: Sequence[Migration], status: history.Status[Migration]) -> list[Migration] | None:
    """*migrations* reordered so the applied ones come first, as the target got them; ``None`` when the
    applied ones are already the first files (the usual case: the receipt's digests then apply)."""
    applied = [m for _, m in status.applied if m is not None]
    ids = {m.id for m in applied}
    if [m.id for m in migrations[: len(applied)]] == [m.id for m in applied] or len(ids) != len(applied):
        return None
    ordered = [m for m in applied if not m.repeatable] + [m for m in applied if m.repeatable]
    return ordered + [m for m in migrations if m.id not in ids]


def _schema_is_empty(conn: psycopg.Connection[Any]) -> bool:
    """True when the database has no tables, views, sequences, functions or types of its own.

    Objects of the harness's own schema and of extensions do not count.
    """
    row = conn.execute(_SCHEMA_IS_EMPTY).fetchone()
    return bool(row and row[0])
