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
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import psycopg

from . import history
from ._apply_text import describe_url as _describe_url
from ._apply_text import first_line as _first_line
from ._apply_text import plural as _plural
from ._apply_text import seconds as _seconds
from .apply_context import ApplyOptions, ApplyResult, RunContext, history_scope
from .apply_finish import Finish
from .apply_guards import Gates
from .backup import take_backup, touched_tables
from .connection import RETRYABLE
from .errors import BackupError, GuardError
from .execute import relpath
from .hooks import describe_hook, run_hooks
from .migrator import Migrator, single_parts, strategy, up_units
from .plan import Plan
from .receipt import verify_receipt
from .runlog import ensure_private_dir, human_size, utc_stamp
from .sources import Migration

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

#: Errors worth another try (the statement may succeed once the other session is done), by SQLSTATE;
#: matched by psycopg's classes (harness.connection.RETRYABLE), listed here for reference.
RETRYABLE_SQLSTATES = {cls.sqlstate: reason for cls, reason in RETRYABLE}

#: What the dry run says about a migration that commits part by part, without and with batched statements.
_ALONE = (
    f"-- non-transactional: statement by statement, each committed on its own; progress is recorded in "
    f"{history.SCHEMA}.{PROGRESS_TABLE} so a re-run resumes after the last completed statement",
    f"-- with batched statements: each unit below commits on its own; progress is recorded in "
    f"{history.SCHEMA}.{PROGRESS_TABLE} and {history.SCHEMA}.{BATCH_PROGRESS_TABLE}, so a re-run resumes "
    "after the last committed unit or batch",
)


# --------------------------------------------------------------------------
# Public objects


def apply_plan(plan: Plan, options: ApplyOptions | None = None, *, out: TextIO | None = sys.stdout) -> ApplyResult:
    """Apply *plan*'s pending migrations to its target (see the module docstring for the phases).

    Returns the :class:`ApplyResult` of a successful run (or of a dry run);
    raises a :class:`~harness.errors.HarnessError` subclass carrying the
    partial result as ``.result`` otherwise.  Human progress goes to *out*
    (``None``: silent); the JSON-lines log goes to ``<root>/logs/``.
    """
    options = options or ApplyOptions()
    with history_scope(options):
        return _Run(plan, options, out).run()


# --------------------------------------------------------------------------
# The run


class _Run(RunContext):
    """One apply: the order of its phases, the dry run, the backup; the parts are :class:`Gates`,
    :class:`Migrator` and :class:`Finish`."""

    def __init__(self, plan: Plan, options: ApplyOptions, out: TextIO | None) -> None:
        super().__init__(plan, options, out)
        self.gates = Gates(self)
        self.migrator = Migrator(self)
        self.finish = Finish(self, self.migrator)

    def run(self) -> ApplyResult:
        """Run the apply (or its dry run) in the frame every run shares (:meth:`RunContext.conduct`)."""
        self.conduct(self._dry_run if self.options.dry_run else self._apply)
        return self.result

    # ------------------------------------------------------------------ apply

    def _apply(self) -> None:
        rl = self.rl
        rl.say(f"harness apply {self.plan.name}: {self.mode} run on {self.where}")
        if self.production:
            with rl.phase("receipt"):
                self.gates.receipt_gate()
        with rl.phase("connect"):
            conn = self.session.open()
            rl.say(f"  connected: PostgreSQL {conn.info.parameter_status('server_version') or '?'}")
        if self.production and self.receipt is not None:
            self.gates.receipt_server_gate(conn)
        assert self.dsn is not None
        with contextlib.ExitStack() as stack:
            self.session.take_lock(stack)
            with rl.phase("status"):
                status = self.gates.status()
                self.gates.stop_pending()
            if self.production:
                with rl.phase("drift"):
                    self.gates.drift(status)
            if not self.pending and not self.baselined:
                rl.say(f"nothing to apply: all {len(self.migrations)} migrations are applied")
                self.finish.verify_and_health(nothing_applied=True)
                self.result.ok = True
                self._summary()
                return
            self.gates.check_transaction_scope()
            self.gates.confirm()
            self.run_hooks("pre_run")
            self.migrator.prepare_tables()
            if self.production:
                with rl.phase("backup"):
                    take_run_backup(self)
            with rl.phase("migrate"):
                self.migrator.migrate()
            self.result.pending = [m.id for m in self.beyond]
            self.finish.verify_and_health(nothing_applied=False)
            self.run_hooks("post_run")
            self.finish.retention()
            self.result.ok = True
            self._summary()

    # -- the end

    def _summary(self) -> None:
        rl = self.rl
        timings = rl.timings
        if self.result.applied:
            parts = [f"{mid} ({_seconds(timings.get(f'migration:{mid}', 0.0))})" for mid in self.result.applied]
            rl.say(f"applied {len(parts)} migration{'s' if len(parts) != 1 else ''}: " + ", ".join(parts))
        else:
            rl.say("applied nothing")
        self.say_backup_and_log()

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
            self.baselined = self.gates.baseline(conn, status)
            foreign = self.gates.foreign_problems(conn)
            if foreign:
                add("foreign history: apply WOULD REFUSE: " + "; ".join(foreign))
                would_refuse.append("foreign history")
        self.pending = [m for m in status.pending if m not in self.baselined]
        self.result.skipped = [m.id for _, m in status.applied if m is not None]
        self.result.pending = [m.id for m in self.pending]
        self.result.baselined = [m.id for m in self.baselined]
        self.gates.stop_pending()
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
            actual = self.schema(conn)
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
                for line in describe_run_backup(self, conn):
                    add(line)
            done = progress.statements - 1 if progress is not None else -1
            self._dry_migrations(add, partly, done)
        reached = self.finish.reached()
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
        for hook in self.hooks(event):
            add(f"{'  ' if migration else ''}hook {event}: {describe_hook(hook)}{note}")

    def _dry_migrations(self, add: Callable[[str], None], partly: Migration | None, done: int) -> None:
        """The pending migrations as the run executes them: the very units of :mod:`harness.migrator`."""
        mirror = self.migrator.mirror
        total = len(self.pending)
        if self.guards.transaction == "single":
            begin, parts, end = single_parts(self.pending, self.guards, mirror)
            add("-- one transaction for all migrations")
            for action in begin:
                for line in action.describe():
                    add(line)
            for number, (migration, actions) in enumerate(parts, 1):
                self._dry_header(add, number, total, migration)
                for action in actions:
                    for line in action.describe():
                        add(f"  {line}")
                self._dry_hooks(add, "post_migration", migration=migration)
            for action in end:
                for line in action.describe():
                    add(line)
            return
        for number, migration in enumerate(self.pending, 1):
            self._dry_header(add, number, total, migration)
            if not migration.transactional:
                add("  " + _ALONE[bool(migration.batches)])
            for unit in up_units(migration, self.guards, mirror, done=done if migration is partly else -1):
                for line in unit.describe():
                    add(f"  {line}")
            self._dry_hooks(add, "post_migration", migration=migration)

    def _dry_header(self, add: Callable[[str], None], number: int, total: int, migration: Migration) -> None:
        add(f"[{number}/{total}] {migration.id} ({relpath(migration.path)}, "
            f"{_plural(len(migration.statements), 'statement')}, {strategy(migration)})")
        self._dry_hooks(add, "pre_migration", migration=migration)



