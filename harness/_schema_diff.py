"""Two catalogs → ordered, reversible SQL actions: the core of ``harness generate``.

:func:`read_catalog` reads what a snapshot lacks (function definitions,
view columns and dependencies, the columns each index and constraint uses)
from a database it is handed; :class:`Builder` turns the difference between
the current catalog and the desired one into :class:`Action` objects.  An
action holds the up statements of one change, the down statements that undo
exactly them, the migration (phase) it belongs to and its rank in the
dependency order; questions (probable renames) and hand-written items are
collected beside them.  The safe patterns are described in
``harness/generate.py`` and docs/authoring.md.  Nothing here starts a
server or writes a file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import keywords as _keywords
from psycopg import sql

from . import lint as lint_mod
from .snapshot import Snapshot

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
    "Builder",
    "Draft",
    "do_block",
    "literal",
    "object_key",
    "split_key",
]

log = logging.getLogger(__name__)

# Phases: each non-empty one becomes a migration, in this order.
TYPES_FIRST = 0  # enum values a later statement of the same change uses (a new value is usable after commit)
MAIN = 1  # everything that can run in one transaction
ONLINE = 2  # CONCURRENTLY index builds, validations: no transaction, after the main one
PHASE_SUFFIX = {TYPES_FIRST: "_enum_values", MAIN: "", ONLINE: "_concurrently"}
VALIDATE_SUFFIX = "_validate"  # the second migration when it builds no index (it then runs in a transaction)


# --------------------------------------------------------------------------
# Names
#
# Snapshot names are quote_ident()-quoted and schema-qualified, so they are
# valid SQL as they stand; names this module makes up are quoted like
# quote_ident() would.

_QUOTED_KEYWORDS = frozenset(
    k.lower() for k in (*_keywords.RESERVED_KEYWORDS, *_keywords.COL_NAME_KEYWORDS, *_keywords.TYPE_FUNC_NAME_KEYWORDS)
)
_SIMPLE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_MAX_IDENT = 63


def _quote(raw: str) -> str:
    """*raw* as quote_ident() writes it."""
    if _SIMPLE_IDENT.fullmatch(raw) and raw not in _QUOTED_KEYWORDS:
        return raw
    return '"' + raw.replace('"', '""') + '"'


def _raw(part: str) -> str:
    """The identifier a (possibly quoted) name part stands for."""
    if part.startswith('"') and part.endswith('"') and len(part) >= 2:
        return part[1:-1].replace('""', '"')
    return part


def _split(name: str) -> list[str]:
    """The dot-separated parts of a qualified name, quotes kept: ``a."b.c".d`` → ``[a, "b.c", d]``."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(name):
        ch = name[i]
        if quoted:
            current.append(ch)
            if ch == '"':
                if name[i + 1 : i + 2] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
        elif ch == '"':
            quoted = True
            current.append(ch)
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _owner(name: str) -> tuple[str, str]:
    """``schema.table.x`` → (``schema.table``, ``x``): a column, constraint, trigger, rule or policy."""
    parts = _split(name)
    return ".".join(parts[:-1]), parts[-1]


def _schema_of(name: str) -> str:
    return _split(name)[0]


def _local(name: str) -> str:
    """The last part of a qualified name, as written."""
    return _split(name)[-1]


def literal(text: str) -> str:
    """A SQL string literal."""
    return sql.Literal(text).as_string(None)


def _made_name(*raw_parts: str, suffix: str) -> str:
    """A new identifier ``<parts>_<suffix>`` of at most 63 bytes, quoted if needed."""
    base = "_".join(raw_parts)
    room = _MAX_IDENT - len(suffix.encode()) - 1
    while len(base.encode()) > room:
        base = base[:-1]
    return _quote(f"{base}_{suffix}")


def object_key(object_type: str, name: str) -> str:
    return f"{object_type} {name}"


def split_key(key: str) -> tuple[str, str]:
    object_type, _, name = key.partition(" ")
    return object_type, name


def _dollar(body: str) -> str:
    """A dollar quote tag not used in *body*."""
    tag, n = "$$", 0
    while tag in body:
        n += 1
        tag = f"$do{n}$"
    return tag


def do_block(body: str) -> str:
    """A ``DO`` block running *body* (PL/pgSQL statements)."""
    tag = _dollar(body)
    inner = "\n".join("    " + line if line else line for line in body.strip("\n").splitlines())
    return f"DO {tag}\nBEGIN\n{inner}\nEND\n{tag}"


def _guard(condition: str, statement: str) -> str:
    """``statement`` in a DO block, run only when ``condition`` holds."""
    body = "\n".join("    " + line for line in statement.rstrip().rstrip(";").splitlines())
    return do_block(f"IF {condition} THEN\n{body};\nEND IF;")


def _has_constraint(table: str, constraint: str) -> str:
    return (
        "EXISTS (SELECT FROM pg_catalog.pg_constraint "
        f"WHERE conrelid = {literal(table)}::regclass AND conname = {literal(_raw(constraint))})"
    )


def _no_constraint(table: str, constraint: str) -> str:
    return "NOT " + _has_constraint(table, constraint)


def _strip_semicolon(text: str) -> str:
    return text.strip().rstrip(";").rstrip()


# --------------------------------------------------------------------------
# What the generator knows about one database: its snapshot and some more


@dataclass(frozen=True)
class Catalog:
    snapshot: Snapshot
    functions: Mapping[str, str] = field(default_factory=dict)  # function key -> CREATE OR REPLACE text
    view_columns: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    depends: Mapping[str, frozenset[str]] = field(default_factory=dict)  # view/trigger key -> keys it uses
    columns_of: Mapping[str, frozenset[str]] = field(default_factory=dict)  # index/constraint -> column keys
    references: Mapping[str, str] = field(default_factory=dict)  # FK constraint key -> referenced table
    constraint_index: Mapping[str, str] = field(default_factory=dict)  # pk/unique/exclusion -> index name
    default_acl: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # acldefault per object kind
    major: int = 0

    @property
    def objects(self) -> Mapping[str, Mapping[str, Any]]:
        return self.snapshot.objects

    def get(self, key: str) -> Mapping[str, Any]:
        return self.snapshot.objects.get(key) or {}

    def backing_indexes(self) -> set[str]:
        """Index names that belong to a constraint (made and dropped with it)."""
        return set(self.constraint_index.values())


_USER_SCHEMA = "{n}.nspname !~ '^pg_' AND {n}.nspname <> 'information_schema' AND {n}.nspname <> ALL (%(exclude)s::name[])"
_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
    "AND e.objid = {oid} AND e.deptype IN ('e', 'i'))"
)
_FUNCTION_KEY = (
    "CASE {p}.prokind WHEN 'p' THEN 'procedure ' ELSE 'function ' END || quote_ident({n}.nspname) || '.' "
    "|| quote_ident({p}.proname) || '(' || oidvectortypes({p}.proargtypes) || ')'"
)
_RELATION_KEY = (
    "CASE {c}.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized_view ' WHEN 'S' THEN 'sequence ' "
    "WHEN 'i' THEN 'index ' WHEN 'I' THEN 'index ' ELSE 'table ' END "
    "|| quote_ident({n}.nspname) || '.' || quote_ident({c}.relname)"
)
_Q = "quote_ident({n}.nspname) || '.' || quote_ident({c}.relname)"

_FUNCTIONS_SQL = f"""
SELECT {_FUNCTION_KEY.format(p='p', n='n')}, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p') AND {_USER_SCHEMA.format(n='n')}
  AND {_NOT_EXTENSION.format(catalog='pg_proc', oid='p.oid')}
"""

_VIEW_COLUMNS_SQL = f"""
SELECT {_RELATION_KEY.format(c='c', n='n')},
       json_agg(json_build_array(a.attname::text, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('v', 'm') AND {_USER_SCHEMA.format(n='n')}
GROUP BY c.relkind, n.nspname, c.relname
"""

# What views (through their rewrite rule) and triggers use: relations,
# columns and functions.
_DEPENDS_SQL = f"""
WITH uses AS (
    SELECT {_RELATION_KEY.format(c='vc', n='vn')} AS key, d.refclassid, d.refobjid, d.refobjsubid
    FROM pg_rewrite r JOIN pg_class vc ON vc.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = vc.relnamespace
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    WHERE vc.relkind IN ('v', 'm') AND {_USER_SCHEMA.format(n='vn')}
      AND NOT (d.refclassid = 'pg_class'::regclass AND d.refobjid = r.ev_class)
    UNION ALL
    SELECT 'trigger ' || {_Q.format(c='tc', n='tn')} || '.' || quote_ident(t.tgname), d.refclassid, d.refobjid, d.refobjsubid
    FROM pg_trigger t JOIN pg_class tc ON tc.oid = t.tgrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
    JOIN pg_depend d ON d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
    WHERE NOT t.tgisinternal AND {_USER_SCHEMA.format(n='tn')}
)
SELECT DISTINCT uses.key,
    CASE WHEN uses.refclassid = 'pg_class'::regclass THEN {_RELATION_KEY.format(c='rc', n='rn')}
         WHEN uses.refclassid = 'pg_proc'::regclass THEN {_FUNCTION_KEY.format(p='p', n='pn')}
    END,
    CASE WHEN uses.refclassid = 'pg_class'::regclass AND uses.refobjsubid > 0
         THEN 'column ' || {_Q.format(c='rc', n='rn')} || '.' || quote_ident(a.attname)
    END
FROM uses
LEFT JOIN pg_class rc ON uses.refclassid = 'pg_class'::regclass AND rc.oid = uses.refobjid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = rc.oid AND a.attnum = uses.refobjsubid AND uses.refobjsubid > 0
LEFT JOIN pg_proc p ON uses.refclassid = 'pg_proc'::regclass AND p.oid = uses.refobjid
LEFT JOIN pg_namespace pn ON pn.oid = p.pronamespace
"""

