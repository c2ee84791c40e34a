"""Catalog snapshots of a database schema, a structured diff, and data fingerprints.

A :class:`Snapshot` maps one key per schema object, ``"<type> <qualified
name>"`` (``"table public.users"``, ``"column public.users.email"``,
``"function public.f(integer, text)"``), to a flat mapping of its
attributes.  Names are SQL identifiers, quoted only where PostgreSQL would
quote them (``quote_ident``), so they are unambiguous and can be pasted into
SQL.  Grants (``acl``) and comments (``comment``) are attributes of their
object.  A function keeps its source text (``body``); :func:`diff_snapshots`
compares bodies on their parse trees (SQL) or tokens (PL/pgSQL), so
whitespace and comments do not count as a difference.

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
import difflib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import parser as pg_parser
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from psycopg import pq, sql
from psycopg.rows import tuple_row

from .errors import ConfigError

__all__ = [
    "OBJECT_TYPES",
    "Snapshot",
    "Change",
    "take_snapshot",
    "SchemaDigest",
    "diff_snapshots",
    "format_changes",
    "table_fingerprints",
    "quote_ident",
    "schema_view",
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
# Keywords quote_ident quotes (all but the unreserved ones).
_QUOTED_KEYWORDS = frozenset(RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS | COL_NAME_KEYWORDS)
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
    # The catalog query joins many catalogs, so its estimated cost is high:
    # with PostgreSQL's default jit = on it was compiled on every call, which
    # cost ten times running it.  Pinned here for sessions the harness does
    # not open itself (apply's target); its own are set at connect
    # (harness.postgres.SESSION_SETTINGS).
    ("jit", "off"),
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
# One row per object, each a JSON array: the attribute values in the order of
# ``_ATTRIBUTES[<type>]``, then the key.  Leaving the attribute names out keeps
# the document small and the server from building one JSON object per row;
# the dicts are made in Python (``_objects_from``).
#
# Conventions: ``q`` columns hold quoted, schema-qualified names; ``_acl``
# turns an aclitem[] into a sorted JSON list (NULL stays NULL: the built-in
# default privileges); comments are read from pg_description directly (what
# obj_description/col_description do, without a function call per row).
#
# What keeps it cheap (each measured on a schema of 400 objects):
# - an object's comment is looked up only if its OID is below 16384 or some
#   comment is on an OID from 16384 up (one index probe, ``flags``): exact
#   either way, and cheap because PostgreSQL's own comments are all on OIDs
#   below 16384 (FirstNormalObjectId) while user-made objects get OIDs above;
# - extension members come from the pg_depend rows that point at an
#   extension (index on refclassid), read once;
# - functions and standalone types (enum, domain, range, composite) are found
#   through the dependency on their schema that PostgreSQL records for each
#   of them (for every schema that is not pinned: all but pg_catalog and
#   pg_toast, which a snapshot leaves out anyway), instead of a scan of all
#   of pg_proc and pg_type;
# - columns are read per table through the pg_attribute index (LATERAL).

_FIRST_NORMAL_OID = 16384  # FirstNormalObjectId

_ACL = (
    "CASE WHEN {acl} IS NULL THEN NULL "
    "ELSE coalesce((SELECT json_agg(a::text ORDER BY a::text) FROM unnest({acl}) a), '[]') END"
)
_COMMENT = (
    "CASE WHEN {oid} < {first} OR (SELECT flags.comments FROM flags) THEN ("
    "SELECT d.description FROM pg_description d "
    "WHERE d.objoid = {oid} AND d.classoid = '{catalog}'::regclass AND d.objsubid = {sub}) END"
)
_SORTED_TEXT_ARRAY = "CASE WHEN {arr} IS NOT NULL THEN (SELECT json_agg(x ORDER BY x) FROM unnest({arr}) x) END"


def _acl(expr: str, kind: str = "", owner: str = "") -> str:
    """The ACL as sorted text, or NULL when it grants exactly the defaults.

    GRANT then REVOKE leaves an explicit ACL equal to ``acldefault()`` where
    there was NULL before: the same privileges, so the same snapshot (else a
    correct up/down pair that grants and revokes looks like a leftover).  A
    column's default is no privileges, written NULL or ``{}``.
    """
    if not kind:
        return _ACL.format(acl=f"CASE WHEN cardinality({expr}) = 0 THEN NULL ELSE {expr} END")
    # The same items either way round (an ACL holds no duplicates): no subquery per object.
    default = f"{expr} @> acldefault('{kind}', {owner}) AND {expr} <@ acldefault('{kind}', {owner})"
    return _ACL.format(acl=f"CASE WHEN {expr} IS NOT NULL AND {default} THEN NULL ELSE {expr} END")


def _comment(oid: str, catalog: str, sub: str = "0") -> str:
    return _COMMENT.format(oid=oid, catalog=catalog, sub=sub, first=_FIRST_NORMAL_OID)


def _sorted(expr: str) -> str:
    return _SORTED_TEXT_ARRAY.format(arr=expr)


def _not_in_extension(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


def _not_member(catalog: str, oid: str) -> str:
    return f"{oid} NOT IN (SELECT ext.objid FROM ext WHERE ext.classid = '{catalog}'::regclass)"


def _in_schema(catalog: str, alias: str) -> str:
    """Join *catalog* rows (as *alias*) that depend on a schema of ``ns``."""
    return (
        f"JOIN pg_depend {alias}d ON {alias}d.refclassid = 'pg_namespace'::regclass "
        f"AND {alias}d.refobjid = ns.oid AND {alias}d.refobjsubid = 0 "
        f"AND {alias}d.classid = '{catalog}'::regclass"
    )


#: Attribute names of each object type, in the order the catalog query emits them.
_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "schema": ("acl", "comment"),
    "extension": ("version", "schema"),
    "table": (
        "kind", "persistence", "rls_enabled", "rls_forced", "partition_key", "partition_of",
        "partition_bound", "inherits", "server", "options", "column_order", "acl", "comment",
    ),
    "column": ("type", "nullable", "default", "identity", "generated", "expression", "collation", "acl", "comment"),
    "constraint": ("type", "definition", "validated", "comment"),
    "index": ("table", "definition", "valid", "comment"),
    "sequence": (
        "type", "start", "increment", "min", "max", "cache", "cycle", "owned_by", "persistence", "acl", "comment",
    ),
    "view": ("definition", "options", "acl", "comment"),
    "function": (
        "kind", "arguments", "result", "language", "volatility", "strict", "security_definer", "leakproof",
        "parallel", "config", "body", "library", "acl", "comment",
    ),
    "trigger": ("definition", "enabled", "comment"),
    "rule": ("definition", "enabled", "comment"),
    "policy": ("command", "permissive", "roles", "using", "with_check", "comment"),
    "enum": ("values", "acl", "comment"),
    "domain": ("base_type", "not_null", "default", "collation", "constraints", "acl", "comment"),
    "composite": ("attributes", "acl", "comment"),
    "range": ("subtype", "acl", "comment"),
}
_ATTRIBUTES["materialized_view"] = _ATTRIBUTES["view"]
_ATTRIBUTES["procedure"] = _ATTRIBUTES["function"]


def _catalog_query(server_version: int, *, restricted: bool = False, exclude: str = "$1", roots: str = "") -> str:
    """The catalog query: every object (``restricted=False``), or only the objects of some roots.

    Each row starts with the object's *root*: the OID of the catalog row
    whose change can change it (a table for its columns; every other object
    its own OID; see ``harness/tracking.py``).  The restricted form is the
    same query with each object list filtered on *roots* (an ``oid[]``
    expression), for the incremental snapshots of a rehearsal.
    """
    # Functions with an SQL-standard body (BEGIN ATOMIC, PostgreSQL 14+) keep
    # it in prosqlbody, not prosrc; the server prints it from its parse tree.
    # A function's "body" is its source text, "library" (C functions) its probin.
    sqlbody = (
        "CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) END"
        if server_version >= 140000
        else "NULL::text"
    )

    def only(oid: str) -> str:
        return f"AND {oid} = ANY({roots})" if restricted else ""

    def not_member(catalog: str, oid: str) -> str:
        # A few objects probe pg_depend one by one; all of them read the
        # extensions' members once (thousands in a database with PostGIS).
        return _not_in_extension(catalog, oid) if restricted else _not_member(catalog, oid)

    if restricted:
        # Tables whose rows the object lists join: the roots, and the tables
        # of root constraints, indexes, triggers, rules and policies.
        relroots = f"""
