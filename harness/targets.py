"""Which database a command works on, which server rehearses a plan, and the question asked before a change.

Decided here once for every front end (the command line, the pytest
plugin, the Python API) and the engines:

* :func:`find_target`: the database a command inspects or changes: the one
  given (``--dsn``, ``target=``), else the plan's target, else (where the
  command allows it) ``$DATABASE_URL``, else the plan's development
  database (:mod:`harness.devdb`); production never falls back to it;
* :func:`rehearsal_settings` and :func:`rehearsal_server`: the throwaway
  server a plan is rehearsed on: the plan's ``rehearsal:`` section,
  overridden by ``--provider`` / ``--rehearsal-dsn``;
* :func:`confirm`: the question on the terminal before a change; without a
  terminal the command refuses (exit 2) and says to pass ``--yes``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TextIO

from .connection import check_conninfo
from .devdb import DevDB
from .errors import ConfigError
from .plan import Plan
from .postgres import Server, start_server
from .redact import describe_dsn, register_dsn, scrub

__all__ = ["Target", "DEV_MODES", "find_target", "rehearsal_settings", "rehearsal_server", "confirm"]

#: What :func:`find_target` does when a plan without a target means its development database: ``start`` it
#: (apply), take it if ``running`` (else refuse: status never starts it), take it ``if-running`` (``None`` when
#: it is not: a dry run), or ``none`` (a command that never works on it).
DEV_MODES = ("start", "running", "if-running", "none")


@dataclass(frozen=True)
class Target:
    """The database a command works on."""

    #: Its connection string; ``None`` only for a development database that is not running (``dev="if-running"``).
    dsn: str | None
    #: As messages show it, without a password.
    where: str
    #: Set when it is the plan's development database, for the front end to say so.
    note: str | None = None


def find_target(
    plan: Plan | None,
    given: str | None = None,
    *,
    mode: str | None = None,
    dev: str = "running",
    environ: bool = False,
    what: str = "inspect",
) -> Target:
    """The database to work on: *given*, the plan's target, ``$DATABASE_URL`` (with *environ*), the dev database.

    *mode* ``production`` needs a target (given or the plan's): a
    production run never falls back to the development database.  *dev*
    says what a plan without a target does (:data:`DEV_MODES`).  *what*
    names the command's purpose in the error when there is no database at
    all (``no database to inspect: ...``).  A connection string is checked
    (:func:`harness.connection.check_conninfo`) and registered for
    redaction before it is returned.
    """
    if dev not in DEV_MODES:
        raise ValueError(f"dev: expected one of {', '.join(DEV_MODES)}, got {dev!r}")
    dsn = given or (plan.target_dsn if plan is not None else None)
    if not dsn and environ:
        dsn = os.environ.get("DATABASE_URL") or None
    if dsn:
        register_dsn(dsn)
        where = describe_dsn(dsn)
        # A malformed string is a configuration problem, said at once and without the string.
        check_conninfo(dsn, where)
        return Target(dsn, where)
    if plan is not None and mode == "production":
        raise ConfigError(
            f"{plan.display_path or plan.path}: production mode needs a target (target: {{dsn: ...}} in the plan, "
            "or a given one); without one, development mode runs on the local development database"
        )
    if plan is None or dev == "none":
        env = ", set DATABASE_URL" if environ else ""
        fix = "name a plan with a target" if plan is None else "give the plan a target"
        raise ConfigError(f"no database to {what}: give --dsn{env}, or {fix}")
    db = DevDB(plan.root)
    note = f"the plan has no target: this is the development database of {plan.root}"
    if dev == "start":
        status = db.start()
    else:
        status = db.status()
        if not status.running:
            if dev == "if-running":
                return Target(None, "the development database (not running yet)", note)
            raise ConfigError(
                f"no target and no dev-db running: harness dev-db start (plan {plan.name} has no target, so its "
                f"database is the development database of {plan.root}; or give --dsn)"
            )
    register_dsn(status.dsn)
    return Target(status.dsn, describe_dsn(status.dsn), note)


def rehearsal_settings(plan: Plan, provider: str | None = None, dsn: str | None = None
                       ) -> tuple[str, int | None, str | None]:
    """``(provider, PostgreSQL major, dsn)`` of the server to rehearse *plan* on: the overrides, else the plan's."""
    r = plan.rehearsal
    return provider or r.provider, r.postgres, dsn or r.dsn


def rehearsal_server(plan: Plan, provider: str | None = None, dsn: str | None = None) -> Server:
    """Start the server to rehearse *plan* on (:func:`rehearsal_settings`); the caller stops it."""
    chosen, major, server_dsn = rehearsal_settings(plan, provider, dsn)
    return start_server(chosen, major, server_dsn, data_bytes=plan.rehearsal.seed_bytes)


def confirm(question: str, *, refusal: str, out: TextIO | None = None) -> bool:
    """Ask *question* on the terminal; whether the answer is ``y`` or ``yes``.

    Without a terminal there is no one to ask: :class:`ConfigError` (exit
    2) with *refusal*, which says to pass ``--yes``.  The question goes to
    *out* (default: stdout), scrubbed of secrets.
    """
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise ConfigError(refusal)
    stream = out if out is not None else sys.stdout
    stream.write(scrub(question))
    stream.flush()
    return stdin.readline().strip().lower() in ("y", "yes")
