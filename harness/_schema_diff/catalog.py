"""What the generator knows about one database: its snapshot and what a snapshot lacks.

:func:`read_catalog` reads function definitions, view columns and
dependencies, the columns each index and constraint uses, foreign key
targets, constraint indexes and default privileges from a connection it is
handed; it never opens one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..snapshot import Snapshot
from .names import object_key, owner_of, split_key


@dataclass(frozen=True)
class Catalog:
    """What the generator knows about one database: its snapshot and the facts a snapshot lacks."""

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

    def names(self, object_type: str) -> set[str]:
        """The names of the objects of one type."""
        prefix = object_type + " "
        return {k[len(prefix):] for k in self.objects if k.startswith(prefix)}

    def keys(self, *types: str) -> set[str]:
        """The keys of the objects of the given types."""
        return {k for k in self.objects if split_key(k)[0] in types}

    def sub_objects(self, object_type: str, relation: str) -> list[str]:
        """Keys of the constraints, triggers, rules or policies (*object_type*) of *relation*, by name."""
        prefix = f"{object_type} {relation}."
        return sorted(k for k in self.objects if k.startswith(prefix) and owner_of(split_key(k)[1])[0] == relation)

    def relation_kind(self, name: str) -> str:
        """``table``, ``materialized_view`` or ``view``: the type of the relation *name*."""
        for object_type in ("table", "materialized_view", "view"):
            if object_key(object_type, name) in self.objects:
                return object_type
        return "table"


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

