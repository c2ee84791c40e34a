"""Cost of one catalog snapshot on the rehearsal benchmark's final schema.

Builds the schema that ``bench/rehearsal_bench.py`` ends with (200 migrations:
50 tables, 150 columns, 100 indexes, 50 constraints, 50 functions), then
times ``take_snapshot`` on an idle autocommit connection and inside an open
transaction (the way the rehearsal engine takes most of its snapshots).

The previous implementation is read from git (``--before``, default: the
commit that introduced the one-query snapshot) and timed side by side, the
calls alternating; with
``--check`` both are also run on the benchmark schema and on every fixture
of ``tests/test_snapshot.py`` (the rich schema, and each change case before
and after its change) and their snapshots must be byte-identical.

It also times a diff of the final snapshot against itself with every
function body reformatted (no difference): normalizing the bodies the first
time, then from the cache.

    python bench/snapshot_bench.py [--migrations 200] [--runs 200] [--check] [--before REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from harness import snapshot
from harness.postgres import Server, start_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rehearsal_bench import generate  # noqa: E402

#: The commit whose harness/snapshot.py is "before" (the one-query snapshot as first written).
BEFORE = "af25162"
#: Measured on the final schema before the rewrite, when git is not at hand (ms, min of 50).
BEFORE_MS = {"autocommit": 5.2, "in transaction": 5.2}


def load_before(rev: str) -> types.ModuleType | None:
    """The module harness/snapshot.py as of *rev*, or None when git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:harness/snapshot.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(previous implementation not available from git {rev}: {exc})")
        return None
    spec = importlib.util.spec_from_loader("harness._snapshot_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "harness"
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:harness/snapshot.py", "exec"), module.__dict__)  # noqa: S102 - our own source
    return module


def timed(take: Callable[[], object], runs: int) -> tuple[float, float]:
    """(min, median) of *runs* calls, in milliseconds."""
    return timed_side_by_side([take], runs)[0]


def timed_side_by_side(takes: list[Callable[[], object]], runs: int) -> list[tuple[float, float]]:
    """(min, median) in milliseconds of *runs* calls of each of *takes*, the calls alternating."""
    for take in takes:
        take()  # prepares the statement
    times: list[list[float]] = [[] for _ in takes]
    for _ in range(runs):
        for take, found in zip(takes, times):
            t0 = time.perf_counter()
            take()
            found.append(time.perf_counter() - t0)
    return [(min(found) * 1000, statistics.median(found) * 1000) for found in times]


def compare_bodies(before: snapshot.Snapshot) -> tuple[float, float, int]:
    """Milliseconds to diff *before* against itself with every function body reformatted: first, then cached."""
    after = snapshot.Snapshot(objects={
        key: ({**attrs, "body": "  " + attrs["body"].replace(" ", "  ") + " -- reformatted\n"}
              if key.startswith(("function ", "procedure ")) and attrs.get("body") else attrs)
        for key, attrs in before.objects.items()
    })
    bodies = sum(1 for key in after.objects if key.startswith(("function ", "procedure ")))
    snapshot._body_form.cache_clear()
    t0 = time.perf_counter()
    first = snapshot.diff_snapshots(before, after)
    t1 = time.perf_counter()
    again = snapshot.diff_snapshots(before, after)
    t2 = time.perf_counter()
    if first or again:
        raise SystemExit(f"reformatted bodies compared as different: {snapshot.format_changes(first)}")
    return (t1 - t0) * 1000, (t2 - t1) * 1000, bodies


def build_schema(server: Server, count: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), count)
        name = f"snap_{uuid.uuid4().hex[:8]}"
        server.create_database(name)
        with server.connect(name, autocommit=True) as conn:
            for path in sorted((Path(tmp) / "migrations").glob("*.sql")):
                if not path.name.endswith(".down.sql"):
                    conn.execute(path.read_bytes())
    return name


def check(server: Server, db: str, before: types.ModuleType) -> int:
    """Compare before/after snapshots on the bench schema and the test fixtures; return the number compared."""
    spec = importlib.util.spec_from_file_location("_snapshot_fixtures", ROOT / "tests" / "test_snapshot.py")
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    compared = 0

    def same(conn: psycopg.Connection[Any], what: str) -> None:
        nonlocal compared
        old, new = before.take_snapshot(conn), snapshot.take_snapshot(conn)
        if old.to_json() != new.to_json():
            diff = snapshot.format_changes(snapshot.diff_snapshots(old, new))
            raise SystemExit(f"snapshots differ on {what}:\n{diff}")
        compared += 1

    with server.connect(db, autocommit=True) as conn:
        same(conn, "the benchmark schema")
    scratch = f"snap_{uuid.uuid4().hex[:8]}"
    server.create_database(scratch)
    try:
        with server.connect(scratch, autocommit=False) as conn:
            conn.execute(fixtures.RICH_SCHEMA)
            same(conn, "RICH_SCHEMA")
            conn.rollback()
            for case_id, setup, change, _expected in fixtures.CASES:
                if setup:
                    conn.execute(setup)
                same(conn, f"{case_id} (before)")
                conn.execute(change)
                same(conn, f"{case_id} (after)")
                conn.rollback()
    finally:
        server.drop_database(scratch)
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migrations", type=int, default=200)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--before", default=BEFORE, help="git revision of the previous implementation")
    parser.add_argument("--check", action="store_true", help="also require byte-identical snapshots")
    args = parser.parse_args()
    before = load_before(args.before)
    with start_server("embedded") as server:
        db = build_schema(server, args.migrations)
        with server.connect(db, autocommit=True) as conn:
            conn.prepare_threshold = None
            kinds = Counter(key.split(" ", 1)[0] for key in snapshot.take_snapshot(conn).objects)
            print(f"PostgreSQL {server.version}, {args.migrations} migrations: " + ", ".join(
                f"{n} {kind}" for kind, n in sorted(kinds.items())))
            print(f"{'take_snapshot (ms, min / median)':34} {'before':>16} {'now':>16}")
            for label in ("autocommit", "in transaction"):
                if label == "in transaction":
                    conn.execute("BEGIN")
                if before is not None:
                    now, old = timed_side_by_side(
                        [lambda: snapshot.take_snapshot(conn), lambda: before.take_snapshot(conn)], args.runs
                    )
                    old_text = f"{old[0]:6.2f} / {old[1]:6.2f}"
                else:
                    now = timed(lambda: snapshot.take_snapshot(conn), args.runs)
                    old_text = f"{BEFORE_MS[label]:6.2f} (recorded)"
                print(f"  {label:32} {old_text:>16} {now[0]:6.2f} / {now[1]:6.2f}")
            conn.execute("ROLLBACK")
            first, cached, bodies = compare_bodies(snapshot.take_snapshot(conn))
            print(f"diff with all {bodies} function bodies reformatted (equal): "
                  f"{first:.2f} ms normalizing, {cached:.2f} ms cached")
        if args.check:
            if before is None:
                raise SystemExit("--check needs the previous implementation from git")
            print(f"identical snapshots: {check(server, db, before)} compared")
        server.drop_database(db)


if __name__ == "__main__":
    main()
