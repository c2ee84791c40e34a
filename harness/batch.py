"""Batched data migrations: the ``-- harness:batch`` directive, the key-range rewrite, and the batch loop.

A large backfill must not run as one long transaction: it holds its row
locks, and keeps old row versions alive, until it ends, and a failure near
the end throws all of it away.  A directive comment directly above one
``UPDATE`` or ``DELETE`` asks the harness to run it in batches::

    -- harness:batch key=id size=5000 pause=50ms
    UPDATE accounts SET plan = 'free' WHERE plan IS NULL;

Each batch covers one range of the table's key column, taken in key order:
the statement runs with ``AND key > $1 AND key <= $2`` added to its
``WHERE`` clause, where ``$2`` is the *size*-th key after ``$1`` (the first
batch has no lower bound; the last one ends at the greatest key).  Each
batch is its own short transaction; *pause* waits between batches so the
rest of the workload gets the table back.

Options: ``key`` (required; a ``NOT NULL`` column of the statement's table,
usually the primary key; unquoted names are folded to lower case as
PostgreSQL does), ``size`` (rows per batch, default 1000) and ``pause``
(``50ms``, ``1s``, ``0``; default 0).

This module has two halves.  The source half (:func:`find_batches`) reads
directives and rewrites statements on PostgreSQL's parse tree with pglast;
it never opens a connection, and :mod:`harness.parsing` calls it when a
migration is loaded.  :class:`BatchSpec` lives in :mod:`harness.migration`
with the model that holds it.  The running half (:func:`resolve_target`,
:func:`next_batch`, :func:`run_batched`) works on a connection the caller
gives it: :mod:`harness.apply` runs each batch in its own transaction with
the plan's timeouts and records progress; the rehearsal's ``batch`` item
runs a migration batched on a copy of its working database and compares the
result with the unbatched run.

SQL is never built from strings: statements are rewritten on the parse tree
(the added condition is an ``AND`` on ``whereClause``) and printed by pglast;
the helper queries use :mod:`psycopg.sql` identifiers.  Reading the directive
comment's own text is the only text processing.
"""

from __future__ import annotations

import bisect
import copy
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, enums, parser
from pglast.stream import RawStream
from psycopg import sql

from .errors import SourceError
from .execute import Failure, StatementFailed, describe_pg_error, relpath, run_statements
from .migration import BatchSpec, Migration, Statement

__all__ = [
    "BATCH_MARK",
    "DEFAULT_SIZE",
    "BatchSpec",
    "BatchState",
    "BatchTarget",
    "find_batches",
    "resolve_target",
    "next_batch",
    "run_batched",
    "run_migration_batched",
]

log = logging.getLogger(__name__)

#: The directive's first word.
BATCH_MARK = "harness:batch"

#: Rows per batch when the directive gives no ``size``.
DEFAULT_SIZE = 1000

_OPTIONS = ("key", "size", "pause")
_HELP = "write it as: -- harness:batch key=<column> size=<rows> pause=<duration>, e.g. key=id size=5000 pause=50ms"
# Directive text (not SQL) is read with regular expressions.
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m)?")
_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


# --------------------------------------------------------------------------
# Source half: directives and the rewrite (no connection)


