"""Apply's guards: what must hold before a run changes the target, each decided here once.

The receipt gate (the plan and every migration match a green rehearsal;
the rehearsal's PostgreSQL major), the history's status (failed, changed,
missing and out-of-order migrations), another tool's history table, the
baseline decision, drift (the target's schema against the rehearsal's at
its version, also part-way through a migration and out of file order), the
transaction scope, and the confirmation.  Each raises
:class:`~harness.errors.GuardError` (or :class:`~harness.errors.ConfigError`
for usage) before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from . import adopt, history
from ._apply_text import first_line as _first_line
from ._apply_text import indent as _indent
from ._apply_text import plural as _plural
from .apply_context import RunContext
from .errors import ConfigError, GuardError, SourceError
from .execute import relpath
from .migrator import Migrator, units
from .receipt import read_receipt, receipt_path, server_version_problem, verify_receipt
from .snapshot import diff_snapshots, format_changes
from .sources import Migration
from .targets import confirm

__all__ = ["Gates"]


class Gates:
    """The guards of one run (:class:`~harness.apply_context.RunContext`), in the order apply passes them."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def receipt_gate(self) -> None:
        rl = self.run.rl
        required = self.run.guards.require_receipt
        if self.run.options.force or not required:
            why = "--force" if self.run.options.force else "guards.require_receipt is false"
            try:
                self.run.receipt = verify_receipt(self.run.plan, self.run.migrations)
                self.run.receipt_valid = True
            except GuardError as exc:
                self.run.receipt = read_receipt(self.run.plan) if receipt_path(self.run.plan).exists() else None
                if self.run.options.force:
                    rl.warning(
                        f"--force: applying WITHOUT a matching green rehearsal receipt ({_first_line(exc)}). "
                        "Nothing proves these migrations were rehearsed; verification is skipped."
                    )
                else:
                    rl.say(f"  receipt: not required ({why}); none matches: {_first_line(exc)}")
                return
            if self.run.options.force:
                rl.warning("--force given, but the receipt matches anyway; the receipt gate passed")
            rl.say(f"  receipt: matches (rehearsed {self.run.receipt.created_at} on PostgreSQL {self.run.receipt.server_version})")
            return
        self.run.receipt = verify_receipt(self.run.plan, self.run.migrations)
        self.run.receipt_valid = True
        rl.say(f"  receipt: matches (rehearsed {self.run.receipt.created_at} on PostgreSQL {self.run.receipt.server_version})")

    def receipt_server_gate(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a receipt rehearsed on another PostgreSQL major than the target's (``--force`` warns instead)."""
        assert self.run.receipt is not None
        reported = (conn.info.parameter_status("server_version") or "").split()
        target = reported[0] if reported else f"{conn.info.server_version // 10000}"
        problem = server_version_problem(self.run.receipt, target)
        if problem is None:
            return
        refuse = self.run.guards.require_receipt and self.run.receipt_valid and not self.run.options.force
        self.run.rl.event("receipt_server_version", rehearsed=self.run.receipt.server_version, target=target,
                      forced=self.run.options.force, refused=refuse)
        if refuse:
            raise GuardError(f"{problem}. `--force` applies anyway (logged as a WARNING).")
        if self.run.options.force:
            self.run.rl.warning(f"--force: applying although {problem}")
        else:
            self.run.rl.warning(problem)

    def status(self) -> history.Status[Migration]:
        conn = self.run.session.live()
        status = history.compute_status(self.run.migrations, history.read_applied(conn))
        self.run.result.skipped = [m.id for _, m in status.applied if m is not None]
        problems: list[str] = []
        if status.failed:
            problems.append(
                "failed: " + ", ".join(f"{r.version}_{r.name}" for r in status.failed)
                + " (a run stopped part-way: check the database, then fix forward or remove the history row)"
            )
        for row, m in status.changed:
            text = f"changed: {m.id} ({relpath(m.path)}) differs from what was applied (checksum {row.checksum[:12]}... → {m.checksum[:12]}...)"
            if self.run.production:
                problems.append(text + "; restore the original file and put the change in a new migration")
            else:
                self.run.rl.warning(text + "; it is not re-run (development mode)")
        for row in status.missing:
            text = f"missing: {row.version}_{row.name} is applied but its file is gone"
            if self.run.production:
                problems.append(text + "; restore the file from version control")
            else:
                self.run.rl.warning(text)
        problems += self.foreign_problems(conn)
        self.run.baselined = self.baseline(conn, status)
        pending = [m for m in status.pending if m not in self.run.baselined]
        unrunnable = [m for m in pending if m.error is not None]
        if unrunnable:
            # Nothing has run yet: refuse before the first pending migration rather than stop half-way.
            raise SourceError(
                f"{len(unrunnable)} pending migration(s) cannot be run, so {self.run.mode} apply changes nothing:\n  - "
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
            if self.run.production:
                problems.append(text + "; renumber them after the newest applied migration")
            else:
                self.run.rl.warning(text + "; applying them anyway (development mode)")
        if problems:
            raise GuardError(
                f"the history of {self.run.where} needs attention before {self.run.mode} apply:\n  - "
                + "\n  - ".join(problems)
                + f"\n(`harness status {self.run.plan.name}` shows the details)"
            )
        self.run.pending = pending
        self.run.result.pending = [m.id for m in self.run.pending]
        self.run.rl.say(f"  status: {len(status.applied)} applied, {len(self.run.pending)} pending")
        if self.run.baselined:
            self.run.rl.say(
                f"  baseline: the history is empty but the schema is not: {len(self.run.baselined)} migrations up to "
                f"{self.run.baselined[-1].id} (the plan's baseline) are taken as applied and will be recorded, not run"
            )
        elif self.run.baseline_index >= 0 and not status.applied:
            self.run.rl.say("  baseline: the target's schema is empty: every migration runs, the baseline ones included")
        self.run.rl.event("status", applied=self.run.result.skipped, pending=self.run.result.pending)
        return status

    def foreign_problems(self, conn: psycopg.Connection[Any]) -> list[str]:
        """What another tool's history table says that stops apply (docs/layouts.md, adopting).

        A dirty, failed or mismatched foreign history blocks apply
        (:func:`harness.adopt.blocking_problems`); so does one that lists
        migrations as applied that our history does not have yet: running
        them again would fail or, worse, repeat a data change.
        """
        layout = self.run.migrations[0].layout if self.run.migrations else self.run.plan.layout
        problems = [f"{p} (foreign history)" for p in adopt.blocking_problems(conn, self.run.migrations, layout=layout)]
        if self.run.mirror is not None:
            problems += [f"{p} (history.mirror)" for p in self.run.mirror.problems(conn)]
        if problems:
            return problems
        adoption = adopt.plan_adoption(conn, self.run.migrations, layout=layout)
        if adoption.to_record and adoption.source is not None:
            h = adoption.source.history
            ids = ", ".join(m.id for m in adoption.to_record[:5]) + (", ..." if len(adoption.to_record) > 5 else "")
            problems.append(
                f"{h.table} ({h.tool}) says {len(adoption.to_record)} migrations are applied that "
                f"{history.history_schema()}.{history.TABLE} does not list ({ids}); run `harness adopt {self.run.plan.name}` "
                "first, so that apply does not run them a second time"
            )
        return problems

    def baseline(self, conn: psycopg.Connection[Any], status: history.Status[Migration]) -> list[Migration]:
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
        if self.run.baseline_index < 0 or status.applied:
            return []
        if _schema_is_empty(conn):
            return []
        return list(self.run.migrations[: self.run.baseline_index + 1])

    def drift(self, status: history.Status[Migration]) -> None:
        rl = self.run.rl
        conn = self.run.session.live()
        if not self.run.baselined and self.drift_within(conn):
            return
        sequence = None if self.run.baselined else _applied_first(self.run.migrations, status)
        if sequence is not None:
            self.drift_out_of_file_order(conn, status, sequence)
            return
        # With a baseline to record, the target must already look like the rehearsal after the baseline.
        index = self.run.baseline_index if self.run.baselined else len(status.applied) - 1
        last = self.run.migrations[index].id if index >= 0 else None
        actual = self.run.schema(conn)
        self.run.snapshot = actual
        expected_digest = None
        if self.run.receipt is not None and last is not None:
            rehearsed = all(self.run.receipt.migrations.get(m.id) == m.checksum for m in self.run.migrations[: index + 1])
            if rehearsed:
                expected_digest = self.run.receipt.digests.get(last)
        at = f"after {last}" if last else "before the first migration"
        if expected_digest is not None and expected_digest == actual.digest:
            rl.say(f"  drift: none (schema digest matches the rehearsal {at})")
            rl.event("drift", outcome="none", at=last, digest=actual.digest)
            return
        rl.say(f"  drift: rehearsing the plan up to {last or 'its start'} to compare the schema ...")
        with rl.progress("drift rehearsal"):
            expected = self.run.rehearsed_schema(index)
        changes = diff_snapshots(expected, actual)
        if not changes:
            rl.say(f"  drift: none (schema equals the rehearsal {at})")
            rl.event("drift", outcome="none", at=last, digest=actual.digest, rehearsed=True)
            return
        rl.event("drift", outcome="drift", at=last, changes=[c.describe() for c in changes[:200]])
        raise GuardError(
            f"drift: the schema of {self.run.where} differs from the rehearsed schema {at} "
            f"(expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def drift_out_of_file_order(
        self, conn: psycopg.Connection[Any], status: history.Status[Migration], sequence: list[Migration]
    ) -> None:
        """The drift check when what is applied is not a prefix of the files (a Flyway repeatable ran before
        versioned migrations added since): the plan is rehearsed in the order the target got its migrations."""
        rl = self.run.rl
        # A repeatable that changed since it ran: the target has its earlier text, which no file holds.
        outdated = [m.id for row, m in status.applied if m is not None and m.repeatable and m.checksum != row.checksum]
        applied = [m for _, m in status.applied if m is not None and m.id not in outdated]
        ids = {m.id for m in applied}
        sequence = applied + [m for m in sequence if m.id not in ids]
        actual = self.run.schema(conn)
        self.run.snapshot = actual
        rl.say(f"  drift: rehearsing the {len(applied)} applied migrations in the order they ran, to compare ...")
        with rl.progress("drift rehearsal"):
            expected = self.run.rehearsed_schemas(len(applied) - 1, migrations=sequence)[0]
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
            f"drift: the schema of {self.run.where} differs from the rehearsal of its applied migrations "
            f"(expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def drift_within(self, conn: psycopg.Connection[Any]) -> bool:
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
        if not self.run.pending or self.run.pending[0].transactional:
            return False
        migration = self.run.pending[0]
        statements = migration.statements
        progress = history.read_progress(conn).get(migration.version)
        done = Migrator.progress(conn, migration) if progress is not None and progress.statements else -1
        self.refuse_invalid_index(conn, migration, done)
        if done < 0:
            return False  # nothing of its schema changes was committed: the usual check after the migration before
        rl = self.run.rl
        index = self.run.migrations.index(migration)
        unit = next((u for u in units(migration) if u[1] > done), None)
        # Only a statement that commits on its own can have run without its progress row (a unit's row commits with it).
        single = unit is not None and unit[2] is None and unit[0] == unit[1] and not (
            migration.batches and not migration.no_transaction)
        upto = done + 2 if single else done + 1
        where = f"after statement {done + 1} of {len(statements)} of {migration.id}"
        actual = self.run.schema(conn)
        self.run.snapshot = actual
        rl.say(f"  drift: {migration.id} was left part-way by an earlier run ({progress.describe(len(statements)) if progress else ''}); "
               "rehearsing the plan up to there to compare the schema ...")
        with rl.progress("drift rehearsal"):
            expected = self.run.rehearsed_schemas(index, done + 1, upto)
        changes = diff_snapshots(expected[0], actual)
        if not changes:
            rl.say(f"  drift: none (schema equals the rehearsal {where})")
            rl.event("drift", outcome="none", at=migration.id, statements=done + 1, digest=actual.digest, rehearsed=True)
            return True
        if len(expected) > 1 and not diff_snapshots(expected[1], actual):
            self.run.completed_unrecorded = (migration.version, done + 1)
            rl.say(f"  drift: none (schema equals the rehearsal after statement {done + 2} of {migration.id}: it "
                   "completed, but the earlier run stopped before recording it; it is not run again)")
            rl.event("drift", outcome="none", at=migration.id, statements=done + 2, digest=actual.digest, rehearsed=True)
            return True
        rl.event("drift", outcome="drift", at=migration.id, statements=done + 1, changes=[c.describe() for c in changes[:200]])
        raise GuardError(
            f"drift: the schema of {self.run.where} differs from the rehearsed schema {where}, where an earlier run "
            f"stopped (expected → actual, {len(changes)} difference{'s' if len(changes) != 1 else ''}):\n"
            f"{_indent(format_changes(changes))}\n"
            "Someone changed the database outside the migrations. Undo that change, or capture it in a new "
            "migration and rehearse again; apply refuses to run on a drifted database."
        )

    def refuse_invalid_index(self, conn: psycopg.Connection[Any], migration: Migration, done: int) -> None:
        """Refuse when the statement after the last completed one is a ``CREATE INDEX CONCURRENTLY`` that left an INVALID index."""
        if done + 1 >= len(migration.statements):
            return
        statement = migration.statements[done + 1]
        name = Migrator.index_name(statement)
        state = Migrator.index_state(conn, name) if name else None
        if state is None or state[1]:
            return
        raise GuardError(
            f"{relpath(migration.path)}:{statement.line}: index {state[0]} exists but is INVALID: an earlier run was "
            f"interrupted while building it (statement {done + 2} of {len(migration.statements)} of {migration.id}, "
            f"{statement.sql.strip().splitlines()[0][:100]}). It is not used by queries but slows down writes. Drop "
            f"it, then run apply again; it resumes at that statement:\n    DROP INDEX CONCURRENTLY IF EXISTS {state[0]};"
        )

    def check_transaction_scope(self) -> None:
        if self.run.guards.transaction != "single":
            return
        bad = [m for m in self.run.pending if not m.transactional]
        if bad:
            raise ConfigError(
                f"guards.transaction is single, but {', '.join(m.id for m in bad)} cannot run inside a transaction "
                "(CREATE INDEX CONCURRENTLY, VACUUM..., or a statement marked -- harness:batch); use transaction: "
                "per-migration, or apply those separately"
            )

    def confirm(self) -> None:
        if not self.run.production or self.run.options.yes:
            return
        baseline = (f" and record {_plural(len(self.run.baselined), 'baseline migration')} as applied"
                    if self.run.baselined else "")
        question = (
            f"Apply {len(self.run.pending)} migration{'s' if len(self.run.pending) != 1 else ''} "
            f"({', '.join(m.id for m in self.run.pending)}){baseline} to {self.run.where}? [y/N] "
        )
        self.ask(question, "production apply")

    def ask(self, question: str, what: str) -> None:
        """Ask *question* on the terminal (:func:`harness.targets.confirm`); refuse (exit 2) without one, or without a yes."""
        refusal = (f"{what} to {self.run.where} needs confirmation and there is no terminal to ask; "
                   "pass --yes to confirm (or --dry-run to see what would run)")
        answer = confirm(question, refusal=refusal, out=self.run.out)
        self.run.rl.event("confirmation", answer=answer)
        if not answer:
            raise ConfigError("not confirmed; nothing was changed")

    def stop_pending(self) -> None:
        """``--to VERSION``: keep the pending migrations up to it; the later ones stay pending."""
        if self.run.stop is None:
            return
        stop = self.run.migrations[self.run.stop]
        self.run.beyond = [m for m in self.run.pending if self.run.migrations.index(m) > self.run.stop]
        self.run.pending = [m for m in self.run.pending if m not in self.run.beyond]
        self.run.result.pending = [m.id for m in self.run.pending]
        if self.run.beyond:
            self.run.rl.say(f"  --to {stop.version}: applying up to {stop.id}; {_plural(len(self.run.beyond), 'later migration')} "
                        "stay pending")


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
