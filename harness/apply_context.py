"""What one apply (or rollback) run knows: its options, its plan and migrations, its state so far, its result.

:class:`RunContext` is the state the parts of a run share (guards in
:mod:`harness.apply_guards`, the migrator in :mod:`harness.migrator`, the
checks after it in :mod:`harness.apply_finish`, the orchestration in
:mod:`harness.apply` and :mod:`harness.rollback`), with the few services
all of them use: the run log, the session (:mod:`harness.apply_session`),
hooks, and the target's and the rehearsal's schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg

from . import history, mirror
from ._apply_text import first_line
from .apply_session import Session, timeout_values
from .backup import BackupInfo
from .errors import ConfigError, HarnessError, MigrationError
from .execute import describe_pg_error, relpath
from .hooks import HookContext, PythonHook, run_hooks
from .plan import Hook, Plan
from .receipt import Receipt
from .redact import scrub
from .rehearsal import Rehearsal
from .runlog import RunLog
from .connection import tenant_dsn
from .snapshot import Snapshot, schema_view, take_snapshot
from .sources import Migration, baseline_index, load_plan_migrations
from .targets import find_target, rehearsal_server

__all__ = ["ApplyOptions", "ApplyResult", "RunContext", "migration_index", "history_scope", "rehearse_schemas",
           "REHEARSAL_SCHEMA"]

#: Where a rehearsal's migrations put their objects; a tenant schema is compared with this one.
REHEARSAL_SCHEMA = "public"


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
    # A fleet member (harness.fleet): its name in log and backup file names, its tenant schema (the target's
    # sessions run with search_path set to it, its history is in its own schema, schemas are compared on it
    # alone), the migrations the fleet loaded once, the rehearsed schemas the fleet shares, and the event that
    # asks the run to stop after its current migration.
    label: str | None = None
    schema: str | None = None
    migrations: Sequence[Migration] | None = field(default=None, repr=False)
    reference: Any = field(default=None, repr=False)
    stop: Any = field(default=None, repr=False)


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


def history_scope(options: ApplyOptions) -> contextlib.AbstractContextManager[None]:
    """The history a run reads and writes: a tenant schema's own (``harness_<tenant>``), else ``harness``."""
    return history.scoped(history.tenant_history_schema(options.schema)) if options.schema else contextlib.nullcontext()


def migration_index(migrations: Sequence[Migration], ref: str) -> int:
    """The position of the migration *ref* names (its version or its id); :class:`ConfigError` (exit 2) when none does."""
    for index, migration in enumerate(migrations):
        if ref in (migration.version, migration.id):
            return index
    known = ", ".join(m.id for m in migrations[-5:]) or "none"
    raise ConfigError(f"unknown migration version {ref!r}: no migration file has it (the latest are: {known})")



