"""Incremental schema snapshots for the rehearsal: what a migration changed, computed on the server.

A full catalog snapshot (``harness/snapshot.py``) costs milliseconds; a
rehearsal needs four states per migration (after up, after a second up,
after down, after up again).  Here the rehearsal database records what each
statement changed and the snapshot is brought up to date by re-reading only
those objects:

* Two event triggers (``ddl_command_end`` and ``sql_drop``, enabled ALWAYS so
  ``session_replication_role`` does not silence them) append the
  ``classid:objid`` of every object a command created, altered or dropped to
  the session settings ``harness.changed`` and ``harness.dropped``.  Session
  settings, not ``SET LOCAL``, so DDL run inside a function with its own
  ``SET`` clauses is still recorded; they are transactional, so a rolled-back
  transaction or savepoint forgets what it did.
* ``harness.mark()`` starts a measurement: it clears those settings and
  records the write counters (``pg_stat_get_xact_*``) of the catalogs a
  snapshot reads and of the role catalogs, and whether the transaction has
  an ID yet.  A third event trigger (``ddl_command_start`` of ALTER TABLE)
  records the inheritance links before the first ALTER TABLE after the
  mark, in ``harness.links``: reading them at every mark cost more than the
  rest of it in a schema of hundreds of partitions.
* ``harness.changes(exclude, verify)`` ends it and returns one JSON document:
  the *roots* to re-read and their objects (the snapshot query restricted to
  them), and the row count and hash of every table the transaction may have
  written (a row write holds at least a RowExclusiveLock on its table until
  the transaction ends) or whose definition changed.  Without a transaction
  ID since the mark nothing was written, so nothing changed: it returns at
  once.  A measurement starts and ends in one transaction.

Every snapshot object has a root (see :func:`harness.snapshot._catalog_query`):
its table for a column, its own OID for every other object.  The roots to
re-read are the changed and dropped objects, mapped to roots, plus,
transitively, every object that depends on a changed one (``pg_depend``: a
renamed table, column, type or function changes how its dependents print, an
index or view definition, a foreign key, a column's type), every object a
changed one is an internal part of (renaming a primary key's index renames
its constraint), and the tables that inherited from a changed one before the
first ALTER TABLE (DETACH PARTITION reports only the parent and removes the
link).  Names print schema-qualified (the snapshot pins ``search_path``), so
creating an object never changes how another one prints.  A table among the roots is
hashed again even without a write: its rows' JSON names its columns.  A
relation among the roots is read with everything that hangs on it (indexes,
constraints, foreign keys referencing it, triggers, rules, policies), and
the state lets go of everything that hung on it before: ALTER COLUMN TYPE
rebuilds indexes and constraints under new OIDs and drops the old ones
without reporting them (see :attr:`State.anchored`).

When the record cannot be trusted the document says ``full`` and carries a
full snapshot instead: a command reported without an object (GRANT and
REVOKE), a changed schema (relations record no dependency on their schema)
or extension, written role catalogs (shared objects fire no event
triggers), or catalog writes with no command recorded at all (an UPDATE of a
system catalog; one next to DDL is not seen, nor DDL run while the
``event_triggers`` setting is off).  A rehearsal also compares its last incremental snapshot
with a full one (:class:`~harness.errors.HarnessError` on a difference), and
``HARNESS_SNAPSHOTS=verify`` compares every one of them (the test suite runs
that way); ``HARNESS_SNAPSHOTS=full`` turns tracking off.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import locks
from .errors import ConfigError, HarnessError
from .snapshot import (
    _PINNED_SETTINGS,
    TABLE_HASH_COLUMNS,
    Change,
    Snapshot,
    _catalog_query,
    _catalog_sections,
    _objects_from,
    diff_snapshots,
    format_changes,
    table_digest,
)

__all__ = [
    "State", "Delta", "install", "mode", "mark_sql", "changes_sql", "DELTA_COLUMN", "parse_delta", "advance",
    "differences", "anchors",
]

log = logging.getLogger(__name__)

DELTA_COLUMN = "harness.delta"

_MODES = ("incremental", "full", "verify")


def mode() -> str:
    """How rehearsals take snapshots: ``incremental`` (default), ``full`` or ``verify`` (``HARNESS_SNAPSHOTS``)."""
    value = os.environ.get("HARNESS_SNAPSHOTS", "incremental").strip().lower() or "incremental"
    if value not in _MODES:
        raise ConfigError(f"HARNESS_SNAPSHOTS={value!r} is not one of {', '.join(_MODES)}")
    return value


# Classes whose rows are roots themselves when dropped (a dropped column
# reports its table, with a sub-id).
_ROOT_CLASSES = ("pg_class", "pg_type", "pg_proc", "pg_constraint", "pg_trigger", "pg_rewrite", "pg_policy")
# A change to these cannot be followed object by object: take a full snapshot.
_FULL_CLASSES = ("pg_namespace", "pg_extension")
_ROLE_CATALOGS = ("pg_authid", "pg_auth_members")
# The catalogs a snapshot reads: writes to them with no command recorded mean
# someone changed them directly.
_SNAPSHOT_CATALOGS = (
    "pg_namespace", "pg_class", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index", "pg_type", "pg_proc",
    "pg_enum", "pg_range", "pg_description", "pg_trigger", "pg_rewrite", "pg_policy", "pg_sequence", "pg_inherits",
    "pg_depend", "pg_extension", "pg_language", "pg_collation", "pg_foreign_table",
)

# Object lists of the catalog query read together, and the kinds of root
# that make each group worth reading.  Schemas and extensions are missing: a
# change to them takes a full snapshot.
_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("table", "column", "constraint", "index"), ("table", "constraint", "index")),
    (("sequence",), ("sequence",)),
    (("view",), ("view",)),
    (("function",), ("function",)),
    (("trigger",), ("trigger",)),
    (("rule",), ("rule",)),
    (("policy",), ("policy",)),
    (("enum", "domain", "composite", "range"), ("type",)),
)

_USER_NAMESPACES = (
    "(SELECT n.oid FROM pg_catalog.pg_namespace n "
    "WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' AND n.nspname <> 'harness')"
)


def _writes(oid: str) -> str:
    return (
        f"(pg_catalog.pg_stat_get_xact_tuples_inserted({oid}) + pg_catalog.pg_stat_get_xact_tuples_updated({oid})"
        f" + pg_catalog.pg_stat_get_xact_tuples_deleted({oid}))"
    )


# A handful of objects: the planner, planning once for any number of them,
# would rather scan whole catalogs than probe their indexes.
_PROBE_SETTINGS = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin", "enable_bitmapscan")
_INDEX_PROBES = "\n".join(f"SET {name} = off" for name in _PROBE_SETTINGS)
_WHOLE_SCANS = "\n".join(f"SET {name} = on" for name in _PROBE_SETTINGS)


def _install_sql(server_version: int, catalogs: list[int], roles: list[int]) -> str:
    catalog_array = "'{" + ",".join(map(str, catalogs)) + "}'::pg_catalog.oid[]"
    role_array = "'{" + ",".join(map(str, roles)) + "}'::pg_catalog.oid[]"
    # search_path is a list: quoted, it would be one schema named "pg_catalog, pg_temp".
    pinned = "\n".join(
        f"SET {name} = {value if name == 'search_path' else repr(value)}" for name, value in _PINNED_SETTINGS
    )
    full = _catalog_query(server_version, exclude="p_exclude")
    xid_assigned = (
        "pg_catalog.pg_current_xact_id_if_assigned()" if server_version >= 130000
        else "pg_catalog.txid_current_if_assigned()"
    )
    statements = _catalog_sections(
        server_version, [lists for lists, _ in _GROUPS], exclude="p_exclude", roots="v_roots"
    )
    sections = []
    for (_, kinds), statement in zip(_GROUPS, statements):
        wanted = " OR ".join(f"'{kind}' = ANY (v_kinds)" for kind in kinds)
        sections.append(
            f"        IF {wanted} THEN\n            {statement.strip()} INTO v_part;\n"
            f"            v_out := v_out || v_part::pg_catalog.jsonb;\n        END IF;"
        )
    restricted = "\n".join(sections)
    root_classes = ", ".join(f"'{c}'::pg_catalog.regclass" for c in _ROOT_CLASSES)
    full_classes = ", ".join(f"'{c}'::pg_catalog.regclass" for c in _FULL_CLASSES)
    # Fingerprint of one table: the same as snapshot.table_fingerprints.
    table_hash = f"SELECT {TABLE_HASH_COLUMNS} FROM (SELECT md5(to_jsonb(r)::text) AS h FROM ONLY %s AS r) AS rows"
    return f"""
