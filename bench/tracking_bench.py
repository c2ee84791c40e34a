"""Rehearsal time with incremental snapshots (tracking, with its self-check) against full snapshots.

Two histories: the bench history of ``bench/rehearsal_bench.py`` (200 small
migrations by default) and a generated history of about 300 migrations whose
columns change type under indexes, unique indexes become primary keys, and
foreign keys, views and renames come and go (the commands that change an
object's OID or name without reporting it).  Runs alternate between
``HARNESS_SNAPSHOTS=incremental`` and ``full`` in one process, on one
server; prints the medians and their ratio, and how many self-checks
(full snapshots compared with the tracked state) the tracked runs took.

    python bench/tracking_bench.py [--runs 5] [--migrations 200] [--generated 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rehearsal_bench import generate  # noqa: E402

from harness import rehearsal_selfcheck  # noqa: E402
from harness.plan import load_plan  # noqa: E402
from harness.postgres import Server, start_server  # noqa: E402
from harness.rehearsal import PASSED, Rehearsal  # noqa: E402


def generate_implicit(root: Path, count: int) -> Path:
    """About *count* migrations, in groups of 6 per table, with the commands that rebuild or rename implicitly."""
    mdir = root / "migrations"
    mdir.mkdir(parents=True)
    pairs: list[tuple[str, str]] = []
    n = 0
    while len(pairs) < count:
        n += 1
        t = f"t{n}"
        pairs += [
            (f"CREATE TABLE IF NOT EXISTS {t} (id integer NOT NULL, c integer, note text);\n"
             f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_uidx ON {t} (id);\nCREATE INDEX IF NOT EXISTS {t}_c ON {t} (c);",
             f"DROP TABLE IF EXISTS {t} CASCADE;"),
            (f"ALTER TABLE {t} ALTER COLUMN c TYPE bigint;",
             f"ALTER TABLE {t} ALTER COLUMN c TYPE integer;"),
            (f"ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY USING INDEX {t}_uidx;",
             f"ALTER TABLE {t} DROP CONSTRAINT {t}_pkey;\nCREATE UNIQUE INDEX {t}_uidx ON {t} (id);"),
            (f"CREATE TABLE IF NOT EXISTS {t}_ref (id integer PRIMARY KEY, {t}_id integer REFERENCES {t} (id));\n"
             f"CREATE OR REPLACE VIEW {t}_v AS SELECT note FROM {t};",
             f"DROP VIEW IF EXISTS {t}_v;\nDROP TABLE IF EXISTS {t}_ref;"),
            (f"ALTER TABLE {t} ALTER COLUMN id TYPE bigint;\nDROP INDEX IF EXISTS {t}_c;",
             f"CREATE INDEX IF NOT EXISTS {t}_c ON {t} (c);\nALTER TABLE {t} ALTER COLUMN id TYPE integer;"),
            (f"ALTER INDEX IF EXISTS {t}_pkey RENAME TO {t}_pk;\nCOMMENT ON TABLE {t} IS 'n{n}';",
             f"COMMENT ON TABLE {t} IS NULL;\nALTER INDEX IF EXISTS {t}_pk RENAME TO {t}_pkey;"),
        ]
    for i, (up, down) in enumerate(pairs[:count], 1):
        (mdir / f"{i:05d}_m{i}.sql").write_text(up + "\n")
        (mdir / f"{i:05d}_m{i}.down.sql").write_text(down + "\n")
    plan = root / "plan.yaml"
    plan.write_text(
        "migrations: migrations/\nrehearsal: {provider: embedded}\n"
        "defaults: {idempotent: false, rollback: true, backward_compatible: true, lint: false, locks: false}\n"
        "chain_rollback: false\n"
    )
    return plan


def rehearse(server: Server, plan_path: Path, mode: str) -> tuple[float, int]:
    """Seconds for one whole rehearsal in *mode*, and how many self-checks it took."""
    os.environ["HARNESS_SNAPSHOTS"] = mode
    plan = load_plan(plan_path)
    t0 = time.perf_counter()
    with Rehearsal(plan, server) as rehearsal:
        results = rehearsal.run_all()
        checks = len(rehearsal.selfcheck.exact) - 1 if mode != "full" else 0
    seconds = time.perf_counter() - t0
    bad = [(item.id, outcome.message) for item, outcome in results if outcome.status != PASSED]
    if bad:
        raise SystemExit(f"{plan_path}: {mode} rehearsal not green: {bad[:3]}")
    return seconds, checks


def compare(server: Server, name: str, plan_path: Path, runs: int) -> None:
    times: dict[str, list[float]] = {"incremental": [], "full": []}
    checks = 0
    for _ in range(runs):
        for mode in ("incremental", "full"):  # alternating: the machine's drift hits both
            seconds, found = rehearse(server, plan_path, mode)
            times[mode].append(seconds)
            checks = max(checks, found)
    tracked, full = statistics.median(times["incremental"]), statistics.median(times["full"])
    print(
        f"{name}: tracked {tracked:.3f} s, full {full:.3f} s (medians of {runs}), full/tracked {full / tracked:.2f}x; "
        f"tracked states compared with a full snapshot: {checks}"
    )
    print(f"  tracked runs: {', '.join(f'{t:.3f}' for t in times['incremental'])}")
    print(f"  full runs:    {', '.join(f'{t:.3f}' for t in times['full'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--migrations", type=int, default=200, help="size of the bench history")
    parser.add_argument("--generated", type=int, default=300, help="size of the generated history")
    parser.add_argument("--verify-every", type=int, default=None, help="override the checkpoint interval")
    args = parser.parse_args()
    if args.verify_every:
        rehearsal_selfcheck.VERIFY_EVERY = args.verify_every
    server = start_server("embedded")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            compare(server, f"bench history ({args.migrations})", generate(Path(tmp) / "b", args.migrations), args.runs)
            compare(server, f"generated history ({args.generated})",
                    generate_implicit(Path(tmp) / "g", args.generated), args.runs)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
