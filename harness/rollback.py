"""Roll back the newest applied migrations on the target with their downs: ``harness rollback``.

The one entry point is :func:`rollback_plan`.  A rollback runs under the
guards of apply (:mod:`harness.apply`): the run lock and its fence, the
status of the history, and in production the rehearsal receipt (which must
also prove each down: its ``rollback`` and ``chain_rollback`` items passed),
the drift check and a backup.  Migrations that cannot be rolled back (no
down, an empty down, ``rollback: none`` on their step) are refused before
anything changes, naming the backup to restore instead.

What a rollback does after its guards is a list of :class:`Step` objects:
hooks, the backup, one down per migration (newest first; each in its own
transaction with the plan's ``SET LOCAL`` timeouts and the removal of its
history row, or statement by statement when the down cannot run in a
transaction), verification against the rehearsal's schema at the version
rolled back to, health checks, hooks, retention.  Each step executes itself
or describes itself, down to the SQL of its transactions: the dry run prints
the very list the run executes, as alembic's offline mode renders the same
migration code as SQL, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO

import psycopg

from . import history
from ._apply_text import describe_url as _describe_url
from ._apply_text import first_line as _first_line
from ._apply_text import indent as _indent
from ._apply_text import plural as _plural
from ._apply_text import seconds as _seconds
from .apply import describe_run_backup, take_run_backup
from .apply_context import ApplyOptions, ApplyResult, RunContext, history_scope, migration_index
from .apply_finish import Finish, HealthFailed
from .apply_guards import Gates
from .migrator import Migrator, Unit, down_units
from .backup import list_backups
from .errors import CheckFailed, ConfigError, GuardError, HarnessError, MigrationError
from .execute import StatementFailed, describe_pg_error, relpath
from .hooks import describe_hook
from .plan import Plan
from .receipt import DOWN_PROOFS, verify_receipt
from .redact import scrub
from .sources import Migration

__all__ = ["RollbackResult", "Step", "rollback_plan"]


@dataclass
class RollbackResult(ApplyResult):
    """What a rollback did (or, for a dry run, would do); ``rolled_back`` lists the migrations, newest first."""

    #: The version the target is at afterwards (``None``: before the first migration, or nothing to roll back).
    to: str | None = None
    #: The title of every step run (dry run: that would run), in order.
    step_titles: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (secrets scrubbed): apply's, plus ``to`` and ``step_titles``."""
        data = super().to_dict()
        extra: dict[str, Any] = json.loads(scrub(json.dumps({"to": self.to, "step_titles": self.step_titles})))
        return {**data, "command": "rollback", **extra}


def rollback_plan(
    plan: Plan,
    options: ApplyOptions | None = None,
    *,
    to: str | None = None,
    steps: int | None = None,
    out: TextIO | None = sys.stdout,
) -> RollbackResult:
    """Roll back the migrations applied after version *to* (or the newest *steps* of them), newest first.

    Exactly one of *to* (a version or migration id) and *steps* (>= 1) is
    given, else :class:`~harness.errors.ConfigError` (exit 2), as for a
    version no migration file has.  *options* are apply's (``dry_run``,
    ``force``, ``mode``, ``yes``, ``hooks``, ``target``; ``to`` is ignored).
    Returns the :class:`RollbackResult` of a successful run (nothing to roll
    back is a success) or raises the :class:`~harness.errors.HarnessError`
    subclass of the failure with the partial result as ``exc.result``.
    """
    options = options or ApplyOptions()
    with history_scope(options):
        run = _Rollback(plan, options, out, to=to, steps=steps)
        run.run()
    return run.result


# --------------------------------------------------------------------------
# Steps: each executes itself on the run, or describes itself for the dry run


class Step(Protocol):
    """One thing a rollback does after its guards; the same object runs it or describes it."""

    title: str

    def describe(self, run: _Rollback) -> list[str]:
        """What :meth:`execute` runs, as lines (SQL with its transaction boundaries)."""

    def execute(self, run: _Rollback) -> None:
        """Do it on the target."""


def _hook_lines(run: _Rollback, event: str, migration: Migration | None = None) -> list[str]:
    return [f"hook {event}: {describe_hook(hook)}" + (f" ({migration.id})" if migration else "")
            for hook in run.hooks(event)]


