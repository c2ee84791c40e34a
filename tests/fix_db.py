"""Database fixtures: one PostgreSQL server per session, fresh databases, and small SQL helpers.

Loaded as a plugin by ``conftest.py`` (``pytest_plugins``), as psycopg loads
its ``tests/fix_db.py``.  Each fixture is an override point: define one of
the same name in a test module to change it there.

The session server is a real PostgreSQL from the embedded binaries unless
``HARNESS_TEST_PROVIDER`` names another provider (``HARNESS_TEST_DSN`` for
``dsn``); each test that needs a database gets a fresh one, created from
``template1``.  The plain functions below (:func:`query`, :func:`execute`,
...) work on a connection string and are imported by the tests that use
them (``from tests.fix_db import query``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from harness.postgres import Server, start_server

# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """A real PostgreSQL server shared by the whole session (override to change provider)."""
    provider = os.environ.get("HARNESS_TEST_PROVIDER", "embedded")
    server = start_server(provider, dsn=os.environ.get("HARNESS_TEST_DSN"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db_name(pg_server: Server) -> Iterator[str]:
    """The name of a fresh, empty database on the session server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def db_dsn(pg_server: Server, db_name: str) -> str:
    """Connection string of a fresh, empty database."""
    return pg_server.dsn(db_name)


@pytest.fixture(scope="module")
def module_dsn(pg_server: Server) -> Iterator[str]:
    """A database shared by the tests of one module (each test rolls back what it did), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def module_conn(module_dsn: str) -> Iterator[psycopg.Connection]:
    """One connection to :func:`module_dsn` for the module's tests."""
    with psycopg.connect(module_dsn) as conn:
        yield conn


@pytest.fixture
def conn(module_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A connection in a transaction on an empty database, rolled back after the test."""
    try:
        yield module_conn
    finally:
        module_conn.rollback()


# --------------------------------------------------------------------------
# Helpers on a connection string


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    """The rows *text* returns ([] for a statement without a result), run in autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def execute(dsn: str, text: str) -> None:
    """Run *text* in autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # type: ignore[arg-type]


def history_versions(dsn: str) -> list[str]:
    """Versions in harness.schema_migrations ([] without the table)."""
    if not query(dsn, "SELECT to_regclass('harness.schema_migrations') IS NOT NULL")[0][0]:
        return []
    return [r[0] for r in query(dsn, "SELECT version FROM harness.schema_migrations ORDER BY version::numeric")]


def table_exists(dsn: str, name: str) -> bool:
    """True when the relation *name* exists."""
    return bool(query(dsn, "SELECT to_regclass(%s) IS NOT NULL", [name])[0][0])


def sleeping_backend(dsn: str) -> int | None:
    """The pid of a harness apply session that is running pg_sleep, if any."""
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'migration-harness apply' "
        "AND query ILIKE '%pg_sleep%' AND state = 'active' AND datname = current_database()",
    )
    return rows[0][0] if rows else None


@contextlib.contextmanager
def holding(dsn: str, text: str) -> Iterator[psycopg.Connection[Any]]:
    """A session with an open transaction that ran *text* (and so holds its locks) for the block."""
    conn = psycopg.connect(dsn)
    try:
        conn.execute(text)  # type: ignore[arg-type]
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
