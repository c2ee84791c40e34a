"""The migration model: what every layout reads a migration folder into.

A :class:`Migration` is one migration's up and optional down SQL, split into
:class:`Statement` objects by PostgreSQL's parser; its :class:`Order` places
it among its folder's migrations, its :class:`BatchSpec` list names the
statements marked ``-- harness:batch``, and its :class:`LayoutFinding` list
the quirks its layout's own tool would trip over.  Every layout (the native
one in :mod:`harness.native`, the others in :mod:`harness.layouts`) builds
these objects through :func:`harness.parsing.make_migration`; every
assertion, lint rule and apply guard reads them.

This module imports no other harness module: everything above builds on it.
Nothing here reads a file or opens a connection.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglast import parser

__all__ = ["LayoutFinding", "Statement", "Order", "BatchSpec", "Migration"]


@dataclass(frozen=True)
class LayoutFinding:
    """A quirk of one migration file that the layout's own tool would trip over (or silently ignore)."""

    path: Path
    line: int
    column: int
    rule: str  # stable id, e.g. "layout-transaction"
    severity: str  # "error": the tool would fail; "warning": it would behave unexpectedly; "info": a note
    message: str
    advice: str
    #: Which part of the migration the tool would trip over: "up", "down", or "" for the whole file.
    side: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.severity} {self.rule}: {self.message}"


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a migration file, as PostgreSQL's parser split it."""

    sql: str  # the statement's text as written, without the trailing semicolon
    line: int  # 1-based line of the statement's first character in its file
    column: int  # 1-based column, counted in characters
    kind: str  # pglast node class name, e.g. "IndexStmt"
    transactional: bool  # False when PostgreSQL refuses to run it inside a transaction block
    control: str | None  # for a TransactionStmt: "begin", "commit", "rollback", "savepoint", ...
    _trees: _Trees | None = field(default=None, compare=False, repr=False, hash=False)
    _index: int = field(default=0, compare=False, repr=False, hash=False)

    @property
    def node(self) -> Any:
        """The statement's pglast AST node (for lint rules, batches, lock checks), built on first use."""
        return self._trees.node(self._index) if self._trees is not None else None


class _Trees:
    """The pglast parse trees of one text, built when a statement's node is first asked for.

    Building Python objects for every node costs several times the parse
    itself (76 µs against 12 µs for a one-line CREATE TABLE), and a
    rehearsal without lint needs no tree at all: :func:`parse_sql` splits
    and classifies statements from the parser's JSON output instead.
    """

    __slots__ = ("_text", "_nodes")

    def __init__(self, text: str) -> None:
        self._text = text
        self._nodes: list[Any] | None = None

    def node(self, index: int) -> Any:
        if self._nodes is None:
            self._nodes = [raw.stmt for raw in parser.parse_sql(self._text)]
        return self._nodes[index]


