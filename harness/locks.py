"""Measured safety: the locks and rewrites PostgreSQL actually performs for a migration.

:func:`run_measured` runs a migration's statements one at a time and, after
each, asks the server which relation locks its own backend holds
(``pg_locks`` for ``pg_backend_pid()``), the storage file of every locked
relation (``pg_class.relfilenode``: a new one means the relation was
rewritten) and its sequential-scan counter (a full read of the table: a
scan, an index build or a constraint validation).  Only relations that
existed before the migration are reported; a migration's own new tables are
nobody else's problem.

Inside a transaction a lock taken by statement *k* is held until commit, so
statements *k+1..n* also run while holding it; :meth:`LockReport.holds`
adds their durations up.  Outside a transaction (a migration PostgreSQL
refuses to run in one) every statement is its own transaction: statements
that may run in a transaction block are wrapped in ``BEGIN``/``COMMIT`` to
be measured exactly the same way, and the others (``CREATE INDEX
CONCURRENTLY``, ``VACUUM``, ...) are *sampled* from a second connection
while they run.  The concurrent index builds wait, before they finish, for
every transaction with an older snapshot; the sampler holds one, so it sees
them with all their locks before letting them go.  Other sampled statements
may hold a lock for less time than one poll takes: such a lock is missed,
and the report says "sampled".

The PostgreSQL lock conflict table (docs: "Explicit Locking", table
"Conflicting Lock Modes") decides what a mode blocks: a mode *blocks
writes* when it conflicts with ROW EXCLUSIVE (``INSERT``/``UPDATE``/
``DELETE``) and *blocks reads* when it conflicts with ACCESS SHARE
(``SELECT``).

Nothing here starts a server; a second connection is opened only through
the factory the caller passes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from .errors import HarnessError
from .execute import run_statements
from .migration import Statement

if TYPE_CHECKING:
    from .plan import LockPolicy
    from .snapshot import Snapshot

__all__ = [
    "LOCK_MODES",
    "WRITE_BLOCKING_MODES",
    "CONFLICTS",
    "blocks",
    "RelationLock",
    "StatementLocks",
    "Hold",
    "LockReport",
    "Verdict",
    "pre_existing_relations",
    "run_measured",
    "server_functions_sql",
    "judge",
]

log = logging.getLogger(__name__)

#: Table-level lock modes, weakest first, in SQL spelling (``LOCK ... IN <mode> MODE``).
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
_RANK = {mode: rank for rank, mode in enumerate(LOCK_MODES)}
# pg_locks.mode spells them the way the lock manager does.
_FROM_PG = {"".join(w.title() for w in mode.split()) + "Lock": mode for mode in LOCK_MODES}

#: PostgreSQL's conflict table, row by row as documented.
CONFLICTS: dict[str, frozenset[str]] = {
    "ACCESS SHARE": frozenset({"ACCESS EXCLUSIVE"}),
    "ROW SHARE": frozenset({"EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "ROW EXCLUSIVE": frozenset({"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "SHARE UPDATE EXCLUSIVE": frozenset(
        {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}
    ),
    "SHARE": frozenset(
        {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}
    ),
    "SHARE ROW EXCLUSIVE": frozenset(
        {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}
    ),
    "EXCLUSIVE": frozenset(LOCK_MODES[1:]),
    "ACCESS EXCLUSIVE": frozenset(LOCK_MODES),
}

#: Modes that block writes (they conflict with the ROW EXCLUSIVE lock of INSERT/UPDATE/DELETE).
WRITE_BLOCKING_MODES = tuple(m for m in LOCK_MODES if "ROW EXCLUSIVE" in CONFLICTS[m])


def blocks(mode: str) -> tuple[str, ...]:
    """What other sessions cannot do on a relation held in *mode*: ``("reads", "writes")``, ``("writes",)``, ``()``."""
    conflicts = CONFLICTS[mode]
    return tuple(
        what for what, by in (("reads", "ACCESS SHARE"), ("writes", "ROW EXCLUSIVE")) if by in conflicts
    )


def _strongest(modes: Collection[str]) -> str | None:
    return max(modes, key=_RANK.__getitem__) if modes else None


# --------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class RelationLock:
    """What one statement did to one pre-existing relation."""

    relation: str  # the name it had before the migration, quote_ident-qualified
    kind: str  # "table" or "index"
    modes: tuple[str, ...]  # every mode held on it while the statement ran, weakest first
    new_modes: tuple[str, ...]  # those of *modes* this statement took (the rest were held already)
    rewritten: bool  # its storage (relfilenode) was replaced
    scanned: bool | None  # read in full (tables only; None: not known)
    dropped: bool = False

    @property
    def mode(self) -> str | None:
        """The strongest mode held (what decides who is blocked), or None when no lock was seen."""
        return _strongest(self.modes)

    @property
    def blocks(self) -> tuple[str, ...]:
        """What the held modes keep other sessions from doing: ``reads``, ``writes``."""
        return blocks(self.mode) if self.mode else ()

    @property
    def held_before(self) -> bool:
        """The strongest mode was taken by an earlier statement of the same transaction."""
        return self.mode is not None and self.mode not in self.new_modes


@dataclass(frozen=True)
class StatementLocks:
    """One statement: where it is, how long it ran, and its locks on pre-existing relations."""

    where: str  # "<file>:<line>"
    sql: str
    seconds: float
    measured: str  # "transaction", "sampled" or "not measured"
    relations: tuple[RelationLock, ...] = ()

    @property
    def excerpt(self) -> str:
        """The statement on one line, shortened."""
        flat = " ".join(self.sql.split())
        return flat if len(flat) <= 70 else flat[:67] + "..."


@dataclass(frozen=True)
class Hold:
    """A pre-existing table held in write-blocking modes over consecutive statements."""

    relation: str
    mode: str  # the strongest mode held during the hold
    first: StatementLocks
    last: StatementLocks
    seconds: float
    until_commit: bool  # inside a transaction: the lock lasts until the migration commits

    @property
    def blocks(self) -> tuple[str, ...]:
        """What other sessions could not do meanwhile."""
        return blocks(self.mode)

    def describe(self) -> str:
        """``public.users ACCESS EXCLUSIVE (blocks reads, writes) for 3.1 s from 2_x.sql:1 until commit``."""
        span = f"from {self.first.where}" + (" until commit" if self.until_commit else "")
        if not self.until_commit and self.last is not self.first:
            span = f"from {self.first.where} to {self.last.where}"
        return (
            f"{self.relation} {self.mode} (blocks {', '.join(self.blocks)}) for {_duration(self.seconds)} {span}"
        )


@dataclass(frozen=True)
class LockReport:
    """Per statement, the locks a migration held on relations that existed before it, and its rewrites."""

    statements: tuple[StatementLocks, ...]
    in_transaction: bool  # the statements ran in one transaction, so locks lasted until its end
    pre_existing: int = 0  # how many pre-existing tables and indexes were watched

    def holds(self, *, ignore: Collection[str] = ()) -> list[Hold]:
        """Every time a pre-existing table was held in a write-blocking mode (modes in *ignore* aside).

        In a transaction, consecutive statements holding such a lock make one
        hold whose duration is their sum; otherwise each statement is its own.
        """
        out: list[tuple[int, str, Hold]] = []
        open_: dict[str, tuple[str, int, int, float]] = {}  # relation -> (mode, first, last, seconds)

        def close(relation: str) -> None:
            mode, first, last, seconds = open_.pop(relation)
            hold = Hold(relation, mode, self.statements[first], self.statements[last], seconds, self.in_transaction)
            out.append((first, relation, hold))

        for index, statement in enumerate(self.statements):
            held: dict[str, str] = {}
            for rel in statement.relations:
                modes = [m for m in rel.modes if m in WRITE_BLOCKING_MODES and m not in ignore]
                if rel.kind == "table" and modes:
                    held[rel.relation] = _strongest(modes) or modes[0]
            for relation in [r for r in open_ if r not in held or not self.in_transaction]:
                close(relation)
            for relation, mode in held.items():
                if relation in open_:
                    old, first, _, seconds = open_[relation]
                    open_[relation] = (_strongest((old, mode)) or mode, first, index, seconds + statement.seconds)
                else:
                    open_[relation] = (mode, index, index, statement.seconds)
        for relation in list(open_):
            close(relation)
        return [hold for _, _, hold in sorted(out, key=lambda o: (o[0], o[1]))]

    def rewrites(self) -> list[tuple[StatementLocks, list[RelationLock]]]:
        """The statements that rewrote pre-existing tables or indexes, with what they rewrote."""
        found = []
        for statement in self.statements:
            rewritten = [r for r in statement.relations if r.rewritten]
            if rewritten:
                found.append((statement, rewritten))
        return found

    @property
    def locked(self) -> bool:
        """Whether any lock on, or rewrite of, a pre-existing relation was seen."""
        return any(s.relations for s in self.statements)

    def table(self, limit: int = 60) -> str:
        """The per-statement table: statement, relation, lock mode, blocks, rewritten, scan, duration.

        At most *limit* rows are shown; statements without a lock on a
        pre-existing relation are left out first when there are more.
        """
        header = ("statement", "relation", "lock mode", "blocks", "rewritten", "scan", "duration")
        rows: list[tuple[str, ...]] = []
        for statement in self.statements:
            duration = _duration(statement.seconds)
            if statement.measured != "transaction":
                duration += f" ({statement.measured})"
            if not statement.relations:
                rows.append((statement.where, "-", "-", "-", "-", "-", duration))
                continue
            for rel in statement.relations:
                mode = rel.mode or "(none seen)"
                if rel.held_before:
                    mode += " (held)"
                rewritten = "yes" if rel.rewritten else "dropped" if rel.dropped else "no"
                scan = "?" if rel.scanned is None else "yes" if rel.scanned else "no"
                rows.append(
                    (statement.where, rel.relation, mode, ", ".join(rel.blocks) or "-", rewritten, scan, duration)
                )
        if len(rows) > limit:
            rows = [r for r in rows if r[1] != "-"]
        hidden = max(0, len(rows) - limit)
        rows = rows[:limit]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (header, *rows)]
        notes = [f"... and {hidden} more rows"] if hidden else []
        if any(rel.held_before for s in self.statements for rel in s.relations):
            notes.append("(held): taken by an earlier statement, still held until commit")
        if any(s.measured == "sampled" for s in self.statements):
            notes.append(
                "(sampled): run outside a transaction; locks seen by polling pg_locks from a second "
                "connection while it ran, so a lock held for less than one poll may be missing"
            )
        if any(s.measured == "not measured" for s in self.statements):
            notes.append("(not measured): run outside a transaction, locks not observed; rewrites still checked")
        return "\n".join(lines + notes)


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` decided: problems fail the assertion, acknowledged findings are reported."""

    problems: tuple[str, ...]
    acknowledged: tuple[str, ...]
    summary: str
    report: LockReport = field(repr=False)

    @property
    def ok(self) -> bool:
        """True when nothing is a problem."""
        return not self.problems

    def message(self) -> str:
        """The whole text for a report: problems or summary, acknowledged findings, and the table."""
        parts = []
        if self.problems:
            parts.append("\n".join(f"  - {p}" for p in self.problems))
        else:
            parts.append(self.summary)
        if self.acknowledged:
            parts.append("acknowledged:\n" + "\n".join(f"  - {a}" for a in self.acknowledged))
        if self.report.locked:
            parts.append(self.report.table())
        return "\n".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.0f} ms" if ms == int(ms) else f"{ms:.1f} ms"  # a budget of 500 ms, a duration of 0.4 ms
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + " s"


