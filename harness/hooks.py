"""Hooks of ``apply``: SQL files, commands and Python callables run at fixed points of a run.

Events: ``pre_run``, ``pre_migration``, ``post_migration``, ``post_run``,
``on_failure`` and ``backup`` (which replaces the built-in backup).  Each
plan hook is one of

``{sql: file}``
    the file's statements run on the target, in one transaction (or one by
    one when a statement cannot run in a transaction);
``{run: "command"}``
    split with :func:`shlex.split` and run without a shell in the plan's root,
    with ``HARNESS_*`` environment variables (below);
``{python: "module:function"}``
    imported (the plan's root is on ``sys.path`` while importing) and called
    with a :class:`HookContext`.

Rollbacks (``harness rollback``) run the same events, with
``HookContext.command`` (``HARNESS_COMMAND``) ``rollback`` instead of
``apply`` and each down as a "migration".
A command gets ``HARNESS_PHASE``, ``HARNESS_COMMAND``, ``HARNESS_PLAN``, ``HARNESS_MODE``,
``HARNESS_MIGRATION`` (empty outside a migration), ``HARNESS_DATABASE`` (the
target without its password), ``HARNESS_BACKUP`` (the backup file, or for the
``backup`` event the file the hook should write) and ``HARNESS_DATABASE_URL``,
the only place the full connection string (with its password) is handed
out.  It is never printed: hook output is scrubbed before it is shown or logged.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .parsing import parse_sql
from .plan import Hook
from .redact import scrub
from .runlog import RunLog

__all__ = ["EVENTS", "HookContext", "HookFailed", "PythonHook", "run_hooks", "describe_hook"]

#: Hook events in the order a run reaches them.
EVENTS = ("pre_run", "backup", "pre_migration", "post_migration", "post_run", "on_failure")

#: Seconds a command hook may run.
COMMAND_TIMEOUT = float(os.environ.get("HARNESS_HOOK_TIMEOUT", "600"))

#: A Python callable given through the API (``ApplyOptions.hooks``).
PythonHook = Callable[["HookContext"], Any]


class HookFailed(HarnessError):
    """A hook failed (exit code 1); before any change, the run stops there."""


@dataclass(frozen=True)
class HookContext:
    """What a hook knows about the run.  Never holds a password."""

    plan: str
    phase: str
    mode: str
    database: str  # the target as user@host:port/db
    root: str
    migration: str | None = None
    backup: str | None = None
    applied: tuple[str, ...] = ()
    error: str | None = None
    command: str = "apply"  # the run the hook belongs to: "apply" or "rollback"

    def at(self, phase: str, **changes: Any) -> HookContext:
        """A copy for another phase (and other fields)."""
        return replace(self, phase=phase, **changes)

    def env(self) -> dict[str, str]:
        """The ``HARNESS_*`` variables of this context (without the connection string)."""
        return {
            "HARNESS_PHASE": self.phase,
            "HARNESS_PLAN": self.plan,
            "HARNESS_MODE": self.mode,
            "HARNESS_MIGRATION": self.migration or "",
            "HARNESS_DATABASE": self.database,
            "HARNESS_BACKUP": self.backup or "",
            "HARNESS_APPLIED": " ".join(self.applied),
            "HARNESS_ROOT": self.root,
            "HARNESS_COMMAND": self.command,
        }


def describe_hook(hook: Hook | PythonHook) -> str:
    """A short description of a hook for reports, e.g. ``run: ./notify.sh`` (line 12)."""
    if isinstance(hook, Hook):
        where = f" (plan line {hook.line})" if hook.line else ""
        return f"{hook.kind}: {scrub(hook.value)}{where}"
    name = getattr(hook, "__qualname__", None) or repr(hook)
    module = getattr(hook, "__module__", None)
    return f"python: {module + ':' if module else ''}{name}"


def run_hooks(
    hooks: Sequence[Hook | PythonHook],
    ctx: HookContext,
    *,
    dsn: str,
    runlog: RunLog,
    session_settings: Mapping[str, str] | None = None,
) -> None:
    """Run *hooks* in order for ``ctx.phase``; the first failure raises :class:`HookFailed`."""
    for hook in hooks:
        what = describe_hook(hook)
        runlog.say(f"  hook {ctx.phase}: {what}", event=False)
        t0 = time.perf_counter()
        try:
            if isinstance(hook, Hook):
                if hook.kind == "sql":
                    _run_sql(hook, dsn, session_settings or {}, lambda diag: _notice(runlog, ctx, what, diag))
                elif hook.kind == "run":
                    _run_command(hook, ctx, dsn, runlog)
                else:
                    _call(_import(hook.value, Path(ctx.root)), ctx, what)
            else:
                _call(hook, ctx, what)
        except HookFailed as exc:
            runlog.event("hook", phase=ctx.phase, hook=what, outcome="failed", seconds=_since(t0), error=str(exc))
            raise
        runlog.event("hook", phase=ctx.phase, hook=what, outcome="ok", seconds=_since(t0), migration=ctx.migration)


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)


def _notice(runlog: RunLog, ctx: HookContext, what: str, diag: psycopg.errors.Diagnostic) -> None:
    """Show and log a NOTICE/WARNING/INFO the hook's SQL raised (RAISE NOTICE), like its command output."""
    text = f"{diag.severity}: {diag.message_primary}"
    runlog.say(f"    | {text}", event=False)
    runlog.event("notice", phase=ctx.phase, hook=what, severity=diag.severity_nonlocalized, text=scrub(str(diag.message_primary)))


