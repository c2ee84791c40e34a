"""Static lint of migration SQL (no database needed, except to read function volatility in a rehearsal)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError, SourceError
from harness.lint import RULES, Finding, format_findings, lint_files, lint_sql
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import Rehearsal


def rules_of(findings: list[Finding], *, include_allowed: bool = True) -> set[str]:
    return {f.rule for f in findings if include_allowed or not f.allowed}


def only(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


# ---------------------------------------------------------------------------- one case per rule
# (rule, SQL that must be flagged, its safe twin that must not, lint_sql keyword arguments)

NO_TX = {"in_transaction": False}

RULE_CASES: list[tuple[str, str, str, dict]] = [
    # indexes
    ("index-not-concurrent",
     "CREATE INDEX IF NOT EXISTS users_email ON users (email);",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);", NO_TX),
    ("index-not-concurrent",
     "CREATE UNIQUE INDEX IF NOT EXISTS u ON app.users (lower(email)) WHERE deleted_at IS NULL;",
     "CREATE TABLE IF NOT EXISTS app.users (id bigint); CREATE UNIQUE INDEX IF NOT EXISTS u ON app.users (id);",
     {}),
    ("drop-index-not-concurrent",
     "DROP INDEX IF EXISTS users_email;",
     "DROP INDEX CONCURRENTLY IF EXISTS users_email;", NO_TX),
    ("drop-index-not-concurrent",
     "DROP INDEX IF EXISTS app.users_email;",
     "CREATE INDEX IF NOT EXISTS tmp_idx ON t (a); DROP INDEX IF EXISTS tmp_idx;", {}),
    ("reindex-not-concurrent",
     "REINDEX INDEX users_email;",
     "REINDEX INDEX CONCURRENTLY users_email;", NO_TX),
    ("reindex-not-concurrent",
     "REINDEX TABLE users;",
     "REINDEX (VERBOSE) TABLE CONCURRENTLY users;", NO_TX),
    ("concurrently-in-transaction",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);", {"in_transaction": True} | {"_safe": NO_TX}),
    ("concurrently-in-transaction",
     "BEGIN;\nDROP INDEX CONCURRENTLY IF EXISTS i;\nCOMMIT;",
     "BEGIN;\nCOMMIT;\nDROP INDEX CONCURRENTLY IF EXISTS i;", NO_TX),
    ("concurrently-in-transaction",
     "REINDEX INDEX CONCURRENTLY i;",
     "REINDEX INDEX CONCURRENTLY i;", {"in_transaction": True, "_safe": NO_TX}),
    # constraints
    ("constraint-missing-not-valid",
     "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
     "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;",
     {}),
    ("constraint-missing-not-valid",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0);",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;", {}),
    ("constraint-missing-not-valid",
     "ALTER TABLE orders ADD COLUMN IF NOT EXISTS coupon_id bigint REFERENCES coupons (id);",
     "ALTER TABLE orders ADD COLUMN IF NOT EXISTS coupon_id bigint;\n"
     "ALTER TABLE orders ADD CONSTRAINT orders_coupon_fk FOREIGN KEY (coupon_id) REFERENCES coupons (id) NOT VALID;",
     {}),
    ("unique-constraint-without-index",
     "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
     "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx;", {}),
    ("unique-constraint-without-index",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS handle text UNIQUE;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS handle text;", {}),
    ("unique-constraint-without-index",
     "ALTER TABLE users ADD PRIMARY KEY (id);",
     "ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_id_idx;", {}),
    ("validate-in-same-transaction",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;", {"_safe": NO_TX}),
    ("validate-in-same-transaction",
     "BEGIN;\nALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT fk;\nCOMMIT;",
     "BEGIN;\nALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\n"
     "COMMIT;\nALTER TABLE orders VALIDATE CONSTRAINT fk;", NO_TX),
    ("validate-in-same-transaction",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID, VALIDATE CONSTRAINT positive;",
     "CREATE TABLE IF NOT EXISTS orders (amount int);\n"
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;", {}),
    ("set-not-null",
     "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
     "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE users VALIDATE CONSTRAINT email_nn;\n"
     "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"
     "ALTER TABLE users DROP CONSTRAINT IF EXISTS email_nn;", {}),
    # rewrites
    ("column-type-change",
     "ALTER TABLE users ALTER COLUMN id TYPE bigint;",
     "CREATE TABLE IF NOT EXISTS t (id int); ALTER TABLE t ALTER COLUMN id TYPE bigint;", {}),
    ("column-type-change",
     "ALTER TABLE users ALTER COLUMN n TYPE numeric(12,2) USING n::numeric;",
     "ALTER TABLE users ALTER COLUMN n SET DEFAULT 0;", {}),
    ("add-column-volatile-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token uuid DEFAULT gen_random_uuid();",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now();", {}),
    ("add-column-volatile-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS n bigint GENERATED ALWAYS AS IDENTITY;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS n bigint DEFAULT 0;", {}),
    ("add-column-volatile-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS r float8 DEFAULT random() * 10;",
     "CREATE TABLE IF NOT EXISTS t (id bigint); ALTER TABLE t ADD COLUMN IF NOT EXISTS r float8 DEFAULT random();",
     {}),
    ("add-column-volatile-default",
     "CREATE OR REPLACE FUNCTION new_token() RETURNS text LANGUAGE sql AS $$ SELECT md5(random()::text) $$;\n"
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT new_token();",
     "CREATE OR REPLACE FUNCTION new_token() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'x' $$;\n"
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT new_token();", {}),
    ("add-column-volatile-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT app.new_token();",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT app.new_token();",
     {"functions": {"app.new_token()": "volatile"}, "_safe": {"functions": {"app.new_token()": "immutable"}}}),
    ("add-column-volatile-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT new_token();",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT new_token();",
     {"functions": {'public."new_token"(integer)': "v"}, "_safe": {"functions": {"public.new_token()": "s"}}}),
    ("add-column-generated-stored",
     "ALTER TABLE orders ADD COLUMN IF NOT EXISTS total numeric GENERATED ALWAYS AS (price * qty) STORED;",
     "ALTER TABLE orders ADD COLUMN IF NOT EXISTS total numeric;", {}),
    ("unbatched-data-change",
     "UPDATE accounts SET plan = 'free' WHERE plan IS NULL;",
     "-- harness:batch key=id size=5000\nUPDATE accounts SET plan = 'free' WHERE plan IS NULL;", {}),
    ("unbatched-data-change",
     "DELETE FROM sessions WHERE expires_at < now();",
     "CREATE TABLE IF NOT EXISTS sessions (id bigint, expires_at timestamptz);\n"
     "DELETE FROM sessions WHERE expires_at < now();", {}),
    ("unbatched-data-change",
     "UPDATE app.settings SET value = 'on' WHERE name = 'beta';",
     "UPDATE app.settings SET value = 'on' WHERE id = 7;\nDELETE FROM app.settings WHERE id IN (1, 2);", {}),
    ("vacuum-full", "VACUUM FULL users;", "VACUUM (ANALYZE) users;", NO_TX),
    ("cluster", "CLUSTER users USING users_pkey;",
     "CREATE TABLE IF NOT EXISTS t (id bigint); CLUSTER t USING t_pkey;", {}),
    # compatibility
    ("drop-table", "DROP TABLE IF EXISTS users;",
     "CREATE TABLE IF NOT EXISTS scratch (id bigint);\nDROP TABLE IF EXISTS scratch;", {}),
    ("drop-column", "ALTER TABLE users DROP COLUMN IF EXISTS legacy;",
     "CREATE TABLE IF NOT EXISTS t (a int, legacy int); ALTER TABLE t DROP COLUMN IF EXISTS legacy;", {}),
    ("drop-schema", "DROP SCHEMA IF EXISTS old CASCADE;",
     "CREATE SCHEMA IF NOT EXISTS tmp; DROP SCHEMA IF EXISTS tmp;", {}),
    ("rename-table", "ALTER TABLE users RENAME TO people;",
     "CREATE TABLE IF NOT EXISTS t (id bigint); ALTER TABLE t RENAME TO t2;", {}),
    ("rename-column", "ALTER TABLE users RENAME COLUMN email TO email_address;",
     "CREATE TABLE IF NOT EXISTS t (a bigint); ALTER TABLE t RENAME COLUMN a TO b;", {}),
    ("drop-not-null", "ALTER TABLE users ALTER COLUMN email DROP NOT NULL;",
     "CREATE TABLE IF NOT EXISTS t (a text NOT NULL); ALTER TABLE t ALTER COLUMN a DROP NOT NULL;", {}),
    ("add-column-not-null-without-default",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS active boolean NOT NULL;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS active boolean NOT NULL DEFAULT true;", {}),
    ("enum-rename-value", "ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy';",
     "CREATE TYPE mood AS ENUM ('sad'); ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy';", {}),
    ("enum-add-value", "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';",
     "CREATE TYPE public.mood AS ENUM ('sad'); ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';", {}),
    # robustness
    ("enum-value-used-in-transaction",
     "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\nUPDATE people SET mood = 'meh' WHERE id = 1;",
     "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\nUPDATE people SET mood = 'meh' WHERE id = 1;",
     {"_safe": NO_TX}),
    ("enum-value-used-in-transaction",
     "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\n"
     "ALTER TABLE people ALTER COLUMN mood SET DEFAULT 'meh'::mood;",
     "CREATE TYPE mood AS ENUM ('sad');\nALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\n"
     "ALTER TABLE people ALTER COLUMN mood SET DEFAULT 'meh'::mood;", {}),
    ("enum-value-used-in-transaction",
     "BEGIN;\nALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\nINSERT INTO people (mood) VALUES ('meh');\nCOMMIT;",
     "BEGIN;\nALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\nCOMMIT;\nINSERT INTO people (mood) VALUES ('meh');",
     NO_TX),
    ("not-rerunnable", "CREATE TABLE t (id bigint);", "CREATE TABLE IF NOT EXISTS t (id bigint);", NO_TX),
    ("not-rerunnable", "CREATE SCHEMA s;", "CREATE SCHEMA IF NOT EXISTS s;", NO_TX),
    ("not-rerunnable", "CREATE SEQUENCE s;", "CREATE SEQUENCE IF NOT EXISTS s;", NO_TX),
    ("not-rerunnable", "CREATE EXTENSION pgcrypto;", "CREATE EXTENSION IF NOT EXISTS pgcrypto;", NO_TX),
    ("not-rerunnable", "CREATE INDEX CONCURRENTLY i ON users (a);",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (a);", NO_TX),
    ("not-rerunnable", "ALTER TABLE users ADD COLUMN note text;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS note text;", NO_TX),
    ("not-rerunnable", "DROP VIEW v;", "DROP VIEW IF EXISTS v;", NO_TX),
    ("not-rerunnable", "CREATE VIEW v AS SELECT 1;", "CREATE OR REPLACE VIEW v AS SELECT 1;", NO_TX),
    ("not-rerunnable", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
     "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;", NO_TX),
    ("not-rerunnable", "CREATE MATERIALIZED VIEW mv AS SELECT 1;",
     "CREATE MATERIALIZED VIEW IF NOT EXISTS mv AS SELECT 1;", NO_TX),
    ("nested-transaction", "BEGIN;\nBEGIN;\nCOMMIT;\nCOMMIT;", "BEGIN;\nSELECT 1;\nCOMMIT;", NO_TX),
    ("unterminated-transaction", "BEGIN;\nSELECT 1;", "BEGIN;\nSELECT 1;\nCOMMIT;", NO_TX),
    ("commit-without-begin", "SELECT 1;\nCOMMIT;", "BEGIN;\nSELECT 1;\nCOMMIT;", NO_TX),
    ("cannot-run-in-transaction", "VACUUM users;", "VACUUM users;", {"in_transaction": True, "_safe": NO_TX}),
    ("cannot-run-in-transaction", "CREATE DATABASE x;", "SELECT 1;", {}),
    ("missing-lock-timeout",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS note text;",
     "SET lock_timeout = '2s';\nALTER TABLE users ADD COLUMN IF NOT EXISTS note text;",
     {"require_lock_timeout": True}),
    ("missing-lock-timeout",
     "SET lock_timeout = 0;\nDROP TABLE IF EXISTS users;",
     "SELECT set_config('lock_timeout', '1s', true);\nDROP TABLE IF EXISTS users;",
     {"require_lock_timeout": True}),
    ("identifier-too-long",
     "CREATE TABLE IF NOT EXISTS " + "t" * 64 + " (id bigint);",
     "CREATE TABLE IF NOT EXISTS " + "t" * 63 + " (id bigint);", {}),
    ("identifier-too-long",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS " + "\u00e9" * 32 + " text;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS " + "\u00e9" * 31 + " text;", {}),
    ("truncate-cascade", "TRUNCATE users CASCADE;", "TRUNCATE users;", {}),
    ("psql-meta-command", "\\set ON_ERROR_STOP on\nSELECT 1;", "SELECT '\\set x';", {}),
    ("parse-error", "SELEC 1;", "SELECT 1;", {}),
    ("allow-unknown-rule", "-- harness:allow no-such-rule\nSELECT 1;", "-- harness:allow drop-table\nSELECT 1;", {}),
    # types
    ("prefer-jsonb", "CREATE TABLE IF NOT EXISTS t (doc json);", "CREATE TABLE IF NOT EXISTS t (doc jsonb);", {}),
    ("prefer-timestamptz", "CREATE TABLE IF NOT EXISTS t (at timestamp);",
     "CREATE TABLE IF NOT EXISTS t (at timestamptz);", {}),
    ("prefer-timestamptz", "ALTER TABLE users ADD COLUMN IF NOT EXISTS at timestamp(3) without time zone;",
     "ALTER TABLE users ADD COLUMN IF NOT EXISTS at timestamp(3) with time zone;", {}),
    ("prefer-text-over-char", "CREATE TABLE IF NOT EXISTS t (code char(3));",
     "CREATE TABLE IF NOT EXISTS t (code varchar(3), flag \"char\");", {}),
    ("prefer-identity", "CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY);",
     "CREATE TABLE IF NOT EXISTS t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);", {}),
    ("prefer-bigint-pk", "CREATE TABLE IF NOT EXISTS t (id integer PRIMARY KEY);",
     "CREATE TABLE IF NOT EXISTS t (id bigint PRIMARY KEY);", {}),
    ("prefer-bigint-pk", "CREATE TABLE IF NOT EXISTS t (id int4, name text, PRIMARY KEY (id));",
     "CREATE TABLE IF NOT EXISTS t (a int, b int, PRIMARY KEY (a, b));", {}),
    ("prefer-bigint-pk", "CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY);",
     "CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY);", {}),
    ("prefer-bigint-pk", 'CREATE TABLE "User" ("id" SERIAL NOT NULL, CONSTRAINT "User_pkey" PRIMARY KEY ("id"));',
     'CREATE TABLE "User" ("id" BIGSERIAL NOT NULL, CONSTRAINT "User_pkey" PRIMARY KEY ("id"));', {}),
    ("prefer-bigint-pk", "CREATE TABLE t (id smallserial NOT NULL);\nALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
     "CREATE TABLE t (id int NOT NULL, n int);\nALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY (id, n);", {}),
]


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    flagged = {k: v for k, v in kwargs.items() if k != "_safe"}
    safe = kwargs.get("_safe", flagged)
    return flagged, safe


@pytest.mark.parametrize(("rule", "flagged", "safe", "kwargs"), RULE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(RULE_CASES)])
def test_rule_flags_and_safe_twin_passes(rule: str, flagged: str, safe: str, kwargs: dict) -> None:
    flagged_kwargs, safe_kwargs = _split_kwargs(kwargs)
    found = lint_sql(flagged, "m.sql", **flagged_kwargs)
    assert rule in rules_of(found), format_findings(found)
    hit = only(found, rule)[0]
    assert hit.severity in ("error", "warning")
    assert hit.message and hit.advice and hit.path == "m.sql" and hit.line >= 1 and hit.column >= 1
    clean = lint_sql(safe, "m.sql", **safe_kwargs)
    assert rule not in rules_of(clean), format_findings(clean)
    if rule != "parse-error":
        assert "parse-error" not in rules_of(found) | rules_of(clean)


def test_every_rule_has_a_flagged_case() -> None:
    covered = {case[0] for case in RULE_CASES}
    assert covered == set(RULES), f"rules without a case: {sorted(set(RULES) - covered)}"


def test_rule_catalogue_is_well_formed() -> None:
    categories = {"index", "constraints", "rewrites", "compatibility", "robustness", "types"}
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule_id)
        assert rule.severity in ("error", "warning")
        assert rule.category in categories
        assert rule.summary and rule.advice


def test_every_rule_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "lint.md").read_text(encoding="utf-8")
    missing = [rule for rule in RULES if f"`{rule}`" not in doc]
    assert not missing, f"rules missing from docs/lint.md: {missing}"


# ---------------------------------------------------------------------------- details of rules


def test_column_type_change_severity_depends_on_target() -> None:
    [to_text] = only(lint_sql("ALTER TABLE users ALTER COLUMN name TYPE text;", "m.sql"), "column-type-change")
    assert to_text.severity == "warning"
    [to_varchar] = only(lint_sql("ALTER TABLE users ALTER COLUMN name TYPE varchar;", "m.sql"), "column-type-change")
    assert to_varchar.severity == "warning"
    [to_bigint] = only(lint_sql("ALTER TABLE users ALTER COLUMN id TYPE bigint;", "m.sql"), "column-type-change")
    assert to_bigint.severity == "error"


def test_finding_points_at_offending_node() -> None:
    sql = "SELECT 1;\nALTER TABLE users\n  ADD COLUMN IF NOT EXISTS token uuid DEFAULT gen_random_uuid();\n"
    [hit] = only(lint_sql(sql, "m.sql"), "add-column-volatile-default")
    assert (hit.line, hit.column) == (3, 28)
    assert hit.statement.startswith("ALTER TABLE users ADD COLUMN")


def test_statement_is_shortened() -> None:
    sql = "DROP TABLE IF EXISTS users, " + ", ".join(f"table_{i}" for i in range(100)) + ";"
    [hit] = only(lint_sql(sql, "m.sql"), "drop-table")
    assert len(hit.statement) <= 200 and hit.statement.endswith("...")


def test_transactions_in_file_and_harness() -> None:
    # a file that opens with BEGIN wraps itself: the harness runs that as its own transaction
    assert not only(lint_sql("-- wrapper\nBEGIN;\nSELECT 1;\nCOMMIT;", "m.sql"), "nested-transaction")
    # a BEGIN later in the file nests inside the harness's transaction (a warning)
    [nested] = only(lint_sql("SELECT 0;\nBEGIN;\nSELECT 1;\nCOMMIT;", "m.sql"), "nested-transaction")
    assert nested.severity == "warning" and nested.line == 2
    # COMMIT without BEGIN ends the harness's transaction: an error
    [commit] = only(lint_sql("SELECT 1;\nCOMMIT;", "m.sql"), "commit-without-begin")
    assert commit.severity == "error" and commit.line == 2
    [unterminated] = only(lint_sql("SELECT 1;\nBEGIN;\nSELECT 2;\n", "m.sql", in_transaction=False),
                          "unterminated-transaction")
    assert unterminated.line == 2
    # COMMIT AND CHAIN keeps the transaction open; ROLLBACK closes it
    assert not lint_sql("BEGIN;\nCOMMIT AND CHAIN;\nROLLBACK;", "m.sql", in_transaction=False)


def test_lock_timeout_reported_once_and_reset() -> None:
    sql = "SET lock_timeout = '1s';\nRESET lock_timeout;\nALTER TABLE a ADD COLUMN IF NOT EXISTS x int;\n" \
          "ALTER TABLE b ADD COLUMN IF NOT EXISTS y int;"
    hits = only(lint_sql(sql, "m.sql", require_lock_timeout=True), "missing-lock-timeout")
    assert [h.line for h in hits] == [3]
    # statements that only touch tables created in the file take no contested lock
    sql = "CREATE TABLE IF NOT EXISTS t (id bigint);\nCREATE INDEX IF NOT EXISTS i ON t (id);"
    assert not only(lint_sql(sql, "m.sql", require_lock_timeout=True), "missing-lock-timeout")
    # off unless asked for
    assert not only(lint_sql("DROP TABLE IF EXISTS users;", "m.sql"), "missing-lock-timeout")


# ---------------------------------------------------------------------------- PL/pgSQL bodies
# (SQL, the (rule, line, column) findings expected, lint_sql keyword arguments)

DO_CASES: list[tuple[str, list[tuple[str, int, int]], dict]] = [
    # a guarded FK inside a DO block: the guard makes it re-runnable, not safe
    ("SELECT 1;\nDO $$\nBEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'fk') THEN\n"
     "    ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id);\n"
     "  END IF;\nEND\n$$;",
     [("constraint-missing-not-valid", 5, 28)], NO_TX),
    # the safe twin: NOT VALID, and nothing about re-runs inside the body
    ("DO $$\nBEGIN\n  ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\n"
     "EXCEPTION WHEN duplicate_object THEN NULL;\nEND\n$$;", [], NO_TX),
    # loops and nested blocks; EXECUTE of a literal, dollar- or single-quoted
    ("DO $body$ DECLARE r record; BEGIN\n  FOR r IN SELECT 1 LOOP\n    BEGIN\n"
     "      EXECUTE 'CREATE INDEX i ON users (a)';\n    END;\n  END LOOP;\n"
     "  EXECUTE $q$ALTER TABLE users DROP COLUMN legacy$q$;\nEND $body$;",
     [("index-not-concurrent", 4, 34), ("drop-column", 7, 14)], {}),
    ("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $$;", [], {}),
    # a single-quoted body with doubled quotes: reported at the DO statement
    ("SELECT 1;\nDO 'BEGIN ALTER TABLE users ADD COLUMN c text DEFAULT ''x''; ALTER TABLE users DROP COLUMN d; END';",
     [("drop-column", 2, 1)], {}),
    # tables created in the file are new inside the body too
    ("CREATE TABLE IF NOT EXISTS t (a int);\nDO $$ BEGIN CREATE INDEX i ON t (a); END $$;", [], {}),
    # a DO block is one statement: NOT VALID then VALIDATE inside it share a transaction
    ("DO $$ BEGIN\n  ALTER TABLE orders ADD CONSTRAINT c CHECK (a > 0) NOT VALID;\n"
     "  ALTER TABLE orders VALIDATE CONSTRAINT c;\nEND $$;", [("validate-in-same-transaction", 3, 3)], NO_TX),
    # an enum value added before the DO block and used in it
    ("ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\nDO $$ BEGIN UPDATE people SET mood = 'meh' WHERE id = 1; END $$;",
     [("enum-value-used-in-transaction", 2, 38)], {"severities": {"enum-add-value": "off"}}),
    # a PL/pgSQL function created and called in the migration
    ("CREATE OR REPLACE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $fn$\nBEGIN\n"
     "  ALTER TABLE users DROP COLUMN legacy;\nEND $fn$;\nSELECT fix();",
     [("drop-column", 3, 3)], {}),
    ("CREATE OR REPLACE PROCEDURE fix() LANGUAGE plpgsql AS $fn$\nBEGIN\n"
     "  CREATE INDEX i ON users (a);\nEND $fn$;\nCALL public.fix();",
     [("index-not-concurrent", 3, 21)], {}),
    # ...but not one that is only created
    ("CREATE OR REPLACE FUNCTION fix() RETURNS void LANGUAGE plpgsql AS $fn$\nBEGIN\n"
     "  ALTER TABLE users DROP COLUMN legacy;\nEND $fn$;", [], {}),
    # a body that PL/pgSQL cannot parse is left to PostgreSQL
    ("DO $$ BEGIN ALTER TABL users; END $$;", [], {}),
    ("DO LANGUAGE plperl $$ 1; $$;", [], {}),
]


@pytest.mark.parametrize(("sql", "expected", "kwargs"), DO_CASES, ids=[str(i) for i in range(len(DO_CASES))])
def test_statements_inside_plpgsql_bodies(sql: str, expected: list[tuple[str, int, int]], kwargs: dict) -> None:
    findings = lint_sql(sql, "m.sql", **kwargs)
    found = [(f.rule, f.line, f.column) for f in findings if f.rule not in ("enum-add-value",)]
    assert found == expected, format_findings(findings)


def test_allow_comment_on_do_statement_covers_its_body() -> None:
    sql = "-- harness:allow drop-column: unused since v3\nDO $$ BEGIN ALTER TABLE users DROP COLUMN legacy; END $$;"
    [hit] = only(lint_sql(sql, "m.sql"), "drop-column")
    assert hit.allowed == "unused since v3" and hit.statement == "ALTER TABLE users DROP COLUMN legacy"


# ---------------------------------------------------------------------------- re-runs, transactions


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (id bigint);",
    "ALTER TABLE users ADD COLUMN note text;",
    "DROP INDEX CONCURRENTLY i;",
    "ALTER TYPE mood ADD VALUE 'x';",
])
def test_rerunnability_only_without_a_transaction(sql: str) -> None:
    assert not only(lint_sql(sql, "m.sql", in_transaction=True), "not-rerunnable")
    assert only(lint_sql(sql, "m.sql", in_transaction=False), "not-rerunnable")


def test_function_volatility_from_earlier_files(tmp_path: Path) -> None:
    first = tmp_path / "001_fn.sql"
    first.write_text("CREATE FUNCTION app.token() RETURNS text LANGUAGE sql AS $$ SELECT md5(random()::text) $$;\n"
                     "CREATE FUNCTION app.tenant() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'x' $$;\n")
    second = tmp_path / "002_use.sql"
    second.write_text("ALTER TABLE users ADD COLUMN IF NOT EXISTS a text DEFAULT app.token();\n"
                      "ALTER TABLE users ADD COLUMN IF NOT EXISTS b text DEFAULT app.tenant();\n"
                      "SET search_path TO app;\n"
                      "ALTER TABLE public.users ADD COLUMN IF NOT EXISTS c text DEFAULT token();\n")
    third = tmp_path / "003_stable.sql"
    third.write_text("ALTER FUNCTION app.token() STABLE;\n"
                     "ALTER TABLE users ADD COLUMN IF NOT EXISTS d text DEFAULT app.token();\n")
    hits = only(lint_files([first, second, third]), "add-column-volatile-default")
    assert [(Path(h.path).name, h.line) for h in hits] == [("002_use.sql", 1), ("002_use.sql", 4)]
    # without the first file the function is unknown: not assumed volatile
    assert not only(lint_files([second]), "add-column-volatile-default")


@pytest.mark.parametrize(("volatility", "status"), [("", "failed"), ("STABLE", "passed")])
def test_rehearsal_reads_function_volatility_from_the_catalog(
        pg_server: Server, tmp_path: Path, volatility: str, status: str) -> None:
    # The second migration alone does not say what token() is: the rehearsal's snapshot does.
    (tmp_path / "migrations").mkdir()
    files = {
        "1_fn.sql": "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY);\n"
                    f"CREATE OR REPLACE FUNCTION token() RETURNS text LANGUAGE sql {volatility} "
                    "AS $$ SELECT 'x' $$;",
        "2_col.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS token text DEFAULT token();",
    }
    for name, sql in files.items():
        (tmp_path / "migrations" / name).write_text(sql)
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text("migrations: migrations/\nrehearsal: {provider: embedded}\n"
                         "defaults: {idempotent: false, rollback: false, backward_compatible: false, lint: true}\n")
    with Rehearsal(load_plan(plan_path), pg_server) as rehearsal:
        results = {item.id: outcome for item, outcome in rehearsal.run_all()}
    outcome = results["2_col::lint"]
    assert outcome.status == status, outcome.message
    assert ("add-column-volatile-default" in outcome.message) == (status == "failed")


def test_overloads_most_volatile_counts() -> None:
    sql = "ALTER TABLE users ADD COLUMN IF NOT EXISTS a text DEFAULT f(1);"
    functions = {"public.f(integer)": "immutable", "public.f(text)": "volatile"}
    assert only(lint_sql(sql, "m.sql", functions=functions), "add-column-volatile-default")
    assert not only(lint_sql(sql, "m.sql", functions={"other.f()": "volatile"}), "add-column-volatile-default")


def test_enum_value_used_after_commit_is_fine_and_found_once_per_statement() -> None:
    sql = ("ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';\n"
           "INSERT INTO people (mood, other) VALUES ('meh', 'meh'), ('meh', 'x');\n")
    hits = only(lint_sql(sql, "m.sql"), "enum-value-used-in-transaction")
    assert [(h.line, h.column) for h in hits] == [(2, 42)]
    assert not only(lint_sql(sql, "m.sql", in_transaction=False), "enum-value-used-in-transaction")


# ---------------------------------------------------------------------------- existing tables


CREATE_INDEX = "CREATE INDEX IF NOT EXISTS i ON {} (a);"


def index_flagged(sql: str, **kwargs: Any) -> bool:
    return bool(only(lint_sql(sql, "m.sql", **kwargs), "index-not-concurrent"))


def test_table_created_earlier_in_file_is_not_existing() -> None:
    sql = "CREATE TABLE IF NOT EXISTS orders (a int);\n" + CREATE_INDEX.format("orders")
    assert not index_flagged(sql)
    assert not index_flagged(sql, existing_tables={"public.users"})
    # ...but an index created *before* the table in the file is on the existing one
    sql = CREATE_INDEX.format("orders") + "\nDROP TABLE IF EXISTS orders;\nCREATE TABLE IF NOT EXISTS orders (a int);"
    assert index_flagged(sql)


def test_existing_tables_from_snapshot() -> None:
    assert index_flagged(CREATE_INDEX.format("users"), existing_tables={"public.users"})
    assert not index_flagged(CREATE_INDEX.format("orders"), existing_tables={"public.users"})
    # with no snapshot every table not created here is assumed to exist
    assert index_flagged(CREATE_INDEX.format("orders"))
    assert index_flagged(CREATE_INDEX.format("orders"), existing_tables=set(), created_before={"orders"})


def test_unqualified_names_mean_public() -> None:
    assert index_flagged(CREATE_INDEX.format("public.users"), existing_tables={"users"})
    assert index_flagged(CREATE_INDEX.format("users"), existing_tables={"users"})
    assert not index_flagged(CREATE_INDEX.format("users"), existing_tables={"app.users"})
    assert index_flagged(CREATE_INDEX.format("app.users"), existing_tables={"app.users"})
    # names as the snapshot writes them (quote_ident): quoted parts keep their case
    assert index_flagged(CREATE_INDEX.format('"Users"'), existing_tables={'public."Users"'})
    assert not index_flagged(CREATE_INDEX.format('"Users"'), existing_tables={"public.users"})
    assert index_flagged(CREATE_INDEX.format('"my app"."a.b"'), existing_tables={'"my app"."a.b"'})
    # search_path decides where unqualified names resolve
    sql = "SET search_path TO app, public;\n" + CREATE_INDEX.format("users")
    assert index_flagged(sql, existing_tables={"app.users"})


def test_create_table_if_not_exists_on_known_table_stays_existing() -> None:
    sql = "CREATE TABLE IF NOT EXISTS users (id bigint);\n" + CREATE_INDEX.format("users")
    assert index_flagged(sql, existing_tables={"public.users"})
    assert not index_flagged(sql, existing_tables=set())


def test_temp_and_ctas_tables_are_new() -> None:
    assert not index_flagged("CREATE TEMP TABLE scratch (a int);\n" + CREATE_INDEX.format("scratch"))
    assert not index_flagged("CREATE TABLE IF NOT EXISTS s AS SELECT 1 AS a;\n" + CREATE_INDEX.format("s"))
    assert not index_flagged("SELECT 1 AS a INTO s2;\n" + CREATE_INDEX.format("s2"))
    assert not index_flagged("CREATE SCHEMA app CREATE TABLE t (a int);\n"
                             + CREATE_INDEX.format("app.t"))


def test_lint_files_history(tmp_path: Path) -> None:
    first = tmp_path / "001_users.sql"
    first.write_text("CREATE TABLE IF NOT EXISTS users (id bigint, name varchar(100), price numeric(10,2));\n"
                     "CREATE INDEX IF NOT EXISTS users_name ON users (name);\n")
    second = tmp_path / "002_more.sql"
    second.write_text("CREATE INDEX IF NOT EXISTS users_id ON users (id);\n"
                      "ALTER TABLE users ALTER COLUMN name TYPE varchar(200);\n"
                      "ALTER TABLE users ALTER COLUMN price TYPE numeric(12,2);\n"
                      "ALTER TABLE users ALTER COLUMN id TYPE numeric;\n")
    third = tmp_path / "003_narrow.sql"
    third.write_text("ALTER TABLE users ALTER COLUMN name TYPE varchar(50);\n")
    findings = lint_files([first, second, third], existing_tables=set())
    by_file = {p.name: [f for f in findings if f.path == str(p)] for p in (first, second, third)}
    assert not only(by_file["001_users.sql"], "index-not-concurrent")
    assert [f.line for f in only(by_file["002_more.sql"], "index-not-concurrent")] == [1]
    assert [f.line for f in only(by_file["002_more.sql"], "column-type-change")] == [4]
    [narrow] = only(by_file["003_narrow.sql"], "column-type-change")
    assert narrow.severity == "error" and "varchar(200) -> varchar(50)" in narrow.message


def test_lint_files_per_file_transaction_flag(tmp_path: Path) -> None:
    path = tmp_path / "001_idx.notx.sql"
    path.write_text("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (a);\n")
    assert only(lint_files([path]), "concurrently-in-transaction")
    assert not only(lint_files([path], in_transaction=lambda p: ".notx." not in p.name),
                    "concurrently-in-transaction")


def test_lint_files_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing.sql"):
        lint_files([tmp_path / "missing.sql"])


def test_not_null_check_pattern_across_files(tmp_path: Path) -> None:
    files = []
    for i, sql in enumerate([
        "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
        "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\nALTER TABLE users DROP CONSTRAINT IF EXISTS email_nn;",
    ]):
        path = tmp_path / f"{i:03}.sql"
        path.write_text(sql)
        files.append(path)
    assert not only(lint_files(files), "set-not-null")
    assert only(lint_files(files[2:]), "set-not-null")


# ---------------------------------------------------------------------------- acknowledgement


def test_allow_comment_above_with_reason() -> None:
    sql = ("SELECT 1;\n"
           "-- harness:allow index-not-concurrent, not-rerunnable table has 40 rows\n"
           "CREATE INDEX i ON users\n"
           "  (email);\n"
           "CREATE INDEX j ON users (name);\n")
    findings = lint_sql(sql, "m.sql", in_transaction=False)
    first = [f for f in findings if f.line == 3]
    assert {f.rule for f in first} == {"index-not-concurrent", "not-rerunnable"}
    assert all(f.allowed == "table has 40 rows" for f in first)
    # the comment does not leak to the next statement
    assert all(f.allowed is None for f in findings if f.line == 5)


def test_allow_comment_at_end_of_line_without_reason() -> None:
    sql = "CREATE INDEX IF NOT EXISTS i ON users (email); -- harness:allow index-not-concurrent\n" \
          "CREATE INDEX IF NOT EXISTS j ON users (name);\n"
    findings = only(lint_sql(sql, "m.sql"), "index-not-concurrent")
    assert [(f.line, f.allowed) for f in findings] == [(1, "acknowledged in file"), (2, None)]


def test_allow_comment_on_last_line_of_multiline_statement() -> None:
    sql = "ALTER TABLE users\n  DROP COLUMN IF EXISTS legacy; -- harness:allow drop-column: unused since v3\n"
    [hit] = only(lint_sql(sql, "m.sql"), "drop-column")
    assert hit.allowed == "unused since v3"


def test_allow_comment_only_for_named_rules_and_adjacent_lines() -> None:
    sql = "-- harness:allow drop-table\n\nCREATE INDEX IF NOT EXISTS i ON users (email);\n"
    [hit] = only(lint_sql(sql, "m.sql"), "index-not-concurrent")
    assert hit.allowed is None  # blank line: not directly above
    sql = "-- harness:allow drop-table\nCREATE INDEX IF NOT EXISTS i ON users (email);\n"
    [hit] = only(lint_sql(sql, "m.sql"), "index-not-concurrent")
    assert hit.allowed is None  # other rule
    sql = ("/* harness:allow index-not-concurrent tiny table */\n-- another comment\n"
           "CREATE INDEX IF NOT EXISTS i ON users (email);\n")
    [hit] = only(lint_sql(sql, "m.sql"), "index-not-concurrent")
    assert hit.allowed == "tiny table"


def test_allow_marker_inside_string_is_not_a_comment() -> None:
    sql = "SELECT '-- harness:allow drop-table'; DROP TABLE IF EXISTS users;"
    [hit] = only(lint_sql(sql, "m.sql"), "drop-table")
    assert hit.allowed is None
    # the marker must start the comment
    sql = "DROP TABLE IF EXISTS users; -- see harness:allow drop-table in the docs"
    [hit] = only(lint_sql(sql, "m.sql"), "drop-table")
    assert hit.allowed is None


def test_allow_block_comment_before_statement_on_same_line() -> None:
    sql = "SELECT 1;\n/* harness:allow drop-table cleanup */ DROP TABLE IF EXISTS users;\nDROP TABLE IF EXISTS b;"
    hits = only(lint_sql(sql, "m.sql"), "drop-table")
    assert [(h.line, h.allowed) for h in hits] == [(2, "cleanup"), (3, None)]


def test_per_step_allow() -> None:
    findings = lint_sql("DROP TABLE IF EXISTS users;", "m.sql", allow={"drop-table"}, allow_reason="ticket 42")
    [hit] = only(findings, "drop-table")
    assert hit.allowed == "ticket 42"
    [hit] = only(lint_sql("DROP TABLE IF EXISTS users;", "m.sql", allow={"drop-table"}), "drop-table")
    assert hit.allowed == "allowed by the step"
    # the comment's own reason wins
    sql = "DROP TABLE IF EXISTS users; -- harness:allow drop-table replaced by people\n"
    [hit] = only(lint_sql(sql, "m.sql", allow={"drop-table"}, allow_reason="step"), "drop-table")
    assert hit.allowed == "replaced by people"
    with pytest.raises(ConfigError, match="no-such-rule"):
        lint_sql("SELECT 1;", "m.sql", allow={"no-such-rule"})


def test_allowed_findings_shown_with_reason() -> None:
    findings = lint_sql("DROP TABLE IF EXISTS users;", "m.sql", allow={"drop-table"}, allow_reason="ticket 42")
    assert "allowed: ticket 42" in format_findings(findings)
    assert "allowed: ticket 42" in format_findings(findings, "github")


# ---------------------------------------------------------------------------- severities


def test_severity_overrides() -> None:
    sql = "DROP TABLE IF EXISTS users;\nCREATE TABLE t (doc json);"
    base = lint_sql(sql, "m.sql")
    assert only(base, "drop-table")[0].severity == "error"
    changed = lint_sql(sql, "m.sql", severities={"drop-table": "warning", "prefer-jsonb": "error"})
    assert only(changed, "drop-table")[0].severity == "warning"
    assert only(changed, "prefer-jsonb")[0].severity == "error"
    off = lint_sql(sql, "m.sql", severities={"not-rerunnable": "off", "drop-table": "off"})
    assert rules_of(off) == {"prefer-jsonb"}


@pytest.mark.parametrize("severities", [{"no-such-rule": "error"}, {"drop-table": "fatal"}])
def test_bad_severity_overrides(severities: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        lint_sql("SELECT 1;", "m.sql", severities=severities)


# ---------------------------------------------------------------------------- formats


SAMPLE = "DROP TABLE IF EXISTS users;\nCREATE INDEX IF NOT EXISTS i ON orders (a, b);\n" \
         "ALTER TABLE users ADD COLUMN IF NOT EXISTS at timestamp;\n"


def test_format_text() -> None:
    text = format_findings(lint_sql(SAMPLE, "db/migrations/001.sql"))
    lines = text.splitlines()
    assert re.fullmatch(r"db/migrations/001\.sql:1:1: error drop-table: .+", lines[0])
    assert lines[1].startswith("    ") and lines[1].strip() == RULES["drop-table"].advice
    assert format_findings([]) == ""


def test_format_json_round_trips() -> None:
    findings = lint_sql(SAMPLE, "m.sql")
    data = json.loads(format_findings(findings, "json"))
    assert [Finding(**item) for item in data] == findings


def test_format_github_annotations() -> None:
    findings = lint_sql(SAMPLE + "SELECT 'a,b:c';\n", "dir,x/m:1.sql")
    out = format_findings(findings, "github")
    pattern = re.compile(r"::(error|warning|notice) file=[^,:]+,line=\d+,col=\d+,title=[a-z-]+::[^\n]+")
    lines = out.splitlines()
    assert len(lines) == len(findings)
    for line in lines:
        assert pattern.fullmatch(line), line
    assert "file=dir%2Cx/m%3A1.sql" in lines[0]


def test_unknown_format() -> None:
    with pytest.raises(ConfigError, match="xml"):
        format_findings([], "xml")


# ---------------------------------------------------------------------------- parse errors


def test_parse_error_is_a_finding_with_location() -> None:
    sql = "SELECT 1;\n\nCREATE TABLE IF NOT EXISTS t (\n  id bigint,\n  name text,,\n);\nDROP TABLE IF EXISTS users;\n"
    findings = lint_sql(sql, "m.sql")
    [err] = only(findings, "parse-error")
    assert (err.line, err.column) == (5, 13)
    assert err.severity == "error" and 'syntax error at or near ","' in err.message
    assert err.statement.startswith("CREATE TABLE IF NOT EXISTS t")
    # linting goes on after the broken statement
    assert only(findings, "drop-table")[0].line == 7


@pytest.mark.parametrize(("sql", "line"), [
    ("SELECT 'unterminated;\nSELECT 2;\n", 1),
    ("SELECT 1;\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1;\n", 2),
    ("SELECT 1;\n/* never closed\n", 2),
    ("SELECT 1;\nSELECT (1 +\n", 2),
    ("SELECT 1;\nSELECT \u00e9\u00e9 FROM;\n", 2),
])
def test_parse_errors_never_raise(sql: str, line: int) -> None:
    [err] = only(lint_sql(sql, "m.sql"), "parse-error")
    assert err.line == line


def test_many_parse_errors() -> None:
    sql = "".join(f"SELEC {i};\nDROP TABLE IF EXISTS t{i};\n" for i in range(20))
    findings = lint_sql(sql, "m.sql")
    assert [f.line for f in only(findings, "parse-error")] == list(range(1, 40, 2))
    assert [f.line for f in only(findings, "drop-table")] == list(range(2, 41, 2))


# ---------------------------------------------------------------------------- no-crash corpus


CORPUS = [
    "CREATE PUBLICATION pub FOR TABLE users, orders WITH (publish = 'insert, update');",
    "CREATE PUBLICATION allpub FOR ALL TABLES;",
    "CREATE SUBSCRIPTION sub CONNECTION 'host=x dbname=y' PUBLICATION pub WITH (connect = false);",
    "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f();",
    "CREATE POLICY p ON users FOR SELECT TO PUBLIC USING (owner = current_user);",
    "ALTER TABLE users ENABLE ROW LEVEL SECURITY;",
    "CREATE TABLE IF NOT EXISTS m (id bigint, at date) PARTITION BY RANGE (at);",
    "CREATE TABLE IF NOT EXISTS m2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
    "ALTER TABLE m ATTACH PARTITION m2023 FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');",
    "ALTER TABLE m DETACH PARTITION m2022;",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0);",
    "CREATE TYPE comp AS (a int, b text);",
    "CREATE TYPE rng AS RANGE (subtype = float8);",
    "CREATE TYPE shell;",
    "CREATE TYPE mood AS ENUM ('a', 'b');",
    "CREATE RULE r AS ON INSERT TO v DO INSTEAD (INSERT INTO t VALUES (NEW.a); INSERT INTO u VALUES (NEW.a));",
    "CREATE OR REPLACE PROCEDURE p2() LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
    "CREATE OR REPLACE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a + b;",
    "DO $$ BEGIN RAISE NOTICE 'x; y'; END $$;",
    "DO LANGUAGE plpgsql $body$ DECLARE x int; BEGIN x := 1; END $body$;",
    "GRANT SELECT, INSERT ON users TO app;",
    "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reader;",
    "COMMENT ON TABLE users IS 'People; who use it';",
    "COMMENT ON COLUMN users.email IS E'it\\'s -- not a comment';",
    "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" WITH SCHEMA public;",
    "CREATE STATISTICS IF NOT EXISTS s1 (dependencies) ON a, b FROM t;",
    "CREATE AGGREGATE myavg (float8) (sfunc = float8_accum, stype = float8[]);",
    "CREATE OPERATOR === (leftarg = int, rightarg = int, function = int4eq);",
    "CREATE CAST (text AS mood) WITH INOUT;",
    "CREATE COLLATION IF NOT EXISTS german (provider = icu, locale = 'de-DE');",
    "CREATE TEXT SEARCH CONFIGURATION my_cfg (COPY = english);",
    "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'x');",
    "CREATE USER MAPPING FOR CURRENT_USER SERVER s;",
    "IMPORT FOREIGN SCHEMA remote FROM SERVER s INTO local;",
    "CREATE FOREIGN TABLE ft (id int) SERVER s;",
    "CREATE ROLE app LOGIN;",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v "
    "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v);",
    "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved;",
    "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO NOTHING;",
    "UPDATE users SET email = lower(email) WHERE id BETWEEN 1 AND 1000;",
    "LOCK TABLE users IN SHARE MODE;",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY mv;",
    "LISTEN ch; NOTIFY ch, 'x';",
    "PREPARE q(int) AS SELECT $1; EXECUTE q(1); DEALLOCATE q;",
    "EXPLAIN (COSTS OFF) SELECT 1;",
    "CREATE OR REPLACE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
    "BEGIN NEW.updated_at := now(); RETURN NEW; END $fn$;",
    "CREATE TRIGGER t1 BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION trg();",
    "CREATE OR REPLACE VIEW v AS SELECT id FROM users WITH CHECK OPTION;",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS mv AS SELECT 1 WITH NO DATA;",
    "SECURITY LABEL FOR dummy ON TABLE users IS 'x';",
    "ALTER TABLE users SET (fillfactor = 70);",
    "CREATE SEQUENCE IF NOT EXISTS seq START 10 INCREMENT BY 2;",
    "SELECT setval('seq', 42, true);",
    "CALL p2();",
    "ANALYZE users;",
    "CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler;",
    "CREATE CONVERSION myconv FOR 'UTF8' TO 'LATIN1' FROM utf8_to_iso8859_1;",
    "ALTER TABLE users ALTER COLUMN email SET STATISTICS 500;",
    "CREATE TABLE IF NOT EXISTS g (a int, b int GENERATED ALWAYS AS (a * 2) STORED);",
    "SELECT U&'\\0041' AS a, B'101', X'ff', $$dollar$$, 1.5e3::numeric(10,2), a$b$ FROM x;",
    "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'c' BEFORE 'a';",
    "ALTER EXTENSION hstore UPDATE TO '1.8';",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS gin_idx ON docs USING gin (body jsonb_path_ops) "
    "WHERE deleted_at IS NULL;",
    "ALTER TABLE ONLY users ALTER COLUMN id SET DEFAULT nextval('users_id_seq'::regclass);",
    "ALTER TABLE users OWNER TO app;",
    "ALTER TABLE users ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;",
    "ALTER INDEX users_email RENAME TO users_email_idx;",
    "ALTER VIEW v RENAME COLUMN id TO ident;",
    "ALTER TYPE comp ADD ATTRIBUTE c int;",
    "CREATE TABLE IF NOT EXISTS \"Mixed Case\" (\"Weird \"\"col\"\"\" text);",
    "SAVEPOINT sp; RELEASE SAVEPOINT sp;",
    "SET LOCAL statement_timeout = '5min';",
    "SELECT pg_catalog.set_config('search_path', '', false);",
    "CREATE UNLOGGED TABLE IF NOT EXISTS u (a int) WITH (autovacuum_enabled = off);",
    "DROP FUNCTION IF EXISTS f(int, text) CASCADE;",
    "DROP OWNED BY app;",
    "REASSIGN OWNED BY app TO postgres;",
    "DISCARD ALL;",
    "CHECKPOINT;",
    "COPY users (id, email) TO STDOUT WITH (FORMAT csv, HEADER);",
    "COPY users FROM '/tmp/users.csv' WITH (FORMAT csv);",
]


@pytest.mark.parametrize("sql", CORPUS)
def test_corpus_statement_lints_without_parse_error(sql: str) -> None:
    findings = lint_sql(sql, "m.sql")
    assert "parse-error" not in rules_of(findings), format_findings(findings)
    assert all(isinstance(f, Finding) for f in findings)


def test_corpus_as_one_file() -> None:
    text = "\n".join(CORPUS)
    for in_transaction in (True, False):
        findings = lint_sql(text, "all.sql", in_transaction=in_transaction, require_lock_timeout=True)
        assert "parse-error" not in rules_of(findings)


PG_DUMP = """\
--
-- PostgreSQL database dump
--

