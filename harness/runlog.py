"""Report a run: human console lines with progress, and a JSON-lines log file per run.

Every line, on the console and in the file, goes through
:func:`harness.redact.scrub`; connection strings are only ever shown through
:func:`harness.redact.describe_dsn` by the callers.  The log file is
``<root>/logs/<plan>-<UTC timestamp>.jsonl``, created with mode 0600 in a
directory of mode 0700, one JSON object per line: ``ts`` (UTC, ISO 8601),
``event`` and the event's fields.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .redact import scrub

__all__ = ["RunLog", "utc_stamp", "create_private_file", "ensure_private_dir", "human_size"]

log = logging.getLogger(__name__)

#: Seconds between progress lines of a long step.
PROGRESS_EVERY = 5.0


def utc_stamp(now: datetime | None = None) -> str:
    """A compact UTC timestamp for file names, e.g. ``20261101T120000Z``."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (and its parents) with the leaf directory mode 0700.

    The leaf is created with mode 0700 directly (no chmod after the fact); an
    existing leaf that is open to group or others is tightened, with a warning.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s was open to other users (mode %o); restricting it to 0700", path, mode)
            os.chmod(path, 0o700)
    return path


def create_private_file(directory: Path, stem: str, suffix: str) -> Path:
    """Create a new, empty file ``<stem><suffix>`` (or ``<stem>-N<suffix>``) with mode 0600.

    The file is created exclusively with ``os.open(..., O_EXCL, 0o600)``, so
    two runs in the same second never share a file and the file is never
    readable by others, not even for a moment.
    """
    for n in range(1000):
        name = f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}"
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise OSError(errno.EEXIST, f"could not find a free file name for {stem}{suffix} in {directory}")


def human_size(n: int) -> str:
    """A byte count for people: ``812 B``, ``3.4 MB``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunLog:
    """The report of one run: console lines (to *out*) and JSON lines (to a file under *log_dir*).

    With *log_dir* ``None`` no file is written (dry runs).  With *out*
    ``None`` nothing is printed.  Thread-safe: progress tickers print from a
    background thread.
    """

    def __init__(self, plan_name: str, log_dir: Path | None, *, out: TextIO | None) -> None:
        self.plan_name = plan_name
        self.out = out
        self.path: Path | None = None
        self._fh: Any = None
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        if log_dir is not None:
            ensure_private_dir(log_dir)
            self.path = create_private_file(log_dir, f"{plan_name}-{utc_stamp()}", ".jsonl")
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    # ------------------------------------------------------------------ output

    def event(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the log file (scrubbed)."""
        if self._fh is None:
            return
        record = {"ts": _now(), "event": event, **fields}
        line = scrub(json.dumps(record, default=str, ensure_ascii=False))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def say(self, text: str, *, event: bool = True, level: str = "info") -> None:
        """Print *text* to the console (scrubbed) and, with *event*, log it as a ``message``."""
        clean = scrub(text)
        if self.out is not None:
            with self._lock:
                self.out.write(clean + "\n")
                self.out.flush()
        if event:
            self.event("message", level=level, text=clean)

    def warning(self, text: str) -> None:
        """A loud warning: ``WARNING:`` on the console, a ``warning`` line in the log, and the logger."""
        clean = scrub(text)
        self.warnings.append(clean)
        self.say(f"WARNING: {clean}", event=False)
        self.event("warning", text=clean)
        log.debug("warning: %s", clean)

    def error(self, text: str) -> None:
        """An error: ``ERROR:`` on the console and an ``error`` line in the log."""
        clean = scrub(text)
        self.say(f"ERROR: {clean}", event=False)
        self.event("error", text=clean)

    # ------------------------------------------------------------------ timing

    @contextlib.contextmanager
    def phase(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Time a phase: ``phase_start``/``phase_end`` lines; the duration lands in :attr:`timings`.

        The yielded dict collects extra fields for the ``phase_end`` line.
        """
        extra: dict[str, Any] = {}
        self.event("phase_start", phase=name, **fields)
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            yield extra
        except BaseException as exc:
            outcome = "error"
            extra.setdefault("error", scrub(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__)
            raise
        finally:
            seconds = time.perf_counter() - t0
            self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 4)
            self.event("phase_end", phase=name, outcome=outcome, seconds=round(seconds, 4), **extra)

    @contextlib.contextmanager
    def progress(self, label: str, detail: Callable[[], str] | None = None, every: float = PROGRESS_EVERY) -> Iterator[None]:
        """Print a line every *every* seconds while a long step runs (elapsed time and *detail*)."""
        stop = threading.Event()
        t0 = time.monotonic()

        def tick() -> None:
            while not stop.wait(every):
                extra = ""
                if detail is not None:
                    with contextlib.suppress(Exception):
                        extra = f", {detail()}"
                self.say(f"  ... {label}: {time.monotonic() - t0:.0f}s{extra}", event=False)

        thread = threading.Thread(target=tick, name=f"progress-{label}", daemon=True)
        if self.out is not None:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(timeout=1)

    def close(self) -> None:
        """Close the log file (safe to call twice)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
