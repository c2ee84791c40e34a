"""Command-line front end of ``apply``, ``rollback``, ``dev-db``, ``backups`` and ``restore``.

Thin: each handler parses its options, calls the core (:mod:`harness.apply`,
:mod:`harness.rollback`, :mod:`harness.devdb`, :mod:`harness.backup`) and prints.  Handlers return an
exit code and raise :class:`~harness.errors.HarnessError` subclasses for
errors, which :mod:`harness.cli` prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .errors import EXIT_FAILED, EXIT_OK, ConfigError, HarnessError
from .redact import describe_dsn, register_dsn, scrub
from .runlog import human_size

__all__ = ["add_commands", "add_selection_arguments"]


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--only``, ``--exclude`` and ``--shard``: which members of a fleet plan a command takes (harness.cli_fleet)."""
    group = parser.add_argument_group("fleet plans (targets: or fleet: in the plan)")
    group.add_argument("--only", metavar="NAME", nargs="+", action="extend", default=[],
                       help="only these members (names or shell patterns like 'eu-*')")
    group.add_argument("--exclude", metavar="NAME", nargs="+", action="extend", default=[],
                       help="leave these members out (names or shell patterns)")
    group.add_argument("--shard", metavar="I/N",
                       help="a stable slice of the fleet: shard I of N (by a hash of each member's name)")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add this module's subcommands to *sub*; return name -> handler."""
    p = sub.add_parser("apply", help="apply a plan's pending migrations to its target (or the development database)")
    p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
    p.add_argument("--dry-run", action="store_true", help="print exactly what would run; change nothing")
    p.add_argument("--force", action="store_true", help="skip the rehearsal receipt gate (logged as a WARNING)")
    p.add_argument("--mode", choices=("development", "production"), help="override the plan's mode")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (production)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout (progress goes to stderr)")
    p.add_argument("--to", metavar="VERSION", help="apply the pending migrations up to and including this version only")
    add_selection_arguments(p)

    p = sub.add_parser("rollback", help="roll back the newest applied migrations with their downs, under apply's guards")
    p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
    p.add_argument("--to", metavar="VERSION", help="roll back every migration applied after this version, newest first")
    p.add_argument("--steps", metavar="N", type=int, help="roll back the newest N applied migrations")
    p.add_argument("--dry-run", action="store_true", help="print exactly what would run; change nothing")
    p.add_argument("--force", action="store_true",
                   help="skip the rehearsal receipt gate and its proof of the downs (logged as a WARNING)")
    p.add_argument("--mode", choices=("development", "production"), help="override the plan's mode")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (production)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout (progress goes to stderr)")
    add_selection_arguments(p)

    p = sub.add_parser("dev-db", help="manage the local development database a plan without a target applies to")
    p.add_argument("action", choices=("start", "stop", "status", "url", "destroy"))
    p.add_argument("plan", nargs="?", help="plan whose root the database belongs to (default: --root)")
    p.add_argument("--root", help="project root (default: the current directory)")
    p.add_argument("--yes", "-y", action="store_true", help="destroy without asking")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("backups", help="list the backups apply has taken")
    p.add_argument("plan", nargs="?", help="plan name or path (default: every plan's backups in --dir)")
    p.add_argument("--dir", help="backup directory (default: the plan's backup.dir, else backups/)")
    p.add_argument("--check", action="store_true", help="re-verify each archive (sha256 and pg_restore --list)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("restore", help="restore a backup into the target, or into a new database")
    p.add_argument("backup", help="the .dump file (as `harness backups` lists it)")
    p.add_argument("--into", metavar="NEWDB", help="restore into this new database on the same server instead")
    p.add_argument("--plan", help="plan whose target to restore into (default: the plan recorded in the backup)")
    p.add_argument("--dsn", help="database to restore into (default: the plan's target)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    return {"apply": _apply, "rollback": _rollback, "dev-db": _dev_db, "backups": _backups, "restore": _restore}


def _emit(data: Any) -> None:
    sys.stdout.write(scrub(json.dumps(data, indent=2, default=str)) + "\n")


def _load(name: str) -> Any:
    from .plan import load_plan

    return load_plan(name)


# ---------------------------------------------------------------------- apply


def _apply(args: argparse.Namespace) -> int:
    from .apply import ApplyOptions, apply_plan

    plan = _load(args.plan)
    if plan.fleet.configured:
        from . import cli_fleet

        return cli_fleet.apply(args, plan)
    _single_target(args, plan)
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes, to=args.to)
    return _report(args, lambda out: apply_plan(plan, options, out=out))


def _rollback(args: argparse.Namespace) -> int:
    from .apply import ApplyOptions
    from .rollback import rollback_plan

    plan = _load(args.plan)
    if plan.fleet.configured:
        from . import cli_fleet

        return cli_fleet.rollback(args, plan)
    _single_target(args, plan)
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes)
    return _report(args, lambda out: rollback_plan(plan, options, to=args.to, steps=args.steps, out=out))


def _single_target(args: argparse.Namespace, plan: Any) -> None:
    """A single-target plan given fleet flags: exit 2 rather than ignore them."""
    if args.only or args.exclude or args.shard:
        raise ConfigError(f"plan {plan.name} has one target; --only, --exclude and --shard select members of a fleet "
                          "(targets: or fleet: in the plan)")