\\restrict abc123

SET statement_timeout = 0;
SET lock_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;

\\connect shop

CREATE FUNCTION public.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
  NEW.updated_at := now(); -- a comment; with a semicolon
  RETURN NEW;
END
$_$;

ALTER FUNCTION public.touch() OWNER TO shop;

CREATE TABLE public.items (
    id integer NOT NULL,
    name character varying(80),
    meta jsonb
);

CREATE SEQUENCE public.items_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.items_id_seq OWNED BY public.items.id;

ALTER TABLE ONLY public.items ALTER COLUMN id SET DEFAULT nextval('public.items_id_seq'::regclass);

COPY public.items (id, name, meta) FROM stdin;
1\tit's; a -- "thing"\t{"a": 1}
2\t\\N\t\\N
3\tbackslash \\\\ and $$ and /* open\t{}
\\.

SELECT pg_catalog.setval('public.items_id_seq', 3, true);

ALTER TABLE ONLY public.items
    ADD CONSTRAINT items_pkey PRIMARY KEY (id);

CREATE INDEX items_name ON public.items USING btree (name);

COPY public.empty (a) FROM stdin;
\\.

COMMENT ON TABLE public.items IS 'Things; sold';

DROP TABLE public.legacy;

\\unrestrict abc123
"""


def test_pg_dump_file_with_copy_data() -> None:
    findings = lint_sql(PG_DUMP, "dump.sql", in_transaction=False)
    assert "parse-error" not in rules_of(findings), format_findings(findings)
    metas = only(findings, "psql-meta-command")
    lines = PG_DUMP.splitlines()
    assert [f.line for f in metas] == [i + 1 for i, l in enumerate(lines) if l.startswith(("\\connect", "\\restrict",
                                                                                           "\\unrestrict"))]
    # line numbers after the data blocks are right
    [drop] = only(findings, "drop-table")
    assert lines[drop.line - 1] == "DROP TABLE public.legacy;"
    # the table and index were created in the dump itself
    assert not only(findings, "index-not-concurrent")
    assert not only(findings, "unique-constraint-without-index")


def test_truncated_inputs_never_raise() -> None:
    text = PG_DUMP + "\n".join(CORPUS)
    for cut in range(0, len(text), 53):
        findings = lint_sql(text[:cut], "cut.sql")
        assert all(isinstance(f, Finding) for f in findings)


@pytest.mark.parametrize("sql", [
    "",
    "   \n\n",
    "-- only a comment",
    ";;;",
    "\\",
    "SELECT 1 \\gset\nSELECT :'x';",
    "SELECT 1\\g\nDROP TABLE IF EXISTS users;",
    "select $$ unterminated",
    "\x00SELECT 1;",
    "SELECT " + "(" * 2000 + "1" + ")" * 2000 + ";",
])
def test_odd_inputs_never_raise(sql: str) -> None:
    findings = lint_sql(sql, "odd.sql")
    assert all(isinstance(f, Finding) for f in findings)


def test_backslash_g_terminates_statement() -> None:
    findings = lint_sql("SELECT 1 \\g\nDROP TABLE IF EXISTS users;", "m.sql")
    assert "parse-error" not in rules_of(findings)
    assert only(findings, "drop-table")[0].line == 2