# --------------------------------------------------------------------------
# Judging a report against a plan's policy


def judge(report: LockReport, policy: LockPolicy, *, reason: str | None = None) -> Verdict:
    """Decide whether *report* is acceptable under *policy* (a step's ``locks`` settings).

    A problem is a pre-existing table or index rewritten (unless
    ``allow_rewrite``), or a pre-existing table held in a write-blocking mode
    for longer than ``budget`` (unless that mode is in ``allow_modes``).
    """
    why = f" (reason: {reason})" if reason else ""
    problems: list[str] = []
    acknowledged: list[str] = []
    for statement, rewritten in report.rewrites():
        names = ", ".join(r.relation for r in rewritten)
        held = _strongest([m for r in rewritten for m in r.modes])
        under = f" under {held} (blocks {', '.join(blocks(held)) or 'nothing'})" if held else ""
        what = f"{statement.where} rewrote {names}{under}: `{statement.excerpt}`"
        if policy.allow_rewrite:
            acknowledged.append(f"{what}{why}")
        else:
            problems.append(
                f"{what}. A rewrite copies the whole table while other sessions wait, which takes as long as "
                "the table is big. Change the migration so that PostgreSQL need not rewrite (for example add a "
                "new column, backfill it in batches and swap), or acknowledge it in this migration's step with "
                "`locks: {allow_rewrite: true}` and a `reason:`"
            )
    budget = _duration(policy.budget)
    over = [h for h in report.holds(ignore=policy.allow_modes) if h.seconds > policy.budget]
    for hold in over:
        problems.append(
            f"{hold.describe()}, over the budget of {budget} (`{hold.first.excerpt}`). Make the lock shorter "
            f"(NOT VALID then VALIDATE CONSTRAINT, CREATE INDEX CONCURRENTLY, smaller batches), raise "
            f"`locks: {{budget: ...}}`, or acknowledge the mode with `locks: {{allow_modes: [{hold.mode}]}}` "
            "and a `reason:` in this migration's step"
        )
    if policy.allow_modes:
        flagged = {(h.relation, h.first.where) for h in over}
        for hold in report.holds():
            if hold.seconds > policy.budget and (hold.relation, hold.first.where) not in flagged:
                acknowledged.append(f"{hold.describe()}, over the budget of {budget}, mode allowed{why}")

    longest = max(report.holds(), key=lambda h: h.seconds, default=None)
    count = len(report.statements)
    summary = f"{count} statement{'s' if count != 1 else ''}"
    if not report.pre_existing:
        summary += ", no table or index existed before them"
    elif longest is None:
        summary += (
            f", no write-blocking lock on any of the {report.pre_existing} pre-existing tables and indexes"
        )
    else:
        summary += f"; longest write-blocking lock: {longest.describe()} (budget {budget})"
    rewrites = sum(len(r) for _, r in report.rewrites())
    summary += f"; {rewrites} rewrite{'s' if rewrites != 1 else ''}" if rewrites else "; no rewrite"
    return Verdict(tuple(problems), tuple(acknowledged), summary, report)