# --------------------------------------------------------------------------
# The backup before a run changes the target: apply's and rollback's


def take_run_backup(run: RunContext) -> None:
    """Take the run's backup: the plan's backup hook, else ``pg_dump`` (:func:`harness.backup.take_backup`), verified."""
    rl = run.rl
    plan = run.plan
    custom = run.hooks("backup")
    if custom:
        directory = ensure_private_dir(plan.backup.dir)
        proposed = directory / f"{run.stem}-{utc_stamp()}.dump"
        assert run.dsn is not None
        run_hooks(
            custom,
            run.hook_context("backup", backup=str(proposed)),
            dsn=run.dsn,
            runlog=rl,
            session_settings=run.hook_settings(),
        )
        if proposed.exists():
            run.backup_path = run.result.backup = proposed
            rl.say(f"  backup: written by the backup hook to {proposed}")
        else:
            rl.say("  backup: taken by the backup hook (no file at HARNESS_BACKUP)")
        rl.event("backup", mode="hook", path=str(proposed) if proposed.exists() else None)
        return
    mode = plan.backup.mode
    if mode == "none":
        rl.warning("no backup is taken (backup.mode: none); a failure can only be fixed forward")
        rl.event("backup", mode="none")
        return
    directory = plan.backup.dir
    rl.say(f"  backup: pg_dump ({mode}) into {relpath(directory)} ...")

    def written() -> str:
        dumps = sorted(directory.glob(f"{run.stem}-*.dump"), key=lambda p: p.stat().st_mtime)
        return f"{human_size(dumps[-1].stat().st_size)} written" if dumps else "starting"

    conn = run.session.live()
    schema = run.snapshot.objects if run.snapshot is not None else None
    t0 = time.perf_counter()
    with rl.progress("backup", detail=written):
        try:
            info = take_backup(
                plan_name=run.stem,
                directory=directory,
                dsn=run.dsn or "",
                conn=conn,
                pending=run.pending,
                mode=mode,
                lock_wait=run.guards.lock_wait,
                plan_path=plan.path,
                schema=dict(schema) if schema is not None else None,
                schemas=(run.options.schema, history.history_schema()) if run.options.schema else (),
            )
        except OSError as exc:
            raise BackupError(f"cannot write the backup into {directory}: {exc}. Nothing was changed.") from None
    run.backup = info
    run.backup_path = run.result.backup = info.path
    rl.say(
        f"  backup: {relpath(info.path)} ({human_size(info.size)}, {len(info.tables)} tables, verified: "
        f"{info.toc_entries} archive entries) in {_seconds(time.perf_counter() - t0)}"
    )
    rl.event("backup", **{k: v for k, v in info.to_dict().items()})


def describe_run_backup(run: RunContext, conn: psycopg.Connection[Any] | None) -> list[str]:
    """What :func:`take_run_backup` would do, and the retention after the run, as dry-run lines."""
    plan = run.plan
    b = plan.backup
    if run.hooks("backup"):
        return [f"backup: by the backup hook (HARNESS_BACKUP={relpath(b.dir)}/{plan.name}-<UTC time>.dump)",
                *(f"hook backup: {describe_hook(hook)}" for hook in run.hooks("backup"))]
    if b.mode == "none":
        return ["backup: none (backup.mode: none)"]
    target = f"{relpath(b.dir)}/{plan.name}-<UTC time>.dump"
    if b.mode == "touched" and conn is not None:
        tables = [f"{s}.{n}" for s, n, _ in touched_tables(conn, run.pending)]
        what = ("tables " + ", ".join(tables)) if tables else "schema only (no existing table is touched)"
        line = f"backup: pg_dump -Fc of {what} -> {target} (+ .json manifest), verified with pg_restore --list"
    else:
        line = f"backup: pg_dump -Fc ({b.mode}) -> {target} (+ .json manifest), verified with pg_restore --list"
    return [line, f"retention: keep the newest {b.keep} backups of plan {plan.name}"]
