"""Catalog snapshots, their diff, and table fingerprints on a real PostgreSQL.

Most tests share one database per module and run inside a transaction that
is rolled back afterwards (the ``conn`` fixture of ``tests/fix_db.py``): every test still starts
from an empty database, without paying for a CREATE DATABASE each, and the
snapshot is exercised the way the rehearsal engine uses it, inside an open
transaction.  Tests that need autocommit or several sessions use ``db_dsn``.
"""

from __future__ import annotations

import psycopg
import pytest

from harness.errors import ConfigError
from harness.snapshot import (
    OBJECT_TYPES,
    Change,
    SchemaDigest,
    Snapshot,
    diff_snapshots,
    format_changes,
    table_fingerprints,
    take_snapshot,
)

# A schema with at least one object of every kind the snapshot covers.
RICH_SCHEMA = """
CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'the application';
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer NOT NULL DEFAULT 1 CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE app.counter INCREMENT 5;
CREATE TABLE users (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text COLLATE "C",
    m mood DEFAULT 'ok',
    n serial,
    g integer GENERATED ALWAYS AS (id * 2) STORED,
    created timestamptz DEFAULT '2020-01-01 10:00:00+02'
);
COMMENT ON COLUMN users.email IS 'login';
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    user_id integer REFERENCES users (id),
    total numeric(10, 2) CHECK (total >= 0)
);
CREATE INDEX orders_user ON orders (user_id) WHERE total > 0;
CREATE TABLE events (id integer, d date) PARTITION BY RANGE (d);
CREATE TABLE events_2020 PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE UNLOGGED TABLE scratch (x integer);
CREATE VIEW active_users AS SELECT id, email FROM users WHERE id > 1;
CREATE MATERIALIZED VIEW order_count AS SELECT count(*) FROM orders;
CREATE FUNCTION greet(a integer, b text DEFAULT 'x') RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT b || a $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE PROCEDURE noop(x integer) LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON users FOR SELECT USING (id > 0);
CREATE RULE scratch_ignore AS ON INSERT TO scratch DO INSTEAD NOTHING;
GRANT SELECT ON users TO PUBLIC;
REVOKE EXECUTE ON FUNCTION greet(integer, text) FROM PUBLIC;
"""


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def _diff(conn: psycopg.Connection, setup: str, change: str) -> list[Change]:
    if setup:
        conn.execute(setup)
    before = take_snapshot(conn)
    conn.execute(change)
    after = take_snapshot(conn)
    return diff_snapshots(before, after)