CREATE SCHEMA IF NOT EXISTS harness;

CREATE OR REPLACE FUNCTION harness.track_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('harness.changed',
        coalesce(pg_catalog.current_setting('harness.changed', true), '')
        || coalesce((SELECT pg_catalog.string_agg(coalesce(c.classid::text || ':' || c.objid::text, '*'), ' ')
                     FROM pg_catalog.pg_event_trigger_ddl_commands() c), '') || ' ',
        false);
END
$fn$;

CREATE OR REPLACE FUNCTION harness.track_drop() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('harness.dropped',
        coalesce(pg_catalog.current_setting('harness.dropped', true), '')
        || coalesce((SELECT pg_catalog.string_agg(d.classid::text || ':' || d.objid::text, ' ')
                     FROM pg_catalog.pg_event_trigger_dropped_objects() d), '') || ' ',
        false);
END
$fn$;

-- Before the first ALTER TABLE of a measurement, the inheritance links:
-- DETACH PARTITION reports only the parent, and removes the link to the child.
CREATE OR REPLACE FUNCTION harness.track_links() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF coalesce(pg_catalog.current_setting('harness.links', true), '') = '' THEN
        PERFORM pg_catalog.set_config('harness.links', coalesce((
            SELECT pg_catalog.string_agg(i.inhparent::text || ':' || i.inhrelid::text, ' ')
            FROM pg_catalog.pg_inherits i), '-'), false);
    END IF;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS harness_track_ddl;
