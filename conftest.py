"""Shared fixtures for the harness's own test suite.

One rehearsal server per test session (a real PostgreSQL from the embedded
binaries unless ``HARNESS_TEST_PROVIDER`` names another provider); each test
that needs a database gets a fresh one, created from ``template1``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from harness.postgres import Server, start_server

pytest_plugins = ["pytester"]

# Every incremental snapshot a rehearsal takes during the suite is compared
# with a full one (harness/tracking.py): the whole corpus checks the tracking.
os.environ.setdefault("HARNESS_SNAPSHOTS", "verify")

# The suite's servers, like every throwaway server, keep their files in
# memory when the machine has room (harness.postgres.server_root).


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
