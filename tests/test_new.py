"""``harness new``: a new migration's file names, templates and refusals (no database needed)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import types
from pathlib import Path

import pytest

from harness import authoring, cli, sources
from harness.authoring import LAYOUTS, NativeLayout, create_migration, layout_for, plan_versions
from harness.errors import ConfigError, SourceError
from harness.layouts import atlas_sum_text, read_folder
from harness.plan import load_plan
from harness.lint import lint_files
from harness.sources import load_migrations, load_plan_migrations

NOW = dt.datetime(2026, 11, 1, 12, 30, 5, tzinfo=dt.timezone.utc)
LAYOUT_DATA = Path(__file__).parent / "data" / "layouts"
FOREIGN = ["golang-migrate", "diesel", "dbmate", "goose", "flyway", "drizzle", "sqitch"]


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
    # Every layout the harness reads can be written, but Alembic's: its revisions are Python that `alembic
    # revision` renders from the project's own script.py.mako and revision graph (tests/test_alembic_layout.py).
    assert set(LAYOUTS) == set(sources.LAYOUTS) - {"auto", "alembic"}
    with pytest.raises(ConfigError, match="creating migrations in the 'liquibase' layout is not supported"):
        layout_for("liquibase")
    (tmp_path / "V1__init.sql").write_text("SELECT 1;\n")
    assert layout_for("auto", tmp_path) is LAYOUTS["flyway"]


@pytest.mark.parametrize("layout", FOREIGN)
def test_generate_still_refuses_foreign_layouts(layout: str) -> None:
    with pytest.raises(ConfigError, match=f"harness generate writes native migrations only, not the '{layout}'"):
        LAYOUTS[layout].file_names("1", "x")


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


# --------------------------------------------------------------------------
# `new` in each layout: started from the sample folders of tests/data/layouts/

#: layout -> (id of the new migration, files created, text each must contain)
NEW_IN = {
    "native": ("20261101123005_add_things", {
        "20261101123005_add_things.sql": ["-- 20261101123005_add_things: add things"],
        "20261101123005_add_things.down.sql": ["-- 20261101123005_add_things.down: undo"],
    }),
    "golang-migrate": ("000011_add_things", {  # sequential folder (000001 ... 000010): the next number, same width
        "000011_add_things.up.sql": ["-- 000011_add_things: add things", "undo it in 000011_add_things.down.sql",
                                     "golang-migrate runs a file of one statement outside a transaction"],
        "000011_add_things.down.sql": ["-- 000011_add_things.down: undo 000011_add_things (add things)"],
    }),
    "diesel": ("2026-11-01-123005_add_things", {
        "2026-11-01-123005_add_things/up.sql": ["undo it in down.sql", "run_in_transaction = false"],
        "2026-11-01-123005_add_things/down.sql": ["-- 2026-11-01-123005_add_things.down: undo"],
    }),
    "dbmate": ("20261101123005_add_things", {
        "20261101123005_add_things.sql": ["-- migrate:up\n-- 20261101123005_add_things: add things\n",
                                          "\n-- migrate:down\n-- 20261101123005_add_things.down: undo",
                                          "`-- migrate:up transaction:false`", "leave this section empty"],
    }),
    "goose": ("00003_add_things", {
        "00003_add_things.sql": ["-- +goose Up\n-- 00003_add_things: add things\n",
                                 "--     -- +goose StatementBegin\n--     DO $$\n",
                                 "--     $$;\n--     -- +goose StatementEnd\n",
                                 "\n-- +goose Down\n-- 00003_add_things.down: undo", "`-- +goose NO TRANSACTION`"],
    }),
    "flyway": ("3_add_things", {  # V1, V1.1, V2: the next integer
        "V3__add_things.sql": ["-- 3_add_things: add things", "undo it in U3__add_things.sql"],
        "U3__add_things.sql": ["-- 3_add_things.down: undo 3_add_things"],
    }),
    "drizzle": ("0002_add_things", {
        "0002_add_things.sql": ["-- Custom SQL migration file, put your code below! --\n-- 0002_add_things: add things",
                                "drizzle has no down migrations", "--> statement-breakpoint"],
    }),
    "prisma": ("20261101123005_add_things", {
        "20261101123005_add_things/migration.sql": ["-- 20261101123005_add_things: add things",
                                                    "Prisma has no down migrations"],
    }),
    "sqlx": ("20261101123005_add_things", {
        "20261101123005_add_things.up.sql": ["undo it in 20261101123005_add_things.down.sql", "-- no-transaction"],
        "20261101123005_add_things.down.sql": ["-- 20261101123005_add_things.down: undo"],
    }),
    "atlas": ("20261101123005_add_things", {
        "20261101123005_add_things.sql": ["-- 20261101123005_add_things: add things", "-- atlas:txmode none"],
    }),
    "node-pg-migrate": ("1793536205000_add_things", {
        "1793536205000_add_things.sql": ["-- Up Migration\n-- 1793536205000_add_things: add things\n",
                                         "\n-- Down Migration\n-- 1793536205000_add_things.down: undo",
                                         "`-- no transaction`", "delete this section"],
    }),
    "sqitch": ("add_things", {
        "deploy/add_things.sql": ["-- Deploy harness_sample:add_things to pg\n\n-- add_things: add things\n",
                                  "undo it in revert/add_things.sql", "\nBEGIN;\n\n-- XXX Add DDLs here.\n\nCOMMIT;\n"],
        "revert/add_things.sql": ["-- Revert harness_sample:add_things from pg\n\n-- add_things.down: undo",
                                  "\nBEGIN;\n\n-- XXX Add DDLs here.\n\nCOMMIT;\n"],
        "verify/add_things.sql": ["-- Verify harness_sample:add_things on pg\n\nBEGIN;\n\n"
                                  "-- XXX Add verifications here.\n\nROLLBACK;\n"],
    }),
}
UP_SQL = "CREATE TABLE IF NOT EXISTS things (id bigint);\n"
DOWN_SQL = "DROP TABLE IF EXISTS things;\n"


class _Frozen(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _Frozen:  # type: ignore[override]
        return cls.fromtimestamp(NOW.timestamp(), tz)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness new` through the CLI, at NOW, with a Sqitch planner from the environment."""
    clock = types.SimpleNamespace(datetime=_Frozen, timezone=dt.timezone, timedelta=dt.timedelta)
    monkeypatch.setattr(authoring, "_dt", clock)
    monkeypatch.setenv("SQITCH_FULLNAME", "Test Planner")
    monkeypatch.setenv("SQITCH_EMAIL", "planner@example.com")