DROP EVENT TRIGGER IF EXISTS harness_track_drop;
DROP EVENT TRIGGER IF EXISTS harness_track_links;
CREATE EVENT TRIGGER harness_track_ddl ON ddl_command_end EXECUTE FUNCTION harness.track_ddl();
CREATE EVENT TRIGGER harness_track_drop ON sql_drop EXECUTE FUNCTION harness.track_drop();
CREATE EVENT TRIGGER harness_track_links ON ddl_command_start WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION harness.track_links();
ALTER EVENT TRIGGER harness_track_ddl ENABLE ALWAYS;
ALTER EVENT TRIGGER harness_track_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER harness_track_links ENABLE ALWAYS;

CREATE OR REPLACE FUNCTION harness.mark() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('harness.changed', '', false),
           pg_catalog.set_config('harness.dropped', '', false),
           pg_catalog.set_config('harness.links', '', false),
           pg_catalog.set_config('harness.mark', pg_catalog.jsonb_build_array(
               pg_catalog.clock_timestamp(),
               {xid_assigned} IS NULL,
               (SELECT pg_catalog.sum({_writes('o')}) FROM pg_catalog.unnest({catalog_array}) o),
               (SELECT pg_catalog.sum({_writes('o')}) FROM pg_catalog.unnest({role_array}) o))::text, false);
END
$fn$;

-- Every object: whole catalogs are read, so the planner may scan them (its
-- callers turn scans off).
CREATE OR REPLACE FUNCTION harness.snapshot_all(p_exclude pg_catalog.name[])
RETURNS pg_catalog.json LANGUAGE plpgsql
{pinned}
{_WHOLE_SCANS}
AS $fn$
DECLARE
    v_doc pg_catalog.json;
BEGIN
    {full.strip()} INTO v_doc;
    RETURN v_doc;
END
$fn$;

