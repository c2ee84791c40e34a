"""Foreign migration layouts: reading, auto-detection, rehearsal end to end, substitutions, baseline and quirks.

The sample folders in tests/data/layouts/ were written for these tests: each
creates a users table, indexes it, and can be rolled back.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness import plan as plan_mod
from harness import sources
from harness.cli import main
from harness.errors import SourceError
from harness.layouts import detect_layout, layout_findings
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, SKIPPED, Rehearsal
from harness.sources import Order, checksum, load_migrations, load_plan_migrations

DATA = Path(__file__).parent / "data" / "layouts"

SAMPLE_IDS = {
    "native": ["20240101090000_create_users", "20240102090000_index_users_email"],
    "golang-migrate": ["000001_create_users", "000002_index_users_email", "000010_add_name"],
    "diesel": ["20170923182408_create users", "20170924113530_index_users_email", "2017-09-25-120000_add_name"],
    "dbmate": ["20240101090000_create_users", "20240102090000_index_users_email"],
    "goose": ["00001_create_users", "00002_index_users_email"],
    "flyway": ["1_create_users", "1.1_index_users_email", "2_add_name", "R__active_users_view"],
    "drizzle": ["0000_create_users", "0001_add_name"],
    "sqitch": ["users", "users_email_index"],
    "prisma": ["20240101090000_create_users", "20240102090000_index_users_email"],
    "sqlx": ["20240101090000_create_users", "20240102090000_index_users_email"],
    "atlas": ["20240101090000_create_users", "20240102090000_index_users_email"],
    "node-pg-migrate": ["1704099600000_create_users", "1704186000000_index_users_email"],
}
LAYOUT_NAMES = sorted(SAMPLE_IDS)


def write(root: Path, files: dict[str, str]) -> Path:
    """Write *files* (relative path -> text, dedented) under *root*; return *root*."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def plan_file(tmp_path: Path, migrations: Path, extra: str = "") -> Path:
    path = tmp_path / "plans" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"migrations: {migrations}\nrehearsal: {{provider: embedded}}\n" + textwrap.dedent(extra))
    return path


