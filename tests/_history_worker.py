"""A runner stand-in for tests/test_history.py: take the run lock, read the history, record what is pending.

Usage: ``python _history_worker.py DSN VERSION...``.  Prints ``ready`` once
imported and connected, waits for a line on stdin (so that the test can start
several workers at the same moment), then prints one JSON line: the versions
this process recorded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import psycopg

from harness.history import compute_status, ensure_table, read_applied, record_applied, run_lock


@dataclass(frozen=True)
class FakeMigration:
    """Stand-in for harness.sources.Migration (only the attributes history uses)."""

    version: str
    name: str
    checksum: str

    @property
    def id(self) -> str:  # noqa: A003 - the domain's name
        return f"{self.version}_{self.name}"


def main(argv: list[str]) -> int:
    dsn, versions = argv[0], argv[1:]
    migrations = [FakeMigration(v, f"step_{v}", f"sum{v}") for v in versions]
    with psycopg.connect(dsn, autocommit=True) as conn:
        print("ready", flush=True)
        sys.stdin.readline()
        recorded: list[str] = []
        with run_lock(dsn, timeout=20, poll=0.02):
            ensure_table(conn)
            status = compute_status(migrations, read_applied(conn))
            for migration in status.pending:
                with conn.transaction():
                    time.sleep(0.05)  # the "migration": widens the window for a race
                    record_applied(conn, migration, execution_ms=50, mode="development")
                recorded.append(migration.version)
    print(json.dumps({"pid": os.getpid(), "recorded": recorded}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
