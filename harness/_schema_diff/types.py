"""Types: enums (values added in place, their undo re-creates the type), domains, composites, ranges.

Comparator ``types``.
"""

from __future__ import annotations

from .actions import MAIN, Stmt
from .catalog import Catalog
from .diff import DECORATION, Diff
from .names import guard, literal, local_name, made_name, owner_of, schema_of, split_key, unquote
from .order import R_DROP_TYPE, R_TYPE


def _type_sql(cat: Catalog, key: str) -> str | None:
    object_type, name = split_key(key)
    a = cat.get(key)
    if object_type == "enum":
        values = ", ".join(literal(v) for v in a["values"])
        create = f"CREATE TYPE {name} AS ENUM ({values})"
    elif object_type == "domain":
        create = f"CREATE DOMAIN {name} AS {a['base_type']}"
        if a.get("collation"):
            create += f" COLLATE {a['collation']}"
        if a.get("default") is not None:
            create += f" DEFAULT {a['default']}"
        if a.get("not_null"):
            create += " NOT NULL"
        for constraint, definition in sorted((a.get("constraints") or {}).items()):
            create += f" CONSTRAINT {constraint} {definition}"
    elif object_type == "composite":
        attributes = ", ".join(f"{n} {t}" for n, t in a["attributes"])
        create = f"CREATE TYPE {name} AS ({attributes})"
    elif object_type == "range":
        create = f"CREATE TYPE {name} AS RANGE (SUBTYPE = {a['subtype']})"
    else:
        return None
    return guard(f"to_regtype({literal(name)}) IS NULL", create)


def types(diff: Diff) -> None:
    kinds = ("enum", "range", "domain", "composite")
    cur, des = diff.cur.keys(*kinds), diff.des.keys(*kinds)
    for key in sorted(des - cur, key=lambda k: (kinds.index(split_key(k)[0]), k)):
        create = _type_sql(diff.des, key)
        object_type, name = split_key(key)
        drop = "DOMAIN" if object_type == "domain" else "TYPE"
        diff.add(MAIN, R_TYPE, [Stmt(create or ""), *diff.decorate(diff.des, key)],
                  [Stmt(f"DROP {drop} IF EXISTS {name}")], covers=[key], sub=kinds.index(object_type))
    for key in sorted(cur - des):
        object_type, name = split_key(key)
        drop = "DOMAIN" if object_type == "domain" else "TYPE"
        diff.add(MAIN, R_DROP_TYPE, [Stmt(f"DROP {drop} IF EXISTS {name}")],
                  [Stmt(_type_sql(diff.cur, key) or ""), *diff.decorate(diff.cur, key)],
                  covers=[key], sub=-kinds.index(object_type))
    for key in sorted(cur & des):
        old, new = diff.cur.get(key), diff.des.get(key)
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(DECORATION)
        if not changed:
            continue
        if split_key(key)[0] == "enum" and changed == {"values"}:
            _enum_values(diff, key, list(old["values"]), list(new["values"]))
        else:
            diff.manual(key, f"{', '.join(sorted(changed))} changed; changing an existing "
                              f"{split_key(key)[0]} needs a hand-written migration")


def _enum_values(diff: Diff, key: str, old: list[str], new: list[str]) -> None:
    name = split_key(key)[1]
    removed = [v for v in old if v not in new]
    added = [v for v in new if v not in old]
    if removed:
        diff.manual(key, f"value{'s' if len(removed) > 1 else ''} {', '.join(literal(v) for v in removed)} removed: "
                          "PostgreSQL cannot drop an enum value; write a migration that moves the rows off it and "
                          "re-creates the type (or, for a rename, ALTER TYPE ... RENAME VALUE)")
    if [v for v in old if v in new] != [v for v in new if v in old]:
        diff.manual(key, "the order of existing values changed; PostgreSQL cannot reorder enum values: "
                          "re-create the type in a hand-written migration")
    if not added:
        return
    present = [v for v in old]
    up: list[Stmt] = []
    for value in added:
        position = new.index(value)
        before = next((v for v in reversed(new[:position]) if v in present), None)
        after = next((v for v in new[position + 1:] if v in present), None)
        where = f" AFTER {literal(before)}" if before is not None else f" BEFORE {literal(after)}" if after else ""
        up.append(Stmt(f"ALTER TYPE {name} ADD VALUE IF NOT EXISTS {literal(value)}{where}"))
        present.insert(present.index(before) + 1 if before is not None else
                       present.index(after) if after is not None else len(present), value)
    diff.add(MAIN, R_TYPE, up, _enum_recreate(diff, key, old, added), covers=[key],
              enum_values=[literal(v) for v in added])


def _enum_recreate(diff: Diff, key: str, values: list[str], added: list[str]) -> list[Stmt]:
    """Down of new enum values: PostgreSQL cannot drop one, so the type is re-created without them."""
    name = split_key(key)[1]
    schema, local = schema_of(name), local_name(name)
    old_local = made_name(unquote(local), suffix="harness_old")
    body = [f"ALTER TYPE {name} RENAME TO {old_local};",
            f"CREATE TYPE {name} AS ENUM ({', '.join(literal(v) for v in values)});"]
    for column_key in sorted(diff.cur.keys("column")):
        a = diff.cur.get(column_key)
        type_ = str(a.get("type"))
        if type_ not in (name, name + "[]"):
            continue
        table, column = owner_of(split_key(column_key)[1])
        via = "text[]" if type_.endswith("[]") else "text"
        if a.get("default") is not None:
            body.append(f"ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT;")
        body.append(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {type_} USING {column}::{via}::{type_};")
        if a.get("default") is not None:
            body.append(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT {a['default']};")
    body.append(f"DROP TYPE {schema}.{old_local};")
    labels = ", ".join(literal(v) for v in added)
    condition = (f"EXISTS (SELECT FROM pg_catalog.pg_enum WHERE enumtypid = {literal(name)}::regtype "
                 f"AND enumlabel IN ({labels}))")
    statement = Stmt(guard(condition, "\n".join(body)),
                      note=f"PostgreSQL cannot drop enum values: {name} is re-created without {labels} "
                           "(fails while rows, functions or views still use them)")
    return [statement, *diff.decorate(diff.cur, key)]