# Columns each index and constraint involves (a constraint's own columns and,
# for a foreign key, the referenced ones).
_COLUMNS_OF_SQL = f"""
SELECT 'index ' || {_Q.format(c='ic', n='n')}, 'column ' || {_Q.format(c='tc', n='tn')} || '.' || quote_ident(a.attname)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 AND (
    a.attnum = ANY (i.indkey::int2[])
    OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
               AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
WHERE {_USER_SCHEMA.format(n='n')}
UNION
SELECT 'constraint ' || {_Q.format(c='tc', n='tn')} || '.' || quote_ident(c.conname),
       'column ' || {_Q.format(c='ac', n='an')} || '.' || quote_ident(a.attname)
FROM pg_constraint c JOIN pg_class tc ON tc.oid = c.conrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
JOIN pg_attribute a ON (a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
                    OR (a.attrelid = c.confrelid AND a.attnum = ANY (c.confkey))
JOIN pg_class ac ON ac.oid = a.attrelid JOIN pg_namespace an ON an.oid = ac.relnamespace
WHERE c.contype <> 'n' AND {_USER_SCHEMA.format(n='tn')}
"""

_CONSTRAINTS_SQL = f"""
SELECT 'constraint ' || {_Q.format(c='tc', n='tn')} || '.' || quote_ident(c.conname),
       (SELECT {_Q.format(c='fc', n='fn')} FROM pg_class fc JOIN pg_namespace fn ON fn.oid = fc.relnamespace
        WHERE fc.oid = c.confrelid AND c.contype = 'f'),
       (SELECT {_Q.format(c='xc', n='xn')} FROM pg_class xc JOIN pg_namespace xn ON xn.oid = xc.relnamespace
        WHERE xc.oid = c.conindid AND c.contype IN ('p', 'u', 'x'))
FROM pg_constraint c JOIN pg_class tc ON tc.oid = c.conrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
WHERE c.contype <> 'n' AND {_USER_SCHEMA.format(n='tn')}
"""

_DEFAULT_ACL_SQL = """
SELECT k, acldefault(k::"char", (SELECT oid FROM pg_roles WHERE rolname = current_user))::text[]
FROM unnest(ARRAY['r', 's', 'f', 'n', 'T']) AS k
"""


def read_catalog(conn: psycopg.Connection[Any], snapshot: Snapshot, *, exclude: Sequence[str] = ("harness",)) -> Catalog:
    """The snapshot's companion facts, read with the snapshot's pinned settings (names print the same)."""
    params = {"exclude": list(exclude)}
    depends: dict[str, set[str]] = {}
    columns_of: dict[str, set[str]] = {}
    references: dict[str, str] = {}
    constraint_index: dict[str, str] = {}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT set_config('search_path', 'pg_catalog, pg_temp', true), "
            "set_config('quote_all_identifiers', 'off', true)"
        )
        functions = dict(cur.execute(_FUNCTIONS_SQL, params).fetchall())
        view_columns = {
            key: tuple((name, type_) for name, type_ in json.loads(text))
            for key, text in cur.execute(_VIEW_COLUMNS_SQL, params).fetchall()
        }
        for key, used, column in cur.execute(_DEPENDS_SQL, params).fetchall():
            for found in (used, column):
                if found is not None and found != key:
                    depends.setdefault(key, set()).add(found)
        for key, column in cur.execute(_COLUMNS_OF_SQL, params).fetchall():
            columns_of.setdefault(key, set()).add(column)
        for key, referenced, index in cur.execute(_CONSTRAINTS_SQL, params).fetchall():
            if referenced:
                references[key] = referenced
            if index:
                constraint_index[key] = index
        default_acl = {k: tuple(v) for k, v in cur.execute(_DEFAULT_ACL_SQL).fetchall()}
    return Catalog(
        snapshot=snapshot,
        functions=functions,
        view_columns=view_columns,
        depends={k: frozenset(v) for k, v in depends.items()},
        columns_of={k: frozenset(v) for k, v in columns_of.items()},
        references=references,
        constraint_index=constraint_index,
        default_acl=default_acl,
        major=conn.info.server_version // 10000,
    )


# --------------------------------------------------------------------------
# Statements and actions


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


# Privilege letters of an aclitem, in the order GRANT lists them.
_PRIVILEGES = {
    "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
    "t": "TRIGGER", "m": "MAINTAIN", "X": "EXECUTE", "U": "USAGE", "C": "CREATE", "c": "CONNECT",
    "T": "TEMPORARY", "s": "SET", "A": "ALTER SYSTEM",
}
_ACL_KIND = {
    "table": "r", "view": "r", "materialized_view": "r", "sequence": "s", "function": "f", "procedure": "f",
    "schema": "n", "enum": "T", "domain": "T", "composite": "T", "range": "T",
}


def _acl_entries(items: Iterable[str]) -> dict[str | None, tuple[frozenset[str], frozenset[str]]]:
    """aclitem texts → grantee (None: PUBLIC) → (privileges, privileges with grant option)."""
    found: dict[str | None, tuple[set[str], set[str]]] = {}
    for item in items:
        grantee, i = _acl_name(item, 0)
        if item[i : i + 1] != "=":
            continue
        privs, _, _grantor = item[i + 1 :].rpartition("/")
        have, grantable = found.setdefault(grantee or None, (set(), set()))
        for pos, letter in enumerate(privs):
            if letter == "*":
                continue
            have.add(letter)
            if privs[pos + 1 : pos + 2] == "*":
                grantable.add(letter)
    return {k: (frozenset(v[0]), frozenset(v[1])) for k, v in found.items()}


def _acl_name(text: str, i: int) -> tuple[str, int]:
    """A role name as aclitem prints it (quoted when it holds odd characters), and where it ends."""
    if text[i : i + 1] != '"':
        j = i
        while j < len(text) and text[j] != "=":
            j += 1
        return text[i:j], j
    out, j = [], i + 1
    while j < len(text):
        if text[j] == '"':
            if text[j + 1 : j + 2] == '"':
                out.append('"')
                j += 2
                continue
            return "".join(out), j + 1
        out.append(text[j])
        j += 1
    return "".join(out), j


def _privilege_list(letters: Iterable[str]) -> str:
    chosen = set(letters)
    return ", ".join(name for letter, name in _PRIVILEGES.items() if letter in chosen)


def _grantee(role: str | None) -> str:
    return "PUBLIC" if role is None else _quote(role)


