"""The migrator: run pending migrations on the target, in the frame the session gives each unit.

A migration runs in one transaction (its statements, its history row and
the mirrored tool's row together), or, when it cannot, unit by unit
(:func:`units`): statement by statement with session timeouts, or runs of
statements in one transaction around key-range batches
(``-- harness:batch``), each unit committing its progress row
(``harness.apply_progress``, ``harness.batch_progress``) so that a re-run
resumes after the last commit.  Every transaction first proves that the
run still holds its lock (:meth:`harness.apply_session.Session.verify_lock`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from . import history
from ._apply_text import batches as _batches
from ._apply_text import indent as _indent
from ._apply_text import plural as _plural
from ._apply_text import seconds as _seconds
from .apply_context import RunContext
from .apply_session import reset_timeouts, timeout_settings
from .batch import BatchSpec, BatchState, next_batch, resolve_target
from .errors import GuardError, MigrationError, Stopped
from .execute import StatementFailed, describe_pg_error, relpath, run_statements
from .history import BATCH_PROGRESS_TABLE, PROGRESS_TABLE
from .sources import Migration, Statement

__all__ = ["Migrator", "units", "down_units", "Unit", "Action", "BATCH_REPORT_EVERY"]

#: A console progress line every this many batches (and for the first and the last).
BATCH_REPORT_EVERY = 10

_PROGRESS = history.Qualified(PROGRESS_TABLE)
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

_BATCH_PROGRESS = history.Qualified(BATCH_PROGRESS_TABLE)
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


def units(migration: Migration) -> list[tuple[int, int, BatchSpec | None]]:
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


# --------------------------------------------------------------------------
# Units that execute or describe themselves (a down's, for rollback and the rollback after a failed health check)


class Action(Protocol):
    """One part of a unit of a down: a statement of the frame, a lock proof, the down's statements, the history row."""

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        """Run it on *conn*, inside the unit's retry."""

    def describe(self) -> list[str]:
        """What :meth:`execute` runs, as lines (SQL, or a comment for what is not plain SQL)."""


@dataclass(frozen=True)
class SqlAction:
    """``BEGIN``, ``SET LOCAL ...``, ``COMMIT``, ``RESET ...``: fixed statements around the down's own."""

    statement: sql.SQL | sql.Composed

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self.statement)

    def describe(self) -> list[str]:
        return [self.statement.as_string(None) + ";"]


@dataclass(frozen=True)
class ProveLock:
    """The proof that the run still holds the run lock and this session its fence (else roll back and stop)."""

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        migrator.run.session.verify_lock(conn)

    def describe(self) -> list[str]:
        return ["-- prove that this run still holds the run lock, and this session its fence"]


@dataclass(frozen=True)
class Statements:
    """Statements of a down file."""

    statements: tuple[Statement, ...]
    path: Path
    first: int  # 0-based index of the first one in the down
    total: int

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        run_statements(conn, self.statements, self.path)

    def describe(self) -> list[str]:
        lines = []
        for number, statement in enumerate(self.statements, self.first + 1):
            lines.append(f"-- statement {number}/{self.total}, {relpath(self.path)}:{statement.line}:{statement.column}")
            lines.extend((statement.sql.strip() + ";").splitlines())
        return lines


@dataclass(frozen=True)
class Forget:
    """Delete the migration's history row, and with ``history.mirror`` the other tool's (in the unit's transaction)."""

    migration: Migration
    mirror: str | None  # the mirrored tool's history table, when the plan keeps one in step

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        migrator.unrecord(conn, self.migration)

    def describe(self) -> list[str]:
        also = f" and from {self.mirror}'s history table" if self.mirror else ""
        return [f"-- delete {self.migration.id} from {history.SCHEMA}.{history.TABLE}{also} (same transaction)"]


@dataclass(frozen=True)
class Unit:
    """Actions run as one retry unit: a lock timeout, deadlock or lost connection runs them again."""

    what: str
    actions: tuple[Action, ...]
    forgets: bool  # the unit removes the history row: a retry after a lost COMMIT first checks it is still there


