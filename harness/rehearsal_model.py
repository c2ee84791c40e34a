"""What a rehearsal is made of: items, outcomes, what it knows about each migration, and the helpers they share.

The lowest layer of the rehearsal modules: no engine, no server.  An
:class:`Item` is one assertion about one migration, an :class:`Outcome` what
running it found; a :class:`Step` is what the engine knows about one
migration of the working history.  The helpers compare object maps and table
data, read write counters, and say which statements can be tracked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import visitors

from . import tracking
from .execute import relpath
from .locks import LockReport
from .plan import Check
from .snapshot import Snapshot, table_fingerprints
from .sources import Migration, Statement

__all__ = [
    "PASSED", "FAILED", "SKIPPED", "CACHED", "CHECKPOINT", "Item", "Outcome", "ItemFailed", "Mismatch", "Step",
    "BatchedRun",
    "Changes", "object_changes", "apply_object_changes", "Counters", "counters", "touched_tables", "changed_data",
    "tool_refusal", "as_script", "trackable_statements", "touched_data", "data_changes",
]


# Every CHECKPOINT-th migration let go keeps its schema whole (Engine._release).
CHECKPOINT = 16

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: Not run: an earlier rehearsal of the same prefix proved it (harness/cache.py); the message names its receipt.
CACHED = "cached"


@dataclass(frozen=True)
class Item:
    """One assertion about one migration: the unit a test report shows."""

    migration: Migration
    assertion: str
    index: int  # position of the migration in the plan's history
    check: Check | None = None
    plan_level: bool = False  # about the whole history (chain_rollback), not one migration

    @property
    def name(self) -> str:
        """The item's name within its migration, e.g. ``rollback`` or ``check[no null emails]``."""
        if self.check is not None:
            return f"check[{self.check.name}]"
        return self.assertion

    @property
    def id(self) -> str:
        """``<migration id>::<name>``, or just the name for a plan-level item."""
        return self.name if self.plan_level else f"{self.migration.id}::{self.name}"


@dataclass
class Outcome:
    """What running an item found."""

    status: str
    message: str = ""
    duration: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True unless the item failed."""
        return self.status != FAILED


class ItemFailed(Exception):
    """An assertion failed with a message for the reviewer."""


class Mismatch(ItemFailed):
    """A state read in full differs from a recorded one (which may have been tracked)."""


@dataclass
class Step:
    """What the engine knows about one migration of the working history."""

    before: Snapshot | None = None
    before_data: dict[str, tuple[int, str]] | None = None
    touched: frozenset[str] = frozenset()  # tables whose data or storage the up migration changed
    after: Snapshot | None = None
    after_data: dict[str, tuple[int, str]] | None = None
    applied: bool = False
    apply_error: str | None = None
    failure_rehearsal: str | None = None  # None = ok or not run; text = what remained
    failure_rehearsal_run: bool = False
    apply_seconds: float = 0.0
    locks: LockReport | None = None  # locks: measured while the up migration ran
    batched: BatchedRun | None = None  # batch: the migration run in batches, on a copy of the state before
    # Tracked runs (see harness/tracking.py): the state after up, the objects
    # up changed, and what the second up, the down and the up after it changed.
    # The state, the data and the deltas serve only the migration's own items
    # and are let go when the migration two later is applied (Engine._release).
    after_state: tracking.State | None = None
    tracked: bool = False  # up was applied by a tracked run
    up_keys: frozenset[str] = frozenset()
    again: tracking.Delta | None = None
    down: tracking.Delta | None = None
    reup: tracking.Delta | None = None
    # Once let go, a migration keeps its schema after as the objects that
    # differ from the schema before it (None: the object is gone), except at
    # every CHECKPOINT-th migration (see Engine.snapshot_at).
    released: bool = False
    after_delta: Changes | None = None


@dataclass
class BatchedRun:
    """batch: what running a migration in batches left on a copy of the working database."""

    snapshot: Snapshot | None = None
    data: dict[str, tuple[int, str]] = field(default_factory=dict)
    batches: int = 0
    rows: int = 0
    error: str | None = None


Changes = dict[str, Mapping[str, Any] | None]


def object_changes(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], keys: frozenset[str] | None = None
) -> Changes:
    """The objects of *new* that differ from *old*'s (None: gone), among *keys* (default: all of both)."""
    candidates = old.keys() | new.keys() if keys is None else keys
    return {key: new.get(key) for key in candidates if old.get(key) != new.get(key)}


def apply_object_changes(objects: dict[str, Mapping[str, Any]], changes: Changes) -> None:
    """Bring *objects* up to date with *changes* (see :func:`object_changes`)."""
    for key, attrs in changes.items():
        if attrs is None:
            objects.pop(key, None)
        else:
            objects[key] = attrs


# Write counters are read twice, at the start of a transaction and after the
# statements: since PostgreSQL 15 the pg_stat_xact_* views also include
# counts of earlier transactions not yet flushed, so only the difference says
# what this transaction did.
# The pg_stat_get_xact_* functions are called directly rather than through the
# pg_stat_xact_* views, which compute a dozen counters per relation.
_COUNTERS = """
SELECT CASE WHEN c.relnamespace = 'pg_catalog'::regnamespace THEN NULL
            ELSE quote_ident(n.nspname) || '.' || quote_ident(c.relname) END,
       c.relfilenode,
       pg_stat_get_xact_tuples_inserted(c.oid) + pg_stat_get_xact_tuples_updated(c.oid)
       + pg_stat_get_xact_tuples_deleted(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('information_schema', 'harness')
  AND n.nspname !~ '^pg_(toast|temp)'
"""


