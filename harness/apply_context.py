"""What one apply (or rollback) run knows: its options, its plan and migrations, its state so far, its result.

:class:`RunContext` is the state the parts of a run share (guards in
:mod:`harness.apply_guards`, the migrator in :mod:`harness.migrator`, the
checks after it in :mod:`harness.apply_finish`, the orchestration in
:mod:`harness.apply` and :mod:`harness.rollback`), with the few services
all of them use: the run log, the session (:mod:`harness.apply_session`),
hooks, and the target's and the rehearsal's schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg

from . import mirror
from .apply_session import Session, timeout_values
from .backup import BackupInfo
from .errors import ConfigError
from .hooks import HookContext, PythonHook, run_hooks
from .plan import Hook, Plan
from .postgres import start_server
from .receipt import Receipt
from .redact import scrub
from .rehearsal import Rehearsal
from .runlog import RunLog
from .snapshot import Snapshot, take_snapshot
from .sources import Migration, baseline_index, load_plan_migrations

__all__ = ["ApplyOptions", "ApplyResult", "RunContext", "migration_index"]


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


def migration_index(migrations: Sequence[Migration], ref: str) -> int:
    """The position of the migration *ref* names (its version or its id); :class:`ConfigError` (exit 2) when none does."""
    for index, migration in enumerate(migrations):
        if ref in (migration.version, migration.id):
            return index
    known = ", ".join(m.id for m in migrations[-5:]) or "none"
    raise ConfigError(f"unknown migration version {ref!r}: no migration file has it (the latest are: {known})")



class RunContext:
    """The state of one run, shared by its parts; :class:`harness.apply._Run` adds the order they run in."""

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
        which no rehearsal creates."""
        actual = take_snapshot(conn)
        return self.mirror.without_table(conn, actual) if self.mirror is not None else actual

    def rehearsed_schema(self, index: int) -> Snapshot:
        return self.rehearsed_schemas(index)[0]

    def rehearsed_schemas(
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
