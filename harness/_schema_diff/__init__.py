"""Two catalogs → ordered, reversible SQL actions: the core of ``harness generate``.

:func:`read_catalog` (``catalog.py``) reads what a snapshot lacks (function
definitions, view columns and dependencies, the columns each index and
constraint uses) from a database it is handed; :func:`compare_catalogs`
turns the difference between the current catalog and the desired one into
:class:`Action` objects (``actions.py``).  An action holds the up statements
of one change, the down statements that undo exactly them, the migration
(phase) it belongs to and its rank in the dependency order (``order.py``);
questions (probable renames) and hand-written items are collected beside
them.  ``render.py`` writes a draft's actions as migration files.  The safe
patterns are described in ``harness/generate.py`` and docs/authoring.md.
Nothing here starts a server or writes a file.

As alembic's ``autogenerate/compare/``, the comparison is split by object
kind: :data:`COMPARATORS` maps each kind to the function that compares it
(``tables.py``, ``constraints.py``, ``types.py``, ``schemas.py``,
``functions.py``, ``security.py``), in the order they run.  A new kind of
object gets a function ``def <kind>(diff: Diff) -> None`` in the module of
its group and an entry here.
"""

from __future__ import annotations

from . import constraints, functions, schemas, security, tables, types
from .actions import MAIN, ONLINE, PHASE_SUFFIX, TYPES_FIRST, VALIDATE_SUFFIX, Action, Draft, Notice, Question, Stmt
from .catalog import Catalog, read_catalog
from .diff import Comparator, Diff
from .names import do_block, literal, object_key, split_key
from .order import group_questions, place_enum_values
from .render import GeneratedMigration, Rendered, render

__all__ = [
    "TYPES_FIRST",
    "MAIN",
    "ONLINE",
    "PHASE_SUFFIX",
    "VALIDATE_SUFFIX",
    "Catalog",
    "read_catalog",
    "Stmt",
    "Action",
    "Notice",
    "Question",
    "Draft",
    "COMPARATORS",
    "compare_catalogs",
    "GeneratedMigration",
    "Rendered",
    "render",
    "do_block",
    "literal",
    "object_key",
    "split_key",
]

#: The comparator of each kind of object, in the order they run.
COMPARATORS: dict[str, Comparator] = {
    "rename": tables.renames,  # probable renames become questions; their actions move into them at the end
    "schema": schemas.schemas,
    "extension": schemas.extensions,
    "type": types.types,
    "function": functions.functions,
    "table": tables.tables,
    "column": tables.columns,
    "sequence": schemas.sequences,  # after tables and columns: a sequence they own goes with them
    "constraint": constraints.constraints,
    "view": functions.views,  # after tables, columns and functions: what a view uses may change under it
    "index": constraints.indexes,  # after views: an index of a re-created materialized view comes with it
    "trigger": functions.triggers,
    "rule": functions.rules,
    "policy": security.policies,
    "decoration": security.decorations,  # last: objects (re)created above got their privileges and comment there
}


def compare_catalogs(current: Catalog, desired: Catalog) -> Draft:
    """The actions that turn *current* into *desired*, in order, with the questions and notices beside them."""
    diff = Diff(current, desired)
    for compare in COMPARATORS.values():
        compare(diff)
    actions = group_questions(diff.actions, diff.questions)
    place_enum_values(actions)
    return Draft(sorted(actions, key=Action.sort_key), diff.questions, diff.notices, diff.manual_covers)
