"""The plan's desired schema (``schema:``): load it into a scratch database, compare the migrated schema with it.

The rehearsal's ``schema_matches`` assertion and ``harness check-schema`` /
``harness generate`` (:mod:`harness.generate`) share this: the desired
schema's files in load order, its snapshot, and the comparison that leaves
column order out (a migration can only append columns).

Layers: this module uses the server it is handed and never starts one.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from .errors import ConfigError, HarnessError
from .execute import StatementFailed, relpath, run_statements
from .parsing import parse_sql
from .plan import Plan
from .postgres import Server
from .redact import scrub
from .snapshot import Change, Snapshot, diff_snapshots, format_changes, take_snapshot

__all__ = [
    "schema_files",
    "schema_display",
    "desired_database",
    "desired_snapshot",
    "compare_snapshots",
    "schema_matches",
]

log = logging.getLogger(__name__)


def schema_files(plan: Plan) -> list[Path]:
    """The files of the plan's desired schema, in the order they are loaded (names, then sub-directories)."""
    path: Path | None = getattr(plan, "schema", None)
    where = plan.display_path or str(plan.path)
    if path is None:
        raise ConfigError(
            f"{where}: the plan has no `schema:`; add `schema: schema.sql` (a SQL file, or a directory of .sql "
            "files read in name order) that builds the schema the migrations should produce"
        )
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*.sql") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise ConfigError(f"{where}: schema: {relpath(path)} holds no .sql files; put the desired schema there")
        return files
    if path.is_file():
        return [path]
    raise ConfigError(f"{where}: schema: {relpath(path)} does not exist; create it or fix the path")


def schema_display(plan: Plan) -> str:
    """The plan's ``schema:`` as messages show it (a directory ends with ``/``; ``(none)`` without one)."""
    path: Path | None = getattr(plan, "schema", None)
    if path is None:
        return "(none)"
    shown = relpath(path)
    return shown + "/" if path.is_dir() and not shown.endswith("/") else shown


@contextlib.contextmanager
def desired_database(plan: Plan, server: Server) -> Iterator[psycopg.Connection[Any]]:
    """A scratch database holding the plan's desired schema; dropped afterwards."""
    files = schema_files(plan)
    name = f"mh_desired_{uuid.uuid4().hex[:10]}"
    server.create_database(name)
    try:
        with server.connect(name, autocommit=True) as conn:
            conn.prepare_threshold = None
            conn.execute("SET client_min_messages = warning")
            for path in files:
                try:
                    text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"cannot read the desired schema file {relpath(path)}: {exc}") from None
                statements = parse_sql(text, path, target_major=server.major)
                try:
                    run_statements(conn, statements, path)
                except StatementFailed as exc:
                    raise ConfigError(
                        f"the desired schema does not load on an empty database: {exc}\n"
                        f"Fix {relpath(path)}: the schema files must build the whole schema, in name order."
                    ) from None
            yield conn
    finally:
        try:
            server.drop_database(name)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log.warning("could not drop the desired-schema database %s: %s", name, exc)


def desired_snapshot(plan: Plan, server: Server) -> Snapshot:
    """The snapshot of the plan's desired schema (loaded into a scratch database on *server*)."""
    with desired_database(plan, server) as conn:
        return take_snapshot(conn)


def compare_snapshots(migrated: Snapshot, desired: Snapshot) -> tuple[list[Change], list[str]]:
    """Differences from what the migrations produce to the desired schema, and notes.

    Column order is not a difference (a migration can only append columns;
    PostgreSQL cannot reorder them): it is returned as a note instead.
    """
    changes = diff_snapshots(migrated, desired)
    notes = [
        f"column order of {c.object} differs (migrations: {', '.join(c.before or [])}; desired: "
        f"{', '.join(c.after or [])}): new columns are appended, PostgreSQL cannot reorder them"
        for c in changes
        if c.attribute == "column_order"
    ]
    return [c for c in changes if c.attribute != "column_order"], notes


def schema_matches(plan: Plan, server: Server, final_snapshot: Snapshot) -> tuple[bool, str]:
    """The plan-level ``schema_matches`` assertion: do the migrations produce the desired schema?

    *final_snapshot* is the schema after the last migration (the rehearsal
    has it); the desired schema is loaded into a scratch database on
    *server*.  Returns ``(ok, message)``; a desired schema that does not
    load is a failure with the error.
    """
    try:
        desired = desired_snapshot(plan, server)
    except HarnessError as exc:
        return False, scrub(str(exc))
    changes, notes = compare_snapshots(final_snapshot, desired)
    schema = schema_display(plan)
    extra = "".join(f"\nnote: {n}" for n in notes)
    if not changes:
        return True, f"the migrations produce the desired schema {schema}: 0 differences{extra}"
    count = len(changes)
    return False, (
        f"the migrations and the desired schema {schema} disagree: {count} difference{'s' if count != 1 else ''} "
        "(+ only in the desired schema, - only in the migrations, ~ migrations -> desired):\n"
        f"{format_changes(changes)}\nWrite a migration for them with `harness generate NAME`.{extra}"
    )


