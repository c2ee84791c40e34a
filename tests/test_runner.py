"""The Python API (``harness.runner``): runners end to end against real targets, overrides, status.

The runners are the objects ``harness apply``/``rehearse``/``status`` use
underneath, so these tests also pin the CLI's behaviour where it matters:
``harness rehearse`` and ``rehearse_plan`` report the same items.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

import harness
from harness import DevelopmentMigrationRunner, ProductionMigrationRunner, rehearse_plan
from harness.apply import ApplyResult
from harness.errors import ConfigError
from harness.hooks import HookContext
from harness.plan import load_plan
from harness.runner import RehearsalResult
from tests.fix_db import execute, history_versions, query, table_exists
from tests.projects import cli, write_project

SEED = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 20) g;
"""

MIGRATIONS = {
    "1_users.sql": "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);",
    "1_users.down.sql": "DROP TABLE IF EXISTS users;",
    "2_orders.sql": """
        CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));
        ALTER TABLE customers ADD COLUMN IF NOT EXISTS vip boolean NOT NULL DEFAULT false;
    """,
    "2_orders.down.sql": "DROP TABLE IF EXISTS orders; ALTER TABLE customers DROP COLUMN IF EXISTS vip;",
}

PRODUCTION = """
health:
  checks:
    - {name: customers kept, sql: "SELECT count(*) FROM customers", expect: 20}
backup: {mode: none}
"""


@pytest.fixture
def target(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A seeded target, also exported as TARGET_URL for the plans' ``target: {dsn: ${TARGET_URL}}``."""
    execute(db_dsn, SEED)
    monkeypatch.setenv("TARGET_URL", db_dsn)
    return db_dsn


def test_public_api_is_exported_lazily() -> None:
    for name in ("ProductionMigrationRunner", "DevelopmentMigrationRunner", "rehearse_plan"):
        assert name in harness.__all__ and getattr(harness, name) is not None
    assert harness.ProductionMigrationRunner.mode == "production"


def test_production_runner_rehearse_then_run_with_backup_and_hooks(tmp_path: Path, target: str) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, PRODUCTION, mode="production", seed=SEED)
    seen: list[tuple[str, str | None]] = []

    def remember(ctx: HookContext) -> None:
        seen.append((ctx.phase, ctx.migration))

    runner = ProductionMigrationRunner(
        plan=str(plan_path),
        backup_enabled=True,  # the plan says backup.mode: none
        rollback_on_failure=True,
        max_retries=2,
        retry_delay=0.1,
        hooks={event: [remember] for event in ("pre_run", "pre_migration", "post_migration", "post_run")},
    )
    assert runner.plan.backup.mode == "full" and runner.plan.guards.max_retries == 2

    # Rehearse: the same engine as `harness rehearse`; green, so it writes the receipt run() checks.
    rehearsal = runner.rehearse()
    assert isinstance(rehearsal, RehearsalResult) and rehearsal.ok and rehearsal.failed == 0
    assert rehearsal.receipt == tmp_path / ".harness" / "receipts" / "p.json" and rehearsal.receipt.is_file()
    assert [r.id for r in rehearsal.items] == ["p::1_users::apply", "p::1_users::locks", "p::2_orders::apply",
                                               "p::2_orders::locks"]
    assert all(r.status == "passed" for r in rehearsal.items) and rehearsal.to_dict()["passed"] == 4

    status = runner.status()
    assert [m.id for m in status.pending] == ["1_users", "2_orders"] and not status.applied

    result = runner.run()
    assert isinstance(result, ApplyResult) and result.ok and result.mode == "production"
    assert result.applied == ["1_users", "2_orders"]
    assert result.verification.startswith("passed") and result.health.startswith("passed")
    assert result.backup is not None and result.backup.is_file()
    assert oct(result.backup.stat().st_mode & 0o777) == "0o600"
    assert {"receipt", "drift", "backup", "migration:1_users", "total"} <= set(result.timings)
    assert history_versions(target) == ["1", "2"]
    assert query(target, "SELECT DISTINCT mode FROM harness.schema_migrations") == [("production",)]
    assert seen == [("pre_run", None), ("pre_migration", "1_users"), ("post_migration", "1_users"),
                    ("pre_migration", "2_orders"), ("post_migration", "2_orders"), ("post_run", None)]

    status = runner.status()
    assert [m.id for _, m in status.applied if m] == ["1_users", "2_orders"] and not status.pending and status.ok


