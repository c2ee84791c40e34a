"""Tests for harness.sources: splitting SQL with pglast and reading migration folders.

No database is needed: everything here is parsing and file handling.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness.errors import EXIT_USAGE, SourceError
from harness.layouts import layout_findings
from harness.sources import Migration, Statement, checksum, load_migrations, parse_sql

DATA = Path(__file__).parent / "data" / "sources"


def texts(statements: list[Statement] | tuple[Statement, ...]) -> list[str]:
    return [s.sql for s in statements]


# --------------------------------------------------------------------------
# Splitting: (id, file text, expected statement texts, expected kinds)

SPLITTING = [
    (
        "plain",
        "CREATE TABLE t (a int);\nDROP TABLE t;\n",
        ["CREATE TABLE t (a int)", "DROP TABLE t"],
        ["CreateStmt", "DropStmt"],
    ),
    (
        "no-trailing-semicolon",
        "SELECT 1;\nSELECT 2",
        ["SELECT 1", "SELECT 2"],
        ["SelectStmt", "SelectStmt"],
    ),
    (
        "empty-statements-skipped",
        ";;SELECT 1;;;SELECT 2;;",
        ["SELECT 1", "SELECT 2"],
        ["SelectStmt", "SelectStmt"],
    ),
    (
        "dollar-quoted-function",
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  PERFORM 1;\n  RETURN 2;\nEND;\n$$;\n"
            "SELECT f();"
        ),
        [
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  PERFORM 1;\n  RETURN 2;\nEND;\n$$",
            "SELECT f()",
        ],
        ["CreateFunctionStmt", "SelectStmt"],
    ),
    (
        "nested-dollar-tags",
        (
            "CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $a$\nBEGIN\n"
            "  EXECUTE $b$ UPDATE t SET x = 'a;b'; $b$;\nEND\n$a$;\nSELECT 1;"
        ),
        [
            (
                "CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $a$\nBEGIN\n"
                "  EXECUTE $b$ UPDATE t SET x = 'a;b'; $b$;\nEND\n$a$"
            ),
            "SELECT 1",
        ],
        ["CreateFunctionStmt", "SelectStmt"],
    ),
    (
        "sql-standard-function-body",
        "CREATE FUNCTION h() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT h();",
        ["CREATE FUNCTION h() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END", "SELECT h()"],
        ["CreateFunctionStmt", "SelectStmt"],
    ),
    (
        "line-comments-with-semicolons",
        "-- first; not a statement\nSELECT 1; -- trailing; comment\n-- between;\nSELECT 2 -- before the semicolon;\n;",
        ["SELECT 1", "SELECT 2"],
        ["SelectStmt", "SelectStmt"],
    ),
    (
        "block-comments-with-semicolons",
        "/* head; */ SELECT /* inner; */ 1 /* tail; */;\n/* nested /* comments; */ too; */ SELECT 2;",
        ["SELECT /* inner; */ 1", "SELECT 2"],
        ["SelectStmt", "SelectStmt"],
    ),
    (
        "do-block",
        "DO $$\nDECLARE n int;\nBEGIN\n  SELECT count(*) INTO n FROM pg_class;\nEND\n$$;\nSELECT 1;",
        ["DO $$\nDECLARE n int;\nBEGIN\n  SELECT count(*) INTO n FROM pg_class;\nEND\n$$", "SELECT 1"],
        ["DoStmt", "SelectStmt"],
    ),
    (
        "row-level-security",
        (
            "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;\n"
            "CREATE POLICY p ON accounts FOR SELECT USING (owner = current_user);"
        ),
        [
            "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY p ON accounts FOR SELECT USING (owner = current_user)",
        ],
        ["AlterTableStmt", "CreatePolicyStmt"],
    ),
    (
        "extension-and-enum",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto;\nALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh' AFTER 'ok';",
        ["CREATE EXTENSION IF NOT EXISTS pgcrypto", "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh' AFTER 'ok'"],
        ["CreateExtensionStmt", "AlterEnumStmt"],
    ),
    (
        "validate-constraint-reindex-vacuum",
        "ALTER TABLE t VALIDATE CONSTRAINT c;\nREINDEX INDEX CONCURRENTLY i;\nVACUUM (ANALYZE) t;",
        ["ALTER TABLE t VALIDATE CONSTRAINT c", "REINDEX INDEX CONCURRENTLY i", "VACUUM (ANALYZE) t"],
        ["AlterTableStmt", "ReindexStmt", "VacuumStmt"],
    ),
    (
        "string-literals-with-semicolons",
        "INSERT INTO t VALUES ('a;b', 'it''s;'), (E'c\\';d', U&'\\0041;');\nSELECT ';';",
        ["INSERT INTO t VALUES ('a;b', 'it''s;'), (E'c\\';d', U&'\\0041;')", "SELECT ';'"],
        ["InsertStmt", "SelectStmt"],
    ),
    (
        "quoted-identifiers-with-semicolons",
        'CREATE TABLE "we;ird" ("col;" int);\nSELECT 1;',
        ['CREATE TABLE "we;ird" ("col;" int)', "SELECT 1"],
        ["CreateStmt", "SelectStmt"],
    ),
    (
        "non-ascii-before-later-statements",
        (
            "-- Grüße, 日本語; 😀\nCREATE TABLE \"ünïcødé\" (name text DEFAULT 'Zoë; 😀');\n"
            "COMMENT ON TABLE \"ünïcødé\" IS 'čšž';\nSELECT 'after';"
        ),
        [
            "CREATE TABLE \"ünïcødé\" (name text DEFAULT 'Zoë; 😀')",
            "COMMENT ON TABLE \"ünïcødé\" IS 'čšž'",
            "SELECT 'after'",
        ],
        ["CreateStmt", "CommentStmt", "SelectStmt"],
    ),
    (
        "transaction-control",
        "BEGIN; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s; COMMIT;",
        ["BEGIN", "SAVEPOINT s", "ROLLBACK TO SAVEPOINT s", "RELEASE s", "COMMIT"],
        ["TransactionStmt"] * 5,
    ),
]


@pytest.mark.parametrize(("text", "expected", "kinds"), [c[1:] for c in SPLITTING], ids=[c[0] for c in SPLITTING])
def test_splitting(text: str, expected: list[str], kinds: list[str]) -> None:
    statements = parse_sql(text, "corpus.sql")
    assert texts(statements) == expected
    assert [s.kind for s in statements] == kinds
    for statement in statements:
        assert type(statement.node).__name__ == statement.kind


@pytest.mark.parametrize(("text", "expected", "kinds"), [c[1:] for c in SPLITTING], ids=[c[0] for c in SPLITTING])
def test_line_and_column_point_at_the_statement(text: str, expected: list[str], kinds: list[str]) -> None:
    lines = text.split("\n")
    for statement in parse_sql(text, "corpus.sql"):
        start = sum(len(line) + 1 for line in lines[: statement.line - 1]) + statement.column - 1
        assert text[start : start + len(statement.sql)] == statement.sql


def test_positions_after_non_ascii_text() -> None:
    text = "-- ünïcødé 😀😀\nSELECT 'é';  SELECT 2;\n\n    /* ż */ CREATE TABLE t ();"
    statements = parse_sql(text, "u.sql")
    assert [(s.line, s.column) for s in statements] == [(2, 1), (2, 14), (4, 13)]
    assert texts(statements) == ["SELECT 'é'", "SELECT 2", "CREATE TABLE t ()"]


def test_empty_and_comment_only_text_has_no_statements() -> None:
    assert parse_sql("", "e.sql") == []
    assert parse_sql("  -- nothing; here\n/* nor; here */\n;\n", "e.sql") == []


@pytest.mark.parametrize(
    ("text", "control"),
    [
        ("BEGIN", "begin"),
        ("BEGIN WORK", "begin"),
        ("START TRANSACTION", "begin"),
        ("COMMIT", "commit"),
        ("END", "commit"),
        ("ROLLBACK", "rollback"),
        ("ABORT", "rollback"),
        ("SAVEPOINT s", "savepoint"),
        ("RELEASE SAVEPOINT s", "release"),
        ("ROLLBACK TO s", "rollback_to"),
        ("PREPARE TRANSACTION 'x'", "prepare"),
        ("COMMIT PREPARED 'x'", "commit_prepared"),
        ("ROLLBACK PREPARED 'x'", "rollback_prepared"),
        ("SELECT 1", None),
        ("CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END", None),
    ],
)
def test_transaction_control(text: str, control: str | None) -> None:
    [statement] = parse_sql(text, "c.sql")
    assert statement.control == control


# --------------------------------------------------------------------------
# Non-transactional statements: each must-flag statement next to a safe twin.

NON_TRANSACTIONAL = [
    ("CREATE INDEX CONCURRENTLY i ON t (a)", "CREATE INDEX i ON t (a)"),
    ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)", "CREATE UNIQUE INDEX IF NOT EXISTS i ON t (a)"),
    ("DROP INDEX CONCURRENTLY i", "DROP INDEX i"),
    ("DROP INDEX CONCURRENTLY IF EXISTS i", "DROP TABLE IF EXISTS i"),
    ("REINDEX INDEX CONCURRENTLY i", "REINDEX INDEX i"),
    ("REINDEX (CONCURRENTLY) TABLE t", "REINDEX (VERBOSE) TABLE t"),
    ("REINDEX (VERBOSE, CONCURRENTLY true) TABLE t", "REINDEX (CONCURRENTLY false) TABLE t"),
    ("REINDEX SCHEMA s", "REINDEX TABLE s.t"),
    ("REINDEX DATABASE", "REINDEX INDEX d"),
    ("REINDEX SYSTEM", "REINDEX TABLE pg_class"),
    ("VACUUM t", "ANALYZE t"),
    ("VACUUM (ANALYZE, VERBOSE) t", "ANALYZE VERBOSE t"),
    ("VACUUM FULL", "ANALYZE"),
    ("CREATE DATABASE d", "CREATE SCHEMA d"),
    ("DROP DATABASE IF EXISTS d", "DROP SCHEMA IF EXISTS d"),
    ("ALTER DATABASE d SET TABLESPACE fast", "ALTER DATABASE d SET work_mem = '64MB'"),
    ("ALTER SYSTEM SET work_mem = '64MB'", "SET work_mem = '64MB'"),
    ("ALTER SYSTEM RESET ALL", "RESET ALL"),
    ("CREATE TABLESPACE fast LOCATION '/mnt/fast'", "ALTER TABLE t SET TABLESPACE fast"),
    ("DROP TABLESPACE fast", "ALTER TABLESPACE fast RENAME TO quick"),
    ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", "ALTER TABLE p DETACH PARTITION c"),
    ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", "ALTER TABLE p DETACH PARTITION c FINALIZE"),
    (
        "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p",
        "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p WITH (create_slot = false)",
    ),
    (
        "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p WITH (create_slot = true, enabled)",
        "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p WITH (connect = false)",
    ),
    ("DROP SUBSCRIPTION s", "DROP PUBLICATION s"),
    ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", "ALTER SUBSCRIPTION s DISABLE"),
    ("ALTER SUBSCRIPTION s SET PUBLICATION p", "ALTER SUBSCRIPTION s SET PUBLICATION p WITH (refresh = false)"),
    ("ALTER SUBSCRIPTION s ADD PUBLICATION p", "ALTER SUBSCRIPTION s ADD PUBLICATION p WITH (refresh = off)"),
    (
        "ALTER SUBSCRIPTION s DROP PUBLICATION p WITH (refresh)",
        "ALTER SUBSCRIPTION s DROP PUBLICATION p WITH (refresh = 0)",
    ),
    ("ALTER SUBSCRIPTION s SET (failover = true)", "ALTER SUBSCRIPTION s SET (slot_name = NONE)"),
    ("ALTER SUBSCRIPTION s SET (two_phase = false)", "ALTER SUBSCRIPTION s SET (two_phase = true)"),
    ("ALTER SUBSCRIPTION s SET (two_phase = off)", "ALTER SUBSCRIPTION s SET (two_phase = on)"),
    ("CLUSTER", "CLUSTER t"),
    ("CLUSTER VERBOSE", "CLUSTER t USING i"),
    ("DISCARD ALL", "DISCARD PLANS"),
    ("COMMIT PREPARED 'x'", "PREPARE TRANSACTION 'x'"),
    ("ROLLBACK PREPARED 'x'", "ROLLBACK"),
    ("REINDEX TABLE CONCURRENTLY t", "REFRESH MATERIALIZED VIEW CONCURRENTLY mv"),
]


@pytest.mark.parametrize(("flagged", "safe"), NON_TRANSACTIONAL, ids=[f[0] for f in NON_TRANSACTIONAL])
def test_non_transactional_detection(flagged: str, safe: str) -> None:
    [bad] = parse_sql(flagged, "n.sql")
    [good] = parse_sql(safe, "n.sql")
    assert bad.transactional is False
    assert good.transactional is True


@pytest.mark.parametrize(
    ("target_major", "transactional"),
    [(None, True), (11, False), (10, False), (12, True), (17, True)],
)
def test_alter_type_add_value_depends_on_target_major(target_major: int | None, transactional: bool) -> None:
    [add] = parse_sql("ALTER TYPE mood ADD VALUE 'meh'", "e.sql", target_major=target_major)
    [rename] = parse_sql("ALTER TYPE mood RENAME VALUE 'meh' TO 'bof'", "e.sql", target_major=target_major)
    assert add.transactional is transactional
    assert rename.transactional is True


# --------------------------------------------------------------------------
# Loading folders


def test_load_fixture_folder() -> None:
    migrations = load_migrations(DATA / "basic")
    assert [m.id for m in migrations] == [
        "0001_create_accounts",
        "0002_add_row_level_security",
        "9_add_email_index",
        "10_account_status",
    ]
    first, second, index, enum = migrations
    assert isinstance(first, Migration)
    assert first.version == "0001" and first.name == "create_accounts" and first.order == 1
    assert first.path == DATA / "basic" / "0001_create_accounts.sql"
    assert first.sql == first.path.read_text(encoding="utf-8")
    assert first.checksum == checksum(first.path)
    assert [s.kind for s in first.statements] == ["CreateStmt", "CreateFunctionStmt"]
    assert first.statements[1].line == 8 and first.statements[1].column == 1
    assert first.down_path == DATA / "basic" / "0001_create_accounts.down.sql"
    assert texts(first.down_statements or ()) == ["DROP FUNCTION accounts_touch()", "DROP TABLE accounts"]
    assert not first.wrapped and not first.down_wrapped
    assert first.transactional and first.down_transactional

    assert second.wrapped and second.down_wrapped
    assert [s.kind for s in second.statements] == ["AlterTableStmt", "CreatePolicyStmt"]
    assert all(s.control is None for s in second.statements + (second.down_statements or ()))
    assert (second.statements[0].line, second.statements[0].column) == (4, 1)

    assert not index.transactional and index.down_path is None and index.down_statements is None
    assert index.down_transactional
    assert enum.transactional
    assert enum.statements[1].sql == "ALTER TYPE account_status ADD VALUE 'suspendu' BEFORE 'fermé'"
    assert (enum.statements[1].line, enum.statements[1].column) == (3, 1)


def test_target_major_reaches_the_statements() -> None:
    migrations = load_migrations(str(DATA / "basic"), target_major=11)
    assert not migrations[-1].transactional


def test_timestamp_versions_in_order() -> None:
    migrations = load_migrations(DATA / "timestamps")
    assert [m.version for m in migrations] == ["20261101120000", "20261101120500", "20261215093000"]
    assert [s.kind for s in migrations[1].statements] == ["AlterTableStmt", "AlterTableStmt"]
    assert migrations[2].statements[0].kind == "DoStmt"


def write(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def test_numeric_ordering(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "10_ten.sql": "SELECT 10;",
            "9_nine.sql": "SELECT 9;",
            "100_hundred.sql": "SELECT 100;",
            "0011_eleven.sql": "SELECT 11;",
            "20261101120000_stamp.sql": "SELECT 'stamp';",
        },
    )
    assert [m.id for m in load_migrations(tmp_path)] == [
        "9_nine",
        "10_ten",
        "0011_eleven",
        "100_hundred",
        "20261101120000_stamp",
    ]


def test_checksum_changes_with_one_byte(tmp_path: Path) -> None:
    path = tmp_path / "1_a.sql"
    path.write_bytes(b"SELECT 1;\n")
    before = checksum(path)
    assert before == hashlib.sha256(b"SELECT 1;\n").hexdigest()
    path.write_bytes(b"SELECT 2;\n")
    assert checksum(path) != before
    path.write_bytes(b"SELECT 1;\n")
    assert checksum(path) == before
    assert load_migrations(tmp_path)[0].checksum == before


def test_checksum_of_the_bytes_not_the_text(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": "SELECT 1;\n"})
    plain = load_migrations(tmp_path)[0].checksum
    (tmp_path / "1_a.sql").write_bytes(b"SELECT 1;\r\n")
    assert load_migrations(tmp_path)[0].checksum != plain


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": b"\xef\xbb\xbfSELECT 1;"})
    [migration] = load_migrations(tmp_path)
    assert migration.sql == "SELECT 1;"
    assert (migration.statements[0].line, migration.statements[0].column) == (1, 1)


@pytest.mark.parametrize(
    ("text", "wrapped", "expected"),
    [
        ("BEGIN;\nSELECT 1;\nCOMMIT;\n", True, ["SELECT 1"]),
        ("-- c\nSTART TRANSACTION;\nSELECT 1;\nSELECT 2;\nEND;\n-- done\n", True, ["SELECT 1", "SELECT 2"]),
        (
            "BEGIN WORK; CREATE INDEX CONCURRENTLY i ON t (a); COMMIT WORK;",
            True,
            ["CREATE INDEX CONCURRENTLY i ON t (a)"],
        ),
        ("SELECT 1;\nSELECT 2;", False, ["SELECT 1", "SELECT 2"]),
        (
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
            False,
            ["CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END"],
        ),
    ],
)
def test_file_level_transaction_wrapper(tmp_path: Path, text: str, wrapped: bool, expected: list[str]) -> None:
    write(tmp_path, {"1_a.sql": text, "1_a.down.sql": text})
    [migration] = load_migrations(tmp_path)
    assert migration.wrapped is wrapped and migration.down_wrapped is wrapped
    assert texts(migration.statements) == expected
    assert texts(migration.down_statements or ()) == expected


def test_wrapped_file_with_non_transactional_statement_is_not_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": "BEGIN;\nVACUUM t;\nCOMMIT;"})
    [migration] = load_migrations(tmp_path)
    assert migration.wrapped and not migration.transactional


# --------------------------------------------------------------------------
# Bad input: (id, files, expected fragments of the message)

BAD_INPUT = [
    (
        "unparsable",
        {"1_a.sql": "SELECT 1;\nSELEC 2;\n"},
        ["1_a.sql:2:1:", "syntax error", "SELEC 2"],
    ),
    (
        "unparsable-after-non-ascii",
        {"1_a.sql": "SELECT 'ünï😀';\nSELECT 'é' FRM t;\n"},
        ["1_a.sql:2:16:", 'at or near "t"'],
    ),
    ("unterminated-dollar-quote", {"1_a.sql": "SELECT 1;\n  DO $$ BEGIN END;"}, ["1_a.sql:2:6:", "dollar-quoted"]),
    ("unparsable-end-of-input", {"1_a.sql": "SELECT 1;\nSELECT * FROM"}, ["1_a.sql:2:14:", "end of input"]),
    ("psql-meta-command", {"1_a.sql": "\\set ON_ERROR_STOP on\nSELECT 1;"}, ["1_a.sql:1:1:", "psql meta-commands"]),
    ("unparsable-down", {"1_a.sql": "SELECT 1;", "1_a.down.sql": "DROP TABLE;"}, ["1_a.down.sql:1:11:"]),
    (
        "duplicate-version",
        {"1_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"},
        ["0001_b.sql", "1_a.sql", "same version number (1)", "renumber"],
    ),
    (
        "down-without-up",
        {"1_a.sql": "SELECT 1;", "2_b.down.sql": "SELECT 2;"},
        ["2_b.down.sql", "without its up migration 2_b.sql"],
    ),
    (
        "down-with-mismatched-name",
        {"1_a.sql": "SELECT 1;", "1_b.down.sql": "SELECT 2;"},
        ["1_b.down.sql", "1_b.sql", "the up migration with that version is 1_a.sql"],
    ),
    ("bad-name-no-version", {"add_users.sql": "SELECT 1;"}, ["add_users.sql", "<version>_<name>.sql", "for example"]),
    ("bad-name-dash", {"0001-add-users.sql": "SELECT 1;"}, ["0001-add-users.sql", "20261101120000_add_users.sql"]),
    ("bad-name-dot", {"0001_add.users.sql": "SELECT 1;"}, ["0001_add.users.sql", "does not fit the pattern"]),
    ("bad-name-upper-suffix", {"0001_add.SQL": "SELECT 1;"}, ["0001_add.SQL", "does not fit the pattern"]),
    ("bad-name-empty-name", {"0001_.sql": "SELECT 1;"}, ["0001_.sql", "does not fit the pattern"]),
    ("not-utf8", {"1_a.sql": b"SELECT 1;\nSELECT '\xe9t\xe9';\n"}, ["1_a.sql:2:9:", "not valid UTF-8", "0xe9"]),
    ("not-utf8-down", {"1_a.sql": "SELECT 1;", "1_a.down.sql": b"\xff"}, ["1_a.down.sql:1:1:", "not valid UTF-8"]),
    ("nul-character", {"1_a.sql": "SELECT 1;\nSELECT 2;\x00DROP TABLE x;"}, ["1_a.sql:2:10:", "NUL"]),
    (
        "commit-in-the-middle",
        {"1_a.sql": "BEGIN;\nSELECT 1;\nCOMMIT;\nSELECT 2;\nCOMMIT;"},
        ["1_a.sql:3:1:", "'COMMIT' is not allowed here", "exactly one BEGIN"],
    ),
    (
        "nested-begin",
        {"1_a.sql": "BEGIN;\nSELECT 1;\n  BEGIN;\nSELECT 2;\nCOMMIT;"},
        ["1_a.sql:3:3:", "'BEGIN' is not allowed here", "own transaction"],
    ),
    (
        "begin-without-commit",
        {"1_a.sql": "BEGIN;\nSELECT 1;\n"},
        ["1_a.sql:1:1:", "BEGIN is not closed by a COMMIT", "own transaction"],
    ),
    ("commit-without-begin", {"1_a.sql": "SELECT 1;\nCOMMIT;"}, ["1_a.sql:2:1:", "COMMIT does not close a BEGIN"]),
    ("rollback", {"1_a.sql": "BEGIN;\nSELECT 1;\nROLLBACK;"}, ["1_a.sql:1:1:", "BEGIN is not closed"]),
    ("rollback-alone", {"1_a.sql": "SELECT 1;\nROLLBACK;\nSELECT 2;"}, ["1_a.sql:2:1:", "'ROLLBACK' is not allowed"]),
    (
        "savepoint",
        {"1_a.sql": "SELECT 1;\nSAVEPOINT before_update;\nSELECT 2;"},
        ["1_a.sql:2:1:", "'SAVEPOINT before_update'"],
    ),
    (
        "savepoint-in-wrapped-file",
        {"1_a.sql": "BEGIN;\nSAVEPOINT s;\nRELEASE s;\nCOMMIT;"},
        ["1_a.sql:2:1:", "'SAVEPOINT s' is not allowed"],
    ),
    (
        "commit-prepared",
        {"1_a.sql": "COMMIT PREPARED 'x';"},
        ["1_a.sql:1:1:", "COMMIT PREPARED 'x'", "is not allowed here"],
    ),
    (
        "begin-with-options",
        {"1_a.sql": "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;"},
        ["1_a.sql:1:1:", "transaction options", "plain BEGIN"],
    ),
    ("commit-and-chain", {"1_a.sql": "BEGIN;\nSELECT 1;\nCOMMIT AND CHAIN;"}, ["1_a.sql:3:1:", "AND CHAIN"]),
    ("transaction-in-down", {"1_a.sql": "SELECT 1;", "1_a.down.sql": "SELECT 1;\nCOMMIT;"}, ["1_a.down.sql:2:1:"]),
]


# Problems of the folder as a whole: the tool itself refuses the folder, and so does the harness.
FOLDER_PROBLEMS = {"duplicate-version", "down-without-up", "down-with-mismatched-name"}
# A file whose name fits no pattern is skipped with a warning finding, as the Supabase CLI skips it.
SKIPPED_NAMES = {c[0] for c in BAD_INPUT if c[0].startswith("bad-name")}


@pytest.mark.parametrize(("files", "fragments"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input(
    request: pytest.FixtureRequest, tmp_path: Path, files: dict[str, str | bytes], fragments: list[str]
) -> None:
    """A bad file fails only its own migration (with file, line and advice); a bad folder is refused."""
    write(tmp_path, files)
    write(tmp_path, {"0_fine.sql": "CREATE TABLE fine (id int);", "0_fine.down.sql": "DROP TABLE fine;"})
    case = request.node.callspec.id
    if case in SKIPPED_NAMES:
        (fine,) = load_migrations(tmp_path)
        assert fine.id == "0_fine"
        (finding,) = layout_findings(tmp_path)
        assert finding.rule == "layout-ignored-file" and finding.severity == "warning"
        message = f"{finding.path}: {finding.message}"
    elif case in FOLDER_PROBLEMS:
        with pytest.raises(SourceError) as info:
            load_migrations(tmp_path)
        message = str(info.value)
    else:
        fine, broken = load_migrations(tmp_path)
        assert fine.error is None and fine.down_error is None and fine.reversible
        assert (broken.error is None) != (broken.down_error is None)  # exactly one side is broken
        message = broken.error or broken.down_error or ""
        if broken.error is not None:
            assert broken.statements == ()
        else:
            assert broken.down_statements is None and not broken.reversible
    for fragment in fragments:
        assert fragment in message
    assert str(tmp_path) in message


EMPTY_FILES = [
    ("empty-file", {"1_a.sql": ""}),
    ("blank-file", {"1_a.sql": "\n  \n"}),
    ("comments-only", {"1_a.sql": "-- TODO; later\n/* SELECT 1; */\n"}),
    ("wrapper-only", {"1_a.sql": "BEGIN;\n-- later\nCOMMIT;\n"}),
]


@pytest.mark.parametrize("files", [c[1] for c in EMPTY_FILES], ids=[c[0] for c in EMPTY_FILES])
def test_an_empty_up_file_is_a_no_op_migration(tmp_path: Path, files: dict[str, str]) -> None:
    write(tmp_path, files)
    (m,) = load_migrations(tmp_path)
    assert m.error is None and m.statements == () and m.transactional
    assert m.checksum == hashlib.sha256((tmp_path / "1_a.sql").read_bytes()).hexdigest()


@pytest.mark.parametrize("down", ["", "-- nothing to undo\n", "BEGIN;\nCOMMIT;\n", "/* irreversible */"])
def test_an_empty_down_file_is_kept_as_an_empty_down(tmp_path: Path, down: str) -> None:
    write(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);", "1_a.down.sql": down})
    (m,) = load_migrations(tmp_path)
    assert m.has_down and m.down_empty and not m.reversible
    assert m.down_statements == () and m.down_error is None


def test_a_folder_without_migrations_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "nothing yet", ".hidden.sql": "garbage", "sub/1_x.sql": "garbage"})
    with pytest.raises(SourceError) as info:
        load_migrations(tmp_path)
    assert info.value.exit_code == EXIT_USAGE
    assert f"no migration found in {tmp_path}" in str(info.value)
    assert "<version>_<name>.sql" in str(info.value) and "sub" in str(info.value)
    # layout: auto names the layouts whose signs it looked for.
    assert "auto-detection found no sign of" in str(info.value) and "prisma" in str(info.value)
    with pytest.raises(SourceError) as named:
        load_migrations(tmp_path, layout="native")
    assert "auto-detection" not in str(named.value)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        # Alembic environments are read by layout: alembic (tests/test_alembic_layout.py).
        ({"1700000000000_init.js": "exports.up = () => {};"}, "migrations written in code (.js files)"),
    ],
    ids=["knex"],
)
def test_a_folder_of_a_layout_we_do_not_read_is_named(tmp_path: Path, files: dict[str, str], named: str) -> None:
    write(tmp_path, files)
    with pytest.raises(SourceError) as info:
        load_migrations(tmp_path)
    assert named in str(info.value) and "does not read" in str(info.value)
    assert info.value.exit_code == EXIT_USAGE == 2


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as info:
        load_migrations(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    assert info.value.exit_code == 2


def test_folder_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "migrations"
    path.write_text("x")
    with pytest.raises(SourceError, match="is not a folder") as info:
        load_migrations(path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_parse_error_names_file_line_and_column() -> None:
    with pytest.raises(SourceError) as info:
        parse_sql("-- ✓ ok\nCREATE TABLE t (a int);\nALTER TABLE t ADD COLUMN b intt nope;", Path("m/5_x.sql"))
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith('m/5_x.sql:3:33: syntax error at or near "nope"')
    assert info.value.exit_code == 2


def test_checksum_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot be read"):
        checksum(tmp_path / "gone.sql")


def test_objects_are_frozen_and_node_ignored_in_comparison() -> None:
    [a] = parse_sql("SELECT 1", "a.sql")
    [b] = parse_sql("SELECT 1", "b.sql")
    assert a == b and hash(a) == hash(b)
    assert "node" not in repr(a)
    with pytest.raises(AttributeError):
        a.sql = "SELECT 2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT '-- not a comment'; SELECT 2", ["SELECT '-- not a comment'", "SELECT 2"]),
        ("SELECT 1 -- trailing\n; /* lead */ SELECT 2 /* tail */;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1 /* inside */ + 1;\n\t SELECT 'é' -- é\n;", ["SELECT 1 /* inside */ + 1", "SELECT 'é'"]),
    ],
)
def test_statements_with_and_without_comments_are_cut_alike(text: str, expected: list[str]) -> None:
    statements = parse_sql(text, "c.sql")
    assert texts(statements) == expected
    lines = text.split("\n")
    for statement in statements:
        start = sum(len(line) + 1 for line in lines[: statement.line - 1]) + statement.column - 1
        assert text[start : start + len(statement.sql)] == statement.sql


def test_parse_trees_are_built_on_first_use() -> None:
    # Splitting and classifying read the parser's JSON; the AST (several
    # times the cost of the parse) waits until a lint rule asks for it.
    first, second = parse_sql("CREATE TABLE t (id int); CREATE INDEX CONCURRENTLY i ON t (id)", "l.sql")
    assert first._trees is not None and first._trees._nodes is None
    assert not second.transactional
    assert second.node.concurrent and first._trees._nodes is not None
    assert first.node.relation.relname == "t"
