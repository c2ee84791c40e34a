"""Row-level security policies, and the privileges and comments of objects that stay.

Comparators ``policies`` and ``decorations`` (GRANT/REVOKE and COMMENT ON
of objects both catalogs have; new objects get theirs where they are made).
"""

from __future__ import annotations

import re

from .actions import MAIN, Stmt
from .catalog import Catalog
from .diff import Diff
from .grants import comment_sql
from .names import guard, literal, object_key, owner_of, quote, split_key, unquote
from .order import R_DECORATE, R_DROP_POLICY, R_POLICY


def policy_stmt(cat: Catalog, key: str, *, guarded: bool) -> Stmt:
    table, name = owner_of(split_key(key)[1])
    a = cat.get(key)
    roles = ", ".join("PUBLIC" if r == "public" else quote(r) for r in (a.get("roles") or ["public"]))
    create = (f"CREATE POLICY {name} ON {table} AS {'PERMISSIVE' if a.get('permissive', True) else 'RESTRICTIVE'} "
              f"FOR {a.get('command') or 'ALL'} TO {roles}")
    if a.get("using"):
        create += f" USING ({a['using']})"
    if a.get("with_check"):
        create += f" WITH CHECK ({a['with_check']})"
    if not guarded:
        return Stmt(create)
    return Stmt(guard(
        f"NOT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = {literal(table)}::regclass "
        f"AND polname = {literal(unquote(name))})", create))


def _policy_refs(cat: Catalog, key: str) -> set[str]:
    table = owner_of(split_key(key)[1])[0]
    a = cat.get(key)
    text = f"{a.get('using') or ''} {a.get('with_check') or ''}"
    refs = {key, object_key("table", table)}
    for column in cat.get(object_key("table", table)).get("column_order") or []:
        if re.search(rf"(?<![\w$]){re.escape(column)}(?![\w$])", text):
            refs.add(object_key("column", f"{table}.{column}"))
    return refs


def policies(diff: Diff) -> None:
    cur, des = diff.cur.keys("policy"), diff.des.keys("policy")

    def changed(key: str) -> bool:
        a, b = diff.cur.get(key), diff.des.get(key)
        return any(a.get(k) != b.get(k) for k in a.keys() | b.keys() if k != "comment")

    for key in sorted(cur):
        table, name = owner_of(split_key(key)[1])
        if key in diff.implied or table in diff.dropped_tables or (key in des and not changed(key)):
            continue
        diff.add(MAIN, R_DROP_POLICY, [Stmt(f"DROP POLICY IF EXISTS {name} ON {table}")],
                  [policy_stmt(diff.cur, key, guarded=True), *diff.decorate(diff.cur, key)],
                  covers=[key], refs=_policy_refs(diff.cur, key))
    for key in sorted(des):
        table, name = owner_of(split_key(key)[1])
        if key in cur and not changed(key):
            continue
        diff.add(MAIN, R_POLICY, [policy_stmt(diff.des, key, guarded=True), *diff.decorate(diff.des, key)],
                  [Stmt(f"DROP POLICY IF EXISTS {name} ON {table}")],
                  covers=[key], refs=_policy_refs(diff.des, key))


def decorations(diff: Diff) -> None:
    for key in sorted(diff.cur.objects.keys() & diff.des.objects.keys()):
        if key in diff.fresh or key in diff.implied:
            continue
        old, new = diff.cur.get(key), diff.des.get(key)
        up: list[Stmt] = []
        down: list[Stmt] = []
        if ("acl" in old or "acl" in new) and old.get("acl") != new.get("acl"):
            up += diff.acl(key, old.get("acl"), new.get("acl"), new)
            down += diff.acl(key, new.get("acl"), old.get("acl"), old)
        if old.get("comment") != new.get("comment") and ("comment" in old or "comment" in new):
            up.append(comment_sql(key, new.get("comment"), new))
            down.append(comment_sql(key, old.get("comment"), old))
        if up:
            diff.add(MAIN, R_DECORATE, up, down, covers=[key], refs=[key])