-- One table's row count and hash, as snapshot.table_fingerprints computes them.
CREATE OR REPLACE FUNCTION harness.table_hash(p_table pg_catalog.regclass, OUT n bigint, OUT high text, OUT low text)
LANGUAGE plpgsql
{pinned}
{_INDEX_PROBES}
AS $fn$
BEGIN
    EXECUTE pg_catalog.format('{table_hash.replace("'", "''")}', p_table) INTO n, high, low;
END
$fn$;

-- The settings of its restricted reads, which probe indexes; a full read turns scans back on.
CREATE OR REPLACE FUNCTION harness.changes(p_exclude pg_catalog.name[], p_verify boolean)
RETURNS text LANGUAGE plpgsql
{pinned}
{_INDEX_PROBES}
AS $fn$
DECLARE
    v_mark pg_catalog.jsonb := pg_catalog.current_setting('harness.mark', true)::pg_catalog.jsonb;
    v_changed text := trim(coalesce(pg_catalog.current_setting('harness.changed', true), ''));
    v_dropped text := trim(coalesce(pg_catalog.current_setting('harness.dropped', true), ''));
    v_full boolean := false;
    v_why text := NULL;
    v_roots pg_catalog.oid[];
    v_touched pg_catalog.jsonb := '{{}}';
    v_kinds text[];
    v_part text;
    v_out pg_catalog.jsonb := '[]';
    v_objects pg_catalog.json;
BEGIN
    IF v_mark IS NULL THEN
        RAISE EXCEPTION 'harness.changes() without harness.mark()';
    END IF;
    -- No transaction ID since the mark: nothing was written, neither a
    -- catalog row nor a table row, so nothing can have changed.
    IF (v_mark->>1)::boolean AND {xid_assigned} IS NULL THEN
        RETURN pg_catalog.json_build_object(
            'full', false, 'why', NULL, 'roots', '[]'::pg_catalog.json, 'objects', '[]'::pg_catalog.json,
            'verify', CASE WHEN p_verify THEN harness.snapshot_all(p_exclude) END,
            'touched', '{{}}'::pg_catalog.json,
            'ms', extract(epoch FROM pg_catalog.clock_timestamp() - (v_mark->>0)::timestamptz) * 1000)::text;
    END IF;
    IF v_changed LIKE '%*%' THEN
        v_full := true; v_why := 'a command without an object (GRANT, REVOKE)';
    ELSIF EXISTS (
        SELECT FROM pg_catalog.unnest(pg_catalog.string_to_array(v_changed || ' ' || v_dropped, ' ')) t
        WHERE t LIKE '%:%' AND pg_catalog.split_part(t, ':', 1)::pg_catalog.oid IN ({full_classes})) THEN
        v_full := true; v_why := 'a schema or extension changed';
    ELSIF (SELECT pg_catalog.sum({_writes('o')}) FROM pg_catalog.unnest({role_array}) o)
          > (v_mark->>3)::bigint THEN
        v_full := true; v_why := 'roles changed';
    ELSIF v_changed = '' AND v_dropped = ''
          AND (SELECT pg_catalog.sum({_writes('o')}) FROM pg_catalog.unnest({catalog_array}) o)
              > (v_mark->>2)::bigint THEN
        v_full := true; v_why := 'system catalogs written without a DDL command';
    END IF;

    -- The roots, also for a full snapshot: they name the tables to hash again.
    IF v_changed = '' AND v_dropped = '' THEN
        v_roots := '{{}}';
    ELSIF v_changed = '' THEN
        -- Only drops (DROP TABLE, INDEX, FUNCTION...): nothing left to depend on them.
        SELECT coalesce(pg_catalog.array_agg(DISTINCT pg_catalog.split_part(t, ':', 2)::pg_catalog.oid), '{{}}')
        INTO v_roots FROM pg_catalog.unnest(pg_catalog.string_to_array(v_dropped, ' ')) t
        WHERE t LIKE '%:%' AND pg_catalog.split_part(t, ':', 1)::pg_catalog.oid IN ({root_classes});
    ELSE
        WITH RECURSIVE
        changed(classid, objid) AS (
            SELECT DISTINCT pg_catalog.split_part(t, ':', 1)::pg_catalog.oid,
                            pg_catalog.split_part(t, ':', 2)::pg_catalog.oid
            FROM pg_catalog.unnest(pg_catalog.string_to_array(v_changed, ' ')) t WHERE t LIKE '%:%'
        ),
        -- What a changed object may change: its dependents (they print its
        -- name), what it is an internal part of (renaming a primary key's
        -- index renames the constraint), and the tables that inherited from
        -- it before the first ALTER TABLE (DETACH PARTITION reports the
        -- parent only and removes the link).
        closure(classid, objid) AS (
            SELECT c.classid, c.objid FROM changed c
            UNION
            SELECT 'pg_class'::pg_catalog.regclass, pg_catalog.split_part(l, ':', 2)::pg_catalog.oid
            FROM changed c, pg_catalog.unnest(pg_catalog.string_to_array(
                coalesce(pg_catalog.current_setting('harness.links', true), ''), ' ')) l
            WHERE c.classid = 'pg_class'::pg_catalog.regclass AND pg_catalog.split_part(l, ':', 1) = c.objid::text
            UNION
            SELECT x.classid, x.objid FROM closure c, LATERAL (
                SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
                WHERE d.refclassid = c.classid AND d.refobjid = c.objid
                UNION ALL
                SELECT d.refclassid, d.refobjid FROM pg_catalog.pg_depend d
                WHERE d.classid = c.classid AND d.objid = c.objid AND d.deptype = 'i'
                -- A constraint's inherited copies (CHECK and NOT NULL ones
                -- record no dependency): RENAME CONSTRAINT renames them too
                -- and reports the parent's only.
                UNION ALL
                SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid
                FROM pg_catalog.pg_constraint p
                JOIN pg_catalog.pg_inherits i ON i.inhparent = p.conrelid
                JOIN pg_catalog.pg_constraint k
                  ON k.conrelid = i.inhrelid AND k.conname = p.conname AND k.coninhcount > 0
                WHERE c.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND p.oid = c.objid
            ) x
        ),
        mapped(root) AS (
            SELECT CASE
                WHEN c.classid = 'pg_class'::pg_catalog.regclass THEN (
                    SELECT CASE
                        WHEN x.relkind = 'c' THEN x.reltype
                        WHEN x.relkind = 't' THEN NULL
                        -- an identity sequence is part of its column, which its table reports
                        WHEN x.relkind = 'S' AND EXISTS (
                            SELECT FROM pg_catalog.pg_depend i
                            WHERE i.classid = 'pg_class'::pg_catalog.regclass AND i.objid = x.oid
                              AND i.deptype = 'i') THEN NULL
                        ELSE x.oid END
                    FROM pg_catalog.pg_class x WHERE x.oid = c.objid)
                WHEN c.classid = 'pg_type'::pg_catalog.regclass THEN (
                    SELECT CASE
                        WHEN x.typrelid <> 0 THEN (
                            SELECT CASE WHEN y.relkind = 'c' THEN x.oid ELSE y.oid END
                            FROM pg_catalog.pg_class y WHERE y.oid = x.typrelid)
                        WHEN x.typtype = 'b' AND x.typcategory = 'A' THEN NULL
                        ELSE x.oid END
                    FROM pg_catalog.pg_type x WHERE x.oid = c.objid)
                WHEN c.classid = 'pg_constraint'::pg_catalog.regclass THEN (
                    SELECT CASE WHEN x.contypid <> 0 THEN x.contypid ELSE x.oid END
                    FROM pg_catalog.pg_constraint x WHERE x.oid = c.objid)
                WHEN c.classid = 'pg_attrdef'::pg_catalog.regclass THEN (
                    SELECT x.adrelid FROM pg_catalog.pg_attrdef x WHERE x.oid = c.objid)
                WHEN c.classid = 'pg_rewrite'::pg_catalog.regclass THEN (
                    SELECT CASE WHEN x.rulename = '_RETURN' THEN x.ev_class ELSE x.oid END
                    FROM pg_catalog.pg_rewrite x WHERE x.oid = c.objid)
                WHEN c.classid IN ('pg_proc'::pg_catalog.regclass, 'pg_trigger'::pg_catalog.regclass,
                                   'pg_policy'::pg_catalog.regclass) THEN c.objid
                END
            FROM closure c
            UNION
            SELECT pg_catalog.split_part(t, ':', 2)::pg_catalog.oid
            FROM pg_catalog.unnest(pg_catalog.string_to_array(v_dropped, ' ')) t
            WHERE t LIKE '%:%' AND pg_catalog.split_part(t, ':', 1)::pg_catalog.oid IN ({root_classes})
        )
        SELECT coalesce(pg_catalog.array_agg(m.root ORDER BY m.root), '{{}}')
        INTO v_roots FROM mapped m WHERE m.root IS NOT NULL;
    END IF;

    -- Whatever hangs on a relation among the roots now is read with it: the
    -- caller lets go of everything that hung on it before, under whatever
    -- OID (ALTER COLUMN TYPE rebuilds indexes and constraints under new
    -- OIDs and drops the old ones without a report).  Foreign keys hang on
    -- the table they reference too.
    IF v_roots <> '{{}}' THEN
        SELECT pg_catalog.array_agg(DISTINCT x.oid ORDER BY x.oid) INTO v_roots FROM (
            SELECT pg_catalog.unnest(v_roots) AS oid
            UNION ALL SELECT i.indexrelid FROM pg_catalog.pg_index i WHERE i.indrelid = ANY (v_roots)
            UNION ALL SELECT c.oid FROM pg_catalog.pg_constraint c
                WHERE c.conrelid = ANY (v_roots) AND c.contype <> 'n'
            UNION ALL SELECT d.objid FROM pg_catalog.pg_depend d
                WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY (v_roots)
                  AND d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.deptype = 'n'
            UNION ALL SELECT t.oid FROM pg_catalog.pg_trigger t WHERE t.tgrelid = ANY (v_roots) AND NOT t.tgisinternal
            UNION ALL SELECT r.oid FROM pg_catalog.pg_rewrite r
                WHERE r.ev_class = ANY (v_roots) AND r.rulename <> '_RETURN'
            UNION ALL SELECT p.oid FROM pg_catalog.pg_policy p WHERE p.polrelid = ANY (v_roots)
        ) x;
    END IF;

    -- Data, by OID: every table this transaction may have written or
    -- rewritten (a row write holds at least a RowExclusiveLock on its table
    -- until the transaction ends; TRUNCATE and rewrites an
    -- AccessExclusiveLock), and every table among the roots: a command
    -- changed its definition, and its rows' JSON names its columns.  A
    -- table of no blocks has no rows.
    SELECT coalesce(pg_catalog.jsonb_object_agg(c.oid,
               CASE WHEN pg_catalog.pg_relation_size(c.oid) = 0 THEN '[0, "0", "0"]'::pg_catalog.jsonb
                    ELSE (SELECT pg_catalog.jsonb_build_array(h.n, h.high, h.low) FROM harness.table_hash(c.oid) h)
               END), '{{}}')
    INTO v_touched
    FROM (
        SELECT l.relation AS oid FROM pg_catalog.pg_locks l
        WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation'
          AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
          AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                         'AccessExclusiveLock')
        UNION
        SELECT t FROM pg_catalog.unnest(v_roots) t
    ) x
    JOIN pg_catalog.pg_class c ON c.oid = x.oid AND c.relkind = 'r'
    WHERE c.relnamespace IN {_USER_NAMESPACES};

    IF v_full THEN
        v_objects := harness.snapshot_all(p_exclude);
    ELSIF v_roots <> '{{}}' THEN
        -- The snapshot query restricted to the roots, by the kinds of object among them.
        SELECT pg_catalog.array_agg(DISTINCT k.kind) INTO v_kinds FROM (
            SELECT CASE WHEN c.relkind IN ('r', 'p', 'f') THEN 'table' WHEN c.relkind IN ('i', 'I') THEN 'index'
                        WHEN c.relkind = 'S' THEN 'sequence' WHEN c.relkind IN ('v', 'm') THEN 'view' END
            FROM pg_catalog.pg_class c WHERE c.oid = ANY (v_roots)
            UNION ALL SELECT 'constraint' FROM pg_catalog.pg_constraint x WHERE x.oid = ANY (v_roots)
            UNION ALL SELECT 'function' FROM pg_catalog.pg_proc x WHERE x.oid = ANY (v_roots)
            UNION ALL SELECT 'type' FROM pg_catalog.pg_type x WHERE x.oid = ANY (v_roots)
            UNION ALL SELECT 'trigger' FROM pg_catalog.pg_trigger x WHERE x.oid = ANY (v_roots)
            UNION ALL SELECT 'rule' FROM pg_catalog.pg_rewrite x WHERE x.oid = ANY (v_roots)
            UNION ALL SELECT 'policy' FROM pg_catalog.pg_policy x WHERE x.oid = ANY (v_roots)
        ) k(kind);
        IF v_kinds IS NOT NULL THEN
{restricted}
        END IF;
    END IF;

    RETURN pg_catalog.json_build_object(
        'full', v_full,
        'why', v_why,
        'roots', CASE WHEN v_full THEN NULL ELSE v_roots END,
        'objects', coalesce(v_objects, v_out::pg_catalog.json),
        'verify', CASE WHEN p_verify AND NOT v_full THEN harness.snapshot_all(p_exclude) END,
        'touched', v_touched,
        'ms', extract(epoch FROM pg_catalog.clock_timestamp() - (v_mark->>0)::timestamptz) * 1000
    )::text;
