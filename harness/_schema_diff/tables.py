"""Tables and columns: create, drop, alter, and the renames they may be (asked as questions).

Comparators ``renames``, ``tables`` and ``columns``.  New NOT NULL columns
and columns that become NOT NULL get the NOT VALID check / VALIDATE / SET
NOT NULL pattern; type changes are classed free, widening or narrowing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import lint as lint_mod
from .actions import MAIN, ONLINE, Question, Stmt
from .catalog import Catalog
from .constraints import add_constraint, constraints_of, index_sql, indexes_of
from .diff import DECORATION, Diff
from .functions import rule_stmts, trigger_stmts
from .names import (
    guard,
    has_constraint,
    literal,
    local_name,
    made_name,
    no_constraint,
    object_key,
    owner_of,
    schema_of,
    split_key,
    unquote,
)
from .order import O_NOT_NULL, O_VALIDATE, R_ALTER, R_DROP_COLUMN, R_DROP_TABLE, R_TABLE
from .schemas import sequence_sql
from .security import policy_stmt

def column_def(column: str, a: Mapping[str, Any], *, not_null: bool = True, default: bool = True) -> str:
    parts = [column, str(a["type"])]
    if a.get("collation"):
        parts.append(f"COLLATE {a['collation']}")
    if a.get("generated"):
        kind = "STORED" if a["generated"] == "stored" else "VIRTUAL"
        parts.append(f"GENERATED ALWAYS AS ({a['expression']}) {kind}")
    elif a.get("identity"):
        parts.append(f"GENERATED {'ALWAYS' if a['identity'] == 'always' else 'BY DEFAULT'} AS IDENTITY")
    elif default and a.get("default") is not None:
        parts.append(f"DEFAULT {a['default']}")
    if not_null and a.get("nullable") is False and not a.get("identity"):
        parts.append("NOT NULL")
    return " ".join(parts)



def _type_words(type_: str) -> tuple[str, tuple[int, ...] | None, bool]:
    """``character varying(20)`` → ("character varying", (20,), False); arrays end with ``[]``."""
    array = type_.endswith("[]")
    base = type_[:-2] if array else type_
    match = re.fullmatch(r"(.*?)\(([0-9, ]+)\)(.*)", base)
    if not match:
        return base, None, array
    mods = tuple(int(x) for x in match.group(2).split(","))
    return (match.group(1) + match.group(3)).strip(), mods, array


_WIDER = {
    ("smallint", "integer"), ("smallint", "bigint"), ("integer", "bigint"), ("real", "double precision"),
    ("smallint", "numeric"), ("integer", "numeric"), ("bigint", "numeric"),
    ("character", "character varying"), ("character", "text"),
    ("timestamp without time zone", "timestamp with time zone"), ("json", "jsonb"),
}


def _type_change(old: str, new: str) -> str:
    """``free`` (no rewrite), ``widen`` (rewrite, no value lost) or ``narrow`` (values may not fit)."""
    ob, om, oa = _type_words(old)
    nb, nm, na = _type_words(new)
    if oa != na:
        return "narrow"
    if ob == nb == "character varying" or (ob == "character varying" and nb == "text"):
        if nb == "text" or nm is None or (om is not None and nm[0] >= om[0]):
            return "free"
        return "narrow"
    if ob == "text" and nb == "character varying" and nm is None:
        return "free"
    if ob == nb == "numeric":
        if nm is None:
            return "free" if om is not None else "free"
        if om is not None and len(om) == len(nm) and nm[0] >= om[0] and (len(nm) < 2 or nm[1] == om[1]):
            return "free"
        if om is not None and nm[0] - (nm[1] if len(nm) > 1 else 0) >= om[0] - (om[1] if len(om) > 1 else 0) \
                and (nm[1] if len(nm) > 1 else 0) >= (om[1] if len(om) > 1 else 0):
            return "widen"
        return "narrow"
    if ob == nb and om is not None and nm is not None and nm >= om:
        return "widen"
    if (ob, nb) in _WIDER:
        return "widen"
    return "narrow"


def renames(diff: Diff) -> None:
    """Pair dropped and added columns (same table, same type) and tables (same columns) as questions."""
    for table in sorted(diff.kept_tables):
        dropped = sorted(c for c in diff.dropped_columns if owner_of(c)[0] == table)
        added = sorted(c for c in diff.added_columns if owner_of(c)[0] == table)
        for old in dropped:
            old_type = diff.cur.get(object_key("column", old)).get("type")
            match = next((a for a in added if diff.des.get(object_key("column", a)).get("type") == old_type), None)
            if match is None:
                continue
            added.remove(match)
            old_name, new_name = owner_of(old)[1], owner_of(match)[1]
            diff.questions.append(
                Question(
                    message=f"column {old} ({old_type}) is gone and {match} ({old_type}) is new",
                    rename_up=[f"ALTER TABLE {table} RENAME COLUMN {old_name} TO {new_name};"],
                    rename_down=[f"ALTER TABLE {table} RENAME COLUMN {new_name} TO {old_name};"],
                    keys=frozenset({object_key("column", old), object_key("column", match)}),
                    object=f"column {old} -> {match}",
                )
            )
    added_tables = sorted(diff.added_tables)
    for old in sorted(diff.dropped_tables):
        signature = _table_signature(diff.cur, old)
        match = next((t for t in added_tables if signature and _table_signature(diff.des, t) == signature), None)
        if match is None:
            continue
        added_tables.remove(match)
        up = [f"ALTER TABLE {old} RENAME TO {local_name(match)};"]
        down = [f"ALTER TABLE {schema_of(old)}.{local_name(match)} RENAME TO {local_name(old)};"]
        if schema_of(old) != schema_of(match):
            up.append(f"ALTER TABLE {schema_of(old)}.{local_name(match)} SET SCHEMA {schema_of(match)};")
            down.insert(0, f"ALTER TABLE {match} SET SCHEMA {schema_of(old)};")
        diff.questions.append(
            Question(
                message=f"table {old} is gone and table {match} with the same columns is new",
                rename_up=up,
                rename_down=down,
                keys=frozenset({object_key("table", old), object_key("table", match)}),
                object=f"table {old} -> {match}",
            )
        )


def _table_signature(cat: Catalog, table: str) -> tuple[tuple[str, str], ...]:
    columns = cat.get(object_key("table", table)).get("column_order") or []
    return tuple(sorted((c, str(cat.get(object_key("column", f"{table}.{c}")).get("type"))) for c in columns))


def _create_table_sql(cat: Catalog, table: str) -> str:
    a = cat.get(object_key("table", table))
    unlogged = "UNLOGGED " if a.get("persistence") == "unlogged" else ""
    if a.get("partition_of"):
        text = f"CREATE {unlogged}TABLE IF NOT EXISTS {table} PARTITION OF {a['partition_of']}\n    {a['partition_bound']}"
    else:
        columns = [
            "    " + column_def(column, cat.get(object_key("column", f"{table}.{column}")))
            for column in a.get("column_order") or []
        ]
        text = f"CREATE {unlogged}TABLE IF NOT EXISTS {table} (\n" + ",\n".join(columns) + "\n)"
        if a.get("inherits"):
            text += f" INHERITS ({', '.join(a['inherits'])})"
    if a.get("partition_key"):
        text += f" PARTITION BY {a['partition_key']}"
    if a.get("options"):
        text += f" WITH ({', '.join(a['options'])})"
    return text


def _owned_sequences(diff: Diff, columns: Iterable[str]) -> list[str]:
    """Sequences of the current schema owned by one of *columns* that the desired schema drops too."""
    owners = set(columns)
    return sorted(k for k in diff.cur.keys("sequence") - diff.des.keys("sequence")
                  if diff.cur.get(k).get("owned_by") in owners)


def _sequence_bundle(diff: Diff, sequences: Sequence[str]) -> tuple[list[Stmt], list[Stmt]]:
    """Re-create dropped owned sequences: before their table or column, and owned after it."""
    before = [s for key in sequences for s in (Stmt(sequence_sql(diff.cur, key)), *diff.decorate(diff.cur, key))]
    after = [Stmt(f"ALTER SEQUENCE IF EXISTS {split_key(key)[1]} OWNED BY {diff.cur.get(key)['owned_by']}")
             for key in sequences]
    diff.implied |= set(sequences)
    return before, after


def _table_bundle(diff: Diff, cat: Catalog, table: str, *, dependents: bool) -> tuple[list[Stmt], set[str]]:
    """Everything that (re)creates *table* as *cat* has it, except foreign keys."""
    table_key = object_key("table", table)
    a = cat.get(table_key)
    stmts = [Stmt(_create_table_sql(cat, table))]
    decorated = [table_key] + [object_key("column", f"{table}.{c}") for c in a.get("column_order") or []]
    for key in constraints_of(cat, table):
        if cat.get(key).get("type") in ("foreign key", "trigger"):
            continue
        stmts.append(add_constraint(cat, key))
        decorated.append(key)
        if key in cat.constraint_index:
            decorated.append(object_key("index", cat.constraint_index[key]))
    for key in indexes_of(cat, table):
        stmts.append(Stmt(index_sql(cat.get(key)["definition"], concurrently=False)))
        decorated.append(key)
    if a.get("rls_enabled"):
        stmts.append(Stmt(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
    if a.get("rls_forced"):
        stmts.append(Stmt(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
    for key in decorated:
        stmts.extend(diff.decorate(cat, key))
    covers = set(decorated)
    if dependents:
        for key in cat.sub_objects("trigger", table):
            stmts.extend(trigger_stmts(diff, cat, key))
            covers.add(key)
        for key in cat.sub_objects("rule", table):
            stmts.extend(rule_stmts(diff, cat, key))
            covers.add(key)
        for key in cat.sub_objects("policy", table):
            stmts.extend([policy_stmt(cat, key, guarded=True), *diff.decorate(cat, key)])
            covers.add(key)
    return stmts, covers


def _depth(cat: Catalog, table: str, seen: tuple[str, ...] = ()) -> int:
    a = cat.get(object_key("table", table))
    parents = ([a["partition_of"]] if a.get("partition_of") else []) + list(a.get("inherits") or [])
    return 1 + max((_depth(cat, p, (*seen, table)) for p in parents if p not in seen), default=-1)


def tables(diff: Diff) -> None:
    for table in sorted(diff.added_tables, key=lambda t: (_depth(diff.des, t), t)):
        key = object_key("table", table)
        a = diff.des.get(key)
        if a.get("kind") == "foreign":
            diff.manual(key, "a new foreign table: create it (and its server) by hand")
            continue
        up, covers = _table_bundle(diff, diff.des, table, dependents=False)
        parents = [object_key("table", p) for p in ([a.get("partition_of")] + list(a.get("inherits") or [])) if p]
        diff.add(MAIN, R_TABLE, up, [Stmt(f"DROP TABLE IF EXISTS {table}")], covers=covers, refs=parents,
                  sub=_depth(diff.des, table))
    for table in sorted(diff.dropped_tables, key=lambda t: (-_depth(diff.cur, t), t)):
        key = object_key("table", table)
        if diff.cur.get(key).get("kind") == "foreign":
            diff.manual(key, "a removed foreign table: drop it by hand")
            continue
        down, covers = _table_bundle(diff, diff.cur, table, dependents=True)
        owned = _owned_sequences(diff, [f"{table}.{c}" for c in diff.cur.get(key).get("column_order") or []])
        before, after = _sequence_bundle(diff, owned)
        down = before + down + after
        covers |= set(owned)
        diff.implied |= covers - {key}
        diff.add(MAIN, R_DROP_TABLE,
                  [Stmt(f"DROP TABLE IF EXISTS {table}", "DESTRUCTIVE", f"drops table {table} and all its rows",
                         subject=key)],
                  down, covers=covers, sub=-_depth(diff.cur, table))
    for table in sorted(diff.kept_tables):
        _table_changes(diff, table)


def _table_changes(diff: Diff, table: str) -> None:
    key = object_key("table", table)
    old, new = diff.cur.get(key), diff.des.get(key)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - {"acl", "comment", "column_order"}
    up: list[Stmt] = []
    down: list[Stmt] = []
    for attr in sorted(changed):
        if attr == "persistence" and {old[attr], new[attr]} <= {"permanent", "unlogged"}:
            word = {"permanent": "LOGGED", "unlogged": "UNLOGGED"}
            up.append(Stmt(f"ALTER TABLE {table} SET {word[new[attr]]}", "REVIEW",
                            f"rewrites table {table} under an ACCESS EXCLUSIVE lock", subject=key))
            down.append(Stmt(f"ALTER TABLE {table} SET {word[old[attr]]}"))
        elif attr == "rls_enabled":
            verb = {True: "ENABLE", False: "DISABLE"}
            up.append(Stmt(f"ALTER TABLE {table} {verb[bool(new[attr])]} ROW LEVEL SECURITY"))
            down.append(Stmt(f"ALTER TABLE {table} {verb[bool(old[attr])]} ROW LEVEL SECURITY"))
        elif attr == "rls_forced":
            verb = {True: "FORCE", False: "NO FORCE"}
            up.append(Stmt(f"ALTER TABLE {table} {verb[bool(new[attr])]} ROW LEVEL SECURITY"))
            down.append(Stmt(f"ALTER TABLE {table} {verb[bool(old[attr])]} ROW LEVEL SECURITY"))
        elif attr == "options":
            up.extend(_options(table, old.get(attr) or [], new.get(attr) or []))
            down.extend(_options(table, new.get(attr) or [], old.get(attr) or []))
        else:
            diff.manual(key, f"{attr} changed ({old.get(attr)!r} -> {new.get(attr)!r}): needs a hand-written "
                              "migration")
    if up:
        diff.add(MAIN, R_ALTER, up, list(reversed(down)), covers=[key])


def _options(table: str, old: Sequence[str], new: Sequence[str]) -> list[Stmt]:
    old_keys = {o.split("=", 1)[0] for o in old}
    new_keys = {o.split("=", 1)[0] for o in new}
    out = []
    changed = [o for o in new if o not in old]
    if changed:
        out.append(Stmt(f"ALTER TABLE {table} SET ({', '.join(changed)})"))
    removed = sorted(old_keys - new_keys)
    if removed:
        out.append(Stmt(f"ALTER TABLE {table} RESET ({', '.join(removed)})"))
    return out


def _lint_rules(statement: str, table: str) -> set[str]:
    """The lint rules *statement* breaks on the existing *table* (used to pick the safe pattern)."""
    findings = lint_mod.lint_sql(statement + ";", "<generated>", existing_tables={table})
    return {f.rule for f in findings if f.severity == "error"}


def _not_null_pattern(diff: Diff, key: str, todo: str) -> tuple[list[Stmt], list[Stmt]]:
    """NOT NULL without a long lock: a NOT VALID check now, validated and turned into NOT NULL online."""
    table, column = owner_of(split_key(key)[1])
    check = made_name(unquote(local_name(table)), unquote(column), suffix="not_null_check")
    add = f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID"
    refs = [object_key("table", table)]
    diff.add(ONLINE, O_VALIDATE,
              [Stmt(guard(has_constraint(table, check), f"ALTER TABLE {table} VALIDATE CONSTRAINT {check}"))],
              [], covers=[key], refs=refs)
    diff.add(ONLINE, O_NOT_NULL,
              [Stmt(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
                     allow=f"set-not-null proven by the validated CHECK {check}, so there is no table scan"),
               Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {check}")],
              [Stmt(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL"),
               Stmt(guard(no_constraint(table, check), add))],
              covers=[key], refs=refs)
    return ([Stmt(guard(no_constraint(table, check), add), "TODO", todo, subject=key)],
            [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {check}")])


def columns(diff: Diff) -> None:
    for column in sorted(diff.added_columns):
        _add_column(diff, column)
    for table in sorted({owner_of(c)[0] for c in diff.dropped_columns}):
        _drop_columns(diff, table, sorted(c for c in diff.dropped_columns if owner_of(c)[0] == table))
    for key in sorted(diff.cur.keys("column") & diff.des.keys("column")):
        if owner_of(split_key(key)[1])[0] in diff.kept_tables:
            _change_column(diff, key)


def _add_column(diff: Diff, column: str) -> None:
    key = object_key("column", column)
    table, name = owner_of(column)
    a = diff.des.get(key)
    add = f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS"
    up: list[Stmt]
    down = [Stmt(f"ALTER TABLE IF EXISTS {table} DROP COLUMN IF EXISTS {name}")]
    not_null = a.get("nullable") is False and not a.get("identity") and not a.get("generated")
    default = a.get("default")
    volatile = default is not None and "add-column-volatile-default" in _lint_rules(
        f"ALTER TABLE {table} ADD COLUMN {name} {a['type']} DEFAULT {default}", table)
    if a.get("identity") or a.get("generated") == "stored":
        what = "an identity" if a.get("identity") else "a stored generated"
        up = [Stmt(f"{add} {column_def(name, a)}", "REVIEW",
                    f"{what} column fills every row: rewrites {table} under an ACCESS EXCLUSIVE lock",
                    subject=key)]
    elif volatile:
        up = [Stmt(f"{add} {column_def(name, a, not_null=False, default=False)}"),
              Stmt(f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT {default}", "TODO",
                    f"the volatile default applies to new rows only; backfill the existing ones in batches: "
                    f"UPDATE {table} SET {name} = {default} WHERE {name} IS NULL", subject=key)]
        if not_null:
            more_up, more_down = _not_null_pattern(diff, 
                key, f"the next migration makes {column} NOT NULL: backfill it first (see above)")
            up += more_up
            down = more_down + down
    elif not_null and default is None:
        up = [Stmt(f"{add} {column_def(name, a, not_null=False)}")]
        more_up, more_down = _not_null_pattern(diff, 
            key, f"{column} is NOT NULL without a default: fill it before the next migration validates this, "
                 f"e.g. UPDATE {table} SET {name} = ... WHERE {name} IS NULL (in batches); "
                 "a table with rows fails the validation otherwise")
        up += more_up
        down = more_down + down
    else:
        up = [Stmt(f"{add} {column_def(name, a)}")]
    diff.add(MAIN, R_ALTER, [*up, *diff.decorate(diff.des, key)], down,
              covers=[key], refs=[object_key("table", table)])


def _drop_columns(diff: Diff, table: str, columns: list[str]) -> None:
    keys = {object_key("column", c) for c in columns}
    up = [Stmt(f"ALTER TABLE IF EXISTS {table} DROP COLUMN IF EXISTS {owner_of(c)[1]}", "DESTRUCTIVE",
                f"drops column {c} and its data", subject=object_key("column", c)) for c in columns]
    down: list[Stmt] = []
    for column in reversed(columns):
        key = object_key("column", column)
        a = diff.cur.get(key)
        note = ""
        if a.get("nullable") is False and a.get("default") is None and not a.get("identity"):
            note = f"the data of {column} cannot come back; on a table with rows re-adding it NOT NULL fails"
        down.append(Stmt(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column_def(owner_of(column)[1], a)}",
                          note=note))
        down.extend(diff.decorate(diff.cur, key))
    covers = set(keys)
    owned = _owned_sequences(diff, columns)
    if owned:
        before, after = _sequence_bundle(diff, owned)
        down = before + down + after
        covers |= set(owned)
    own = {c for c in keys if owner_of(split_key(c)[1])[0] == table}
    for key in constraints_of(diff.cur, table):
        if diff.cur.columns_of.get(key, frozenset()) & own and diff.cur.get(key).get("type") != "trigger":
            down.extend([add_constraint(diff.cur, key), *diff.decorate(diff.cur, key)])
            covers.add(key)
    for key in indexes_of(diff.cur, table):
        if diff.cur.columns_of.get(key, frozenset()) & own:
            down.extend([Stmt(index_sql(diff.cur.get(key)["definition"], concurrently=False)),
                         *diff.decorate(diff.cur, key)])
            covers.add(key)
    diff.implied |= covers - keys
    diff.add(MAIN, R_DROP_COLUMN, up, down, covers=covers, refs=[object_key("table", table)])


def _change_column(diff: Diff, key: str) -> None:
    old, new = diff.cur.get(key), diff.des.get(key)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(DECORATION)
    if not changed:
        return
    column = split_key(key)[1]
    table, name = owner_of(column)
    alter = f"ALTER TABLE {table} ALTER COLUMN {name}"
    steps: list[tuple[list[Stmt], list[Stmt]]] = []
    if old.get("generated") != new.get("generated"):
        diff.manual(key, f"generated changed ({old.get('generated')} -> {new.get('generated')}): "
                          "needs a hand-written migration")
    elif old.get("generated") and old.get("expression") != new.get("expression"):
        if diff.major >= 17:
            steps.append(([Stmt(f"{alter} SET EXPRESSION AS ({new['expression']})", "REVIEW",
                                 f"recomputes {column} for every row (a table rewrite)", subject=key)],
                          [Stmt(f"{alter} SET EXPRESSION AS ({old['expression']})")]))
        else:
            diff.manual(key, "the generation expression changed: needs a hand-written migration before "
                              "PostgreSQL 17")
    identity_guard = (f"EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = {literal(table)}::regclass "
                      f"AND attname = {literal(unquote(name))} AND attidentity <> '')")

    def add_identity(kind: str) -> Stmt:
        return Stmt(guard("NOT " + identity_guard,
                            f"{alter} ADD GENERATED {'ALWAYS' if kind == 'always' else 'BY DEFAULT'} AS IDENTITY"))

    if old.get("identity") and not new.get("identity"):
        steps.append(([Stmt(f"{alter} DROP IDENTITY IF EXISTS")], [add_identity(old["identity"])]))
    type_changed = old.get("type") != new.get("type") or old.get("collation") != new.get("collation")
    default_dropped = type_changed and old.get("default") is not None
    if default_dropped:
        steps.append(([Stmt(f"{alter} DROP DEFAULT")], [Stmt(f"{alter} SET DEFAULT {old['default']}")]))
    if type_changed:
        diff.retyped_columns.add(column)
        steps.append(_retype(key, alter, old, new))
    if (old.get("default") != new.get("default") or default_dropped) and not new.get("identity"):
        forward = (Stmt(f"{alter} SET DEFAULT {new['default']}") if new.get("default") is not None
                   else Stmt(f"{alter} DROP DEFAULT"))
        # Undo back to the state before this step: without a default when the type change dropped it.
        back = (Stmt(f"{alter} DROP DEFAULT") if default_dropped or old.get("default") is None
                else Stmt(f"{alter} SET DEFAULT {old['default']}"))
        if forward.sql != back.sql or default_dropped:
            steps.append(([forward], [back]))
    if old.get("nullable") and new.get("nullable") is False:
        if new.get("identity") and not old.get("identity"):
            steps.append(([Stmt(f"{alter} SET NOT NULL", "REVIEW",
                                 f"scans {table} under an ACCESS EXCLUSIVE lock (an identity needs NOT NULL first)",
                                 subject=key)], [Stmt(f"{alter} DROP NOT NULL")]))
        else:
            steps.append(_not_null_pattern(diff, 
                key, f"{column} becomes NOT NULL: make sure it holds no NULLs before the next migration "
                     f"validates this (UPDATE {table} SET {name} = ... WHERE {name} IS NULL)"))
    elif old.get("nullable") is False and new.get("nullable"):
        steps.append(([Stmt(f"{alter} DROP NOT NULL")], [Stmt(f"{alter} SET NOT NULL")]))
    if new.get("identity") and not old.get("identity"):
        steps.append(([Stmt(add_identity(new["identity"]).sql, "TODO",
                             f"an identity on a column with data starts at 1: move it past the existing values "
                             f"with SELECT setval(pg_get_serial_sequence({literal(table)}, {literal(unquote(name))}), "
                             f"max({name})) FROM {table}", subject=key)],
                      [Stmt(f"{alter} DROP IDENTITY IF EXISTS")]))
    elif new.get("identity") and old.get("identity") and new["identity"] != old["identity"]:
        word = {"always": "ALWAYS", "by default": "BY DEFAULT"}
        steps.append(([Stmt(f"{alter} SET GENERATED {word[new['identity']]}")],
                      [Stmt(f"{alter} SET GENERATED {word[old['identity']]}")]))
    if steps:
        up = [s for step_up, _ in steps for s in step_up]
        down = [s for _, step_down in reversed(steps) for s in step_down]
        diff.add(MAIN, R_ALTER, up, down, covers=[key], refs=[object_key("table", table)])


def _retype(key: str, alter: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[Stmt], list[Stmt]]:
    column = split_key(key)[1]
    name = owner_of(column)[1]

    def to(a: Mapping[str, Any], using: bool) -> str:
        collate = f" COLLATE {a['collation']}" if a.get("collation") else (
            ' COLLATE pg_catalog."default"' if old.get("collation") != new.get("collation") else "")
        return f"{alter} TYPE {a['type']}{collate}" + (f" USING {name}::{a['type']}" if using else "")

    if old.get("type") == new.get("type"):
        up = Stmt(to(new, False), "REVIEW", f"changes the collation of {column}: rewrites the table and its "
                   "indexes under an ACCESS EXCLUSIVE lock", subject=key)
        return [up], [Stmt(to(old, False))]
    kind = _type_change(str(old["type"]), str(new["type"]))
    change = f"{old['type']} -> {new['type']}"
    if kind == "free":
        up = Stmt(to(new, False), allow=f"column-type-change {change} is binary compatible: no rewrite")
    elif kind == "widen":
        up = Stmt(to(new, True), "REVIEW", f"{column} {change}: rewrites the table and its indexes under an "
                   "ACCESS EXCLUSIVE lock", subject=key)
    else:
        up = Stmt(to(new, True), "DESTRUCTIVE", f"{column} {change}: values that do not convert or fit fail "
                   "the migration or lose precision; rewrites the table under an ACCESS EXCLUSIVE lock",
                   subject=key)
    return [up], [Stmt(to(old, kind != "free"))]
