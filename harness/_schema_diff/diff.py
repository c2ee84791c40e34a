"""The state one comparison shares between its comparators, and the helpers that add actions to it.

A comparator (``tables.py``, ``constraints.py``, ...) is a function of a
:class:`Diff`: it reads ``diff.cur`` and ``diff.des``, adds actions, notices
and questions, and records what later comparators need to know (tables
added or dropped, columns retyped, views re-created, keys dropped with their
owner).  ``__init__.py`` runs the comparators in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .actions import Action, Notice, Question, Stmt
from .catalog import Catalog
from .grants import acl_statements, comment_sql
from .names import owner_of

#: Attributes every object may have that ``security.decorations`` compares (not the object's own comparator).
DECORATION = ("acl", "comment")


class Diff:
    """The current catalog, the desired one, and what the comparators found so far."""

    def __init__(self, cur: Catalog, des: Catalog) -> None:
        self.cur, self.des = cur, des
        self.major = des.major or cur.major
        self.actions: list[Action] = []
        self.questions: list[Question] = []
        self.notices: list[Notice] = []
        self.manual_covers: set[str] = set()
        self.fresh: set[str] = set()  # keys (re)created here together with their desired acl and comment
        self.implied: set[str] = set()  # keys whose drop happens implicitly (their table or column goes)
        self._seq = 0
        self.cur_tables = cur.names("table")
        self.des_tables = des.names("table")
        self.dropped_tables = self.cur_tables - self.des_tables
        self.added_tables = self.des_tables - self.cur_tables
        self.kept_tables = self.cur_tables & self.des_tables
        cur_columns, des_columns = cur.names("column"), des.names("column")
        self.dropped_columns = {c for c in cur_columns - des_columns if owner_of(c)[0] in self.kept_tables}
        self.added_columns = {c for c in des_columns - cur_columns if owner_of(c)[0] in self.kept_tables}
        self.retyped_columns: set[str] = set()
        self.replaced_functions: set[str] = set()
        self.view_drops: set[str] = set()
        self.view_creates: set[str] = set()
        self.online_unique_keys: set[frozenset[str]] = set()  # columns of unique/pk keys added online

    def add(
        self,
        phase: int,
        rank: float,
        up: Sequence[Stmt],
        down: Sequence[Stmt],
        *,
        covers: Iterable[str] = (),
        refs: Iterable[str] = (),
        sub: float = 0.0,
        enum_values: Sequence[str] = (),
    ) -> Action:
        """Record one change: *up* does it, *down* undoes exactly it, *covers* are the keys it settles."""
        self._seq += 1
        covered = frozenset(covers)
        action = Action(phase, rank, list(up), list(down), frozenset(refs) | covered, covered, sub, self._seq,
                        tuple(enum_values))
        self.actions.append(action)
        return action

    def manual(self, key: str, message: str) -> None:
        """Leave *key* to a hand-written migration, saying why."""
        self.notices.append(Notice("manual", key, message))
        self.manual_covers.add(key)

    def acl(self, key: str, before: Sequence[str] | None, after: Sequence[str] | None,
            attrs: Mapping[str, Any] | None = None) -> list[Stmt]:
        """GRANT/REVOKE statements that turn the *before* privileges into *after* (None: the defaults)."""
        return acl_statements(self.des.default_acl, key, before, after, attrs)

    def decorate(self, cat: Catalog, key: str) -> list[Stmt]:
        """Privileges and comment of an object just created from *cat*."""
        attrs = cat.get(key)
        out = self.acl(key, None, attrs.get("acl"), attrs) if "acl" in attrs else []
        if attrs.get("comment") is not None:
            out.append(comment_sql(key, attrs["comment"], attrs))
        if cat is self.des:
            self.fresh.add(key)
        return out


#: A comparator: adds the actions for one kind of object (see ``__init__.COMPARATORS``).
Comparator = Callable[[Diff], None]
