"""Schemas, extensions and sequences (with the columns that own them).

Comparators ``schemas``, ``extensions`` and ``sequences``.
"""

from __future__ import annotations

from .actions import MAIN, Stmt
from .catalog import Catalog
from .diff import Diff
from .names import guard, literal, object_key, owner_of, quote, split_key, unquote
from .order import (
    R_DROP_EXTENSION,
    R_DROP_SCHEMA,
    R_DROP_SEQUENCE,
    R_EXTENSION,
    R_SCHEMA,
    R_SEQUENCE,
    R_SEQUENCE_ALTER,
    R_UNOWN,
)


def schemas(diff: Diff) -> None:
    cur, des = diff.cur.names("schema"), diff.des.names("schema")
    for name in sorted(des - cur):
        key = object_key("schema", name)
        diff.add(MAIN, R_SCHEMA, [Stmt(f"CREATE SCHEMA IF NOT EXISTS {name}"), *diff.decorate(diff.des, key)],
                  [Stmt(f"DROP SCHEMA IF EXISTS {name}")], covers=[key])
    for name in sorted(cur - des):
        key = object_key("schema", name)
        diff.add(
            MAIN, R_DROP_SCHEMA,
            [Stmt(f"DROP SCHEMA IF EXISTS {name}", "DESTRUCTIVE",
                   f"drops schema {name} (everything in it the desired schema lacks is dropped above)",
                   subject=key)],
            [Stmt(f"CREATE SCHEMA IF NOT EXISTS {name}"), *diff.decorate(diff.cur, key)],
            covers=[key],
        )


def extensions(diff: Diff) -> None:
    cur, des = diff.cur.names("extension"), diff.des.names("extension")
    for name in sorted(des - cur):
        a = diff.des.get(object_key("extension", name))
        diff.add(MAIN, R_EXTENSION,
                  [Stmt(f"CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {quote(a['schema'])}")],
                  [Stmt(f"DROP EXTENSION IF EXISTS {name}")], covers=[object_key("extension", name)])
    for name in sorted(cur - des):
        a = diff.cur.get(object_key("extension", name))
        diff.add(
            MAIN, R_DROP_EXTENSION,
            [Stmt(f"DROP EXTENSION IF EXISTS {name}", "DESTRUCTIVE",
                   f"drops extension {name} (and fails while something still uses its objects)",
                   subject=object_key("extension", name))],
            [Stmt(f"CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {quote(a['schema'])} "
                   f"VERSION {literal(a['version'])}")],
            covers=[object_key("extension", name)],
        )
    for name in sorted(cur & des):
        key = object_key("extension", name)
        old, new = diff.cur.get(key), diff.des.get(key)
        if old.get("schema") != new.get("schema"):
            def move(schema: str) -> Stmt:
                condition = (f"EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = {literal(unquote(name))} "
                             f"AND extnamespace <> {literal(quote(schema))}::regnamespace)")
                return Stmt(guard(condition, f"ALTER EXTENSION {name} SET SCHEMA {quote(schema)}"))
            diff.add(MAIN, R_EXTENSION, [move(new["schema"])], [move(old["schema"])], covers=[key])
        if old.get("version") != new.get("version"):
            diff.add(MAIN, R_EXTENSION, [Stmt(f"ALTER EXTENSION {name} UPDATE TO {literal(new['version'])}")],
                      [Stmt(f"ALTER EXTENSION {name} UPDATE TO {literal(old['version'])}")], covers=[key])


def sequence_sql(cat: Catalog, key: str) -> str:
    name = split_key(key)[1]
    a = cat.get(key)
    unlogged = "UNLOGGED " if a.get("persistence") == "unlogged" else ""
    cycle = "CYCLE" if a.get("cycle") else "NO CYCLE"
    return (f"CREATE {unlogged}SEQUENCE IF NOT EXISTS {name} AS {a['type']} INCREMENT BY {a['increment']} "
            f"MINVALUE {a['min']} MAXVALUE {a['max']} START WITH {a['start']} CACHE {a['cache']} {cycle}")