# --------------------------------------------------------------------------
# Measuring

# Names of the pre-existing relations → their oid, kind, storage file and
# scan counter, in the caller's transaction (to_regclass parses the quoted,
# qualified names snapshot.tables() gives).  The names travel as one JSON
# array: cheaper to send and unpack than a text[] parameter.
_RESOLVE = """
SELECT c.oid, r.name, c.relkind IN ('i', 'I'), c.relfilenode, pg_catalog.pg_stat_get_xact_numscans(c.oid)
FROM pg_catalog.json_array_elements_text(%s::json) AS r(name)
JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(r.name)
"""
# The same facts for every table and index of the database, as one JSON
# object (oid → [name, is index, storage file, scan counter]): the relations
# a snapshot lists (user schemas but the excluded ones, no extension member).
_RESOLVE_ALL = """
SELECT coalesce(pg_catalog.json_object_agg(c.oid, pg_catalog.json_build_array(
           pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), c.relkind IN ('i', 'I'),
           c.relfilenode::bigint, pg_catalog.pg_stat_get_xact_numscans(c.oid))), '{}')::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'i', 'I')
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' AND n.nspname <> ALL (%s::text[])
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND e.objid = c.oid AND e.deptype = 'e')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                  AND e.objid = n.oid AND e.deptype = 'e')
"""
# The same facts for known oids (a dropped relation has no row).
_STATE = """
SELECT c.oid, c.relfilenode, pg_catalog.pg_stat_get_xact_numscans(c.oid)
FROM unnest(%s::oid[]) AS r(oid)
JOIN pg_catalog.pg_class c ON c.oid = r.oid
"""
# The one query after each statement: the relation locks this backend holds
# on user objects (oids from 16384, FirstNormalObjectId, on), with the storage
# file and scan counter of each.  A rewrite or a full scan needs a lock on
# the relation, so relations not locked need not be looked at.
_HELD = """
SELECT l.relation, c.relfilenode, pg_catalog.pg_stat_get_xact_numscans(l.relation), l.mode::text
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.relation >= 16384
"""


