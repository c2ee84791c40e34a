"""The ``harness`` command line: a thin front end over the core.

Exit codes, for every command: 0 ok, 1 a check or migration failed, 2 bad
usage or configuration.  Errors are one clear message, never a traceback
(set ``HARNESS_DEBUG=1`` to see one for an unexpected internal error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import cli_apply
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, HarnessError
from .redact import ScrubFilter, describe_dsn, register_dsn, scrub

__all__ = ["main"]

# Each command imports the engine parts it needs inside its handler: the console script then starts in
# about a quarter of the time (bench/startup_bench.py), which `harness lint` and `status` in CI notice.

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
    cli_apply.add_selection_arguments(p)

    p = sub.add_parser("rehearse", help="rehearse a plan on a throwaway PostgreSQL (same as pytest --migrate-plan)")
    p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
    p.add_argument("--provider", help="rehearsal server provider: auto, local, embedded, docker or dsn")
    p.add_argument("--rehearsal-dsn", help="server for the dsn provider")
    p.add_argument("-k", dest="select", metavar="TEXT", help="only items whose id contains TEXT")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR", type=Path,
                       help="rehearsed-prefix cache directory (default: the plan's rehearsal.cache, .harness/cache)")
    cache.add_argument("--no-cache", dest="cache", action="store_false",
                       help="rehearse every migration; neither read nor write the cache")

    p = sub.add_parser("lint", help="lint migration files statically (no database needed)")
    p.add_argument("paths", nargs="*", help="migration files or directories (default: the plan's migrations)")
    p.add_argument("--plan", help="plan whose migrations, severities and allows to use")
    p.add_argument("--format", choices=("text", "json", "github"), default="text")

    p = sub.add_parser("schema", help="print the JSON Schema of the plan format")

    p = sub.add_parser("adopt", help="record what another tool's history table says is applied (once)")
    p.add_argument("plan", help="plan name (plans/NAME.yaml) or path; its migrations, layout and baseline are used")
    p.add_argument("--dsn", help="database to adopt (default: the plan's target, else $DATABASE_URL)")
    p.add_argument("--dry-run", action="store_true", help="print what would be recorded, record nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _authoring_parsers(sub)
    return parser


def _handlers(sub: Any) -> dict[str, Any]:
    return {"status": _status, "rehearse": _rehearse, "lint": _lint, "schema": _schema, **cli_apply.add_commands(sub),
            **_layout_handlers(), **_authoring_handlers()}


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
        code: int = handler(args)
        sys.stdout.flush()  # a reader that went away (`harness schema | head`) shows here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null after the reader of a pipe closed it.

    Python's documented way (the ``signal`` module's note on SIGPIPE): the
    interpreter flushes stdout at exit, which would fail again and print an
    exception.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler main() installs: writes to whatever ``sys.stderr`` is when a record is emitted.

    Installed once per process: calling main() again (tests, the
    Python API) finds it instead of adding a second one that would print
    every log line twice; and it follows pytest's per-test ``sys.stderr``
    instead of holding on to a closed one.
    """

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def _setup_logging(verbose: int) -> None:
    root = logging.getLogger()
    # Found by name, not class: a second import of this module (pytester's
    # in-process runs restore sys.modules afterwards) has a class of its own.
    if not any(type(h).__name__ == "_StderrHandler" for h in root.handlers):
        handler = _StderrHandler()
        handler.addFilter(ScrubFilter())
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


