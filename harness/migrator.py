"""The migrator: run pending migrations (and downs) on the target as units that execute or describe themselves.

A migration runs in one transaction (its statements, its history row and
the mirrored tool's row together), or, when it cannot, unit by unit
(:func:`units`): statement by statement with session timeouts, or runs of
statements in one transaction around key-range batches
(``-- harness:batch``), each unit committing its progress row
(``harness.apply_progress``, ``harness.batch_progress``) so that a re-run
resumes after the last commit.  Every transaction proves that the run
still holds its lock (:meth:`harness.apply_session.Session.verify_lock`)
after ``BEGIN`` and before ``COMMIT``.

How each migration runs is data: :func:`up_units`, :func:`single_parts`
and :func:`down_units` build :class:`Unit` objects of actions (the frame's
``BEGIN`` / ``SET LOCAL`` / ``COMMIT``, the lock proof, the statements,
the history and progress rows).  :class:`Migrator` executes them, with
retries; the dry runs of apply and rollback print their
:meth:`Action.describe` lines, as alembic's offline mode renders the same
migration code as SQL, so what is printed is what runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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

__all__ = [
    "Migrator", "units", "up_units", "single_parts", "single_unit", "down_units", "strategy", "Unit", "Action",
    "BATCH_REPORT_EVERY",
]

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
# Units that execute or describe themselves: the run executes them, the dry run prints them (alembic's
# offline mode renders the same migration code as SQL), so the two cannot drift apart.


class Action(Protocol):
    """One part of a unit: a statement of its frame, a lock proof, migration statements, a history or progress row."""

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        """Run it on *conn*, inside the unit's retry."""

    def describe(self) -> list[str]:
        """What :meth:`execute` runs, as lines (SQL, or a comment for what is not plain SQL)."""


@dataclass(frozen=True)
class SqlAction:
    """``BEGIN``, ``SET LOCAL ...``, ``COMMIT``, ``RESET ...``: fixed statements around the migration's own."""

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
    """Statements of a migration file (an up or a down), with their timings kept for the history row and the log."""

    statements: tuple[Statement, ...]
    path: Path
    first: int  # 0-based index of the first one in the file
    total: int

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        run_statements(conn, self.statements, self.path, timings=migrator.attempt_timings(self.path))

    def describe(self) -> list[str]:
        lines = []
        for number, statement in enumerate(self.statements, self.first + 1):
            lines.append(f"-- statement {number}/{self.total}, {relpath(self.path)}:{statement.line}:{statement.column}")
            lines.extend((statement.sql.strip() + ";").splitlines())
        return lines


@dataclass(frozen=True)
class Record:
    """Record the migration as applied: our history row, and with ``history.mirror`` the other tool's."""

    migration: Migration
    mirror: str | None  # the mirrored tool's table as shown ("goose's goose_db_version"), when the plan keeps one
    announce: str | None = None  # a console line once recorded (the single transaction's per-migration progress)

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        migrator.record(conn, self.migration, execution_ms=migrator.elapsed_ms(self.migration.path),
                        mode=migrator.run.mode)
        if self.announce:
            migrator.run.rl.say(self.announce)

    def describe(self) -> list[str]:
        also = f" and {self.mirror} (history.mirror)" if self.mirror else ""
        return [f"-- record {self.migration.id} in {history.history_schema()}.{history.TABLE}{also} (same transaction)"]


@dataclass(frozen=True)
class MarkDone:
    """Record statement *index* (and so every one before it) as completed in the progress table."""

    migration: Migration
    index: int
    in_transaction: bool

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        migrator.mark(conn, self.migration, self.index)

    def describe(self) -> list[str]:
        done = f"statements 1-{self.index + 1}" if self.index else "statement 1"
        return [f"-- record {done} of {self.migration.id} as completed in {history.history_schema()}.{PROGRESS_TABLE}"
                + (" (same transaction)" if self.in_transaction else "")]


@dataclass(frozen=True)
class ClearProgress:
    """Delete the progress rows of a migration (*index* ``None``) or of its batched statement *index*."""

    migration: Migration
    index: int | None = None

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        version = self.migration.version
        if self.index is not None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s AND statement_index = %s").format(_BATCH_PROGRESS),
                         [version, self.index])
            return
        conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_PROGRESS), [version])
        if self.migration.batches:
            conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(_BATCH_PROGRESS), [version])

    def describe(self) -> list[str]:
        if self.index is not None:
            return [f"-- delete its row from {history.history_schema()}.{BATCH_PROGRESS_TABLE} (same transaction)"]
        tables = f"{history.history_schema()}.{PROGRESS_TABLE}" + (
            f" and {history.history_schema()}.{BATCH_PROGRESS_TABLE}" if self.migration.batches else "")
        return [f"-- delete {self.migration.id}'s rows from {tables} (same transaction)"]