def server_functions_sql() -> str:
    """``harness.lock_relations(exclude)`` and ``harness.held_locks()``: the two queries above as functions.

    A rehearsal database installs them with its tracking functions
    (``harness/tracking.py``); :func:`run_measured` calls them when told
    to.  Sent as plain statements, the queries are planned at every
    migration (0.44 ms for the relations in a schema of 200 tables and
    indexes); a PL/pgSQL function keeps its plans for the session.
    """
    relations = _RESOLVE_ALL.replace("%s", "p_exclude").strip()
    return f"""
CREATE OR REPLACE FUNCTION harness.lock_relations(p_exclude text[]) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    v_relations text;
BEGIN
    {relations} INTO v_relations;
    RETURN v_relations;
END
$fn$;

CREATE OR REPLACE FUNCTION harness.held_locks(
    OUT o_relation pg_catalog.oid, OUT o_node pg_catalog.oid, OUT o_scans bigint, OUT o_mode text)
RETURNS SETOF record LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN QUERY {_HELD.strip()};
END
$fn$;
"""


# What the sampler polls: another backend's relation locks, and whether it waits for a lock.
_SAMPLE = """
SELECT l.relation, l.mode::text, l.granted FROM pg_catalog.pg_locks l
WHERE l.pid = %s AND (NOT l.granted OR (l.locktype = 'relation' AND l.relation >= 16384))
"""