class _HooksStep:
    def __init__(self, event: str) -> None:
        self.event = event
        self.title = f"hooks {event}"

    def describe(self, run: _Rollback) -> list[str]:
        return _hook_lines(run, self.event)

    def execute(self, run: _Rollback) -> None:
        run.run_hooks(self.event)


class _BackupStep:
    title = "backup"

    def describe(self, run: _Rollback) -> list[str]:
        return [line for line in describe_run_backup(run, run.session.conn) if not line.startswith("retention:")]

    def execute(self, run: _Rollback) -> None:
        with run.rl.phase("backup"):
            take_run_backup(run)


class _DownStep:
    """The down of one migration: pre_migration hooks, its units, post_migration hooks."""

    def __init__(self, run: _Rollback, migration: Migration) -> None:
        self.migration = migration
        self.units = down_units(migration, run.guards, run._mirror_table())
        assert migration.down_path is not None and migration.down_statements is not None
        kind = ("in one transaction" if migration.down_transactional
                else "statement by statement (non-transactional)")
        self.title = (f"down {migration.id} ({relpath(migration.down_path)}, "
                      f"{_plural(len(migration.down_statements), 'statement')}, {kind})")

    def describe(self, run: _Rollback) -> list[str]:
        lines = _hook_lines(run, "pre_migration", self.migration)
        for unit in self.units:
            for action in unit.actions:
                lines.extend(action.describe())
        return lines + _hook_lines(run, "post_migration", self.migration)

    def execute(self, run: _Rollback) -> None:
        migration = self.migration
        run.run_hooks("pre_migration", migration)
        t0 = time.perf_counter()
        with run.rl.phase(f"rollback:{migration.id}", statements=len(migration.down_statements or ())):
            with run.rl.progress(f"down {migration.id}"):
                for number, unit in enumerate(self.units, 1):
                    self._run_unit(run, unit, number)
        run.rolled_back_now.append(migration)
        run.result.rolled_back.append(migration.id)
        run.rl.event("rolled_back", migration=migration.id, seconds=round(time.perf_counter() - t0, 4))
        run.rl.say(f"  {migration.id} rolled back in {_seconds(time.perf_counter() - t0)}; its history row is gone")
        run.run_hooks("post_migration", migration)

    def _run_unit(self, run: _Rollback, unit: Unit, number: int) -> None:
        try:
            run.migrator.run_unit(unit, self.migration)
        except (StatementFailed, psycopg.Error) as exc:
            raise run._down_failed(self.migration, exc, number, len(self.units)) from None


class _VerifyStep:
    title = "verify"

    def describe(self, run: _Rollback) -> list[str]:
        if not run.production:
            return ["skipped (development mode)"]
        if not run.receipt_valid:
            return ["skipped (no matching receipt)"]
        at = f"after {run.migrations[run.target_index].id}" if run.target_index >= 0 else "before the first migration"
        return [f"the schema must equal the rehearsal's schema {at} (the receipt's digest, else a rehearsal up to there)"]

    def execute(self, run: _Rollback) -> None:
        with run.rl.phase("verify"):
            try:
                run.result.verification = run.finish.verify_at(run.target_index)
            except HealthFailed as exc:
                run.result.verification = "failed"
                run._check_failed(f"verification failed: {exc}")
        run.rl.say(f"verification: {run.result.verification}")


class _HealthStep:
    title = "health"

    def describe(self, run: _Rollback) -> list[str]:
        health = run.plan.health
        lines = [f"check {c.name!r}: {' '.join(c.sql.split())}" + (f" (expect {c.expect!r})" if c.expect is not None else "")
                 for c in health.checks]
        if health.url:
            lines.append(f"url: GET {_describe_url(health.url)} must answer 2xx (timeout {_seconds(health.timeout)}, "
                         f"{health.retries} retries)")
        return lines or ["skipped (no health checks in the plan)"]

    def execute(self, run: _Rollback) -> None:
        with run.rl.phase("health"):
            try:
                run.result.health = run.finish.health()
            except HealthFailed as exc:
                run.result.health = "failed"
                run._check_failed(f"health check failed: {exc}")
        run.rl.say(f"health: {run.result.health}")