def _grant_target(key: str, attrs: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(``ON ...`` target, column list or "") of an object's GRANT."""
    object_type, name = split_key(key)
    if object_type == "column":
        table, column = _owner(name)
        return f"TABLE {table}", f" ({column})"
    kind = {
        "schema": "SCHEMA", "table": "TABLE", "view": "TABLE", "materialized_view": "TABLE",
        "sequence": "SEQUENCE", "function": "FUNCTION", "procedure": "PROCEDURE", "domain": "DOMAIN",
        "enum": "TYPE", "composite": "TYPE", "range": "TYPE",
    }[object_type]
    if object_type == "table" and attrs and attrs.get("kind") == "foreign":
        kind = "FOREIGN TABLE"
    return f"{kind} {name}", ""


def _comment_target(key: str, attrs: Mapping[str, Any] | None = None) -> str:
    object_type, name = split_key(key)
    if object_type in ("constraint", "trigger", "rule", "policy"):
        table, local = _owner(name)
        return f"{object_type.upper()} {local} ON {table}"
    kind = {
        "schema": "SCHEMA", "extension": "EXTENSION", "table": "TABLE", "column": "COLUMN", "index": "INDEX",
        "sequence": "SEQUENCE", "view": "VIEW", "materialized_view": "MATERIALIZED VIEW",
        "function": "FUNCTION", "procedure": "PROCEDURE", "enum": "TYPE", "composite": "TYPE",
        "range": "TYPE", "domain": "DOMAIN",
    }[object_type]
    if object_type == "table" and attrs and attrs.get("kind") == "foreign":
        kind = "FOREIGN TABLE"
    return f"{kind} {name}"


def _comment_sql(key: str, text: str | None, attrs: Mapping[str, Any] | None = None) -> Stmt:
    value = "NULL" if text is None else literal(text)
    return Stmt(f"COMMENT ON {_comment_target(key, attrs)} IS {value}")


# --------------------------------------------------------------------------
# SQL of single objects


def _column_def(column: str, a: Mapping[str, Any], *, not_null: bool = True, default: bool = True) -> str:
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


def _index_sql(definition: str, *, concurrently: bool) -> str:
    """pg_get_indexdef text made re-runnable (and concurrent when asked)."""
    extra = "CONCURRENTLY IF NOT EXISTS " if concurrently else "IF NOT EXISTS "
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", lambda m: f"CREATE {m.group(1) or ''}INDEX {extra}", definition, count=1)


def _deferrable(definition: str) -> str:
    match = re.search(r"\s(DEFERRABLE(?: INITIALLY DEFERRED)?)$", definition)
    return f" {match.group(1)}" if match else ""


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


def _toposort(keys: Iterable[str], depends: Mapping[str, frozenset[str]]) -> list[str]:
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


# --------------------------------------------------------------------------
# From two catalogs to actions

# Ranks: the order of actions inside a migration (drops of dependents first,
# creations in dependency order, drops of what others depended on last).
_R_DROP_TRIGGER, _R_DROP_POLICY, _R_DROP_RULE, _R_DROP_VIEW, _R_DROP_CONSTRAINT, _R_DROP_INDEX = 10, 11, 12, 13, 14, 15
_R_SCHEMA, _R_EXTENSION, _R_TYPE, _R_SEQUENCE, _R_FUNCTION = 20, 21, 22, 23, 24
_R_TABLE, _R_ALTER, _R_UNOWN, _R_DROP_COLUMN, _R_DROP_TABLE, _R_SEQUENCE_ALTER, _R_FUNCTION_LATE = (
    30, 31, 31.5, 32, 33, 34, 35)
_R_CONSTRAINT, _R_FOREIGN_KEY, _R_INDEX = 40, 41, 42
_R_VIEW, _R_TRIGGER, _R_RULE, _R_POLICY, _R_DECORATE = 50, 55, 56, 60, 70
_R_DROP_FUNCTION, _R_DROP_SEQUENCE, _R_DROP_TYPE, _R_DROP_EXTENSION, _R_DROP_SCHEMA = 80, 81, 82, 83, 84
# ... and in the migration without a transaction:
# Validations come before SET NOT NULL: when this migration runs in one transaction, no scan then
# happens while an ACCESS EXCLUSIVE lock is held.
_O_DROP_INDEX, _O_CREATE_INDEX, _O_VALIDATE, _O_NOT_NULL, _O_USING_INDEX, _O_LATE_FK, _O_LATE_VALIDATE = (
    10, 20, 22, 25, 30, 35, 40)

_DECORATION = ("acl", "comment")


class Builder:
    """Turn the diff from the current catalog to the desired one into actions."""

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
        self.cur_tables = self._names(cur, "table")
        self.des_tables = self._names(des, "table")
        self.dropped_tables = self.cur_tables - self.des_tables
        self.added_tables = self.des_tables - self.cur_tables
        self.kept_tables = self.cur_tables & self.des_tables
        cur_columns, des_columns = self._names(cur, "column"), self._names(des, "column")
        self.dropped_columns = {c for c in cur_columns - des_columns if _owner(c)[0] in self.kept_tables}
        self.added_columns = {c for c in des_columns - cur_columns if _owner(c)[0] in self.kept_tables}
        self.retyped_columns: set[str] = set()
        self.replaced_functions: set[str] = set()
        self.view_drops: set[str] = set()
        self.view_creates: set[str] = set()
        self.online_unique_keys: set[frozenset[str]] = set()  # columns of unique/pk keys added online

    @staticmethod
    def _names(cat: Catalog, object_type: str) -> set[str]:
        prefix = object_type + " "
        return {k[len(prefix):] for k in cat.objects if k.startswith(prefix)}

    def _keys(self, cat: Catalog, *types: str) -> set[str]:
        return {k for k in cat.objects if split_key(k)[0] in types}

    def _add(
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
        self._seq += 1
        covered = frozenset(covers)
        action = Action(phase, rank, list(up), list(down), frozenset(refs) | covered, covered, sub, self._seq,
                         tuple(enum_values))
        self.actions.append(action)
        return action

    def _manual(self, key: str, message: str) -> None:
        self.notices.append(Notice("manual", key, message))
        self.manual_covers.add(key)

    # ------------------------------------------------------------ decoration

    def _acl(self, key: str, before: Sequence[str] | None, after: Sequence[str] | None,
             attrs: Mapping[str, Any] | None = None) -> list[Stmt]:
        """GRANT/REVOKE statements that turn the *before* privileges into *after* (None: the defaults)."""
        object_type, _ = split_key(key)
        kind = _ACL_KIND.get(object_type)
        default = list(self.des.default_acl.get(kind, ())) if kind else []
        old = _acl_entries(before if before is not None else default)
        new = _acl_entries(after if after is not None else default)
        if old == new:
            return []
        target, columns = _grant_target(key, attrs)

        def privileges(letters: Iterable[str]) -> str:
            if not columns:
                return _privilege_list(letters)
            return ", ".join(f"{p}{columns}" for p in _privilege_list(letters).split(", "))

        out: list[Stmt] = []
        for role in sorted(set(old) | set(new), key=lambda r: (r is not None, r or "")):
            had, had_option = old.get(role, (frozenset(), frozenset()))
            has, has_option = new.get(role, (frozenset(), frozenset()))
            plain = (has - had) - has_option
            with_option = has_option - had_option
            removed = had - has
            option_removed = (had_option - has_option) - removed
            who = _grantee(role)
            if plain:
                out.append(Stmt(f"GRANT {privileges(plain)} ON {target} TO {who}"))
            if with_option:
                out.append(Stmt(f"GRANT {privileges(with_option)} ON {target} TO {who} WITH GRANT OPTION"))
            if removed:
                out.append(Stmt(f"REVOKE {privileges(removed)} ON {target} FROM {who}"))
            if option_removed:
                out.append(Stmt(f"REVOKE GRANT OPTION FOR {privileges(option_removed)} ON {target} FROM {who}"))
        return out

    def _decorate(self, cat: Catalog, key: str) -> list[Stmt]:
        """Privileges and comment of an object just created from *cat*."""
        attrs = cat.get(key)
        out = self._acl(key, None, attrs.get("acl"), attrs) if "acl" in attrs else []
        if attrs.get("comment") is not None:
            out.append(_comment_sql(key, attrs["comment"], attrs))
        if cat is self.des:
            self.fresh.add(key)
        return out

    # ------------------------------------------------------------ renames

    def find_renames(self) -> None:
        """Pair dropped and added columns (same table, same type) and tables (same columns) as questions."""
        for table in sorted(self.kept_tables):
            dropped = sorted(c for c in self.dropped_columns if _owner(c)[0] == table)
            added = sorted(c for c in self.added_columns if _owner(c)[0] == table)
            for old in dropped:
                old_type = self.cur.get(object_key("column", old)).get("type")
                match = next((a for a in added if self.des.get(object_key("column", a)).get("type") == old_type), None)
                if match is None:
                    continue
                added.remove(match)
                old_name, new_name = _owner(old)[1], _owner(match)[1]
                self.questions.append(
                    Question(
                        message=f"column {old} ({old_type}) is gone and {match} ({old_type}) is new",
                        rename_up=[f"ALTER TABLE {table} RENAME COLUMN {old_name} TO {new_name};"],
                        rename_down=[f"ALTER TABLE {table} RENAME COLUMN {new_name} TO {old_name};"],
                        keys=frozenset({object_key("column", old), object_key("column", match)}),
                        object=f"column {old} -> {match}",
                    )
                )
        added_tables = sorted(self.added_tables)
        for old in sorted(self.dropped_tables):
            signature = self._table_signature(self.cur, old)
            match = next((t for t in added_tables if signature and self._table_signature(self.des, t) == signature), None)
            if match is None:
                continue
            added_tables.remove(match)
            up = [f"ALTER TABLE {old} RENAME TO {_local(match)};"]
            down = [f"ALTER TABLE {_schema_of(old)}.{_local(match)} RENAME TO {_local(old)};"]
            if _schema_of(old) != _schema_of(match):
                up.append(f"ALTER TABLE {_schema_of(old)}.{_local(match)} SET SCHEMA {_schema_of(match)};")
                down.insert(0, f"ALTER TABLE {match} SET SCHEMA {_schema_of(old)};")
            self.questions.append(
                Question(
                    message=f"table {old} is gone and table {match} with the same columns is new",
                    rename_up=up,
                    rename_down=down,
                    keys=frozenset({object_key("table", old), object_key("table", match)}),
                    object=f"table {old} -> {match}",
                )
            )

    def _table_signature(self, cat: Catalog, table: str) -> tuple[tuple[str, str], ...]:
        columns = cat.get(object_key("table", table)).get("column_order") or []
        return tuple(sorted((c, str(cat.get(object_key("column", f"{table}.{c}")).get("type"))) for c in columns))

    def group_questions(self) -> None:
        """Move the actions a question is about (and what builds on them) out of the migration."""
        for question in self.questions:
            members = [a for a in self.actions if a.refs & question.keys]
            covered = set(question.keys)
            for action in members:
                covered |= action.covers
            grew = True
            while grew:
                grew = False
                for action in self.actions:
                    if action not in members and action.refs & covered:
                        members.append(action)
                        covered |= action.covers
                        grew = True
            question.actions = sorted(members, key=Action.sort_key)
            self.actions = [a for a in self.actions if a not in members]

    # ------------------------------------------------------------ schemas, extensions, types

    def schemas(self) -> None:
        cur, des = self._names(self.cur, "schema"), self._names(self.des, "schema")
        for name in sorted(des - cur):
            key = object_key("schema", name)
            self._add(MAIN, _R_SCHEMA, [Stmt(f"CREATE SCHEMA IF NOT EXISTS {name}"), *self._decorate(self.des, key)],
                      [Stmt(f"DROP SCHEMA IF EXISTS {name}")], covers=[key])
        for name in sorted(cur - des):
            key = object_key("schema", name)
            self._add(
                MAIN, _R_DROP_SCHEMA,
                [Stmt(f"DROP SCHEMA IF EXISTS {name}", "DESTRUCTIVE",
                       f"drops schema {name} (everything in it the desired schema lacks is dropped above)",
                       subject=key)],
                [Stmt(f"CREATE SCHEMA IF NOT EXISTS {name}"), *self._decorate(self.cur, key)],
                covers=[key],
            )

    def extensions(self) -> None:
        cur, des = self._names(self.cur, "extension"), self._names(self.des, "extension")
        for name in sorted(des - cur):
            a = self.des.get(object_key("extension", name))
            self._add(MAIN, _R_EXTENSION,
                      [Stmt(f"CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {_quote(a['schema'])}")],
                      [Stmt(f"DROP EXTENSION IF EXISTS {name}")], covers=[object_key("extension", name)])
        for name in sorted(cur - des):
            a = self.cur.get(object_key("extension", name))
            self._add(
                MAIN, _R_DROP_EXTENSION,
                [Stmt(f"DROP EXTENSION IF EXISTS {name}", "DESTRUCTIVE",
                       f"drops extension {name} (and fails while something still uses its objects)",
                       subject=object_key("extension", name))],
                [Stmt(f"CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {_quote(a['schema'])} "
                       f"VERSION {literal(a['version'])}")],
                covers=[object_key("extension", name)],
            )
        for name in sorted(cur & des):
            key = object_key("extension", name)
            old, new = self.cur.get(key), self.des.get(key)
            if old.get("schema") != new.get("schema"):
                def move(schema: str) -> Stmt:
                    condition = (f"EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = {literal(_raw(name))} "
                                 f"AND extnamespace <> {literal(_quote(schema))}::regnamespace)")
                    return Stmt(_guard(condition, f"ALTER EXTENSION {name} SET SCHEMA {_quote(schema)}"))
                self._add(MAIN, _R_EXTENSION, [move(new["schema"])], [move(old["schema"])], covers=[key])
            if old.get("version") != new.get("version"):
                self._add(MAIN, _R_EXTENSION, [Stmt(f"ALTER EXTENSION {name} UPDATE TO {literal(new['version'])}")],
                          [Stmt(f"ALTER EXTENSION {name} UPDATE TO {literal(old['version'])}")], covers=[key])

    def _type_sql(self, cat: Catalog, key: str) -> str | None:
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
        return _guard(f"to_regtype({literal(name)}) IS NULL", create)

    def types(self) -> None:
        kinds = ("enum", "range", "domain", "composite")
        cur, des = self._keys(self.cur, *kinds), self._keys(self.des, *kinds)
        for key in sorted(des - cur, key=lambda k: (kinds.index(split_key(k)[0]), k)):
            create = self._type_sql(self.des, key)
            object_type, name = split_key(key)
            drop = "DOMAIN" if object_type == "domain" else "TYPE"
            self._add(MAIN, _R_TYPE, [Stmt(create or ""), *self._decorate(self.des, key)],
                      [Stmt(f"DROP {drop} IF EXISTS {name}")], covers=[key], sub=kinds.index(object_type))
        for key in sorted(cur - des):
            object_type, name = split_key(key)
            drop = "DOMAIN" if object_type == "domain" else "TYPE"
            self._add(MAIN, _R_DROP_TYPE, [Stmt(f"DROP {drop} IF EXISTS {name}")],
                      [Stmt(self._type_sql(self.cur, key) or ""), *self._decorate(self.cur, key)],
                      covers=[key], sub=-kinds.index(object_type))
        for key in sorted(cur & des):
            old, new = self.cur.get(key), self.des.get(key)
            changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(_DECORATION)
            if not changed:
                continue
            if split_key(key)[0] == "enum" and changed == {"values"}:
                self._enum_values(key, list(old["values"]), list(new["values"]))
            else:
                self._manual(key, f"{', '.join(sorted(changed))} changed; changing an existing "
                                  f"{split_key(key)[0]} needs a hand-written migration")

    def _enum_values(self, key: str, old: list[str], new: list[str]) -> None:
        name = split_key(key)[1]
        removed = [v for v in old if v not in new]
        added = [v for v in new if v not in old]
        if removed:
            self._manual(key, f"value{'s' if len(removed) > 1 else ''} {', '.join(literal(v) for v in removed)} removed: "
                              "PostgreSQL cannot drop an enum value; write a migration that moves the rows off it and "
                              "re-creates the type (or, for a rename, ALTER TYPE ... RENAME VALUE)")
        if [v for v in old if v in new] != [v for v in new if v in old]:
            self._manual(key, "the order of existing values changed; PostgreSQL cannot reorder enum values: "
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
        self._add(MAIN, _R_TYPE, up, self._enum_recreate(key, old, added), covers=[key],
                  enum_values=[literal(v) for v in added])

    def _enum_recreate(self, key: str, values: list[str], added: list[str]) -> list[Stmt]:
        """Down of new enum values: PostgreSQL cannot drop one, so the type is re-created without them."""
        name = split_key(key)[1]
        schema, local = _schema_of(name), _local(name)
        old_local = _made_name(_raw(local), suffix="harness_old")
        body = [f"ALTER TYPE {name} RENAME TO {old_local};",
                f"CREATE TYPE {name} AS ENUM ({', '.join(literal(v) for v in values)});"]
        for column_key in sorted(self._keys(self.cur, "column")):
            a = self.cur.get(column_key)
            type_ = str(a.get("type"))
            if type_ not in (name, name + "[]"):
                continue
            table, column = _owner(split_key(column_key)[1])
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
        statement = Stmt(_guard(condition, "\n".join(body)),
                          note=f"PostgreSQL cannot drop enum values: {name} is re-created without {labels} "
                               "(fails while rows, functions or views still use them)")
        return [statement, *self._decorate(self.cur, key)]

    # ------------------------------------------------------------ sequences, functions

    def _sequence_sql(self, cat: Catalog, key: str) -> str:
        name = split_key(key)[1]
        a = cat.get(key)
        unlogged = "UNLOGGED " if a.get("persistence") == "unlogged" else ""
        cycle = "CYCLE" if a.get("cycle") else "NO CYCLE"
        return (f"CREATE {unlogged}SEQUENCE IF NOT EXISTS {name} AS {a['type']} INCREMENT BY {a['increment']} "
                f"MINVALUE {a['min']} MAXVALUE {a['max']} START WITH {a['start']} CACHE {a['cache']} {cycle}")

    def _owned(self, key: str, owner: str, *, early: bool, restore: bool = False) -> None:
        """``OWNED BY`` a column after tables exist (late), or ``OWNED BY NONE`` before drops (early)."""
        name = split_key(key)[1]
        table = _owner(owner)[0]
        own = Stmt(f"ALTER SEQUENCE IF EXISTS {name} OWNED BY {owner}")
        none = Stmt(f"ALTER SEQUENCE IF EXISTS {name} OWNED BY NONE")
        refs = [key, object_key("column", owner), object_key("table", table)]
        if early:
            self._add(MAIN, _R_UNOWN, [none], [own], covers=[key], refs=refs)
        else:
            self._add(MAIN, _R_SEQUENCE_ALTER, [own], [none], covers=[key], refs=refs)

    def sequences(self) -> None:
        cur, des = self._keys(self.cur, "sequence"), self._keys(self.des, "sequence")
        for key in sorted(des - cur):
            name = split_key(key)[1]
            self._add(MAIN, _R_SEQUENCE, [Stmt(self._sequence_sql(self.des, key)), *self._decorate(self.des, key)],
                      [Stmt(f"DROP SEQUENCE IF EXISTS {name}")], covers=[key])
            if self.des.get(key).get("owned_by"):
                self._owned(key, self.des.get(key)["owned_by"], early=False)
        for key in sorted(cur - des):
            name = split_key(key)[1]
            if key in self.implied:
                continue  # dropped with the table or column that owns it
            if self.cur.get(key).get("owned_by"):
                self._owned(key, self.cur.get(key)["owned_by"], early=True)
            self._add(MAIN, _R_DROP_SEQUENCE,
                      [Stmt(f"DROP SEQUENCE IF EXISTS {name}", "DESTRUCTIVE",
                             f"drops sequence {name} and its current value", subject=key)],
                      [Stmt(self._sequence_sql(self.cur, key)), *self._decorate(self.cur, key)], covers=[key])
        options = (("type", "AS {}"), ("increment", "INCREMENT BY {}"), ("min", "MINVALUE {}"),
                   ("max", "MAXVALUE {}"), ("start", "START WITH {}"), ("cache", "CACHE {}"))
        for key in sorted(cur & des):
            name = split_key(key)[1]
            old, new = self.cur.get(key), self.des.get(key)
            up = [fmt.format(new[k]) for k, fmt in options if old.get(k) != new.get(k)]
            down = [fmt.format(old[k]) for k, fmt in options if old.get(k) != new.get(k)]
            if old.get("cycle") != new.get("cycle"):
                up.append("CYCLE" if new.get("cycle") else "NO CYCLE")
                down.append("CYCLE" if old.get("cycle") else "NO CYCLE")
            if up:
                self._add(MAIN, _R_SEQUENCE_ALTER, [Stmt(f"ALTER SEQUENCE {name} {' '.join(up)}")],
                          [Stmt(f"ALTER SEQUENCE {name} {' '.join(down)}")], covers=[key])
            if old.get("persistence") != new.get("persistence"):
                logged = {"permanent": "LOGGED", "unlogged": "UNLOGGED"}
                self._add(MAIN, _R_SEQUENCE_ALTER,
                          [Stmt(f"ALTER SEQUENCE {name} SET {logged.get(new['persistence'], 'LOGGED')}")],
                          [Stmt(f"ALTER SEQUENCE {name} SET {logged.get(old['persistence'], 'LOGGED')}")],
                          covers=[key])
            if old.get("owned_by") != new.get("owned_by"):
                if old.get("owned_by"):
                    self._owned(key, old["owned_by"], early=True)
                if new.get("owned_by"):
                    self._owned(key, new["owned_by"], early=False)

    def _function_stmts(self, cat: Catalog, key: str, *, decorate: bool = True) -> list[Stmt] | None:
        definition = cat.functions.get(key)
        if definition is None:
            return None
        return [Stmt(definition.rstrip(), function=True), *(self._decorate(cat, key) if decorate else ())]

    def _drop_function(self, key: str) -> Stmt:
        object_type, name = split_key(key)
        return Stmt(f"DROP {object_type.upper()} IF EXISTS {name}")

    def functions(self) -> None:
        cur, des = self._keys(self.cur, "function", "procedure"), self._keys(self.des, "function", "procedure")
        new_relations = {split_key(k)[1] for k in self._keys(self.des, "table", "view", "materialized_view")} - {
            split_key(k)[1] for k in self._keys(self.cur, "table", "view", "materialized_view")}

        def rank(key: str) -> float:
            a = self.des.get(key)
            signature = f"{a.get('arguments')} {a.get('result')}"
            return _R_FUNCTION_LATE if any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", signature)
                                           for t in new_relations) else _R_FUNCTION

        for key in sorted(des - cur):
            create = self._function_stmts(self.des, key)
            if create is None:
                self._manual(key, f"a new {self.des.get(key).get('kind')}: write it by hand (only functions and "
                                  "procedures are generated)")
                continue
            self._add(MAIN, rank(key), create, [self._drop_function(key)], covers=[key])
        for key in sorted(cur - des):
            restore = self._function_stmts(self.cur, key)
            if restore is None:
                self._manual(key, f"a removed {self.cur.get(key).get('kind')}: drop it by hand")
                continue
            self._add(MAIN, _R_DROP_FUNCTION, [self._drop_function(key)], restore, covers=[key])
        for key in sorted(cur & des):
            old, new = self.cur.get(key), self.des.get(key)
            changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(_DECORATION)
            if not changed:
                continue
            replace = bool(changed & {"arguments", "result", "kind"})
            create = self._function_stmts(self.des, key, decorate=replace)
            restore = self._function_stmts(self.cur, key, decorate=replace)
            if create is None or restore is None:
                self._manual(key, f"{', '.join(sorted(changed))} changed: change this {new.get('kind')} by hand")
                continue
            if replace:
                # CREATE OR REPLACE cannot change the result type, argument names or defaults.
                self.replaced_functions.add(key)
                self._add(MAIN, rank(key), [self._drop_function(key), *create],
                          [self._drop_function(key), *restore], covers=[key])
            else:
                self._add(MAIN, rank(key), create, restore, covers=[key])

    # ------------------------------------------------------------ tables and columns

    def _relation_kind(self, cat: Catalog, name: str) -> str:
        for object_type in ("table", "materialized_view", "view"):
            if object_key(object_type, name) in cat.objects:
                return object_type
        return "table"

    def _sub_objects(self, cat: Catalog, object_type: str, relation: str) -> list[str]:
        prefix = f"{object_type} {relation}."
        return sorted(k for k in cat.objects if k.startswith(prefix) and _owner(split_key(k)[1])[0] == relation)

    def _constraints_of(self, cat: Catalog, table: str) -> list[str]:
        order = {"primary key": 0, "unique": 1, "exclusion": 2, "check": 3, "foreign key": 4}
        return sorted(self._sub_objects(cat, "constraint", table),
                      key=lambda k: (order.get(str(cat.get(k).get("type")), 5), k))

    def _indexes_of(self, cat: Catalog, relation: str) -> list[str]:
        backing = cat.backing_indexes()
        return sorted(k for k, a in cat.objects.items()
                      if k.startswith("index ") and a.get("table") == relation and split_key(k)[1] not in backing)

    def _constraint_refs(self, cat: Catalog, key: str) -> set[str]:
        table = _owner(split_key(key)[1])[0]
        refs = {key, object_key("table", table), *cat.columns_of.get(key, ())}
        if key in cat.references:
            refs.add(object_key("table", cat.references[key]))
        return refs

    def _add_constraint(self, cat: Catalog, key: str, *, not_valid: bool | None = None,
                        using_index: str | None = None) -> Stmt:
        table, name = _owner(split_key(key)[1])
        a = cat.get(key)
        if using_index:
            kind = "PRIMARY KEY" if a["type"] == "primary key" else "UNIQUE"
            clause = f"{kind} USING INDEX {using_index}{_deferrable(a['definition'])}"
        else:
            clause = str(a["definition"])
            skip = (not a.get("validated", True)) if not_valid is None else not_valid
            if skip and a.get("type") in ("check", "foreign key"):
                clause += " NOT VALID"
        return Stmt(_guard(_no_constraint(table, name), f"ALTER TABLE {table} ADD CONSTRAINT {name} {clause}"))

    def _create_table_sql(self, cat: Catalog, table: str) -> str:
        a = cat.get(object_key("table", table))
        unlogged = "UNLOGGED " if a.get("persistence") == "unlogged" else ""
        if a.get("partition_of"):
            text = f"CREATE {unlogged}TABLE IF NOT EXISTS {table} PARTITION OF {a['partition_of']}\n    {a['partition_bound']}"
        else:
            columns = [
                "    " + _column_def(column, cat.get(object_key("column", f"{table}.{column}")))
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

    def _owned_sequences(self, columns: Iterable[str]) -> list[str]:
        """Sequences of the current schema owned by one of *columns* that the desired schema drops too."""
        owners = set(columns)
        return sorted(k for k in self._keys(self.cur, "sequence") - self._keys(self.des, "sequence")
                      if self.cur.get(k).get("owned_by") in owners)

    def _sequence_bundle(self, sequences: Sequence[str]) -> tuple[list[Stmt], list[Stmt]]:
        """Re-create dropped owned sequences: before their table or column, and owned after it."""
        before = [s for key in sequences for s in (Stmt(self._sequence_sql(self.cur, key)), *self._decorate(self.cur, key))]
        after = [Stmt(f"ALTER SEQUENCE IF EXISTS {split_key(key)[1]} OWNED BY {self.cur.get(key)['owned_by']}")
                 for key in sequences]
        self.implied |= set(sequences)
        return before, after

    def _table_bundle(self, cat: Catalog, table: str, *, dependents: bool) -> tuple[list[Stmt], set[str]]:
        """Everything that (re)creates *table* as *cat* has it, except foreign keys."""
        table_key = object_key("table", table)
        a = cat.get(table_key)
        stmts = [Stmt(self._create_table_sql(cat, table))]
        decorated = [table_key] + [object_key("column", f"{table}.{c}") for c in a.get("column_order") or []]
        for key in self._constraints_of(cat, table):
            if cat.get(key).get("type") in ("foreign key", "trigger"):
                continue
            stmts.append(self._add_constraint(cat, key))
            decorated.append(key)
            if key in cat.constraint_index:
                decorated.append(object_key("index", cat.constraint_index[key]))
        for key in self._indexes_of(cat, table):
            stmts.append(Stmt(_index_sql(cat.get(key)["definition"], concurrently=False)))
            decorated.append(key)
        if a.get("rls_enabled"):
            stmts.append(Stmt(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
        if a.get("rls_forced"):
            stmts.append(Stmt(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
        for key in decorated:
            stmts.extend(self._decorate(cat, key))
        covers = set(decorated)
        if dependents:
            for key in self._sub_objects(cat, "trigger", table):
                stmts.extend(self._trigger_stmts(cat, key))
                covers.add(key)
            for key in self._sub_objects(cat, "rule", table):
                stmts.extend(self._rule_stmts(cat, key))
                covers.add(key)
            for key in self._sub_objects(cat, "policy", table):
                stmts.extend([self._policy_stmt(cat, key, guarded=True), *self._decorate(cat, key)])
                covers.add(key)
        return stmts, covers

    def _depth(self, cat: Catalog, table: str, seen: tuple[str, ...] = ()) -> int:
        a = cat.get(object_key("table", table))
        parents = ([a["partition_of"]] if a.get("partition_of") else []) + list(a.get("inherits") or [])
        return 1 + max((self._depth(cat, p, (*seen, table)) for p in parents if p not in seen), default=-1)

    def tables(self) -> None:
        for table in sorted(self.added_tables, key=lambda t: (self._depth(self.des, t), t)):
            key = object_key("table", table)
            a = self.des.get(key)
            if a.get("kind") == "foreign":
                self._manual(key, "a new foreign table: create it (and its server) by hand")
                continue
            up, covers = self._table_bundle(self.des, table, dependents=False)
            parents = [object_key("table", p) for p in ([a.get("partition_of")] + list(a.get("inherits") or [])) if p]
            self._add(MAIN, _R_TABLE, up, [Stmt(f"DROP TABLE IF EXISTS {table}")], covers=covers, refs=parents,
                      sub=self._depth(self.des, table))
        for table in sorted(self.dropped_tables, key=lambda t: (-self._depth(self.cur, t), t)):
            key = object_key("table", table)
            if self.cur.get(key).get("kind") == "foreign":
                self._manual(key, "a removed foreign table: drop it by hand")
                continue
            down, covers = self._table_bundle(self.cur, table, dependents=True)
            owned = self._owned_sequences(f"{table}.{c}" for c in self.cur.get(key).get("column_order") or [])
            before, after = self._sequence_bundle(owned)
            down = before + down + after
            covers |= set(owned)
            self.implied |= covers - {key}
            self._add(MAIN, _R_DROP_TABLE,
                      [Stmt(f"DROP TABLE IF EXISTS {table}", "DESTRUCTIVE", f"drops table {table} and all its rows",
                             subject=key)],
                      down, covers=covers, sub=-self._depth(self.cur, table))
        for table in sorted(self.kept_tables):
            self._table_changes(table)

    def _table_changes(self, table: str) -> None:
        key = object_key("table", table)
        old, new = self.cur.get(key), self.des.get(key)
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
                up.extend(self._options(table, old.get(attr) or [], new.get(attr) or []))
                down.extend(self._options(table, new.get(attr) or [], old.get(attr) or []))
            else:
                self._manual(key, f"{attr} changed ({old.get(attr)!r} -> {new.get(attr)!r}): needs a hand-written "
                                  "migration")
        if up:
            self._add(MAIN, _R_ALTER, up, list(reversed(down)), covers=[key])

    @staticmethod
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

    def _lint_rules(self, statement: str, table: str) -> set[str]:
        """The lint rules *statement* breaks on the existing *table* (used to pick the safe pattern)."""
        findings = lint_mod.lint_sql(statement + ";", "<generated>", existing_tables={table})
        return {f.rule for f in findings if f.severity == "error"}

    def _not_null_pattern(self, key: str, todo: str) -> tuple[list[Stmt], list[Stmt]]:
        """NOT NULL without a long lock: a NOT VALID check now, validated and turned into NOT NULL online."""
        table, column = _owner(split_key(key)[1])
        check = _made_name(_raw(_local(table)), _raw(column), suffix="not_null_check")
        add = f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID"
        refs = [object_key("table", table)]
        self._add(ONLINE, _O_VALIDATE,
                  [Stmt(_guard(_has_constraint(table, check), f"ALTER TABLE {table} VALIDATE CONSTRAINT {check}"))],
                  [], covers=[key], refs=refs)
        self._add(ONLINE, _O_NOT_NULL,
                  [Stmt(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
                         allow=f"set-not-null proven by the validated CHECK {check}, so there is no table scan"),
                   Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {check}")],
                  [Stmt(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL"),
                   Stmt(_guard(_no_constraint(table, check), add))],
                  covers=[key], refs=refs)
        return ([Stmt(_guard(_no_constraint(table, check), add), "TODO", todo, subject=key)],
                [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {check}")])

    def columns(self) -> None:
        for column in sorted(self.added_columns):
            self._add_column(column)
        for table in sorted({_owner(c)[0] for c in self.dropped_columns}):
            self._drop_columns(table, sorted(c for c in self.dropped_columns if _owner(c)[0] == table))
        for key in sorted(self._keys(self.cur, "column") & self._keys(self.des, "column")):
            if _owner(split_key(key)[1])[0] in self.kept_tables:
                self._change_column(key)

    def _add_column(self, column: str) -> None:
        key = object_key("column", column)
        table, name = _owner(column)
        a = self.des.get(key)
        add = f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS"
        up: list[Stmt]
        down = [Stmt(f"ALTER TABLE IF EXISTS {table} DROP COLUMN IF EXISTS {name}")]
        not_null = a.get("nullable") is False and not a.get("identity") and not a.get("generated")
        default = a.get("default")
        volatile = default is not None and "add-column-volatile-default" in self._lint_rules(
            f"ALTER TABLE {table} ADD COLUMN {name} {a['type']} DEFAULT {default}", table)
        if a.get("identity") or a.get("generated") == "stored":
            what = "an identity" if a.get("identity") else "a stored generated"
            up = [Stmt(f"{add} {_column_def(name, a)}", "REVIEW",
                        f"{what} column fills every row: rewrites {table} under an ACCESS EXCLUSIVE lock",
                        subject=key)]
        elif volatile:
            up = [Stmt(f"{add} {_column_def(name, a, not_null=False, default=False)}"),
                  Stmt(f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT {default}", "TODO",
                        f"the volatile default applies to new rows only; backfill the existing ones in batches: "
                        f"UPDATE {table} SET {name} = {default} WHERE {name} IS NULL", subject=key)]
            if not_null:
                more_up, more_down = self._not_null_pattern(
                    key, f"the next migration makes {column} NOT NULL: backfill it first (see above)")
                up += more_up
                down = more_down + down
        elif not_null and default is None:
            up = [Stmt(f"{add} {_column_def(name, a, not_null=False)}")]
            more_up, more_down = self._not_null_pattern(
                key, f"{column} is NOT NULL without a default: fill it before the next migration validates this, "
                     f"e.g. UPDATE {table} SET {name} = ... WHERE {name} IS NULL (in batches); "
                     "a table with rows fails the validation otherwise")
            up += more_up
            down = more_down + down
        else:
            up = [Stmt(f"{add} {_column_def(name, a)}")]
        self._add(MAIN, _R_ALTER, [*up, *self._decorate(self.des, key)], down,
                  covers=[key], refs=[object_key("table", table)])

    def _drop_columns(self, table: str, columns: list[str]) -> None:
        keys = {object_key("column", c) for c in columns}
        up = [Stmt(f"ALTER TABLE IF EXISTS {table} DROP COLUMN IF EXISTS {_owner(c)[1]}", "DESTRUCTIVE",
                    f"drops column {c} and its data", subject=object_key("column", c)) for c in columns]
        down: list[Stmt] = []
        for column in reversed(columns):
            key = object_key("column", column)
            a = self.cur.get(key)
            note = ""
            if a.get("nullable") is False and a.get("default") is None and not a.get("identity"):
                note = f"the data of {column} cannot come back; on a table with rows re-adding it NOT NULL fails"
            down.append(Stmt(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_column_def(_owner(column)[1], a)}",
                              note=note))
            down.extend(self._decorate(self.cur, key))
        covers = set(keys)
        owned = self._owned_sequences(columns)
        if owned:
            before, after = self._sequence_bundle(owned)
            down = before + down + after
            covers |= set(owned)
        own = {c for c in keys if _owner(split_key(c)[1])[0] == table}
        for key in self._constraints_of(self.cur, table):
            if self.cur.columns_of.get(key, frozenset()) & own and self.cur.get(key).get("type") != "trigger":
                down.extend([self._add_constraint(self.cur, key), *self._decorate(self.cur, key)])
                covers.add(key)
        for key in self._indexes_of(self.cur, table):
            if self.cur.columns_of.get(key, frozenset()) & own:
                down.extend([Stmt(_index_sql(self.cur.get(key)["definition"], concurrently=False)),
                             *self._decorate(self.cur, key)])
                covers.add(key)
        self.implied |= covers - keys
        self._add(MAIN, _R_DROP_COLUMN, up, down, covers=covers, refs=[object_key("table", table)])

    def _change_column(self, key: str) -> None:
        old, new = self.cur.get(key), self.des.get(key)
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - set(_DECORATION)
        if not changed:
            return
        column = split_key(key)[1]
        table, name = _owner(column)
        alter = f"ALTER TABLE {table} ALTER COLUMN {name}"
        steps: list[tuple[list[Stmt], list[Stmt]]] = []
        if old.get("generated") != new.get("generated"):
            self._manual(key, f"generated changed ({old.get('generated')} -> {new.get('generated')}): "
                              "needs a hand-written migration")
        elif old.get("generated") and old.get("expression") != new.get("expression"):
            if self.major >= 17:
                steps.append(([Stmt(f"{alter} SET EXPRESSION AS ({new['expression']})", "REVIEW",
                                     f"recomputes {column} for every row (a table rewrite)", subject=key)],
                              [Stmt(f"{alter} SET EXPRESSION AS ({old['expression']})")]))
            else:
                self._manual(key, "the generation expression changed: needs a hand-written migration before "
                                  "PostgreSQL 17")
        identity_guard = (f"EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = {literal(table)}::regclass "
                          f"AND attname = {literal(_raw(name))} AND attidentity <> '')")

        def add_identity(kind: str) -> Stmt:
            return Stmt(_guard("NOT " + identity_guard,
                                f"{alter} ADD GENERATED {'ALWAYS' if kind == 'always' else 'BY DEFAULT'} AS IDENTITY"))

        if old.get("identity") and not new.get("identity"):
            steps.append(([Stmt(f"{alter} DROP IDENTITY IF EXISTS")], [add_identity(old["identity"])]))
        type_changed = old.get("type") != new.get("type") or old.get("collation") != new.get("collation")
        default_dropped = type_changed and old.get("default") is not None
        if default_dropped:
            steps.append(([Stmt(f"{alter} DROP DEFAULT")], [Stmt(f"{alter} SET DEFAULT {old['default']}")]))
        if type_changed:
            self.retyped_columns.add(column)
            steps.append(self._retype(key, alter, old, new))
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
                steps.append(self._not_null_pattern(
                    key, f"{column} becomes NOT NULL: make sure it holds no NULLs before the next migration "
                         f"validates this (UPDATE {table} SET {name} = ... WHERE {name} IS NULL)"))
        elif old.get("nullable") is False and new.get("nullable"):
            steps.append(([Stmt(f"{alter} DROP NOT NULL")], [Stmt(f"{alter} SET NOT NULL")]))
        if new.get("identity") and not old.get("identity"):
            steps.append(([Stmt(add_identity(new["identity"]).sql, "TODO",
                                 f"an identity on a column with data starts at 1: move it past the existing values "
                                 f"with SELECT setval(pg_get_serial_sequence({literal(table)}, {literal(_raw(name))}), "
                                 f"max({name})) FROM {table}", subject=key)],
                          [Stmt(f"{alter} DROP IDENTITY IF EXISTS")]))
        elif new.get("identity") and old.get("identity") and new["identity"] != old["identity"]:
            word = {"always": "ALWAYS", "by default": "BY DEFAULT"}
            steps.append(([Stmt(f"{alter} SET GENERATED {word[new['identity']]}")],
                          [Stmt(f"{alter} SET GENERATED {word[old['identity']]}")]))
        if steps:
            up = [s for step_up, _ in steps for s in step_up]
            down = [s for _, step_down in reversed(steps) for s in step_down]
            self._add(MAIN, _R_ALTER, up, down, covers=[key], refs=[object_key("table", table)])

    def _retype(self, key: str, alter: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[Stmt], list[Stmt]]:
        column = split_key(key)[1]
        name = _owner(column)[1]

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

    # ------------------------------------------------------------ constraints and indexes

    def constraints(self) -> None:
        cur = {k for k in self._keys(self.cur, "constraint") if self.cur.get(k).get("type") != "trigger"}
        des = {k for k in self._keys(self.des, "constraint") if self.des.get(k).get("type") != "trigger"}

        def same(key: str) -> bool:
            a, b = self.cur.get(key), self.des.get(key)
            return key in cur and key in des and (a.get("type"), a.get("definition")) == (b.get("type"), b.get("definition"))

        for key in des:
            table = _owner(split_key(key)[1])[0]
            if (table in self.kept_tables and not same(key) and key in self.des.constraint_index
                    and self.des.get(key).get("type") in ("primary key", "unique")):
                self.online_unique_keys.add(frozenset(self.des.columns_of.get(key, frozenset())))
        for key in sorted(cur):
            table = _owner(split_key(key)[1])[0]
            if key in self.implied or same(key):
                continue
            if table in self.dropped_tables and self.cur.get(key).get("type") != "foreign key":
                continue
            foreign = self.cur.get(key).get("type") == "foreign key"
            self._add(MAIN, _R_DROP_CONSTRAINT, [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {_owner(split_key(key)[1])[1]}")],
                      [self._add_constraint(self.cur, key), *self._decorate(self.cur, key)],
                      covers=[key], refs=self._constraint_refs(self.cur, key), sub=0 if foreign else 1)
        for key in sorted(des):
            table, name = _owner(split_key(key)[1])
            b = self.des.get(key)
            if table in self.added_tables:
                if b.get("type") == "foreign key":
                    self._add(MAIN, _R_FOREIGN_KEY, [self._add_constraint(self.des, key), *self._decorate(self.des, key)],
                              [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}")],
                              covers=[key], refs=self._constraint_refs(self.des, key))
                continue
            if table not in self.kept_tables:
                continue
            if same(key) and key not in self.implied:
                was, now = self.cur.get(key).get("validated"), b.get("validated")
                if now and not was:
                    self._validate(key)
                elif was and not now:
                    self._add(MAIN, _R_CONSTRAINT,
                              [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}"),
                               self._add_constraint(self.des, key, not_valid=True), *self._decorate(self.des, key)],
                              [Stmt(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")],
                              covers=[key], refs=self._constraint_refs(self.des, key))
                continue
            self._constraint_on_existing(key)

    def _validate(self, key: str, rank: float = _O_VALIDATE) -> None:
        table, name = _owner(split_key(key)[1])
        self._add(ONLINE, rank, [Stmt(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")],
                  [Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}"),
                   self._add_constraint(self.des, key, not_valid=True), *self._decorate(self.des, key)],
                  covers=[key], refs=self._constraint_refs(self.des, key))

    def _constraint_on_existing(self, key: str) -> None:
        """A new (or changed) constraint on a table that exists: without long locks."""
        table, name = _owner(split_key(key)[1])
        b = self.des.get(key)
        refs = self._constraint_refs(self.des, key)
        drop = Stmt(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}")
        kind = b.get("type")
        if kind in ("check", "foreign key"):
            referenced = self.des.references.get(key)
            target = frozenset(c for c in self.des.columns_of.get(key, frozenset())
                               if referenced and _owner(split_key(c)[1])[0] == referenced)
            late = kind == "foreign key" and target in self.online_unique_keys
            self._add(ONLINE if late else MAIN, _O_LATE_FK if late else _R_CONSTRAINT,
                      [self._add_constraint(self.des, key, not_valid=True), *self._decorate(self.des, key)],
                      [drop], covers=[key], refs=refs)
            if b.get("validated"):
                self._validate(key, _O_LATE_VALIDATE if late else _O_VALIDATE)
            return
        index = self.des.constraint_index.get(key)
        if kind in ("primary key", "unique") and index and object_key("index", index) in self.des.objects:
            index_key = object_key("index", index)
            definition = self.des.get(index_key)["definition"]
            self._add(ONLINE, _O_CREATE_INDEX, [Stmt(_index_sql(definition, concurrently=True))],
                      [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")], covers=[index_key], refs=refs)
            self._add(ONLINE, _O_USING_INDEX,
                      [self._add_constraint(self.des, key, using_index=_local(index)),
                       *self._decorate(self.des, key), *self._decorate(self.des, index_key)],
                      [drop], covers=[key, index_key], refs=refs)
            return
        self._add(MAIN, _R_CONSTRAINT,
                  [Stmt(self._add_constraint(self.des, key).sql, "REVIEW",
                         f"builds the index of {kind} constraint {name} under an ACCESS EXCLUSIVE lock on {table}",
                         subject=key), *self._decorate(self.des, key)],
                  [drop], covers=[key], refs=refs)

    def _partitioned(self, cat: Catalog, relation: str) -> bool:
        return cat.get(object_key("table", relation)).get("kind") == "partitioned"

    def indexes(self) -> None:
        cur_backing, des_backing = self.cur.backing_indexes(), self.des.backing_indexes()
        cur = {k for k in self._keys(self.cur, "index") if split_key(k)[1] not in cur_backing}
        des = {k for k in self._keys(self.des, "index") if split_key(k)[1] not in des_backing}
        dropped_relations = self.dropped_tables | {split_key(k)[1] for k in self.view_drops}
        created_relations = self.added_tables | {split_key(k)[1] for k in self.view_creates}

        def same(key: str) -> bool:
            return (key in cur and key in des and key not in self.implied
                    and self.cur.get(key).get("definition") == self.des.get(key).get("definition"))

        for key in sorted(cur):
            relation = str(self.cur.get(key).get("table"))
            if key in self.implied or relation in dropped_relations or same(key):
                continue
            name = split_key(key)[1]
            refs = {key, object_key(self._relation_kind(self.cur, relation), relation), *self.cur.columns_of.get(key, ())}
            restore = [*self._decorate(self.cur, key)]
            if self._partitioned(self.cur, relation):
                self._add(MAIN, _R_DROP_INDEX,
                          [Stmt(f"DROP INDEX IF EXISTS {name}", "REVIEW",
                                 f"an index of partitioned table {relation} cannot be dropped concurrently: "
                                 "this locks the table", subject=key)],
                          [Stmt(_index_sql(self.cur.get(key)["definition"], concurrently=False)), *restore],
                          covers=[key], refs=refs)
            else:
                self._add(ONLINE, _O_DROP_INDEX, [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")],
                          [Stmt(_index_sql(self.cur.get(key)["definition"], concurrently=True)), *restore],
                          covers=[key], refs=refs)
        for key in sorted(des):
            relation = str(self.des.get(key).get("table"))
            if relation in created_relations or same(key):
                continue
            name = split_key(key)[1]
            refs = {key, object_key(self._relation_kind(self.des, relation), relation), *self.des.columns_of.get(key, ())}
            definition = self.des.get(key)["definition"]
            if self._partitioned(self.des, relation):
                self._add(MAIN, _R_INDEX,
                          [Stmt(_index_sql(definition, concurrently=False), "REVIEW",
                                 f"partitioned table {relation} cannot be indexed concurrently: this blocks writes "
                                 "while the index builds (or create it ON ONLY the parent and attach per-partition "
                                 "indexes built concurrently)", subject=key), *self._decorate(self.des, key)],
                          [Stmt(f"DROP INDEX IF EXISTS {name}")], covers=[key], refs=refs)
            else:
                self._add(ONLINE, _O_CREATE_INDEX,
                          [Stmt(_index_sql(definition, concurrently=True)), *self._decorate(self.des, key)],
                          [Stmt(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")], covers=[key], refs=refs)

    # ------------------------------------------------------------ views

    def _view_sql(self, cat: Catalog, key: str) -> str:
        object_type, name = split_key(key)
        a = cat.get(key)
        options = f" WITH ({', '.join(a['options'])})" if a.get("options") else ""
        body = _strip_semicolon(str(a["definition"]))
        if object_type == "view":
            return f"CREATE OR REPLACE VIEW {name}{options} AS\n{body}"
        return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}{options} AS\n{body}\nWITH DATA"

    @staticmethod
    def _drop_view(key: str) -> Stmt:
        object_type, name = split_key(key)
        return Stmt(f"DROP {'VIEW' if object_type == 'view' else 'MATERIALIZED VIEW'} IF EXISTS {name}")

    def _view_bundle(self, cat: Catalog, key: str, *, dependents: bool) -> tuple[list[Stmt], set[str]]:
        name = split_key(key)[1]
        stmts = [Stmt(self._view_sql(cat, key)), *self._decorate(cat, key)]
        covers = {key}
        for index in self._indexes_of(cat, name):
            stmts.extend([Stmt(_index_sql(cat.get(index)["definition"], concurrently=False)),
                          *self._decorate(cat, index)])
            covers.add(index)
        if dependents:
            for trigger in self._sub_objects(cat, "trigger", name):
                stmts.extend(self._trigger_stmts(cat, trigger))
                covers.add(trigger)
            for rule in self._sub_objects(cat, "rule", name):
                stmts.extend(self._rule_stmts(cat, rule))
                covers.add(rule)
        return stmts, covers

    def views(self) -> None:
        kinds = ("view", "materialized_view")
        cur, des = self._keys(self.cur, *kinds), self._keys(self.des, *kinds)
        removed, added = cur - des, des - cur
        used_by: dict[str, set[str]] = {}
        for user, uses in self.des.depends.items():
            for used in uses:
                used_by.setdefault(used, set()).add(user)
        recreate: set[str] = set()
        replace: set[str] = set()
        for key in cur & des:
            old, new = self.cur.get(key), self.des.get(key)
            if (old.get("definition"), old.get("options")) == (new.get("definition"), new.get("options")):
                continue
            if key.startswith("materialized_view "):
                recreate.add(key)
                continue
            was, now = self.cur.view_columns.get(key, ()), self.des.view_columns.get(key, ())
            # CREATE OR REPLACE VIEW may only add columns at the end; its undo may only if nothing uses the view.
            if was == now or (now[: len(was)] == was and not used_by.get(key)):
                replace.add(key)
            else:
                recreate.add(key)
        broken = ({object_key("table", t) for t in self.dropped_tables}
                  | {object_key("column", c) for c in self.dropped_columns | self.retyped_columns}
                  | self.replaced_functions)
        retyped = {object_key("column", c) for c in self.retyped_columns}
        # New views that use a retyped column (or such a view) exist when the migration runs a second time
        # and would block the ALTER COLUMN ... TYPE: they are dropped first (a no-op on the first run).
        rerun: set[str] = set()
        while True:
            gone = removed | recreate | broken
            more = {k for k in (cur & des) - recreate
                    if self.cur.depends.get(k, frozenset()) & gone or self.des.depends.get(k, frozenset()) & retyped}
            more_rerun = {k for k in added - rerun if self.des.depends.get(k, frozenset()) & (retyped | rerun | recreate)}
            if not more and not more_rerun:
                break
            recreate |= more
            replace -= more
            rerun |= more_rerun
        self.view_drops = removed | recreate
        self.view_creates = added | recreate
        both = {k: self.cur.depends.get(k, frozenset()) | self.des.depends.get(k, frozenset())
                for k in self.view_drops | rerun}
        for i, key in enumerate(reversed(_toposort(self.view_drops | rerun, both))):
            if key in rerun:
                self._add(MAIN, _R_DROP_VIEW, [self._drop_view(key)], [], covers=[key],
                          refs=self.des.depends.get(key, ()), sub=i)
                continue
            restore, covers = self._view_bundle(self.cur, key, dependents=True)
            self.implied |= covers - {key}
            self._add(MAIN, _R_DROP_VIEW, [self._drop_view(key)], restore, covers=covers,
                      refs=self.cur.depends.get(key, ()), sub=i)
        for i, key in enumerate(_toposort(added | recreate | replace, self.des.depends)):
            if key in replace:
                up = [Stmt(self._view_sql(self.des, key))]
                if self.cur.view_columns.get(key) == self.des.view_columns.get(key):
                    down = [Stmt(self._view_sql(self.cur, key))]
                else:
                    down = [self._drop_view(key), Stmt(self._view_sql(self.cur, key)), *self._decorate(self.cur, key)]
                covers = {key}
            else:
                up, covers = self._view_bundle(self.des, key, dependents=False)
                down = [self._drop_view(key)]
            self._add(MAIN, _R_VIEW, up, down, covers=covers, refs=self.des.depends.get(key, ()), sub=i)

    # ------------------------------------------------------------ triggers, rules, policies

    def _trigger_stmts(self, cat: Catalog, key: str) -> list[Stmt]:
        relation, name = _owner(split_key(key)[1])
        a = cat.get(key)
        definition = str(a["definition"])
        if definition.startswith("CREATE TRIGGER ") and self.major >= 14:
            create = Stmt("CREATE OR REPLACE TRIGGER " + definition[len("CREATE TRIGGER "):])
        else:
            create = Stmt(_guard(
                f"NOT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = {literal(relation)}::regclass "
                f"AND tgname = {literal(_raw(name))})", definition))
        out = [create]
        out.extend(self._enable("TRIGGER", relation, name, a.get("enabled"), skip_origin=True))
        out.extend(self._decorate(cat, key))
        return out

    @staticmethod
    def _enable(what: str, relation: str, name: str, state: str | None, *, skip_origin: bool = False) -> list[Stmt]:
        verb = {"origin": "ENABLE", "disabled": "DISABLE", "replica": "ENABLE REPLICA", "always": "ENABLE ALWAYS"}
        if state is None or (skip_origin and state == "origin"):
            return []
        return [Stmt(f"ALTER TABLE {relation} {verb.get(state, 'ENABLE')} {what} {name}")]

    def _rule_stmts(self, cat: Catalog, key: str) -> list[Stmt]:
        relation, name = _owner(split_key(key)[1])
        a = cat.get(key)
        definition = _strip_semicolon(str(a["definition"]))
        if definition.startswith("CREATE RULE "):
            definition = "CREATE OR REPLACE RULE " + definition[len("CREATE RULE "):]
        return [Stmt(definition), *self._enable("RULE", relation, name, a.get("enabled"), skip_origin=True),
                *self._decorate(cat, key)]

    def _dependent_objects(self, object_type: str, create: Any, drop: Any, drop_rank: float, rank: float) -> None:
        """Triggers and rules: dropped with their relation, re-created with it, replaced in place."""
        cur, des = self._keys(self.cur, object_type), self._keys(self.des, object_type)
        dropped_relations = self.dropped_tables | {split_key(k)[1] for k in self.view_drops}
        created_relations = self.added_tables | {split_key(k)[1] for k in self.view_creates}
        broken = self.replaced_functions | {object_key("column", c) for c in self.dropped_columns | self.retyped_columns}
        gone: set[str] = set()

        def refs(cat: Catalog, key: str) -> set[str]:
            relation = _owner(split_key(key)[1])[0]
            return {key, object_key(self._relation_kind(cat, relation), relation), *cat.depends.get(key, ())}

        def replaceable(key: str) -> bool:
            a, b = str(self.cur.get(key).get("definition")), str(self.des.get(key).get("definition"))
            return object_type == "rule" or (self.major >= 14 and a.startswith("CREATE TRIGGER ")
                                              and b.startswith("CREATE TRIGGER "))

        for key in sorted(cur):
            relation = _owner(split_key(key)[1])[0]
            if key in self.implied or relation in dropped_relations:
                continue
            redo = bool(self.cur.depends.get(key, frozenset()) & broken)
            if key in des and not redo:
                if self.cur.get(key).get("definition") == self.des.get(key).get("definition") or replaceable(key):
                    continue
            gone.add(key)
            self._add(MAIN, drop_rank, [drop(key)], create(self.cur, key), covers=[key], refs=refs(self.cur, key))
        for key in sorted(des):
            relation, name = _owner(split_key(key)[1])
            if key in cur and key not in gone and relation not in created_relations:
                old, new = self.cur.get(key), self.des.get(key)
                up: list[Stmt] = []
                down: list[Stmt] = []
                if old.get("definition") != new.get("definition"):
                    up.append(create(self.des, key)[0])
                    down.append(create(self.cur, key)[0])
                if old.get("enabled") != new.get("enabled"):
                    what = object_type.upper()
                    up.extend(self._enable(what, relation, name, new.get("enabled")))
                    down.extend(self._enable(what, relation, name, old.get("enabled")))
                if up:
                    self._add(MAIN, rank, up, down, covers=[key], refs=refs(self.des, key))
                continue
            self._add(MAIN, rank, create(self.des, key), [drop(key)], covers=[key], refs=refs(self.des, key))

    def triggers(self) -> None:
        def drop(key: str) -> Stmt:
            relation, name = _owner(split_key(key)[1])
            return Stmt(f"DROP TRIGGER IF EXISTS {name} ON {relation}")

        self._dependent_objects("trigger", self._trigger_stmts, drop, _R_DROP_TRIGGER, _R_TRIGGER)

    def rules(self) -> None:
        def drop(key: str) -> Stmt:
            relation, name = _owner(split_key(key)[1])
            return Stmt(f"DROP RULE IF EXISTS {name} ON {relation}")

        self._dependent_objects("rule", self._rule_stmts, drop, _R_DROP_RULE, _R_RULE)

    def _policy_stmt(self, cat: Catalog, key: str, *, guarded: bool) -> Stmt:
        table, name = _owner(split_key(key)[1])
        a = cat.get(key)
        roles = ", ".join("PUBLIC" if r == "public" else _quote(r) for r in (a.get("roles") or ["public"]))
        create = (f"CREATE POLICY {name} ON {table} AS {'PERMISSIVE' if a.get('permissive', True) else 'RESTRICTIVE'} "
                  f"FOR {a.get('command') or 'ALL'} TO {roles}")
        if a.get("using"):
            create += f" USING ({a['using']})"
        if a.get("with_check"):
            create += f" WITH CHECK ({a['with_check']})"
        if not guarded:
            return Stmt(create)
        return Stmt(_guard(
            f"NOT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = {literal(table)}::regclass "
            f"AND polname = {literal(_raw(name))})", create))

    def _policy_refs(self, cat: Catalog, key: str) -> set[str]:
        table = _owner(split_key(key)[1])[0]
        a = cat.get(key)
        text = f"{a.get('using') or ''} {a.get('with_check') or ''}"
        refs = {key, object_key("table", table)}
        for column in cat.get(object_key("table", table)).get("column_order") or []:
            if re.search(rf"(?<![\w$]){re.escape(column)}(?![\w$])", text):
                refs.add(object_key("column", f"{table}.{column}"))
        return refs

    def policies(self) -> None:
        cur, des = self._keys(self.cur, "policy"), self._keys(self.des, "policy")

        def changed(key: str) -> bool:
            a, b = self.cur.get(key), self.des.get(key)
            return any(a.get(k) != b.get(k) for k in a.keys() | b.keys() if k != "comment")

        for key in sorted(cur):
            table, name = _owner(split_key(key)[1])
            if key in self.implied or table in self.dropped_tables or (key in des and not changed(key)):
                continue
            self._add(MAIN, _R_DROP_POLICY, [Stmt(f"DROP POLICY IF EXISTS {name} ON {table}")],
                      [self._policy_stmt(self.cur, key, guarded=True), *self._decorate(self.cur, key)],
                      covers=[key], refs=self._policy_refs(self.cur, key))
        for key in sorted(des):
            table, name = _owner(split_key(key)[1])
            if key in cur and not changed(key):
                continue
            self._add(MAIN, _R_POLICY, [self._policy_stmt(self.des, key, guarded=True), *self._decorate(self.des, key)],
                      [Stmt(f"DROP POLICY IF EXISTS {name} ON {table}")],
                      covers=[key], refs=self._policy_refs(self.des, key))

    # ------------------------------------------------------------ privileges and comments

    def decorations(self) -> None:
        for key in sorted(self.cur.objects.keys() & self.des.objects.keys()):
            if key in self.fresh or key in self.implied:
                continue
            old, new = self.cur.get(key), self.des.get(key)
            up: list[Stmt] = []
            down: list[Stmt] = []
            if ("acl" in old or "acl" in new) and old.get("acl") != new.get("acl"):
                up += self._acl(key, old.get("acl"), new.get("acl"), new)
                down += self._acl(key, new.get("acl"), old.get("acl"), old)
            if old.get("comment") != new.get("comment") and ("comment" in old or "comment" in new):
                up.append(_comment_sql(key, new.get("comment"), new))
                down.append(_comment_sql(key, old.get("comment"), old))
            if up:
                self._add(MAIN, _R_DECORATE, up, down, covers=[key], refs=[key])

    # ------------------------------------------------------------ all of it

    def build(self) -> Draft:
        self.find_renames()
        self.schemas()
        self.extensions()
        self.types()
        self.functions()
        self.tables()
        self.columns()
        self.sequences()  # after tables and columns: a sequence they own goes with them
        self.constraints()
        self.views()
        self.indexes()
        self.triggers()
        self.rules()
        self.policies()
        self.decorations()
        self.group_questions()
        self._place_enum_values()
        return Draft(sorted(self.actions, key=Action.sort_key), self.questions, self.notices, self.manual_covers)

    def _place_enum_values(self) -> None:
        """New enum values used by other statements of the main migration go into a migration before it."""
        for action in self.actions:
            if not action.enum_values or action.phase != MAIN:
                continue
            others = [s.sql for a in self.actions if a is not action and a.phase == MAIN for s in a.up]
            if any(value in text for value in action.enum_values for text in others):
                action.phase = TYPES_FIRST


@dataclass
class Draft:
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
