"""Catalog snapshots of a database schema, a structured diff, and data fingerprints.

A :class:`Snapshot` maps one key per schema object, ``"<type> <qualified
name>"`` (``"table public.users"``, ``"column public.users.email"``,
``"function public.f(integer, text)"``), to a flat mapping of its
attributes.  Names are SQL identifiers, quoted only where PostgreSQL would
quote them (``quote_ident``), so they are unambiguous and can be pasted into
SQL.  Grants (``acl``) and comments (``comment``) are attributes of their
object.

The whole snapshot is built server-side by one catalog query that returns one
JSON document; the query is prepared once per session, so later snapshots
cost only its execution.  It runs inside a savepoint (or a transaction of
its own) with ``search_path`` and the output-format settings pinned: names
and expressions printed by ``format_type`` and the ``pg_get_*def`` functions
are then qualified the same way whatever the caller's session looks like.
The caller's settings are put back afterwards.

Not covered (yet): ownership, tablespaces, statistics objects, casts,
operators, collations, text search objects, foreign data wrappers and
servers, publications, event triggers, and identity-sequence options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from .errors import ConfigError

__all__ = [
    "OBJECT_TYPES",
    "Snapshot",
    "Change",
    "take_snapshot",
    "diff_snapshots",
    "format_changes",
    "table_fingerprints",
]

log = logging.getLogger(__name__)

#: Object types a snapshot holds, in the order a diff reports them.
OBJECT_TYPES = (
    "schema",
    "extension",
    "enum",
    "domain",
    "composite",
    "range",
    "sequence",
    "table",
    "column",
    "constraint",
    "index",
    "view",
    "materialized_view",
    "function",
    "procedure",
    "trigger",
    "rule",
    "policy",
)
_TYPE_RANK = {name: rank for rank, name in enumerate(OBJECT_TYPES)}
_KIND_RANK = {"removed": 0, "added": 1, "changed": 2}

# Settings that change how the catalog functions (and row-to-text casts) print
# names and values, pinned while a snapshot or fingerprint runs.
# plan_cache_mode: the snapshot query is prepared once per session; a custom
# plan would re-plan it on every call, which costs more than running it.
_PINNED_SETTINGS = (
    # pg_temp last: otherwise a temporary table named like a catalog would
    # shadow it.
    ("search_path", "pg_catalog, pg_temp"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("quote_all_identifiers", "off"),
    ("plan_cache_mode", "force_generic_plan"),
)
# One statement reads the current values (the MATERIALIZED CTE is evaluated
# first) and sets the pinned ones; it also says whether this session already
# holds the prepared snapshot statement.
_PIN_SQL = (
    "WITH old AS MATERIALIZED (SELECT "
    + ", ".join(f"pg_catalog.current_setting('{name}') AS s{i}" for i, (name, _) in enumerate(_PINNED_SETTINGS))
    + ") SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE name = %(prepared)s), old.*, "
    + ", ".join(f"pg_catalog.set_config('{name}', '{value}', true)" for name, value in _PINNED_SETTINGS)
    + " FROM old"
)
_RESTORE_SQL = "SELECT " + ", ".join(
    f"pg_catalog.set_config('{name}', %s, true)" for name, _ in _PINNED_SETTINGS
)


# --------------------------------------------------------------------------
# The catalog query
#
# Conventions: ``q`` columns hold quoted, schema-qualified names; ``_acl``
# turns an aclitem[] into a sorted JSON list (NULL stays NULL: the built-in
# default privileges); comments are read from pg_description directly (what
# obj_description/col_description do, without a function call per row).

_ACL = (
    "CASE WHEN {acl} IS NULL THEN NULL "
    "ELSE coalesce((SELECT json_agg(a::text ORDER BY a::text) FROM unnest({acl}) a), '[]') END"
)
_COMMENT = (
    "(SELECT d.description FROM pg_description d "
    "WHERE d.objoid = {oid} AND d.classoid = '{catalog}'::regclass AND d.objsubid = {sub})"
)
_SORTED_TEXT_ARRAY = "(SELECT json_agg(x ORDER BY x) FROM unnest({arr}) x)"


def _acl(expr: str) -> str:
    return _ACL.format(acl=expr)


def _comment(oid: str, catalog: str, sub: str = "0") -> str:
    return _COMMENT.format(oid=oid, catalog=catalog, sub=sub)


def _sorted(expr: str) -> str:
    return _SORTED_TEXT_ARRAY.format(arr=expr)


def _not_in_extension(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


def _catalog_query(server_version: int) -> str:
    # Functions with an SQL-standard body (BEGIN ATOMIC, PostgreSQL 14+) keep
    # it in prosqlbody, not prosrc.
    sqlbody = (
        "CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) END"
        if server_version >= 140000
        else "NULL::text"
    )
    return f"""
