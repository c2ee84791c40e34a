"""Run a migration's statements on a connection, reporting failures precisely.

Shared by the rehearsal and by apply: each statement is sent on its own so a
failure names the statement, its file, line and column, and the PostgreSQL
error with its position.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .errors import MigrationError
from .migration import Statement
from .redact import scrub

__all__ = ["StatementFailed", "run_statements", "describe_pg_error", "relpath"]

log = logging.getLogger(__name__)


def relpath(path: Path | str) -> str:
    """*path* relative to the working directory when it is below it, for messages."""
    return _relpath(str(path), os.getcwd())


# Resolving costs two realpath walks (about 0.15 ms); lint asks for every
# migration's path, and a rehearsal's paths and directory do not change.
@functools.lru_cache(maxsize=4096)
def _relpath(path: str, cwd: str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class Failure:
    """Where and why a statement failed."""

    path: str
    line: int
    column: int
    statement: str
    sqlstate: str | None
    error: str


class StatementFailed(MigrationError):
    """A statement failed; carries the :class:`Failure` for reports."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(
            f"{failure.path}:{failure.line}:{failure.column}: {failure.error}\n"
            f"    statement: {_shorten(failure.statement)}"
        )

    @property
    def sqlstate(self) -> str | None:
        """The SQLSTATE of the PostgreSQL error, if any."""
        return self.failure.sqlstate


def _shorten(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_pg_error(exc: psycopg.Error) -> str:
    """The PostgreSQL error as one or two readable lines (secrets scrubbed)."""
    diag = exc.diag
    primary = diag.message_primary or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = [f"{type(exc).__name__}: {primary}"]
    if diag.sqlstate:
        parts[0] += f" (SQLSTATE {diag.sqlstate})"
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        parts.append(f"HINT: {diag.message_hint}")
    if diag.context and "PL/pgSQL" in diag.context:
        parts.append(f"CONTEXT: {diag.context.strip().splitlines()[0]}")
    return scrub("\n    ".join(parts))


def _position(statement: Statement, exc: psycopg.Error) -> tuple[int, int]:
    """File line/column of the error: the statement's start moved by the error's position."""
    pos = exc.diag.statement_position
    if not pos:
        return statement.line, statement.column
    try:
        offset = int(pos) - 1
    except ValueError:
        return statement.line, statement.column
    before = statement.sql[:offset]
    newlines = before.count("\n")
    if newlines == 0:
        return statement.line, statement.column + offset
    return statement.line + newlines, offset - before.rfind("\n")


def run_statements(
    conn: psycopg.Connection,
    statements: Sequence[Statement],
    path: Path | str,
    *,
    timings: list[tuple[Statement, float]] | None = None,
) -> None:
    """Execute *statements* in order on *conn* (in whatever transaction state it is).

    Raises :class:`StatementFailed` on the first error.  When *timings* is a
    list, ``(statement, seconds)`` pairs are appended to it.
    """
    for statement in statements:
        t0 = time.perf_counter()
        try:
            # Migration text is trusted SQL, sent as written (psycopg types it as a literal string).
            conn.execute(statement.sql)  # type: ignore[call-overload]
        except psycopg.Error as exc:
            line, column = _position(statement, exc)
            # The path is made relative only here: resolving it costs more than a small statement.
            raise StatementFailed(
                Failure(relpath(path), line, column, statement.sql, exc.diag.sqlstate, describe_pg_error(exc))
            ) from None
        if timings is not None:
            timings.append((statement, time.perf_counter() - t0))
