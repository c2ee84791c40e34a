"""Constraints and indexes: added without long locks on existing tables (NOT VALID, CONCURRENTLY).

Comparators ``constraints`` and ``indexes``; the SQL of one constraint or
index, used wherever a table or view is (re-)created.
"""

from __future__ import annotations

import re

from .actions import MAIN, ONLINE, Stmt
from .catalog import Catalog
from .diff import Diff
from .names import guard, local_name, no_constraint, object_key, owner_of, split_key
from .order import (
    O_CREATE_INDEX,
    O_DROP_INDEX,
    O_LATE_FK,
    O_LATE_VALIDATE,
    O_USING_INDEX,
    O_VALIDATE,
    R_CONSTRAINT,
    R_DROP_CONSTRAINT,
    R_DROP_INDEX,
    R_FOREIGN_KEY,
    R_INDEX,
)

def index_sql(definition: str, *, concurrently: bool) -> str:
    """pg_get_indexdef text made re-runnable (and concurrent when asked)."""
    extra = "CONCURRENTLY IF NOT EXISTS " if concurrently else "IF NOT EXISTS "
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", lambda m: f"CREATE {m.group(1) or ''}INDEX {extra}", definition, count=1)


def deferrable(definition: str) -> str:
    match = re.search(r"\s(DEFERRABLE(?: INITIALLY DEFERRED)?)$", definition)
    return f" {match.group(1)}" if match else ""


def constraints_of(cat: Catalog, table: str) -> list[str]:
    order = {"primary key": 0, "unique": 1, "exclusion": 2, "check": 3, "foreign key": 4}
    return sorted(cat.sub_objects("constraint", table),
                  key=lambda k: (order.get(str(cat.get(k).get("type")), 5), k))


def indexes_of(cat: Catalog, relation: str) -> list[str]:
    backing = cat.backing_indexes()
    return sorted(k for k, a in cat.objects.items()
                  if k.startswith("index ") and a.get("table") == relation and split_key(k)[1] not in backing)


def _constraint_refs(cat: Catalog, key: str) -> set[str]:
    table = owner_of(split_key(key)[1])[0]
    refs = {key, object_key("table", table), *cat.columns_of.get(key, ())}
    if key in cat.references:
        refs.add(object_key("table", cat.references[key]))
    return refs


def add_constraint(cat: Catalog, key: str, *, not_valid: bool | None = None,
                    using_index: str | None = None) -> Stmt:
    table, name = owner_of(split_key(key)[1])
    a = cat.get(key)
    if using_index:
        kind = "PRIMARY KEY" if a["type"] == "primary key" else "UNIQUE"
        clause = f"{kind} USING INDEX {using_index}{deferrable(a['definition'])}"
    else:
        clause = str(a["definition"])
        skip = (not a.get("validated", True)) if not_valid is None else not_valid
        if skip and a.get("type") in ("check", "foreign key"):
            clause += " NOT VALID"
    return Stmt(guard(no_constraint(table, name), f"ALTER TABLE {table} ADD CONSTRAINT {name} {clause}"))


