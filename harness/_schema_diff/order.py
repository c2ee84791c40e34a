"""The order of actions: ranks inside a migration, dependency order, questions and enum values moved out.

An action's place is its phase (which migration: see ``actions.py``), its
rank (below), its ``sub`` order within the rank and the order it was made in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .actions import MAIN, TYPES_FIRST, Action, Question

# Ranks: the order of actions inside a migration (drops of dependents first,
# creations in dependency order, drops of what others depended on last).
R_DROP_TRIGGER, R_DROP_POLICY, R_DROP_RULE, R_DROP_VIEW, R_DROP_CONSTRAINT, R_DROP_INDEX = 10, 11, 12, 13, 14, 15
R_SCHEMA, R_EXTENSION, R_TYPE, R_SEQUENCE, R_FUNCTION = 20, 21, 22, 23, 24
R_TABLE, R_ALTER, R_UNOWN, R_DROP_COLUMN, R_DROP_TABLE, R_SEQUENCE_ALTER, R_FUNCTION_LATE = (
    30, 31, 31.5, 32, 33, 34, 35)
R_CONSTRAINT, R_FOREIGN_KEY, R_INDEX = 40, 41, 42
R_VIEW, R_TRIGGER, R_RULE, R_POLICY, R_DECORATE = 50, 55, 56, 60, 70
R_DROP_FUNCTION, R_DROP_SEQUENCE, R_DROP_TYPE, R_DROP_EXTENSION, R_DROP_SCHEMA = 80, 81, 82, 83, 84
# ... and in the migration without a transaction:
# Validations come before SET NOT NULL: when this migration runs in one transaction, no scan then
# happens while an ACCESS EXCLUSIVE lock is held.
O_DROP_INDEX, O_CREATE_INDEX, O_VALIDATE, O_NOT_NULL, O_USING_INDEX, O_LATE_FK, O_LATE_VALIDATE = (
    10, 20, 22, 25, 30, 35, 40)


def toposort(keys: Iterable[str], depends: Mapping[str, frozenset[str]]) -> list[str]:
    """*keys* with what each depends on (among *keys*) first; ties by name."""
    pending = sorted(set(keys))
    chosen: set[str] = set()
    order: list[str] = []
    wanted = set(pending)
    while pending:
        progress = False
        for key in list(pending):
            needs = (depends.get(key, frozenset()) & wanted) - chosen - {key}
            if not needs:
                order.append(key)
                chosen.add(key)
                pending.remove(key)
                progress = True
        if not progress:  # a cycle: keep the rest in name order
            order.extend(pending)
            break
    return order



def group_questions(actions: list[Action], questions: Sequence[Question]) -> list[Action]:
    """Move the actions each question is about (and what builds on them) into it; the rest, returned, stay."""
    for question in questions:
        members = [a for a in actions if a.refs & question.keys]
        covered = set(question.keys)
        for action in members:
            covered |= action.covers
        grew = True
        while grew:
            grew = False
            for action in actions:
                if action not in members and action.refs & covered:
                    members.append(action)
                    covered |= action.covers
                    grew = True
        question.actions = sorted(members, key=Action.sort_key)
        actions = [a for a in actions if a not in members]
    return actions


def place_enum_values(actions: Sequence[Action]) -> None:
    """New enum values used by other statements of the main migration go into a migration before it."""
    for action in actions:
        if not action.enum_values or action.phase != MAIN:
            continue
        others = [s.sql for a in actions if a is not action and a.phase == MAIN for s in a.up]
        if any(value in text for value in action.enum_values for text in others):
            action.phase = TYPES_FIRST
