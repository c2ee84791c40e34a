"""The ``harness`` entry point itself: what it does when its output goes away."""

from __future__ import annotations

import os
import subprocess
import sys


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