# Statements PostgreSQL only accepts inside a transaction block: wrapping them
# in BEGIN/COMMIT to measure them would make a broken migration pass.
_NEEDS_BLOCK = frozenset({"LockStmt", "DeclareCursorStmt"})


@dataclass
class _Rel:
    name: str
    kind: str
    node: int | None
    scans: int
    modes: frozenset[str] = frozenset()


def pre_existing_relations(snapshot: Snapshot) -> frozenset[str]:
    """The tables and indexes of *snapshot*: what a migration applied on that state did not create."""
    return snapshot.tables() | frozenset(snapshot.of_type("index"))


def run_measured(
    conn: psycopg.Connection[Any],
    statements: Sequence[Statement],
    path: Path | str,
    *,
    pre_existing: Collection[str] | None = None,
    exclude: Collection[str] = ("harness",),
    monitor: Callable[[], psycopg.Connection[Any]] | None = None,
    functions: bool = False,
) -> LockReport:
    """Execute *statements* like :func:`~harness.execute.run_statements`, measuring locks and rewrites.

    *conn* is either inside a transaction (a transactional migration: locks
    accumulate until the caller commits) or idle in autocommit mode (each
    statement is its own transaction).  *pre_existing* names the tables and
    indexes that existed before the migration (see
    :func:`pre_existing_relations`); None means every table and index of the
    database when the measurement starts, outside the schemas *exclude*
    names and outside extensions: what a snapshot would list, read on the
    server in one statement however large the schema.  *monitor* opens a
    second connection to the same server, used to sample statements that
    cannot run in a transaction block; without it their locks are reported
    as not measured.  With *functions*, the database has the functions of
    :func:`server_functions_sql` and they are used instead of the queries.

    Raises :class:`~harness.execute.StatementFailed` like ``run_statements``;
    a transaction this function opened is rolled back first.
    """
    status = conn.info.transaction_status
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise ValueError(f"run_measured needs an idle connection or an open transaction, not {status.name}")
    in_transaction = status == TransactionStatus.INTRANS
    name = Path(path).name
    names = sorted(pre_existing) if pre_existing is not None else None
    timings: list[tuple[Statement, float]] = []
    if names == []:
        run_statements(conn, statements, path, timings=timings)
        return LockReport(
            tuple(StatementLocks(f"{name}:{s.line}", s.sql, t, "transaction") for s, t in timings), in_transaction
        )

    def resolve() -> _Rels:
        return _Rels(_resolve(conn, names)) if names is not None else _Rels.of_database(conn, exclude, functions)

    rels = _Rels({})
    resolved = False
    measured: list[StatementLocks] = []
    sampler_conn: psycopg.Connection[Any] | None = None
    try:
        if in_transaction:
            rels, resolved = resolve(), True
        for statement in statements:
            where = f"{name}:{statement.line}"
            if in_transaction:
                run_statements(conn, [statement], path, timings=timings)
                found = _observe(conn, rels, keep_modes=True, functions=functions)
                measured.append(StatementLocks(where, statement.sql, timings[-1][1], "transaction", found))
            elif statement.transactional and statement.kind not in _NEEDS_BLOCK:
                conn.execute("BEGIN")
                try:
                    rels = _Rels(_refresh(conn, rels.all())) if resolved else resolve()
                    resolved = True
                    run_statements(conn, [statement], path, timings=timings)
                    found = _observe(conn, rels, keep_modes=False, functions=functions)
                except BaseException:
                    _rollback(conn)
                    raise
                conn.execute("COMMIT")
                measured.append(StatementLocks(where, statement.sql, timings[-1][1], "transaction", found))
            else:
                if not resolved:
                    rels, resolved = resolve(), True
                if monitor is not None and sampler_conn is None:
                    try:
                        sampler_conn = monitor()
                    except (psycopg.Error, HarnessError) as exc:
                        # Measuring is best effort: the migration still runs, its locks go unmeasured.
                        log.warning("could not open a connection to sample locks: %s", exc)
                        monitor = None
                seen: dict[int, set[str]] = {}
                if sampler_conn is not None:
                    with _Sampler(sampler_conn, conn.info.backend_pid, _waits_for_old_snapshots(statement)) as s:
                        run_statements(conn, [statement], path, timings=timings)
                    seen = s.seen
                else:
                    run_statements(conn, [statement], path, timings=timings)
                found = _after_sampled(conn, rels.all(), seen)
                how = "sampled" if sampler_conn is not None else "not measured"
                measured.append(StatementLocks(where, statement.sql, timings[-1][1], how, found))
    finally:
        if sampler_conn is not None:
            try:
                sampler_conn.close()
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.warning("could not close the lock sampler's connection: %s", exc)
    return LockReport(tuple(measured), in_transaction, len(rels))


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """End the transaction this module opened, never hiding the error that made it necessary."""
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        log.warning("could not roll back after a failed statement: %s", exc)