def find_batches(
    text: str,
    statements: Sequence[Statement],
    path: Path,
    *,
    wrapped: bool = False,
    down: bool = False,
) -> tuple[BatchSpec, ...]:
    """The ``-- harness:batch`` directives of a migration file's *text*, each bound to the statement below it.

    *statements* are the file's statements as :func:`harness.parsing.parse_sql`
    split them (any file-level ``BEGIN``/``COMMIT`` removed); *wrapped* says
    the file had that wrapper.  Raises :class:`~harness.errors.SourceError`
    naming ``file:line`` for a directive that is not on a line of its own
    directly above a statement, names an unknown option, gives a size that
    is not a whole number above zero, a bad pause or no key; for a statement
    that is not one UPDATE or DELETE, that changes the key column, uses
    ``WHERE CURRENT OF`` or a data-modifying ``WITH``; for a directive in a
    down migration (*down*) or in a file that wraps itself in one
    transaction.  Whether the key is a ``NOT NULL`` column of the table can
    only be checked on a database: :func:`resolve_target` does.
    """
    if BATCH_MARK not in text:
        return ()
    lines = _Lines(text)
    spans = [(lines.offset(s.line, s.column), lines.offset(s.line, s.column) + len(s.sql)) for s in statements]
    comment_lines: set[int] = set()
    directives: list[tuple[int, int, str]] = []  # (offset, line, body after the mark)
    for token in parser.scan(text):
        if token.name != "SQL_COMMENT":
            continue
        body = text[token.start:token.end + 1].lstrip("-").strip()
        line = lines.line(token.start)
        own_line = not text[lines.start(line):token.start].strip()
        if own_line:
            comment_lines.add(line)
        if body == BATCH_MARK or body.startswith(BATCH_MARK + " ") or body.startswith(BATCH_MARK + "\t"):
            where = f"{path}:{line}"
            if not own_line:
                raise SourceError(
                    f"{where}: a {BATCH_MARK} directive must be on a line of its own, directly above the UPDATE or "
                    "DELETE it batches"
                )
            directives.append((token.start, line, body[len(BATCH_MARK):].strip()))
    if not directives:
        return ()
    if down:
        raise SourceError(
            f"{path}:{directives[0][1]}: {BATCH_MARK} in a down migration: only up migrations run in batches; "
            "remove the directive"
        )
    specs: list[BatchSpec] = []
    taken: dict[int, int] = {}
    for offset, line, body in directives:
        where = f"{path}:{line}"
        inside = [i for i, (start, end) in enumerate(spans) if start < offset < end]
        if inside:
            raise SourceError(
                f"{where}: the {BATCH_MARK} directive is inside a statement (line {statements[inside[0]].line}); "
                "put it on the line directly above the UPDATE or DELETE"
            )
        following = [i for i, (start, _) in enumerate(spans) if start > offset]
        index = following[0] if following else None
        if index is None or any(n not in comment_lines for n in range(line + 1, statements[index].line)):
            raise SourceError(
                f"{where}: the {BATCH_MARK} directive is not directly above a statement; put it on the line right "
                "before the UPDATE or DELETE it batches (only comment lines may come between)"
            )
        if index in taken:
            raise SourceError(
                f"{where}: a second {BATCH_MARK} directive for the statement at line {statements[index].line} "
                f"(the first is at line {taken[index]}); keep one"
            )
        taken[index] = line
        if wrapped:
            raise SourceError(
                f"{where}: a batched statement cannot be inside the file's own BEGIN; ... COMMIT;: each batch commits "
                "on its own. Remove the BEGIN and COMMIT (the harness runs the statements before and after the "
                "batches in one transaction each)"
            )
        specs.append(_spec(body, index, statements[index], path, line))
    return tuple(specs)


def _spec(body: str, index: int, statement: Statement, path: Path, line: int) -> BatchSpec:
    where = f"{path}:{line}"
    options: dict[str, str] = {}
    for word in body.split():
        name, equals, value = word.partition("=")
        if name not in _OPTIONS:
            raise SourceError(f"{where}: {BATCH_MARK}: unknown option {name!r}; the options are "
                              f"{', '.join(_OPTIONS)}; {_HELP}")
        if not equals or not value:
            raise SourceError(f"{where}: {BATCH_MARK}: option {name} needs a value ({name}=...); {_HELP}")
        if name in options:
            raise SourceError(f"{where}: {BATCH_MARK}: option {name} is given twice")
        options[name] = value
    if "key" not in options:
        raise SourceError(f"{where}: {BATCH_MARK}: key= is required (the column whose ranges make the batches, "
                          f"usually the primary key); {_HELP}")
    key = _column_name(options["key"], where)
    size = _size(options.get("size"), where)
    pause = _pause(options.get("pause"), where)

    node = statement.node
    stmt_where = f"{path}:{statement.line}:{statement.column}"
    if not isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        raise SourceError(
            f"{stmt_where}: {BATCH_MARK} (line {line}) applies to one UPDATE or DELETE, but the statement below it "
            f"is {statement.kind.removesuffix('Stmt')}; move the directive or remove it"
        )
    kind = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
    if isinstance(node.whereClause, ast.CurrentOfExpr):
        raise SourceError(f"{stmt_where}: {kind} ... WHERE CURRENT OF cannot run in batches; remove {BATCH_MARK}")
    with_clause = node.withClause
    for cte in (with_clause.ctes or ()) if with_clause is not None else ():
        if not isinstance(cte.ctequery, ast.SelectStmt):
            raise SourceError(
                f"{stmt_where}: the WITH query {cte.ctename} changes data; it would run again in every batch. "
                f"Move it into a statement of its own, or remove {BATCH_MARK}"
            )
    if isinstance(node, ast.UpdateStmt):
        for target in node.targetList or ():
            if getattr(target, "name", None) == key:
                raise SourceError(
                    f"{stmt_where}: the UPDATE changes the key column {key} ({BATCH_MARK} line {line}): batches are "
                    "ranges of the key, so updated rows would move between batches. Batch on another NOT NULL "
                    "column (the primary key)"
                )
    relation = node.relation
    assert relation is not None and relation.relname  # the grammar requires the target table
    ref: str = (relation.alias.aliasname if relation.alias is not None else None) or relation.relname
    return BatchSpec(
        index=index,
        path=path,
        line=line,
        statement_line=statement.line,
        statement_column=statement.column,
        statement_sql=statement.sql,
        kind=kind,
        key=key,
        size=size,
        pause=pause,
        schema=relation.schemaname or None,
        table=relation.relname,
        only=not relation.inh,
        first_sql=_rewrite(node, ref, key, lower=False),
        next_sql=_rewrite(node, ref, key, lower=True),
    )