def constraints(diff: Diff) -> None:
    cur = {k for k in diff.cur.keys("constraint") if diff.cur.get(k).get("type") != "trigger"}
    des = {k for k in diff.des.keys("constraint") if diff.des.get(k).get("type") != "trigger"}

    def same(key: str) -> bool:
        a, b = diff.cur.get(key), diff.des.get(key)
        return key in cur and key in des and (a.get("type"), a.get("definition")) == (b.get("type"), b.get("definition"))

    for key in des:
        table = owner_of(split_key(key)[1])[0]
        if (table in diff.kept_tables and not same(key) and key in diff.des.constraint_index
                and diff.des.get(key).get("type") in ("primary key", "unique")):
            diff.online_unique_keys.add(frozenset(diff.des.columns_of.get(key, frozenset())))
    for key in sorted(cur):
        table = owner_of(split_key(key)[1])[0]
        if key in diff.implied or same(key):
            continue
        if table in diff.dropped_tables and diff.cur.get(key).get("type") != "foreign key":
            continue
        foreign = diff.cur.get(key).get("type") == "foreign key"
        diff.add(MAIN, R_DROP_CONSTRAINT, [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {owner_of(split_key(key)[1])[1]}")],
                  [add_constraint(diff.cur, key), *diff.decorate(diff.cur, key)],
                  covers=[key], refs=_constraint_refs(diff.cur, key), sub=0 if foreign else 1)
    for key in sorted(des):
        table, name = owner_of(split_key(key)[1])
        b = diff.des.get(key)
        if table in diff.added_tables:
            if b.get("type") == "foreign key":
                diff.add(MAIN, R_FOREIGN_KEY, [add_constraint(diff.des, key), *diff.decorate(diff.des, key)],
                          [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}")],
                          covers=[key], refs=_constraint_refs(diff.des, key))
            continue
        if table not in diff.kept_tables:
            continue
        if same(key) and key not in diff.implied:
            was, now = diff.cur.get(key).get("validated"), b.get("validated")
            if now and not was:
                _validate(diff, key)
            elif was and not now:
                diff.add(MAIN, R_CONSTRAINT,
                          [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}"),
                           add_constraint(diff.des, key, not_valid=True), *diff.decorate(diff.des, key)],
                          [Stmt(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")],
                          covers=[key], refs=_constraint_refs(diff.des, key))
            continue
        _constraint_on_existing(diff, key)


def _validate(diff: Diff, key: str, rank: float = O_VALIDATE) -> None:
    table, name = owner_of(split_key(key)[1])
    diff.add(ONLINE, rank, [Stmt(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")],
              [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}"),
               add_constraint(diff.des, key, not_valid=True), *diff.decorate(diff.des, key)],
              covers=[key], refs=_constraint_refs(diff.des, key))


def _constraint_on_existing(diff: Diff, key: str) -> None:
    """A new (or changed) constraint on a table that exists: without long locks."""
    table, name = owner_of(split_key(key)[1])
    b = diff.des.get(key)
    refs = _constraint_refs(diff.des, key)
    drop = Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}")
    kind = b.get("type")
    if kind in ("check", "foreign key"):
        referenced = diff.des.references.get(key)
        target = frozenset(c for c in diff.des.columns_of.get(key, frozenset())
                           if referenced and owner_of(split_key(c)[1])[0] == referenced)
        late = kind == "foreign key" and target in diff.online_unique_keys
        diff.add(ONLINE if late else MAIN, O_LATE_FK if late else R_CONSTRAINT,
                  [add_constraint(diff.des, key, not_valid=True), *diff.decorate(diff.des, key)],
                  [drop], covers=[key], refs=refs)
        if b.get("validated"):
            _validate(diff, key, O_LATE_VALIDATE if late else O_VALIDATE)
        return
    index = diff.des.constraint_index.get(key)
    if kind in ("primary key", "unique") and index and object_key("index", index) in diff.des.objects:
        index_key = object_key("index", index)
        definition = diff.des.get(index_key)["definition"]
        diff.add(ONLINE, O_CREATE_INDEX, [Stmt(index_sql(definition, concurrently=True))],
                  [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")], covers=[index_key], refs=refs)
        diff.add(ONLINE, O_USING_INDEX,
                  [add_constraint(diff.des, key, using_index=local_name(index)),
                   *diff.decorate(diff.des, key), *diff.decorate(diff.des, index_key)],
                  [drop], covers=[key, index_key], refs=refs)
        return
    diff.add(MAIN, R_CONSTRAINT,
              [Stmt(add_constraint(diff.des, key).sql, "REVIEW",
                     f"builds the index of {kind} constraint {name} under an ACCESS EXCLUSIVE lock on {table}",
                     subject=key), *diff.decorate(diff.des, key)],
              [drop], covers=[key], refs=refs)


def _partitioned(cat: Catalog, relation: str) -> bool:
    return cat.get(object_key("table", relation)).get("kind") == "partitioned"


def indexes(diff: Diff) -> None:
    cur_backing, des_backing = diff.cur.backing_indexes(), diff.des.backing_indexes()
    cur = {k for k in diff.cur.keys("index") if split_key(k)[1] not in cur_backing}
    des = {k for k in diff.des.keys("index") if split_key(k)[1] not in des_backing}
    dropped_relations = diff.dropped_tables | {split_key(k)[1] for k in diff.view_drops}
    created_relations = diff.added_tables | {split_key(k)[1] for k in diff.view_creates}

    def same(key: str) -> bool:
        return (key in cur and key in des and key not in diff.implied
                and diff.cur.get(key).get("definition") == diff.des.get(key).get("definition"))

    for key in sorted(cur):
        relation = str(diff.cur.get(key).get("table"))
        if key in diff.implied or relation in dropped_relations or same(key):
            continue
        name = split_key(key)[1]
        refs = {key, object_key(diff.cur.relation_kind(relation), relation), *diff.cur.columns_of.get(key, ())}
        restore = [*diff.decorate(diff.cur, key)]
        if _partitioned(diff.cur, relation):
            diff.add(MAIN, R_DROP_INDEX,
                      [Stmt(f"DROP INDEX IF EXISTS {name}", "REVIEW",
                             f"an index of partitioned table {relation} cannot be dropped concurrently: "
                             "this locks the table", subject=key)],
                      [Stmt(index_sql(diff.cur.get(key)["definition"], concurrently=False)), *restore],
                      covers=[key], refs=refs)
        else:
            diff.add(ONLINE, O_DROP_INDEX, [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")],
                      [Stmt(index_sql(diff.cur.get(key)["definition"], concurrently=True)), *restore],
                      covers=[key], refs=refs)
    for key in sorted(des):
        relation = str(diff.des.get(key).get("table"))
        if relation in created_relations or same(key):
            continue
        name = split_key(key)[1]
        refs = {key, object_key(diff.des.relation_kind(relation), relation), *diff.des.columns_of.get(key, ())}
        definition = diff.des.get(key)["definition"]
        if _partitioned(diff.des, relation):
            diff.add(MAIN, R_INDEX,
                      [Stmt(index_sql(definition, concurrently=False), "REVIEW",
                             f"partitioned table {relation} cannot be indexed concurrently: this blocks writes "
                             "while the index builds (or create it ON ONLY the parent and attach per-partition "
                             "indexes built concurrently)", subject=key), *diff.decorate(diff.des, key)],
                      [Stmt(f"DROP INDEX IF EXISTS {name}")], covers=[key], refs=refs)
        else:
            diff.add(ONLINE, O_CREATE_INDEX,
                      [Stmt(index_sql(definition, concurrently=True)), *diff.decorate(diff.des, key)],
                      [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")], covers=[key], refs=refs)