def test_backup_enabled_false_takes_no_backup(tmp_path: Path, target: str) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, "backup: {mode: full}\n", mode="production", seed=SEED)
    runner = ProductionMigrationRunner(str(plan_path), backup_enabled=False)
    assert runner.plan.backup.mode == "none"
    assert runner.rehearse().receipt is not None
    out = io.StringIO()
    runner.out = out
    result = runner.run()
    assert result.ok and result.backup is None and not (tmp_path / "backups").exists()
    assert any("no backup is taken" in w for w in result.warnings) and "WARNING: no backup" in out.getvalue()


def test_development_runner_with_a_target_override(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);", "2_b.sql": "CREATE TABLE b (id int);"},
                              target=False)
    calls: list[HookContext] = []
    runner = DevelopmentMigrationRunner(load_plan(plan_path), target=db_dsn, hooks={"post_run": calls.append})
    assert runner.status().pending and not runner.status().applied
    result = runner.run()
    assert result.ok and result.applied == ["1_a", "2_b"] and result.mode == "development" and result.backup is None
    assert table_exists(db_dsn, "public.b")
    assert query(db_dsn, "SELECT DISTINCT mode FROM harness.schema_migrations") == [("development",)]
    assert [c.phase for c in calls] == ["post_run"] and calls[0].applied == ("1_a", "2_b")
    assert "dbname" not in repr(runner)  # the target is never shown


def test_dry_run_and_force(tmp_path: Path, target: str) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, PRODUCTION, mode="production", seed=SEED)
    result = ProductionMigrationRunner(str(plan_path), dry_run=True).run()
    assert result.dry_run and not result.ok  # no receipt: apply would refuse
    assert any("WOULD REFUSE" in line for line in result.dry_run_plan)
    forced = ProductionMigrationRunner(str(plan_path), force=True, backup_enabled=False).run()
    assert forced.ok and forced.forced and forced.applied == ["1_users", "2_orders"]


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"backup_enabled": False}, lambda p: p.backup.mode == "none"),
        ({"backup_enabled": True}, lambda p: p.backup.mode == "touched"),  # the plan's own mode is kept
        ({"rollback_on_failure": False}, lambda p: p.health.on_failure == "stop"),
        ({"rollback_on_failure": True}, lambda p: p.health.on_failure == "rollback"),
        ({"max_retries": 0, "retry_delay": 1.5}, lambda p: (p.guards.max_retries, p.guards.retry_delay) == (0, 1.5)),
        # Durations as a plan file writes them, read by the plan format.
        ({"retry_delay": "250ms"}, lambda p: p.guards.retry_delay == 0.25),
        ({"health_check_url": "https://example.com/api/health"},
         lambda p: p.health.url == "https://example.com/api/health"),
        ({}, lambda p: p.backup.mode == "touched" and p.health.on_failure == "rollback"),
    ],
)
def test_overrides_replace_the_frozen_plan_settings(tmp_path: Path, overrides: dict, check) -> None:  # type: ignore[no-untyped-def,type-arg]
    plan_path = write_project(tmp_path, MIGRATIONS, "backup: {mode: touched}\n", target=False)
    plan = load_plan(plan_path)
    runner = DevelopmentMigrationRunner(plan, **overrides)
    assert check(runner.plan)
    assert plan.backup.mode == "touched" and plan.health.url is None  # the loaded plan is untouched
    assert runner.plan.sha256 == plan.sha256  # overrides change apply settings, not what the receipt proves


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # The plan format validates the values, as if the plan file held them.
        ({"max_retries": -1}, "guards.max_retries: expected a whole number >= 0"),
        ({"max_retries": True}, "guards.max_retries: expected a whole number >= 0"),
        ({"retry_delay": "soon"}, "guards.retry_delay: expected a duration"),
        ({"retry_delay": -1}, "guards.retry_delay: expected a duration"),
        ({"health_check_url": "ftp://example.com"}, "health.url: expected an http(s) URL"),
        ({"backup_enabled": "yes"}, "backup_enabled: expected True or False"),
        ({"hooks": {"pre_deploy": [print]}}, "unknown event 'pre_deploy'"),
        ({"hooks": {"pre_run": ["echo hi"]}}, "is not callable"),
    ],
)
def test_bad_overrides_are_usage_errors(tmp_path: Path, overrides: dict, fragment: str) -> None:  # type: ignore[type-arg]
    plan_path = write_project(tmp_path, MIGRATIONS, target=False)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        DevelopmentMigrationRunner(str(plan_path), **overrides)
    assert info.value.exit_code == 2