@functools.total_ordering
class Order:
    """Where a migration sits in its folder's sequence: a total order over every layout's versions.

    Versioned migrations compare either by the numeric parts of their version
    (``9`` < ``10``; Flyway's ``1`` < ``1.1`` < ``2.0.3``; trailing zero parts
    are dropped, so ``1.0`` equals ``1``, as Flyway compares them) or, for the
    tools that compare versions as strings, by *text* (diesel's version
    without dashes, so ``20170923182408`` < ``202511190914440000`` <
    ``20251119091444``; dbmate's and the Supabase CLI's file name), code point
    by code point as Rust and Go compare strings.  One folder uses one kind;
    across kinds, text orders come first.  Repeatable migrations (Flyway's
    ``R__``) come after every versioned one, by name.  A one-part numeric
    order also compares with a plain ``int``, which is what
    :attr:`Migration.order` was before other layouts existed (``order == 1``).
    """

    __slots__ = ("parts", "text", "repeatable", "tiebreak")

    def __init__(
        self, parts: Sequence[int] = (), *, text: str = "", repeatable: bool = False, tiebreak: str = ""
    ) -> None:
        trimmed = tuple(int(p) for p in parts)
        while len(trimmed) > 1 and trimmed[-1] == 0:
            trimmed = trimmed[:-1]
        self.parts: tuple[int, ...] = trimmed
        self.text = text
        self.repeatable = repeatable
        self.tiebreak = tiebreak

    @property
    def key(self) -> tuple[int, tuple[int, ...], str, str]:
        """The order as a plain sortable tuple."""
        return (1 if self.repeatable else 0, self.parts, self.text, self.tiebreak)

    def _other(self, other: object) -> Order | None:
        if isinstance(other, Order):
            return other
        if isinstance(other, int) and not isinstance(other, bool):
            return Order((other,))
        return None

    def __eq__(self, other: object) -> bool:
        theirs = self._other(other)
        if theirs is None:
            return NotImplemented
        return self.key == theirs.key

    def __lt__(self, other: object) -> bool:
        theirs = self._other(other)
        if theirs is None:
            return NotImplemented
        return self.key < theirs.key

    def __hash__(self) -> int:
        if not self.repeatable and not self.text and len(self.parts) == 1:
            return hash(self.parts[0])  # equal to the int it equals
        return hash(self.key)

    def __int__(self) -> int:
        if self.repeatable or self.text or len(self.parts) != 1:
            raise TypeError(f"order {self} is not a single number")
        return self.parts[0]

    def __str__(self) -> str:
        if self.repeatable:
            return f"repeatable {self.tiebreak}"
        if self.text:
            return self.text
        return ".".join(str(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"Order({self})"


@dataclass(frozen=True)
class BatchSpec:
    """One statement marked ``-- harness:batch``, validated and rewritten for key ranges."""

    index: int  # position of the statement in Migration.statements
    path: Path
    line: int  # the directive's line
    statement_line: int
    statement_column: int
    statement_sql: str  # the statement as written
    kind: str  # "UPDATE" or "DELETE"
    key: str  # the key column's name, as PostgreSQL knows it
    size: int
    pause: float  # seconds between batches
    schema: str | None  # the table's schema as written (None: found on the search_path)
    table: str
    only: bool  # UPDATE ONLY / DELETE FROM ONLY: inheritance children are not touched
    first_sql: str  # the statement AND key <= $1
    next_sql: str  # the statement AND key > $1 AND key <= $2

    @property
    def where(self) -> str:
        """``file:line`` of the directive, for messages."""
        return f"{self.path}:{self.line}"

    @property
    def table_name(self) -> str:
        """The table as written in the statement (``schema.table`` or ``table``)."""
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def describe(self) -> str:
        """``UPDATE of public.accounts in batches of 5000 by id, 50 ms apart``."""
        pause = f", {self.pause * 1000:g} ms apart" if self.pause else ""
        return f"{self.kind} of {self.table_name} in batches of {self.size} by {self.key}{pause}"


@dataclass(frozen=True)
class Migration:
    """One migration: its up file, optional down file, and their statements.

    Every layout maps to this one model.  Files that hold both directions
    (dbmate, goose) have ``path == down_path``; their ``sql`` and
    ``down_sql`` keep the other section's lines blank, so statement lines
    are the file's lines.
    """

    version: str  # as written in the file name, e.g. "20261101120000" or "0001" (Flyway: "1.1")
    name: str  # e.g. "add_users" ("" when the version alone names it: Sqitch changes, Flyway R__ scripts)
    path: Path  # the up file
    sql: str  # the up file's text (substitutions applied)
    checksum: str  # sha256 hex digest of the up file's bytes, as written
    statements: tuple[Statement, ...]  # the up statements, file-level BEGIN/COMMIT removed
    wrapped: bool  # the up file wraps itself in a top-level BEGIN; ... COMMIT;
    down_path: Path | None = None
    down_sql: str | None = None
    down_statements: tuple[Statement, ...] | None = None  # wrapper removed likewise
    down_wrapped: bool = False
    #: The layout declares that the up migration runs outside a transaction
    #: (diesel ``run_in_transaction = false``, dbmate ``transaction:false``,
    #: goose ``NO TRANSACTION``, Flyway ``executeInTransaction=false``).
    no_transaction: bool = False
    #: The same for the down migration.
    down_no_transaction: bool = False
    #: A Flyway ``R__`` script: re-applied whenever its checksum changes, after the versioned ones.
    repeatable: bool = False
    #: A Sqitch verify script: must run without error after the migration.
    verify_sql: str | None = None
    verify_path: Path | None = None
    #: The layout the migration was read from ("native", "flyway", ...).
    layout: str = "native"
    #: The numeric parts the version sorts by; ``None``: the version as one integer.
    order_parts: tuple[int, ...] | None = None
    #: The text the version sorts by, for tools that compare versions as strings (wins over ``order_parts``).
    order_text: str | None = None
    #: Statements marked ``-- harness:batch`` (:mod:`harness.batch`): run in key-range batches.
    batches: tuple[BatchSpec, ...] = ()
    #: Why the up file cannot be run (unreadable, not UTF-8, does not parse, bad transaction control or
    #: batch directive), with file and line; ``statements`` is then empty.  Only this migration's items fail.
    error: str | None = None
    #: The same for the down file; ``down_statements`` is then ``None``.
    down_error: str | None = None
    #: Quirks of this migration's files that its layout's own tool would trip over (:mod:`harness.layouts`).
    findings: tuple[LayoutFinding, ...] = ()
    #: Versions that must be applied before this one, where the layout records them (Alembic's
    #: ``down_revision`` and ``depends_on``); adopting a head adopts everything it requires.
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The migration's identity, ``<version>_<name>`` (the version alone when there is no name)."""
        return f"{self.version}_{self.name}" if self.name else self.version

    @property
    def order(self) -> Order:
        """Where the migration sorts among its folder's migrations (compares with an int in the native layout)."""
        if self.repeatable:
            return Order(repeatable=True, tiebreak=self.version)
        if self.order_text is not None:
            return Order(text=self.order_text)
        return Order(self.order_parts if self.order_parts is not None else (int(self.version),))

    @property
    def transactional(self) -> bool:
        """True when the up migration may run inside a transaction block.

        False when the layout declares it runs outside one, when a
        statement cannot run inside one, or when a statement is batched.
        """
        # A batched statement commits batch by batch, so its migration runs outside one transaction.
        return not self.no_transaction and not self.batches and all(s.transactional for s in self.statements)

    @property
    def has_down(self) -> bool:
        """True when the migration has a down file (or section), even an empty or broken one."""
        return self.down_path is not None

    @property
    def down_empty(self) -> bool:
        """True when the down file (or section) holds no SQL: the usual way to mark a migration irreversible."""
        return self.down_path is not None and self.down_error is None and not self.down_statements

    @property
    def reversible(self) -> bool:
        """True when a down with SQL exists and can be run (not empty, not broken)."""
        return self.down_error is None and bool(self.down_statements)

    @property
    def down_transactional(self) -> bool:
        """True when the down migration may run inside a transaction block (True without a down)."""
        if self.down_statements is None:
            return True
        return not self.down_no_transaction and all(s.transactional for s in self.down_statements)