def _report(args: argparse.Namespace, run: Callable[[TextIO], Any]) -> int:
    """Run apply or rollback; with --json, print its result (also the partial one of a failed run)."""
    out = sys.stderr if args.json else sys.stdout
    try:
        result = run(out)
    except HarnessError as exc:
        partial = getattr(exc, "result", None)
        if args.json and partial is not None:
            _emit(partial.to_dict())
        raise
    if args.json:
        _emit(result.to_dict())
    return EXIT_OK if result.ok else EXIT_FAILED


# ---------------------------------------------------------------------- dev-db


def _dev_db(args: argparse.Namespace) -> int:
    from .devdb import DevDB

    root = Path(args.root) if args.root else (_load(args.plan).root if args.plan else Path.cwd())
    dev = DevDB(root)
    if args.action == "start":
        status = dev.start()
        if args.json:
            _emit(status.to_dict())
        else:
            print(f"development database running (PostgreSQL {status.version}, pid {status.pid})")
            print(status.dsn)
        return EXIT_OK
    if args.action == "stop":
        was = dev.stop()
        if args.json:
            _emit({"stopped": was, "root": str(dev.root)})
        else:
            print("development database stopped" if was else "development database was not running")
        return EXIT_OK
    if args.action == "destroy":
        if not args.yes:
            if sys.stdin is None or not sys.stdin.isatty():
                raise ConfigError("dev-db destroy deletes the development database's data; pass --yes to confirm")
            sys.stdout.write(f"Delete the development database of {dev.root}? [y/N] ")
            sys.stdout.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                print("not confirmed; nothing was deleted")
                return EXIT_FAILED
        dev.destroy()
        print("development database destroyed")
        return EXIT_OK
    status = dev.status()
    if args.action == "url":
        if args.json:
            _emit({"dsn": status.dsn, "running": status.running})
        else:
            print(status.dsn)
            if not status.running:
                print("note: the development database is not running; start it with `harness dev-db start`",
                      file=sys.stderr)
        return EXIT_OK
    if args.json:
        _emit(status.to_dict())
    else:
        state = f"running (pid {status.pid})" if status.running else ("stopped" if status.initialised else "not created yet")
        print(f"development database of {status.root}: {state}")
        print(f"  url:  {status.dsn}")
        if status.data_dir:
            print(f"  data: {status.data_dir}")
        if status.log_file:
            print(f"  log:  {status.log_file}")
    return EXIT_OK


# ---------------------------------------------------------------------- backups


def _backups(args: argparse.Namespace) -> int:
    from .backup import file_sha256, list_backups, verify_backup
    from .errors import BackupError

    plan = _load(args.plan) if args.plan else None
    directory = Path(args.dir) if args.dir else (plan.backup.dir if plan else Path("backups"))
    backups = list_backups(directory, plan.name if plan else None)
    rows = []
    failed = False
    for info in backups:
        state = "verified" if info.verified else "unverified"
        if args.check:
            try:
                if info.sha256 and file_sha256(info.path) != info.sha256:
                    raise BackupError("sha256 differs from the manifest")
                verify_backup(info.path)
                state = "verified (checked now)"
            except BackupError as exc:
                state = f"BAD: {exc}"
                failed = True
        rows.append((info, state))
    if args.json:
        _emit([{**info.to_dict(), "state": state} for info, state in rows])
        return EXIT_FAILED if failed else EXIT_OK
    if not rows:
        print(f"no backups in {directory}")
        return EXIT_OK
    for info, state in rows:
        versions = ", ".join(info.versions) or "-"
        print(f"{info.created_at}  {human_size(info.size):>9}  {info.mode:<7}  {state}")
        print(f"    {info.path}")
        print(f"    before applying: {versions}")
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------- restore


def _restore(args: argparse.Namespace) -> int:
    from .backup import read_manifest, restore_backup

    path = Path(args.backup)
    if not path.is_file():
        raise ConfigError(f"backup {path} does not exist; `harness backups PLAN` lists the backups there are")
    info = read_manifest(path)
    plan = None
    if args.plan:
        plan = _load(args.plan)
    elif info is not None and info.plan_path and Path(info.plan_path).is_file() and not args.dsn:
        plan = _load(info.plan_path)
    dsn = args.dsn or (plan.target_dsn if plan else None)
    if not dsn and plan is not None:
        from .devdb import DevDB

        status = DevDB(plan.root).status()
        if not status.running:
            raise ConfigError("the development database is not running; start it with `harness dev-db start`")
        dsn = status.dsn
    if not dsn:
        raise ConfigError("no database to restore into: give --dsn or --plan (the backup names no plan file)")
    register_dsn(dsn)
    where = describe_dsn(dsn)
    target = f"a new database {args.into!r} on the server of {where}" if args.into else where
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise ConfigError(
                f"restoring {path.name} into {target} needs confirmation and there is no terminal to ask; pass --yes"
            )
        warning = "" if args.into else " Objects in the backup are dropped and recreated with the backup's data."
        sys.stdout.write(scrub(f"Restore {path} into {target}?{warning} [y/N] "))
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("not confirmed; nothing was restored")
            return EXIT_FAILED
    lock_wait = plan.guards.lock_wait if plan else 60.0
    result = restore_backup(path, dsn, into=args.into, lock_wait=lock_wait)
    if args.json:
        _emit({"backup": str(result.backup), "database": result.database, "created": result.created,
               "seconds": result.seconds, "leftovers": result.leftovers})
        return EXIT_OK
    print(scrub(f"restored {path.name} into {result.database} in {result.seconds:.2f}s"))
    if result.leftovers:
        print("note: the database has objects the backup does not have (created after it was taken); they were "
              "left as they are:")
        for line in result.leftovers[:50]:
            print(f"    {line}")
    return EXIT_OK
