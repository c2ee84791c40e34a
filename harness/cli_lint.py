"""Command-line front end of ``lint`` and ``schema``: the commands that need no database.

Thin: ``lint`` parses its options, calls :func:`harness.lint_plan.lint_paths`
and prints the findings; ``schema`` prints the plan format's JSON Schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from . import lint
from .errors import EXIT_FAILED, EXIT_OK
from .lint_plan import lint_paths
from .plan import load_plan, plan_json_schema

__all__ = ["configure"]


def configure(name: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the arguments of command *name* (``lint`` or ``schema``) to *parser*; its handler."""
    if name == "schema":
        return _schema
    parser.add_argument("paths", nargs="*", help="migration files or directories (default: the plan's migrations)")
    parser.add_argument("--plan", help="plan whose migrations, severities and allows to use")
    parser.add_argument("--format", choices=("text", "json", "github"), default="text")
    return _lint


def _lint(args: argparse.Namespace) -> int:
    """Lint files or migration folders (any layout), honouring the plan's per-step ``allow``."""
    plan = load_plan(args.plan) if args.plan else None
    report = lint_paths([Path(p) for p in args.paths], plan)
    text = lint.format_findings(report.findings, args.format)
    if text:
        print(text)
    if args.format == "text":
        print(f"{report.files} files, {len(report.findings)} findings, {len(report.errors)} errors", file=sys.stderr)
    return EXIT_FAILED if report.errors else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(plan_json_schema(), indent=2))
    return EXIT_OK
