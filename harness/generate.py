"""Declarative schema → migrations: diff the desired schema against the migrations and write safe SQL.

The plan's ``schema:`` (a SQL file, or a directory of ``.sql`` files read in
name order) describes the schema the database should have.  ``generate``
loads it into one scratch database, applies the plan's migrations to a
rehearsal database, diffs the two catalog snapshots and writes the up
migration that turns the migrated schema into the desired one and the down
migration that turns it back.  Then it proves them: the new migrations are
rehearsed (lint, apply, idempotent, rollback) and the migrated schema must
equal the desired one.

The SQL is safe by construction: indexes on existing tables are built
``CONCURRENTLY`` in a second migration that runs without a transaction;
constraints on existing tables are added ``NOT VALID`` and validated in that
second migration; a new ``NOT NULL`` column without a default gets the
``CHECK (c IS NOT NULL) NOT VALID`` / ``VALIDATE`` / ``SET NOT NULL``
pattern and a ``-- TODO`` to backfill it.  What loses data (drops, narrowing
type changes) is written but marked ``-- DESTRUCTIVE:``; what rewrites or
locks a table is marked ``-- REVIEW:``; a column (or table) dropped while
one of the same type (or with the same columns) is added is a probable
rename: the drop and add are written commented out under ``-- QUESTION:
rename?`` with the ``RENAME`` that keeps the data.  Statements are
idempotent where PostgreSQL allows (``IF NOT EXISTS``, ``IF EXISTS``, ``OR
REPLACE``, guarding ``DO`` blocks).

Every change becomes an *action*: its up statements, the down statements
that undo exactly them, the migration (phase) it belongs to and its place in
the dependency order.  A down migration is its actions' undo statements in
reverse order, so each migration's down restores the state its up found.

Layers: this module reads catalogs through connections it is handed and
never starts a server; the CLI (``harness generate``, ``harness
check-schema``) starts one.  See docs/authoring.md.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from . import lint as lint_mod
from ._schema_diff import (
    MAIN,
    ONLINE,
    PHASE_SUFFIX,
    VALIDATE_SUFFIX,
    Catalog,
    Draft,
    GeneratedMigration,
    Notice,
    Rendered,
    compare_catalogs,
    object_key,
    read_catalog,
    render,
)
from .authoring import check_name, layout_for, plan_versions, write_new_files
from .desired_schema import (
    compare_snapshots,
    desired_database,
    desired_snapshot,
    schema_display,
    schema_files,
    schema_matches,
)
from .errors import EXIT_FAILED, EXIT_OK, HarnessError
from .execute import relpath
from .plan import Plan
from .postgres import Server
from .redact import scrub
from .rehearsal import FAILED, Rehearsal
from .snapshot import Change, Snapshot, format_changes, take_snapshot

__all__ = [
    "Notice",
    "GeneratedMigration",
    "GenerateResult",
    "SchemaComparison",
    "schema_files",
    "desired_snapshot",
    "compare_snapshots",
    "check_schema",
    "schema_matches",
    "generate",
]

log = logging.getLogger(__name__)

#: The rehearsal assertions ``generate`` runs on the migrations it wrote.
PROOF_ASSERTIONS = ("lint", "apply", "idempotent", "rollback")


# --------------------------------------------------------------------------
# Desired schema, comparison


def _desired_catalog(plan: Plan, server: Server) -> Catalog:
    with desired_database(plan, server) as conn:
        return read_catalog(conn, take_snapshot(conn))


def _current_catalog(plan: Plan, server: Server) -> tuple[Catalog, int]:
    """The schema the plan's migrations produce, and how many migrations there are."""
    with Rehearsal(plan, server, measure=False) as rehearsal:
        snapshot = rehearsal.schema_after(len(rehearsal.migrations) - 1)
        return read_catalog(rehearsal.conn, snapshot), len(rehearsal.migrations)


@dataclass(frozen=True)
class SchemaComparison:
    """What ``check-schema`` found: the differences from the migrated schema to the desired one."""

    changes: tuple[Change, ...]
    notes: tuple[str, ...]
    schema: str
    migrations: int

    @property
    def ok(self) -> bool:
        """True when the migrations produce exactly the desired schema."""
        return not self.changes

    def format(self) -> str:
        """A readable report."""
        if self.ok:
            lines = [f"the {self.migrations} migrations produce the desired schema {self.schema}: 0 differences"]
        else:
            count = len(self.changes)
            lines = [
                f"the {self.migrations} migrations and the desired schema {self.schema} disagree: {count} "
                f"difference{'s' if count != 1 else ''} (+ only in the desired schema, - only in the migrations, "
                "~ migrations -> desired):",
                format_changes(self.changes, limit=0),
                "Write a migration for them with `harness generate NAME`, or fix the desired schema.",
            ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_schema(plan: Plan, server: Server) -> SchemaComparison:
    """Compare the schema the plan's migrations produce with its desired schema."""
    desired = desired_snapshot(plan, server)
    current, count = _current_catalog(plan, server)
    changes, notes = compare_snapshots(current.snapshot, desired)
    return SchemaComparison(tuple(changes), tuple(notes), schema_display(plan), count)


# --------------------------------------------------------------------------
# generate: write, then prove


_NOTICE_ORDER = {"destructive": 0, "review": 1, "todo": 2, "question": 3, "manual": 4, "note": 5}
_MARKS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "review": "REVIEW"}


