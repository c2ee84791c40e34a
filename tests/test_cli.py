"""The ``harness`` entry point itself: what it does when its output goes away, and what it imports to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_closed_pipe_exits_quietly() -> None:
    """``harness schema | head -1``: the reader leaves early; no "internal error: BrokenPipeError", no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "schema"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    # Close our end before the child (still importing) writes: its first write meets a closed pipe.
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err


_LOADED = """
import contextlib, sys
with contextlib.suppress(SystemExit):
    {code}
print("loaded:", *sorted(m for m in sys.modules if m.startswith(("harness", "psycopg"))))
"""


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # The command line imports a command's module (and its engine) only when that command runs.
        ("from harness.cli import main; main(['--version'])", ["harness.rehearsal", "harness.apply", "harness.lint"]),
        ("from harness.cli import main; main(['lint', '--help'])", ["harness.rehearsal", "harness.apply"]),
        # The pytest plugin loads in every pytest run: nothing of the engine, not even psycopg, without a plan.
        ("import harness.plugin", ["harness.plugin_rehearsal", "harness.rehearsal", "harness.plan", "psycopg"]),
    ],
)
def test_start_up_imports_only_what_the_command_needs(code: str, absent: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", _LOADED.format(code=code)], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).parent,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    line = next((line for line in done.stdout.splitlines() if line.startswith("loaded:")), None)
    assert line is not None, done.stdout + done.stderr
    assert not [m for m in absent if m in line.split()], line
