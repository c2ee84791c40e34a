"""Start-up of the ``harness`` console script and of the pytest plugin: each command loads only its own module.

Every sample is a fresh interpreter (as the console script is), measured
to its exit in CPU time (user + system, so that other work on a shared
machine disturbs it less than wall time) and wall time; the medians are
printed per case, with how many harness modules (and modules in all) the
case imports, which does not depend on the machine's load.  ``eager`` imports every command
module up front, as a command line without the lazy command registry
(``harness.cli.COMMANDS``) would; ``plugin`` is what every pytest run where
the package is installed pays before ``--migrate-plan`` is given.

    python bench/cli_startup_bench.py [--runs 9] [--compare DIR]

``--compare DIR`` measures another checkout's ``harness`` package too,
sample by sample in turn with this one (so both see the same load), for a
before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_ELSEWHERE = tempfile.gettempdir()

CASES = {
    "harness --version": "import sys; from harness.cli import main; sys.exit(main(['--version']))",
    "harness --help": "import sys; from harness.cli import main; sys.exit(main(['--help']))",
    "harness lint --help": "import sys; from harness.cli import main; sys.exit(main(['lint', '--help']))",
    "harness lint FILE": "import sys; from harness.cli import main; sys.exit(main(['lint', {file}]))",
    "harness apply --help": "import sys; from harness.cli import main; sys.exit(main(['apply', '--help']))",
    "plugin (no plan)": "import harness.plugin",
    "eager (every command)": (
        "import importlib, pkgutil, harness; "
        "[importlib.import_module(f'harness.{m.name}') for m in pkgutil.iter_modules(harness.__path__) "
        "if m.name.startswith('cli')]; import harness.runner, harness.generate, harness.lint, harness.authoring"
    ),
}


def _sample(code: str, root: Path) -> tuple[float, float]:
    """``(cpu seconds, wall seconds)`` of one fresh interpreter running *code*."""
    env = dict(os.environ, PYTHONPATH=str(root))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # Run outside any checkout: `python -c` puts the working directory before PYTHONPATH.
    subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, cwd=_ELSEWHERE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def _modules(code: str, root: Path) -> tuple[int, int]:
    """``(harness modules, all modules)`` imported by one interpreter running *code* (``-X importtime``)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False, cwd=_ELSEWHERE)
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    names = [line.rsplit("|", 1)[1].strip() for line in lines[1:]]
    return sum(1 for n in names if n == "harness" or n.startswith("harness.")), len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--compare", type=Path, help="another checkout whose harness package to measure in turn")
    args = parser.parse_args()
    roots = {"this": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "1_a.sql"
        file.write_text("CREATE TABLE a (id bigint PRIMARY KEY);\n")
        header = "".join(f"{name + ' cpu':>14s}{name + ' wall':>14s}{name + ' modules':>18s}" for name in roots)
        print(f"{'median of ' + str(args.runs):24s}{header}")
        for case, code in CASES.items():
            code = code.replace("{file}", repr(str(file)))
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
            for name, root in roots.items():
                _sample(code, root)  # warm the file cache
            for _ in range(args.runs):
                for name, root in roots.items():
                    samples[name].append(_sample(code, root))
            cells = "".join(
                f"{statistics.median(s[0] for s in got):13.3f}s{statistics.median(s[1] for s in got):13.3f}s"
                + "{:>18s}".format("%d / %d" % _modules(code, roots[name]))
                for name, got in samples.items()
            )
            print(f"{case:24s}{cells}")


if __name__ == "__main__":
    main()
