"""Rehearsal cost vs a bare ``psql --single-transaction -f`` of the same files.

Target (plans issue): rehearsing 200 small migrations with idempotent + rollback
+ backward_compatible on every one costs at most 4x the bare apply.  Both run
against the same already-started server; each side creates its own fresh
database.  Prints the median of several runs and the ratio.

For scale it also times the floor of any such rehearsal: every migration
executed four times (up, up again, down, up again: what idempotent and
rollback need), as few messages as possible, with no check at all.

Where the server keeps its files matters more to ``psql`` than to the
rehearsal: creating and dropping relation files is most of a bare apply's
server time, and a disk file system with many recently deleted files makes
it several times slower than memory.  Servers keep their files in memory
when ``/dev/shm`` has room (``harness.postgres.server_root``), the strict
case for the ratio; the bench prints the file system, and ``--runtime-dir
DIR`` (or ``HARNESS_RUNTIME_DIR``)
puts them elsewhere, ``--runtime-dir /tmp`` on disk.  ``--seeded`` adds a
seed of 6 extensions and 500 partitions to the plan (and loads it in the
bare run too), the shape of a real schema that per-measurement work must not
grow with.

``--provider-dsn`` times something else: the same rehearsal on a server the
harness starts itself (``jit`` off, as every throwaway server) and on a
separately started server reached through ``provider: dsn`` whose settings
emulate a user's server at PostgreSQL's defaults with the cost threshold
exceeded (``jit = on``, ``jit_above_cost = 0``, server-wide), alternating
runs, medians and their ratio.  Both servers run the same binaries: local
ones built with LLVM when there are some (else the embedded ones, and JIT
may then not be available: the bench says which).

    python bench/rehearsal_bench.py [--migrations 200] [--runs 3] [--runtime-dir DIR] [--seeded] [--per-file] [--decompose]
    python bench/rehearsal_bench.py --provider-dsn [--migrations 285] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from harness import tracking
from harness.plan import load_plan
from harness.postgres import BinaryServer, DsnServer, Server, embedded_binaries, local_binaries, start_server
from harness.rehearsal import PASSED, Rehearsal
from harness.sources import Migration, load_plan_migrations


SEED = "\n".join(
    [f"CREATE EXTENSION {name};" for name in ("hstore", "pg_trgm", "citext", "btree_gist", "cube", "ltree")]
    + ["CREATE TABLE part (id integer, v text) PARTITION BY RANGE (id);"]
    + [f"CREATE TABLE part{i} PARTITION OF part FOR VALUES FROM ({i * 10}) TO ({i * 10 + 10});" for i in range(500)]
)


def generate(root: Path, count: int, seeded: bool = False) -> Path:
    """Write *count* small idempotent migrations with downs, and a plan (with a seed when *seeded*)."""
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
    if seeded:
        (root / "seed.sql").write_text(SEED + "\n")
    rehearsal = "{provider: embedded, seed: seed.sql}" if seeded else "{provider: embedded}"
    (plans / "bench.yaml").write_text(
        "migrations: migrations/\n"
        f"rehearsal: {rehearsal}\n"
        "defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false, locks: false}\n"
        "chain_rollback: false\n"
    )
    return plans / "bench.yaml"


# What --decompose adds to the floor, one layer at a time: (install the
# tracking, the statement ending an apply, the one ending each of the other
# three runs).  "mark" as an end reads nothing: the cost of the calls alone.
_MARK, _CHANGES = tracking.mark_sql(), tracking.changes_sql()
LAYERS: dict[str, tuple[bool, str | None, str | None]] = {
    "recording (event triggers on)": (True, None, None),
    "start and end calls, reading nothing": (True, _MARK, _MARK),
    "reading each applied state": (True, _CHANGES, _MARK),
    "reading all four states": (True, _CHANGES, _CHANGES),
}


def replay(
    server: Server, migrations: list[Migration], seeded: bool, install: bool = False,
    apply_end: str | None = None, other_end: str | None = None,
) -> float:
    """Seconds to run each migration 4 times (up; up again, down, up again rolled back) on a fresh database.

    In as few messages as possible, the way the rehearsal sends them.  With
    *install*, the tracking is installed first; a measurement starts before
    each run when an end statement is given (*apply_end* after the apply,
    *other_end* after each of the other runs).
    """
    db = f"bench_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    server.create_database(db)
    with server.connect(db, autocommit=True) as conn:
        if seeded:
            conn.execute(SEED.encode())
        if install:
            tracking.install(conn)

        def run(script: str, end: str | None) -> str:
            return f"{_MARK}; {script}\n; {end}" if end else script

        for m in migrations:
            up = "\n;\n".join(st.sql for st in m.statements)
            down = "\n;\n".join(st.sql for st in m.down_statements or ())
            again = run(up, other_end)
            conn.execute(f"BEGIN; {run(up, apply_end)}; COMMIT".encode())
            conn.execute(
                f"BEGIN; {again}; ROLLBACK; BEGIN; {run(down, other_end)}; {again}; ROLLBACK".encode()
            )
    seconds = time.perf_counter() - t0
    server.drop_database(db)
    return seconds


def file_system(path: Path) -> str:
    """The type of the file system *path* is on (Linux), e.g. ``tmpfs`` or ``ext4``."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def provider_dsn(count: int, runs: int) -> None:
    """Time the rehearsal on a throwaway server and on a ``jit = on`` server through ``provider: dsn``."""
    with_llvm = [b for b in local_binaries() if (b.bindir.parent / "lib" / "llvmjit.so").exists()]
    binaries = with_llvm[0] if with_llvm else embedded_binaries()
    if binaries is None:
        raise SystemExit("no PostgreSQL binaries: neither local ones nor the embedded ones")
    with tempfile.TemporaryDirectory() as tmp, BinaryServer(binaries) as own, BinaryServer(
        binaries, {"jit": "on", "jit_above_cost": "0"}
    ) as users, DsnServer(users.dsn("postgres")) as dsn:
        plan_path = generate(Path(tmp), count)
        # In a plain session (pg_jit_available() is false where jit is off, as in the harness's own).
        with psycopg.connect(users.dsn("postgres")) as conn:
            available, server_jit = conn.execute("SELECT pg_jit_available(), current_setting('jit')").fetchone()  # type: ignore[misc]
        times: dict[str, list[float]] = {"own": [], "dsn": []}
        items = 0
        for _ in range(runs):
            for label, server in (("own", own), ("dsn", dsn)):
                t0 = time.perf_counter()
                with Rehearsal(load_plan(plan_path), server) as rehearsal:
                    results = rehearsal.run_all()
                times[label].append(time.perf_counter() - t0)
                failed = [(i.id, o.message) for i, o in results if o.status != PASSED]
                if failed:
                    raise SystemExit(f"rehearsal on {label} not green: {failed[:3]}")
                items = len(results)
        a, b = statistics.median(times["own"]), statistics.median(times["dsn"])
        print(f"migrations: {count}, rehearsal items: {items}, PostgreSQL {binaries.version} ({binaries.source}), "
              f"{runs} alternating runs, medians")
        print(f"JIT available (pg_jit_available): {'yes' if available else 'NO: this bench cannot show its cost'}")
        print(f"throwaway server (jit off server-wide): {a:.3f} s")
        print(f"provider dsn (jit = on, jit_above_cost = 0 server-wide; a new session there says jit = {server_jit}): "
              f"{b:.3f} s")
        print(f"ratio dsn / throwaway: {b / a:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migrations", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--runtime-dir", help="where the server keeps its files (default: HARNESS_RUNTIME_DIR, else /dev/shm with room)"
    )
    parser.add_argument("--seeded", action="store_true", help="add a seed of 6 extensions and 500 partitions")
    parser.add_argument(
        "--decompose", action="store_true",
        help="also time the floor with the rehearsal's server-side parts added one at a time",
    )
    parser.add_argument(
        "--per-file", action="store_true",
        help="also time one psql --single-transaction -f per file, the way a deploy script applies migrations",
    )
    parser.add_argument(
        "--provider-dsn", action="store_true",
        help="instead: the rehearsal on a throwaway server vs a jit = on server through provider dsn",
    )
    args = parser.parse_args()
    if args.provider_dsn:
        provider_dsn(args.migrations, args.runs)
        return
    if args.runtime_dir:
        os.environ["HARNESS_RUNTIME_DIR"] = args.runtime_dir
    with tempfile.TemporaryDirectory() as tmp, start_server("embedded") as server:
        plan_path = generate(Path(tmp), args.migrations, args.seeded)
        files = sorted(p for p in (Path(tmp) / "migrations").glob("*.sql") if not p.name.endswith(".down.sql"))
        if args.seeded:
            files.insert(0, Path(tmp) / "seed.sql")
        psql = str(server.bindir / "psql") if server.bindir else "psql"
        bare_psql = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
        bare, rehearsed, floor, seed, per_file = [], [], [], [], []
        layers: dict[str, list[float]] = {}
        items = 0
        migrations = load_plan_migrations(load_plan(plan_path))
        for _ in range(args.runs):
            db = f"bench_{uuid.uuid4().hex[:8]}"
            cmd = [*bare_psql, "-d", server.dsn(db)]
            for f in files:
                cmd += ["-f", str(f)]
            t0 = time.perf_counter()
            server.create_database(db)
            subprocess.run(cmd, check=True, capture_output=True)
            bare.append(time.perf_counter() - t0)
            server.drop_database(db)
            if args.seeded:
                db = f"bench_{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                server.create_database(db)
                subprocess.run([*bare_psql, "-d", server.dsn(db), "-f", str(files[0])], check=True, capture_output=True)
                seed.append(time.perf_counter() - t0)
                server.drop_database(db)
            if args.per_file:
                db = f"bench_{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                server.create_database(db)
                for f in files:
                    subprocess.run([*bare_psql, "-d", server.dsn(db), "-f", str(f)], check=True, capture_output=True)
                per_file.append(time.perf_counter() - t0)
                server.drop_database(db)

            floor.append(replay(server, migrations, args.seeded))
            if args.decompose:
                for name, (install, apply_end, other_end) in LAYERS.items():
                    layers.setdefault(name, []).append(
                        replay(server, migrations, args.seeded, install, apply_end, other_end)
                    )

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
        ratios = sorted(x / y for x, y in zip(rehearsed, bare))
        data_dir = server.dir if hasattr(server, "dir") else Path(tempfile.gettempdir())
        print(f"migrations: {args.migrations}, rehearsal items: {items}, PostgreSQL {server.version}"
              + (", seeded: 6 extensions, 500 partitions" if args.seeded else ""))
        print(f"server files: {data_dir.parent} ({file_system(data_dir)})")
        print(f"bare psql --single-transaction -f: {b:.3f} s")
        print(f"floor, each migration run 4 times without checks: {f:.3f} s ({f / b:.2f}x)")
        print(f"harness rehearsal (apply+idempotent+rollback+backward_compatible): {r:.3f} s")
        print(f"ratio: {r / b:.2f}x (target <= 4x; per run {min(ratios):.2f}-{max(ratios):.2f}x); "
              f"above the floor: {r / f:.2f}x")
        if layers:
            print("the floor plus, layer by layer, what the rehearsal adds (median; ratio to psql):")
            for name, times in layers.items():
                t = statistics.median(times)
                print(f"  {name}: {t:.3f} s ({t / b:.2f}x)")
        if per_file:
            pf = statistics.median(per_file)
            print(f"one psql --single-transaction -f per file: {pf:.3f} s (the rehearsal takes {r / pf:.2f}x that; "
                  "context only: the target is against the single psql run)")
        if seed:
            z = statistics.median(seed)
            print(f"loading the seed alone: {z:.3f} s; above it, bare {b - z:.3f} s, harness {r - z:.3f} s "
                  f"({(r - z) / (b - z):.2f}x)")


if __name__ == "__main__":
    main()