class RunContext:
    """The state of one run, shared by its parts, and the frame every run goes through (:meth:`conduct`).

    :class:`harness.apply._Run` and :class:`harness.rollback._Rollback`
    add the order their phases run in; both hand it to :meth:`conduct`.
    """

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
        self.migrations = list(options.migrations) if options.migrations is not None else load_plan_migrations(plan)
        # `history: {mirror: <tool>}`: the other tool's history rows, written with ours (harness.mirror).
        self.mirror = mirror.mirror_for(plan.history_mirror, self.migrations, plan.migrations_dir)
        plan.bind([(m.id, m.version) for m in self.migrations])
        # Index of the last migration the plan's baseline covers (-1: no baseline).
        self.baseline_index = baseline_index(self.migrations, plan.baseline)
        # Baseline migrations this run records as applied without running them (see _baseline).
        self.baselined: list[Migration] = []
        # File names of this run's log and backups: a fleet member's carry its name, and retention counts its own.
        self.stem = f"{plan.name}.{options.label}" if options.label else plan.name
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

    # ------------------------------------------------------------------ the frame of a run

    def conduct(self, work: Callable[[], None], *, command: str = "apply") -> None:
        """Run *work* (the phases of an apply or rollback, or its dry run) in the frame every run shares.

        The frame resolves the target (:func:`harness.targets.find_target`),
        opens the run log and the session, logs ``run_start`` and
        ``run_end``, turns a database error outside a migration into a
        :class:`~harness.errors.MigrationError`, and on a
        :class:`~harness.errors.HarnessError` records the failure on the
        result (:meth:`failed`), attaches it to the error
        (:attr:`harness.errors.HarnessError.result`) and re-raises it.
        """
        t0 = time.perf_counter()
        target = find_target(self.plan, self.options.target, mode=self.mode,
                             dev="if-running" if self.options.dry_run else "start", what="apply to")
        self.dsn, self.where = target.dsn, target.where
        if self.dsn is not None and self.options.schema:
            self.dsn = tenant_dsn(self.dsn, self.options.schema)
            self.where += f", schema {self.options.schema}"
        self.result.database = self.where
        log_dir = None if self.options.dry_run else self.plan.root / "logs"
        self.runlog = RunLog(self.stem, log_dir, out=self.out)
        self._session = Session(self.dsn, self.where, self.guards, self.runlog)
        self.result.log_path = self.rl.path
        self.ctx = HookContext(plan=self.plan.name, phase="pre_run", mode=self.mode, database=self.where,
                               root=str(self.plan.root), command=command)
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
                work()
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
            self.failed(exc)
            exc.result = self.result
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

    def failed(self, exc: HarnessError) -> None:
        """Record the failure that ends the run on the result and in the log; run the ``on_failure`` hooks."""
        self.result.ok = False
        self.result.error = scrub(str(exc))
        self.result.pending = [m.id for m in self.pending if m.id not in self.result.applied]
        # The front end shows the error itself (harness.cli prints it); the log keeps it.
        self.rl.event("error", error_type=type(exc).__name__, text=scrub(str(exc)))
        if self.options.dry_run or isinstance(exc, ConfigError):
            return
        hooks = self.hooks("on_failure")
        if hooks and self.dsn is not None:
            ctx = self.hook_context("on_failure", error=first_line(exc))
            try:
                run_hooks(hooks, ctx, dsn=self.dsn, runlog=self.rl, session_settings=self.hook_settings())
            except HarnessError as hook_exc:
                # Never hide the error that ended the run.
                self.rl.warning(f"an on_failure hook failed too: {hook_exc}")

    def say_backup_and_log(self) -> None:
        """The last lines of a run's summary: where its backup and its log are."""
        if self.result.backup:
            self.rl.say(f"backup: {self.result.backup}")
        if self.rl.path is not None:
            self.rl.say(f"log: {relpath(self.rl.path)}")

    @property
    def rl(self) -> RunLog:
        assert self.runlog is not None
        return self.runlog

    @property
    def session(self) -> Session:
        assert self._session is not None
        return self._session

    def hooks(self, event: str) -> list[Hook | PythonHook]:
        return [*getattr(self.plan.hooks, event), *self.options.hooks.get(event, ())]

    def hook_context(self, phase: str, **changes: Any) -> HookContext:
        assert self.ctx is not None
        return self.ctx.at(
            phase,
            backup=str(self.backup_path) if self.backup_path else None,
            applied=tuple(m.id for m in self.applied_now),
            **changes,
        )

    def hook_settings(self) -> dict[str, str]:
        """The session settings hooks run under: the plan's timeouts, as migrations get them."""
        return timeout_values(self.guards)

    def run_hooks(self, event: str, migration: Migration | None = None) -> None:
        hooks = self.hooks(event)
        if not hooks:
            return
        assert self.dsn is not None
        with self.rl.phase(f"hooks:{event}" + (f":{migration.id}" if migration else "")):
            run_hooks(
                hooks,
                self.hook_context(event, migration=migration.id if migration else None),
                dsn=self.dsn,
                runlog=self.rl,
                session_settings=self.hook_settings(),
            )

    def schema(self, conn: psycopg.Connection[Any]) -> Snapshot:
        """The target's schema for comparing with the rehearsal's: without the mirrored tool's history table,
        which no rehearsal creates; a tenant's schema alone, named as the rehearsal's (:meth:`expected`)."""
        actual = take_snapshot(conn, exclude_schemas=(history.SCHEMA, history.history_schema()))
        if self.mirror is not None:
            actual = self.mirror.without_table(conn, actual)
        return schema_view(actual, self.options.schema, REHEARSAL_SCHEMA) if self.options.schema else actual

    def expected(self, rehearsed: Snapshot) -> Snapshot:
        """A rehearsal's schema as :meth:`schema` shows the target's: for a tenant, the rehearsal's ``public`` alone.

        The receipt's digests are of whole databases, so a tenant's view never
        matches one: its checks compare with a rehearsal, which a fleet runs
        once per version and shares (``ApplyOptions.reference``).
        """
        return schema_view(rehearsed, REHEARSAL_SCHEMA) if self.options.schema else rehearsed

    def rehearsed_schema(self, index: int) -> Snapshot:
        return self.rehearsed_schemas(index)[0]

    def rehearsed_schemas(
        self, index: int, completed: int | None = None, upto: int | None = None,
        migrations: Sequence[Migration] | None = None,
    ) -> list[Snapshot]:
        """The rehearsal's schema after migration *index*; with *completed*, part-way through it (see
        :meth:`harness.rehearsal.Rehearsal.schemas_within`), one schema per statement count up to *upto*.
        *migrations* orders the history otherwise than the files (the order a target got them)."""
        ordered = list(migrations) if migrations is not None else self.migrations
        reference = self.options.reference
        if reference is not None:
            found = reference.schemas(self.plan, ordered, index, completed, upto)
        else:
            found = rehearse_schemas(self.plan, ordered, index, completed, upto)
        return [self.expected(s) for s in found]


def rehearse_schemas(
    plan: Plan, migrations: Sequence[Migration], index: int, completed: int | None = None, upto: int | None = None,
) -> list[Snapshot]:
    """Rehearse *plan* on a throwaway server and return its schema after migration *index* (or part-way through
    it: see :meth:`harness.rehearsal.Rehearsal.schemas_within`)."""
    server = rehearsal_server(plan)
    try:
        with Rehearsal(plan, server, migrations=list(migrations), measure=False) as rehearsal:
            if completed is None:
                return [rehearsal.schema_after(index)]
            return rehearsal.schemas_within(index, completed, upto)
    finally:
        server.stop()
