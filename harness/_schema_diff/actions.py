"""What the generator produces: statements, actions (a change and its undo), notices, questions, the draft.

An action holds the up statements of one change, the down statements that
undo exactly them, the migration (phase) it belongs to and its rank in the
dependency order (see ``order.py``); questions (probable renames) and
hand-written items are collected beside them in a :class:`Draft`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Phases: each non-empty one becomes a migration, in this order.
TYPES_FIRST = 0  # enum values a later statement of the same change uses (a new value is usable after commit)
MAIN = 1  # everything that can run in one transaction
ONLINE = 2  # CONCURRENTLY index builds, validations: no transaction, after the main one
PHASE_SUFFIX = {TYPES_FIRST: "_enum_values", MAIN: "", ONLINE: "_concurrently"}
VALIDATE_SUFFIX = "_validate"  # the second migration when it builds no index (it then runs in a transaction)



@dataclass
class Stmt:
    """One statement of a generated file, with the comments written above it."""

    sql: str
    flag: str | None = None  # "DESTRUCTIVE" | "REVIEW" | "TODO": written as "-- FLAG: note" and reported
    note: str = ""
    allow: str | None = None  # "rule-id reason": a harness:allow comment (the generator proved it safe)
    function: bool = False  # creates a function (the file then turns check_function_bodies off)
    subject: str = ""  # the object a flagged statement is about, for the report

    def text(self) -> str:
        body = self.sql.rstrip()
        return body if body.endswith(";") else body + ";"


@dataclass
class Action:
    """One change: what does it, what undoes it, where it goes."""

    phase: int
    rank: float
    up: list[Stmt]
    down: list[Stmt]
    refs: frozenset[str] = frozenset()  # keys of the objects it creates, changes, drops or uses
    covers: frozenset[str] = frozenset()  # keys it brings to the desired state
    sub: float = 0.0  # order within the rank
    seq: int = 0
    enum_values: tuple[str, ...] = ()  # literals of enum values it adds (see TYPES_FIRST)

    def sort_key(self) -> tuple[int, float, float, int]:
        return (self.phase, self.rank, self.sub, self.seq)


@dataclass(frozen=True)
class Notice:
    """Something about a generated migration a human must look at."""

    kind: str  # "destructive" | "review" | "todo" | "question" | "manual" | "note"
    object: str
    message: str
    where: str = ""  # file:line of the statement, when there is one

    def describe(self) -> str:
        """One line for the report."""
        where = f" ({self.where})" if self.where else ""
        return f"{self.kind.upper():<11} {self.object}: {self.message}{where}"


@dataclass
class Question:
    """A probable rename: the drop and add it would replace are written commented out."""

    message: str
    rename_up: list[str]
    rename_down: list[str]
    keys: frozenset[str]
    actions: list[Action] = field(default_factory=list)
    object: str = ""

    @property
    def covers(self) -> frozenset[str]:
        found = set(self.keys)
        for action in self.actions:
            found |= action.covers
        return frozenset(found)


@dataclass
class Draft:
    """Everything one comparison produced: the actions in order, the questions and notices beside them."""

    actions: list[Action]
    questions: list[Question]
    notices: list[Notice]
    manual_covers: set[str]

    @property
    def empty(self) -> bool:
        return not self.actions and not self.questions

    def phases(self) -> list[int]:
        """The phases that get a migration: those with statements to run (the main one when only questions)."""
        return sorted({a.phase for a in self.actions} or {MAIN})

    @property
    def open_keys(self) -> set[str]:
        """Keys the migrations leave for a human (questions, manual items): differences there are expected."""
        keys = set(self.manual_covers)
        for question in self.questions:
            keys |= question.covers
        return keys