def _modes(pg_modes: Collection[str]) -> frozenset[str]:
    # pg_locks also lists SIReadLock (predicate locks of serializable transactions): not a table lock mode.
    return frozenset(_FROM_PG[m] for m in pg_modes if m in _FROM_PG)


def _resolve(conn: psycopg.Connection[Any], names: list[str]) -> dict[int, _Rel]:
    rows = conn.execute(_RESOLVE, (json.dumps(names),)).fetchall()
    return {
        oid: _Rel(name, "index" if is_index else "table", node, int(scans))
        for oid, name, is_index, node, scans in rows
    }


def _refresh(conn: psycopg.Connection[Any], rels: dict[int, _Rel]) -> dict[int, _Rel]:
    """Storage files and scan counters now (at the start of a new transaction)."""
    now = {oid: (node, int(scans)) for oid, node, scans in conn.execute(_STATE, (list(rels),)).fetchall()}
    out = {}
    for oid, rel in rels.items():
        if oid in now:
            out[oid] = _Rel(rel.name, rel.kind, now[oid][0], now[oid][1])
    return out


class _Rels:
    """The relations a measurement watches, by OID; each becomes a :class:`_Rel` when a lock names it.

    A schema of thousands of tables and indexes costs one JSON document,
    not an object per relation per migration.
    """

    def __init__(self, made: dict[int, _Rel], raw: dict[str, list[Any]] | None = None) -> None:
        self.made = made
        self._raw = raw or {}

    @classmethod
    def of_database(cls, conn: psycopg.Connection[Any], exclude: Collection[str], functions: bool = False) -> _Rels:
        """Every table and index of the database now, outside *exclude* and extensions."""
        query = "SELECT harness.lock_relations(%s::text[])" if functions else _RESOLVE_ALL
        row = conn.execute(query, (list(exclude),)).fetchone()
        return cls({}, json.loads(row[0]) if row else {})

    def __len__(self) -> int:
        return len(self.made) + len(self._raw)

    def get(self, oid: int) -> _Rel | None:
        rel = self.made.get(oid)
        if rel is None:
            row = self._raw.pop(str(oid), None)
            if row is None:
                return None
            name, is_index, node, scans = row
            rel = self.made[oid] = _Rel(name, "index" if is_index else "table", node, int(scans))
        return rel

    def all(self) -> dict[int, _Rel]:
        """Every relation, made."""
        for key in list(self._raw):
            self.get(int(key))
        return self.made


