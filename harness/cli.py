"""The ``harness`` command line: a thin front end over the core.

Exit codes, for every command: 0 ok, 1 a check or migration failed, 2 bad
usage or configuration.  Errors are one clear message, never a traceback
(set ``HARNESS_DEBUG=1`` to see one for an unexpected internal error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, HarnessError
from .redact import ScrubFilter, describe_dsn, register_dsn, scrub

__all__ = ["main"]

log = logging.getLogger("harness")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Test and apply PostgreSQL migrations declaratively.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("status", help="show applied and pending migrations of a database")
    p.add_argument("plan", nargs="?", help="plan name (plans/NAME.yaml) or path; its target and migrations are used")
    p.add_argument("--dsn", help="database to inspect (default: the plan's target, else $DATABASE_URL)")
    p.add_argument("--migrations", metavar="DIR", help="migrations directory (default: the plan's, else migrations/)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("rehearse", help="rehearse a plan on a throwaway PostgreSQL (same as pytest --migrate-plan)")
    p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
    p.add_argument("--provider", help="rehearsal server provider: auto, local, embedded, docker or dsn")
    p.add_argument("--rehearsal-dsn", help="server for the dsn provider")
    p.add_argument("-k", dest="select", metavar="TEXT", help="only items whose id contains TEXT")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("lint", help="lint migration files statically (no database needed)")
    p.add_argument("paths", nargs="*", help="migration files or directories (default: the plan's migrations)")
    p.add_argument("--plan", help="plan whose migrations, severities and allows to use")
    p.add_argument("--format", choices=("text", "json", "github"), default="text")

    p = sub.add_parser("schema", help="print the JSON Schema of the plan format")
    return parser


def _handlers(sub: Any) -> dict[str, Any]:
    from . import cli_apply

    return {"status": _status, "rehearse": _rehearse, "lint": _lint, "schema": _schema, **cli_apply.add_commands(sub)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    handlers = _handlers(sub)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    # SIGTERM ends the run like Ctrl-C does: servers stop, nothing is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.version:
        from importlib.metadata import version

        print(f"migration-harness {version('migration-harness')}")
        return EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    handler = handlers[args.command]
    try:
        return handler(args)
    except HarnessError as exc:
        print(f"harness {args.command}: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback, no secret
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(
            f"harness {args.command}: internal error: {scrub(type(exc).__name__ + ': ' + str(exc))}\n"
            "(set HARNESS_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


def _emit(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(scrub(json.dumps(data, indent=2, default=str)) + "\n")


# ---------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    import psycopg

    from . import history
    from .sources import load_migrations

    plan = _load_plan(args.plan) if args.plan else None
    dsn = args.dsn or (plan.target_dsn if plan else None) or os.environ.get("DATABASE_URL")
    if not dsn:
        raise ConfigError(
            "no database to inspect: give --dsn, set DATABASE_URL, or name a plan with a target"
        )
    register_dsn(dsn)
    directory = Path(args.migrations) if args.migrations else (plan.migrations_dir if plan else Path("migrations"))
    migrations = load_migrations(directory)
    where = describe_dsn(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            applied = history.read_applied(conn)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to {where}: {_first_line(exc)}") from None
    status = history.compute_status(migrations, applied)
    if args.json:
        _emit({"database": where, **status.to_dict()})
    else:
        print(scrub(history.format_status(status, where=where)))
    return EXIT_OK if status.ok else EXIT_FAILED


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return scrub(lines[0]) if lines else type(exc).__name__


def _load_plan(name: str) -> Any:
    from .plan import load_plan

    return load_plan(name)


# ---------------------------------------------------------------------- rehearse


def _rehearse(args: argparse.Namespace) -> int:
    from .postgres import start_server
    from .receipt import write_receipt
    from .rehearsal import FAILED, PASSED, SKIPPED, Rehearsal

    plan = _load_plan(args.plan)
    provider = args.provider or plan.rehearsal.provider
    dsn = args.rehearsal_dsn or plan.rehearsal.dsn
    servers: list[Any] = []

    def factory() -> Any:
        servers.append(start_server(provider, plan.rehearsal.postgres, dsn))
        return servers[0]

    t0 = time.perf_counter()
    report: list[dict[str, Any]] = []
    counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
    receipt = None
    out = sys.stdout
    try:
        with Rehearsal(plan, factory) as rehearsal:
            items = rehearsal.items()
            if args.select:
                items = [i for i in items if args.select in i.id]
            for item in items:
                outcome = rehearsal.run(item)
                counts[outcome.status] += 1
                report.append(
                    {"id": f"{plan.name}::{item.id}", "status": outcome.status, "message": outcome.message,
                     "duration": round(outcome.duration, 4)}
                )
                if not args.json:
                    _print_outcome(out, item.id, outcome)
                if args.exitfirst and outcome.status == FAILED:
                    break
            complete = not args.select and counts[FAILED] == 0 and counts[SKIPPED] == 0 and len(report) == len(items)
            final = rehearsal.final_snapshot()
            if complete and final is not None:
                digests = {
                    m.id: s.digest
                    for i, m in enumerate(rehearsal.migrations)
                    if (s := rehearsal.snapshot_at(i)) is not None
                }
                receipt = write_receipt(plan, rehearsal.migrations, digests, final, rehearsal.server.version)
    finally:
        for server in servers:
            server.stop()
    elapsed = time.perf_counter() - t0
    status = EXIT_FAILED if counts[FAILED] else EXIT_OK
    if args.json:
        _emit({"plan": plan.name, "passed": counts[PASSED], "failed": counts[FAILED], "skipped": counts[SKIPPED],
               "seconds": round(elapsed, 3), "receipt": str(receipt) if receipt else None, "items": report})
    else:
        summary = f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped in {elapsed:.2f}s"
        print(summary)
        if receipt:
            print(f"receipt: {receipt}")
    return status


_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


def _print_outcome(out: TextIO, item_id: str, outcome: Any) -> None:
    out.write(f"{_MARK[outcome.status]} {item_id}")
    if outcome.status == "skipped":
        out.write(f" ({outcome.message})")
    out.write("\n")
    if outcome.status == "failed":
        for line in outcome.message.splitlines():
            out.write(f"     {line}\n")
    out.flush()


# ---------------------------------------------------------------------- lint


def _lint(args: argparse.Namespace) -> int:
    from . import lint

    plan = _load_plan(args.plan) if args.plan else None
    paths: list[Path] = []
    inputs = [Path(p) for p in args.paths] or [plan.migrations_dir if plan else Path("migrations")]
    for path in inputs:
        if path.is_dir():
            paths.extend(sorted(p for p in path.glob("*.sql") if not p.name.endswith(".down.sql")))
        elif path.exists():
            paths.append(path)
        else:
            raise ConfigError(f"{path}: no such file or directory")
    findings = lint.lint_files(paths)
    text = lint.format_findings(findings, args.format)
    if text:
        print(text)
    errors = [f for f in findings if f.severity == "error" and not f.allowed]
    if args.format == "text":
        print(f"{len(paths)} files, {len(findings)} findings, {len(errors)} errors", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


# ---------------------------------------------------------------------- schema


def _schema(args: argparse.Namespace) -> int:
    from .plan import plan_json_schema

    print(json.dumps(plan_json_schema(), indent=2))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