class _RetentionStep:
    title = "retention"

    def describe(self, run: _Rollback) -> list[str]:
        return [f"keep the newest {run.plan.backup.keep} backups of plan {run.plan.name}"]

    def execute(self, run: _Rollback) -> None:
        run.finish.retention()


# --------------------------------------------------------------------------
# The run


class _Rollback(RunContext):
    """A rollback: the frame, state and parts of a run (:class:`RunContext` with apply's :class:`Gates`,
    :class:`Migrator` and :class:`Finish`), apply's backup, and its own selection and steps."""

    result: RollbackResult

    def __init__(self, plan: Plan, options: ApplyOptions, out: TextIO | None, *, to: str | None,
                 steps: int | None) -> None:
        super().__init__(plan, dataclasses.replace(options, to=None), out)
        self.gates = Gates(self)
        self.migrator = Migrator(self)
        self.finish = Finish(self, self.migrator)
        if to is not None and steps is not None:
            raise ConfigError("give either --to VERSION or --steps N, not both")
        if to is None and steps is None:
            raise ConfigError("say how far to roll back: --to VERSION (roll back every migration applied after it) "
                              "or --steps N (the newest N)")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"--steps: expected a whole number >= 1, got {steps!r}")
        self.to_index = migration_index(self.migrations, to) if to is not None else None
        self.count = steps
        self.result = RollbackResult(plan=plan.name, mode=self.mode, dry_run=options.dry_run, forced=options.force)
        # Newest first: the history rows and files of the migrations to roll back.
        self.selected: list[tuple[history.AppliedMigration, Migration | None]] = []
        self.target_index = -1  # the migration the target is at afterwards (-1: before the first)
        self.rolled_back_now: list[Migration] = []
        self.status: history.Status[Migration] | None = None

    # ------------------------------------------------------------------ selection and guards

    def _select(self, status: history.Status[Migration]) -> None:
        """Which applied migrations to roll back (newest first), and the version the target ends at."""
        self.status = status
        applied = list(status.applied)
        if self.to_index is not None:
            target = self.migrations[self.to_index]
            position = next((i for i, (row, _) in enumerate(applied) if row.version == target.version), None)
            if position is None:
                later = [row for row, m in applied if m is None or self.migrations.index(m) > self.to_index]
                if later:
                    raise ConfigError(
                        f"--to {target.version}: {target.id} is not applied on {self.where}, but later migrations are "
                        f"({', '.join(f'{r.version}_{r.name}' for r in later)}); `harness status {self.plan.name}` "
                        "shows the history"
                    )
                position = len(applied) - 1  # it is pending, and so is everything after it: nothing to roll back
            chosen = applied[position + 1:]
        else:
            assert self.count is not None
            if self.count > len(applied):
                raise ConfigError(f"--steps {self.count}: only {_plural(len(applied), 'migration')} applied on "
                                  f"{self.where}; `harness status {self.plan.name}` shows the history")
            chosen = applied[len(applied) - self.count:]
        remaining = applied[: len(applied) - len(chosen)]
        self.selected = list(reversed(chosen))
        last = remaining[-1] if remaining else None
        self.target_index = self.migrations.index(last[1]) if last is not None and last[1] is not None else -1
        self.result.to = last[0].version if last is not None else None
        self.result.skipped = [f"{r.version}_{r.name}" for r, _ in remaining]
        # The backup's manifest lists the migrations this run changes, and `touched` backups take their tables.
        self.pending = [m for _, m in reversed(self.selected) if m is not None]

    def _describe_selection(self) -> str:
        ids = ", ".join(f"{r.version}_{r.name}" for r, _ in self.selected)
        to = f"{self.migrations[self.target_index].id}" if self.target_index >= 0 else (
            self.result.to or "before the first migration")
        return f"roll back {_plural(len(self.selected), 'migration')} (newest first: {ids}), to {to}"

    def _irreversible_problem(self) -> str | None:
        """Why some selected migration cannot be rolled back, with the backup to restore instead; ``None``: all can."""
        lines = []
        for row, m in self.selected:
            reason = None
            if m is None:
                reason = "its migration file is gone"
            elif self.plan.step_for(m.id, m.version).irreversible:
                why = self.plan.step_for(m.id, m.version).reason
                reason = "its step declares it irreversible (rollback: none)" + (f": {why}" if why else "")
            elif m.down_error is not None:
                reason = f"its down migration cannot be run: {_first_line(Exception(m.down_error))}"
            elif not m.has_down:
                reason = "it has no down migration"
            elif not m.reversible:
                reason = f"its down migration ({relpath(m.down_path) if m.down_path else '?'}) is empty"
            if reason is not None:
                lines.append(f"{row.version}_{row.name}: {reason}; {self._restore_hint(row)}")
        if not lines:
            return None
        return (f"cannot roll back on {self.where}; nothing was changed:\n  - " + "\n  - ".join(lines)
                + f"\nRestore the backup instead (`harness backups {self.plan.name}` lists them, `harness restore "
                "FILE` restores one), or fix forward with a new migration.")

    def _restore_hint(self, row: history.AppliedMigration) -> str:
        """The newest backup taken before *row*'s migration was applied (its manifest lists it), as advice."""
        mid = f"{row.version}_{row.name}"
        for info in list_backups(self.plan.backup.dir, self.plan.name):
            try:
                taken = datetime.fromisoformat(info.created_at)
            except ValueError:
                continue
            if mid in info.versions and taken <= row.applied_at:
                return f"the backup taken before it was applied: `harness restore {info.path}`"
        return f"no backup taken before it was applied is in {relpath(self.plan.backup.dir)}"

    def _proof_problem(self) -> str | None:
        """Why the receipt does not prove the downs to run (rollback and chain_rollback passed for each); ``None``: it does."""
        receipt = self.receipt
        if receipt is None or not self.receipt_valid:
            return None  # the receipt gate decided (refused, or skipped by --force / require_receipt: false)
        again = f"rehearse again: `harness rehearse {self.plan.name}`"
        if receipt.downs is None:
            return (f"the rehearsal receipt of plan {self.plan.name!r} ({receipt.created_at}) was written by an older "
                    f"migration-harness and records no rehearsed downs; {again}")
        lacking = []
        for _, m in self.selected:
            if m is None:
                continue
            have = receipt.downs.get(m.id, ())
            missing = [p for p in DOWN_PROOFS if p not in have]
            if missing:
                lacking.append(f"{m.id}: {' and '.join(missing)} did not pass")
        if not lacking:
            return None
        return (f"the rehearsal receipt of plan {self.plan.name!r} ({receipt.created_at}) does not prove the downs "
                "this rollback runs:\n  - " + "\n  - ".join(lacking)
                + f"\nTurn `rollback: true` on for these steps in the plan (chain_rollback comes with it), then {again}")

    def _proof_gate(self) -> None:
        problem = self._proof_problem()
        if problem is None:
            if self.receipt_valid:
                self.rl.say("  receipt: the downs to run passed rollback and chain_rollback in the rehearsal")
            return
        if self.options.force:
            self.rl.warning(f"--force: rolling back although {problem}")
        elif not self.guards.require_receipt:
            self.rl.warning(problem)
        else:
            raise GuardError(problem + ". `--force` rolls back anyway (logged as a WARNING).")

    def _partly_applied_problem(self, conn: psycopg.Connection[Any]) -> str | None:
        partial = [m.id for m in self.migrations if m.version in history.read_progress(conn)
                   and all(r.version != m.version for r, _ in (self.status.applied if self.status else []))]
        if not partial:
            return None
        return (f"{', '.join(partial)} was left part-way by an interrupted apply; finish it with `harness apply "
                f"{self.plan.name}` before rolling back")

    def _confirm_rollback(self) -> None:
        if not self.production or self.options.yes:
            return
        what = self._describe_selection()
        self.gates.ask(f"{what[0].upper()}{what[1:]} on {self.where}? [y/N] ", "production rollback")

    # ------------------------------------------------------------------ the steps

    def _steps(self) -> list[Step]:
        """What the rollback does after its guards, in order: the list both the run and the dry run walk."""
        steps: list[Step] = []
        if self.hooks("pre_run"):
            steps.append(_HooksStep("pre_run"))
        if self.production:
            steps.append(_BackupStep())
        steps += [_DownStep(self, m) for _, m in self.selected if m is not None]
        steps += [_VerifyStep(), _HealthStep()]
        if self.hooks("post_run"):
            steps.append(_HooksStep("post_run"))
        if self.production and self.plan.backup.mode != "none" and not self.hooks("backup"):
            steps.append(_RetentionStep())
        return steps

    def _mirror_table(self) -> str | None:
        return self.plan.history_mirror if self.mirror is not None else None

    def _down_failed(self, migration: Migration, exc: StatementFailed | psycopg.Error, unit: int,
                     units: int) -> MigrationError:
        text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
        where = relpath(migration.down_path) if migration.down_path else migration.id
        if migration.down_transactional:
            what = "failed and was rolled back"
        elif unit == units:
            what = "ran, but removing its history row failed"
        else:
            what = (f"failed at statement {unit} of {units - 1}; it runs statement by statement, so statements "
                    f"1-{unit - 1} of it stay done" if unit > 1 else f"failed at its first statement of {units - 1}")
        lines = [f"the down migration of {migration.id} ({where}) {what}: {migration.id} stays applied (its history "
                 "row is kept):", _indent(text)]
        if self.rolled_back_now:
            lines.append("rolled back by this run before it (they stay rolled back): "
                         + ", ".join(m.id for m in self.rolled_back_now))
        if self.backup_path is not None:
            lines.append(f"backup taken before this run: {self.backup_path} (`harness restore {self.backup_path}`)")
        lines.append("Fix the down migration (or the data it trips over) and run rollback again.")
        return MigrationError("\n".join(lines))

    def _check_failed(self, failure: str) -> None:
        done = ", ".join(m.id for m in self.rolled_back_now) or "nothing"
        raise CheckFailed(f"{failure}\nThe downs ran: {done} rolled back (the history no longer lists them). "
                          f"{self.finish.restore_advice()}")

    # ------------------------------------------------------------------ the run

    def _apply(self) -> None:
        rl = self.rl
        rl.say(f"harness rollback {self.plan.name}: {self.mode} run on {self.where}")
        rl.event("rollback", to=self.migrations[self.to_index].version if self.to_index is not None else None,
                 steps=self.count)
        with rl.phase("connect"):
            conn = self.session.open()
            rl.say(f"  connected: PostgreSQL {conn.info.parameter_status('server_version') or '?'}")
        with contextlib.ExitStack() as stack:
            self.session.take_lock(stack)
            with rl.phase("status"):
                status = self.gates.status()
                self._select(status)
                problem = self._partly_applied_problem(self.session.live())
                if problem:
                    raise GuardError(problem)
            if not self.selected:
                rl.say(f"nothing to roll back: {self._nothing()}")
                self.result.ok = True
                self._summary()
                return
            rl.say(f"  {self._describe_selection()}")
            problem = self._irreversible_problem()
            if problem:
                raise GuardError(problem)
            if self.production:
                # After the selection, so that an irreversible migration is named first (it has no receipt anyway).
                with rl.phase("receipt"):
                    self.gates.receipt_gate()
                    if self.receipt is not None:
                        self.gates.receipt_server_gate(self.session.live())
                    self._proof_gate()
                with rl.phase("drift"):
                    self.gates.drift(status)
            self._confirm_rollback()
            steps = self._steps()
            for number, step in enumerate(steps, 1):
                rl.say(f"[{number}/{len(steps)}] {step.title}")
                rl.event("step", number=number, title=step.title)
                self.result.step_titles.append(step.title)
                step.execute(self)
            self.result.ok = True
            self._summary()

    def _nothing(self) -> str:
        if self.to_index is not None:
            return f"no migration after {self.migrations[self.to_index].id} is applied"
        return "no migration is applied"

    def _pending_after(self) -> None:
        """``result.pending``: the migration files the target does not have after this run."""
        if self.status is not None:
            gone = {m.id for m in self.rolled_back_now}
            applied = {m.id for _, m in self.status.applied if m is not None and m.id not in gone}
            self.result.pending = [m.id for m in self.migrations if m.id not in applied]

    def run(self) -> None:
        """Run the rollback (or its dry run) in the frame every run shares (:meth:`RunContext.conduct`)."""
        self.conduct(self._dry_run if self.options.dry_run else self._apply, command="rollback")

    def failed(self, exc: HarnessError) -> None:
        super().failed(exc)
        self._pending_after()

    def _summary(self) -> None:
        rl = self.rl
        self._pending_after()
        if self.result.rolled_back:
            timings = rl.timings
            parts = [f"{mid} ({_seconds(timings.get(f'rollback:{mid}', 0.0))})" for mid in self.result.rolled_back]
            rl.say(f"rolled back {_plural(len(parts), 'migration')}: {', '.join(parts)}; the target is at "
                   + (self.result.to or "no migration"))
        self.say_backup_and_log()

    # ------------------------------------------------------------------ dry run

    def _dry_run(self) -> None:
        lines: list[str] = []
        would_refuse: list[str] = []
        g = self.guards

        def add(text: str = "") -> None:
            lines.append(text)
            self.rl.say(text, event=False)

        def refuse(what: str, text: str) -> None:
            add(f"{what}: rollback WOULD REFUSE: {text}")
            would_refuse.append(what)

        add(f"DRY RUN of rollback of plan {self.plan.name}: nothing is changed")
        add(f"target: {self.where} ({self.mode} mode)")
        rows: list[history.AppliedMigration] = []
        conn = None
        if self.dsn is not None:
            conn = self.session.open(read_only=True)
            rows = history.read_applied(conn)
        else:
            add("  the development database is not running: nothing is applied there")
        add(f"connect: with up to {g.max_retries} retries (first after {_seconds(g.retry_delay)}, x{g.retry_factor:g} each)")
        if self.production:
            try:
                self.receipt, self.receipt_valid = verify_receipt(self.plan, self.migrations), True
                add(f"receipt: matches (rehearsed {self.receipt.created_at})")
            except GuardError as exc:
                if self.options.force:
                    add(f"receipt: WOULD BE SKIPPED by --force ({_first_line(exc)})")
                elif not g.require_receipt:
                    add(f"receipt: not required by the plan ({_first_line(exc)})")
                else:
                    refuse("receipt", _first_line(exc))
        add(f"lock: the migration run lock, waiting up to {_seconds(g.lock_wait)}")
        status = history.compute_status(self.migrations, rows)
        self._select(status)
        add(f"status: {len(status.applied)} applied")
        problems = [f"{r.version}_{r.name} failed" for r in status.failed]
        if self.production:
            problems += [f"{m.id} changed" for _, m in status.changed]
            problems += [f"{r.version}_{r.name} missing" for r in status.missing]
        if problems:
            refuse("status", ", ".join(problems))
        partly = self._partly_applied_problem(conn) if conn is not None else None
        if partly:
            refuse("status", partly)
        if not self.selected:
            add(f"nothing to roll back: {self._nothing()}")
            self.result.dry_run_plan = lines
            self.result.ok = not would_refuse
            return
        add(self._describe_selection())
        irreversible = self._irreversible_problem()
        if irreversible:
            refuse("irreversible", irreversible)
        if self.production:
            proof = self._proof_problem()
            if proof and not self.options.force and g.require_receipt:
                refuse("down proofs", proof)
            elif proof:
                add(f"down proofs: WARNING: {proof}")
            if conn is not None:
                self._dry_drift(add, refuse, conn, status)
        if self.production and not self.options.yes:
            add("confirm: asks before changing anything (--yes: does not)")
        if not irreversible:
            steps = self._steps()
            for number, step in enumerate(steps, 1):
                add(f"[{number}/{len(steps)}] {step.title}")
                self.result.step_titles.append(step.title)
                for line in step.describe(self):
                    add(f"  {line}")
        for hook in self.hooks("on_failure"):
            add(f"hook on_failure: {describe_hook(hook)} (only if the run fails)")
        if would_refuse:
            add(f"rollback would refuse: {', '.join(dict.fromkeys(would_refuse))}")
        self.result.dry_run_plan = lines
        self.result.ok = not would_refuse

    def _dry_drift(self, add: Any, refuse: Any, conn: psycopg.Connection[Any], status: history.Status[Migration]) -> None:
        last = status.applied[-1][1] if status.applied else None
        digest = self.receipt.digests.get(last.id) if self.receipt is not None and last is not None else None
        if digest is None:
            add("drift: rollback would rehearse the plan up to the target's version and compare schemas")
        elif digest == self.schema(conn).digest:
            add(f"drift: none (schema digest matches the rehearsal after {last.id if last else '?'})")
        else:
            refuse("drift", f"the schema differs from the rehearsal after {last.id if last else '?'}")