def _column_name(value: str, where: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        name = value[1:-1].replace('""', '"')
        if name:
            return name
    elif _SIMPLE_NAME.fullmatch(value):
        return value.lower()  # PostgreSQL folds unquoted names to lower case
    raise SourceError(f"{where}: {BATCH_MARK}: key={value} is not a column name; write key=id or key=\"MixedCase\"")


def _size(value: str | None, where: str) -> int:
    if value is None:
        return DEFAULT_SIZE
    if not value.isdigit() or int(value) <= 0:
        raise SourceError(f"{where}: {BATCH_MARK}: size={value} must be a whole number of rows > 0; {_HELP}")
    return int(value)


def _pause(value: str | None, where: str) -> float:
    if value is None:
        return 0.0
    match = _DURATION.fullmatch(value)
    if match is None:
        raise SourceError(f"{where}: {BATCH_MARK}: pause={value} is not a duration; write 50ms, 1s or 0")
    return float(match["number"]) * _UNITS[match["unit"]]


def _rewrite(node: Any, ref: str, key: str, *, lower: bool) -> str:
    """The statement with the key range ANDed to its WHERE clause, printed by pglast (``$1``, ``$2``)."""
    tree = copy.deepcopy(node)

    def column() -> ast.ColumnRef:
        return ast.ColumnRef(fields=(ast.String(sval=ref), ast.String(sval=key)))

    def compare(op: str, number: int) -> ast.A_Expr:
        return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval=op),), lexpr=column(),
                          rexpr=ast.ParamRef(number=number))

    conditions = [compare(">", 1), compare("<=", 2)] if lower else [compare("<=", 1)]
    if tree.whereClause is not None:
        conditions.insert(0, tree.whereClause)
    tree.whereClause = (
        conditions[0] if len(conditions) == 1
        else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=tuple(conditions))
    )
    return str(RawStream()(tree))


class _Lines:
    """Offsets <-> 1-based lines and columns of a text."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def start(self, line: int) -> int:
        return self.starts[line - 1]

    def offset(self, line: int, column: int) -> int:
        return self.starts[line - 1] + column - 1


# --------------------------------------------------------------------------
# Running half (on a connection the caller gives)


@dataclass(frozen=True)
class BatchTarget:
    """The batched statement's table and key, resolved on a database."""

    table: sql.Composable  # "schema"."table"
    key: sql.Identifier
    only: bool
    name: str  # schema.table, for messages


@dataclass(frozen=True)
class BatchState:
    """How far a batched statement got: the last key done (as text), rows changed and batches run so far."""

    last_key: str | None = None
    rows: int = 0
    batches: int = 0

    def after(self, upper: str, rows: int) -> BatchState:
        """The state after one more batch up to *upper* that changed *rows* rows."""
        return BatchState(upper, self.rows + rows, self.batches + 1)


def resolve_target(conn: psycopg.Connection[Any], spec: BatchSpec, *, missing_ok: bool = False) -> BatchTarget | None:
    """Find *spec*'s table on the database and check its key: a ``NOT NULL`` column of that table.

    Returns ``None`` when the table does not exist and *missing_ok* (an
    earlier statement of the migration may create it).  Raises
    :class:`~harness.errors.SourceError` naming the directive's ``file:line``
    otherwise: a key that is not a column, or may be NULL (rows with a NULL
    key would never fall into a range).
    """
    written = sql.Identifier(*(n for n in (spec.schema, spec.table) if n)).as_string(conn)
    row = conn.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        [written],
    ).fetchone()
    if row is None:
        if missing_ok:
            return None
        raise SourceError(f"{spec.where}: {BATCH_MARK}: table {spec.table_name} does not exist")
    oid, schema, table = row
    name = f"{schema}.{table}"
    column = conn.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        [oid, spec.key],
    ).fetchone()
    if column is None:
        names = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [oid],
        ).fetchall()]
        raise SourceError(
            f"{spec.where}: {BATCH_MARK}: key={spec.key} is not a column of {name} (its columns: "
            f"{', '.join(names)}); name a NOT NULL column of the table, usually its primary key"
        )
    if not column[0]:
        raise SourceError(
            f"{spec.where}: {BATCH_MARK}: key column {spec.key} of {name} may be NULL, and rows whose key is NULL "
            "would never fall into a batch; batch on a NOT NULL column (the primary key)"
        )
    return BatchTarget(table=sql.Identifier(schema, table), key=sql.Identifier(spec.key), only=spec.only, name=name)