WITH
ns AS (
    SELECT n.oid, n.nspname, quote_ident(n.nspname) AS q, n.nspacl
    FROM pg_namespace n
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
      AND n.nspname <> ALL ($1)
      AND {_not_in_extension('pg_namespace', 'n.oid')}
),
rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
           c.relforcerowsecurity, c.relispartition, c.relpartbound, c.reloptions,
           c.relacl, ns.q || '.' || quote_ident(c.relname) AS q
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I')
      AND {_not_in_extension('pg_class', 'c.oid')}
),
ty AS (
    SELECT t.oid, t.typtype, t.typbasetype, t.typtypmod, t.typnotnull, t.typdefaultbin,
           t.typcollation, t.typrelid, t.typacl, ns.q || '.' || quote_ident(t.typname) AS q
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
    WHERE t.typtype IN ('e', 'd', 'c', 'r')
      AND (t.typtype <> 'c' OR EXISTS (SELECT 1 FROM pg_class tc WHERE tc.oid = t.typrelid AND tc.relkind = 'c'))
      AND {_not_in_extension('pg_type', 't.oid')}
),
objects(key, attrs) AS (
    SELECT 'schema ' || ns.q, json_build_object(
        'acl', {_acl('ns.nspacl')},
        'comment', {_comment('ns.oid', 'pg_namespace')})
    FROM ns

    UNION ALL
    SELECT 'extension ' || quote_ident(x.extname), json_build_object(
        'version', x.extversion,
        'schema', xn.nspname::text)
    FROM pg_extension x JOIN pg_namespace xn ON xn.oid = x.extnamespace
    WHERE xn.nspname <> ALL ($1)

    UNION ALL
    SELECT 'table ' || r.q, json_build_object(
        'kind', CASE r.relkind WHEN 'r' THEN 'ordinary' WHEN 'p' THEN 'partitioned' ELSE 'foreign' END,
        'persistence', CASE r.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END,
        'rls_enabled', r.relrowsecurity,
        'rls_forced', r.relforcerowsecurity,
        'partition_key', CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END,
        'partition_of', CASE WHEN r.relispartition THEN (
            SELECT quote_ident(pn.nspname) || '.' || quote_ident(pc.relname)
            FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            WHERE i.inhrelid = r.oid) END,
        'partition_bound', pg_get_expr(r.relpartbound, r.oid),
        'inherits', CASE WHEN r.relispartition THEN '[]'::json ELSE coalesce((
            SELECT json_agg(quote_ident(pn.nspname) || '.' || quote_ident(pc.relname) ORDER BY i.inhseqno)
            FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            WHERE i.inhrelid = r.oid), '[]') END,
        'server', (SELECT fs.srvname::text FROM pg_foreign_table ft
                   JOIN pg_foreign_server fs ON fs.oid = ft.ftserver WHERE ft.ftrelid = r.oid),
        'options', {_sorted('r.reloptions')},
        'column_order', coalesce((
            SELECT json_agg(quote_ident(a.attname) ORDER BY a.attnum) FROM pg_attribute a
            WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'acl', {_acl('r.relacl')},
        'comment', {_comment('r.oid', 'pg_class')})
    FROM rel r WHERE r.relkind IN ('r', 'p', 'f')

    UNION ALL
    SELECT 'column ' || r.q || '.' || quote_ident(a.attname), json_build_object(
        'type', format_type(a.atttypid, a.atttypmod),
        'nullable', NOT a.attnotnull,
        'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(ad.adbin, ad.adrelid) END,
        'identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
        'generated', CASE a.attgenerated WHEN 's' THEN 'stored' WHEN 'v' THEN 'virtual' END,
        'expression', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(ad.adbin, ad.adrelid) END,
        'collation', CASE WHEN a.attcollation <> t.typcollation THEN (
            SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = a.attcollation) END,
        'acl', {_acl('a.attacl')},
        'comment', {_comment('r.oid', 'pg_class', 'a.attnum')})
    FROM rel r
    JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE r.relkind IN ('r', 'p', 'f')

    UNION ALL
    -- NOT NULL constraints (pg_constraint rows since PostgreSQL 18) are
    -- reported as the column's "nullable", the same on every version.
    SELECT 'constraint ' || r.q || '.' || quote_ident(c.conname), json_build_object(
        'type', CASE c.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique' WHEN 'c' THEN 'check'
                WHEN 'f' THEN 'foreign key' WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger'
                ELSE c.contype::text END,
        'definition', regexp_replace(pg_get_constraintdef(c.oid), ' NOT VALID$', ''),
        'validated', c.convalidated,
        'comment', {_comment('c.oid', 'pg_constraint')})
    FROM pg_constraint c JOIN rel r ON r.oid = c.conrelid
    WHERE c.contype <> 'n'

    UNION ALL
    SELECT 'index ' || r.q, json_build_object(
        'table', tr.q,
        'definition', pg_get_indexdef(i.indexrelid),
        'valid', i.indisvalid,
        'comment', {_comment('r.oid', 'pg_class')})
    FROM pg_index i JOIN rel r ON r.oid = i.indexrelid JOIN rel tr ON tr.oid = i.indrelid

    UNION ALL
    -- The sequence's current value is data, not schema: left out.
    SELECT 'sequence ' || r.q, json_build_object(
        'type', format_type(s.seqtypid, NULL),
        'start', s.seqstart,
        'increment', s.seqincrement,
        'min', s.seqmin,
        'max', s.seqmax,
        'cache', s.seqcache,
        'cycle', s.seqcycle,
        'owned_by', (
            SELECT quote_ident(on_.nspname) || '.' || quote_ident(oc.relname) || '.' || quote_ident(oa.attname)
            FROM pg_depend d JOIN pg_class oc ON oc.oid = d.refobjid
            JOIN pg_namespace on_ ON on_.oid = oc.relnamespace
            JOIN pg_attribute oa ON oa.attrelid = d.refobjid AND oa.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid AND d.deptype = 'a'
              AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
            LIMIT 1),
        'persistence', CASE r.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END,
        'acl', {_acl('r.relacl')},
        'comment', {_comment('r.oid', 'pg_class')})
    FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
    -- identity sequences are part of their column ("identity")
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = r.oid AND d.deptype = 'i')

    UNION ALL
    SELECT CASE r.relkind WHEN 'v' THEN 'view ' ELSE 'materialized_view ' END || r.q, json_build_object(
        'definition', pg_get_viewdef(r.oid),
        'options', {_sorted('r.reloptions')},
        'acl', {_acl('r.relacl')},
        'comment', {_comment('r.oid', 'pg_class')})
    FROM rel r WHERE r.relkind IN ('v', 'm')

    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' ELSE 'function ' END
           || ns.q || '.' || quote_ident(p.proname) || '(' || oidvectortypes(p.proargtypes) || ')',
        json_build_object(
        'kind', CASE p.prokind WHEN 'f' THEN 'function' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window'
                WHEN 'p' THEN 'procedure' END,
        'arguments', pg_get_function_arguments(p.oid),
        'result', pg_get_function_result(p.oid),
        'language', l.lanname::text,
        'volatility', CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
        'strict', p.proisstrict,
        'security_definer', p.prosecdef,
        'leakproof', p.proleakproof,
        'parallel', CASE p.proparallel WHEN 's' THEN 'safe' WHEN 'r' THEN 'restricted' ELSE 'unsafe' END,
        'config', {_sorted('p.proconfig')},
        'body_hash', encode(sha256(convert_to(
            coalesce(p.prosrc, '') || chr(10) || coalesce(p.probin, '') || chr(10) || coalesce({sqlbody}, ''),
            'UTF8')), 'hex'),
        'acl', {_acl('p.proacl')},
        'comment', {_comment('p.oid', 'pg_proc')})
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
    WHERE {_not_in_extension('pg_proc', 'p.oid')}
      -- functions made by the system for a type (range constructors) belong to the type
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'i')

    UNION ALL
    SELECT 'trigger ' || r.q || '.' || quote_ident(tg.tgname), json_build_object(
        'definition', pg_get_triggerdef(tg.oid),
        'enabled', CASE tg.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
                   WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END,
        'comment', {_comment('tg.oid', 'pg_trigger')})
    FROM pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid
    WHERE NOT tg.tgisinternal

    UNION ALL
    SELECT 'rule ' || r.q || '.' || quote_ident(rw.rulename), json_build_object(
        'definition', pg_get_ruledef(rw.oid),
        'enabled', CASE rw.ev_enabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
                   WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END,
        'comment', {_comment('rw.oid', 'pg_rewrite')})
    FROM pg_rewrite rw JOIN rel r ON r.oid = rw.ev_class
    WHERE rw.rulename <> '_RETURN'

    UNION ALL
    SELECT 'policy ' || r.q || '.' || quote_ident(po.polname), json_build_object(
        'command', CASE po.polcmd WHEN '*' THEN 'ALL' WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                   WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' END,
        'permissive', po.polpermissive,
        'roles', (SELECT json_agg(rn ORDER BY rn) FROM (
            SELECT CASE WHEN ro = 0 THEN 'public' ELSE pg_get_userbyid(ro)::text END AS rn
            FROM unnest(po.polroles) ro) rs),
        'using', pg_get_expr(po.polqual, po.polrelid),
        'with_check', pg_get_expr(po.polwithcheck, po.polrelid),
        'comment', {_comment('po.oid', 'pg_policy')})
    FROM pg_policy po JOIN rel r ON r.oid = po.polrelid

    UNION ALL
    SELECT 'enum ' || ty.q, json_build_object(
        'values', coalesce((SELECT json_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                            FROM pg_enum e WHERE e.enumtypid = ty.oid), '[]'),
        'acl', {_acl('ty.typacl')},
        'comment', {_comment('ty.oid', 'pg_type')})
    FROM ty WHERE ty.typtype = 'e'

    UNION ALL
    SELECT 'domain ' || ty.q, json_build_object(
        'base_type', format_type(ty.typbasetype, ty.typtypmod),
        'not_null', ty.typnotnull,
        'default', pg_get_expr(ty.typdefaultbin, 0),
        'collation', CASE WHEN ty.typcollation <> bt.typcollation THEN (
            SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = ty.typcollation) END,
        'constraints', coalesce((SELECT json_object_agg(quote_ident(c.conname), pg_get_constraintdef(c.oid))
                                 FROM pg_constraint c WHERE c.contypid = ty.oid AND c.contype <> 'n'), '{{}}'),
        'acl', {_acl('ty.typacl')},
        'comment', {_comment('ty.oid', 'pg_type')})
    FROM ty JOIN pg_type bt ON bt.oid = ty.typbasetype WHERE ty.typtype = 'd'

    UNION ALL
    SELECT 'composite ' || ty.q, json_build_object(
        'attributes', coalesce((
            SELECT json_agg(json_build_array(quote_ident(a.attname), format_type(a.atttypid, a.atttypmod))
                             ORDER BY a.attnum)
            FROM pg_attribute a WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'acl', {_acl('ty.typacl')},
        'comment', {_comment('ty.oid', 'pg_type')})
    FROM ty WHERE ty.typtype = 'c'

    UNION ALL
    SELECT 'range ' || ty.q, json_build_object(
        'subtype', format_type(rg.rngsubtype, NULL),
        'acl', {_acl('ty.typacl')},
        'comment', {_comment('ty.oid', 'pg_type')})
    FROM ty JOIN pg_range rg ON rg.rngtypid = ty.oid WHERE ty.typtype = 'r'
)
SELECT coalesce(json_object_agg(key, attrs), '{{}}')::text FROM objects
"""


_QUERY_CACHE: dict[int, tuple[str, str]] = {}


def _query_for(server_version: int) -> tuple[str, str]:
    """The catalog query for this server version, and the name it is prepared under."""
    key = 140000 if server_version >= 140000 else 0
    found = _QUERY_CACHE.get(key)
    if found is None:
        # Constant SQL text chosen by server version; the one value is $1.
        query = _catalog_query(key)
        name = "harness_snapshot_" + hashlib.sha256(query.encode()).hexdigest()[:16]
        found = _QUERY_CACHE[key] = (query, name)
    return found


# --------------------------------------------------------------------------
# Snapshot


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _split_key(key: str) -> tuple[str, str]:
    object_type, _, name = key.partition(" ")
    return object_type, name


@dataclass(frozen=True)
class Snapshot:
    """The schema of one database as catalog facts: one entry per object.

    ``objects`` maps ``"<type> <qualified name>"`` to the object's attributes
    (JSON values only: str, int, bool, None, lists and dicts).
    """

    objects: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        # A plain dict in key order (JSON-, copy- and pickle-friendly); treat
        # it as read-only like the rest of the snapshot.
        object.__setattr__(self, "objects", dict(sorted(self.objects.items())))

    def to_json(self) -> str:
        """Canonical JSON text: sorted keys, no whitespace; equal snapshots give equal text."""
        return _canonical({"objects": dict(self.objects)})

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """The snapshot written by :meth:`to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("objects"), dict):
            raise ValueError("not a snapshot: expected a JSON object with an 'objects' mapping")
        return cls(objects=data["objects"])

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: equal schemas, equal digests."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def tables(self) -> frozenset[str]:
        """Qualified names of all tables (ordinary, partitioned and foreign), e.g. ``public.users``."""
        return frozenset(key[6:] for key in self.objects if key.startswith("table "))

    def columns(self, table: str) -> list[str]:
        """Column names of *table* (a qualified name) in attnum order."""
        try:
            attrs = self.objects[f"table {table}"]
        except KeyError:
            raise KeyError(f"no table {table!r} in the snapshot; tables are named like 'public.users'") from None
        return list(attrs["column_order"])

    def of_type(self, object_type: str) -> dict[str, Mapping[str, Any]]:
        """The objects of one type, by qualified name."""
        prefix = object_type + " "
        return {key[len(prefix) :]: attrs for key, attrs in self.objects.items() if key.startswith(prefix)}

    def get(self, object_type: str, name: str) -> Mapping[str, Any] | None:
        """The attributes of one object, or None when it does not exist."""
        return self.objects.get(f"{object_type} {name}")


@contextlib.contextmanager
def _pinned(conn: psycopg.Connection[Any], prepared: str = "") -> Iterator[tuple[psycopg.Cursor[Any], bool]]:
    """Run the body with the pinned settings, in a savepoint (or a transaction of its own).

    Yields a cursor and whether the prepared statement *prepared* exists.
    On success the caller's settings are put back with ``set_config(...,
    true)`` and the savepoint is released, which (unlike a rollback) keeps
    psycopg's prepared statements; on error the savepoint is rolled back,
    which restores the settings and leaves the caller's transaction usable.
    """
    cur = conn.cursor(row_factory=tuple_row)
    with conn.transaction():
        row = cur.execute(_PIN_SQL, {"prepared": prepared}, prepare=False).fetchone()
        assert row is not None
        yield cur, bool(row[0])
        cur.execute(_RESTORE_SQL, row[1 : 1 + len(_PINNED_SETTINGS)], prepare=False)


def take_snapshot(conn: psycopg.Connection[Any], *, exclude_schemas: Iterable[str] = ("harness",)) -> Snapshot:
    """Read the schema of the database behind *conn* from the catalogs.

    One catalog query builds the whole snapshot as one JSON document on the
    server; it is prepared once per session (as ``harness_snapshot_<hash>``)
    and planned once.  System schemas, *exclude_schemas* and objects that
    belong to an extension are left out.  Works inside an open transaction
    (it sees the transaction's uncommitted DDL) and leaves the transaction
    and the session settings as it found them.  Needs PostgreSQL 12 or later.

    psycopg drops every prepared statement of a connection (``DEALLOCATE
    ALL``) after a rollback, ``ALTER`` or ``DROP`` once it has prepared
    statements of its own; the next snapshot then prepares and plans again
    (some tens of milliseconds).  Connections that take many snapshots
    between DDL should set ``conn.prepare_threshold = None``.
    """
    exclude = [exclude_schemas] if isinstance(exclude_schemas, str) else list(exclude_schemas)
    query, name = _query_for(conn.info.server_version)
    with _pinned(conn, name) as (cur, is_prepared):
        if not is_prepared:
            cur.execute(
                sql.SQL("PREPARE {} (name[]) AS ").format(sql.Identifier(name)) + sql.SQL(query),
                prepare=False,
            )
        # EXECUTE is a utility statement: it takes no protocol parameters, so
        # the list goes in as a quoted literal.
        cur.execute(
            sql.SQL("EXECUTE {} ({}::pg_catalog.name[])").format(sql.Identifier(name), sql.Literal(exclude)),
            prepare=False,
        )
        row = cur.fetchone()
    assert row is not None
    return Snapshot(objects=json.loads(row[0]))


# --------------------------------------------------------------------------
# Diff


@dataclass(frozen=True)
class Change:
    """One difference between two snapshots."""

    kind: str  # "added" | "removed" | "changed"
    object_type: str
    object: str
    attribute: str | None
    before: Any
    after: Any

    def describe(self) -> str:
        """One readable line, e.g. ``column public.users.email: nullable changed: true -> false``."""
        head = f"{self.object_type} {self.object}"
        if self.kind == "changed":
            return f"{head}: {self.attribute} changed: {_show(self.before)} -> {_show(self.after)}"
        attrs = self.after if self.kind == "added" else self.before
        brief = _brief(self.object_type, attrs)
        return f"{head}: {self.kind}" + (f" ({brief})" if brief else "")


_MAX_VALUE = 160


def _show(value: Any) -> str:
    if isinstance(value, str):
        value = " ".join(value.split())
    text = _canonical(value)
    if len(text) > _MAX_VALUE:
        text = text[: _MAX_VALUE - 1] + "…"
    return text


def _brief(object_type: str, attrs: Any) -> str:
    if not isinstance(attrs, Mapping):
        return ""
    if object_type == "column":
        parts = [str(attrs.get("type"))]
        if attrs.get("nullable") is False:
            parts.append("not null")
        if attrs.get("default") is not None:
            parts.append(f"default {attrs['default']}")
        if attrs.get("identity"):
            parts.append(f"identity {attrs['identity']}")
        if attrs.get("generated"):
            parts.append(f"generated {attrs['generated']}")
        text = " ".join(parts)
    elif object_type in ("constraint", "index", "trigger", "rule") and attrs.get("definition"):
        text = str(attrs["definition"])
    elif object_type == "enum":
        text = _canonical(attrs.get("values"))
    elif object_type == "table":
        text = f"{attrs.get('kind')}, columns {', '.join(attrs.get('column_order') or [])}"
    else:
        return ""
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _order_changed(before: Any, after: Any) -> bool:
    """Whether the columns present on both sides appear in a different order.

    Adding or dropping a column is reported as a column change; only a real
    reordering of the columns that survive is a ``column_order`` change.
    """
    if not isinstance(before, list) or not isinstance(after, list):
        return bool(before != after)
    common = set(before) & set(after)
    return [c for c in before if c in common] != [c for c in after if c in common]


def _sort_key(change: Change) -> tuple[int, str, int, str]:
    return (
        _TYPE_RANK.get(change.object_type, len(_TYPE_RANK)),
        change.object,
        _KIND_RANK.get(change.kind, 3),
        change.attribute or "",
    )


def diff_snapshots(before: Snapshot, after: Snapshot) -> list[Change]:
    """The differences from *before* to *after*, in a deterministic order.

    Ordered by object type (schemas first, policies last), then name, then
    removed/added/changed, then attribute.
    """
    changes: list[Change] = []
    old, new = before.objects, after.objects
    for key in old.keys() | new.keys():
        object_type, name = _split_key(key)
        if key not in new:
            changes.append(Change("removed", object_type, name, None, old[key], None))
            continue
        if key not in old:
            changes.append(Change("added", object_type, name, None, None, new[key]))
            continue
        a, b = old[key], new[key]
        if a == b:
            continue
        for attribute in sorted(a.keys() | b.keys()):
            va, vb = a.get(attribute), b.get(attribute)
            if va == vb:
                continue
            if attribute == "column_order" and not _order_changed(va, vb):
                continue
            changes.append(Change("changed", object_type, name, attribute, va, vb))
    changes.sort(key=_sort_key)
    return changes


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def format_changes(changes: Sequence[Change], limit: int = 50) -> str:
    """A readable multi-line diff for failure messages (``+`` added, ``-`` removed, ``~`` changed)."""
    if not changes:
        return "(no schema changes)"
    shown = list(changes) if limit <= 0 else list(changes)[:limit]
    lines = [f"{_MARK.get(c.kind, '?')} {c.describe()}" for c in shown]
    rest = len(changes) - len(shown)
    if rest > 0:
        lines.append(f"... and {rest} more change{'s' if rest != 1 else ''}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Data fingerprints

_USER_TABLES = f"""
SELECT n.nspname::text, c.relname::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND n.nspname <> ALL (%(exclude)s::name[])
  AND {_not_in_extension('pg_class', 'c.oid')}
ORDER BY 3
"""

_NAMED_TABLES = """
SELECT n.nspname::text, c.relname::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       c.relkind::text, t.name
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, i)
LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.i
"""

# Each row becomes the MD5 of its JSON form (keys sorted by jsonb, so the
# column order does not matter); the table's hash is the sum of those MD5s
# split into two 60-bit halves, which does not depend on the row order and
# counts duplicate rows.
_TABLE_HASH = sql.SQL(
    "SELECT {i}, count(*), coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0)::text, "
    "coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0)::text "
    "FROM (SELECT md5(to_jsonb(r)::text) AS h FROM {only} {table} AS r) AS rows"
)


def table_fingerprints(
    conn: psycopg.Connection[Any],
    tables: Iterable[str] | None = None,
    *,
    exclude_schemas: Iterable[str] = ("harness",),
) -> dict[str, tuple[int, str]]:
    """Per table: ``(row count, hash of all rows)``; the hash ignores row and column order.

    *tables* are qualified names as in :meth:`Snapshot.tables` (resolved by
    the server, like ``'public.users'::regclass``; materialized views are
    accepted, foreign tables are skipped because their rows live elsewhere);
    by default every ordinary table outside system schemas, *exclude_schemas*
    and extensions.  Each ordinary table is read on its own (``ONLY``): a
    parent's fingerprint does not include its children's rows, a partitioned
    table's does include its partitions'.  Rows are compared as JSON
    (``to_jsonb``), with the session's output settings pinned, so neither the
    column order nor the session's TimeZone or DateStyle matter; adding a
    column does change the hash.  All tables are read by one statement.
    Raises :class:`~harness.errors.ConfigError` for a name that is not a table.
    """
    exclude = [exclude_schemas] if isinstance(exclude_schemas, str) else list(exclude_schemas)
    with _pinned(conn) as (cur, _):
        if tables is None:
            found = cur.execute(_USER_TABLES, {"exclude": exclude}, prepare=False).fetchall()
        else:
            names = list(tables)
            found = []
            rows = cur.execute(_NAMED_TABLES, {"names": names}, prepare=False).fetchall()
            for schema, relname, qname, relkind, name in rows:
                if relname is None or relkind not in ("r", "p", "m", "f"):
                    raise ConfigError(
                        f"no table {name!r} in this database; give qualified names like 'public.users'"
                    )
                if relkind == "f":
                    log.debug("not fingerprinting foreign table %s: its rows live on another server", qname)
                    continue
                found.append((schema, relname, qname, relkind))
        if not found:
            return {}
        parts = [
            _TABLE_HASH.format(
                i=sql.Literal(i),
                only=sql.SQL("ONLY" if relkind == "r" else ""),
                table=sql.Identifier(schema, relname),
            )
            for i, (schema, relname, _q, relkind) in enumerate(found)
        ]
        rows = cur.execute(sql.SQL(" UNION ALL ").join(parts), prepare=False).fetchall()
    result: dict[str, tuple[int, str]] = {}
    for i, count, high, low in sorted(rows):
        qname = found[i][2]
        digest = hashlib.sha256(f"{count}:{high}:{low}".encode()).hexdigest()[:32]
        result[qname] = (int(count), digest)
    return result
