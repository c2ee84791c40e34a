"""The pytest plugin, driven through pytester on throwaway projects."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

USERS = "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);\n"


def _project(pytester: pytest.Pytester, migrations: dict[str, str], plan: str) -> None:
    for name, text in migrations.items():
        path = pytester.path / "migrations" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (pytester.path / "plans").mkdir(exist_ok=True)
    (pytester.path / "plans" / "staging.yaml").write_text(textwrap.dedent(plan))


GOOD = {
    "1_users.sql": USERS,
    "1_users.down.sql": "DROP TABLE IF EXISTS users;",
    "2_nick.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
    "2_nick.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS nick;",
}
PLAN = """\
migrations: migrations/
rehearsal: {provider: embedded}
defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false}
"""


def test_items_have_readable_ids_in_migration_order(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-v")
    result.stdout.fnmatch_lines(
        [
            "plans/staging.yaml::1_users::apply PASSED*",
            "plans/staging.yaml::1_users::idempotent PASSED*",
            "plans/staging.yaml::1_users::rollback PASSED*",
            "plans/staging.yaml::1_users::backward_compatible PASSED*",
            "plans/staging.yaml::2_nick::apply PASSED*",
            "plans/staging.yaml::chain_rollback PASSED*",
            "*11 passed*",
        ]
    )
    assert result.ret == 0
    assert (pytester.path / ".harness" / "receipts" / "staging.json").exists()


def test_failure_shows_statement_and_error_and_dependents_skip(pytester: pytest.Pytester) -> None:
    broken = {**GOOD, "2_nick.sql": "ALTER TABLE users ADD COLUMN nick text;\nALTER TABLE nope ADD COLUMN x int;"}
    broken["3_more.sql"] = "CREATE TABLE IF NOT EXISTS more ();"
    _project(pytester, broken, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-rs")
    result.stdout.fnmatch_lines(
        [
            "*2_nick.sql:2:1: UndefinedTable: relation \"nope\" does not exist*",
            "*statement: ALTER TABLE nope ADD COLUMN x int*",
            "*depends on 2_nick, which failed to apply*",
        ]
    )
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1
    assert outcomes["skipped"] >= 4
    assert "error" not in outcomes
    assert "Traceback" not in result.stdout.str()
    assert not (pytester.path / ".harness" / "receipts" / "staging.json").exists()


def test_k_selection_and_exitfirst(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-k", "2_nick and rollback")
    result.assert_outcomes(passed=1, deselected=10)
    not_idempotent = {**GOOD, "1_users.sql": "CREATE TABLE users (id int);"}
    _project(pytester, not_idempotent, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-x")
    result.assert_outcomes(passed=2, failed=1)  # apply, locks, then idempotent fails


def test_junitxml_has_no_secret(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_PASSWORD", "pw-Do-Not-Leak-42")
    plan = PLAN + textwrap.dedent(
        """\
        target: {dsn: "postgresql://app:${STAGING_PASSWORD}@db.example:5432/app"}
        steps:
          - migration: 1_users
            checks:
              - {name: leak, sql: "SELECT 'pw-Do-Not-Leak-42' = 'x'", expect: true}
        """
    )
    _project(pytester, GOOD, plan)
    result = pytester.runpytest("--migrate-plan", "staging", "--junitxml=report.xml")
    assert result.ret == 1
    xml = (pytester.path / "report.xml").read_text()
    assert "check[leak]" in xml
    assert "pw-Do-Not-Leak-42" not in xml
    assert "pw-Do-Not-Leak-42" not in result.stdout.str()


def test_bad_plan_is_a_clear_error_naming_file_and_line(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN + "defaults: {idempotnet: true}\n")
    result = pytester.runpytest("--migrate-plan", "staging")
    assert result.ret != 0
    out = result.stdout.str() + result.stderr.str()
    assert "staging.yaml:4" in out
    assert "idempotnet" in out
    assert "Traceback" not in out


def test_missing_plan_exits_2_listing_plans(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest_subprocess("--migrate-plan", "prod")
    assert result.ret == 2
    assert "staging" in result.stdout.str() + result.stderr.str()


def test_plan_alone_unless_paths_are_given(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN)
    pytester.makepyfile(test_app="def test_app():\n    pass\n")
    pytester.runpytest("--migrate-plan", "staging").assert_outcomes(passed=11)
    # The second run goes on from the first one's cache (on by default): the plan's items are skipped as cached
    # (chain_rollback too: no new down to run from the state restored); the app's test runs.
    pytester.runpytest("--migrate-plan", "staging", "test_app.py").assert_outcomes(passed=1, skipped=11)
    pytester.runpytest("--migrate-plan", "staging", "test_app.py", "--migrate-cache", "false").assert_outcomes(passed=12)


def test_xdist_keeps_a_plan_on_one_worker(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-n", "2", "-v")
    result.assert_outcomes(passed=11)
    workers = {line.split("[gw", 1)[1][0] for line in result.outlines if "PASSED" in line and "[gw" in line}
    assert len(workers) == 1, result.outlines  # the plan's items share one working database: one worker


def test_harness_rehearse_cli_json(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from harness.cli import main

    _project(pytester, GOOD, PLAN)
    code = main(["rehearse", str(pytester.path / "plans" / "staging.yaml"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["passed"] == 11 and report["failed"] == 0
    assert report["items"][0]["id"] == "staging::1_users::apply"
    assert report["receipt"]


def test_notes_of_passed_items_show_under_them_and_reach_junitxml(pytester: pytest.Pytester) -> None:
    import xml.etree.ElementTree as ET

    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging", "-v", "-rP", "--junitxml=report.xml")
    assert result.ret == 0
    lines = result.stdout.lines
    item = next(i for i, line in enumerate(lines) if line.startswith("plans/staging.yaml::1_users::idempotent PASSED"))
    assert lines[item + 1] == "    second apply succeeded and changed nothing"
    assert lines[item + 2].startswith("plans/staging.yaml::1_users::rollback PASSED")
    assert lines[item + 3].startswith("    up → down → up: down restores the previous schema")
    result.stdout.fnmatch_lines(["*PASSES*", "*1_users::idempotent*", "*Captured note call*", "second apply*"])
    notes = [
        prop.get("value")
        for case in ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "note"
    ]
    assert "second apply succeeded and changed nothing" in notes
    assert len(notes) == 11, notes  # every item of the plan passed with a note


def test_notes_stay_out_of_the_default_output(pytester: pytest.Pytester) -> None:
    _project(pytester, GOOD, PLAN)
    result = pytester.runpytest("--migrate-plan", "staging")
    assert result.ret == 0
    assert "second apply succeeded" not in result.stdout.str()


def test_harness_rehearse_cli_text_shows_notes(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    _project(pytester, GOOD, PLAN)
    code = main(["rehearse", str(pytester.path / "plans" / "staging.yaml")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    item = lines.index("PASS 1_users::idempotent")
    assert lines[item + 1] == "     second apply succeeded and changed nothing"
    assert lines[item + 2] == "PASS 1_users::rollback"
    assert lines[item + 3].startswith("     up → down → up: down restores")


def test_migrate_apply_runs_last_and_only_when_green(
    pytester: pytest.Pytester, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv("TARGET_URL", db_dsn)
    _project(pytester, GOOD, PLAN + 'target: {dsn: "${TARGET_URL}"}\n')
    result = pytester.runpytest("--migrate-plan", "staging", "--migrate-apply", "-v")
    result.stdout.fnmatch_lines(["*plans/staging.yaml::apply_target PASSED*"])
    assert result.ret == 0
    with psycopg.connect(db_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM harness.schema_migrations ORDER BY version")]
        assert versions == ["1", "2"]
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nick'").fetchone()[0] == 1


def test_migrate_apply_skipped_when_rehearsal_fails(
    pytester: pytest.Pytester, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv("TARGET_URL", db_dsn)
    broken = {**GOOD, "2_nick.sql": "ALTER TABLE users ADD COLUMN nick text;"}  # not idempotent
    _project(pytester, broken, PLAN + 'target: {dsn: "${TARGET_URL}"}\n')
    result = pytester.runpytest("--migrate-plan", "staging", "--migrate-apply", "-rs")
    result.stdout.fnmatch_lines(["*not applying: 1 rehearsal item(s) did not pass*"])
    assert result.ret == 1
    with psycopg.connect(db_dsn) as conn:
        exists = conn.execute("SELECT to_regclass('harness.schema_migrations')").fetchone()[0]
    assert exists is None, "nothing may touch the target when the rehearsal is red"