def _owned(diff: Diff, key: str, owner: str, *, early: bool, restore: bool = False) -> None:
    """``OWNED BY`` a column after tables exist (late), or ``OWNED BY NONE`` before drops (early)."""
    name = split_key(key)[1]
    table = owner_of(owner)[0]
    own = Stmt(f"ALTER SEQUENCE IF EXISTS {name} OWNED BY {owner}")
    none = Stmt(f"ALTER SEQUENCE IF EXISTS {name} OWNED BY NONE")
    refs = [key, object_key("column", owner), object_key("table", table)]
    if early:
        diff.add(MAIN, R_UNOWN, [none], [own], covers=[key], refs=refs)
    else:
        diff.add(MAIN, R_SEQUENCE_ALTER, [own], [none], covers=[key], refs=refs)


def sequences(diff: Diff) -> None:
    cur, des = diff.cur.keys("sequence"), diff.des.keys("sequence")
    for key in sorted(des - cur):
        name = split_key(key)[1]
        diff.add(MAIN, R_SEQUENCE, [Stmt(sequence_sql(diff.des, key)), *diff.decorate(diff.des, key)],
                  [Stmt(f"DROP SEQUENCE IF EXISTS {name}")], covers=[key])
        if diff.des.get(key).get("owned_by"):
            _owned(diff, key, diff.des.get(key)["owned_by"], early=False)
    for key in sorted(cur - des):
        name = split_key(key)[1]
        if key in diff.implied:
            continue  # dropped with the table or column that owns it
        if diff.cur.get(key).get("owned_by"):
            _owned(diff, key, diff.cur.get(key)["owned_by"], early=True)
        diff.add(MAIN, R_DROP_SEQUENCE,
                  [Stmt(f"DROP SEQUENCE IF EXISTS {name}", "DESTRUCTIVE",
                         f"drops sequence {name} and its current value", subject=key)],
                  [Stmt(sequence_sql(diff.cur, key)), *diff.decorate(diff.cur, key)], covers=[key])
    options = (("type", "AS {}"), ("increment", "INCREMENT BY {}"), ("min", "MINVALUE {}"),
               ("max", "MAXVALUE {}"), ("start", "START WITH {}"), ("cache", "CACHE {}"))
    for key in sorted(cur & des):
        name = split_key(key)[1]
        old, new = diff.cur.get(key), diff.des.get(key)
        up = [fmt.format(new[k]) for k, fmt in options if old.get(k) != new.get(k)]
        down = [fmt.format(old[k]) for k, fmt in options if old.get(k) != new.get(k)]
        if old.get("cycle") != new.get("cycle"):
            up.append("CYCLE" if new.get("cycle") else "NO CYCLE")
            down.append("CYCLE" if old.get("cycle") else "NO CYCLE")
        if up:
            diff.add(MAIN, R_SEQUENCE_ALTER, [Stmt(f"ALTER SEQUENCE {name} {' '.join(up)}")],
                      [Stmt(f"ALTER SEQUENCE {name} {' '.join(down)}")], covers=[key])
        if old.get("persistence") != new.get("persistence"):
            logged = {"permanent": "LOGGED", "unlogged": "UNLOGGED"}
            diff.add(MAIN, R_SEQUENCE_ALTER,
                      [Stmt(f"ALTER SEQUENCE {name} SET {logged.get(new['persistence'], 'LOGGED')}")],
                      [Stmt(f"ALTER SEQUENCE {name} SET {logged.get(old['persistence'], 'LOGGED')}")],
                      covers=[key])
        if old.get("owned_by") != new.get("owned_by"):
            if old.get("owned_by"):
                _owned(diff, key, old["owned_by"], early=True)
            if new.get("owned_by"):
                _owned(diff, key, new["owned_by"], early=False)
