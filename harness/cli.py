"""The ``harness`` command line: a thin front end over the core.

Exit codes, for every command: 0 ok, 1 a check or migration failed, 2 bad
usage or configuration.  Errors are one clear message, never a traceback
(set ``HARNESS_DEBUG=1`` to see one for an unexpected internal error).

The commands live in command modules (:data:`COMMANDS`), each with its
arguments and its handler: they parse options, call one core function and
print.  This module holds what every command shares: the parser, logging,
and turning errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TextIO

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, HarnessError
from .redact import ScrubFilter, scrub

__all__ = ["main", "COMMANDS", "build_parser", "emit"]

log = logging.getLogger("harness")

#: A command's handler: the parsed arguments in, the exit code out.
Handler = Callable[[argparse.Namespace], int]

#: Every command: name -> (its module, the one line ``harness --help`` shows).  A command module has
#: ``configure(name, parser) -> handler``, which adds the command's arguments to its parser.
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("harness.cli_status", "show applied and pending migrations of a database"),
    "rehearse": ("harness.cli_rehearse", "rehearse a plan on a throwaway PostgreSQL (same as pytest --migrate-plan)"),
    "lint": ("harness.cli_lint", "lint migration files statically (no database needed)"),
    "schema": ("harness.cli_lint", "print the JSON Schema of the plan format"),
    "adopt": ("harness.cli_status", "record what another tool's history table says is applied (once)"),
    "new": ("harness.cli_rehearse", "create an empty migration and its down file, named <UTC timestamp>_<name>"),
    "generate": ("harness.cli_rehearse",
                 "write the migration that turns the migrated schema into the plan's desired schema, and prove it"),
    "check-schema": ("harness.cli_rehearse", "fail when the migrations do not produce the plan's desired schema"),
    "apply": ("harness.cli_apply", "apply a plan's pending migrations to its target (or the development database)"),
    "rollback": ("harness.cli_apply", "roll back the newest applied migrations with their downs, under apply's guards"),
    "dev-db": ("harness.cli_apply", "manage the local development database a plan without a target applies to"),
    "backups": ("harness.cli_apply", "list the backups apply has taken"),
    "restore": ("harness.cli_apply", "restore a backup into the target, or into a new database"),
}


def command_module(name: str) -> ModuleType:
    """The module of command *name*, imported now.

    The one lazy import of the command line: a command module imports the
    engine it drives (rehearsal, apply, lint...) at its top, and only the
    module of the command being run is imported, so ``harness lint`` or
    ``harness --help`` does not load the rehearsal and apply engines
    (``bench/cli_startup_bench.py`` measures the difference).
    """
    return importlib.import_module(COMMANDS[name][0])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``harness`` parser: every command with its one line, and *command*'s arguments and handler."""
    parser = _Parser(prog="harness", description="Test and apply PostgreSQL migrations declaratively.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == command:
            handler: Handler = command_module(name).configure(name, p)
            p.set_defaults(handler=handler)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command *argv* names: its first word that is not an option (the global options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    # SIGTERM ends the run like Ctrl-C does: servers stop, nothing is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.version:
        print(f"migration-harness {_version()}")
        return EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
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


def _version() -> str:
    # Late, for --version only: importlib.metadata costs more to import than the rest of the start-up.
    from importlib import metadata

    return metadata.version("migration-harness")


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


def emit(data: Any, out: TextIO | None = None) -> None:
    """Print *data* as indented JSON (``--json``), secrets scrubbed."""
    (out or sys.stdout).write(scrub(json.dumps(data, indent=2, default=str)) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
