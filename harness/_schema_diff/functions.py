"""Functions and procedures, views and materialized views, triggers and rules.

Comparators ``functions``, ``views``, ``triggers`` and ``rules``.  Views
are dropped and re-created in dependency order when something they use
changes; triggers and rules go and come back with their relation.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .actions import MAIN, Stmt
from .catalog import Catalog
from .constraints import index_sql, indexes_of
from .diff import DECORATION, Diff
from .names import guard, literal, object_key, owner_of, split_key, strip_semicolon, unquote
from .order import (
    R_DROP_FUNCTION,
    R_DROP_RULE,
    R_DROP_TRIGGER,
    R_DROP_VIEW,
    R_FUNCTION,
    R_FUNCTION_LATE,
    R_RULE,
    R_TRIGGER,
    R_VIEW,
    toposort,
)


def _function_stmts(diff: Diff, cat: Catalog, key: str, *, decorate: bool = True) -> list[Stmt] | None:
    definition = cat.functions.get(key)
    if definition is None:
        return None
    return [Stmt(definition.rstrip(), function=True), *(diff.decorate(cat, key) if decorate else ())]


def _drop_function(key: str) -> Stmt:
    object_type, name = split_key(key)
    return Stmt(f"DROP {object_type.upper()} IF EXISTS {name}")


def functions(diff: Diff) -> None:
    cur, des = diff.cur.keys("function", "procedure"), diff.des.keys("function", "procedure")
    new_relations = {split_key(k)[1] for k in diff.des.keys("table", "view", "materialized_view")} - {
        split_key(k)[1] for k in diff.cur.keys("table", "view", "materialized_view")}

    def rank(key: str) -> float:
        a = diff.des.get(key)
        signature = f"{a.get('arguments')} {a.get('result')}"
        return R_FUNCTION_LATE if any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", signature)
                                       for t in new_relations) else R_FUNCTION

    for key in sorted(des - cur):
        create = _function_stmts(diff, diff.des, key)
        if create is None:
            diff.manual(key, f"a new {diff.des.get(key).get('kind')}: write it by hand (only functions and "
                              "procedures are generated)")
            continue
        diff.add(MAIN, rank(key), create, [_drop_function(key)], covers=[key])
    for key in sorted(cur - des):
        restore = _function_stmts(diff, diff.cur, key)
        if restore is None:
            diff.manual(key, f"a removed {diff.cur.get(key).get('kind')}: drop it by hand")
            continue
        diff.add(MAIN, R_DROP_FUNCTION, [_drop_function(key)], restore, covers=[key])
    for key in sorted(cur & des):
        old, new = diff.cur.get(key), diff.des.get(key)
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(DECORATION)
        if not changed:
            continue
        replace = bool(changed & {"arguments", "result", "kind"})
        create = _function_stmts(diff, diff.des, key, decorate=replace)
        restore = _function_stmts(diff, diff.cur, key, decorate=replace)
        if create is None or restore is None:
            diff.manual(key, f"{', '.join(sorted(changed))} changed: change this {new.get('kind')} by hand")
            continue
        if replace:
            # CREATE OR REPLACE cannot change the result type, argument names or defaults.
            diff.replaced_functions.add(key)
            diff.add(MAIN, rank(key), [_drop_function(key), *create],
                      [_drop_function(key), *restore], covers=[key])
        else:
            diff.add(MAIN, rank(key), create, restore, covers=[key])


def _view_sql(cat: Catalog, key: str) -> str:
    object_type, name = split_key(key)
    a = cat.get(key)
    options = f" WITH ({', '.join(a['options'])})" if a.get("options") else ""
    body = strip_semicolon(str(a["definition"]))
    if object_type == "view":
        return f"CREATE OR REPLACE VIEW {name}{options} AS\n{body}"
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}{options} AS\n{body}\nWITH DATA"


def _drop_view(key: str) -> Stmt:
    object_type, name = split_key(key)
    return Stmt(f"DROP {'VIEW' if object_type == 'view' else 'MATERIALIZED VIEW'} IF EXISTS {name}")


def _view_bundle(diff: Diff, cat: Catalog, key: str, *, dependents: bool) -> tuple[list[Stmt], set[str]]:
    name = split_key(key)[1]
    stmts = [Stmt(_view_sql(cat, key)), *diff.decorate(cat, key)]
    covers = {key}
    for index in indexes_of(cat, name):
        stmts.extend([Stmt(index_sql(cat.get(index)["definition"], concurrently=False)),
                      *diff.decorate(cat, index)])
        covers.add(index)
    if dependents:
        for trigger in cat.sub_objects("trigger", name):
            stmts.extend(trigger_stmts(diff, cat, trigger))
            covers.add(trigger)
        for rule in cat.sub_objects("rule", name):
            stmts.extend(rule_stmts(diff, cat, rule))
            covers.add(rule)
    return stmts, covers


def views(diff: Diff) -> None:
    kinds = ("view", "materialized_view")
    cur, des = diff.cur.keys(*kinds), diff.des.keys(*kinds)
    removed, added = cur - des, des - cur
    used_by: dict[str, set[str]] = {}
    for user, uses in diff.des.depends.items():
        for used in uses:
            used_by.setdefault(used, set()).add(user)
    recreate: set[str] = set()
    replace: set[str] = set()
    for key in cur & des:
        old, new = diff.cur.get(key), diff.des.get(key)
        if (old.get("definition"), old.get("options")) == (new.get("definition"), new.get("options")):
            continue
        if key.startswith("materialized_view "):
            recreate.add(key)
            continue
        was, now = diff.cur.view_columns.get(key, ()), diff.des.view_columns.get(key, ())
        # CREATE OR REPLACE VIEW may only add columns at the end; its undo may only if nothing uses the view.
        if was == now or (now[: len(was)] == was and not used_by.get(key)):
            replace.add(key)
        else:
            recreate.add(key)
    broken = ({object_key("table", t) for t in diff.dropped_tables}
              | {object_key("column", c) for c in diff.dropped_columns | diff.retyped_columns}
              | diff.replaced_functions)
    retyped = {object_key("column", c) for c in diff.retyped_columns}
    # New views that use a retyped column (or such a view) exist when the migration runs a second time
    # and would block the ALTER COLUMN ... TYPE: they are dropped first (a no-op on the first run).
    rerun: set[str] = set()
    while True:
        gone = removed | recreate | broken
        more = {k for k in (cur & des) - recreate
                if diff.cur.depends.get(k, frozenset()) & gone or diff.des.depends.get(k, frozenset()) & retyped}
        more_rerun = {k for k in added - rerun if diff.des.depends.get(k, frozenset()) & (retyped | rerun | recreate)}
        if not more and not more_rerun:
            break
        recreate |= more
        replace -= more
        rerun |= more_rerun
    diff.view_drops = removed | recreate
    diff.view_creates = added | recreate
    both = {k: diff.cur.depends.get(k, frozenset()) | diff.des.depends.get(k, frozenset())
            for k in diff.view_drops | rerun}
    for i, key in enumerate(reversed(toposort(diff.view_drops | rerun, both))):
        if key in rerun:
            diff.add(MAIN, R_DROP_VIEW, [_drop_view(key)], [], covers=[key],
                      refs=diff.des.depends.get(key, ()), sub=i)
            continue
        restore, covers = _view_bundle(diff, diff.cur, key, dependents=True)
        diff.implied |= covers - {key}
        diff.add(MAIN, R_DROP_VIEW, [_drop_view(key)], restore, covers=covers,
                  refs=diff.cur.depends.get(key, ()), sub=i)
    for i, key in enumerate(toposort(added | recreate | replace, diff.des.depends)):
        if key in replace:
            up = [Stmt(_view_sql(diff.des, key))]
            if diff.cur.view_columns.get(key) == diff.des.view_columns.get(key):
                down = [Stmt(_view_sql(diff.cur, key))]
            else:
                down = [_drop_view(key), Stmt(_view_sql(diff.cur, key)), *diff.decorate(diff.cur, key)]
            covers = {key}
        else:
            up, covers = _view_bundle(diff, diff.des, key, dependents=False)
            down = [_drop_view(key)]
        diff.add(MAIN, R_VIEW, up, down, covers=covers, refs=diff.des.depends.get(key, ()), sub=i)


def trigger_stmts(diff: Diff, cat: Catalog, key: str) -> list[Stmt]:
    relation, name = owner_of(split_key(key)[1])
    a = cat.get(key)
    definition = str(a["definition"])
    if definition.startswith("CREATE TRIGGER ") and diff.major >= 14:
        create = Stmt("CREATE OR REPLACE TRIGGER " + definition[len("CREATE TRIGGER "):])
    else:
        create = Stmt(guard(
            f"NOT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = {literal(relation)}::regclass "
            f"AND tgname = {literal(unquote(name))})", definition))
    out = [create]
    out.extend(_enable("TRIGGER", relation, name, a.get("enabled"), skip_origin=True))
    out.extend(diff.decorate(cat, key))
    return out


def _enable(what: str, relation: str, name: str, state: str | None, *, skip_origin: bool = False) -> list[Stmt]:
    verb = {"origin": "ENABLE", "disabled": "DISABLE", "replica": "ENABLE REPLICA", "always": "ENABLE ALWAYS"}
    if state is None or (skip_origin and state == "origin"):
        return []
    return [Stmt(f"ALTER TABLE {relation} {verb.get(state, 'ENABLE')} {what} {name}")]


def rule_stmts(diff: Diff, cat: Catalog, key: str) -> list[Stmt]:
    relation, name = owner_of(split_key(key)[1])
    a = cat.get(key)
    definition = strip_semicolon(str(a["definition"]))
    if definition.startswith("CREATE RULE "):
        definition = "CREATE OR REPLACE RULE " + definition[len("CREATE RULE "):]
    return [Stmt(definition), *_enable("RULE", relation, name, a.get("enabled"), skip_origin=True),
            *diff.decorate(cat, key)]


def _dependent_objects(diff: Diff, object_type: str, create: Callable[[Diff, Catalog, str], list[Stmt]],
                       drop: Callable[[str], Stmt], drop_rank: float, rank: float) -> None:
    """Triggers and rules: dropped with their relation, re-created with it, replaced in place."""
    cur, des = diff.cur.keys(object_type), diff.des.keys(object_type)
    dropped_relations = diff.dropped_tables | {split_key(k)[1] for k in diff.view_drops}
    created_relations = diff.added_tables | {split_key(k)[1] for k in diff.view_creates}
    broken = diff.replaced_functions | {object_key("column", c) for c in diff.dropped_columns | diff.retyped_columns}
    gone: set[str] = set()

    def refs(cat: Catalog, key: str) -> set[str]:
        relation = owner_of(split_key(key)[1])[0]
        return {key, object_key(cat.relation_kind(relation), relation), *cat.depends.get(key, ())}

    def replaceable(key: str) -> bool:
        a, b = str(diff.cur.get(key).get("definition")), str(diff.des.get(key).get("definition"))
        return object_type == "rule" or (diff.major >= 14 and a.startswith("CREATE TRIGGER ")
                                          and b.startswith("CREATE TRIGGER "))

    for key in sorted(cur):
        relation = owner_of(split_key(key)[1])[0]
        if key in diff.implied or relation in dropped_relations:
            continue
        redo = bool(diff.cur.depends.get(key, frozenset()) & broken)
        if key in des and not redo:
            if diff.cur.get(key).get("definition") == diff.des.get(key).get("definition") or replaceable(key):
                continue
        gone.add(key)
        diff.add(MAIN, drop_rank, [drop(key)], create(diff, diff.cur, key), covers=[key], refs=refs(diff.cur, key))
    for key in sorted(des):
        relation, name = owner_of(split_key(key)[1])
        if key in cur and key not in gone and relation not in created_relations:
            old, new = diff.cur.get(key), diff.des.get(key)
            up: list[Stmt] = []
            down: list[Stmt] = []
            if old.get("definition") != new.get("definition"):
                up.append(create(diff, diff.des, key)[0])
                down.append(create(diff, diff.cur, key)[0])
            if old.get("enabled") != new.get("enabled"):
                what = object_type.upper()
                up.extend(_enable(what, relation, name, new.get("enabled")))
                down.extend(_enable(what, relation, name, old.get("enabled")))
            if up:
                diff.add(MAIN, rank, up, down, covers=[key], refs=refs(diff.des, key))
            continue
        diff.add(MAIN, rank, create(diff, diff.des, key), [drop(key)], covers=[key], refs=refs(diff.des, key))


def triggers(diff: Diff) -> None:
    def drop(key: str) -> Stmt:
        relation, name = owner_of(split_key(key)[1])
        return Stmt(f"DROP TRIGGER IF EXISTS {name} ON {relation}")

    _dependent_objects(diff, "trigger", trigger_stmts, drop, R_DROP_TRIGGER, R_TRIGGER)


def rules(diff: Diff) -> None:
    def drop(key: str) -> Stmt:
        relation, name = owner_of(split_key(key)[1])
        return Stmt(f"DROP RULE IF EXISTS {name} ON {relation}")

    _dependent_objects(diff, "rule", rule_stmts, drop, R_DROP_RULE, R_RULE)