@dataclass
class GenerateResult:
    """What ``generate`` wrote and what its proof found."""

    migrations: list[GeneratedMigration] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    items: list[tuple[str, str, str]] = field(default_factory=list)  # (item id, status, message)
    differences: list[Change] = field(default_factory=list)  # unexplained: the proof failed
    open_differences: list[Change] = field(default_factory=list)  # left for the QUESTION / MANUAL items
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the proof could not run to the end
    discarded: bool = False
    waiting: bool = False  # only questions: nothing runs (or can be proved) until they are answered

    @property
    def nothing_to_do(self) -> bool:
        """The migrations already produce the desired schema."""
        return not self.migrations and not self.notices

    @property
    def proved(self) -> bool:
        """Every rehearsed item passed and no unexplained difference remains."""
        return (self.error is None and not self.waiting and not self.differences
                and all(s != "failed" for _, s, _ in self.items))

    @property
    def open_items(self) -> list[Notice]:
        """Questions and manual items: the migrations need a human before they produce the desired schema."""
        return [n for n in self.notices if n.kind in ("question", "manual")]

    @property
    def exit_code(self) -> int:
        """0 when proved and complete (or nothing to do), else 1."""
        if self.nothing_to_do:
            return EXIT_OK
        return EXIT_OK if self.proved and not self.open_items and not self.open_differences else EXIT_FAILED

    def format(self) -> str:
        """The report ``harness generate`` prints."""
        if self.nothing_to_do:
            return "the migrations already produce the desired schema: nothing to generate"
        lines: list[str] = []
        if not self.migrations:
            lines.append("nothing written: every difference needs a hand-written migration")
        for m in self.migrations:
            mode = "one transaction" if m.transactional else "no transaction"
            verb = "removed" if self.discarded else "wrote"
            count = f"{m.statements} statement{'s' if m.statements != 1 else ''}"
            lines.append(f"{verb} {relpath(m.up)} and its .down.sql ({count}, {mode})")
        if self.notices:
            lines.append("")
            lines.append("needs a human:")
            for notice in sorted(self.notices, key=_notice_order):
                lines.append("  " + notice.describe())
        if self.items:
            lines.append("")
            lines.append("proof (the new migrations rehearsed on top of the existing ones):")
            for item_id, status, message in self.items:
                lines.append(f"  {_MARKS.get(status, status.upper())} {item_id}")
                if status in ("failed", "review") or (status == "skipped" and message):
                    lines.extend(f"       {text}" for text in message.splitlines())
        if self.waiting:
            lines.append("nothing to prove yet: the migration waits for the answers to its QUESTIONs")
        elif self.error:
            lines.append(f"the proof could not finish: {self.error}")
        elif self.differences:
            differences = len(self.differences)
            lines.append(
                f"NOT PROVED: the migrations do not produce the desired schema: {differences} difference"
                f"{'s' if differences != 1 else ''} (+ only in the desired schema, - only in the migrations, "
                "~ migrations -> desired):"
            )
            lines.append(format_changes(self.differences, limit=0))
        elif self.items:
            remaining = len(self.open_differences)
            if remaining:
                lines.append(
                    f"migrations now produce the desired schema except for {remaining} difference"
                    f"{'s' if remaining != 1 else ''} left to the QUESTION and MANUAL items above: answer them, then "
                    "run `harness check-schema`"
                )
            else:
                lines.append("migrations now produce the desired schema: 0 differences")
        lines.extend(f"note: {n}" for n in self.notes)
        if not self.proved and not self.waiting:
            lines.append("removed the generated files (--discard-on-failure)" if self.discarded
                         else "kept the generated files for you to fix (--discard-on-failure removes them)")
        return "\n".join(lines)


def _notice_order(notice: Notice) -> tuple[int, str, int, str]:
    path, _, line = notice.where.rpartition(":")
    if not line.isdigit():
        path, line = notice.where, "0"
    return (_NOTICE_ORDER.get(notice.kind, 9), path, int(line), notice.object)