@dataclass(frozen=True)
class Counters:
    """Storage files and write counters of user tables, and catalog writes, at one moment."""

    nodes: dict[str, int]
    writes: dict[str, int]
    catalog: int


def counters(conn: psycopg.Connection) -> Counters:
    """The storage files and write counters of the user tables, and the catalog writes, now."""
    nodes: dict[str, int] = {}
    writes: dict[str, int] = {}
    catalog = 0
    for name, node, count in conn.execute(_COUNTERS).fetchall():
        if name is None:
            catalog += int(count)
        else:
            nodes[name], writes[name] = node, int(count)
    return Counters(nodes, writes, catalog)


def touched_tables(
    conn: psycopg.Connection, start: Counters, nodes_before: dict[str, int]
) -> tuple[Counters, set[str]]:
    """Tables written, rewritten (TRUNCATE, ALTER TYPE) or created since *start*."""
    now = counters(conn)
    touched = {
        t for t, node in now.nodes.items()
        if nodes_before.get(t) != node or now.writes[t] > start.writes.get(t, 0)
    }
    return now, touched


def changed_data(
    conn: psycopg.Connection, start: Counters | None, nodes_before: dict[str, int]
) -> tuple[dict[str, tuple[int, str]], bool]:
    """Fingerprints of the tables changed since *start*, and whether any catalog row was written.

    Without *start* (work outside a transaction) every table is read and the
    catalogs count as written.
    """
    if start is None:
        now = counters(conn)
        return (table_fingerprints(conn, now.nodes) if now.nodes else {}), True
    now, touched = touched_tables(conn, start, nodes_before)
    return (table_fingerprints(conn, touched) if touched else {}), now.catalog > start.catalog


def tool_refusal(migration: Migration, side: str) -> str | None:
    """The layout findings of *migration* that say its tool would fail running *side* ("up" or "down")."""
    errors = [f for f in migration.findings if f.severity == "error" and (f.side == side or (not f.side and side == "up"))]
    if not errors:
        return None
    return "\n".join(f"{relpath(f.path)}:{f.line}:{f.column}: {f.message}; {f.advice}" for f in errors)


def as_script(statements: Sequence[Statement]) -> str:
    """Statements as one script; a newline before each semicolon ends a trailing ``--`` comment."""
    return "\n;\n".join(s.sql for s in statements)


def trackable_statements(statements: Sequence[Statement]) -> bool:
    """Whether *statements* can run in one message with their changes tracked.

    Not: COPY ... FROM STDIN (needs the copy protocol), RESET ALL (would
    reset the record of changes), SET event_triggers (would stop it), and a
    write to a system catalog (``UPDATE pg_attribute SET atttypmod ...``,
    the old trick to widen a column without a rewrite): no event trigger
    reports it, and next to a DDL command the record would look complete.
    """
    for statement in statements:
        if statement.kind == "CopyStmt":
            node = statement.node
            if getattr(node, "is_from", False) and not getattr(node, "filename", None):
                return False
        elif statement.kind == "VariableSetStmt":
            name = (getattr(statement.node, "name", None) or "").lower()
            if name in ("", "all", "event_triggers"):
                return False
        elif statement.kind in _MAY_WRITE_TABLES and _writes_system_catalog(statement.node):
            return False
    return True


# Statements whose parse tree may hold an INSERT, UPDATE, DELETE or MERGE
# (a SELECT through a data-modifying WITH).  A DO block's body is opaque: a
# catalog write there with no command at all still falls back to a full
# snapshot (tracking.py), one next to a command is a known limit.
_MAY_WRITE_TABLES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt"})


class _CatalogWrites(visitors.Visitor):
    """Finds the INSERT, UPDATE, DELETE and MERGE targets in a parse tree that are system catalogs."""

    def __init__(self) -> None:
        self.found = False

    def _target(self, node: Any) -> None:
        relation = getattr(node, "relation", None)
        schema, name = getattr(relation, "schemaname", None), getattr(relation, "relname", None) or ""
        # Unqualified, a pg_ name finds pg_catalog first (it is searched before the path).
        if schema == "pg_catalog" or (schema is None and name.startswith("pg_")):
            self.found = True

    def visit_InsertStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_UpdateStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_DeleteStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_MergeStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)


def _writes_system_catalog(node: Any) -> bool:
    walker = _CatalogWrites()
    walker(node)
    return walker.found


def touched_data(state: tracking.State, delta: tracking.Delta) -> dict[str, tuple[int, str]]:
    """Row count and hash of the tables *delta* wrote, by name in *state*."""
    names = (state.tables.get(oid) for oid in delta.touched)
    return {name: state.data[name] for name in names if name is not None and name in state.data}


def data_changes(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> str:
    """The tables whose row count or contents differ from *before* to *after*, one line each."""
    lines = []
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table), after.get(table)
        if b == a:
            continue
        if b is None or a is None:
            continue  # a table added or removed shows up in the schema diff
        if b[0] != a[0]:
            lines.append(f"  {table}: {b[0]} rows → {a[0]} rows")
        else:
            lines.append(f"  {table}: same row count ({a[0]}) but row contents changed")
    return "\n".join(lines)