END
$fn$;
"""


def install(conn: psycopg.Connection[Any]) -> bool:
    """Install the tracking functions and event triggers in *conn*'s database; False when not possible.

    Event triggers need a superuser; without one (a rehearsal on scratch
    databases of a shared server, say) rehearsals take full snapshots.
    """
    row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        log.info("not a superuser: rehearsal snapshots are taken in full (event triggers need a superuser)")
        return False
    setting = conn.execute("SELECT current_setting('event_triggers', true)").fetchone()
    if setting and setting[0] == "off":
        log.info("event_triggers is off on this server: rehearsal snapshots are taken in full")
        return False
    catalogs, roles = _catalog_oids(conn, _SNAPSHOT_CATALOGS), _catalog_oids(conn, _ROLE_CATALOGS)
    # The lock measurement's queries too: functions keep their plans.
    text = _install_sql(conn.info.server_version, catalogs, roles) + locks.server_functions_sql()
    with conn.transaction():
        conn.execute(text.encode(), prepare=False)  # type: ignore[call-overload]
    return True


def _catalog_oids(conn: psycopg.Connection[Any], names: Iterable[str]) -> list[int]:
    """The OIDs of the system catalogs *names*."""
    query = (
        "SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = 'pg_catalog'::regnamespace "
        "AND relname = ANY(%s) ORDER BY oid"
    )
    return [int(r[0]) for r in conn.execute(query, (list(names),)).fetchall()]


def mark_sql() -> str:
    """The statement that starts a measurement."""
    return "SELECT harness.mark()"


def changes_sql(exclude: Iterable[str] = ("harness",), *, verify: bool = False) -> str:
    """The statement that ends a measurement; its one value (column :data:`DELTA_COLUMN`) is the JSON document.

    SQL text, to travel in a message with other statements.
    """
    return (
        sql.SQL("SELECT harness.changes({}::pg_catalog.name[], {}) AS {}")
        .format(sql.Literal(list(exclude)), sql.Literal(verify), sql.Identifier(DELTA_COLUMN))
        .as_string(None)
    )


# --------------------------------------------------------------------------
# The Python side: a state per position, advanced by deltas.


@dataclass(frozen=True)
class State:
    """The schema and data of the working database at one moment, with each object's root."""

    snapshot: Snapshot
    roots: Mapping[str, int]
    data: Mapping[str, tuple[int, str]]

    @functools.cached_property
    def keys_by_root(self) -> dict[int, tuple[str, ...]]:
        """The keys of the objects of each root."""
        index: dict[int, list[str]] = {}
        for key, root in self.roots.items():
            index.setdefault(root, []).append(key)
        return {root: tuple(keys) for root, keys in index.items()}

    @functools.cached_property
    def anchored(self) -> dict[int, frozenset[int]]:
        """The roots of the objects that hang on each relation (by its root): see :func:`anchors`."""
        found: dict[int, set[int]] = {}
        for key, root in self.roots.items():
            for anchor in anchors(key, self.snapshot.objects[key], self.roots):
                found.setdefault(anchor, set()).add(root)
        return {anchor: frozenset(roots) for anchor, roots in found.items()}

    @functools.cached_property
    def tables(self) -> dict[int, str]:
        """The ordinary tables (the ones that hold rows): OID → qualified name."""
        return {
            self.roots[key]: key[6:]
            for key, attrs in self.snapshot.objects.items()
            if key.startswith("table ") and attrs.get("kind") == "ordinary"
        }


