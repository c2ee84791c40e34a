"""Command-line front end of ``status`` and ``adopt``: what a database's history says, and adopting another tool's.

Thin: each handler parses its options, calls the core
(:func:`harness.targets.find_target`, :func:`harness.runner.read_status`,
:mod:`harness.adopt`) and prints.  Handlers return an exit code and raise
:class:`~harness.errors.HarnessError` subclasses for errors, which
:mod:`harness.cli` prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import psycopg

from . import adopt, cli_fleet, history
from .cli import emit
from .errors import EXIT_FAILED, EXIT_OK
from .plan import Plan, load_plan
from .redact import scrub
from .runner import read_status
from .sources import Migration, load_migrations, load_plan_migrations
from .targets import find_target

__all__ = ["configure"]


def configure(name: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the arguments of command *name* (``status`` or ``adopt``) to *parser*; its handler."""
    if name == "status":
        parser.add_argument("plan", nargs="?",
                            help="plan name (plans/NAME.yaml) or path; its target and migrations are used")
        parser.add_argument("--dsn", help="database to inspect (default: the plan's target, else $DATABASE_URL)")
        parser.add_argument("--migrations", metavar="DIR",
                            help="migrations directory (default: the plan's, else migrations/)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        cli_fleet.add_selection_arguments(parser)
        return _status
    parser.add_argument("plan", help="plan name (plans/NAME.yaml) or path; its migrations, layout and baseline are used")
    parser.add_argument("--dsn", help="database to adopt (default: the plan's target, else $DATABASE_URL)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be recorded, record nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return _adopt


# ---------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan) if args.plan else None
    if plan is not None and plan.fleet.configured:
        return cli_fleet.status(args, plan)
    cli_fleet.refuse_selection(args, f"plan {plan.name}" if plan is not None else "a status without a plan")
    # --dsn, the plan's target, its running dev-db (status never starts it); no plan: $DATABASE_URL.
    target = find_target(plan, args.dsn, environ=plan is None, dev="running", what="inspect")
    assert target.dsn is not None
    migrations = _status_migrations(args, plan)
    status = read_status(target.dsn, migrations)  # the Python API's status: one code path
    foreign = _foreign_histories(target.dsn, migrations)  # what other tools' history tables say (Flyway, goose, ...)
    if args.json:
        data = {"database": target.where, **({"note": target.note} if target.note else {}), **status.to_dict()}
        emit({**data, "foreign": [m.to_dict() for m in foreign]})
    else:
        if target.note:
            print(scrub(f"({target.note})"))
        print(scrub(history.format_status(status, where=target.where)))
        if foreign:
            print()
            recorded = {m.id for _, m in status.applied if m is not None}
            print(scrub(adopt.format_foreign(foreign, recorded)))
    return EXIT_OK if status.ok and not any(m.problems for m in foreign) else EXIT_FAILED


def _foreign_histories(dsn: str, migrations: list[Migration]) -> list[adopt.Match]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return [adopt.match_history(h, migrations) for h in adopt.read_foreign_histories(conn)]


def _status_migrations(args: argparse.Namespace, plan: Plan | None) -> list[Migration]:
    """The migrations ``status`` compares with: --migrations DIR, else the plan's (layout, substitutions)."""
    if args.migrations or plan is None:
        return load_migrations(Path(args.migrations) if args.migrations else Path("migrations"))
    return load_plan_migrations(plan)


# ---------------------------------------------------------------------- adopt


def _adopt(args: argparse.Namespace) -> int:
    """``harness adopt PLAN``: copy a foreign history's state into harness.schema_migrations, once."""
    plan = load_plan(args.plan)
    # --dsn, the plan's target, else $DATABASE_URL: adopting is never about the development database.
    target = find_target(plan, args.dsn, environ=True, dev="none", what="adopt")
    assert target.dsn is not None
    migrations = load_plan_migrations(plan)
    layout = migrations[0].layout if migrations else plan.layout
    result = adopt.adopt(
        target.dsn, migrations, layout=layout, baseline=plan.baseline, dry_run=args.dry_run,
        lock_timeout=plan.guards.lock_wait,
    )
    source = result.source.history if result.source is not None else None
    if args.json:
        emit({
            "database": target.where,
            "dry_run": args.dry_run,
            "source": source.to_dict() if source else None,
            "recorded" if not args.dry_run else "would_record": [m.id for m in result.to_record],
            "already": [m.id for m in result.already],
            "baseline": [m.id for m in result.baseline],
        })
        return EXIT_OK
    print(f"foreign history: {source.table} ({source.tool})" if source else "foreign history: none found")
    if result.baseline:
        print(f"baseline: {len(result.baseline)} migrations up to {result.baseline[-1].id}")
    verb = "would record" if args.dry_run else "recorded"
    print(f"{verb} {len(result.to_record)} migrations as adopted on {target.where}" + (":" if result.to_record else ""))
    for migration in result.to_record:
        print(f"  {migration.id}")
    if result.already:
        print(f"{len(result.already)} already recorded in harness.schema_migrations")
    return EXIT_OK