relroots AS MATERIALIZED (
    SELECT unnest({roots}) AS oid
    UNION SELECT x.conrelid FROM pg_constraint x WHERE x.oid = ANY({roots}) AND x.conrelid <> 0
    UNION SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = ANY({roots})
    UNION SELECT x.tgrelid FROM pg_trigger x WHERE x.oid = ANY({roots})
    UNION SELECT x.ev_class FROM pg_rewrite x WHERE x.oid = ANY({roots})
    UNION SELECT x.polrelid FROM pg_policy x WHERE x.oid = ANY({roots})
),"""
        rel_from = "relroots rr JOIN pg_class c ON c.oid = rr.oid JOIN ns ON ns.oid = c.relnamespace"
        ty_from = f"ns JOIN pg_type t ON t.typnamespace = ns.oid AND t.oid = ANY({roots})"
        proc_from = f"ns JOIN pg_proc p ON p.pronamespace = ns.oid AND p.oid = ANY({roots})"
    else:
        relroots = ""
        rel_from = "pg_class c JOIN ns ON ns.oid = c.relnamespace"
        ty_from = f"ns {_in_schema('pg_type', 't')}\n    JOIN pg_type t ON t.oid = td.objid AND t.typnamespace = ns.oid"
        proc_from = f"ns {_in_schema('pg_proc', 'p')}\n    JOIN pg_proc p ON p.oid = pd.objid AND p.pronamespace = ns.oid"
    return f"""
