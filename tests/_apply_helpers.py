"""Helpers shared by tests/test_apply.py and tests/test_backup.py: throwaway projects and small queries."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.apply import ApplyOptions, ApplyResult, apply_plan
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
    from harness.cli import main

    capsys.readouterr()
    code = main(argv)
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


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def execute(dsn: str, text: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # type: ignore[arg-type]


def history_versions(dsn: str) -> list[str]:
    """Versions in harness.schema_migrations ([] without the table)."""
    if not query(dsn, "SELECT to_regclass('harness.schema_migrations') IS NOT NULL")[0][0]:
        return []
    return [r[0] for r in query(dsn, "SELECT version FROM harness.schema_migrations ORDER BY version::numeric")]


def table_exists(dsn: str, name: str) -> bool:
    return bool(query(dsn, "SELECT to_regclass(%s) IS NOT NULL", [name])[0][0])


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
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


def sleeping_backend(dsn: str) -> int | None:
    """The pid of a harness apply session that is running pg_sleep, if any."""
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'migration-harness apply' "
        "AND query ILIKE '%pg_sleep%' AND state = 'active' AND datname = current_database()",
    )
    return rows[0][0] if rows else None


@contextlib.contextmanager
def holding(dsn: str, text: str) -> Iterator[psycopg.Connection[Any]]:
    """A session with an open transaction that ran *text* (and so holds its locks) for the block."""
    conn = psycopg.connect(dsn)
    try:
        conn.execute(text)  # type: ignore[arg-type]
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
