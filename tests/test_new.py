"""``harness new``: a new migration's file names, templates and refusals (no database needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from harness import cli
from harness.authoring import LAYOUTS, NativeLayout, create_migration, layout_for, plan_versions
from harness.errors import ConfigError
from harness.lint import lint_files
from harness.sources import load_migrations

NOW = dt.datetime(2026, 11, 1, 12, 30, 5, tzinfo=dt.timezone.utc)


def test_creates_up_and_down_named_by_utc_timestamp(tmp_path: Path) -> None:
    local = NOW.astimezone(dt.timezone(dt.timedelta(hours=5)))  # any time zone: the version is UTC
    created = create_migration(tmp_path, "add_orders", now=local)
    assert created.id == "20261101123005_add_orders"
    assert created.up == tmp_path / "20261101123005_add_orders.sql"
    assert created.down == tmp_path / "20261101123005_add_orders.down.sql"
    up, down = created.up.read_text(), created.down.read_text()
    assert up.startswith("-- 20261101123005_add_orders: add orders\n-- Created by `harness new` on 2026-11-01 12:30:05 UTC")
    assert down.startswith("-- 20261101123005_add_orders.down: undo 20261101123005_add_orders")
    for pattern in [
        "--     CREATE TABLE IF NOT EXISTS public.orders (",
        "--     ALTER TABLE public.orders ADD COLUMN IF NOT EXISTS note text;",
        "--         IF to_regtype('public.order_status') IS NULL THEN",
        "--     ALTER TYPE public.order_status ADD VALUE IF NOT EXISTS 'shipped';",
        "--         FOREIGN KEY (user_id) REFERENCES public.users (id) NOT VALID;",
        "--     ALTER TABLE public.orders VALIDATE CONSTRAINT orders_user_fk;",
        "--     CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_id_idx ON public.orders (user_id);",
    ]:
        assert pattern in up, pattern
    assert all(line.startswith("--") or not line for line in up.splitlines())  # examples only, nothing runs


def test_the_commented_examples_are_valid_idempotent_sql(tmp_path: Path) -> None:
    created = create_migration(tmp_path, "example", now=NOW)
    examples = [line[7:] for line in created.up.read_text().splitlines() if line.startswith("--     ")]
    created.up.write_text("\n".join(examples) + "\n")
    down = [line[7:].split("   --")[0] for line in created.down.read_text().splitlines() if line.startswith("--     ")]
    created.down.write_text("\n".join(down) + "\n")
    (migration,) = load_migrations(tmp_path)  # PostgreSQL's parser accepts them
    assert len(migration.statements) == 7 and migration.down_statements
    assert [f for f in lint_files([created.up]) if f.rule == "not-rerunnable"] == []


@pytest.mark.parametrize("name", ["AddOrders", "add-orders", "add orders", "", "ßtraße", "x" * 101])
def test_refuses_a_name_that_is_not_lower_snake_case(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="migration name"):
        create_migration(tmp_path, name, now=NOW)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_version_that_collides_with_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "20261101123005_other.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match=r"version 20261101123005 is already used by 20261101123005_other.sql"):
        create_migration(tmp_path, "add_orders", now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261101123005_other.sql"]


def test_refuses_a_version_older_than_the_newest_migration(tmp_path: Path) -> None:
    (tmp_path / "20261101123006_from_the_future.sql").write_text("SELECT 1;\n")
    (tmp_path / "0001_old.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match=r"sorts before the newest existing migration 20261101123006_from_the_future"):
        create_migration(tmp_path, "add_orders", now=NOW)


def test_older_sequential_versions_do_not_block_a_timestamp(tmp_path: Path) -> None:
    (tmp_path / "0001_old.sql").write_text("SELECT 1;\n")
    (tmp_path / "0001_old.down.sql").write_text("SELECT 1;\n")
    assert create_migration(tmp_path, "next_one", now=NOW).version == "20261101123005"


def test_consecutive_versions_for_a_follow_up_migration(tmp_path: Path) -> None:
    layout = NativeLayout()
    assert plan_versions(tmp_path, layout, 2, now=NOW) == ["20261101123005", "20261101123006"]
    assert layout.next_version("20261231235959") == "20270101000000"
    assert layout.next_version("0009") == "0010"


def test_layouts_plug_in_by_name_and_auto_detects(tmp_path: Path) -> None:
    assert layout_for("native") is LAYOUTS["native"]
    assert isinstance(layout_for("supabase"), NativeLayout)
    assert isinstance(layout_for("auto", tmp_path), NativeLayout)
    with pytest.raises(ConfigError, match="creating migrations in the 'flyway' layout is not supported yet"):
        layout_for("flyway")
    (tmp_path / "V1__init.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match=r"'flyway' layout \(detected in .*\) is not supported yet"):
        create_migration(tmp_path, "next", now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V1__init.sql"]


def test_cli_new_uses_the_plan_and_exits_2_on_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "db" / "migrations").mkdir(parents=True)
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.yaml").write_text("migrations: db/migrations/\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new", "add_orders"]) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "db" / "migrations").iterdir())
    assert len(files) == 2 and files[0].endswith("_add_orders.down.sql") and files[1].endswith("_add_orders.sql")
    assert f"created db/migrations/{files[1]}" in out
    assert cli.main(["new", "Add-Orders", "--plan", "p"]) == 2
    assert "invalid migration name 'Add-Orders'" in capsys.readouterr().err
    future = tmp_path / "db" / "migrations" / "29991231000000_later.sql"
    future.write_text("SELECT 1;\n")
    assert cli.main(["new", "again"]) == 2
    assert "sorts before the newest existing migration 29991231000000_later.sql" in capsys.readouterr().err


def test_cli_new_without_a_plan_uses_migrations_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new", "first"]) == 2
    assert "migrations folder migrations does not exist" in capsys.readouterr().err
    (tmp_path / "migrations").mkdir()
    assert cli.main(["new", "first"]) == 0
    assert len(list((tmp_path / "migrations").glob("*_first.sql"))) == 1
