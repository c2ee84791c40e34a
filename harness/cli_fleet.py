"""Command-line front end of a fleet: ``apply``, ``rollback`` and ``status`` of a plan with ``targets:`` or ``fleet:``.

Thin: the handlers of :mod:`harness.cli_apply` and :mod:`harness.cli` hand
a fleet plan here; this module turns the selection flags into a
:class:`~harness.fleet.Selection`, calls :mod:`harness.fleet` and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .apply_context import ApplyOptions
from .cli import emit
from .errors import EXIT_FAILED, EXIT_OK, ConfigError
from .fleet import Selection, apply_fleet, fleet_status, format_fleet_status, parse_shard, rollback_fleet
from .plan import Plan
from .redact import scrub

__all__ = ["add_selection_arguments", "selection", "refuse_selection", "apply", "rollback", "status"]


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--only``, ``--exclude`` and ``--shard``: which members of a fleet plan a command takes."""
    group = parser.add_argument_group("fleet plans (targets: or fleet: in the plan)")
    group.add_argument("--only", metavar="NAME", nargs="+", action="extend", default=[],
                       help="only these members (names or shell patterns like 'eu-*')")
    group.add_argument("--exclude", metavar="NAME", nargs="+", action="extend", default=[],
                       help="leave these members out (names or shell patterns)")
    group.add_argument("--shard", metavar="I/N",
                       help="a stable slice of the fleet: shard I of N (by a hash of each member's name)")


def selection(args: argparse.Namespace) -> Selection:
    """The members *args* select."""
    return Selection(
        only=tuple(getattr(args, "only", None) or ()),
        exclude=tuple(getattr(args, "exclude", None) or ()),
        shard=parse_shard(args.shard) if getattr(args, "shard", None) else None,
    )


def refuse_selection(args: argparse.Namespace, what: str) -> None:
    """Fleet flags given for a single database: exit 2 rather than ignore them."""
    if args.only or args.exclude or args.shard:
        raise ConfigError(f"{what} has one target; --only, --exclude and --shard select members of a fleet "
                          "(targets: or fleet: in the plan)")


def apply(args: argparse.Namespace, plan: Plan) -> int:
    """``harness apply`` of a fleet plan."""
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes, to=args.to)
    result = apply_fleet(plan, options, selection(args), out=sys.stderr if args.json else sys.stdout)
    return _finish(args, result.to_dict(), result.ok)


def rollback(args: argparse.Namespace, plan: Plan) -> int:
    """``harness rollback`` of a fleet plan."""
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes)
    result = rollback_fleet(plan, options, selection(args), to=args.to, steps=args.steps,
                            out=sys.stderr if args.json else sys.stdout)
    return _finish(args, result.to_dict(), result.ok)


def status(args: argparse.Namespace, plan: Plan) -> int:
    """``harness status`` of a fleet plan: the member x state matrix."""
    if getattr(args, "dsn", None):
        raise ConfigError("--dsn names one database; a fleet plan's status reads every member (use --only NAME)")
    rows = fleet_status(plan, selection(args))
    ok = all(r.state == "at head" for r in rows)
    if args.json:
        emit({"plan": plan.name, "ok": ok, "members": [r.to_dict() for r in rows]})
    else:
        print(scrub(format_fleet_status(rows)))
    return EXIT_OK if ok else EXIT_FAILED


def _finish(args: argparse.Namespace, data: dict[str, Any], ok: bool) -> int:
    if args.json:
        emit(data)
    return EXIT_OK if ok else EXIT_FAILED