@dataclass(frozen=True)
class Delta:
    """What one measurement found (see the module docs)."""

    full: bool
    why: str | None
    roots: frozenset[int]
    objects: dict[str, dict[str, Any]]
    object_roots: dict[str, int]
    touched: dict[int, tuple[int, str]]  # table OID → (row count, hash)
    seconds: float
    verify: dict[str, dict[str, Any]] | None


def parse_delta(text: str) -> Delta:
    """The document :func:`changes_sql` returned."""
    doc = json.loads(text)
    object_roots: dict[str, int] = {}
    objects = _objects_from(doc["objects"] or [], object_roots)
    verify = _objects_from(doc["verify"]) if doc.get("verify") is not None else None
    return Delta(
        full=bool(doc["full"]),
        why=doc.get("why"),
        roots=frozenset(int(r) for r in doc["roots"] or ()),
        objects=objects,
        object_roots=object_roots,
        touched={int(oid): table_digest(*value) for oid, value in (doc["touched"] or {}).items()},
        seconds=float(doc["ms"] or 0.0) / 1000.0,
        verify=verify,
    )


def advance(state: State, delta: Delta, *, check: bool = True) -> tuple[State, frozenset[str]]:
    """The state after *delta*, and the keys whose objects may differ from *state*'s.

    With *check*, raises :class:`~harness.errors.HarnessError` when the delta
    carries a full snapshot to verify against and the incremental one
    differs; without, the caller compares (:func:`differences`).
    """
    if not (delta.full or delta.roots or delta.objects or delta.touched or delta.verify is not None):
        return state, frozenset()  # nothing was written since the mark
    if delta.full:
        new = State(Snapshot(objects=dict(delta.objects)), dict(delta.object_roots), {})
        keys = frozenset(state.snapshot.objects.keys() | delta.objects.keys())
        # Data by table OID: a renamed table keeps its rows, a dropped one is gone.
        data = new.data
        assert isinstance(data, dict)
        for oid, name in new.tables.items():
            found = delta.touched.get(oid)
            if found is None:
                old = state.tables.get(oid)
                found = state.data.get(old) if old is not None else None
            if found is not None:
                data[name] = found
    else:
        new, keys = _advance_incrementally(state, delta)
    if check and delta.verify is not None:
        expected = Snapshot(objects=delta.verify)
        changes = diff_snapshots(expected, new.snapshot)
        if changes:
            raise HarnessError(
                "the incremental snapshot differs from a full one (a bug in migration-harness; set "
                "HARNESS_SNAPSHOTS=full to work around it). full → incremental:\n" + format_changes(changes)
            )
    return new, keys