def _has_extension(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = %s", [name]).fetchone()
    return bool(row and row[0])


# --------------------------------------------------------------------------
# Every kind of object: a change to it is found, with the right type and attribute.

T = "CREATE TABLE t (id integer NOT NULL, name text);"

CASES = [
    # id, setup, change, expected (kind, object_type, object, attribute)
    ("schema-added", "", "CREATE SCHEMA app", ("added", "schema", "app", None)),
    ("schema-dropped", "CREATE SCHEMA app", "DROP SCHEMA app", ("removed", "schema", "app", None)),
    ("schema-comment", "CREATE SCHEMA app", "COMMENT ON SCHEMA app IS 'x'", ("changed", "schema", "app", "comment")),
    ("schema-grant", "CREATE SCHEMA app", "GRANT USAGE ON SCHEMA app TO PUBLIC", ("changed", "schema", "app", "acl")),
    ("table-added", "", T, ("added", "table", "public.t", None)),
    ("table-dropped", T, "DROP TABLE t", ("removed", "table", "public.t", None)),
    ("table-quoted-name", "", 'CREATE TABLE "Odd Name" (id int)', ("added", "table", 'public."Odd Name"', None)),
    ("table-unlogged", T, "ALTER TABLE t SET UNLOGGED", ("changed", "table", "public.t", "persistence")),
    (
        "table-rls-enabled",
        T,
        "ALTER TABLE t ENABLE ROW LEVEL SECURITY",
        ("changed", "table", "public.t", "rls_enabled"),
    ),
    ("table-rls-forced", T, "ALTER TABLE t FORCE ROW LEVEL SECURITY", ("changed", "table", "public.t", "rls_forced")),
    ("table-grant", T, "GRANT SELECT ON t TO PUBLIC", ("changed", "table", "public.t", "acl")),
    ("table-comment", T, "COMMENT ON TABLE t IS 'x'", ("changed", "table", "public.t", "comment")),
    ("table-options", T, "ALTER TABLE t SET (fillfactor = 70)", ("changed", "table", "public.t", "options")),
    (
        "table-inherits",
        T + "CREATE TABLE child (id integer NOT NULL, name text);",
        "ALTER TABLE child INHERIT t",
        ("changed", "table", "public.child", "inherits"),
    ),
    (
        "partition-added",
        "CREATE TABLE p (id int, d date) PARTITION BY RANGE (d);",
        "CREATE TABLE p2020 PARTITION OF p FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')",
        ("added", "table", "public.p2020", None),
    ),
    (
        "partition-key",
        "CREATE TABLE p (id int, d date) PARTITION BY RANGE (d);",
        "DROP TABLE p; CREATE TABLE p (id int, d date) PARTITION BY LIST (id)",
        ("changed", "table", "public.p", "partition_key"),
    ),
    (
        "partition-bound",
        "CREATE TABLE p (id int, d date) PARTITION BY RANGE (d);"
        "CREATE TABLE p2020 PARTITION OF p FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');",
        "ALTER TABLE p DETACH PARTITION p2020;"
        "ALTER TABLE p ATTACH PARTITION p2020 FOR VALUES FROM ('2020-01-01') TO ('2022-01-01')",
        ("changed", "table", "public.p2020", "partition_bound"),
    ),
    ("column-added", T, "ALTER TABLE t ADD COLUMN email text", ("added", "column", "public.t.email", None)),
    ("column-dropped", T, "ALTER TABLE t DROP COLUMN name", ("removed", "column", "public.t.name", None)),
    ("column-type", T, "ALTER TABLE t ALTER id TYPE bigint", ("changed", "column", "public.t.id", "type")),
    ("column-nullable", T, "ALTER TABLE t ALTER name SET NOT NULL", ("changed", "column", "public.t.name", "nullable")),
    (
        "column-default",
        T,
        "ALTER TABLE t ALTER name SET DEFAULT 'x'",
        ("changed", "column", "public.t.name", "default"),
    ),
    (
        "column-identity",
        T,
        "ALTER TABLE t ALTER id ADD GENERATED ALWAYS AS IDENTITY",
        ("changed", "column", "public.t.id", "identity"),
    ),
    (
        "column-generated",
        "CREATE TABLE t (a int, b int GENERATED ALWAYS AS (a * 2) STORED);",
        "ALTER TABLE t ALTER b DROP EXPRESSION",
        ("changed", "column", "public.t.b", "generated"),
    ),
    (
        "column-collation",
        T,
        'ALTER TABLE t ALTER name TYPE text COLLATE "C"',
        ("changed", "column", "public.t.name", "collation"),
    ),
    ("column-comment", T, "COMMENT ON COLUMN t.name IS 'x'", ("changed", "column", "public.t.name", "comment")),
    ("column-grant", T, "GRANT SELECT (name) ON t TO PUBLIC", ("changed", "column", "public.t.name", "acl")),
    (
        "column-quoted-name",
        T,
        'ALTER TABLE t ADD COLUMN "Email" text',
        ("added", "column", 'public.t."Email"', None),
    ),
    (
        "constraint-added",
        T,
        "ALTER TABLE t ADD CONSTRAINT t_pos CHECK (id > 0)",
        ("added", "constraint", "public.t.t_pos", None),
    ),
    (
        "constraint-definition",
        T + "ALTER TABLE t ADD CONSTRAINT t_pos CHECK (id > 0);",
        "ALTER TABLE t DROP CONSTRAINT t_pos, ADD CONSTRAINT t_pos CHECK (id > 1)",
        ("changed", "constraint", "public.t.t_pos", "definition"),
    ),
    (
        "constraint-validated",
        T + "ALTER TABLE t ADD CONSTRAINT t_pos CHECK (id > 0) NOT VALID;",
        "ALTER TABLE t VALIDATE CONSTRAINT t_pos",
        ("changed", "constraint", "public.t.t_pos", "validated"),
    ),
    (
        "foreign-key-added",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (a_id int);",
        "ALTER TABLE b ADD FOREIGN KEY (a_id) REFERENCES a (id)",
        ("added", "constraint", "public.b.b_a_id_fkey", None),
    ),
    ("index-added", T, "CREATE INDEX t_name ON t (name)", ("added", "index", "public.t_name", None)),
    (
        "index-definition",
        T + "CREATE INDEX t_name ON t (name);",
        "DROP INDEX t_name; CREATE INDEX t_name ON t (lower(name))",
        ("changed", "index", "public.t_name", "definition"),
    ),
    ("sequence-added", "", "CREATE SEQUENCE s", ("added", "sequence", "public.s", None)),
    (
        "sequence-increment",
        "CREATE SEQUENCE s",
        "ALTER SEQUENCE s INCREMENT 10",
        ("changed", "sequence", "public.s", "increment"),
    ),
    ("sequence-cycle", "CREATE SEQUENCE s", "ALTER SEQUENCE s CYCLE", ("changed", "sequence", "public.s", "cycle")),
    (
        "sequence-type",
        "CREATE SEQUENCE s AS integer",
        "ALTER SEQUENCE s AS bigint",
        ("changed", "sequence", "public.s", "type"),
    ),
    ("view-added", T, "CREATE VIEW v AS SELECT id FROM t", ("added", "view", "public.v", None)),
    (
        "view-definition",
        T + "CREATE VIEW v AS SELECT id FROM t;",
        "CREATE OR REPLACE VIEW v AS SELECT id, name FROM t",
        ("changed", "view", "public.v", "definition"),
    ),
    ("view-dropped", T + "CREATE VIEW v AS SELECT id FROM t;", "DROP VIEW v", ("removed", "view", "public.v", None)),
    (
        "materialized-view-added",
        T,
        "CREATE MATERIALIZED VIEW mv AS SELECT id FROM t",
        ("added", "materialized_view", "public.mv", None),
    ),
    (
        "function-added",
        "",
        "CREATE FUNCTION f(a integer, b text) RETURNS text LANGUAGE sql AS 'SELECT b || a'",
        ("added", "function", "public.f(integer, text)", None),
    ),
    (
        "function-body",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN a; END';",
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN a + 1; END'",
        ("changed", "function", "public.f(integer)", "body"),
    ),
    (
        "function-sql-body",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a; END;",
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a + 1; END",
        ("changed", "function", "public.f(integer)", "body"),
    ),
    (
        "function-volatility",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT a';",
        "ALTER FUNCTION f(int) IMMUTABLE",
        ("changed", "function", "public.f(integer)", "volatility"),
    ),
    (
        "function-security-definer",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT a';",
        "ALTER FUNCTION f(int) SECURITY DEFINER",
        ("changed", "function", "public.f(integer)", "security_definer"),
    ),
    (
        "function-signature",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT a';",
        "DROP FUNCTION f(int); CREATE FUNCTION f(a bigint) RETURNS bigint LANGUAGE sql AS 'SELECT a'",
        ("removed", "function", "public.f(integer)", None),
    ),
    (
        "function-grant",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT a';",
        "REVOKE EXECUTE ON FUNCTION f(int) FROM PUBLIC",
        ("changed", "function", "public.f(integer)", "acl"),
    ),
    (
        "procedure-added",
        "",
        "CREATE PROCEDURE p(x integer) LANGUAGE sql AS 'SELECT 1'",
        ("added", "procedure", "public.p(integer)", None),
    ),
    (
        "trigger-added",
        T + "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';",
        "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch()",
        ("added", "trigger", "public.t.trg", None),
    ),
    (
        "trigger-disabled",
        T
        + "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
        + "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch();",
        "ALTER TABLE t DISABLE TRIGGER trg",
        ("changed", "trigger", "public.t.trg", "enabled"),
    ),
    ("rule-added", T, "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", ("added", "rule", "public.t.r", None)),
    ("enum-added", "", "CREATE TYPE mood AS ENUM ('a', 'b')", ("added", "enum", "public.mood", None)),
    (
        "enum-value-added",
        "CREATE TYPE mood AS ENUM ('a', 'b');",
        "ALTER TYPE mood ADD VALUE 'c' BEFORE 'b'",
        ("changed", "enum", "public.mood", "values"),
    ),
    (
        "enum-value-renamed",
        "CREATE TYPE mood AS ENUM ('a', 'b');",
        "ALTER TYPE mood RENAME VALUE 'b' TO 'bb'",
        ("changed", "enum", "public.mood", "values"),
    ),
    ("domain-added", "", "CREATE DOMAIN d AS integer", ("added", "domain", "public.d", None)),
    (
        "domain-not-null",
        "CREATE DOMAIN d AS integer;",
        "ALTER DOMAIN d SET NOT NULL",
        ("changed", "domain", "public.d", "not_null"),
    ),
    (
        "domain-default",
        "CREATE DOMAIN d AS integer;",
        "ALTER DOMAIN d SET DEFAULT 1",
        ("changed", "domain", "public.d", "default"),
    ),
    (
        "domain-constraint",
        "CREATE DOMAIN d AS integer;",
        "ALTER DOMAIN d ADD CONSTRAINT d_pos CHECK (VALUE > 0)",
        ("changed", "domain", "public.d", "constraints"),
    ),
    ("composite-added", "", "CREATE TYPE pair AS (a int, b text)", ("added", "composite", "public.pair", None)),
    (
        "composite-attribute",
        "CREATE TYPE pair AS (a int, b text);",
        "ALTER TYPE pair ADD ATTRIBUTE c date",
        ("changed", "composite", "public.pair", "attributes"),
    ),
    ("range-added", "", "CREATE TYPE fr AS RANGE (subtype = float8)", ("added", "range", "public.fr", None)),
    (
        "policy-added",
        T,
        "CREATE POLICY p ON t USING (id > 0)",
        ("added", "policy", "public.t.p", None),
    ),
    (
        "policy-using",
        T + "CREATE POLICY p ON t USING (id > 0);",
        "ALTER POLICY p ON t USING (id > 1)",
        ("changed", "policy", "public.t.p", "using"),
    ),
    (
        "policy-roles",
        T + "CREATE POLICY p ON t USING (id > 0);",
        "ALTER POLICY p ON t TO pg_monitor",
        ("changed", "policy", "public.t.p", "roles"),
    ),
    (
        "policy-with-check",
        T + "CREATE POLICY p ON t FOR INSERT WITH CHECK (id > 0);",
        "ALTER POLICY p ON t WITH CHECK (id > 1)",
        ("changed", "policy", "public.t.p", "with_check"),
    ),
    # The catalog query finds objects in ways that rely on how PostgreSQL
    # records them; these cases pin those down.
    # Objects made by initdb (OIDs below 16384) have their comments looked up
    # even when no user-made object has one.
    ("builtin-schema-comment", "", "COMMENT ON SCHEMA public IS 'x'", ("changed", "schema", "public", "comment")),
    (
        "comment-among-others",
        T + "COMMENT ON TABLE t IS 'x';",
        "COMMENT ON COLUMN t.id IS 'y'",
        ("changed", "column", "public.t.id", "comment"),
    ),
    (
        "comment-dropped",
        T + "COMMENT ON TABLE t IS 'x';",
        "COMMENT ON TABLE t IS NULL",
        ("changed", "table", "public.t", "comment"),
    ),
    # Functions and types are found through their dependency on their schema.
    (
        "function-moved",
        "CREATE SCHEMA app; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "ALTER FUNCTION f() SET SCHEMA app",
        ("added", "function", "app.f()", None),
    ),
    (
        "enum-moved",
        "CREATE SCHEMA app; CREATE TYPE mood AS ENUM ('a');",
        "ALTER TYPE mood SET SCHEMA app",
        ("added", "enum", "app.mood", None),
    ),
    (
        "function-in-new-schema",
        "",
        "CREATE SCHEMA app; CREATE PROCEDURE app.p() LANGUAGE sql AS 'SELECT 1'",
        ("added", "procedure", "app.p()", None),
    ),
    # Extension members are left out, whenever they joined the extension.
    (
        "function-joins-extension",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "ALTER EXTENSION plpgsql ADD FUNCTION f()",
        ("removed", "function", "public.f()", None),
    ),
    (
        "table-joins-extension",
        T,
        "ALTER EXTENSION plpgsql ADD TABLE t",
        ("removed", "table", "public.t", None),
    ),
]


@pytest.mark.parametrize(("setup", "change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_change_is_detected(
    conn: psycopg.Connection, setup: str, change: str, expected: tuple[str, str, str, str | None]
) -> None:
    changes = _diff(conn, setup, change)
    found = [(c.kind, c.object_type, c.object, c.attribute) for c in changes]
    assert expected in found, format_changes(changes)


def test_every_object_type_is_covered() -> None:
    covered = {case[3][1] for case in CASES} | {"extension"}  # extensions: see below
    assert covered == set(OBJECT_TYPES)


def test_extension_is_one_object_without_its_members(conn: psycopg.Connection) -> None:
    if not _has_extension(conn, "citext"):
        pytest.skip("the citext extension is not installed on this server")
    before = take_snapshot(conn)
    conn.execute("CREATE EXTENSION citext")
    after = take_snapshot(conn)
    changes = diff_snapshots(before, after)
    # citext brings a type, dozens of functions, operators and casts: none of
    # them is part of the snapshot, only the extension itself.
    assert [(c.kind, c.object_type, c.object) for c in changes] == [("added", "extension", "citext")]
    assert changes[0].after["schema"] == "public"
    assert changes[0].after["version"]


# --------------------------------------------------------------------------
# Determinism and serialisation


def test_snapshot_is_deterministic_and_round_trips(db_dsn: str) -> None:
    with _connect(db_dsn) as conn:
        conn.execute(RICH_SCHEMA)
        first = take_snapshot(conn)
        second = take_snapshot(conn)
    assert first == second
    assert first.digest == second.digest
    assert len(first.digest) == 64
    assert diff_snapshots(first, second) == []

    loaded = Snapshot.from_json(first.to_json())
    assert loaded == first
    assert loaded.digest == first.digest
    assert loaded.to_json() == first.to_json()

    present = {key.split(" ", 1)[0] for key in first.objects}
    assert present == set(OBJECT_TYPES)  # plpgsql is the extension
    assert first.tables() == {"public.users", "public.orders", "public.events", "public.events_2020", "public.scratch"}
    assert first.columns("public.users") == ["id", "email", "name", "m", "n", "g", "created"]
    with pytest.raises(KeyError, match="public.nope"):
        first.columns("public.nope")


def test_schema_digest_moved_object_by_object_equals_the_digest_of_the_whole(db_dsn: str) -> None:
    """A digest kept up to date by replace() is the digest of the resulting schema, whatever the order of objects."""
    with _connect(db_dsn) as conn:
        conn.execute(RICH_SCHEMA)
        base = take_snapshot(conn)
    objects = dict(base.objects)
    table = next(k for k in objects if k.startswith("table "))
    steps: list[dict[str, dict[str, object] | None]] = [
        {table: {**objects[table], "comment": "ß ✓"}},  # an attribute changes
        {"table public.ünïcode \"q\"": objects[table], table: None},  # the same attributes under another key
        {"function public.new()": {"kind": "function", "body": "x"}},  # an object appears
        {"function public.new()": None},  # and goes again
    ]
    digest = SchemaDigest(objects)
    seen = [digest.hexdigest()]
    for changes in steps:
        for key, attrs in changes.items():
            digest.replace(key, objects.get(key), attrs)
            if attrs is None:
                del objects[key]
            else:
                objects[key] = attrs
        seen.append(digest.hexdigest())
        assert seen[-1] == Snapshot(objects=objects).digest
        assert seen[-1] == Snapshot(objects=dict(reversed(list(objects.items())))).digest  # order means nothing
    assert seen[0] == base.digest and seen[-1] != base.digest  # the key moved
    assert len(set(seen)) == 4 and seen[-1] == seen[2]  # the new function came and went
    # Two objects exchanging their attributes is a different schema.
    first, second = sorted(k for k in base.objects if k.startswith("column "))[:2]
    swapped = {**base.objects, first: base.objects[second], second: base.objects[first]}
    assert base.objects[first] != base.objects[second]
    assert Snapshot(objects=swapped).digest != base.digest


def test_snapshot_ignores_session_settings(db_dsn: str) -> None:
    """Names and values print the same whatever the session's search_path, DateStyle or TimeZone."""
    with _connect(db_dsn) as conn:
        conn.execute(RICH_SCHEMA)
        plain = take_snapshot(conn)
    with _connect(db_dsn) as conn:
        conn.execute("SET search_path = app, public")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        odd = take_snapshot(conn)
        # ...and the session keeps its own settings.
        assert conn.execute("SHOW search_path").fetchone() == ("app, public",)
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
    assert diff_snapshots(plain, odd) == []
    assert odd.digest == plain.digest


def test_snapshot_inside_a_transaction(db_dsn: str) -> None:
    """Sees uncommitted DDL, keeps SET LOCAL values, and leaves the transaction open and usable."""
    with psycopg.connect(db_dsn) as conn:  # autocommit off
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("SET LOCAL search_path = pg_catalog, public")
        snap = take_snapshot(conn)
        assert "table public.t" in snap.objects
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog, public",)
        again = take_snapshot(conn)  # the prepared statement is reused
        assert again == snap
        conn.rollback()
        assert "table public.t" not in take_snapshot(conn).objects


def _settings(conn: psycopg.Connection) -> tuple[str, ...]:
    row = conn.execute(
        "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('DateStyle'), "
        "current_setting('plan_cache_mode')"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_every_way_of_running_gives_the_same_snapshot(db_dsn: str) -> None:
    """Idle autocommit, inside a transaction, idle without autocommit, pipeline mode: one result, settings kept."""
    with _connect(db_dsn) as setup:
        setup.execute(RICH_SCHEMA)
    with _connect(db_dsn) as conn:
        conn.execute("SET search_path = \"we'ird\\\", public; SET TimeZone = 'Asia/Tokyo'")
        before = _settings(conn)
        alone = take_snapshot(conn)  # first call prepares
        assert take_snapshot(conn) == alone
        assert _settings(conn) == before
        conn.execute("BEGIN")
        conn.execute("SET LOCAL DateStyle = 'SQL, DMY'")
        inside = take_snapshot(conn)
        assert _settings(conn) == (*before[:2], "SQL, DMY", before[3])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("ROLLBACK")
        with conn.pipeline():
            piped = take_snapshot(conn)
        assert _settings(conn) == before
    with psycopg.connect(db_dsn) as conn:  # autocommit off, idle
        conn.prepare_threshold = None
        implicit = take_snapshot(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert alone.to_json() == inside.to_json() == piped.to_json() == implicit.to_json()


def test_snapshot_prepares_again_after_deallocate(db_dsn: str) -> None:
    with _connect(db_dsn) as conn:
        conn.execute("CREATE TABLE t (id int)")
        first = take_snapshot(conn)
        conn.execute("DEALLOCATE ALL")
        assert take_snapshot(conn) == first
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE u (id int)")
        conn.execute("DEALLOCATE ALL")
        inside = take_snapshot(conn)  # the failed EXECUTE is rolled back to the savepoint
        assert "table public.u" in inside.objects
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("INSERT INTO u VALUES (1)")  # the transaction goes on
        conn.execute("ROLLBACK")
        assert take_snapshot(conn) == first


def test_failed_snapshot_leaves_the_transaction_usable(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import snapshot

    monkeypatch.setattr(snapshot, "_SCRIPTS", {})
    monkeypatch.setattr(snapshot, "_query_for", lambda version: ("SELECT 1 / 0 WHERE $1 IS NOT NULL", "t_broken"))
    with _connect(db_dsn) as conn:
        before = _settings(conn)
        with pytest.raises(psycopg.errors.DivisionByZero):
            take_snapshot(conn)
        assert _settings(conn) == before
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE t (id int)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            take_snapshot(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert _settings(conn) == before
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")


def test_excluded_schema_names_are_quoted(conn: psycopg.Connection) -> None:
    """Schema names go into the statement as literals: quotes and backslashes survive either string syntax."""
    odd = "we'ird\\"
    conn.execute(f'CREATE SCHEMA "{odd}"; CREATE TABLE "{odd}".t (id int)')
    conn.execute("SET LOCAL standard_conforming_strings = off")
    assert not any(key.startswith('table "we') for key in take_snapshot(conn, exclude_schemas=[odd]).objects)
    conn.execute("SET LOCAL standard_conforming_strings = on")
    assert not any(key.startswith('table "we') for key in take_snapshot(conn, exclude_schemas=[odd]).objects)
    assert any(key.startswith('table "we') for key in take_snapshot(conn).objects)


def test_harness_schema_is_excluded(conn: psycopg.Connection) -> None:
    before = take_snapshot(conn)
    conn.execute("CREATE SCHEMA harness; CREATE TABLE harness.schema_migrations (version text PRIMARY KEY)")
    after = take_snapshot(conn)
    everything = take_snapshot(conn, exclude_schemas=())
    assert diff_snapshots(before, after) == []
    assert "schema harness" in everything.objects
    assert "table harness.schema_migrations" in everything.objects
    assert "index harness.schema_migrations_pkey" in everything.objects


def test_temporary_objects_are_ignored(conn: psycopg.Connection) -> None:
    before = take_snapshot(conn)
    # A temporary table named like a catalog must not shadow the catalog.
    conn.execute("CREATE TEMPORARY TABLE pg_class (x int); CREATE TEMPORARY TABLE scratch (y int)")
    after = take_snapshot(conn)
    assert diff_snapshots(before, after) == []
    assert table_fingerprints(conn) == {}


def test_sequence_current_value_is_not_schema(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SEQUENCE s; CREATE TABLE t (id serial, x int)")
    before = take_snapshot(conn)
    conn.execute("SELECT nextval('s') FROM generate_series(1, 5)")
    conn.execute("INSERT INTO t (x) SELECT generate_series(1, 5)")
    after = take_snapshot(conn)
    assert diff_snapshots(before, after) == []
    assert before.objects["sequence public.t_id_seq"]["owned_by"] == "public.t.id"


def test_identity_sequence_is_part_of_its_column(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY)")
    snap = take_snapshot(conn)
    assert snap.objects["column public.t.id"]["identity"] == "by default"
    assert not snap.of_type("sequence")


def test_column_order_change_is_reported_once(conn: psycopg.Connection) -> None:
    changes = _diff(
        conn,
        "CREATE TABLE t (a int, b int, c int)",
        "ALTER TABLE t DROP COLUMN a; ALTER TABLE t ADD COLUMN a int",
    )
    assert changes == [Change("changed", "table", "public.t", "column_order", ["a", "b", "c"], ["b", "c", "a"])]


def test_added_column_is_not_a_column_order_change(conn: psycopg.Connection) -> None:
    changes = _diff(conn, "CREATE TABLE t (a int, b int)", "ALTER TABLE t ADD COLUMN c int, DROP COLUMN a")
    assert [(c.kind, c.object_type, c.object, c.attribute) for c in changes] == [
        ("removed", "column", "public.t.a", None),
        ("added", "column", "public.t.c", None),
    ]


def test_index_validity(db_dsn: str) -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves an invalid index; REINDEX makes it valid."""
    with _connect(db_dsn) as conn:
        conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY t_id ON t (id)")
        before = take_snapshot(conn)
        conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t)")
        conn.execute("REINDEX INDEX t_id")
        after = take_snapshot(conn)
    assert before.objects["index public.t_id"]["valid"] is False
    assert diff_snapshots(before, after) == [Change("changed", "index", "public.t_id", "valid", False, True)]


def test_diff_order_is_deterministic(conn: psycopg.Connection) -> None:
    changes = _diff(
        conn,
        "CREATE TABLE b (x int); CREATE TABLE c (x int)",
        "CREATE TABLE a (x int); DROP TABLE c; ALTER TABLE b ADD COLUMN y int; CREATE SCHEMA s",
    )
    assert [c.describe().split(":")[0] for c in changes] == [
        "schema s",
        "table public.a",
        "table public.c",
        "column public.a.x",
        "column public.b.y",
        "column public.c.x",
    ]


# --------------------------------------------------------------------------
# Describing changes


def test_describe_and_format_changes() -> None:
    old_view, new_view = " SELECT id,\n    email\n   FROM users;", " SELECT id\n   FROM users;"
    changes = [
        Change("removed", "table", "public.old", None, {"kind": "ordinary", "column_order": ["id"]}, None),
        Change(
            "added", "column", "public.users.age", None, None, {"type": "integer", "nullable": False, "default": "0"}
        ),
        Change("changed", "column", "public.users.email", "nullable", True, False),
        Change("changed", "view", "public.v", "definition", old_view, new_view),
    ]
    assert changes[2].describe() == "column public.users.email: nullable changed: true -> false"
    view_line = 'view public.v: definition changed: "SELECT id, email FROM users;" -> "SELECT id FROM users;"'
    assert changes[3].describe() == view_line
    text = format_changes(changes)
    assert text.splitlines() == [
        "- table public.old: removed (ordinary, columns id)",
        "+ column public.users.age: added (integer not null default 0)",
        "~ column public.users.email: nullable changed: true -> false",
        "~ " + view_line,
    ]
    limited = format_changes(changes, limit=2).splitlines()
    assert limited[-1] == "... and 2 more changes"
    assert len(limited) == 3
    assert format_changes([]) == "(no schema changes)"
    long = Change("changed", "index", "public.i", "definition", "a" * 500, "a" * 250 + "b" + "a" * 249).describe()
    assert long.splitlines() == [
        "index public.i: definition changed:",
        "    @@ from character 251 @@",
        "    - …" + "a" * 60 + "a" + "a" * 60 + "…",
        "    + …" + "a" * 60 + "b" + "a" * 60 + "…",
    ]


# --------------------------------------------------------------------------
# Function bodies: compared on what they mean, shown as text

PLPGSQL = """
CREATE OR REPLACE FUNCTION f(a int, b int) RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    total int := 0;
BEGIN
    IF a > 10 THEN
        total := a * 2;
    END IF;
    RAISE NOTICE 'total is %', total;
    RETURN total + b;
END
$fn$
"""
SQL_BODY = """
CREATE OR REPLACE FUNCTION f(a int, b int) RETURNS int LANGUAGE sql AS $fn$
    SELECT CASE WHEN a > 10 THEN a * 2 ELSE 0 END + b
         + (SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'no such table')::int
$fn$
"""
# The same bodies with other whitespace, comments and keyword case.
SAME_BODY = {
    "plpgsql": (
        "CREATE OR REPLACE FUNCTION f(a int, b int) RETURNS int LANGUAGE plpgsql AS $fn$\n"
        "-- how much\ndeclare total int := 0;\nbegin if a > 10 then total := a*2; end if; /* say it */\n"
        "    raise notice 'total is %', total;\n\n  RETURN   total+b;\nend $fn$"
    ),
    "sql": (
        "CREATE OR REPLACE FUNCTION f(a int, b int) RETURNS int LANGUAGE sql AS $fn$ -- sum\n"
        "select case when a>10 then (a*2) else 0 end+b+(select COUNT(*) from pg_catalog.pg_class "
        "where relname='no such table')::int; $fn$"
    ),
}
ORIGINAL = {"plpgsql": PLPGSQL, "sql": SQL_BODY}


@pytest.mark.parametrize("language", ["plpgsql", "sql"])
def test_a_body_differing_only_in_whitespace_and_comments_is_no_difference(
    conn: psycopg.Connection, language: str
) -> None:
    conn.execute(ORIGINAL[language])
    before = take_snapshot(conn)
    conn.execute(SAME_BODY[language])
    after = take_snapshot(conn)
    old, new = before.objects["function public.f(integer, integer)"], after.objects["function public.f(integer, integer)"]
    assert old["body"] != new["body"], "the scenario must change the text"
    assert diff_snapshots(before, after) == []


# Each edit changes what the body means: a constant, a name, a string's spaces.
MEANINGFUL_EDITS = [
    ("plpgsql", "a * 2", "a * 3"),
    ("plpgsql", "RETURN total + b", "RETURN total + a"),
    ("plpgsql", "RETURN total + b", "RETURN b"),
    ("plpgsql", "'total is %'", "'total  is %'"),
    ("sql", "a * 2", "a * 3"),
    ("sql", "ELSE 0 END + b", "ELSE 0 END + a"),
    ("sql", "'no such table'", "'no such  table'"),
]


@pytest.mark.parametrize(("language", "old", "new"), MEANINGFUL_EDITS)
def test_a_changed_constant_or_name_is_a_difference_shown_as_a_diff(
    conn: psycopg.Connection, language: str, old: str, new: str
) -> None:
    changes = _diff(conn, ORIGINAL[language], ORIGINAL[language].replace(old, new))
    assert [(c.kind, c.object, c.attribute) for c in changes] == [("changed", "public.f(integer, integer)", "body")]
    lines = changes[0].describe().splitlines()
    assert lines[0] == "function public.f(integer, integer): body changed:"
    assert lines[1:3] == ["    --- before", "    +++ after"]
    removed = [line.strip() for line in lines if line.startswith("    -") and not line.startswith("    ---")]
    added = [line.strip() for line in lines if line.startswith("    +") and not line.startswith("    +++")]
    assert len(removed) == len(added) == 1, lines
    assert old in removed[0] and new in added[0]


def test_a_body_of_another_language_is_compared_as_exact_text() -> None:
    def snap(body: str) -> Snapshot:
        attrs = {"language": "plpython3u", "body": body, "kind": "function"}
        return Snapshot(objects={"function public.f()": attrs})

    assert diff_snapshots(snap("return 1\n"), snap("return 1\n")) == []
    changes = diff_snapshots(snap("return 1\n"), snap("return  1\n"))
    assert [c.attribute for c in changes] == ["body"]
    # A whitespace change that would look like no change on one line is shown as a diff.
    assert changes[0].describe().splitlines()[1:] == ["    @@ from character 8 @@", "    - return 1\\n", "    + return  1\\n"]


def test_a_body_that_does_not_parse_is_compared_as_exact_text(conn: psycopg.Connection) -> None:
    conn.execute("SET LOCAL check_function_bodies = off")
    broken = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELEC 1 $fn$"
    assert _diff(conn, broken, broken.replace("SELEC 1", "SELEC  1")) != []


def test_a_long_view_changed_in_the_middle_shows_the_changed_line(conn: psycopg.Connection) -> None:
    columns = [f"id + {i} AS c{i}" for i in range(40)]
    conn.execute("CREATE TABLE t (id int)")
    setup = "CREATE VIEW v AS SELECT " + ", ".join(columns) + " FROM t"
    columns[20] = "id * 7 AS c20"
    change = "CREATE OR REPLACE VIEW v AS SELECT " + ", ".join(columns) + " FROM t"
    changes = _diff(conn, setup, change)
    assert [(c.object, c.attribute) for c in changes] == [("public.v", "definition")]
    lines = format_changes(changes).splitlines()
    assert lines[0] == "~ view public.v: definition changed:"
    assert "    -    (id + 20) AS c20," in lines
    assert "    +    (id * 7) AS c20," in lines
    assert len(lines) < 12, "only the changed line and a little context"


# --------------------------------------------------------------------------
# Table fingerprints


def test_fingerprint_detects_an_updated_row(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text, at timestamptz)")
    conn.execute(
        "INSERT INTO t SELECT i, 'n' || i, '2020-01-01'::timestamptz + i * interval '1 day'"
        " FROM generate_series(1, 100) i"
    )
    before = table_fingerprints(conn)
    conn.execute("UPDATE t SET name = 'changed' WHERE id = 50")
    after = table_fingerprints(conn)
    assert before["public.t"][0] == after["public.t"][0] == 100
    assert before["public.t"][1] != after["public.t"][1]


def test_fingerprint_ignores_row_order_and_session(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE a (id int, at timestamptz, x float8); CREATE TABLE b (id int, at timestamptz, x float8)")
    conn.execute("INSERT INTO a SELECT i, now(), i / 3.0 FROM generate_series(1, 50) i ORDER BY i")
    conn.execute("INSERT INTO b SELECT * FROM a ORDER BY id DESC")
    conn.execute("SET LOCAL TimeZone = 'Asia/Tokyo'; SET LOCAL extra_float_digits = 0")
    prints = table_fingerprints(conn)
    conn.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 1")
    again = table_fingerprints(conn, ["public.a"])
    assert prints["public.a"] == prints["public.b"]
    assert again["public.a"] == prints["public.a"]


def test_fingerprint_tables_and_quoting(conn: psycopg.Connection) -> None:
    conn.execute(
        'CREATE SCHEMA "My Schema"; CREATE TABLE "My Schema"."Odd ""Name""" (x int);'
        'INSERT INTO "My Schema"."Odd ""Name""" VALUES (1), (2);'
        "CREATE SCHEMA harness; CREATE TABLE harness.schema_migrations (v text);"
        "CREATE TABLE parent (x int) PARTITION BY LIST (x);"
        "CREATE TABLE part1 PARTITION OF parent FOR VALUES IN (1); INSERT INTO parent VALUES (1)"
    )
    prints = table_fingerprints(conn)
    named = table_fingerprints(conn, ['"My Schema"."Odd ""Name"""', "public.parent"])
    with pytest.raises(ConfigError, match="public.nope"):
        table_fingerprints(conn, ["public.nope"])
    # the failed lookup was rolled back to its savepoint: the transaction goes on
    assert conn.execute("SELECT count(*) FROM parent").fetchone() == (1,)
    assert set(prints) == {'"My Schema"."Odd ""Name"""', "public.part1"}  # leaves only, harness excluded
    assert prints['"My Schema"."Odd ""Name"""'][0] == 2
    assert named["public.parent"][0] == 1
    assert named['"My Schema"."Odd ""Name"""'] == prints['"My Schema"."Odd ""Name"""']


def test_fingerprint_of_a_table_without_blocks_equals_that_of_an_emptied_one(conn: psycopg.Connection) -> None:
    """Tables of no blocks are not read; their fingerprint is the one an emptied table gets by reading."""
    conn.execute(
        "CREATE TABLE never (id int); CREATE TABLE emptied (id int); CREATE TABLE truncated (id int);"
        "CREATE TABLE full_one (id int);"
        "INSERT INTO emptied VALUES (1), (2); DELETE FROM emptied;"  # blocks remain, no rows
        "INSERT INTO truncated VALUES (1); TRUNCATE truncated;"  # a new file of no blocks
        "INSERT INTO full_one VALUES (1);"
        "CREATE MATERIALIZED VIEW nothing AS SELECT 1 AS x WHERE false"
    )
    assert conn.execute("SELECT pg_relation_size('emptied') > 0, pg_relation_size('never')").fetchone() == (True, 0)
    prints = table_fingerprints(conn)
    named = table_fingerprints(conn, ["public.nothing", "public.never", "public.full_one"])
    assert prints["public.never"] == prints["public.emptied"] == prints["public.truncated"] == named["public.never"]
    assert prints["public.never"] == named["public.nothing"] and prints["public.never"][0] == 0
    assert prints["public.full_one"] == named["public.full_one"] and prints["public.full_one"][0] == 1
    assert list(prints) == sorted(prints) and list(named) == ["public.nothing", "public.never", "public.full_one"]


def test_grant_then_revoke_restores_the_default_acl_snapshot(db_dsn: str) -> None:
    """An explicit ACL equal to the defaults is the same schema as NULL; a real grant is not."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE g (id int, secret text)")
        conn.execute("CREATE SEQUENCE gs")
        conn.execute("CREATE FUNCTION gf() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE SCHEMA gn")
        conn.execute("CREATE TYPE gt AS ENUM ('a')")
        before = take_snapshot(conn)
        grants = [
            ("GRANT SELECT ON g TO PUBLIC", "REVOKE SELECT ON g FROM PUBLIC"),
            ("GRANT SELECT (secret) ON g TO PUBLIC", "REVOKE SELECT (secret) ON g FROM PUBLIC"),
            ("GRANT USAGE ON SEQUENCE gs TO PUBLIC", "REVOKE USAGE ON SEQUENCE gs FROM PUBLIC"),
            ("REVOKE EXECUTE ON FUNCTION gf() FROM PUBLIC", "GRANT EXECUTE ON FUNCTION gf() TO PUBLIC"),
            ("GRANT USAGE ON SCHEMA gn TO PUBLIC", "REVOKE USAGE ON SCHEMA gn FROM PUBLIC"),
            ("REVOKE USAGE ON TYPE gt FROM PUBLIC", "GRANT USAGE ON TYPE gt TO PUBLIC"),
        ]
        for grant, revoke in grants:
            conn.execute(grant)
            granted = take_snapshot(conn)
            assert diff_snapshots(before, granted), f"{grant} must show in the snapshot"
            conn.execute(revoke)
            assert diff_snapshots(before, take_snapshot(conn)) == [], f"{grant} then {revoke} must restore it"
