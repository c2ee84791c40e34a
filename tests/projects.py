"""Throwaway projects for the tests: migrations and a plan in a temporary folder, and running the harness on them.

Plain functions, imported by the tests that use them
(``from tests.projects import write_project``); the database fixtures and
the SQL helpers are in ``tests/fix_db.py``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.apply import ApplyOptions, ApplyResult, apply_plan
from harness import cli as cli_module
from harness.errors import HarnessError
from harness.plan import Plan, load_plan

WAIT = 15.0  # upper bound of every wait: a regression fails, it does not hang

#: Fast guards for tests: short lock timeout and retry delays.
GUARDS = "guards: {lock_timeout: 400ms, statement_timeout: 30s, retry_delay: 100ms, retry_factor: 1.5, max_retries: 3, lock_wait: 20s}\n"
QUIET_DEFAULTS = "defaults: {lint: false, idempotent: false, rollback: false, backward_compatible: false, preserve_rows: false}\n"


def write_project(
    root: Path,
    migrations: dict[str, str],
    plan: str = "",
    *,
    mode: str = "development",
    seed: str | None = None,
    guards: str = GUARDS,
    target: bool = True,
    name: str = "p",
) -> Path:
    """Write migrations, an optional seed and ``plans/<name>.yaml`` under *root*; return the plan path.

    The target is ``${TARGET_URL}``; the rehearsal uses the embedded binaries
    and, with *seed*, the same seed the test loads into the target.
    """
    mdir = root / "migrations"
    mdir.mkdir(parents=True, exist_ok=True)
    for file_name, text in migrations.items():
        (mdir / file_name).write_text(textwrap.dedent(text).lstrip())
    (root / "plans").mkdir(exist_ok=True)
    head = "migrations: migrations/\n"
    if target:
        head += 'target: {dsn: "${TARGET_URL}"}\n'
    head += f"mode: {mode}\n"
    head += "rehearsal: {provider: embedded" + (", seed: seed.sql" if seed is not None else "") + "}\n"
    if seed is not None:
        (root / "seed.sql").write_text(textwrap.dedent(seed).lstrip())
    path = root / "plans" / f"{name}.yaml"
    path.write_text(head + QUIET_DEFAULTS + guards + textwrap.dedent(plan))
    return path


def load(plan_path: Path, dsn: str) -> Plan:
    """The plan with ``TARGET_URL`` set to *dsn*."""
    return load_plan(plan_path, env={**os.environ, "TARGET_URL": dsn})


def apply(plan: Plan, **options: Any) -> tuple[ApplyResult | None, str, HarnessError | None]:
    """Run apply_plan; return (result, console output, error)."""
    out = io.StringIO()
    options.setdefault("yes", True)
    try:
        return apply_plan(plan, ApplyOptions(**options), out=out), out.getvalue(), None
    except HarnessError as exc:
        return getattr(exc, "result", None), out.getvalue(), exc


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``harness ARGV`` in this process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli_module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rehearse(plan_path: Path, dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rehearse the plan with ``harness rehearse`` so that it writes a receipt; return the receipt path."""
    monkeypatch.setenv("TARGET_URL", dsn)
    code, out, err = cli(["rehearse", str(plan_path)], capsys)
    assert code == 0, out + err
    receipt = plan_path.parent.parent / ".harness" / "receipts" / f"{plan_path.stem}.json"
    assert receipt.is_file(), out
    return receipt


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """The first true value *predicate* returns, polled every 20 ms; fails after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def harness_process(args: list[str], dsn: str, cwd: Path) -> subprocess.Popen[str]:
    """``python -m harness.cli ARGS`` as a child process with TARGET_URL set."""
    env = {**os.environ, "TARGET_URL": dsn, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