def differences(state: State, delta: Delta) -> list[Change]:
    """How *state* (advanced by *delta*) differs from the full snapshot the delta carries (full → state)."""
    if delta.verify is None:
        return []
    return diff_snapshots(Snapshot(objects=delta.verify), state.snapshot)


def _advance_incrementally(state: State, delta: Delta) -> tuple[State, frozenset[str]]:
    """:func:`advance` for a delta of some roots: work in proportion to what changed, not to the schema.

    A relation among the roots takes with it every object that hung on it
    (:attr:`State.anchored`), whatever became of that object's OID: ALTER
    COLUMN TYPE rebuilds the indexes and constraints on the column under new
    OIDs and drops the old ones without a report, so a later drop of the new
    index would otherwise leave the old one behind.  The server re-reads
    whatever hangs on the relation now (see ``harness.changes()``).
    """
    by_root = state.keys_by_root
    anchored = state.anchored
    gone = set(delta.roots)
    for root in delta.roots:
        gone.update(anchored.get(root, ()))
    removed = [key for root in gone for key in by_root.get(root, ())]
    objects = dict(state.snapshot.objects)
    roots = dict(state.roots)
    tables = dict(state.tables)
    data = dict(state.data)
    index = dict(by_root)
    hung = dict(anchored)
    for root in gone:
        index.pop(root, None)
    for key in removed:
        del objects[key]
        del roots[key]
        if key.startswith("table "):
            tables.pop(state.roots[key], None)
            data.pop(key[6:], None)
    # A key read under a new root left its old one silently (a rebuild under a new OID).
    for key, root in delta.object_roots.items():
        old = roots.get(key)
        if old is not None and old != root:
            rest = tuple(k for k in index.get(old, ()) if k != key)
            if rest:
                index[old] = rest
            else:
                index.pop(old, None)
                gone.add(old)
    objects.update(delta.objects)
    roots.update(delta.object_roots)
    added: dict[int, list[str]] = {}
    for key, root in delta.object_roots.items():
        added.setdefault(root, []).append(key)
    index.update((root, tuple(keys)) for root, keys in added.items())
    # What hangs on which relation: the roots gone and re-read leave it, the objects read join it.
    for anchor in gone & hung.keys():
        hung.pop(anchor)
    for anchor, members in list(hung.items()):
        if not members.isdisjoint(gone):
            kept = members - gone
            if kept:
                hung[anchor] = kept
            else:
                del hung[anchor]
    joined: dict[int, set[int]] = {}
    for key, attrs in delta.objects.items():
        for anchor in anchors(key, attrs, roots):
            joined.setdefault(anchor, set()).add(delta.object_roots[key])
    for anchor, joining in joined.items():
        hung[anchor] = hung.get(anchor, frozenset()) | joining
    # Data by table OID: a table re-read keeps its rows under its (new) name
    # unless written; a dropped one is gone; a written one is hashed again.
    for key, attrs in delta.objects.items():
        if key.startswith("table ") and attrs.get("kind") == "ordinary":
            oid = delta.object_roots[key]
            tables[oid] = key[6:]
            found = delta.touched.get(oid)
            if found is None:
                old_name = state.tables.get(oid)
                found = state.data.get(old_name) if old_name is not None else None
            if found is not None:
                data[key[6:]] = found
    for oid, found in delta.touched.items():
        name = tables.get(oid)
        if name is not None:
            data[name] = found
    new = State(Snapshot(objects=objects), roots, data)
    # The cached properties' slots, kept up to date instead of recomputed from every object.
    new.__dict__["tables"] = tables
    new.__dict__["keys_by_root"] = index
    new.__dict__["anchored"] = hung
    return new, frozenset(removed) | delta.objects.keys()