def _sample(tmp_path: Path, layout: str) -> Path:
    folder = tmp_path / "db" / layout
    shutil.copytree(LAYOUT_DATA / layout, folder)
    return folder


def _plan(tmp_path: Path, folder: Path, layout: str) -> Path:
    path = tmp_path / "plans" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"migrations: {folder}\nlayout: {layout}\n")
    return path


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_sql(layout: str, folder: Path, files: list[str]) -> None:
    """Do what the author does next: write the up and down SQL into the new files."""
    first = folder / files[0]
    text = first.read_text()
    if layout in ("dbmate", "goose", "node-pg-migrate"):
        marker = {"dbmate": "-- migrate:down", "goose": "-- +goose Down", "node-pg-migrate": "-- Down Migration"}[layout]
        first.write_text(text.replace(f"\n{marker}\n", f"\n{UP_SQL}\n{marker}\n") + DOWN_SQL)
    elif layout == "atlas":  # then `atlas migrate hash`, as Atlas users do after editing a file
        first.write_text(text + UP_SQL)
        (folder / "atlas.sum").write_text(atlas_sum_text({p.name: p.read_bytes() for p in folder.glob("*.sql")}))
    elif layout == "sqitch":
        first.write_text(text.replace("-- XXX Add DDLs here.", UP_SQL))
        revert = folder / files[1]
        revert.write_text(revert.read_text().replace("-- XXX Add DDLs here.", DOWN_SQL))
    else:
        first.write_text(text + UP_SQL)
        if len(files) > 1:
            (folder / files[1]).write_text((folder / files[1]).read_text() + DOWN_SQL)


