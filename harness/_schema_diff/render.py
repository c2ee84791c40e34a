"""A draft's actions → the up and down files of one migration (one phase), with their comments.

The up file runs the phase's actions in order; the down file runs their undo
statements in reverse order, so each migration's down restores the state
its up found.  Flagged statements (DESTRUCTIVE, REVIEW, TODO) are written
under their comment and reported as notices; a question's statements are
written commented out beside the rename that would keep the data.
"""

from __future__ import annotations

import datetime as _dt
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..execute import relpath
from .actions import ONLINE, Draft, Notice, Stmt
from .names import do_block, literal


@dataclass(frozen=True)
class GeneratedMigration:
    """One migration ``generate`` wrote."""

    version: str
    name: str
    up: Path
    down: Path
    up_sql: str
    down_sql: str
    transactional: bool
    statements: int

    @property
    def id(self) -> str:
        """``<version>_<name>``."""
        return f"{self.version}_{self.name}"


@dataclass
class Rendered:
    """One rendered migration and what its up file holds for a human."""

    migration: GeneratedMigration
    notices: list[Notice]
    flagged: list[tuple[int, int]]  # line ranges of statements marked DESTRUCTIVE, REVIEW or TODO
    runnable: bool = True  # False: only a placeholder waiting for the answer to a question


def _comment_lines(prefix: str, text: str, width: int = 100) -> list[str]:
    lines = textwrap.wrap(text, width=width - len(prefix), break_long_words=False, break_on_hyphens=False) or [""]
    return [f"{prefix}{lines[0]}"] + [f"--     {line}" for line in lines[1:]]


class _Writer:
    """Lines of one file, remembering where flagged statements are."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.lines: list[str] = []
        self.notices: list[Notice] = []
        self.flagged: list[tuple[int, int]] = []
        self.active = 0

    def comment(self, *texts: str) -> None:
        for text in texts:
            self.lines.extend(_comment_lines("-- ", text) if text else ["--"])

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def statement(self, stmt: Stmt) -> None:
        if stmt.flag:
            self.lines.extend(_comment_lines(f"-- {stmt.flag}: ", stmt.note))
        elif stmt.note:
            self.lines.extend(_comment_lines("-- ", stmt.note))
        if stmt.allow:
            self.lines.append(f"-- harness:allow {stmt.allow}")
        start = len(self.lines) + 1
        self.lines.extend(stmt.text().splitlines())
        self.active += 1
        if stmt.flag:
            self.flagged.append((start, len(self.lines)))
            self.notices.append(Notice(stmt.flag.lower(), stmt.subject or "-", stmt.note, f"{self.display}:{start}"))

    def commented(self, stmt: Stmt) -> None:
        if stmt.flag:
            self.lines.extend(_comment_lines(f"-- {stmt.flag}: ", stmt.note))
        self.lines.extend("-- " + line if line else "--" for line in stmt.text().splitlines())

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def render(
    draft: Draft,
    phase: int,
    version: str,
    name: str,
    up_path: Path,
    down_path: Path,
    *,
    command: str,
    schema: str,
    created: _dt.datetime,
    previous: str | None,
    phases: Sequence[int],
) -> Rendered:
    """The files of the draft's actions in *phase*, as migration ``<version>_<name>``."""
    migration_id = f"{version}_{name}"
    stamp = created.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    actions = [a for a in draft.actions if a.phase == phase]
    # A question's statements go with their phase; those of a phase without a migration go to the first one.
    homeless = phase == phases[0]
    questions = [(q, [a for a in q.actions if a.phase == phase or (homeless and a.phase not in phases)])
                 for q in draft.questions]
    questions = [(q, acts) for q, acts in questions if acts]
    concurrent = any(re.search(r"\bCONCURRENTLY\b", s.sql) for a in actions for s in a.up)
    after = f", after {previous}" if previous else ""
    how = ("Runs without a transaction, one statement at a time (CONCURRENTLY cannot run in one)" + after + "."
           if concurrent else "Runs in one transaction" + after + ".")

    up = _Writer(relpath(up_path))
    up.comment(f"{migration_id} ({command}, {stamp})",
               f"Turns the migrated schema into the desired schema {schema}. {how}",
               "Review it before committing: DESTRUCTIVE, REVIEW, TODO and QUESTION comments need a human.")
    if any(s.function for a in actions for s in a.up) and not concurrent:
        up.blank()
        up.comment("Function bodies may use objects created further down.")
        up.statement(Stmt("SET LOCAL check_function_bodies = off"))
        up.active -= 1
    for action in actions:
        up.blank()
        for stmt in action.up:
            up.statement(stmt)
    # A question's rename is written in the first phase that touches it (once, in up and down).
    firsts = [
        phase == min(p for p in phases if any(a.phase == p or a.phase not in phases for a in question.actions))
        for question, _acts in questions
    ]
    for (question, acts), first in zip(questions, firsts):
        up.blank()
        up.comment(f"QUESTION: rename? {question.message}.")
        if first:
            up.comment("If it is a rename, this keeps the data (uncomment it):")
            up.lines.extend(f"--     {line}" for line in question.rename_up)
        up.comment("If it is not, uncomment these statements instead (they drop the old one and its data):")
        for action in acts:
            if action.phase == ONLINE and phase != ONLINE:
                up.comment("(the next statements need a migration without a transaction)")
            for stmt in action.up:
                up.commented(stmt)
    waiting = None
    if not up.active:
        waiting = Stmt(do_block(f"RAISE EXCEPTION {literal(f'{migration_id} waits for the answer to its QUESTION: edit it first')};"),
                        note="Nothing to run until the QUESTION above is answered; remove this block then.")
        up.blank()
        up.statement(waiting)

    down = _Writer(relpath(down_path))
    down.comment(f"{migration_id}.down ({command}, {stamp})",
                 f"Undoes {migration_id}; the rehearsal checks that up -> down -> up restores the schema.")
    if any(s.function for a in actions for s in a.down) and not concurrent:
        down.blank()
        down.comment("Function bodies may use objects re-created further down.")
        down.statement(Stmt("SET LOCAL check_function_bodies = off"))
        down.active -= 1
    for action in reversed(actions):
        down.blank()
        for stmt in action.down:
            down.statement(stmt)
    for (question, acts), first in zip(questions, firsts):
        down.blank()
        down.comment(f"QUESTION: rename? {question.message} (see the up migration).")
        if first:
            down.comment("If the up migration renames, this undoes it (uncomment it):")
            down.lines.extend(f"--     {line}" for line in question.rename_down)
        down.comment("If it drops and adds instead, uncomment these statements:")
        for action in reversed(acts):
            for stmt in action.down:
                down.commented(stmt)
    if not down.active:
        down.blank()
        down.statement(waiting or Stmt(do_block(f"RAISE EXCEPTION {literal(f'{migration_id} cannot be undone')};")))
    statements = sum(len(a.up) for a in actions)
    migration = GeneratedMigration(version, name, up_path, down_path, up.text(), down.text(), not concurrent, statements)
    return Rendered(migration, up.notices, up.flagged, waiting is None)
