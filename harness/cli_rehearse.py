"""Command-line front end of ``rehearse``, ``new``, ``generate`` and ``check-schema``: writing and proving migrations.

Thin: each handler parses its options, calls the core
(:func:`harness.runner.rehearse_plan`, :mod:`harness.authoring`,
:mod:`harness.generate`, on the server :func:`harness.targets.rehearsal_server`
starts) and prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .authoring import create_migration, layout_for
from .cli import emit
from .errors import EXIT_FAILED, EXIT_OK, ConfigError
from .execute import relpath
from .generate import check_schema, generate
from .plan import Plan, load_plan
from .redact import scrub
from .rehearsal import Item, Outcome
from .runner import rehearse_plan
from .targets import rehearsal_server

__all__ = ["configure"]


def configure(name: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the arguments of command *name* to *parser*; its handler."""
    if name == "rehearse":
        parser.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
        _server_options(parser)
        parser.add_argument("-k", dest="select", metavar="TEXT", help="only items whose id contains TEXT")
        parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
        parser.add_argument("--json", action="store_true", help="machine-readable report")
        cache = parser.add_mutually_exclusive_group()
        cache.add_argument("--cache", metavar="DIR", type=Path,
                           help="rehearsed-prefix cache directory (default: the plan's rehearsal.cache, .harness/cache)")
        cache.add_argument("--no-cache", dest="cache", action="store_false",
                           help="rehearse every migration; neither read nor write the cache")
        return _rehearse
    if name == "new":
        parser.add_argument("name", help="what the migration does: lower-case letters, digits and _ (add_orders)")
        parser.add_argument("--plan", help="plan whose migrations folder and layout to use (default: the only plan "
                            "in plans/, else ./migrations)")
        return _new
    if name == "generate":
        parser.add_argument("name", help="name of the new migration: lower-case letters, digits and _")
        parser.add_argument("--plan", help="plan with a `schema:` (default: the only plan in plans/)")
        _server_options(parser)
        parser.add_argument("--discard-on-failure", action="store_true", help="remove the files when the proof fails")
        return _generate
    parser.add_argument("--plan", help="plan with a `schema:` (default: the only plan in plans/)")
    _server_options(parser)
    return _check_schema


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", help="rehearsal server provider: auto, local, embedded, docker or dsn")
    parser.add_argument("--rehearsal-dsn", help="server for the dsn provider")


# ---------------------------------------------------------------------- rehearse


def _rehearse(args: argparse.Namespace) -> int:
    """``harness rehearse``: a thin wrapper over :func:`harness.runner.rehearse_plan` (the Python API's engine)."""
    plan = load_plan(args.plan)

    def show(item: Item, outcome: Outcome) -> None:
        if not args.json:
            _print_outcome(sys.stdout, item.id, outcome)

    result = rehearse_plan(
        plan, provider=args.provider, dsn=args.rehearsal_dsn, select=args.select, exitfirst=args.exitfirst,
        on_item=show, cache=args.cache,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        emit(result.to_dict())
    else:
        print(result.summary())
        if result.receipt:
            print(f"receipt: {result.receipt}")
    return EXIT_OK if result.ok else EXIT_FAILED


_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "cached": "CACHED"}


def _print_outcome(out: TextIO, item_id: str, outcome: Outcome) -> None:
    """One line per item; a skip's reason on it, and a failure's report or a pass's note indented under it."""
    out.write(f"{_MARK[outcome.status]} {item_id}")
    if outcome.status == "skipped":
        out.write(f" ({outcome.message})")
    elif outcome.status == "cached":
        out.write(f": {outcome.message}")
    out.write("\n")
    if outcome.status not in ("skipped", "cached"):
        # A passed item's note says what was proved (or warns: a lock over budget but allowed).
        for line in outcome.message.splitlines():
            out.write(f"     {line}\n")
    out.flush()


# ---------------------------------------------------------------------- new, generate, check-schema


def _only_plan(given: str | None, *, required: bool) -> Plan | None:
    """The plan named by --plan, else the only plan in plans/ (None when there is none and none is required)."""
    if given:
        return load_plan(given)
    plans = sorted(p for p in Path("plans").glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if Path("plans").is_dir() else []
    if len(plans) == 1:
        return load_plan(str(plans[0]))
    if not plans and not required:
        return None
    listing = f": {', '.join(p.stem for p in plans)}" if plans else " (there is no plans/ directory here)"
    raise ConfigError(f"pass --plan NAME; {'several plans' if plans else 'no plan'} found{listing}")


def _new(args: argparse.Namespace) -> int:
    plan = _only_plan(args.plan, required=False)
    directory = plan.migrations_dir if plan else Path("migrations")
    layout = layout_for(plan.layout, directory) if plan else None
    created = create_migration(directory, args.name, layout=layout)
    for path in created.files or (created.up, created.down):
        print(f"created {relpath(path)}")
    for path in created.updated:
        print(f"updated {relpath(path)}")
    print("write the SQL: until you do, the migration is a no-op (patterns: docs/authoring.md)")
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    plan = _only_plan(args.plan, required=True)
    assert plan is not None
    server = rehearsal_server(plan, args.provider, args.rehearsal_dsn)
    try:
        result = generate(plan, server, args.name, discard_on_failure=args.discard_on_failure)
    finally:
        server.stop()
    print(scrub(result.format()))
    return result.exit_code


def _check_schema(args: argparse.Namespace) -> int:
    plan = _only_plan(args.plan, required=True)
    assert plan is not None
    server = rehearsal_server(plan, args.provider, args.rehearsal_dsn)
    try:
        comparison = check_schema(plan, server)
    finally:
        server.stop()
    print(scrub(comparison.format()))
    return EXIT_OK if comparison.ok else EXIT_FAILED