def _emit(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(scrub(json.dumps(data, indent=2, default=str)) + "\n")


# ---------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    from . import history
    from .runner import read_status  # the Python API's status: one code path

    plan = _load_plan(args.plan) if args.plan else None
    if plan is not None and plan.fleet.configured:
        from . import cli_fleet

        return cli_fleet.status(args, plan)
    if args.only or args.exclude or args.shard:
        raise ConfigError("--only, --exclude and --shard select members of a fleet plan (targets: or fleet:)")
    dsn, note = _status_database(args, plan)
    migrations = _status_migrations(args, plan)
    where = describe_dsn(dsn)
    status = read_status(dsn, migrations)
    foreign = _foreign_histories(dsn, migrations)  # what other tools' history tables say (Flyway, goose, ...)
    if args.json:
        data = {"database": where, **({"note": note} if note else {}), **status.to_dict()}
        _emit({**data, "foreign": [m.to_dict() for m in foreign]})
    else:
        if note:
            print(scrub(f"({note})"))
        print(scrub(history.format_status(status, where=where)))
        if foreign:
            from . import adopt

            print()
            recorded = {m.id for _, m in status.applied if m is not None}
            print(scrub(adopt.format_foreign(foreign, recorded)))
    return EXIT_OK if status.ok and not any(m.problems for m in foreign) else EXIT_FAILED


def _foreign_histories(dsn: str, migrations: list[Any]) -> list[Any]:
    import psycopg

    from . import adopt

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return [adopt.match_history(h, migrations) for h in adopt.read_foreign_histories(conn)]


def _status_database(args: argparse.Namespace, plan: Any) -> tuple[str, str | None]:
    """The database ``status`` inspects: --dsn, the plan's target, its running dev-db; no plan: $DATABASE_URL."""
    if plan is not None:
        from .runner import status_target

        dsn, note = status_target(plan, args.dsn)
    else:
        given = args.dsn or os.environ.get("DATABASE_URL")
        if not given:
            raise ConfigError("no database to inspect: give --dsn, set DATABASE_URL, or name a plan with a target")
        dsn, note = given, None
    register_dsn(dsn)
    return dsn, note


def _status_migrations(args: argparse.Namespace, plan: Any) -> list[Any]:
    """The migrations ``status`` compares with: --migrations DIR, else the plan's (layout, substitutions)."""
    from .sources import load_migrations, load_plan_migrations

    if args.migrations or plan is None:
        return load_migrations(Path(args.migrations) if args.migrations else Path("migrations"))
    return load_plan_migrations(plan)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return scrub(lines[0]) if lines else type(exc).__name__


def _load_plan(name: str) -> Any:
    from .plan import load_plan

    return load_plan(name)


# ---------------------------------------------------------------------- rehearse


def _rehearse(args: argparse.Namespace) -> int:
    """``harness rehearse``: a thin wrapper over :func:`harness.runner.rehearse_plan` (the Python API's engine)."""
    from .runner import rehearse_plan

    plan = _load_plan(args.plan)

    def show(item: Any, outcome: Any) -> None:
        if not args.json:
            _print_outcome(sys.stdout, item.id, outcome)

    result = rehearse_plan(
        plan, provider=args.provider, dsn=args.rehearsal_dsn, select=args.select, exitfirst=args.exitfirst,
        on_item=show, cache=args.cache,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        _emit(result.to_dict())
    else:
        print(result.summary())
        if result.receipt:
            print(f"receipt: {result.receipt}")
    return EXIT_OK if result.ok else EXIT_FAILED


_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "cached": "CACHED"}


def _print_outcome(out: TextIO, item_id: str, outcome: Any) -> None:
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


# ---------------------------------------------------------------------- lint


def _lint(args: argparse.Namespace) -> int:
    """Lint files or migration folders (any layout), honouring the plan's per-step ``allow``."""
    import dataclasses

    from . import layouts, lint

    plan = _load_plan(args.plan) if args.plan else None
    inputs = [Path(p) for p in args.paths] or [plan.migrations_dir if plan else Path("migrations")]
    findings: list[Any] = []
    files = 0
    for path in inputs:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        if not path.is_dir():
            findings += lint.lint_files([path])
            files += 1
            continue
        own = plan if plan is not None and path.resolve() == plan.migrations_dir.resolve() else None
        migrations, quirks = layouts.read_folder(
            path, own.layout if own else "auto", substitutions=own.substitutions if own else ()
        )
        files += len(migrations)
        settings: dict[str, Any] = (
            {"severities": own.lint_severity, "require_lock_timeout": own.require_lock_timeout} if own else {}
        )
        if all(m.error is None and m.path.read_text(encoding="utf-8") == m.sql for m in migrations):
            # Plain files: lint them as a history, so later files know what earlier ones created.
            by_path = {str(m.path): m for m in migrations}
            found = lint.lint_files(
                [m.path for m in migrations], in_transaction=lambda p: by_path[str(p)].transactional, **settings
            )
        else:  # substituted text or sections of a file (dbmate, goose, ...): lint what will run
            found = [
                f for m in migrations
                for f in lint.lint_sql(m.sql, str(m.path), in_transaction=m.transactional, **settings)
            ]
        if own:
            steps = {str(m.path): own.step_for(m.id, m.version) for m in migrations}
            found = [
                dataclasses.replace(f, allowed=steps[f.path].reason or "acknowledged in the plan")
                if f.path in steps and f.rule in steps[f.path].allow and not f.allowed else f
                for f in found
            ]
        findings += found
        findings += [
            lint.Finding(rule=q.rule, severity=q.severity, message=q.message, advice=q.advice, path=str(q.path),
                         line=q.line, column=q.column, statement="")
            for q in quirks
        ]
        # Files that cannot be read or parsed at all (lint above saw only the up files' text).
        linted = {f.path for f in found if f.rule == "parse-error"}
        findings += [
            lint.Finding(rule="parse-error", severity="error", message=error, path=str(where), line=1, column=1,
                         advice="fix the file so that it can be read and parsed", statement="")
            for m in migrations
            for where, error in ((m.path, m.error), (m.down_path, m.down_error))
            if error is not None and str(where) not in linted
        ]
    text = lint.format_findings(findings, args.format)
    if text:
        print(text)
    errors = [f for f in findings if f.severity == "error" and not f.allowed]
    if args.format == "text":
        print(f"{files} files, {len(findings)} findings, {len(errors)} errors", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


# ---------------------------------------------------------------------- schema


def _schema(args: argparse.Namespace) -> int:
    from .plan import plan_json_schema

    print(json.dumps(plan_json_schema(), indent=2))
    return EXIT_OK


# ---------------------------------------------------------------------- layouts and adoption


def _layout_handlers() -> dict[str, Any]:
    """``adopt``: record what another tool's history table says is applied."""
    return {"adopt": _adopt}


def _adopt(args: argparse.Namespace) -> int:
    """``harness adopt PLAN``: copy a foreign history's state into harness.schema_migrations, once."""
    from . import adopt
    from .sources import load_plan_migrations

    plan = _load_plan(args.plan)
    dsn = args.dsn or plan.target_dsn or os.environ.get("DATABASE_URL")
    if not dsn:
        raise ConfigError("no database to adopt: give --dsn, set DATABASE_URL, or give the plan a target")
    register_dsn(dsn)
    migrations = load_plan_migrations(plan)
    layout = migrations[0].layout if migrations else plan.layout
    result = adopt.adopt(
        dsn, migrations, layout=layout, baseline=plan.baseline, dry_run=args.dry_run, lock_timeout=plan.guards.lock_wait
    )
    source = result.source.history if result.source is not None else None
    if args.json:
        _emit({
            "database": describe_dsn(dsn),
            "dry_run": args.dry_run,
            "source": source.to_dict() if source else None,
            "recorded" if not args.dry_run else "would_record": [m.id for m in result.to_record],
            "already": [m.id for m in result.already],
            "baseline": [m.id for m in result.baseline],
        })
        return EXIT_OK
    where = describe_dsn(dsn)
    print(f"foreign history: {source.table} ({source.tool})" if source else "foreign history: none found")
    if result.baseline:
        print(f"baseline: {len(result.baseline)} migrations up to {result.baseline[-1].id}")
    verb = "would record" if args.dry_run else "recorded"
    print(f"{verb} {len(result.to_record)} migrations as adopted on {where}" + (":" if result.to_record else ""))
    for migration in result.to_record:
        print(f"  {migration.id}")
    if result.already:
        print(f"{len(result.already)} already recorded in harness.schema_migrations")
    return EXIT_OK


# ---------------------------------------------------------------------- new, generate, check-schema


def _authoring_parsers(sub: Any) -> None:
    """``new``, ``generate`` and ``check-schema`` (docs/authoring.md)."""
    p = sub.add_parser("new", help="create an empty migration and its down file, named <UTC timestamp>_<name>")
    p.add_argument("name", help="what the migration does: lower-case letters, digits and _ (add_orders)")
    p.add_argument("--plan", help="plan whose migrations folder and layout to use (default: the only plan in "
                   "plans/, else ./migrations)")

    p = sub.add_parser("generate", help="write the migration that turns the migrated schema into the plan's "
                       "desired schema, and prove it")
    p.add_argument("name", help="name of the new migration: lower-case letters, digits and _")
    p.add_argument("--plan", help="plan with a `schema:` (default: the only plan in plans/)")
    p.add_argument("--provider", help="rehearsal server provider: auto, local, embedded, docker or dsn")
    p.add_argument("--rehearsal-dsn", help="server for the dsn provider")
    p.add_argument("--discard-on-failure", action="store_true", help="remove the files when the proof fails")

    p = sub.add_parser("check-schema", help="fail when the migrations do not produce the plan's desired schema")
    p.add_argument("--plan", help="plan with a `schema:` (default: the only plan in plans/)")
    p.add_argument("--provider", help="rehearsal server provider: auto, local, embedded, docker or dsn")
    p.add_argument("--rehearsal-dsn", help="server for the dsn provider")


def _authoring_handlers() -> dict[str, Any]:
    return {"new": _new, "generate": _generate, "check-schema": _check_schema}


def _only_plan(given: str | None, *, required: bool) -> Any:
    """The plan named by --plan, else the only plan in plans/ (None when there is none and none is required)."""
    if given:
        return _load_plan(given)
    plans = sorted(p for p in Path("plans").glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if Path("plans").is_dir() else []
    if len(plans) == 1:
        return _load_plan(str(plans[0]))
    if not plans and not required:
        return None
    listing = f": {', '.join(p.stem for p in plans)}" if plans else " (there is no plans/ directory here)"
    raise ConfigError(f"pass --plan NAME; {'several plans' if plans else 'no plan'} found{listing}")


def _new(args: argparse.Namespace) -> int:
    from .authoring import create_migration, layout_for

    plan = _only_plan(args.plan, required=False)
    directory = plan.migrations_dir if plan else Path("migrations")
    layout = layout_for(plan.layout, directory) if plan else None
    from .execute import relpath

    created = create_migration(directory, args.name, layout=layout)
    for path in created.files or (created.up, created.down):
        print(f"created {relpath(path)}")
    for path in created.updated:
        print(f"updated {relpath(path)}")
    print("write the SQL: until you do, the migration is a no-op (patterns: docs/authoring.md)")
    return EXIT_OK


def _rehearsal_server(plan: Any, args: argparse.Namespace) -> Any:
    from .postgres import start_server

    provider = args.provider or plan.rehearsal.provider
    dsn = args.rehearsal_dsn or plan.rehearsal.dsn
    return start_server(provider, plan.rehearsal.postgres, dsn, data_bytes=plan.rehearsal.seed_bytes)


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    plan = _only_plan(args.plan, required=True)
    server = _rehearsal_server(plan, args)
    try:
        result = generate(plan, server, args.name, discard_on_failure=args.discard_on_failure)
    finally:
        server.stop()
    print(scrub(result.format()))
    return result.exit_code


def _check_schema(args: argparse.Namespace) -> int:
    from .generate import check_schema

    plan = _only_plan(args.plan, required=True)
    server = _rehearsal_server(plan, args)
    try:
        comparison = check_schema(plan, server)
    finally:
        server.stop()
    print(scrub(comparison.format()))
    return EXIT_OK if comparison.ok else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