def generate(
    plan: Plan,
    server: Server,
    name: str,
    *,
    now: _dt.datetime | None = None,
    discard_on_failure: bool = False,
    prove: bool = True,
) -> GenerateResult:
    """Write the migration(s) that turn the migrated schema into the plan's desired one, then prove them.

    Files go into the plan's migrations directory, named by its layout: the
    main migration ``<version>_<name>`` and, when needed, one without a
    transaction ``<version+1>_<name>_concurrently`` (concurrent index builds,
    validations).  The proof rehearses only the new migrations' lint, apply,
    idempotent and rollback items (their predecessors are applied first) and
    compares the result with the desired schema.
    """
    check_name(name)
    layout = layout_for(plan.layout, plan.migrations_dir)
    # Refuse before any schema work: file_names raises for layouts generate cannot write yet.
    layout.file_names("0", name)
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    desired = _desired_catalog(plan, server)
    current, _count = _current_catalog(plan, server)
    draft = compare_catalogs(current, desired)
    result = GenerateResult()
    if draft.empty:
        result.notices = list(draft.notices)
        return result
    phases = draft.phases()
    versions = plan_versions(plan.migrations_dir, layout, len(phases), now=moment)
    rendered: list[Rendered] = []
    previous: str | None = None
    for phase, version in zip(phases, versions):
        suffix = PHASE_SUFFIX[phase] if len(phases) > 1 else ""
        if phase == ONLINE and not any(re.search(r"\bCONCURRENTLY\b", s.sql)
                                        for a in draft.actions if a.phase == ONLINE for s in a.up):
            suffix = VALIDATE_SUFFIX if len(phases) > 1 else ""
        file_name = name + suffix
        up_name, down_name = layout.file_names(version, file_name)
        item = render(
            draft, phase, version, file_name, plan.migrations_dir / up_name, plan.migrations_dir / down_name,
            command=f"harness generate {name}", schema=schema_display(plan), created=moment, previous=previous,
            phases=phases,
        )
        previous = item.migration.id
        rendered.append(item)
    write_new_files([(f, text) for r in rendered
                     for f, text in ((r.migration.up, r.migration.up_sql), (r.migration.down, r.migration.down_sql))])
    result.migrations = [r.migration for r in rendered]
    result.notices = [n for r in rendered for n in r.notices] + list(draft.notices)
    by_phase = dict(zip(phases, rendered))
    for question in draft.questions:
        first = by_phase.get(min((a.phase for a in question.actions), default=MAIN))
        result.notices.append(Notice("question", question.object,
                                     f"rename? {question.message}: the drop and add are commented out next to a "
                                     "suggested RENAME; choose one", relpath(first.migration.up) if first else ""))
    log.info("generated %s", ", ".join(m.id for m in result.migrations))
    result.waiting = not any(r.runnable for r in rendered)
    if prove and not result.waiting:
        _prove(plan, server, rendered, desired.snapshot, draft, result)
    if not result.proved and discard_on_failure and not result.waiting:
        for migration in result.migrations:
            migration.up.unlink(missing_ok=True)
            migration.down.unlink(missing_ok=True)
        result.discarded = True
    return result


def _prove(
    plan: Plan, server: Server, rendered: list[Rendered], desired: Snapshot, draft: Draft, result: GenerateResult
) -> None:
    """Rehearse the new migrations and compare the outcome with the desired schema."""
    flagged = {r.migration.id: r.flagged for r in rendered}
    final: Snapshot | None = None
    try:
        with Rehearsal(plan, server) as rehearsal:
            known = {m.id for m in rehearsal.migrations}
            missing = [m for m in flagged if m not in known]
            if missing:
                raise HarnessError(f"the rehearsal does not see {', '.join(missing)} among the plan's migrations")
            items = [i for i in rehearsal.items()
                     if not getattr(i, "plan_level", False) and i.migration.id in flagged
                     and i.assertion in PROOF_ASSERTIONS]
            for item in items:
                outcome = rehearsal.run(item)
                status, message = outcome.status, outcome.message
                if item.assertion == "lint" and status == FAILED:
                    status, message = _review_lint(rehearsal, item, flagged[item.migration.id], message)
                result.items.append((item.id, status, message))
            final = rehearsal.schema_after(len(rehearsal.migrations) - 1)
    except HarnessError as exc:
        result.error = scrub(str(exc))
        return
    changes, notes = compare_snapshots(final, desired)
    open_keys = draft.open_keys
    result.open_differences = [c for c in changes if object_key(c.object_type, c.object) in open_keys]
    result.differences = [c for c in changes if object_key(c.object_type, c.object) not in open_keys]
    result.notes = notes


def _review_lint(rehearsal: Any, item: Any, flagged: list[tuple[int, int]], message: str) -> tuple[str, str]:
    """A failed lint item: only findings on statements the generator marked for review are acceptable."""
    migration = item.migration
    cfg = rehearsal.configs[migration.id]
    before = rehearsal.snapshot_at(item.index - 1)
    findings = lint_mod.lint_sql(
        migration.sql,
        relpath(migration.path),
        existing_tables=set(before.tables()) if before is not None else None,
        allow=cfg.allow,
        allow_reason=cfg.reason,
        in_transaction=migration.transactional,
    )
    errors = [f for f in findings if f.severity == "error" and not f.allowed]
    unexpected = [f for f in errors if not any(start <= f.line <= end for start, end in flagged)]
    if unexpected or not errors:
        return "failed", message
    shown = "\n".join(f"{f.path}:{f.line}: {f.rule}: {f.message}" for f in errors)
    return "review", (
        f"{len(errors)} lint error{'s' if len(errors) != 1 else ''} on statements marked DESTRUCTIVE or REVIEW, as "
        "expected; once reviewed, acknowledge each with a `-- harness:allow RULE reason` comment above it (or the "
        "plan step's allow), or `harness rehearse` fails:\n" + shown
    )
