"""The harness's own sessions set what they need, whatever the server the user brings says.

A server given by DSN may run with ``jit = on`` (PostgreSQL's default) and
with timeouts set for its roles.  The harness's sessions there turn JIT off
and the timeouts off (``harness.postgres.SESSION_SETTINGS``), per session,
and the rehearsal's verdicts are the same as on the throwaway server.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from harness.errors import ServerError
from harness.plan import load_plan
from harness.postgres import DsnServer, Server, local_binaries, start_server
from harness.rehearsal import Rehearsal
from harness.snapshot import take_snapshot

# The role's own settings on the user's server: JIT for every query, and
# limits a rehearsal must not inherit.
ROLE_SETTINGS = {
    "jit": "on",
    "jit_above_cost": "0",
    "statement_timeout": "200ms",
    "idle_in_transaction_session_timeout": "300ms",
    "lock_timeout": "100ms",
}

MIGRATIONS = {
    "1_users.sql": "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text);\n",
    "1_users.down.sql": "DROP TABLE IF EXISTS users;\n",
    # Longer than the role's statement_timeout.
    "2_slow.sql": "SELECT pg_sleep(0.4);\nCREATE INDEX IF NOT EXISTS users_email ON users (email);\n",
    "2_slow.down.sql": "DROP INDEX IF EXISTS users_email;\n",
}
PLAN = """\
migrations: migrations/
rehearsal: {provider: embedded}
defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false}
steps:
  - migration: 2_slow
    checks:
      - {name: jit, sql: "SELECT current_setting('jit')", expect: "off"}
      - {name: timeout, sql: "SELECT current_setting('statement_timeout')", expect: "0"}
"""


def _project(root: Path) -> Path:
    (root / "migrations").mkdir()
    for name, text in MIGRATIONS.items():
        (root / "migrations" / name).write_text(text)
    (root / "plans").mkdir()
    path = root / "plans" / "p.yaml"
    path.write_text(textwrap.dedent(PLAN))
    return path


def _verdicts(server: Server, plan_path: Path) -> dict[str, tuple[str, str]]:
    with Rehearsal(load_plan(plan_path), server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


def _role_server(base: Server) -> Iterator[tuple[DsnServer, str]]:
    """A DsnServer on *base* as a new superuser whose role carries :data:`ROLE_SETTINGS`; and its DSN."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    with base.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(role)))
        for name, value in ROLE_SETTINGS.items():
            conn.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(name), sql.Literal(value))
            )
    dsn = make_conninfo(base.dsn("postgres"), user=role)
    server = DsnServer(dsn)
    try:
        yield server, dsn
    finally:
        server.stop()
        with base.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def role_server(pg_server: Server) -> Iterator[tuple[DsnServer, str]]:
    yield from _role_server(pg_server)


def _settings(conn: psycopg.Connection) -> dict[str, str]:
    names = ["jit", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"]
    return {name: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]) for name in names}


def test_harness_sessions_turn_jit_and_the_roles_timeouts_off(role_server: tuple[DsnServer, str]) -> None:
    server, dsn = role_server
    with psycopg.connect(dsn, autocommit=True) as plain:
        # The role's settings are in force for a session the harness did not set up.
        assert _settings(plain) == {
            "jit": "on", "statement_timeout": "200ms", "lock_timeout": "100ms",
            "idle_in_transaction_session_timeout": "300ms",
        }
    with server.connect("postgres") as conn:
        assert _settings(conn) == {
            "jit": "off", "statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0",
        }
        conn.execute("RESET ALL")  # a migration's RESET goes back to the session's settings, not the role's
        assert _settings(conn)["jit"] == "off"


def test_a_dsn_keeps_its_own_options(role_server: tuple[DsnServer, str]) -> None:
    server, dsn = role_server
    with_options = DsnServer(make_conninfo(dsn, options="-c application_name=mine -c jit=on"))
    try:
        with with_options.connect("postgres") as conn:
            assert conn.execute("SHOW application_name").fetchone()[0] == "mine"
            assert conn.execute("SHOW jit").fetchone()[0] == "off"
    finally:
        with_options.stop()


def test_rehearsal_verdicts_on_the_users_server_match_the_throwaway_one(
    pg_server: Server, role_server: tuple[DsnServer, str], tmp_path: Path
) -> None:
    server, _ = role_server
    plan_path = _project(tmp_path)
    embedded = _verdicts(pg_server, plan_path)
    on_dsn = _verdicts(server, plan_path)
    assert {k: v[0] for k, v in on_dsn.items()} == {k: v[0] for k, v in embedded.items()}
    assert [(k, m) for k, (status, m) in on_dsn.items() if status != "passed"] == []
    assert "2_slow::check[jit]" in on_dsn and "2_slow::check[timeout]" in on_dsn


def _jit_server() -> Server:
    """A local server with JIT available, on for every query, and pg_stat_statements loaded; else skip."""
    with_llvm = [b for b in local_binaries() if (b.bindir.parent / "lib" / "llvmjit.so").exists()]
    if not with_llvm:
        pytest.skip("no local PostgreSQL binaries with LLVM JIT (llvmjit.so) on this machine")
    settings = {"jit": "on", "jit_above_cost": "0", "shared_preload_libraries": "pg_stat_statements"}
    try:
        return start_server("local", with_llvm[0].major, settings=settings)
    except ServerError as exc:
        pytest.skip(f"cannot start a local server with JIT and pg_stat_statements: {exc}")


def _jit_compiled(conn: psycopg.Connection, like: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(jit_functions), 0)::int FROM pg_stat_statements WHERE query LIKE %s", [like]
    ).fetchone()
    return int(row[0]) if row else 0


def test_no_harness_query_is_jit_compiled_where_jit_is_on_for_everything(tmp_path: Path) -> None:
    """JIT really available and on server-wide: neither a rehearsal nor a snapshot on a target compiles anything."""
    with _jit_server() as server:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT pg_jit_available()").fetchone()[0]:
                pytest.skip("JIT is not available on the local server (no LLVM)")
            if conn.info.server_version < 150000:
                pytest.skip("pg_stat_statements counts JIT functions from PostgreSQL 15")
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
            # The counter counts: an ordinary query in this session is compiled.
            conn.execute("SELECT count(*) FROM pg_class /* jit probe */")
            assert _jit_compiled(conn, "%jit probe%") > 0
            dsn = DsnServer(server.dsn("postgres"))
            try:
                results = _verdicts(dsn, _project(tmp_path))
            finally:
                dsn.stop()
            assert [k for k, (status, _) in results.items() if status != "passed"] == []
            # Apply reads a target's catalogs in the target's own session (jit on here): the snapshot pins it off.
            take_snapshot(conn)
            compiled = conn.execute(
                "SELECT query FROM pg_stat_statements WHERE jit_functions > 0 "
                "AND query NOT LIKE %s AND query NOT LIKE %s",
                ["%jit probe%", "%pg_stat_statements%"],
            ).fetchall()
            # Left: the statement that pins the snapshot's settings, run in the target's session before
            # it turns JIT off: compiled here only because jit_above_cost = 0 (its cost is far below
            # the default 100000).  Not the catalog query.
            assert [q for (q,) in compiled if not q.startswith("WITH old AS MATERIALIZED")] == []
            assert _jit_compiled(conn, "%objects(o)%") == 0
            assert conn.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s", ["%objects(o)%"]).fetchone()[0] > 0
