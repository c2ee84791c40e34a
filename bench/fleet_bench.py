"""A fleet apply at scale: N databases (and M tenant schemas) on one local server, concurrency 8 against 1.

The plan has one migration that waits (``pg_sleep``, ``--sleep`` seconds)
before it creates a table: the wait stands in for the network and lock time a
real fleet spends per member, which concurrency overlaps.  Development mode,
no backup: what is measured is the fleet's own cost per member (connect, run
lock, history, the migration's transaction, the log) and how well it
overlaps.

For each fleet size the bench runs, in a child process each (so peak memory
is the run's own): concurrency 1, then concurrency 8, resetting the members
between runs.  It prints the time, the throughput (members per minute), the
ratio of concurrency 8 to 1, and the peak RSS of each run.  Targets
(docs/fleet.md): concurrency 8 at most 0.3x the time of 1; memory flat in N.

    python bench/fleet_bench.py [--sizes 40,400] [--schemas 0] [--sleep 0.2] [--provider embedded]

Measured numbers (2 shared cores, embedded PostgreSQL 18) are in docs/fleet.md, "Scale".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.apply_context import ApplyOptions  # noqa: E402
from harness.fleet import apply_fleet  # noqa: E402
from harness.plan import load_plan  # noqa: E402
from harness.postgres import Server, start_server  # noqa: E402


def write_plan(root: Path, server: Server, databases: list[str], schemas_db: str | None, concurrency: int,
               sleep: float) -> Path:
    (root / "migrations").mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "0001_wait.sql").write_text(f"SELECT pg_sleep({sleep});\nCREATE TABLE t (id int);\n")
    lines = [
        "migrations: migrations/",
        "mode: development",
        "backup: {mode: none}",
        "defaults: {lint: false, idempotent: false}",
        "targets:",
        *[f'  - {{name: "{name}", dsn: "{server.dsn(name)}"}}' for name in databases],
        "fleet:",
        f"  concurrency: {concurrency}",
    ]
    if schemas_db is not None:
        lines.append(f'  schemas: {{dsn: "{server.dsn(schemas_db)}", '
                     "sql: \"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' ORDER BY 1\"}")
    if not databases:
        lines.remove("targets:")
    path = root / "plan.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child(plan_path: str) -> None:
    """One fleet run; prints its JSON line (seconds, members, ok, peak RSS in MB)."""
    plan = load_plan(plan_path)
    t0 = time.perf_counter()
    result = apply_fleet(plan, ApplyOptions(yes=True), out=None)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "members": len(result.members), "ok": result.ok, "rss_mb": rss,
                      "counts": result.counts()}))


def reset(server: Server, databases: list[str], schemas_db: str | None, tenants: int) -> None:
    for name in databases:
        with server.connect(name) as conn:
            conn.execute("DROP SCHEMA IF EXISTS harness CASCADE")
            conn.execute("DROP TABLE IF EXISTS t")
    if schemas_db is not None:
        with server.connect(schemas_db) as conn:
            for i in range(tenants):
                conn.execute(f"DROP SCHEMA IF EXISTS harness_tenant_{i:04d} CASCADE")
                conn.execute(f"DROP TABLE IF EXISTS tenant_{i:04d}.t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="40,400", help="fleet sizes (databases), comma-separated")
    parser.add_argument("--schemas", type=int, default=0, help="tenant schemas in one more database, per size")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds the migration waits")
    parser.add_argument("--provider", default="embedded")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    server = start_server(args.provider, settings={"max_connections": "200"})
    try:
        print(f"fleet bench: one migration waiting {args.sleep}s per member; {server.describe()}")
        print(f"{'members':>8} {'conc':>5} {'seconds':>8} {'per min':>8} {'ratio':>6} {'peak RSS':>9}")
        for size in sizes:
            databases = [f"fleet_{size}_{i:04d}" for i in range(size)]
            for name in databases:
                server.create_database(name)
            schemas_db = None
            if args.schemas:
                schemas_db = f"fleet_{size}_tenants"
                server.create_database(schemas_db)
                with server.connect(schemas_db) as conn:
                    for i in range(args.schemas):
                        conn.execute(f"CREATE SCHEMA tenant_{i:04d}")
            members = size + args.schemas
            times: dict[int, float] = {}
            try:
                for concurrency in (1, 8):
                    with tempfile.TemporaryDirectory() as tmp:
                        plan = write_plan(Path(tmp), server, databases, schemas_db, concurrency, args.sleep)
                        out = subprocess.run([sys.executable, __file__, "--child", str(plan)], check=True,
                                             capture_output=True, text=True).stdout
                    run = json.loads(out.strip().splitlines()[-1])
                    assert run["ok"] and run["members"] == members, run
                    times[concurrency] = run["seconds"]
                    ratio = f"{run['seconds'] / times[1]:.2f}x" if concurrency != 1 else ""
                    print(f"{members:>8} {concurrency:>5} {run['seconds']:>8.2f} {members / run['seconds'] * 60:>8.0f} "
                          f"{ratio:>6} {run['rss_mb']:>7.0f}MB", flush=True)
                    reset(server, databases, schemas_db, args.schemas)
            finally:
                for name in databases:
                    server.drop_database(name)
                if schemas_db is not None:
                    server.drop_database(schemas_db)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
