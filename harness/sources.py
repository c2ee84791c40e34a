"""Migration folders, split into statements by PostgreSQL's own parser.

:func:`load_migrations` reads a folder in any supported layout (the native
one, or a foreign tool's: see :mod:`harness.layouts` and
``docs/layouts.md``) into the same :class:`Migration` objects, so every
assertion, lint rule and apply guard works the same whatever wrote the files.

The layout readers build on lower modules: :mod:`harness.migration` (the
model), :mod:`harness.parsing` (splitting SQL, transaction control,
substitutions) and :mod:`harness.native` (the native layout); this module is
the front door that picks a layout and reads a plan's folder.  It re-exports
the model and the parsing functions, so ``from harness.sources import
Migration, parse_sql`` keeps working.

Nothing here opens a connection or executes SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import SourceError
from .layouts import LAYOUTS, read_folder
from .migration import LayoutFinding, Migration, Order, Statement
from .parsing import apply_substitutions, checksum, make_migration, parse_sql

__all__ = [
    "LAYOUTS",
    "LayoutFinding",
    "Statement",
    "Migration",
    "Order",
    "parse_sql",
    "make_migration",
    "load_migrations",
    "load_plan_migrations",
    "apply_substitutions",
    "baseline_index",
    "checksum",
]

log = logging.getLogger(__name__)


def load_migrations(
    directory: Path | str,
    *,
    target_major: int | None = None,
    layout: str = "auto",
    substitutions: Sequence[Any] = (),
) -> list[Migration]:
    """Read every migration in *directory*, sorted by :attr:`Migration.order`.

    *layout* names the folder's layout (one of :data:`LAYOUTS`); ``auto``
    detects it and picks ``native`` when nothing else fits or several
    layouts do (see :func:`harness.layouts.detect_layout`).
    *substitutions* are applied in order to the SQL text before it is parsed
    (checksums stay those of the files as written): each is a
    :class:`harness.plan.Substitution`, or a mapping with ``literal`` or
    ``regex`` and ``value``.

    Raises :class:`~harness.errors.SourceError` (exit code 2) for a missing
    folder, a ``.sql`` file whose name fits no pattern, a down file without
    its up file, two files with the same version, a file that is not UTF-8,
    is empty or holds only comments, does not parse, or manages transactions
    other than with one file-level ``BEGIN; ... COMMIT;``.  Quirks a layout's
    own tool would trip over are not errors: :func:`harness.layouts.layout_findings`
    reports them.
    """
    folder = _check_folder(Path(directory))
    migrations, findings = read_folder(folder, layout, target_major=target_major, substitutions=substitutions)
    for finding in findings:
        # A skipped file belongs to no migration, so no item reports it: say it louder.
        log.log(logging.WARNING if finding.rule == "layout-ignored-file" else logging.INFO, "%s", finding)
    return migrations


def load_plan_migrations(plan: Any, *, target_major: int | None = None) -> list[Migration]:
    """The migrations of a :class:`harness.plan.Plan`: its folder, layout and substitutions."""
    major = target_major if target_major is not None else plan.rehearsal.postgres
    return load_migrations(
        plan.migrations_dir,
        target_major=major,
        layout=getattr(plan, "layout", "auto"),
        substitutions=getattr(plan, "substitutions", ()),
    )


def baseline_index(migrations: Sequence[Migration], baseline: str | None) -> int:
    """Index of the last migration a plan's ``baseline`` covers (``-1`` without a baseline).

    *baseline* names a migration by version or id; every migration that
    sorts at or before it is covered.  Raises :class:`SourceError` when no
    migration has that version or id.
    """
    if baseline is None:
        return -1
    named = [m for m in migrations if baseline in (m.version, m.id)]
    if not named:
        known = ", ".join(m.id for m in migrations[-5:]) or "none"
        raise SourceError(
            f"baseline {baseline!r} names no migration (by version or id); the latest migrations are: {known}. "
            "Set baseline: to the version of the last migration the databases already have"
        )
    order = named[0].order
    return max(i for i, m in enumerate(migrations) if m.order <= order)


def _check_folder(folder: Path) -> Path:
    if not folder.exists():
        raise SourceError(
            f"migrations folder {folder} does not exist; create it, or point the harness at the folder "
            "that holds your migration files"
        )
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder; point the harness at the folder that holds the migration files")
    return folder