def test_production_status_needs_a_target(tmp_path: Path) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, target=False)
    with pytest.raises(ConfigError, match="production mode needs a target"):
        ProductionMigrationRunner(str(plan_path)).status()


def test_cli_rehearse_is_a_wrapper_over_rehearse_plan(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, seed=SEED)
    direct = rehearse_plan(load_plan(plan_path), select="orders")
    assert direct.receipt is None  # a selection never writes a receipt
    code, out, _ = cli(["rehearse", str(plan_path), "-k", "orders", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and [i["id"] for i in report["items"]] == [r.id for r in direct.items]
    assert set(report) == set(direct.to_dict())


# ---------------------------------------------------------------------- status and logging (harness status)


def test_status_of_a_plan_without_target_and_no_dev_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, target=False)
    code, out, err = cli(["status", str(plan_path)], capsys)
    assert code == 2 and "no target and no dev-db running: harness dev-db start" in err


def test_status_of_a_plan_without_target_uses_the_running_dev_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.devdb import DevDB

    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);"}, target=False)
    dev = DevDB(tmp_path)
    try:
        dev.start()
        code, out, _ = cli(["status", str(plan_path)], capsys)
        assert code == 0 and "the plan has no target: this is the development database of" in out
        assert "0 applied, 1 pending" in out
        assert DevelopmentMigrationRunner(str(plan_path)).run().applied == ["1_a"]
        code, out, _ = cli(["status", str(plan_path), "--json"], capsys)
        data = json.loads(out)
        assert code == 0 and data["counts"]["applied"] == 1 and "development database" in data["note"]
    finally:
        dev.destroy()


def test_main_installs_its_log_handler_once(db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    plan_path = write_project(tmp_path, {"1_a.sql": "CREATE TABLE a (id int);"}, target=False)
    for _ in range(3):
        assert main(["status", str(plan_path), "--dsn", db_dsn]) == 0
    # By name: a plugin test's in-process pytest run may have imported harness.cli a second time.
    installed = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
    assert len(installed) == 1
    capsys.readouterr()
    logging.getLogger("harness.test").warning("logged once")
    assert capsys.readouterr().err.count("logged once") == 1


def test_runners_take_a_plan_name_like_the_cli(
    tmp_path: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path, MIGRATIONS, name="dev")
    write_project(tmp_path, MIGRATIONS, PRODUCTION, mode="production", name="prod")
    execute(db_dsn, SEED)
    monkeypatch.setenv("TARGET_URL", db_dsn)
    monkeypatch.chdir(tmp_path)
    dev = DevelopmentMigrationRunner("dev")
    assert dev.plan.name == "dev" and dev.plan.path == (tmp_path / "plans" / "dev.yaml").absolute()
    assert dev.run().applied == ["1_users", "2_orders"]
    prod = ProductionMigrationRunner("prod")
    assert prod.plan.name == "prod" and prod.plan.path == load_plan("prod").path
    with pytest.raises(ConfigError, match="no plan named 'staging'.*plans that exist: dev, prod"):
        ProductionMigrationRunner("staging")