def _run_sql(
    hook: Hook, dsn: str, settings: Mapping[str, str], on_notice: Callable[[psycopg.errors.Diagnostic], None]
) -> None:
    path = hook.path or Path(hook.value)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HookFailed(f"SQL hook {path} (plan line {hook.line}) cannot be read: {exc.strerror or exc}") from None
    statements = parse_sql(text, path)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="migration-harness hook") as conn:
            conn.add_notice_handler(on_notice)
            for name, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, false)", [name, value])
            if all(s.transactional for s in statements):
                with conn.transaction():
                    run_statements(conn, statements, path)
            else:
                run_statements(conn, statements, path)
    except StatementFailed as exc:
        raise HookFailed(f"SQL hook failed: {exc}") from None
    except psycopg.Error as exc:
        raise HookFailed(f"SQL hook {path} (plan line {hook.line}) failed: {scrub(str(exc).strip())}") from None


def _run_command(hook: Hook, ctx: HookContext, dsn: str, runlog: RunLog) -> None:
    try:
        args = shlex.split(hook.value)
    except ValueError as exc:
        raise HookFailed(f"hook command {hook.value!r} (plan line {hook.line}) cannot be split: {exc}") from None
    if not args:
        raise HookFailed(f"hook command on plan line {hook.line} is empty")
    env = {**os.environ, **ctx.env(), "HARNESS_DATABASE_URL": dsn}
    try:
        proc = subprocess.run(
            args,
            cwd=ctx.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT,
        )
    except FileNotFoundError:
        raise HookFailed(
            f"hook command {args[0]!r} (plan line {hook.line}) not found; give a path or put it on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise HookFailed(f"hook command {scrub(hook.value)!r} (plan line {hook.line}) ran longer than {COMMAND_TIMEOUT:g}s") from None
    except OSError as exc:
        raise HookFailed(f"hook command {scrub(hook.value)!r} (plan line {hook.line}) cannot run: {exc}") from None
    for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        for line in text.splitlines():
            runlog.say(f"    | {line}", event=False)
        if text.strip():
            runlog.event("hook_output", phase=ctx.phase, stream=stream, text=scrub(text[-4000:]))
    if proc.returncode != 0:
        tail = scrub("\n".join(proc.stderr.strip().splitlines()[-5:]))
        raise HookFailed(
            f"hook command {scrub(hook.value)!r} (plan line {hook.line}) exited with code {proc.returncode}"
            + (f":\n    {tail}" if tail else "")
        )


@contextlib.contextmanager
def _on_path(root: Path) -> Iterator[None]:
    entry = str(root)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _import(spec: str, root: Path) -> PythonHook:
    module_name, _, attr = spec.partition(":")
    try:
        with _on_path(root):
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the hook's failure
        raise HookFailed(f"python hook {spec!r}: cannot import {module_name}: {scrub(str(exc))}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise HookFailed(f"python hook {spec!r}: {module_name} has no callable {attr}")
    return func  # type: ignore[no-any-return]


def _call(func: PythonHook, ctx: HookContext, what: str) -> None:
    try:
        func(ctx)
    except HookFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - a hook's exception is reported, not propagated raw
        raise HookFailed(f"hook {what} raised {type(exc).__name__}: {scrub(str(exc))}") from None