def _observe(
    conn: psycopg.Connection[Any], rels: _Rels, *, keep_modes: bool, functions: bool = False
) -> tuple[RelationLock, ...]:
    """After a statement inside a transaction: its locks on *rels*; updates *rels* in place."""
    held: dict[int, tuple[int | None, int, list[str]]] = {}
    for oid, node, scans, pg_mode in conn.execute("SELECT * FROM harness.held_locks()" if functions else _HELD):
        if rels.get(oid) is not None:  # else created by this migration, or not a table or index
            held.setdefault(oid, (node, int(scans), []))[2].append(pg_mode)
    found = []
    for oid, (node, scans, pg_modes) in held.items():
        rel = rels.made[oid]
        modes = _modes(pg_modes)
        dropped = node is None
        rewritten = not dropped and bool(rel.node) and node != rel.node
        scanned = scans > rel.scans if rel.kind == "table" else None
        found.append(
            RelationLock(
                rel.name,
                rel.kind,
                tuple(sorted(modes, key=_RANK.__getitem__)),
                tuple(sorted(modes - rel.modes, key=_RANK.__getitem__)),
                rewritten,
                scanned,
                dropped,
            )
        )
        rel.node, rel.scans = (rel.node if dropped else node), scans
        rel.modes = modes if keep_modes else frozenset()
    for oid, rel in rels.made.items():  # only a relation a lock named has modes
        if rel.modes and oid not in held:
            rel.modes = frozenset()  # released early: a subtransaction (a DO block's exception handler) rolled back
    return tuple(sorted(found, key=lambda r: (r.kind != "table", r.relation)))


def _after_sampled(
    conn: psycopg.Connection[Any], rels: dict[int, _Rel], seen: dict[int, set[str]]
) -> tuple[RelationLock, ...]:
    """After a statement outside a transaction: what the sampler saw, and rewrites from the storage files."""
    now = {oid: node for oid, node, _ in conn.execute(_STATE, (list(rels),)).fetchall()}
    found = []
    for oid, rel in rels.items():
        modes = _modes(seen.get(oid, ()))
        dropped = oid not in now
        rewritten = not dropped and bool(rel.node) and now[oid] != rel.node
        if modes or rewritten or dropped:
            ordered = tuple(sorted(modes, key=_RANK.__getitem__))
            found.append(RelationLock(rel.name, rel.kind, ordered, ordered, rewritten, None, dropped))
        if not dropped:
            rel.node = now[oid]
    for oid in [o for o in rels if o not in now]:
        del rels[oid]
    return tuple(sorted(found, key=lambda r: (r.kind != "table", r.relation)))


def _waits_for_old_snapshots(statement: Statement) -> bool:
    """CREATE INDEX CONCURRENTLY and REINDEX CONCURRENTLY wait, before finishing, for older snapshots."""
    node = statement.node
    if statement.kind == "IndexStmt":
        return bool(getattr(node, "concurrent", False))
    if statement.kind == "ReindexStmt":
        return any(getattr(p, "defname", None) == "concurrently" for p in getattr(node, "params", None) or ())
    return False


class _Sampler:
    """Polls another backend's relation locks from a second connection while a statement runs.

    With *hold_snapshot*, the sampler keeps a transaction with a snapshot
    open: a concurrent index build then waits for it before finishing, still
    holding its locks, so they are seen for certain; the snapshot is released
    as soon as the other backend waits for anything (or after a second).
    """

    _HOLD_LIMIT = 1.0
    _BUSY_POLLS = 200  # poll back to back at first, then every _INTERVAL seconds
    _INTERVAL = 0.002

    def __init__(self, conn: psycopg.Connection[Any], pid: int, hold_snapshot: bool) -> None:
        self.conn = conn
        self.pid = pid
        self.hold_snapshot = hold_snapshot
        self.seen: dict[int, set[str]] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="harness-lock-sampler", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            log.warning("sampling locks failed, the report may miss some: %s", self.error)

    def _run(self) -> None:
        holding = False
        try:
            if self.hold_snapshot:
                self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holding = True
            started = time.perf_counter()
            polls = 0
            while True:
                waiting = False
                for relation, mode, granted in self.conn.execute(_SAMPLE, (self.pid,)).fetchall():
                    if granted:
                        self.seen.setdefault(relation, set()).add(mode)
                    else:
                        waiting = True
                if holding and (waiting or time.perf_counter() - started > self._HOLD_LIMIT):
                    self.conn.execute("COMMIT")
                    holding = False
                polls += 1
                self._ready.set()
                if self._stop.wait(0 if polls < self._BUSY_POLLS else self._INTERVAL):
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__; the statement must go on
            self.error = exc
        finally:
            self._ready.set()
            if holding:
                try:
                    self.conn.execute("ROLLBACK")
                except psycopg.Error as exc:
                    log.warning("the lock sampler could not end its transaction: %s", exc)