@pytest.mark.parametrize("named", [True, False], ids=["named", "auto"])
@pytest.mark.parametrize("layout", sorted(NEW_IN))
def test_new_in_each_layout(tmp_path: Path, frozen: None, layout: str, named: bool) -> None:
    folder = _sample(tmp_path, layout)
    before = _tree(folder)
    plan_path = _plan(tmp_path, folder, layout if named else "auto")
    assert cli.main(["new", "add_things", "--plan", str(plan_path)]) == 0
    new_id, files = NEW_IN[layout]
    after = _tree(folder)
    assert sorted(set(after) - set(before)) == sorted(files)
    for name, markers in files.items():
        for marker in markers:
            assert marker in after[name], (name, marker)
    # The up holds only comments (and Sqitch's BEGIN/COMMIT): a no-op migration until the SQL is written.
    (placeholder,) = [m for m in read_folder(folder, layout)[0] if m.id == new_id]
    assert placeholder.statements == () and placeholder.error is None
    _write_sql(layout, folder, list(files))
    migrations, findings = read_folder(folder, layout)
    assert findings == []  # nothing the layout's own tool would trip over
    sample = [m.id for m in read_folder(LAYOUT_DATA / layout, layout)[0]]
    versioned = [m.id for m in migrations if not m.repeatable]  # Flyway repeatables sort after every version
    assert versioned[-1] == new_id and [m.id for m in migrations if m.id != new_id] == sample
    (new,) = [m for m in migrations if m.id == new_id]
    assert new.path == folder / list(files)[0]
    assert [s.sql.rstrip(";") for s in new.statements] == [UP_SQL.strip().rstrip(";")]
    if layout not in ("drizzle", "prisma", "atlas"):  # these tools have no down migrations
        assert new.down_statements and "DROP TABLE IF EXISTS things" in new.down_statements[0].sql
    assert [m.id for m in load_plan_migrations(load_plan(plan_path))] == [m.id for m in migrations]


def test_new_appends_drizzle_journal_entry_in_drizzles_format(tmp_path: Path, frozen: None) -> None:
    folder = _sample(tmp_path, "drizzle")
    original = json.loads((folder / "meta" / "_journal.json").read_text())
    created = create_migration(folder, "add_things", layout=LAYOUTS["drizzle"], now=NOW)
    assert created.updated == (folder / "meta" / "_journal.json",)
    text = (folder / "meta" / "_journal.json").read_text()
    journal = json.loads(text)
    assert journal["entries"][:2] == original["entries"] and journal["version"] == "7"
    assert list(journal["entries"][2].items()) == [
        ("idx", 2), ("version", "7"), ("when", int(NOW.timestamp() * 1000)), ("tag", "0002_add_things"),
        ("breakpoints", True),
    ]
    assert text.startswith('{\n  "version": "7",\n  "dialect": "postgresql",\n  "entries": [\n    {\n      "idx": 0,')


def test_new_appends_a_sqitch_change_line(tmp_path: Path, frozen: None) -> None:
    folder = _sample(tmp_path, "sqitch")
    plan = (folder / "sqitch.plan").read_text()
    created = create_migration(folder, "add_things", layout=LAYOUTS["sqitch"], now=NOW)
    assert created.id == "add_things" and created.updated == (folder / "sqitch.plan",)
    assert (folder / "sqitch.plan").read_text() == (
        plan + "add_things 2026-11-01T12:30:05Z Test Planner <planner@example.com> # Add things.\n"
    )