def _boundary(conn: psycopg.Connection[Any], spec: BatchSpec, target: BatchTarget, last_key: str | None) -> str | None:
    """The upper key of the next batch: the *size*-th key after *last_key*, else the greatest; None when done."""
    source = sql.SQL("ONLY {}").format(target.table) if target.only else target.table
    after = sql.SQL(" WHERE {} > %(last)s").format(target.key) if last_key is not None else sql.SQL("")
    params = {"last": last_key, "skip": spec.size - 1}
    row = conn.execute(
        # The output column gets its own name: ORDER BY id would otherwise sort by the text the query returns.
        sql.SQL("SELECT {key}::text AS upper_key FROM {source}{after} ORDER BY {key} OFFSET %(skip)s LIMIT 1").format(
            key=target.key, source=source, after=after),
        params,
    ).fetchone()
    if row is None:
        row = conn.execute(
            sql.SQL("SELECT max({key})::text FROM {source}{after}").format(key=target.key, source=source, after=after),
            params,
        ).fetchone()
    return row[0] if row is not None else None


def next_batch(
    conn: psycopg.Connection[Any], spec: BatchSpec, target: BatchTarget, last_key: str | None
) -> tuple[str | None, int]:
    """Run the batch after *last_key* in the caller's transaction: ``(its upper key, rows changed)``.

    ``(None, 0)`` when no key is left.  Keys travel as text and are sent as
    untyped parameters, so the server reads them as the key column's type.
    A failure raises :class:`~harness.execute.StatementFailed` naming the
    statement's ``file:line:column``.
    """
    try:
        upper = _boundary(conn, spec, target, last_key)
        if upper is None:
            return None, 0
        # pglast printed the rewritten statement with $1/$2 placeholders: a raw cursor sends them as they are.
        with psycopg.RawCursor(conn) as cur:
            if last_key is None:
                cur.execute(spec.first_sql, [upper])  # type: ignore[arg-type]
            else:
                cur.execute(spec.next_sql, [last_key, upper])  # type: ignore[arg-type]
            return upper, max(cur.rowcount, 0)
    except psycopg.Error as exc:
        raise StatementFailed(
            Failure(relpath(spec.path), spec.statement_line, spec.statement_column,
                    f"{spec.statement_sql} -- in batches by {spec.key}, after {last_key!r}", exc.diag.sqlstate,
                    describe_pg_error(exc))
        ) from None


def run_batched(
    conn: psycopg.Connection[Any],
    spec: BatchSpec,
    *,
    pause: bool = True,
    on_batch: Callable[[BatchState], None] | None = None,
) -> BatchState:
    """Run a batched statement to the end on an autocommit connection, each batch in its own transaction.

    Keeps its progress in memory only (apply records it in the database).
    With *pause* false the directive's pause is skipped (rehearsals).
    """
    target = resolve_target(conn, spec)
    assert target is not None
    state = BatchState()
    while True:
        with conn.transaction():
            upper, rows = next_batch(conn, spec, target, state.last_key)
        if upper is None:
            return state
        state = state.after(upper, rows)
        if on_batch is not None:
            on_batch(state)
        if pause and spec.pause:
            time.sleep(spec.pause)


def run_migration_batched(conn: psycopg.Connection[Any], migration: Migration, *, pause: bool = False) -> list[BatchState]:
    """Run every statement of *migration* on an autocommit connection, the batched ones in batches.

    Returns the final state of each batched statement, in order.
    """
    specs = {spec.index: spec for spec in migration.batches}
    states: list[BatchState] = []
    for index, statement in enumerate(migration.statements):
        spec = specs.get(index)
        if spec is None:
            run_statements(conn, [statement], migration.path)
        else:
            states.append(run_batched(conn, spec, pause=pause))
    return states
