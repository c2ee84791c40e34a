"""Lint migration files and folders as they will run, with a plan's severities and acknowledged findings.

:func:`lint_paths` is what ``harness lint`` reports: a folder is read in
its layout (:func:`harness.layouts.read_folder`) and linted as a history
(later files know what earlier ones created), or, where a layout changes
the text (substitutions, sections of a file), what will run is linted.  In
the plan's own migrations folder the plan's ``lint`` settings apply and a
step's ``allow`` acknowledges its findings; a layout's quirks and files
that cannot be read or parsed are findings too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layouts, lint
from .errors import ConfigError
from .lint import Finding
from .plan import Plan
from .sources import Migration

__all__ = ["LintReport", "lint_paths"]


@dataclass
class LintReport:
    """What linting found, and how many files it read."""

    findings: list[Finding] = field(default_factory=list)
    files: int = 0

    @property
    def errors(self) -> list[Finding]:
        """The findings that fail the lint: errors no step of the plan acknowledges."""
        return [f for f in self.findings if f.severity == "error" and not f.allowed]


def lint_paths(paths: Sequence[Path], plan: Plan | None = None) -> LintReport:
    """Lint *paths* (files or migration folders; none: the plan's migrations, else ``migrations/``).

    :class:`~harness.errors.ConfigError` when a path does not exist.
    """
    inputs = list(paths) or [plan.migrations_dir if plan else Path("migrations")]
    report = LintReport()
    for path in inputs:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        if not path.is_dir():
            report.findings += lint.lint_files([path])
            report.files += 1
            continue
        own = plan if plan is not None and path.resolve() == plan.migrations_dir.resolve() else None
        migrations, quirks = layouts.read_folder(
            path, own.layout if own else "auto", substitutions=own.substitutions if own else ()
        )
        report.files += len(migrations)
        found = _lint_folder(migrations, own)
        if own:
            found = _acknowledged(found, migrations, own)
        report.findings += found
        report.findings += [
            Finding(rule=q.rule, severity=q.severity, message=q.message, advice=q.advice, path=str(q.path),
                    line=q.line, column=q.column, statement="")
            for q in quirks
        ]
        # Files that cannot be read or parsed at all (lint above saw only the up files' text).
        linted = {f.path for f in found if f.rule == "parse-error"}
        report.findings += [
            Finding(rule="parse-error", severity="error", message=error, path=str(where), line=1, column=1,
                    advice="fix the file so that it can be read and parsed", statement="")
            for m in migrations
            for where, error in ((m.path, m.error), (m.down_path, m.down_error))
            if error is not None and str(where) not in linted
        ]
    return report


def _lint_folder(migrations: Sequence[Migration], plan: Plan | None) -> list[Finding]:
    settings: dict[str, Any] = (
        {"severities": plan.lint_severity, "require_lock_timeout": plan.require_lock_timeout} if plan else {}
    )
    if all(m.error is None and m.path.read_text(encoding="utf-8") == m.sql for m in migrations):
        # Plain files: lint them as a history, so later files know what earlier ones created.
        by_path = {str(m.path): m for m in migrations}
        return lint.lint_files(
            [m.path for m in migrations], in_transaction=lambda p: by_path[str(p)].transactional, **settings
        )
    # Substituted text or sections of a file (dbmate, goose, ...): lint what will run.
    return [f for m in migrations for f in lint.lint_sql(m.sql, str(m.path), in_transaction=m.transactional, **settings)]


def _acknowledged(found: list[Finding], migrations: Sequence[Migration], plan: Plan) -> list[Finding]:
    """*found* with the findings a step of *plan* allows marked as allowed, with the step's reason."""
    steps = {str(m.path): plan.step_for(m.id, m.version) for m in migrations}
    return [
        dataclasses.replace(f, allowed=steps[f.path].reason or "acknowledged in the plan")
        if f.path in steps and f.rule in steps[f.path].allow and not f.allowed else f
        for f in found
    ]
