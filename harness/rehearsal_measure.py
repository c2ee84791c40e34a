"""What applying a migration measures for its later items, before the working database moves on.

The ``atomic`` item judges the failure rehearsal (the up, run in a
transaction that is rolled back, must leave nothing); the ``batch`` item
judges the batched run (the migration's ``-- harness:batch`` statements in
batches, on a copy of the state before).
"""

from __future__ import annotations

import psycopg

from .batch import run_migration_batched
from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .redact import scrub
from .rehearsal_model import BatchedRun, counters
from .snapshot import Snapshot, diff_snapshots, format_changes, table_fingerprints, take_snapshot
from .sources import Migration

__all__ = ["failure_rehearsal", "batched_run"]


def failure_rehearsal(conn: psycopg.Connection, migration: Migration, before: Snapshot) -> str | None:
    """Run the up migration in a transaction that is rolled back; report what survived."""
    conn.execute("BEGIN")
    try:
        run_statements(conn, migration.statements, migration.path)
    except StatementFailed:
        # The real apply reports this error; nothing to learn here.
        conn.execute("ROLLBACK")
        return None
    conn.execute("ROLLBACK")
    remaining = diff_snapshots(before, take_snapshot(conn))
    if remaining:
        return "changes survived a rolled-back transaction:\n" + format_changes(remaining)
    return None


def batched_run(conn: psycopg.Connection, migration: Migration) -> BatchedRun:
    """Run *migration* with its ``-- harness:batch`` statements in batches, on *conn* (a copy of the current state).

    The working database then applies it unbatched, as one statement; the
    ``batch`` item compares the two.  Pauses are skipped.
    """
    try:
        states = run_migration_batched(conn, migration)
    except HarnessError as exc:  # a statement failed, or the key is no NOT NULL column (SourceError)
        return BatchedRun(error=scrub(str(exc)))
    nodes = counters(conn).nodes
    data = table_fingerprints(conn, nodes) if nodes else {}
    return BatchedRun(snapshot=take_snapshot(conn), data=data, batches=sum(s.batches for s in states),
                      rows=sum(s.rows for s in states))
