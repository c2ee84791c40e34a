"""Rehearsal cost vs a bare ``psql --single-transaction -f`` of the same files.

Target (plans issue): rehearsing 200 small migrations with idempotent + rollback
+ backward_compatible on every one costs at most 4x the bare apply.  Both run
against the same already-started server; each side creates its own fresh
database.  Prints the median of several runs and the ratio.

For scale it also times the floor of any such rehearsal: every migration
executed four times (up, up again, down, up again: what idempotent and
rollback need), as few messages as possible, with no check at all.

    python bench/rehearsal_bench.py [--migrations 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from harness.plan import load_plan
from harness.postgres import start_server
from harness.rehearsal import PASSED, Rehearsal
from harness.sources import load_plan_migrations


def generate(root: Path, count: int) -> Path:
    """Write *count* small idempotent migrations with downs, and a plan."""
    mdir = root / "migrations"
    mdir.mkdir(parents=True)
    tables: list[str] = []
    for i in range(1, count + 1):
        kind = i % 4
        if kind == 1 or not tables:
            name = f"t{i}"
            up = f"CREATE TABLE IF NOT EXISTS {name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);"
            down = f"DROP TABLE IF EXISTS {name};"
            tables.append(name)
        elif kind == 2:
            t = tables[-1]
            up = f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS c{i} integer;"
            down = f"ALTER TABLE {t} DROP COLUMN IF EXISTS c{i};"
        elif kind == 3:
            t = tables[-1]
            up = f"CREATE INDEX IF NOT EXISTS {t}_v_{i} ON {t} (v);"
            down = f"DROP INDEX IF EXISTS {t}_v_{i};"
        else:
            up = (
                f"CREATE OR REPLACE FUNCTION f{i}(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT x + {i} $$;"
            )
            down = f"DROP FUNCTION IF EXISTS f{i}(integer);"
        (mdir / f"{i:05d}_m{i}.sql").write_text(up + "\n")
        (mdir / f"{i:05d}_m{i}.down.sql").write_text(down + "\n")
    plans = root / "plans"
    plans.mkdir()
    (plans / "bench.yaml").write_text(
        "migrations: migrations/\n"
        "rehearsal: {provider: embedded}\n"
        "defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false, locks: false}\n"
        "chain_rollback: false\n"
    )
    return plans / "bench.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migrations", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_server("embedded") as server:
        plan_path = generate(Path(tmp), args.migrations)
        files = sorted(p for p in (Path(tmp) / "migrations").glob("*.sql") if not p.name.endswith(".down.sql"))
        psql = str(server.bindir / "psql") if server.bindir else "psql"
        bare, rehearsed, floor = [], [], []
        items = 0
        migrations = load_plan_migrations(load_plan(plan_path))
        for _ in range(args.runs):
            db = f"bench_{uuid.uuid4().hex[:8]}"
            cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", server.dsn(db)]
            for f in files:
                cmd += ["-f", str(f)]
            t0 = time.perf_counter()
            server.create_database(db)
            subprocess.run(cmd, check=True, capture_output=True)
            bare.append(time.perf_counter() - t0)
            server.drop_database(db)

            db = f"bench_{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            server.create_database(db)
            with server.connect(db, autocommit=True) as conn:
                for m in migrations:
                    up = "\n;\n".join(st.sql for st in m.statements)
                    down = "\n;\n".join(st.sql for st in m.down_statements or ())
                    conn.execute(f"BEGIN; {up}\n; COMMIT".encode())
                    conn.execute(f"BEGIN; {up}\n; ROLLBACK; BEGIN; {down}\n; {up}\n; ROLLBACK".encode())
            floor.append(time.perf_counter() - t0)
            server.drop_database(db)

            plan = load_plan(plan_path)
            t0 = time.perf_counter()
            with Rehearsal(plan, server) as rehearsal:
                results = rehearsal.run_all()
            rehearsed.append(time.perf_counter() - t0)
            failed = [(i.id, o.message) for i, o in results if o.status != PASSED]
            if failed:
                raise SystemExit(f"rehearsal not green: {failed[:3]}")
            items = len(results)
        b, r, f = statistics.median(bare), statistics.median(rehearsed), statistics.median(floor)
        print(f"migrations: {args.migrations}, rehearsal items: {items}, PostgreSQL {server.version}")
        print(f"bare psql --single-transaction -f: {b:.3f} s")
        print(f"floor, each migration run 4 times without checks: {f:.3f} s ({f / b:.2f}x)")
        print(f"harness rehearsal (apply+idempotent+rollback+backward_compatible): {r:.3f} s")
        print(f"ratio: {r / b:.2f}x (target <= 4x); above the floor: {r / f:.2f}x")


if __name__ == "__main__":
    main()