def down_units(migration: Migration, guards: Any, mirror: str | None) -> list[Unit]:
    """How the down of *migration* runs: one transaction, or statement by statement then the history row."""
    assert migration.down_statements is not None and migration.down_path is not None
    forget = Forget(migration, mirror)
    statements = tuple(migration.down_statements)
    path = migration.down_path
    total = len(statements)
    begin, commit = SqlAction(sql.SQL("BEGIN")), SqlAction(sql.SQL("COMMIT"))
    if migration.down_transactional:
        return [Unit(
            f"down of {migration.id}",
            (begin, *map(SqlAction, timeout_settings(guards, "LOCAL")), ProveLock(),
             Statements(statements, path, 0, total), forget, ProveLock(), commit),
            forgets=True,
        )]
    # Non-transactional (CREATE INDEX CONCURRENTLY..., or declared so by the layout): each statement commits on
    # its own with session timeouts; the history row goes last, in a transaction of its own.
    session = tuple(map(SqlAction, timeout_settings(guards, "SESSION")))
    units = [
        Unit(f"down of {migration.id} statement {index + 1}/{total}",
              (*session, ProveLock(), Statements(statements[index:index + 1], path, index, total)), forgets=False)
        for index in range(total)
    ]
    reset = tuple(map(SqlAction, reset_timeouts()))
    units.append(Unit(f"removing {migration.id} from the history",
                       (*reset, begin, ProveLock(), forget, ProveLock(), commit), forgets=True))
    return units


