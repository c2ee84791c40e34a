"""Rehearsal server start-up: cold (empty cache) vs warm (cached template cluster).

Targets from the foundation issue: cold start <= 1.0 s, warm start <= 0.3 s on a
2-core machine.  Cold: empty cache (initdb of the template cluster, copy,
start).  Warm: the template is cached and a spare copy made in the background
after the previous start is claimed with a rename (set
HARNESS_SPARE_CLUSTER=0 to measure a plain copy instead).  Each sample starts a server, runs ``SELECT 1`` and stops it;
start-up is measured to the first answered query.  Prints medians per provider
and, as a baseline, a plain ``initdb`` + ``pg_ctl start`` of the same binaries.

    python bench/startup_bench.py [--runs 5] [--provider embedded]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import postgres


def _sample(provider: str) -> float:
    t0 = time.perf_counter()
    server = postgres.start_server(provider)
    with server.connect() as conn:
        conn.execute("SELECT 1")
    elapsed = time.perf_counter() - t0
    server.stop()
    return elapsed


def _warm(provider: str) -> float:
    """A warm start, after the spare copy the previous start began has had time to finish."""
    time.sleep(1.0)
    return _sample(provider)


def _cold(provider: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="mh-bench-cache-")
        os.chmod(cache, 0o755)
        os.environ["HARNESS_CACHE_DIR"] = cache
        os.environ["HARNESS_SPARE_CLUSTER"] = "0"  # no spare of a template about to be deleted
        try:
            samples.append(_sample(provider))
        finally:
            del os.environ["HARNESS_CACHE_DIR"], os.environ["HARNESS_SPARE_CLUSTER"]
            shutil.rmtree(cache, ignore_errors=True)
    return samples


def _baseline(binaries: postgres.Binaries, runs: int) -> list[float]:
    """initdb + pg_ctl -w start of the same binaries (what a hand-rolled fixture does)."""
    run_as = postgres._system_user()
    kwargs = postgres._run_as_kwargs(run_as)
    samples = []
    for _ in range(runs):
        d = Path(tempfile.mkdtemp(prefix="mh-bench-"))
        if run_as:
            os.chown(d, run_as.uid, run_as.gid)
        t0 = time.perf_counter()
        subprocess.run([str(binaries.tool("initdb")), "-D", str(d / "data"), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C"], check=True, capture_output=True, **kwargs)
        subprocess.run([str(binaries.tool("pg_ctl")), "-D", str(d / "data"), "-w", "-l", str(d / "log"),
                        "-o", f"-k {d} -c listen_addresses= -c fsync=off", "start"], check=True, capture_output=True,
                       **kwargs)
        samples.append(time.perf_counter() - t0)
        subprocess.run([str(binaries.tool("pg_ctl")), "-D", str(d / "data"), "-m", "immediate", "stop"],
                       capture_output=True, **kwargs)
        shutil.rmtree(d, ignore_errors=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--provider", action="append", choices=["embedded", "local"])
    args = parser.parse_args()
    providers = args.provider or ["embedded"] + (["local"] if postgres.local_binaries() else [])
    print(f"{'provider':10} {'version':8} {'cold s':>8} {'warm s':>8} {'initdb+pg_ctl s':>16} {'warm/baseline':>14}")
    for provider in providers:
        binaries = postgres.find_binaries(provider)
        cold = statistics.median(_cold(provider, args.runs))
        _sample(provider)  # make sure the cache is warm
        warm = statistics.median([_warm(provider) for _ in range(args.runs)])
        base = statistics.median(_baseline(binaries, args.runs))
        print(f"{provider:10} {binaries.version:8} {cold:8.3f} {warm:8.3f} {base:16.3f} {warm / base:14.2f}")
    print("targets: cold <= 1.000 s, warm <= 0.300 s")


if __name__ == "__main__":
    main()
