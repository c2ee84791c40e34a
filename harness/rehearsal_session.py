"""The rehearsal's sessions: what the working database holds before the first migration, and how it is connected to.

The plan's built-in base (harness/bases) and its seed files load before the
first migration, so none of their objects counts as a migration's change.
Every session on the working database (or a copy of it) runs migrations with
the same settings.  A migration that fails for want of what a platform
creates is reported with the base's advice.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from . import bases
from .bases import Base
from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .layouts import supabase_folder
from .plan import Plan
from .redact import scrub
from .sources import parse_sql

__all__ = ["load_base_and_seed", "configure", "search_path", "describe_apply_failure"]


def load_base_and_seed(conn: psycopg.Connection, plan: Plan, base: Base | None, *, major: int, dbname: str) -> None:
    """Load the plan's built-in base, then its seed files, into the working database *dbname*."""
    _load_base(conn, base, major=major, dbname=dbname)
    for seed in plan.rehearsal.seed:
        text = seed.read_text(encoding="utf-8")
        statements = parse_sql(text, seed, target_major=major)
        try:
            run_statements(conn, statements, seed)
        except StatementFailed as exc:
            raise HarnessError(f"the rehearsal seed failed to load: {exc}") from None


def _load_base(conn: psycopg.Connection, base: Base | None, *, major: int, dbname: str) -> None:
    """Load the plan's built-in base: the state before the first migration starts from it, like a seed."""
    if base is None:
        return
    statements = parse_sql(base.read(), base.path, target_major=major)
    try:
        run_statements(conn, statements, base.path)
    except StatementFailed as exc:
        raise HarnessError(f"the rehearsal base {base.name} failed to load: {exc}") from None
    setting = search_path(base)
    if setting is not None:
        # For every later session on this database, and for one that RESETs it.
        conn.execute(sql.SQL("ALTER DATABASE {} SET {}").format(sql.Identifier(dbname), setting))
        conn.execute(sql.SQL("SET {}").format(setting))


def search_path(base: Base | None) -> sql.Composable | None:
    """``search_path = ...`` as the base wants it for sessions that run migrations, or ``None``."""
    if base is None or not base.search_path:
        return None
    return sql.SQL("search_path = {}").format(sql.SQL(", ").join(map(sql.Identifier, base.search_path)))


def configure(conn: psycopg.Connection, base: Base | None) -> None:
    """Set up a new session on the working database or a copy of it, as every migration runs."""
    # psycopg drops every prepared statement of a connection after a
    # ROLLBACK once it prepared any of its own; the snapshot query stays
    # prepared only if psycopg prepares nothing itself.
    conn.prepare_threshold = None
    conn.execute("SET client_min_messages = warning")
    setting = search_path(base)
    if setting is not None:  # a database restored or copied has lost its settings
        conn.execute(sql.SQL("SET {}").format(setting))


def describe_apply_failure(exc: StatementFailed, plan: Plan, base: Base | None) -> str:
    """A migration's apply failure as reported, with advice when a missing platform object or extension explains it."""
    layout = plan.layout
    supabase = layout == "supabase" or (layout == "auto" and supabase_folder(plan.migrations_dir))
    hint = bases.advice(exc.failure.error, base_name=base.name if base is not None else None, supabase_project=supabase)
    message = scrub(str(exc))
    return f"{message}\n    advice: {hint}" if hint else message