def rehearse(pg_server: Server, plan_path: Path, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    plan = load_plan(plan_path, env=env or {})
    with Rehearsal(plan, pg_server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


# --------------------------------------------------------------------------
# Reading and detection


def test_plan_and_sources_know_the_same_layouts() -> None:
    assert plan_mod.LAYOUTS == sources.LAYOUTS
    assert plan_mod.PLANNED_LAYOUTS == ()


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_auto_detection_picks_each_layout(layout: str) -> None:
    assert detect_layout(DATA / layout) == layout


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_each_sample_loads_in_order_with_no_findings(layout: str) -> None:
    named = load_migrations(DATA / layout, layout=layout)
    detected = load_migrations(DATA / layout)
    assert [m.id for m in named] == [m.id for m in detected] == SAMPLE_IDS[layout]
    assert all(m.layout == layout for m in named)
    orders = [m.order for m in named]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert layout_findings(DATA / layout) == []
    for m in named:
        assert m.checksum == checksum(m.path)  # of the file as written


@pytest.mark.parametrize(
    ("layout", "index_id"),
    [
        ("diesel", "20170924113530_index_users_email"),
        ("dbmate", "20240102090000_index_users_email"),
        ("goose", "00002_index_users_email"),
        ("flyway", "1.1_index_users_email"),
    ],
)
def test_layout_no_transaction_flags(layout: str, index_id: str) -> None:
    migrations = {m.id: m for m in load_migrations(DATA / layout)}
    index = migrations[index_id]
    assert index.no_transaction and index.down_no_transaction
    assert not index.transactional and not index.down_transactional
    assert not any(m.no_transaction for m in migrations.values() if m is not index)


def test_no_transaction_flag_wins_over_transactional_statements(tmp_path: Path) -> None:
    write(tmp_path, {"20240101000000_t/up.sql": "CREATE TABLE t (id int);", "20240101000000_t/metadata.toml":
                     "run_in_transaction = false\n"})
    (m,) = load_migrations(tmp_path, layout="diesel")
    assert all(s.transactional for s in m.statements)
    assert m.no_transaction and not m.transactional


def test_empty_and_ambiguous_folders_read_as_native(tmp_path: Path) -> None:
    assert detect_layout(tmp_path) == "native"
    write(tmp_path, {"1_a.up.sql": "SELECT 1;", "V2__b.sql": "SELECT 1;"})
    assert detect_layout(tmp_path) == "native"


def test_native_down_files_are_not_golang_migrate(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": "SELECT 1;", "1_a.down.sql": "SELECT 2;"})
    assert detect_layout(tmp_path) == "native"


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown migrations layout 'liquibase'"):
        load_migrations(tmp_path, layout="liquibase")


def test_diesel_orders_by_version_without_dashes_and_keeps_spaces() -> None:
    migrations = load_migrations(DATA / "diesel")
    # The directory "2017-09-25-..." sorts first by name; diesel (and the harness) compare "20170925120000".
    assert [str(m.order) for m in migrations] == ["20170923182408", "20170924113530", "20170925120000"]
    assert migrations[0].name == "create users"
    assert migrations[2].version == "2017-09-25-120000"


def test_diesel_refuses_two_versions_equal_without_dashes(tmp_path: Path) -> None:
    write(tmp_path, {"20170925120000_a/up.sql": "SELECT 1;", "2017-09-25-120000_b/up.sql": "SELECT 2;"})
    with pytest.raises(SourceError, match="same version"):
        load_migrations(tmp_path, layout="diesel")


def test_flyway_orders_dotted_versions_then_repeatables(tmp_path: Path) -> None:
    write(tmp_path, {
        "V10__ten.sql": "SELECT 10;",
        "V2.0.3__two.sql": "SELECT 203;",
        "V1_2__underscore.sql": "SELECT 12;",
        "V1.1__one_one.sql": "SELECT 11;",
        "sub/V1__one.sql": "SELECT 1;",  # Flyway scans sub-folders
        "R__b_view.sql": "SELECT 'b';",
        "R__a_view.sql": "SELECT 'a';",
        "afterMigrate.sql": "SELECT 'callback';",
    })
    migrations = load_migrations(tmp_path)
    assert [m.version for m in migrations] == ["1", "1.1", "1.2", "2.0.3", "10", "R__a_view", "R__b_view"]
    assert [m.repeatable for m in migrations] == [False] * 5 + [True] * 2
    assert migrations[-1].id == "R__b_view" and migrations[-1].name == ""
    findings = layout_findings(tmp_path)
    assert [(f.path.name, f.rule) for f in findings] == [("afterMigrate.sql", "layout-ignored-file")]


def test_flyway_refuses_one_version_twice(tmp_path: Path) -> None:
    write(tmp_path, {"V1__a.sql": "SELECT 1;", "V1.0__b.sql": "SELECT 2;"})
    with pytest.raises(SourceError, match="same version"):
        load_migrations(tmp_path, layout="flyway")


def test_golang_migrate_v_variant(tmp_path: Path) -> None:
    write(tmp_path, {
        "V1.CreateUsers.up.sql": "CREATE TABLE users (id int);",
        "V1.CreateUsers.down.sql": "DROP TABLE users;",
        "V2.AddName.up.sql": "ALTER TABLE users ADD COLUMN name text;",
        "notes.sql": "-- not a migration",
    })
    assert detect_layout(tmp_path) == "golang-migrate"
    migrations = load_migrations(tmp_path)
    assert [(m.version, m.name, m.down_path is not None) for m in migrations] == [
        ("1", "CreateUsers", True), ("2", "AddName", False)]
    assert [f.rule for f in layout_findings(tmp_path)] == ["layout-ignored-file"]


def test_drizzle_follows_the_journal(tmp_path: Path) -> None:
    write(tmp_path, {
        "0000_second.sql": "CREATE TABLE b (id int);",
        "0001_first.sql": "CREATE TABLE a (id int);",
        "0002_stray.sql": "CREATE TABLE c (id int);",
        "meta/_journal.json": json.dumps({"version": "7", "dialect": "postgresql", "entries": [
            {"idx": 0, "when": 2, "tag": "0001_first", "breakpoints": True},
            {"idx": 1, "when": 3, "tag": "0000_second", "breakpoints": True},
        ]}),
    })
    migrations = load_migrations(tmp_path)
    assert [m.id for m in migrations] == ["0001_first", "0000_second"]
    (stray,) = layout_findings(tmp_path)
    assert (stray.path.name, stray.rule, stray.severity) == ("0002_stray.sql", "layout-ignored-file", "warning")
    assert "_journal.json" in stray.message


def test_drizzle_journal_entry_without_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"meta/_journal.json": json.dumps({"entries": [{"idx": 0, "tag": "0000_gone"}]})})
    with pytest.raises(SourceError, match="0000_gone.sql"):
        load_migrations(tmp_path, layout="drizzle")


def test_sqitch_reworked_change_uses_the_tagged_script(tmp_path: Path) -> None:
    write(tmp_path, {
        "sqitch.plan": """\
            %syntax-version=1.0.0
            %project=p

            users 2024-01-01T00:00:00Z A <a@example.com> # first
            @v1.0 2024-01-02T00:00:00Z A <a@example.com> # tag
            users [users@v1.0] 2024-01-03T00:00:00Z A <a@example.com> # reworked
            """,
        "deploy/users@v1.0.sql": "CREATE TABLE users (id int);",
        "deploy/users.sql": "ALTER TABLE users ADD COLUMN name text;",
        "verify/users.sql": "SELECT name FROM users WHERE false;",
    })
    first, second = load_migrations(tmp_path)
    assert (first.id, first.path.name, first.verify_sql) == ("users@v1.0", "users@v1.0.sql", None)
    assert (second.id, second.path.name) == ("users", "users.sql")
    assert second.verify_sql is not None and "name" in second.verify_sql


def test_sqitch_plan_line_it_cannot_read(tmp_path: Path) -> None:
    write(tmp_path, {"sqitch.plan": "%project=p\n\nthis is not a change\n"})
    with pytest.raises(SourceError, match=r"sqitch.plan:3: cannot read this line"):
        load_migrations(tmp_path)


def test_dbmate_needs_an_up_marker(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": "-- migrate:down\nDROP TABLE a;\n", "2_b.sql": "-- migrate:up\nSELECT 1;\n"})
    with pytest.raises(SourceError, match="migrate:up"):
        load_migrations(tmp_path, layout="dbmate")


def test_section_files_keep_file_line_numbers() -> None:
    (first, _) = load_migrations(DATA / "goose")
    assert first.path == first.down_path
    function = first.statements[1]
    assert function.kind == "CreateFunctionStmt" and function.line == 8
    assert first.down_statements is not None and first.down_statements[0].line == 17
    assert first.sql.count("\n") == first.path.read_text().count("\n")


# --------------------------------------------------------------------------
# Order


def test_order_compares_like_the_old_integer_and_totally() -> None:
    assert Order((1,)) == 1 and hash(Order((1,))) == hash(1) and int(Order((7,))) == 7
    assert Order((1,)) < Order((1, 1)) < Order((1, 2)) < Order((2, 0, 3)) < Order((10,)) < 11
    assert Order((1, 0)) == Order((1,))
    last_versioned = Order((10**30,))
    repeatable = Order(repeatable=True, tiebreak="R__a")
    assert last_versioned < repeatable < Order(repeatable=True, tiebreak="R__b")
    assert sorted([repeatable, Order((3,)), Order((1, 5))]) == [Order((1, 5)), Order((3,)), repeatable]
    with pytest.raises(TypeError):
        int(Order((1, 1)))


# --------------------------------------------------------------------------
# Rehearsal end to end


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_each_sample_rehearses_green(pg_server: Server, tmp_path: Path, layout: str) -> None:
    results = rehearse(pg_server, plan_file(tmp_path, DATA / layout, f"layout: {layout}\n"))
    # Drizzle, Prisma and Atlas have no downs: rollback is skipped and the failure rehearsal (atomic) runs,
    # except for a migration that runs outside a transaction, where there is nothing to roll back.
    outside = "runs outside a transaction"
    bad = {k: v for k, v in results.items() if v[0] != PASSED and v != (SKIPPED, "no down migration")
           and not (k.endswith("::atomic") and v[0] == SKIPPED and v[1].startswith(outside))}
    assert bad == {}
    for item_id, outcome in results.items():
        if outcome == (SKIPPED, "no down migration"):
            assert results[item_id.replace("::rollback", "::atomic")][0] in (PASSED, SKIPPED)
    for mid in SAMPLE_IDS[layout]:
        assert results[f"{mid}::apply"][0] == PASSED
    if layout == "sqitch":
        assert results["users::check[sqitch verify]"] == (PASSED, "ran without error")
    if layout == "flyway":
        assert "R__active_users_view::apply" in results  # after the versioned ones, rehearsed like them


def test_auto_layout_rehearses_too(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, plan_file(tmp_path, DATA / "dbmate", "defaults: {lint: false}\n"))
    assert set(results) >= {"20240102090000_index_users_email::rollback"}
    assert all(status == PASSED for status, _ in results.values()), results


def test_failing_sqitch_verify_fails_its_check(pg_server: Server, tmp_path: Path) -> None:
    folder = write(tmp_path / "sq", {
        "sqitch.plan": "%project=p\nusers 2024-01-01T00:00:00Z A <a@example.com>\n",
        "deploy/users.sql": "CREATE TABLE IF NOT EXISTS users (id int);",
        "verify/users.sql": "SELECT missing_column FROM users WHERE false;",
    })
    results = rehearse(pg_server, plan_file(tmp_path, folder, "defaults: {lint: false}\n"))
    status, message = results["users::check[sqitch verify]"]
    assert status == FAILED and "missing_column" in message


# --------------------------------------------------------------------------
# Substitutions


SUBSTITUTED = {
    "1_users.sql": """\
        CREATE SCHEMA IF NOT EXISTS ${schema};
        CREATE TABLE IF NOT EXISTS ${schema}.users (id bigint PRIMARY KEY, email text NOT NULL);
        COMMENT ON TABLE ${schema}.users IS 'owned by ${owner}, tenant __TENANT_7__';
        """,
}


def test_substitutions_literal_regex_inside_strings_and_checksum(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", SUBSTITUTED)
    subs = [
        {"literal": "${schema}", "value": "app"},
        {"literal": "${owner}", "value": "ops"},
        {"regex": r"__TENANT_(\d+)__", "value": r"t\1"},  # the value is inserted as written
    ]
    (m,) = load_migrations(folder, substitutions=subs)
    assert [s.sql.split("(")[0].strip() for s in m.statements][:2] == [
        "CREATE SCHEMA IF NOT EXISTS app", "CREATE TABLE IF NOT EXISTS app.users"]
    assert "'owned by ops, tenant t\\1'" in m.statements[2].sql  # inside a string literal too
    assert "${" not in m.sql
    assert m.checksum == checksum(m.path)  # of the file as written
    (plain,) = load_migrations(write(tmp_path / "plain", {"1_users.sql": "SELECT 1;"}))
    assert plain.checksum == checksum(plain.path)


def test_substitutions_from_the_plan_with_interpolated_values(pg_server: Server, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", SUBSTITUTED)
    plan_path = plan_file(tmp_path, folder, """\
        defaults: {lint: false, backward_compatible: false}
        substitutions:
          - {literal: "${schema}", value: "${APP_SCHEMA}"}
          - {literal: "${owner}", value: "${APP_OWNER:-nobody}"}
          - {regex: '__TENANT_[0-9]+__', value: ""}
        """)
    plan = load_plan(plan_path, env={"APP_SCHEMA": "tenant_a"})
    assert [s.literal or s.regex for s in plan.substitutions] == ["${schema}", "${owner}", "__TENANT_[0-9]+__"]
    assert [s.value for s in plan.substitutions] == ["tenant_a", "nobody", ""]
    (m,) = load_plan_migrations(plan)
    assert "tenant_a.users" in m.sql and "'owned by nobody, tenant '" in m.sql
    results = rehearse(pg_server, plan_path, env={"APP_SCHEMA": "tenant_a"})
    assert results.pop("1_users::rollback") == (SKIPPED, "no down migration")
    assert all(status == PASSED for status, _ in results.values()), results


def test_flyway_placeholder_without_value_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"V1__a.sql": "SELECT 1;\nCREATE TABLE ${flyway:defaultSchema}.t (id int);\n"})
    with pytest.raises(SourceError, match=r"V1__a.sql:2:\d+: Flyway placeholder \$\{flyway:defaultSchema\}"):
        load_migrations(tmp_path)
    (m,) = load_migrations(tmp_path, substitutions=[{"literal": "${flyway:defaultSchema}", "value": "public"}])
    assert "public.t" in m.sql


def test_bad_substitution_is_a_source_error(tmp_path: Path) -> None:
    write(tmp_path, {"1_a.sql": "SELECT 1;"})
    with pytest.raises(SourceError, match="exactly one of literal or regex"):
        load_migrations(tmp_path, substitutions=[{"value": "x"}])


# --------------------------------------------------------------------------
# Baseline


def _baseline_project(tmp_path: Path) -> Path:
    return write(tmp_path / "m", {
        "1_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text);",  # not idempotent: out of scope
        "2_legacy.sql": "CREATE INDEX users_email_idx ON users (email);",  # would fail lint: out of scope
        "3_name.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS name text;",
        "3_name.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS name;",
    })


def test_baseline_applies_earlier_migrations_as_one_item(pg_server: Server, tmp_path: Path) -> None:
    plan_path = plan_file(tmp_path, _baseline_project(tmp_path), "baseline: 2\n")
    plan = load_plan(plan_path)
    assert plan.baseline == "2"
    with Rehearsal(plan, pg_server) as rehearsal:
        items = rehearsal.items()
        assert items[0].id == "2_legacy::baseline"
        assert not any(i.migration.id in ("1_users", "2_legacy") for i in items[1:])
        results = {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}
    assert results["2_legacy::baseline"] == (PASSED, "applied 2 baseline migrations, up to 2_legacy")
    assert all(status == PASSED for status, _ in results.values()), results


def test_baseline_failure_fails_the_item_and_skips_the_rest(pg_server: Server, tmp_path: Path) -> None:
    folder = _baseline_project(tmp_path)
    (folder / "1_users.sql").write_text("CREATE TABLE users (id bigint PRIMARY KEY, email nosuchtype);")
    results = rehearse(pg_server, plan_file(tmp_path, folder, "baseline: 2_legacy\n"))
    status, message = results["2_legacy::baseline"]
    assert status == FAILED and "1_users failed to apply" in message and "nosuchtype" in message
    assert results["3_name::apply"][0] == SKIPPED


def test_baseline_naming_no_migration(pg_server: Server, tmp_path: Path) -> None:
    plan = load_plan(plan_file(tmp_path, _baseline_project(tmp_path), "baseline: 7\n"))
    with pytest.raises(SourceError, match="baseline '7' names no migration"):
        Rehearsal(plan, pg_server)


# --------------------------------------------------------------------------
# Quirks: findings with file and line, never a crash


QUIRKS = {
    # golang-migrate sends the file whole: a missing final semicolon is nothing it trips over.
    "golang down without final semicolon": (
        "golang-migrate",
        {"1_a.up.sql": "CREATE TABLE a (id int);\n", "1_a.down.sql": "DROP TABLE a\n"},
        [],
    ),
    "golang CONCURRENTLY among other statements": (
        "golang-migrate",
        {"1_a.up.sql": "CREATE TABLE a (id int);\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n",
         "2_b.up.sql": "CREATE INDEX CONCURRENTLY b_idx ON a (id);\n"},  # alone in its file: fine
        [("1_a.up.sql", 2, "layout-transaction", "error")],
    ),
    "diesel CONCURRENTLY without run_in_transaction = false": (
        "diesel",
        {"1_a/up.sql": "-- index\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n"},
        [("up.sql", 2, "layout-transaction", "error")],
    ),
    "diesel metadata.toml that does not parse": (
        "diesel",
        {"1_a/up.sql": "SELECT 1;\n", "1_a/metadata.toml": "run_in_transaction = nope\n"},
        [("metadata.toml", 1, "layout-bad-metadata", "warning")],
    ),
    "dbmate CONCURRENTLY without transaction:false": (
        "dbmate",
        {"1_a.sql": "-- migrate:up\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n-- migrate:down\nDROP INDEX a_idx;\n"},
        [("1_a.sql", 2, "layout-transaction", "error")],
    ),
    "dbmate SQL outside the blocks": (
        "dbmate",
        {"1_a.sql": "-- header\nSELECT 0;\n-- migrate:up\nSELECT 1;\n"},
        [("1_a.sql", 2, "layout-outside-section", "error")],
    ),
    "goose CONCURRENTLY without NO TRANSACTION": (
        "goose",
        {"1_a.sql": "-- +goose Up\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n"},
        [("1_a.sql", 2, "layout-transaction", "error")],
    ),
    "goose down without final semicolon": (
        "goose",
        {"1_a.sql": "-- +goose Up\nCREATE TABLE a (id int);\n-- +goose Down\nDROP TABLE a\n"},
        [("1_a.sql", 4, "layout-missing-semicolon", "error")],
    ),
    "goose function body without StatementBegin": (
        "goose",
        {"1_a.sql": "-- +goose Up\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n"
                    "    RETURN 1;\nEND;\n$$;\n"},
        [("1_a.sql", 4, "layout-goose-split", "error")],
    ),
    "flyway mixing CONCURRENTLY with other statements": (
        "flyway",
        {"V1__a.sql": "CREATE TABLE a (id int);\n\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n"},
        [("V1__a.sql", 3, "layout-transaction", "error")],
    ),
    "drizzle CONCURRENTLY": (
        "drizzle",
        {"0000_a.sql": "CREATE INDEX CONCURRENTLY a_idx ON a (id);",
         "meta/_journal.json": json.dumps({"entries": [{"idx": 0, "tag": "0000_a"}]})},
        [("0000_a.sql", 1, "layout-transaction", "error")],
    ),
    "sqitch CONCURRENTLY inside the script's BEGIN/COMMIT": (
        "sqitch",
        {"sqitch.plan": "%project=p\na 2024-01-01T00:00:00Z A <a@example.com>\n",
         "deploy/a.sql": "BEGIN;\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\nCOMMIT;\n"},
        [("a.sql", 2, "layout-transaction", "error")],
    ),
    "empty down": (
        "golang-migrate",
        {"1_a.up.sql": "CREATE TABLE a (id int);\n", "1_a.down.sql": "-- nothing to undo\n"},
        [("1_a.down.sql", 1, "layout-empty-down", "info")],
    ),
}


@pytest.mark.parametrize("case", list(QUIRKS))
def test_quirks_are_findings_not_crashes(tmp_path: Path, case: str) -> None:
    layout, files, expected = QUIRKS[case]
    write(tmp_path, files)
    migrations = load_migrations(tmp_path, layout=layout)  # loads: a quirk is not an error
    assert migrations
    findings = layout_findings(tmp_path, layout)
    assert [(f.path.name, f.line, f.rule, f.severity) for f in findings] == expected
    for finding in findings:
        assert finding.message and finding.advice
        assert str(finding).startswith(f"{finding.path}:{finding.line}:{finding.column}: {finding.severity}")


def test_empty_down_makes_the_migration_irreversible(tmp_path: Path) -> None:
    write(tmp_path, QUIRKS["empty down"][1])
    (m,) = load_migrations(tmp_path, layout="golang-migrate")
    assert m.down_path == tmp_path / "1_a.down.sql" and m.down_statements == ()
    assert m.down_empty and not m.reversible
    assert [f.rule for f in m.findings] == ["layout-empty-down"] and m.findings[0].side == "down"


def test_goose_statement_blocks_are_not_split() -> None:
    assert [f for f in layout_findings(DATA / "goose") if f.rule == "layout-goose-split"] == []


def test_harness_lint_shows_layout_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, QUIRKS["dbmate CONCURRENTLY without transaction:false"][1])
    code = main(["lint", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1
    assert f"{tmp_path / '1_a.sql'}:2:1: error layout-transaction:" in out.out
    assert "transaction:false" in out.out
    # The down section is not linted as if it were part of the up migration.
    assert "DROP INDEX" not in out.out


def test_harness_lint_on_a_clean_foreign_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["lint", str(DATA / "diesel"), "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.out
    assert json.loads(out.out) == []
    assert "3 files" not in out.err  # json output has no summary line