@dataclass(frozen=True)
class Batches:
    """A ``-- harness:batch`` statement: key-range batches, each in the frame *opening* ... *closing*."""

    migration: Migration
    spec: BatchSpec
    opening: tuple[Action, ...]
    closing: tuple[Action, ...]

    def execute(self, migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
        migrator.apply_batched(self)

    def describe(self) -> list[str]:
        spec = self.spec
        lines = [
            f"-- batched, {relpath(self.migration.path)}:{spec.statement_line}: {spec.describe()}",
            f"--   the next upper key: SELECT {spec.key} FROM {spec.table_name} WHERE {spec.key} > <last key> "
            f"ORDER BY {spec.key} OFFSET {spec.size - 1} LIMIT 1 (else the greatest key); then per batch:",
        ]
        lines += [line for action in self.opening for line in action.describe()]
        lines += (spec.first_sql + ";  -- the first batch: $1 = its upper key").splitlines()
        lines += (spec.next_sql + ";  -- the others: $1 = the last key done, $2 = the upper key").splitlines()
        lines.append(f"-- record the last key done in {history.history_schema()}.{BATCH_PROGRESS_TABLE} (same transaction)")
        lines += [line for action in self.closing for line in action.describe()]
        if spec.pause:
            lines.append(f"-- then wait {_seconds(spec.pause)} before the next batch")
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
        return [f"-- delete {self.migration.id} from {history.history_schema()}.{history.TABLE}{also} (same transaction)"]


@dataclass(frozen=True)
class Unit:
    """Actions run as one retry unit: a lock timeout, deadlock or lost connection runs them again."""

    what: str
    actions: tuple[Action, ...]
    forgets: bool  # the unit removes the history row: a retry after a lost COMMIT first checks it is still there
    #: The migrations whose history rows the unit writes: a retry after a lost COMMIT first checks they are not there.
    records: tuple[Migration, ...] = ()
    #: What the unit runs of an up migration: ``migration`` (all of it), ``group`` (statements in one
    #: transaction), ``statement`` (one, on its own) and ``progress`` (its progress row), ``batched`` (each batch
    #: retried by itself) and ``batch_done``, ``reset`` or ``finish`` (the history row); ``down`` for a down's units.
    kind: str = "down"
    first: int = -1  # the statements of the file it runs, first and last (0-based; -1: none)
    last: int = -1

    def describe(self) -> list[str]:
        """The lines of its actions, in order."""
        return [line for action in self.actions for line in action.describe()]


# -- the frames of the units, decided here once (the plan's timeouts come from apply_session.timeout_settings)

_BEGIN, _COMMIT = SqlAction(sql.SQL("BEGIN")), SqlAction(sql.SQL("COMMIT"))


def opening(guards: Any) -> tuple[Action, ...]:
    """How a transaction that changes the target starts: ``BEGIN``, the ``SET LOCAL`` timeouts, the lock proof."""
    return (_BEGIN, *map(SqlAction, timeout_settings(guards, "LOCAL")), ProveLock())


def closing() -> tuple[Action, ...]:
    """How it ends: the lock proof, then ``COMMIT``."""
    return (ProveLock(), _COMMIT)


def bookkeeping(*actions: Action) -> tuple[Action, ...]:
    """A transaction of history and progress rows only: the session's own timeouts, the lock proof at both ends."""
    return (_BEGIN, ProveLock(), *actions, *closing())


def on_its_own(guards: Any) -> tuple[Action, ...]:
    """Before a statement that commits on its own: the plan's timeouts for the session, the lock proof."""
    return (*map(SqlAction, timeout_settings(guards, "SESSION")), ProveLock())


def resetting() -> tuple[Action, ...]:
    """Back to the session's own timeouts after :func:`on_its_own`."""
    return tuple(map(SqlAction, reset_timeouts()))


def strategy(migration: Migration) -> str:
    """How *migration* runs, in words (the console line of the run and the dry run's header)."""
    if migration.transactional:
        return "in one transaction"
    if migration.batches:
        return "with batched statements"
    return "statement by statement (non-transactional)"


def up_units(migration: Migration, guards: Any, mirror: str | None, *, done: int = -1) -> list[Unit]:
    """How *migration* runs when it has a transaction of its own: the units, in order.

    A transactional migration is one unit: its statements and its history
    row commit together.  Otherwise the migration runs by :func:`units`
    after statement *done* (0-based, the last one an earlier run
    completed): a statement on its own with session timeouts, then its
    progress row; runs of statements in one transaction with their progress
    row; a batched statement batch by batch; and last the history row.
    """
    statements = tuple(migration.statements)
    total = len(statements)
    path = migration.path
    if migration.transactional:
        return [Unit(migration.id,
                     (*opening(guards), Statements(statements, path, 0, total), Record(migration, mirror), *closing()),
                     forgets=False, records=(migration,), kind="migration", first=0, last=total - 1)]
    result: list[Unit] = []
    grouped = bool(migration.batches) and not migration.no_transaction
    for first, last, spec in units(migration):
        if last <= done:
            continue
        first = max(first, done + 1)
        label = (f"{migration.id} statement {first + 1}/{total}" if first == last
                 else f"{migration.id} statements {first + 1}-{last + 1}/{total}")
        if spec is not None:
            label = f"{relpath(path)}:{spec.statement_line}"
            result.append(Unit(label, (Batches(migration, spec, opening(guards), closing()),), forgets=False,
                               kind="batched", first=first, last=last))
            result.append(Unit(f"recording progress of {label}",
                               bookkeeping(MarkDone(migration, spec.index, True), ClearProgress(migration, spec.index)),
                               forgets=False, kind="batch_done", first=first, last=last))
        elif grouped:
            result.append(Unit(label, (*opening(guards), Statements(statements[first:last + 1], path, first, total),
                                       MarkDone(migration, last, True), *closing()),
                               forgets=False, kind="group", first=first, last=last))
        else:
            result.append(Unit(label, (*on_its_own(guards), Statements(statements[first:first + 1], path, first, total)),
                               forgets=False, kind="statement", first=first, last=first))
            result.append(Unit(f"recording progress of {label}", (MarkDone(migration, first, False),),
                               forgets=False, kind="progress", first=first, last=first))
    result.append(Unit(f"resetting the timeouts after {migration.id}", resetting(), forgets=False, kind="reset"))
    result.append(Unit(f"recording {migration.id}", bookkeeping(Record(migration, mirror), ClearProgress(migration)),
                       forgets=False, records=(migration,), kind="finish"))
    return result


def single_parts(pending: list[Migration], guards: Any, mirror: str | None
                 ) -> tuple[tuple[Action, ...], list[tuple[Migration, tuple[Action, ...]]], tuple[Action, ...]]:
    """``guards.transaction: single``: the opening, each migration's part, the closing of the one transaction."""
    total = len(pending)
    parts: list[tuple[Migration, tuple[Action, ...]]] = [
        (m, (Statements(tuple(m.statements), m.path, 0, len(m.statements)),
             Record(m, mirror, announce=f"[{n}/{total}] {m.id} ran ({_plural(len(m.statements), 'statement')})")))
        for n, m in enumerate(pending, 1)
    ]
    return opening(guards), parts, closing()


def single_unit(pending: list[Migration], guards: Any, mirror: str | None) -> Unit:
    """Every pending migration in one transaction (:func:`single_parts` in order), as one retry unit."""
    begin, parts, end = single_parts(pending, guards, mirror)
    return Unit("the single transaction", (*begin, *(a for _, actions in parts for a in actions), *end),
                forgets=False, records=tuple(pending), kind="migration")


def down_units(migration: Migration, guards: Any, mirror: str | None) -> list[Unit]:
    """How the down of *migration* runs: one transaction, or statement by statement then the history row."""
    assert migration.down_statements is not None and migration.down_path is not None
    forget = Forget(migration, mirror)
    statements = tuple(migration.down_statements)
    path = migration.down_path
    total = len(statements)
    if migration.down_transactional:
        return [Unit(f"down of {migration.id}",
                     (*opening(guards), Statements(statements, path, 0, total), forget, *closing()), forgets=True)]
    # Non-transactional (CREATE INDEX CONCURRENTLY..., or declared so by the layout): each statement commits on
    # its own with session timeouts; the history row goes last, in a transaction of its own.
    units = [
        Unit(f"down of {migration.id} statement {index + 1}/{total}",
             (*on_its_own(guards), Statements(statements[index:index + 1], path, index, total)), forgets=False)
        for index in range(total)
    ]
    units.append(Unit(f"removing {migration.id} from the history", (*resetting(), *bookkeeping(forget)), forgets=True))
    return units


class Migrator:
    """Runs the pending migrations of a run (:class:`~harness.apply_context.RunContext`) and records them."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        # Statement timings by file: those of committed units, and those of the unit being tried.
        self._timings: dict[Path, list[tuple[Statement, float]]] = {}
        self._attempt: dict[Path, list[tuple[Statement, float]]] = {}

    @property
    def mirror(self) -> str | None:
        """The mirrored tool's history table as the dry run shows it, when the plan keeps one in step."""
        m = self.run.mirror
        return f"{m.tool}'s {m.spec.table}" if m is not None else None

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
            self.run.rl.say(f"[{number}/{total}] {migration.id} ({_plural(len(migration.statements), 'statement')}, "
                            f"{strategy(migration)}) ...")
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

    # -- timings of the statements, for the history row's execution_ms and the log

    def attempt_timings(self, path: Path) -> list[tuple[Statement, float]]:
        """Where :class:`Statements` of *path* put their timings in the unit being tried."""
        return self._attempt.setdefault(path, [])

    def elapsed_ms(self, path: Path) -> int:
        """Milliseconds the statements of *path* took so far (committed units and the unit being tried)."""
        timings = [*self._timings.get(path, ()), *self._attempt.get(path, ())]
        return int(sum(seconds for _, seconds in timings) * 1000)

    def take_timings(self, path: Path) -> list[tuple[Statement, float]]:
        """The timings of *path*'s statements in committed units, forgotten here."""
        return self._timings.pop(path, [])

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
        """A migration in one transaction with its history row (:func:`up_units`)."""
        (unit,) = up_units(migration, self.run.guards, self.mirror)
        try:
            self.run_unit(unit, migration)
        except (StatementFailed, psycopg.Error) as exc:
            raise self.migration_failed(migration, exc) from None
        return self.take_timings(migration.path)

    def migrate_single(self) -> None:
        pending = self.run.pending
        for migration in pending:
            self.run.run_hooks("pre_migration", migration)
        self.run.rl.say(f"applying {len(pending)} migrations in a single transaction ...")
        unit = single_unit(pending, self.run.guards, self.mirror)
        with self.run.rl.phase("migration:single", migrations=[m.id for m in pending]):
            try:
                self.run_unit(unit, pending[0])
            except (StatementFailed, psycopg.Error) as exc:
                ran = {path for path in self._attempt}
                failed = next((m for m in reversed(pending) if m.path in ran), pending[0])
                raise self.migration_failed(
                    failed, exc, partial=" and the single transaction was rolled back; none of the migrations remain"
                ) from None
        for migration in pending:
            self.take_timings(migration.path)
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
                f"by hand and then delete its rows: DELETE FROM {history.history_schema()}.{PROGRESS_TABLE} WHERE version = "
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
        """A migration that cannot run in one transaction: unit by unit (:func:`up_units`), progress after each.

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
        for unit in up_units(migration, self.run.guards, self.mirror, done=done):
            if unit.kind == "statement":
                self.apply_one(unit, migration)
            elif unit.kind == "group":
                self.apply_group(unit, migration)
            else:
                self.run_unit(unit, migration)
                if unit.kind == "progress":
                    rl.say(f"  statement {unit.first + 1}/{len(statements)} done (line {statements[unit.first].line})")
        return self.take_timings(migration.path)

    def mark(self, c: psycopg.Connection[Any], migration: Migration, index: int) -> None:
        """Record statement *index* of *migration* as completed (in the caller's transaction, if any)."""
        c.execute(
            sql.SQL("INSERT INTO {} (version, checksum, statement_index, line) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (version, statement_index) DO NOTHING").format(_PROGRESS),
            [migration.version, migration.checksum, index, migration.statements[index].line],
        )

    def apply_one(self, unit: Unit, migration: Migration) -> None:
        """One statement on its own, with session timeouts (its progress row is the next unit)."""
        rl = self.run.rl
        statements = migration.statements
        index = unit.first
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

        def before_retry(c: psycopg.Connection[Any]) -> None:
            if index_name and existed is None:
                state = self.index_state(c, index_name)
                if state is not None and not state[1]:
                    # Our own failed try left it: drop it so the retry builds it afresh.
                    rl.say(f"  dropping the invalid index {state[0]} left by the failed try")
                    c.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(state[0])))

        try:
            self.run_unit(unit, migration, before_retry=before_retry)
        except (StatementFailed, psycopg.Error) as exc:
            invalid = self.invalid_indexes(self.run.session.live())
            partial = (
                f" at statement {index + 1} of {len(statements)}; statements 1-{index} are done and recorded in "
                f"{history.history_schema()}.{PROGRESS_TABLE}, so a re-run resumes at statement {index + 1}"
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

    def apply_group(self, unit: Unit, migration: Migration) -> None:
        """Statements in one transaction, with their progress row: all of them or none."""
        statements = migration.statements
        first, last = unit.first, unit.last
        try:
            self.run_unit(unit, migration)
        except (StatementFailed, psycopg.Error) as exc:
            partial = (f" in statements {first + 1}-{last + 1}, which ran in one transaction and were rolled back"
                       + (f"; statements 1-{first} are done and recorded in {history.history_schema()}.{PROGRESS_TABLE}, so a "
                          f"re-run resumes at statement {first + 1}" if first else "; nothing of it remains"))
            raise self.migration_failed(migration, exc, partial=partial) from None
        self.run.rl.say(f"  {unit.what.split(' ', 1)[1]} done in one transaction (lines {statements[first].line}-"
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
                f"by hand and then delete its row: DELETE FROM {history.history_schema()}.{BATCH_PROGRESS_TABLE} WHERE version = "
                f"'{migration.version}';"
            )
        return BatchState(row[1], int(row[2]), int(row[3]))

    def apply_batched(self, batches: Batches) -> None:
        """A ``-- harness:batch`` statement: key-range batches, each in its own short transaction.

        Each batch runs in the frame of :class:`Batches` (the plan's ``SET
        LOCAL`` timeouts, the lock proof) and writes its progress row (last
        key, rows, batches) in the same transaction, so an interrupted run
        resumes after the last committed batch, and a batch that hits a lock
        timeout is retried like a migration.
        """
        migration, spec = batches.migration, batches.spec
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
            for action in batches.opening:
                action.execute(self, c)
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
            for action in batches.closing:
                action.execute(self, c)
            return after, False

        while True:
            try:
                state, finished = self.run.session.retrying(f"{label} batch {state.batches + 1}", attempt)
            except (StatementFailed, psycopg.Error) as exc:
                partial = (
                    f" in batch {state.batches + 1} of the batched statement at line {spec.statement_line}, which was "
                    "rolled back; "
                    + (f"{_batches(state.batches)} ({state.rows} rows, {spec.key} <= {state.last_key}) are "
                       f"committed and recorded in {history.history_schema()}.{BATCH_PROGRESS_TABLE}, so a re-run resumes "
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
        self._timings.setdefault(migration.path, []).append((migration.statements[spec.index], seconds))
        rl.say(f"  {label}: done: {_batches(state.batches)}, {state.rows} rows in {_seconds(seconds)}")
        rl.event("batched", migration=migration.id, line=spec.statement_line, batches=state.batches, rows=state.rows,
                 seconds=round(seconds, 4))

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

    def run_unit(self, unit: Unit, migration: Migration,
                 before_retry: Callable[[psycopg.Connection[Any]], None] | None = None) -> None:
        """Run *unit*'s actions as one retry unit: a lock timeout, deadlock or lost connection runs them again.

        A retry of a unit that writes or removes history rows first checks
        that they are not already written, or still there (a lost ``COMMIT``
        may have happened).  A batched unit retries each batch by itself.
        """
        run = self.run
        if unit.kind == "batched":
            for action in unit.actions:
                action.execute(self, run.session.live())
            return

        def attempt(conn: psycopg.Connection[Any], n: int) -> None:
            self._attempt = {}
            if n > 0 and unit.forgets and not any(r.version == migration.version for r in history.read_applied(conn)):
                run.rl.say(f"  {migration.id} was removed before the connection was lost")
                return
            if n > 0 and unit.records and all(self.recorded(conn, m) for m in unit.records):
                were = "was" if len(unit.records) == 1 else "were"
                run.rl.say(f"  {', '.join(m.id for m in unit.records)} {were} committed before the connection was lost")
                return
            if n > 0 and before_retry is not None:
                before_retry(conn)
            for action in unit.actions:
                action.execute(self, conn)

        run.session.retrying(unit.what, attempt)
        for path, timings in self._attempt.items():
            self._timings.setdefault(path, []).extend(timings)
        self._attempt = {}