@pytest.mark.parametrize(
    ("layout", "files", "expected"),
    [
        ("flyway", {}, "V20261101123005__x.sql"),  # an empty folder: a timestamp
        ("flyway", {"V20240101000000__a.sql": "SELECT 1;\n"}, "V20261101123005__x.sql"),
        ("flyway", {"V7__a.sql": "SELECT 1;\n", "sub/V7.3__b.sql": "SELECT 1;\n"}, "V8__x.sql"),
        ("golang-migrate", {"1_a.up.sql": "SELECT 1;\n"}, "2_x.up.sql"),
        ("golang-migrate", {"20240101000000_a.up.sql": "SELECT 1;\n"}, "20261101123005_x.up.sql"),
        ("goose", {"009_a.sql": "-- +goose Up\nSELECT 1;\n"}, "010_x.sql"),
        ("dbmate", {"1_a.sql": "-- migrate:up\nSELECT 1;\n"}, "20261101123005_x.sql"),  # dbmate: timestamps only
        ("native", {"1_a.sql": "SELECT 1;\n"}, "20261101123005_x.sql"),
    ],
)
def test_sequential_folders_get_the_next_number(tmp_path: Path, layout: str, files: dict[str, str],
                                                expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    created = create_migration(tmp_path, "x", layout=LAYOUTS[layout], now=NOW)
    assert created.up.name == expected


#: layout -> (files that make the new version collide, files that make it sort before the newest, messages)
REFUSALS = {
    "golang-migrate": ({"20261101123005_other.up.sql": "SELECT 1;\n"}, {"29991231000000_later.up.sql": "SELECT 1;\n"}),
    "diesel": ({"2026-11-01-123005_other/up.sql": "SELECT 1;\n"}, {"2999-12-31-000000_later/up.sql": "SELECT 1;\n"}),
    "dbmate": ({"20261101123005_other.sql": "-- migrate:up\nSELECT 1;\n"},
               {"29991231000000_later.sql": "-- migrate:up\nSELECT 1;\n"}),
    "goose": ({"20261101123005_other.sql": "-- +goose Up\nSELECT 1;\n"},
              {"29991231000000_later.sql": "-- +goose Up\nSELECT 1;\n"}),
    "flyway": ({"V20261101123005__other.sql": "SELECT 1;\n"}, {"V29991231000000__later.sql": "SELECT 1;\n"}),
    "drizzle": ({"0002_stray.sql": "SELECT 1;\n"}, {}),
    "sqitch": ({}, {}),
}


def _refused(folder: Path, layout: str, name: str, match: str) -> None:
    before = _tree(folder)
    with pytest.raises(ConfigError, match=match):
        create_migration(folder, name, layout=LAYOUTS[layout], now=NOW)
    assert _tree(folder) == before  # nothing written, nothing appended


@pytest.mark.parametrize("layout", FOREIGN)
def test_refuses_a_bad_name_in_every_layout(tmp_path: Path, layout: str) -> None:
    _refused(_sample(tmp_path, layout), layout, "Add-Things", "invalid migration name 'Add-Things'")


@pytest.mark.parametrize("layout", FOREIGN)
def test_refuses_a_colliding_version_in_every_layout(tmp_path: Path, layout: str) -> None:
    folder = _sample(tmp_path, layout)
    if layout == "sqitch":  # the version is the change's name
        _refused(folder, layout, "users", r"change 'users' is already in .*sqitch.plan \(line 4\).*sqitch rework")
        return
    for name, text in REFUSALS[layout][0].items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    clash = next(iter(REFUSALS[layout][0])).split("/")[0]
    _refused(folder, layout, "add_things", rf"version \S+ is already used by {clash}")


@pytest.mark.parametrize("layout", FOREIGN)
def test_refuses_a_version_before_the_newest_in_every_layout(tmp_path: Path, layout: str) -> None:
    folder = _sample(tmp_path, layout)
    if layout == "drizzle":  # drizzle skips a migration whose `when` is not after the last applied one's
        journal_path = folder / "meta" / "_journal.json"
        journal = json.loads(journal_path.read_text())
        journal["entries"][-1]["when"] = 32503680000000  # 3000-01-01
        journal_path.write_text(json.dumps(journal, indent=2))
        _refused(folder, layout, "add_things", r"is not after 0001_add_name's \(32503680000000\).*clock behind")
        return
    if layout == "sqitch":
        with (folder / "sqitch.plan").open("a") as plan:
            plan.write("later 2999-12-31T00:00:00Z A <a@example.com>\n")
        _refused(folder, layout, "add_things", r"before the newest change's planned time \(2999-12-31T00:00:00Z\)")
        return
    for name, text in REFUSALS[layout][1].items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    later = next(iter(REFUSALS[layout][1])).split("/")[0]
    _refused(folder, layout, "add_things", f"sorts before the newest existing migration {later}")


def test_an_existing_file_is_never_overwritten_and_nothing_is_appended(tmp_path: Path) -> None:
    folder = _sample(tmp_path, "sqitch")
    (folder / "verify" / "add_things.sql").write_text("SELECT 1;\n")  # left over, not in the plan
    _refused(folder, "sqitch", "add_things", r"verify/add_things.sql already exists; not overwriting it")


def test_goose_examples_uncommented_need_no_other_change(tmp_path: Path) -> None:
    created = create_migration(tmp_path, "example", layout=LAYOUTS["goose"], now=NOW)
    lines = created.up.read_text().splitlines()
    down_at = lines.index("-- +goose Down")
    up = [line[7:] for line in lines[:down_at] if line.startswith("--     ")]
    down = [line[7:].split("   --")[0] for line in lines[down_at:] if line.startswith("--     ")]
    created.up.write_text("\n".join(["-- +goose Up", *up, "-- +goose Down", *down]) + "\n")
    (migration,), findings = read_folder(tmp_path, "goose")
    assert len(migration.statements) == 7 and migration.down_statements
    assert [f.rule for f in findings if f.rule == "layout-goose-split"] == []  # StatementBegin/End guard the DO block