# Objects that hang on a relation (named in their key or their "table"), and
# foreign keys on the relation they reference.
_HANGING = ("index", "constraint", "trigger", "rule", "policy")
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".(]+)'
_REFERENCES = re.compile(rf"REFERENCES ({_IDENT}\.{_IDENT})\(")
_LAST_IDENT = re.compile(rf"\.{_IDENT}$")


def anchors(key: str, attrs: Mapping[str, Any], roots: Mapping[str, int]) -> list[int]:
    """The roots of the relations the object *key* hangs on (none for other objects).

    An index hangs on its table; a constraint, trigger, rule or policy on the
    relation in its name; a foreign key also on the table it references.
    """
    kind, _, name = key.partition(" ")
    if kind not in _HANGING:
        return []
    if kind == "index":
        relations = [attrs.get("table")]
    else:
        relations = [_LAST_IDENT.sub("", name)]
        if kind == "constraint" and attrs.get("type") == "foreign key":
            found = _REFERENCES.search(str(attrs.get("definition") or ""))
            if found:
                relations.append(found.group(1))
    result = []
    for relation in relations:
        if not relation:
            continue
        for prefix in ("table ", "view ", "materialized_view "):
            root = roots.get(prefix + relation)
            if root is not None:
                result.append(root)
                break
    return result