class Migrator:
    """Runs the pending migrations of a run (:class:`~harness.apply_context.RunContext`) and records them."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def migrate(self) -> None:
        if self.run.baselined:
            self.record_baseline()
        total = len(self.run.pending)
        if not total:
            return
        if self.run.guards.transaction == "single":
            self.migrate_single()
            return
        for number, migration in enumerate(self.run.pending, 1):
            self.stop_if_asked(migration)
            self.run.run_hooks("pre_migration", migration)
            kind = ("in one transaction" if migration.transactional
                    else "with batched statements" if migration.batches
                    else "statement by statement (non-transactional)")
            self.run.rl.say(f"[{number}/{total}] {migration.id} ({_plural(len(migration.statements), 'statement')}, {kind}) ...")
            t0 = time.perf_counter()
            with self.run.rl.phase(f"migration:{migration.id}", statements=len(migration.statements),
                               transactional=migration.transactional) as extra:
                with self.run.rl.progress(migration.id):
                    if migration.transactional:
                        timings = self.apply_transactional(migration)
                    else:
                        timings = self.apply_nontransactional(migration)
                extra["statements"] = len(migration.statements)
            self.run.applied_now.append(migration)
            self.run.result.applied.append(migration.id)
            for statement, seconds in timings:
                self.run.rl.event("statement", migration=migration.id, line=statement.line, seconds=round(seconds, 4))
            self.run.rl.say(f"[{number}/{total}] {migration.id} applied in {_seconds(time.perf_counter() - t0)}")
            self.run.run_hooks("post_migration", migration)

    def stop_if_asked(self, migration: Migration) -> None:
        """Stop before *migration* when the caller asked the run to stop (a fleet's Ctrl-C): the migration before
        it is complete and recorded, so a later run resumes here."""
        stop = self.run.options.stop
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped before {migration.id} as asked; the migrations before it are applied and "
                          "recorded, and apply resumes there when run again")

    def record(self, conn: psycopg.Connection[Any], migration: Migration, *, execution_ms: int, mode: str) -> None:
        """Record *migration* as applied in our history and, with ``history.mirror``, the other tool's, in the
        caller's transaction."""
        history.record_applied(conn, migration, execution_ms=execution_ms, mode=mode)
        if self.run.mirror is not None:
            self.run.mirror.record(conn, migration, execution_ms=execution_ms)

    def unrecord(self, conn: psycopg.Connection[Any], migration: Migration) -> None:
        """Remove *migration*'s history rows after its down ran (ours, and the mirrored tool's), in the caller's
        transaction.  Every down path calls this (a rollback command too)."""
        history.remove_applied(conn, migration.version)
        if self.run.mirror is not None:
            self.run.mirror.remove(conn, migration)

    def recorded(self, conn: psycopg.Connection[Any], migration: Migration) -> bool:
        """Whether the history already has *migration* (a commit whose answer was lost did happen)."""
        return any(r.version == migration.version and r.checksum == migration.checksum and r.success
                   for r in history.read_applied(conn))

    def migration_failed(self, migration: Migration, exc: StatementFailed | psycopg.Error, *, partial: str = "") -> MigrationError:
        text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
        where = relpath(migration.path)
        lines = [f"migration {migration.id} ({where}) failed" + (partial or " and was rolled back; nothing of it remains") + ":",
                 _indent(text)]
        if self.run.applied_now:
            lines.append(
                "applied by this run before it (they stay applied): " + ", ".join(m.id for m in self.run.applied_now)
            )
        if self.run.backup_path is not None:
            lines.append(f"backup taken before this run: {self.run.backup_path} (`harness restore {self.run.backup_path}`)")
        lines.append("Fix the migration (or the data it trips over) and run apply again.")
        return MigrationError("\n".join(lines))

    def apply_transactional(self, migration: Migration) -> list[tuple[Statement, float]]:
        timings: list[tuple[Statement, float]] = []

        def attempt(conn: psycopg.Connection[Any], n: int) -> list[tuple[Statement, float]]:
            if n > 0 and self.recorded(conn, migration):
                self.run.rl.say(f"  {migration.id} was committed before the connection was lost")
                return timings
            timings.clear()
            t0 = time.perf_counter()
            self.run.session.begin(conn)
            run_statements(conn, migration.statements, migration.path, timings=timings)
            self.record(conn, migration, execution_ms=int((time.perf_counter() - t0) * 1000), mode=self.run.mode)
            self.run.session.commit(conn)
            return timings

        try:
            return self.run.session.retrying(migration.id, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            raise self.migration_failed(migration, exc) from None

    def migrate_single(self) -> None:
        pending = self.run.pending
        for migration in pending:
            self.run.run_hooks("pre_migration", migration)
        self.run.rl.say(f"applying {len(pending)} migrations in a single transaction ...")
        current: dict[str, Migration] = {}

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            if n > 0 and all(self.recorded(conn, m) for m in pending):
                return
            self.run.session.begin(conn)
            for number, migration in enumerate(pending, 1):
                current["m"] = migration
                t0 = time.perf_counter()
                run_statements(conn, migration.statements, migration.path)
                self.record(conn, migration, execution_ms=int((time.perf_counter() - t0) * 1000), mode=self.run.mode)
                self.run.rl.say(f"[{number}/{len(pending)}] {migration.id} ran ({_plural(len(migration.statements), 'statement')})")
            self.run.session.commit(conn)

        with self.run.rl.phase("migration:single", migrations=[m.id for m in pending]):
            try:
                self.run.session.retrying("the single transaction", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                failed = current.get("m", pending[0])
                raise self.migration_failed(
                    failed, exc, partial=" and the single transaction was rolled back; none of the migrations remain"
                ) from None
        self.run.applied_now.extend(pending)
        self.run.result.applied.extend(m.id for m in pending)
        self.run.rl.say(f"committed {len(pending)} migrations")
        for migration in pending:
            self.run.run_hooks("post_migration", migration)

    @staticmethod
    def progress(conn: psycopg.Connection[Any], migration: Migration) -> int:
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
    def index_name(statement: Statement) -> str | None:
        node = statement.node
        if type(node).__name__ != "IndexStmt" or not getattr(node, "concurrent", False) or not node.idxname:
            return None
        schema = getattr(node.relation, "schemaname", None)
        name = '"' + node.idxname.replace('"', '""') + '"'
        return f'"{schema}".{name}' if schema else name

    @staticmethod
    def index_state(conn: psycopg.Connection[Any], name: str) -> tuple[str, bool] | None:
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
    def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
        try:
            rows = conn.execute(
                "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE NOT i.indisvalid AND n.nspname !~ '^pg_' ORDER BY 1"
            ).fetchall()
        except psycopg.Error:
            return []
        return [r[0] for r in rows]

    def apply_nontransactional(self, migration: Migration) -> list[tuple[Statement, float]]:
        """A migration that cannot run in one transaction: unit by unit, progress recorded after each.

        Without batched statements every statement is a unit of its own.  With
        them (``-- harness:batch``) the statements before a batched
        one run in one transaction (unless the layout declares the migration
        non-transactional), then the batches, each in its own transaction,
        then the rest: the progress row of a group or a batch commits with it,
        so a re-run resumes exactly where the last commit left off.
        """
        rl = self.run.rl
        conn = self.run.session.live()
        done = self.progress(conn, migration)
        if self.run.completed_unrecorded and self.run.completed_unrecorded[0] == migration.version:
            done = max(done, self.run.completed_unrecorded[1])
            self.run.session.retrying(f"recording progress of {migration.id}", lambda c, n: self.mark(c, migration, done))
        statements = migration.statements
        if done >= 0:
            rl.say(f"  resuming {migration.id}: statements 1-{done + 1} of {len(statements)} were completed by an earlier run")
            rl.event("resume", migration=migration.id, completed=done + 1)
        for batched in migration.batches:
            # Check keys up front when the table exists (a statement before may create it): fail before any change.
            resolve_target(conn, batched, missing_ok=True)
        timings: list[tuple[Statement, float]] = []
        for first, last, spec in units(migration):
            if last <= done:
                continue
            first = max(first, done + 1)
            if spec is not None:
                self.apply_batched(migration, spec, timings)
            elif migration.batches and not migration.no_transaction:
                self.apply_group(migration, first, last, timings)
            else:
                self.apply_one(migration, first, timings)

        def finish(c: psycopg.Connection[Any], n: int) -> None:
            c.execute("RESET lock_timeout")
            c.execute("RESET statement_timeout")
            if n > 0 and self.recorded(c, migration):
                return
            with c.transaction():
                self.run.session.verify_lock(c, rollback=False)
                self.record(c, migration, execution_ms=int(sum(s for _, s in timings) * 1000), mode=self.run.mode)
                c.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_PROGRESS), [migration.version])
                if migration.batches:
                    c.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_BATCH_PROGRESS), [migration.version])

        self.run.session.retrying(f"recording {migration.id}", finish)
        return timings

    def mark(self, c: psycopg.Connection[Any], migration: Migration, index: int) -> None:
        """Record statement *index* of *migration* as completed (in the caller's transaction, if any)."""
        c.execute(
            sql.SQL("INSERT INTO {} (version, checksum, statement_index, line) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (version, statement_index) DO NOTHING").format(_PROGRESS),
            [migration.version, migration.checksum, index, migration.statements[index].line],
        )

    def apply_one(self, migration: Migration, index: int, timings: list[tuple[Statement, float]]) -> None:
        """One statement on its own, with session timeouts; its progress row afterwards."""
        rl = self.run.rl
        statements = migration.statements
        statement = statements[index]
        index_name = self.index_name(statement)
        existed = None
        if index_name:
            existed = self.index_state(self.run.session.live(), index_name)
            if existed is not None and not existed[1]:
                raise GuardError(
                    f"{relpath(migration.path)}:{statement.line}: index {existed[0]} exists but is INVALID, left "
                    "by an interrupted CREATE INDEX CONCURRENTLY; it is not used by queries but slows down "
                    f"writes. Drop it, then run apply again:\n    DROP INDEX CONCURRENTLY IF EXISTS {existed[0]};"
                )

        def attempt(c: psycopg.Connection[Any], n: int, statement: Statement = statement,
                    index_name: str | None = index_name, existed: Any = existed) -> None:
            if n > 0 and index_name and existed is None:
                state = self.index_state(c, index_name)
                if state is not None and not state[1]:
                    # Our own failed try left it: drop it so the retry builds it afresh.
                    rl.say(f"  dropping the invalid index {state[0]} left by the failed try")
                    c.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(state[0])))
            self.run.session.set_timeouts(c, "SESSION")
            self.run.session.verify_lock(c)
            run_statements(c, [statement], migration.path, timings=timings)

        what = f"{migration.id} statement {index + 1}/{len(statements)}"
        try:
            self.run.session.retrying(what, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            invalid = self.invalid_indexes(self.run.session.live())
            partial = (
                f" at statement {index + 1} of {len(statements)}; statements 1-{index} are done and recorded in "
                f"{history.SCHEMA}.{PROGRESS_TABLE}, so a re-run resumes at statement {index + 1}"
                if index
                else " at its first statement (it runs statement by statement, so nothing was rolled back, but nothing had run)"
            )
            error = self.migration_failed(migration, exc, partial=partial)
            if invalid:
                drops = "\n".join(f"    DROP INDEX CONCURRENTLY IF EXISTS {name};" for name in invalid)
                error = MigrationError(f"{error}\nINVALID indexes were left behind; drop them before re-running:\n{drops}")
            raise error from None
        except MigrationError as exc:
            invalid = self.invalid_indexes(self.run.session.live())
            if invalid:
                drops = "\n".join(f"    DROP INDEX CONCURRENTLY IF EXISTS {name};" for name in invalid)
                raise MigrationError(f"{exc}\nINVALID indexes were left behind; drop them before re-running:\n{drops}") from None
            raise

        self.run.session.retrying(f"recording progress of {what}", lambda c, n: self.mark(c, migration, index))
        rl.say(f"  statement {index + 1}/{len(statements)} done (line {statement.line})")

    def apply_group(self, migration: Migration, first: int, last: int, timings: list[tuple[Statement, float]]) -> None:
        """Statements *first*..*last* in one transaction, with their progress row: all of them or none."""
        statements = migration.statements
        what = (f"{migration.id} statement {first + 1}/{len(statements)}" if first == last
                else f"{migration.id} statements {first + 1}-{last + 1}/{len(statements)}")

        def attempt(c: psycopg.Connection[Any], n: int) -> None:
            done: list[tuple[Statement, float]] = []
            self.run.session.begin(c)
            run_statements(c, statements[first:last + 1], migration.path, timings=done)
            self.mark(c, migration, last)
            self.run.session.commit(c)
            timings.extend(done)

        try:
            self.run.session.retrying(what, attempt)
        except (StatementFailed, psycopg.Error) as exc:
            partial = (f" in statements {first + 1}-{last + 1}, which ran in one transaction and were rolled back"
                       + (f"; statements 1-{first} are done and recorded in {history.SCHEMA}.{PROGRESS_TABLE}, so a "
                          f"re-run resumes at statement {first + 1}" if first else "; nothing of it remains"))
            raise self.migration_failed(migration, exc, partial=partial) from None
        self.run.rl.say(f"  {what.split(' ', 1)[1]} done in one transaction (lines {statements[first].line}-"
                    f"{statements[last].line})")

    def batch_state(self, conn: psycopg.Connection[Any], migration: Migration, spec: BatchSpec) -> BatchState:
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

    def apply_batched(self, migration: Migration, spec: BatchSpec, timings: list[tuple[Statement, float]]) -> None:
        """A ``-- harness:batch`` statement: key-range batches, each in its own short transaction.

        Each batch runs with the plan's ``SET LOCAL`` timeouts and writes its
        progress row (last key, rows, batches) in the same transaction, so an
        interrupted run resumes after the last committed batch, and a batch
        that hits a lock timeout is retried like a migration.
        """
        rl = self.run.rl
        conn = self.run.session.live()
        target = resolve_target(conn, spec)
        assert target is not None
        state = self.batch_state(conn, migration, spec)
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
            self.run.session.begin(c)
            # After a lost connection the COMMIT may have happened: the progress row says.
            current = self.batch_state(c, migration, spec) if n > 0 else state
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
            self.run.session.commit(c)
            return after, False

        while True:
            try:
                state, finished = self.run.session.retrying(f"{label} batch {state.batches + 1}", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                partial = (
                    f" in batch {state.batches + 1} of the batched statement at line {spec.statement_line}, which was "
                    "rolled back; "
                    + (f"{_batches(state.batches)} ({state.rows} rows, {spec.key} <= {state.last_key}) are "
                       f"committed and recorded in {history.SCHEMA}.{BATCH_PROGRESS_TABLE}, so a re-run resumes "
                       "after them" if state.batches else "no batch of it was committed")
                )
                raise self.migration_failed(migration, exc, partial=partial) from None
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
        self.run.session.retrying(f"recording progress of {label}", lambda c, n: self.finish_batched(c, migration, spec))
        timings.append((migration.statements[spec.index], seconds))
        rl.say(f"  {label}: done: {_batches(state.batches)}, {state.rows} rows in {_seconds(seconds)}")
        rl.event("batched", migration=migration.id, line=spec.statement_line, batches=state.batches, rows=state.rows,
                 seconds=round(seconds, 4))

    def finish_batched(self, c: psycopg.Connection[Any], migration: Migration, spec: BatchSpec) -> None:
        with c.transaction():
            self.run.session.verify_lock(c, rollback=False)
            self.mark(c, migration, spec.index)
            c.execute(sql.SQL("DELETE FROM {} WHERE version = %s AND statement_index = %s").format(_BATCH_PROGRESS),
                      [migration.version, spec.index])

    def record_baseline(self) -> None:
        """Record the baseline migrations as applied (mode ``baseline``), in one transaction."""
        baselined = self.run.baselined

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            with conn.transaction():
                self.run.session.verify_lock(conn, rollback=False)
                recorded = {r.version for r in history.read_applied(conn)}
                for migration in baselined:
                    if migration.version not in recorded:
                        self.record(conn, migration, execution_ms=0, mode="baseline")

        self.run.session.retrying("recording the baseline", attempt)
        self.run.result.baselined = [m.id for m in baselined]
        self.run.rl.say(f"baseline: recorded {_plural(len(baselined), 'migration')} up to {baselined[-1].id} as applied "
                    "(mode baseline); they were not run")
        self.run.rl.event("baseline", migrations=self.run.result.baselined)

    def prepare_tables(self) -> None:
        """Create the harness's bookkeeping tables up front, so a backup already holds them."""
        conn = self.run.session.live()
        history.ensure_table(conn)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [_PROGRESS.regclass()]).fetchone()
        if not (exists and exists[0]):
            with conn.transaction():
                conn.execute(_CREATE_PROGRESS)
        if any(m.batches for m in self.run.pending):
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [_BATCH_PROGRESS.regclass()]
            ).fetchone()
            if not (exists and exists[0]):
                with conn.transaction():
                    conn.execute(_CREATE_BATCH_PROGRESS)

    def run_unit(self, unit: Unit, migration: Migration) -> None:
        """Run *unit*'s actions as one retry unit: a lock timeout, deadlock or lost connection runs them again.

        A retry of a unit that removes the history row first checks that the
        row is still there (a lost ``COMMIT`` may have happened).
        """
        run = self.run

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            if n > 0 and unit.forgets and not any(r.version == migration.version for r in history.read_applied(conn)):
                run.rl.say(f"  {migration.id} was removed before the connection was lost")
                return
            for action in unit.actions:
                action.execute(self, conn)

        run.session.retrying(unit.what, attempt)
