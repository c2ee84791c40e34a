"""Command-line front end of ``apply``, ``rollback``, ``dev-db``, ``backups`` and ``restore``.

Thin: each handler parses its options, calls the core (:mod:`harness.apply`,
:mod:`harness.rollback`, :mod:`harness.devdb`, :mod:`harness.backup`, the
target and confirmation of :mod:`harness.targets`) and prints.  Handlers
return an exit code and raise :class:`~harness.errors.HarnessError`
subclasses for errors, which :mod:`harness.cli` prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import cli_fleet
from .apply import ApplyOptions, ApplyResult, apply_plan
from .backup import file_sha256, list_backups, read_manifest, restore_backup, verify_backup
from .cli import emit
from .devdb import DevDB
from .errors import EXIT_FAILED, EXIT_OK, BackupError, ConfigError, HarnessError
from .plan import load_plan
from .redact import scrub
from .rollback import rollback_plan
from .runlog import human_size
from .targets import confirm, find_target

__all__ = ["configure"]


def configure(name: str, p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the arguments of command *name* to its parser *p*; its handler."""
    if name == "apply":
        p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
        p.add_argument("--dry-run", action="store_true", help="print exactly what would run; change nothing")
        p.add_argument("--force", action="store_true", help="skip the rehearsal receipt gate (logged as a WARNING)")
        p.add_argument("--mode", choices=("development", "production"), help="override the plan's mode")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (production)")
        p.add_argument("--json", action="store_true", help="machine-readable result on stdout (progress goes to stderr)")
        p.add_argument("--to", metavar="VERSION",
                       help="apply the pending migrations up to and including this version only")
        cli_fleet.add_selection_arguments(p)
        return _apply
    if name == "rollback":
        p.add_argument("plan", help="plan name (plans/NAME.yaml) or path")
        p.add_argument("--to", metavar="VERSION",
                       help="roll back every migration applied after this version, newest first")
        p.add_argument("--steps", metavar="N", type=int, help="roll back the newest N applied migrations")
        p.add_argument("--dry-run", action="store_true", help="print exactly what would run; change nothing")
        p.add_argument("--force", action="store_true",
                       help="skip the rehearsal receipt gate and its proof of the downs (logged as a WARNING)")
        p.add_argument("--mode", choices=("development", "production"), help="override the plan's mode")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (production)")
        p.add_argument("--json", action="store_true", help="machine-readable result on stdout (progress goes to stderr)")
        cli_fleet.add_selection_arguments(p)
        return _rollback
    if name == "dev-db":
        p.add_argument("action", choices=("start", "stop", "status", "url", "destroy"))
        p.add_argument("plan", nargs="?", help="plan whose root the database belongs to (default: --root)")
        p.add_argument("--root", help="project root (default: the current directory)")
        p.add_argument("--yes", "-y", action="store_true", help="destroy without asking")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return _dev_db
    if name == "backups":
        p.add_argument("plan", nargs="?", help="plan name or path (default: every plan's backups in --dir)")
        p.add_argument("--dir", help="backup directory (default: the plan's backup.dir, else backups/)")
        p.add_argument("--check", action="store_true", help="re-verify each archive (sha256 and pg_restore --list)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return _backups
    p.add_argument("backup", help="the .dump file (as `harness backups` lists it)")
    p.add_argument("--into", metavar="NEWDB", help="restore into this new database on the same server instead")
    p.add_argument("--plan", help="plan whose target to restore into (default: the plan recorded in the backup)")
    p.add_argument("--dsn", help="database to restore into (default: the plan's target)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return _restore


# ---------------------------------------------------------------------- apply


def _apply(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if plan.fleet.configured:
        return cli_fleet.apply(args, plan)
    cli_fleet.refuse_selection(args, f"plan {plan.name}")
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes, to=args.to)
    return _report(args, lambda out: apply_plan(plan, options, out=out))


def _rollback(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if plan.fleet.configured:
        return cli_fleet.rollback(args, plan)
    cli_fleet.refuse_selection(args, f"plan {plan.name}")
    options = ApplyOptions(dry_run=args.dry_run, force=args.force, mode=args.mode, yes=args.yes)
    return _report(args, lambda out: rollback_plan(plan, options, to=args.to, steps=args.steps, out=out))


def _report(args: argparse.Namespace, run: Callable[[TextIO], ApplyResult]) -> int:
    """Run apply or rollback; with --json, print its result (also the partial one of a failed run)."""
    out = sys.stderr if args.json else sys.stdout
    try:
        result = run(out)
    except HarnessError as exc:
        if args.json and exc.result is not None:
            emit(exc.result.to_dict())
        raise
    if args.json:
        emit(result.to_dict())
    return EXIT_OK if result.ok else EXIT_FAILED


# ---------------------------------------------------------------------- dev-db


def _dev_db(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else (load_plan(args.plan).root if args.plan else Path.cwd())
    dev = DevDB(root)
    if args.action == "start":
        status = dev.start()
        if args.json:
            emit(status.to_dict())
        else:
            print(f"development database running (PostgreSQL {status.version}, pid {status.pid})")
            print(status.dsn)
        return EXIT_OK
    if args.action == "stop":
        was = dev.stop()
        if args.json:
            emit({"stopped": was, "root": str(dev.root)})
        else:
            print("development database stopped" if was else "development database was not running")
        return EXIT_OK
    if args.action == "destroy":
        if not args.yes and not confirm(
            f"Delete the development database of {dev.root}? [y/N] ",
            refusal="dev-db destroy deletes the development database's data; pass --yes to confirm",
        ):
            print("not confirmed; nothing was deleted")
            return EXIT_FAILED
        dev.destroy()
        print("development database destroyed")
        return EXIT_OK
    status = dev.status()
    if args.action == "url":
        if args.json:
            emit({"dsn": status.dsn, "running": status.running})
        else:
            print(status.dsn)
            if not status.running:
                print("note: the development database is not running; start it with `harness dev-db start`",
                      file=sys.stderr)
        return EXIT_OK
    if args.json:
        emit(status.to_dict())
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
    plan = load_plan(args.plan) if args.plan else None
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
        emit([{**info.to_dict(), "state": state} for info, state in rows])
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
    path = Path(args.backup)
    if not path.is_file():
        raise ConfigError(f"backup {path} does not exist; `harness backups PLAN` lists the backups there are")
    info = read_manifest(path)
    plan = None
    if args.plan:
        plan = load_plan(args.plan)
    elif info is not None and info.plan_path and Path(info.plan_path).is_file() and not args.dsn:
        plan = load_plan(info.plan_path)
    # --dsn, the plan's target, else its running development database (restore never starts it).
    found = find_target(plan, args.dsn, dev="running", what="restore into")
    assert found.dsn is not None
    dsn, where = found.dsn, found.where
    target = f"a new database {args.into!r} on the server of {where}" if args.into else where
    warning = "" if args.into else " Objects in the backup are dropped and recreated with the backup's data."
    if not args.yes and not confirm(
        f"Restore {path} into {target}?{warning} [y/N] ",
        refusal=f"restoring {path.name} into {target} needs confirmation and there is no terminal to ask; pass --yes",
    ):
        print("not confirmed; nothing was restored")
        return EXIT_FAILED
    lock_wait = plan.guards.lock_wait if plan else 60.0
    result = restore_backup(path, dsn, into=args.into, lock_wait=lock_wait)
    if args.json:
        emit({"backup": str(result.backup), "database": result.database, "created": result.created,
              "seconds": result.seconds, "leftovers": result.leftovers})
        return EXIT_OK
    print(scrub(f"restored {path.name} into {result.database} in {result.seconds:.2f}s"))
    if result.leftovers:
        print("note: the database has objects the backup does not have (created after it was taken); they were "
              "left as they are:")
        for line in result.leftovers[:50]:
            print(f"    {line}")
    return EXIT_OK