WITH{relroots}
ext AS MATERIALIZED (
    SELECT e.classid, e.objid FROM pg_depend e
    WHERE e.refclassid = 'pg_extension'::regclass AND e.deptype = 'e'
),
flags AS MATERIALIZED (
    SELECT EXISTS (SELECT FROM pg_description d WHERE d.objoid >= {_FIRST_NORMAL_OID}) AS comments
),
ns AS MATERIALIZED (
    SELECT n.oid, quote_ident(n.nspname) AS q, n.nspacl, n.nspowner
    FROM pg_namespace n
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
      AND n.nspname <> ALL ({exclude})
      AND {not_member('pg_namespace', 'n.oid')}
),
rel AS MATERIALIZED (
    SELECT c.oid, c.relkind, c.relpersistence, c.relrowsecurity,
           c.relforcerowsecurity, c.relispartition, c.relpartbound, c.reloptions,
           c.relacl, c.relowner, ns.q || '.' || quote_ident(c.relname) AS q
    FROM {rel_from}
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I')
      AND {not_member('pg_class', 'c.oid')}
),
att AS MATERIALIZED (
    SELECT r.oid AS relid, r.q AS relq, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
           a.attidentity, a.attgenerated, a.attcollation, a.attacl
    FROM rel r CROSS JOIN LATERAL (
        SELECT * FROM pg_attribute a
        WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped OFFSET 0) a
    WHERE r.relkind IN ('r', 'p', 'f')
),
-- A partition has exactly one parent ("parent"); other tables any number.
inh AS MATERIALIZED (
    SELECT i.inhrelid,
           json_agg(quote_ident(pn.nspname) || '.' || quote_ident(pc.relname) ORDER BY i.inhseqno) AS parents,
           min(quote_ident(pn.nspname) || '.' || quote_ident(pc.relname)) AS parent
    FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
    {"WHERE i.inhrelid IN (SELECT rel.oid FROM rel)" if restricted else ""}
    GROUP BY i.inhrelid
),
ty AS MATERIALIZED (
    SELECT t.oid, t.typtype, t.typbasetype, t.typtypmod, t.typnotnull, t.typdefaultbin,
           t.typcollation, t.typrelid, t.typacl, t.typowner, ns.q || '.' || quote_ident(t.typname) AS q
    FROM {ty_from}
    WHERE t.typtype IN ('e', 'd', 'c', 'r')
      AND (t.typtype <> 'c' OR (SELECT tc.relkind FROM pg_class tc WHERE tc.oid = t.typrelid) = 'c')
      AND {not_member('pg_type', 't.oid')}
),
objects(o) AS (
    SELECT json_build_array(
        ns.oid,
        {_acl('ns.nspacl', 'n', 'ns.nspowner')},
        {_comment('ns.oid', 'pg_namespace')},
        'schema ' || ns.q)
    FROM ns WHERE true {only('ns.oid')}

    UNION ALL
    SELECT json_build_array(x.oid, x.extversion, xn.nspname::text, 'extension ' || quote_ident(x.extname))
    FROM pg_extension x JOIN pg_namespace xn ON xn.oid = x.extnamespace
    WHERE xn.nspname <> ALL ({exclude}) {only('x.oid')}

    UNION ALL
    SELECT json_build_array(
        r.oid,
        CASE r.relkind WHEN 'r' THEN 'ordinary' WHEN 'p' THEN 'partitioned' ELSE 'foreign' END,
        CASE r.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END,
        r.relrowsecurity,
        r.relforcerowsecurity,
        CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END,
        CASE WHEN r.relispartition THEN inh.parent END,
        pg_get_expr(r.relpartbound, r.oid),
        CASE WHEN r.relispartition THEN '[]'::json ELSE coalesce(inh.parents, '[]') END,
        CASE WHEN r.relkind = 'f' THEN (
            SELECT fs.srvname::text FROM pg_foreign_table ft
            JOIN pg_foreign_server fs ON fs.oid = ft.ftserver WHERE ft.ftrelid = r.oid) END,
        {_sorted('r.reloptions')},
        coalesce(co.names, '[]'),
        {_acl('r.relacl', 'r', 'r.relowner')},
        {_comment('r.oid', 'pg_class')},
        'table ' || r.q)
    FROM rel r
    LEFT JOIN inh ON inh.inhrelid = r.oid
    LEFT JOIN (SELECT att.relid, json_agg(quote_ident(att.attname) ORDER BY att.attnum) AS names
               FROM att GROUP BY att.relid) co ON co.relid = r.oid
    WHERE r.relkind IN ('r', 'p', 'f') {only('r.oid')}

    UNION ALL
    -- A column's collation is shown when it differs from its type's; a
    -- column of a type without collations has collation 0, like its type.
    SELECT json_build_array(
        a.relid,
        format_type(a.atttypid, a.atttypmod),
        NOT a.attnotnull,
        CASE WHEN a.attgenerated = '' THEN pg_get_expr(ad.adbin, ad.adrelid) END,
        CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
        CASE a.attgenerated WHEN 's' THEN 'stored' WHEN 'v' THEN 'virtual' END,
        CASE WHEN a.attgenerated <> '' THEN pg_get_expr(ad.adbin, ad.adrelid) END,
        CASE WHEN a.attcollation <> 0
              AND a.attcollation <> (SELECT t.typcollation FROM pg_type t WHERE t.oid = a.atttypid) THEN (
            SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = a.attcollation) END,
        {_acl('a.attacl')},
        {_comment('a.relid', 'pg_class', 'a.attnum')},
        'column ' || a.relq || '.' || quote_ident(a.attname))
    FROM att a
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.relid AND ad.adnum = a.attnum
    WHERE true {only('a.relid')}

    UNION ALL
    -- NOT NULL constraints (pg_constraint rows since PostgreSQL 18) are
    -- reported as the column's "nullable", the same on every version.
    SELECT json_build_array(
        c.oid,
        CASE c.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique' WHEN 'c' THEN 'check'
             WHEN 'f' THEN 'foreign key' WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger'
             ELSE c.contype::text END,
        regexp_replace(pg_get_constraintdef(c.oid), ' NOT VALID$', ''),
        c.convalidated,
        {_comment('c.oid', 'pg_constraint')},
        'constraint ' || r.q || '.' || quote_ident(c.conname))
    FROM rel r JOIN pg_constraint c ON c.conrelid = r.oid
    WHERE c.contype <> 'n' {only('c.oid')}

    UNION ALL
    SELECT json_build_array(
        r.oid,
        tr.q,
        pg_get_indexdef(i.indexrelid),
        i.indisvalid,
        {_comment('r.oid', 'pg_class')},
        'index ' || r.q)
    FROM rel r JOIN pg_index i ON i.indexrelid = r.oid JOIN rel tr ON tr.oid = i.indrelid
    WHERE r.relkind IN ('i', 'I') {only('r.oid')}

    UNION ALL
    -- The sequence's current value is data, not schema: left out.  Identity
    -- sequences are part of their column ("identity").
    SELECT json_build_array(
        r.oid,
        format_type(s.seqtypid, NULL),
        s.seqstart,
        s.seqincrement,
        s.seqmin,
        s.seqmax,
        s.seqcache,
        s.seqcycle,
        (SELECT quote_ident(on_.nspname) || '.' || quote_ident(oc.relname) || '.' || quote_ident(oa.attname)
         FROM pg_depend d JOIN pg_class oc ON oc.oid = d.refobjid
         JOIN pg_namespace on_ ON on_.oid = oc.relnamespace
         JOIN pg_attribute oa ON oa.attrelid = d.refobjid AND oa.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid AND d.deptype = 'a'
           AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
         LIMIT 1),
        CASE r.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END,
        {_acl('r.relacl', 's', 'r.relowner')},
        {_comment('r.oid', 'pg_class')},
        'sequence ' || r.q)
    FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
    WHERE r.relkind = 'S' {only('r.oid')}
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = r.oid AND d.deptype = 'i')

    UNION ALL
    SELECT json_build_array(
        r.oid,
        pg_get_viewdef(r.oid),
        {_sorted('r.reloptions')},
        {_acl('r.relacl', 'r', 'r.relowner')},
        {_comment('r.oid', 'pg_class')},
        CASE r.relkind WHEN 'v' THEN 'view ' ELSE 'materialized_view ' END || r.q)
    FROM rel r WHERE r.relkind IN ('v', 'm') {only('r.oid')}

    UNION ALL
    -- Functions made by the system for a type (range constructors) belong to
    -- the type.
    SELECT json_build_array(
        p.oid,
        CASE p.prokind WHEN 'f' THEN 'function' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window'
             WHEN 'p' THEN 'procedure' END,
        pg_get_function_arguments(p.oid),
        pg_get_function_result(p.oid),
        l.lanname::text,
        CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
        p.proisstrict,
        p.prosecdef,
        p.proleakproof,
        CASE p.proparallel WHEN 's' THEN 'safe' WHEN 'r' THEN 'restricted' ELSE 'unsafe' END,
        {_sorted('p.proconfig')},
        coalesce({sqlbody}, p.prosrc),
        p.probin,
        {_acl('p.proacl', 'f', 'p.proowner')},
        {_comment('p.oid', 'pg_proc')},
        CASE p.prokind WHEN 'p' THEN 'procedure ' ELSE 'function ' END
            || ns.q || '.' || quote_ident(p.proname) || '(' || oidvectortypes(p.proargtypes) || ')')
    FROM {proc_from}
    JOIN pg_language l ON l.oid = p.prolang
    WHERE {not_member('pg_proc', 'p.oid')}
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'i')

    UNION ALL
    SELECT json_build_array(
        tg.oid,
        pg_get_triggerdef(tg.oid),
        CASE tg.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
             WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END,
        {_comment('tg.oid', 'pg_trigger')},
        'trigger ' || r.q || '.' || quote_ident(tg.tgname))
    FROM rel r JOIN pg_trigger tg ON tg.tgrelid = r.oid
    WHERE NOT tg.tgisinternal {only('tg.oid')}

    UNION ALL
    SELECT json_build_array(
        rw.oid,
        pg_get_ruledef(rw.oid),
        CASE rw.ev_enabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
             WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END,
        {_comment('rw.oid', 'pg_rewrite')},
        'rule ' || r.q || '.' || quote_ident(rw.rulename))
    FROM rel r JOIN pg_rewrite rw ON rw.ev_class = r.oid
    WHERE rw.rulename <> '_RETURN' {only('rw.oid')}

    UNION ALL
    SELECT json_build_array(
        po.oid,
        CASE po.polcmd WHEN '*' THEN 'ALL' WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
             WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' END,
        po.polpermissive,
        (SELECT json_agg(rn ORDER BY rn) FROM (
            SELECT CASE WHEN ro = 0 THEN 'public' ELSE pg_get_userbyid(ro)::text END AS rn
            FROM unnest(po.polroles) ro) rs),
        pg_get_expr(po.polqual, po.polrelid),
        pg_get_expr(po.polwithcheck, po.polrelid),
        {_comment('po.oid', 'pg_policy')},
        'policy ' || r.q || '.' || quote_ident(po.polname))
    FROM rel r JOIN pg_policy po ON po.polrelid = r.oid WHERE true {only('po.oid')}

    UNION ALL
    SELECT json_build_array(
        ty.oid,
        coalesce((SELECT json_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = ty.oid), '[]'),
        {_acl('ty.typacl', 'T', 'ty.typowner')},
        {_comment('ty.oid', 'pg_type')},
        'enum ' || ty.q)
    FROM ty WHERE ty.typtype = 'e'

    UNION ALL
    SELECT json_build_array(
        ty.oid,
        format_type(ty.typbasetype, ty.typtypmod),
        ty.typnotnull,
        pg_get_expr(ty.typdefaultbin, 0),
        CASE WHEN ty.typcollation <> bt.typcollation THEN (
            SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = ty.typcollation) END,
        coalesce((SELECT json_object_agg(quote_ident(c.conname), pg_get_constraintdef(c.oid))
                  FROM pg_constraint c WHERE c.contypid = ty.oid AND c.contype <> 'n'), '{{}}'),
        {_acl('ty.typacl', 'T', 'ty.typowner')},
        {_comment('ty.oid', 'pg_type')},
        'domain ' || ty.q)
    FROM ty JOIN pg_type bt ON bt.oid = ty.typbasetype WHERE ty.typtype = 'd'

    UNION ALL
    SELECT json_build_array(
        ty.oid,
        coalesce((
            SELECT json_agg(json_build_array(quote_ident(a.attname), format_type(a.atttypid, a.atttypmod))
                            ORDER BY a.attnum)
            FROM pg_attribute a WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        {_acl('ty.typacl', 'T', 'ty.typowner')},
        {_comment('ty.oid', 'pg_type')},
        'composite ' || ty.q)
    FROM ty WHERE ty.typtype = 'c'

    UNION ALL
    SELECT json_build_array(
        ty.oid,
        format_type(rg.rngsubtype, NULL),
        {_acl('ty.typacl', 'T', 'ty.typowner')},
        {_comment('ty.oid', 'pg_type')},
        'range ' || ty.q)
    FROM ty JOIN pg_range rg ON rg.rngtypid = ty.oid WHERE ty.typtype = 'r'
)
SELECT coalesce(json_agg(o), '[]')::text FROM objects
"""


#: The object lists of the catalog query, in order, by the type of object each emits.
_SECTIONS = (
    "schema", "extension", "table", "column", "constraint", "index", "sequence", "view", "function",
    "trigger", "rule", "policy", "enum", "domain", "composite", "range",
)
_OBJECTS_START = "objects(o) AS (\n"
_OBJECTS_END = "\n)\nSELECT coalesce(json_agg(o), '[]')::text FROM objects"


def _catalog_sections(
    server_version: int, groups: Sequence[Sequence[str]], *, exclude: str, roots: str
) -> list[str]:
    """The restricted catalog query as one statement per group of object lists (types of :data:`_SECTIONS`).

    A statement that finds nothing still pays for starting up every branch
    of a query; split in groups, only the lists a change can touch cost
    anything.  Each statement returns a JSON array (text) of rows.
    """
    query = _catalog_query(server_version, restricted=True, exclude=exclude, roots=roots)
    head, _, rest = query.partition(_OBJECTS_START)
    body, _, _ = rest.rpartition(_OBJECTS_END)
    parts = body.split("\n    UNION ALL\n")
    assert len(parts) == len(_SECTIONS), "the catalog query's object lists changed: update _SECTIONS"
    by_name = dict(zip(_SECTIONS, parts))
    return [
        head + _OBJECTS_START + "\n    UNION ALL\n".join(by_name[name] for name in group) + _OBJECTS_END
        for group in groups
    ]


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


def _objects_from(document: str | list[Any], roots: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The objects of the catalog query's JSON document, each as a dict of its attributes.

    Each row is ``[root, attribute values..., key]``; when *roots* is a
    dict, it receives each key's root.
    """
    objects: dict[str, dict[str, Any]] = {}
    for row in json.loads(document) if isinstance(document, str) else document:
        key = row[-1]
        # zip stops at the last attribute name: the key at the end is left out.
        objects[key] = dict(zip(_ATTRIBUTES[key[: key.index(" ")]], row[1:]))
        if roots is not None:
            roots[key] = int(row[0])
    return objects


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
        # A plain dict (JSON-, copy- and pickle-friendly), taken over, not
        # copied: the caller hands it over and nobody changes it afterwards.
        # Its order means nothing: the JSON text and every diff sort their
        # keys, and a rehearsal builds hundreds of snapshots from the one before.
        if type(self.objects) is not dict:
            object.__setattr__(self, "objects", dict(self.objects))

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
        """A hex digest of the objects: equal schemas, equal digests (see :class:`SchemaDigest`)."""
        return SchemaDigest(self.objects).hexdigest()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def tables(self) -> frozenset[str]:
        """Qualified names of all tables (ordinary, partitioned and foreign), e.g. ``public.users``."""
        # Computed once: the lint and locks items of a migration both ask its before-state.
        found = self.__dict__.get("_tables")
        if found is None:
            found = frozenset(key[6:] for key in self.objects if key.startswith("table "))
            self.__dict__["_tables"] = found  # a cache, not a field: equality and hashing ignore it
        return found

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


class SchemaDigest:
    """The digest of a schema, kept up to date object by object.

    The sum, modulo 2**512, of the SHA-512 of each object's canonical text
    (``"key":{attributes}``), hashed once more with SHA-256.  Equal digests
    mean equal snapshots; two function bodies that differ only in whitespace
    or comments give different digests (the exact text is hashed, so a
    digest never depends on the parser's version) though
    :func:`diff_snapshots` finds no difference between them.  A sum does not
    depend on the order of the objects, and changing one object changes it
    by that object alone: a rehearsal's receipt holds the digest after every
    migration, and re-hashing each whole schema made it cost the history
    times the schema (1.7 s of a 3.4 s rehearsal of 800 migrations).
    """

    _MODULUS = 1 << 512

    def __init__(self, objects: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._sum = 0
        for key, attrs in (objects or {}).items():
            self._sum += _object_hash(key, attrs)
        self._sum %= self._MODULUS

    def replace(self, key: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """Object *key* changes from *old* to *new* (``None``: absent)."""
        if old is not None:
            self._sum -= _object_hash(key, old)
        if new is not None:
            self._sum += _object_hash(key, new)
        self._sum %= self._MODULUS

    def hexdigest(self) -> str:
        """SHA-256 (hex) of the sum."""
        return hashlib.sha256(self._sum.to_bytes(64, "big")).hexdigest()


def _object_hash(key: str, attrs: Mapping[str, Any]) -> int:
    text = f"{_canonical(key)}:{_canonical(attrs)}".encode()
    return int.from_bytes(hashlib.sha512(text).digest(), "big")


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


def quote_ident(name: str) -> str:
    """*name* as PostgreSQL's ``quote_ident`` prints it: bare when it can be, else in double quotes."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _QUOTED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def schema_view(snapshot: Snapshot, schema: str, as_schema: str = "public") -> Snapshot:
    """The objects of *schema* alone, named as if they were in *as_schema*.

    A fleet of tenant schemas compares each tenant with a rehearsal that ran
    the migrations in ``public``: both sides are reduced to their one schema
    and named alike.  Qualified names in keys and in attribute texts
    (definitions, defaults, types) are renamed; the schema entry itself (its
    ACL and comment are the tenant's, not the migrations') is left out, as are
    objects in other schemas and extensions.
    """
    prefix = quote_ident(schema) + "."
    target = quote_ident(as_schema) + "."
    # Renamed in the JSON text, where a quoted name's double quotes are escaped.
    prefix_json, target_json = json.dumps(prefix)[1:-1], json.dumps(target)[1:-1]
    boundary = "" if prefix.startswith('"') else r"(?<![A-Za-z0-9_$])"
    pattern = re.compile(boundary + re.escape(prefix_json))
    kept: dict[str, Any] = {}
    for key, attrs in snapshot.objects.items():
        object_type, name = _split_key(key)
        if object_type == "schema" or not name.startswith(prefix):
            continue
        kept[f"{object_type} {target}{name[len(prefix):]}"] = attrs
    if prefix == target:
        return Snapshot(kept)
    text = pattern.sub(lambda _: target_json, json.dumps(kept, sort_keys=True))
    return Snapshot(json.loads(text))


def take_snapshot(conn: psycopg.Connection[Any], *, exclude_schemas: Iterable[str] = ("harness",)) -> Snapshot:
    """Read the schema of the database behind *conn* from the catalogs.

    One catalog query builds the whole snapshot as one JSON document on the
    server; it is prepared once per session (as ``harness_snapshot_<hash>``)
    and planned once.  System schemas, *exclude_schemas* and objects that
    belong to an extension are left out.  Works inside an open transaction
    (it sees the transaction's uncommitted DDL) and leaves the transaction
    and the session settings as it found them.  Needs PostgreSQL 12 or later.

    It costs one round trip on an idle autocommit connection and two inside
    a transaction (the second one puts the caller's settings back).

    psycopg drops every prepared statement of a connection (``DEALLOCATE
    ALL``) after a rollback, ``ALTER`` or ``DROP`` once it has prepared
    statements of its own; the next snapshot then prepares and plans again
    (some milliseconds).  Connections that take many snapshots between DDL
    should set ``conn.prepare_threshold = None``.
    """
    return Snapshot(objects=_objects_from(_document(conn, exclude_schemas)))


def take_rooted_snapshot(
    conn: psycopg.Connection[Any], *, exclude_schemas: Iterable[str] = ("harness",)
) -> tuple[Snapshot, dict[str, int]]:
    """:func:`take_snapshot`, and each object's root (see ``harness/tracking.py``)."""
    roots: dict[str, int] = {}
    objects = _objects_from(_document(conn, exclude_schemas), roots)
    return Snapshot(objects=objects), roots


def _document(conn: psycopg.Connection[Any], exclude_schemas: Iterable[str]) -> str:
    exclude = (exclude_schemas,) if isinstance(exclude_schemas, str) else tuple(exclude_schemas)
    script = _script_for(conn, exclude)
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        # Several statements in one message are not allowed in pipeline mode.
        document = _run_one_by_one(conn, script)
    elif conn.info.transaction_status == pq.TransactionStatus.INTRANS:
        document = _run_in_transaction(conn, script)
    elif conn.info.transaction_status == pq.TransactionStatus.IDLE and conn.autocommit:
        document = _run_alone(conn, script)
    else:
        # Idle without autocommit: in a transaction of its own, as psycopg
        # would do.  In a failed transaction this raises like any statement.
        with conn.transaction():
            document = _run_in_transaction(conn, script)
    return document


# --------------------------------------------------------------------------
# Running the catalog query
#
# The statements go out as SQL text, several to a message (the simple query
# protocol), so that a snapshot costs one or two round trips instead of five.
# Values are quoted with E'...', which means the same whatever
# standard_conforming_strings says, so the text can be cached.

_SAVEPOINT = "harness_snapshot"
# Sets the pinned settings and returns the caller's values (in
# _PINNED_SETTINGS order).  The MATERIALIZED CTE is read first.
_PIN = (
    "WITH old AS MATERIALIZED (SELECT "
    + ", ".join(f"pg_catalog.current_setting('{name}') AS s{i}" for i, (name, _) in enumerate(_PINNED_SETTINGS))
    + ") SELECT old.*, "
    + ", ".join(f"pg_catalog.set_config('{name}', '{value}', true)" for name, value in _PINNED_SETTINGS)
    + " FROM old"
)


def _literal(value: str) -> str:
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class _Script:
    """The SQL text that takes a snapshot, for one prepared statement, exclude list and encoding."""

    name: str
    encoding: str
    alone: bytes  # pin; EXECUTE
    alone_prepare: bytes  # pin; PREPARE; EXECUTE
    enter: bytes  # SAVEPOINT; pin; EXECUTE
    reenter_prepare: bytes  # ROLLBACK TO SAVEPOINT; pin; PREPARE; EXECUTE
    leave_on_error: bytes  # ROLLBACK TO SAVEPOINT; RELEASE SAVEPOINT
    prepare: bytes
    execute: bytes
    restores: dict[tuple[str, ...], bytes]

    def restore(self, old: tuple[str, ...]) -> bytes:
        """Put the caller's settings *old* back and release the savepoint."""
        found = self.restores.get(old)
        if found is None:
            if len(self.restores) > 16:
                self.restores.clear()
            text = "SELECT " + ", ".join(
                f"pg_catalog.set_config('{setting}', {_literal(value)}, true)"
                for (setting, _), value in zip(_PINNED_SETTINGS, old)
            )
            found = self.restores[old] = f"{text}; RELEASE SAVEPOINT {_SAVEPOINT}".encode(self.encoding)
        return found


_SCRIPTS: dict[tuple[int, tuple[str, ...], str], _Script] = {}


def _script_for(conn: psycopg.Connection[Any], exclude: tuple[str, ...]) -> _Script:
    query, name = _query_for(conn.info.server_version)
    encoding = conn.info.encoding
    key = (conn.info.server_version, exclude, encoding)
    script = _SCRIPTS.get(key)
    if script is None:
        # EXECUTE is a utility statement: it takes no protocol parameters, so
        # the list goes in as a literal.
        names = ", ".join(_literal(schema) for schema in exclude)
        execute = f"EXECUTE {name} (ARRAY[{names}]::pg_catalog.name[])"
        prepare = f"PREPARE {name} (pg_catalog.name[]) AS {query}"
        rollback = f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}"

        def text(*statements: str) -> bytes:
            return "; ".join(statements).encode(encoding)

        script = _SCRIPTS[key] = _Script(
            name=name,
            encoding=encoding,
            alone=text(_PIN, execute),
            alone_prepare=text(_PIN, prepare, execute),
            enter=text(f"SAVEPOINT {_SAVEPOINT}", _PIN, execute),
            reenter_prepare=text(rollback, _PIN, prepare, execute),
            leave_on_error=text(rollback, f"RELEASE SAVEPOINT {_SAVEPOINT}"),
            prepare=text(prepare),
            execute=text(execute),
            restores={},
        )
    return script


def _rows(cur: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
    """The first row of each result that has rows, after a multi-statement ``execute``."""
    rows = []
    while True:
        if cur.pgresult is not None and cur.pgresult.status == pq.ExecStatus.TUPLES_OK:
            row = cur.fetchone()
            assert row is not None
            rows.append(tuple(row))
        if not cur.nextset():
            return rows


def _run_alone(conn: psycopg.Connection[Any], script: _Script) -> str:
    """Take the snapshot on an idle autocommit connection: one message, one round trip.

    The statements of one simple-protocol message form one implicit
    transaction: the pinned settings (``set_config(..., true)``) end with it,
    and so does everything else if a statement fails.
    """
    cur = conn.cursor(row_factory=tuple_row)
    try:
        cur.execute(script.alone, prepare=False)
    except psycopg.errors.InvalidSqlStatementName:
        # First snapshot of this session, or the statement was deallocated.
        cur.execute(script.alone_prepare, prepare=False)
    return str(_rows(cur)[-1][0])


def _run_in_transaction(conn: psycopg.Connection[Any], script: _Script) -> str:
    """Take the snapshot inside the caller's transaction, in a savepoint: two round trips.

    The savepoint is released (which, unlike a rollback, leaves psycopg's own
    prepared statements alone) after the caller's settings are put back with
    ``set_config(..., true)``; on error it is rolled back, which restores the
    settings and leaves the caller's transaction usable.
    """
    cur = conn.cursor(row_factory=tuple_row)
    try:
        try:
            cur.execute(script.enter, prepare=False)
        except psycopg.errors.InvalidSqlStatementName:
            cur.execute(script.reenter_prepare, prepare=False)
        # Rows: the caller's settings (from the pin), then the document.
        old, (document,) = _rows(cur)
        cur.execute(script.restore(old), prepare=False)
    except BaseException:
        if conn.info.transaction_status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
            with contextlib.suppress(psycopg.Error):
                cur.execute(script.leave_on_error, prepare=False)
        raise
    return str(document)


def _run_one_by_one(conn: psycopg.Connection[Any], script: _Script) -> str:
    """Take the snapshot one statement at a time (pipeline mode)."""
    with _pinned(conn, script.name) as (cur, is_prepared):
        if not is_prepared:
            cur.execute(script.prepare, prepare=False)
        row = cur.execute(script.execute, prepare=False).fetchone()
    assert row is not None
    return str(row[0])


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
    #: For a function body: its language, which says how to show the difference.
    language: str | None = None

    def describe(self) -> str:
        """One readable line, e.g. ``column public.users.email: nullable changed: true -> false``.

        A long or multi-line text (a view definition, a function body, a
        constraint expression) is followed by indented lines showing where
        it differs: a unified diff, or for one long line the stretch around
        the first difference.
        """
        head = f"{self.object_type} {self.object}"
        if self.kind == "changed":
            if _is_long_text(self.before, self.after):
                lines = _text_diff(self.before or "", self.after or "")
                if self.attribute == "body" and isinstance(self.before, str) and isinstance(self.after, str):
                    lines = _body_diff(self.language, self.before, self.after, lines)
                return f"{head}: {self.attribute} changed:\n" + "\n".join("    " + line for line in lines)
            return f"{head}: {self.attribute} changed: {_show(self.before)} -> {_show(self.after)}"
        attrs = self.after if self.kind == "added" else self.before
        brief = _brief(self.object_type, attrs)
        return f"{head}: {self.kind}" + (f" ({brief})" if brief else "")


_MAX_VALUE = 160
# A text diff shows this many lines of context around each change, at most
# this many lines in all; one long line, this many characters either side.
_DIFF_CONTEXT = 2
_DIFF_LINES = 40
_EXCERPT = 60


def _show(value: Any) -> str:
    """A short value as JSON; texts with their whitespace collapsed.  Lists and objects (column lists) whole."""
    if isinstance(value, str):
        value = " ".join(value.split())
    text = _canonical(value)
    if isinstance(value, str) and len(text) > _MAX_VALUE:
        text = text[: _MAX_VALUE - 1] + "…"
    return text


def _is_long_text(before: Any, after: Any) -> bool:
    """Whether a change of *before* to *after* is shown as a text diff rather than two values.

    Texts that do not fit on one line together are, and texts that look
    the same with their whitespace collapsed.
    """
    texts = [v for v in (before, after) if v is not None]
    if not texts or not all(isinstance(v, str) for v in texts):
        return False
    shown = [_canonical(" ".join(v.split())) for v in texts]
    return sum(map(len, shown)) > _MAX_VALUE or (len(shown) == 2 and shown[0] == shown[1])


def _text_diff(before: str, after: str) -> list[str]:
    """Where *before* and *after* differ, as lines for a reviewer.

    Multi-line texts get a unified diff (``difflib``) with a little
    context; one long line, the stretch around its first difference on
    both sides, since a diff of two whole lines would show two walls of
    text that differ somewhere.
    """
    a, b = before.strip("\n").splitlines(), after.strip("\n").splitlines()
    if len(a) > 1 or len(b) > 1:
        diff = list(difflib.unified_diff(a, b, "before", "after", n=_DIFF_CONTEXT, lineterm=""))
        if diff:
            shown = diff[:_DIFF_LINES]
            if len(diff) > len(shown):
                shown.append(f"... {len(diff) - len(shown)} more diff lines")
            return shown
    # One line each (or texts that differ only in leading or trailing blank lines).
    start = 0
    limit = min(len(before), len(after))
    while start < limit and before[start] == after[start]:
        start += 1
    end = 0
    while end < limit - start and before[-1 - end] == after[-1 - end]:
        end += 1

    def excerpt(text: str) -> str:
        lo, hi = max(0, start - _EXCERPT), min(len(text), len(text) - end + _EXCERPT)
        middle = text[lo:hi]
        if len(middle) > 2 * _EXCERPT + 4 * _MAX_VALUE:
            middle = middle[: _EXCERPT + 2 * _MAX_VALUE] + " … " + middle[-(_EXCERPT + 2 * _MAX_VALUE) :]
        return ("…" if lo > 0 else "") + middle.replace("\n", "\\n") + ("…" if hi < len(text) else "")

    return [f"@@ from character {start + 1} @@", f"- {excerpt(before)}", f"+ {excerpt(after)}"]


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


def diff_snapshots(before: Snapshot, after: Snapshot, keys: Iterable[str] | None = None) -> list[Change]:
    """The differences from *before* to *after*, in a deterministic order.

    Ordered by object type (schemas first, policies last), then name, then
    removed/added/changed, then attribute.  *keys*, when given, are the only
    objects that can differ (what an incremental snapshot re-read): the
    others are not compared.
    """
    changes: list[Change] = []
    old, new = before.objects, after.objects
    for key in (old.keys() | new.keys()) if keys is None else keys:
        if key not in old and key not in new:
            continue
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
            if attribute == "body" and object_type in ("function", "procedure") and _same_body(a, b):
                continue
            language = a.get("language") if attribute == "body" and a.get("language") == b.get("language") else None
            changes.append(Change("changed", object_type, name, attribute, va, vb, language))
    changes.sort(key=_sort_key)
    return changes


# --------------------------------------------------------------------------
# Function bodies
#
# A snapshot keeps a function's body as its source text: a diff can then
# show a reviewer what changed.  Two bodies are the same when they mean the
# same, so that a down which recreates a function with other whitespace or
# comments restores it:
# - SQL bodies are compared on their parse trees (libpg_query, through
#   pglast), with the source positions left out: whitespace, comments, the
#   case of keywords and unquoted names, and redundant parentheses do not
#   count; constants and names do.
# - PL/pgSQL bodies are compared on their tokens as PostgreSQL's scanner
#   (which the PL/pgSQL parser reads from) sees them, comments left out,
#   keywords and unquoted names in lower case.  Not on libpg_query's
#   PL/pgSQL parse tree: its JSON leaves out some variable references
#   (``RETURN a`` and ``RETURN b`` come out the same), so changing a name
#   would not count.
# - Bodies of other languages, and bodies that do not parse or scan, are
#   compared as exact text; so are SQL-standard bodies (BEGIN ATOMIC), which
#   the server prints from its own parse tree.
# Snapshots, their JSON and their digests (SchemaDigest) hold the exact text:
# equal digests mean equal snapshots, and a digest never depends on the
# version of the parser.

_POSITION_KEYS = ("location", "stmt_location", "stmt_len")
_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _without_positions(node: dict[str, Any]) -> dict[str, Any]:
    for key in _POSITION_KEYS:
        node.pop(key, None)
    return node


def _words(body: str) -> list[str] | None:
    """The tokens of *body* as PostgreSQL's scanner reads them, comments left out; None if it does not scan.

    Keywords and unquoted names in lower case, as the server folds them.
    """
    try:
        tokens = pg_parser.scan(body)
    except pg_parser.ParseError:
        return None
    words = []
    for token in tokens:
        if token.name in _COMMENT_TOKENS:
            continue
        word = body[token.start : token.end + 1]
        if token.kind != "NO_KEYWORD" or (token.name == "IDENT" and not word.startswith('"')):
            word = word.translate(_ASCII_LOWER)
        words.append(word)
    return words


@functools.lru_cache(maxsize=4096)
def _body_form(language: str | None, body: str | None) -> str:
    """What a function body of *language* is compared on (a digest of its normalized form; see above).

    Cached: a rehearsal compares the same bodies again and again.
    """
    if body is None:
        return "none"
    form = None
    if language == "sql":
        try:
            tree = json.loads(pg_parser.parse_sql_json(body), object_hook=_without_positions)
        except pg_parser.ParseError:
            pass
        else:
            tree.pop("version", None)  # the parser's, not the body's
            form = "sql-tree:" + _canonical(tree)
    elif language == "plpgsql":
        words = _words(body)
        if words is not None:
            form = "plpgsql-tokens:" + _canonical(words)
    if form is None:
        form = "text:" + body
    return hashlib.sha256(form.encode()).hexdigest()


_LINE_ENDS = frozenset({";", "begin", "then", "else", "loop", "declare", "exception"})


def _body_lines(language: str | None, body: str) -> list[str] | None:
    """A SQL or PL/pgSQL body as its tokens, comments left out, a line per statement; None for other bodies."""
    words = _words(body) if language in ("sql", "plpgsql") else None
    if words is None:
        return None
    lines: list[str] = []
    line: list[str] = []
    for word in words:
        line.append(word)
        if word in _LINE_ENDS:
            lines.append(" ".join(line))
            line = []
    if line:
        lines.append(" ".join(line))
    return lines


def _body_diff(language: str | None, before: str, after: str, text_diff: list[str]) -> list[str]:
    """*text_diff*, or a diff of the bodies' tokens when that shows fewer changed lines.

    A down often recreates a function from a reformatted copy: a diff of
    the texts then marks every line, and the one changed constant is lost
    among them.
    """
    a, b = _body_lines(language, before), _body_lines(language, after)
    if a is None or b is None:
        return text_diff
    token_diff = list(difflib.unified_diff(a, b, "before", "after", n=1, lineterm=""))

    def changed(lines: list[str]) -> int:
        return sum(1 for line in lines if line[:1] in "+-" and line[:3] not in ("+++", "---"))

    if not token_diff or changed(token_diff) >= changed(text_diff):
        return text_diff
    shown = ["(whitespace and comments left out, one statement a line)", *token_diff[:_DIFF_LINES]]
    if len(token_diff) > _DIFF_LINES:
        shown.append(f"... {len(token_diff) - _DIFF_LINES} more diff lines")
    return shown


def _same_body(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two functions' attributes (``language``, ``body``) hold the same body, whitespace and comments aside."""
    if a.get("body") == b.get("body"):
        return True
    if a.get("language") != b.get("language"):
        return False
    return _body_form(a.get("language"), a.get("body")) == _body_form(b.get("language"), b.get("body"))


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
SELECT n.nspname::text, c.relname::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text,
       pg_relation_size(c.oid) = 0
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND n.nspname <> ALL (%(exclude)s::name[])
  AND {_not_in_extension('pg_class', 'c.oid')}
ORDER BY 3
"""

_NAMED_TABLES = """
SELECT n.nspname::text, c.relname::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       c.relkind::text, t.name, c.relkind IN ('r', 'm') AND pg_relation_size(c.oid) = 0
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, i)
LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.i
"""

# Each row becomes the MD5 of its JSON form (keys sorted by jsonb, so the
# column order does not matter); the table's hash is the sum of those MD5s
# split into two 60-bit halves, which does not depend on the row order and
# counts duplicate rows.
# The row count and the two sums of one table's rows (harness/tracking.py
# computes the same on the server, from the same text).
TABLE_HASH_COLUMNS = (
    "count(*), coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0)::text, "
    "coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0)::text"
)
_TABLE_HASH = sql.SQL(
    "SELECT {i}, " + TABLE_HASH_COLUMNS + " "
    "FROM (SELECT md5(to_jsonb(r)::text) AS h FROM {only} {table} AS r) AS rows"
)


def table_digest(count: int, high: str, low: str) -> tuple[int, str]:
    """A table's fingerprint, ``(row count, hash)``, from the row count and sums :data:`TABLE_HASH_COLUMNS` gives."""
    return int(count), hashlib.sha256(f"{count}:{high}:{low}".encode()).hexdigest()[:32]


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
            for schema, relname, qname, relkind, name, empty in rows:
                if relname is None or relkind not in ("r", "p", "m", "f"):
                    raise ConfigError(
                        f"no table {name!r} in this database; give qualified names like 'public.users'"
                    )
                if relkind == "f":
                    log.debug("not fingerprinting foreign table %s: its rows live on another server", qname)
                    continue
                found.append((schema, relname, qname, relkind, empty))
        # A table of no blocks has no rows (harness/tracking.py takes the same
        # shortcut): a schema-only seed of 500 tables cost 0.16 s to read.
        digests = {i: table_digest(0, "0", "0") for i, row in enumerate(found) if row[4]}
        parts = [
            _TABLE_HASH.format(
                i=sql.Literal(i),
                only=sql.SQL("ONLY" if relkind == "r" else ""),
                table=sql.Identifier(schema, relname),
            )
            for i, (schema, relname, _q, relkind, empty) in enumerate(found)
            if not empty
        ]
        if parts:
            rows = cur.execute(sql.SQL(" UNION ALL ").join(parts), prepare=False).fetchall()
            for i, count, high, low in rows:
                digests[i] = table_digest(count, high, low)
    return {found[i][2]: digests[i] for i in sorted(digests)}
