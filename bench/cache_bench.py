"""The pre-merge gate with and without the rehearsed-prefix cache: one new migration on a long history.

The history is the generated one of ``bench/rehearsal_bench.py`` (tables,
columns, indexes and functions, each migration with its down),
``--migrations`` long, plus one new migration.  The
gate is ``rehearse_plan`` (what ``harness rehearse`` runs): server start,
rehearsal, receipt and, with the cache, the entry written at the end (a
cold run dumps the database; a warm one shares the archive it restored).

- **no cache**: ``cache=False``, every migration rehearsed;
- **cold**: the cache on but empty (the first run of a branch: it pays for
  writing the entry);
- **warm**: the cache holds the history without the new migration (each run
  starts from a fresh copy of it, so runs do not feed each other).

Two plans: ``baseline`` (every migration gets ``apply`` only: the cheapest
cold gate) and ``assertions`` (lint, locks, idempotent, rollback,
backward_compatible on every migration, and the plan-level chain_rollback,
which a warm gate still runs over the whole chain).  Runs alternate; medians.
``--parts`` also times the fixed costs of a warm start one by one.

    python bench/cache_bench.py [--runs 5] [--migrations 300] [--parts]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rehearsal_bench import generate  # noqa: E402

from harness.cache import PrefixCache, _dump, prefix_keys, restore  # noqa: E402
from harness.plan import load_plan  # noqa: E402
from harness.postgres import start_server  # noqa: E402
from harness.rehearsal import Rehearsal  # noqa: E402
from harness.runner import rehearse_plan  # noqa: E402
from harness.snapshot import table_fingerprints, take_rooted_snapshot  # noqa: E402

PLANS = {
    "baseline": (
        "defaults: {idempotent: false, rollback: false, backward_compatible: false, lint: false, locks: false}\n"
        "chain_rollback: false\n"
    ),
    "assertions": (
        "defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: true, locks: true}\n"
        "lint: {severity: {index-not-concurrent: warning}}\n"
    ),
}


def project(root: Path, count: int, kind: str) -> tuple[Path, Path]:
    """A project of *count* + 1 migrations; returns its plan and the new (last) migration's files, set aside."""
    generate(root, count + 1)
    plan = root / "plan.yaml"
    plan.write_text("migrations: migrations/\nrehearsal: {provider: embedded, cache: cache}\n" + PLANS[kind])
    aside = root / "aside"
    aside.mkdir()
    for path in sorted((root / "migrations").glob(f"{count + 1:05d}_*")):
        path.rename(aside / path.name)
    return plan, aside


def gate(plan_path: Path, **options: object) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = rehearse_plan(load_plan(plan_path), **options)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    if not result.ok or result.receipt is None or result.warnings[1:]:
        raise SystemExit(f"{plan_path}: the gate is not green: {result.summary()} {result.warnings}")
    return seconds, result.cached


def compare(root: Path, count: int, kind: str, runs: int) -> None:
    plan, aside = project(root, count, kind)
    cache = root / "cache"
    gate(plan)  # writes the entry of the history without the new migration
    primed = root / "primed"
    shutil.copytree(cache, primed)
    for path in aside.iterdir():
        path.rename(root / "migrations" / path.name)
    times: dict[str, list[float]] = {"no cache": [], "cold": [], "warm": []}
    cached = 0
    for _ in range(runs):
        seconds, _n = gate(plan, cache=False)
        times["no cache"].append(seconds)
        shutil.rmtree(cache)
        seconds, _n = gate(plan)
        times["cold"].append(seconds)
        shutil.rmtree(cache)
        shutil.copytree(primed, cache)
        seconds, cached = gate(plan)
        times["warm"].append(seconds)
        shutil.rmtree(cache)
        shutil.copytree(primed, cache)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"{kind} plan, {count} + 1 migrations ({cached} items cached in a warm run), medians of {runs}:")
    for name, values in times.items():
        print(f"  {name:9s} {medians[name]:.3f} s   ({', '.join(f'{v:.3f}' for v in values)})")
    print(f"  warm / no cache {medians['warm'] / medians['no cache']:.2f}x, warm / cold {medians['warm'] / medians['cold']:.2f}x")
    print(f"  ratios per round (warm / cold): {', '.join(f'{w / c:.2f}' for w, c in zip(times['warm'], times['cold']))}")


def parts(root: Path, count: int, runs: int) -> None:
    """The fixed costs of a warm start, one by one (the assertions plan's entry)."""
    plan_path, _aside = project(root, count, "assertions")
    gate(plan_path)
    plan = load_plan(plan_path)
    found: dict[str, list[float]] = {}

    def timed(name: str, seconds: float) -> None:
        found.setdefault(name, []).append(seconds)

    for i in range(runs):
        t0 = time.perf_counter()
        server = start_server("embedded")
        timed("server start (warm template)", time.perf_counter() - t0)
        try:
            t0 = time.perf_counter()
            probe = Rehearsal(plan, server)
            timed("loading the folder (cold runs too)", time.perf_counter() - t0)
            t0 = time.perf_counter()
            keys = prefix_keys(plan, probe.migrations, probe.configs, server.version)
            timed("cache keys", time.perf_counter() - t0)
            t0 = time.perf_counter()
            entry = PrefixCache(root / "cache", plan.name).find(keys)
            assert entry is not None
            timed("reading the entry (JSON)", time.perf_counter() - t0)
            t0 = time.perf_counter()
            entry.schemas(16)
            timed("rebuilding the kept schemas", time.perf_counter() - t0)
            t0 = time.perf_counter()
            restore(server, f"bench_{i}", entry)
            timed("pg_restore into a new database", time.perf_counter() - t0)
            with server.connect(f"bench_{i}") as conn:
                t0 = time.perf_counter()
                take_rooted_snapshot(conn)
                timed("self-check: full snapshot", time.perf_counter() - t0)
                t0 = time.perf_counter()
                table_fingerprints(conn)
                timed("self-check: data of every table", time.perf_counter() - t0)
            t0 = time.perf_counter()
            PrefixCache(root / f"written_{i}", plan.name).save(
                server=server, dbname=f"bench_{i}", key=entry.key, base=entry.base, changes=entry.changes,
                data=entry.data, items=list(entry.items.values()), archive=entry, chain=entry.chain,
            )
            timed("writing the entry (archive shared)", time.perf_counter() - t0)
            t0 = time.perf_counter()
            _dump(server, f"bench_{i}", root / f"bench_{i}.dump")
            timed("pg_dump (a cold run's entry only)", time.perf_counter() - t0)
        finally:
            server.stop()
    print(f"warm start, {count} migrations, medians of {runs}:")
    for name, values in found.items():
        print(f"  {name:34s} {statistics.median(values) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--migrations", type=int, default=300)
    parser.add_argument("--parts", action="store_true", help="also time the fixed costs of a warm start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in PLANS:
            compare(Path(tmp) / kind, args.migrations, kind, args.runs)
        if args.parts:
            parts(Path(tmp) / "parts", args.migrations, args.runs)


if __name__ == "__main__":
    main()
