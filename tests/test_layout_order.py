"""Migration order per layout: each folder sorts, and refuses duplicate versions, as its own tool does.

Where each rule comes from (the tools' sources) is in docs/layouts.md, "Order
and versions".  Every folder here is written by the test itself.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psycopg
import pytest

from harness import history
from harness.authoring import DieselLayout, plan_versions
from harness.cli import main
from harness.errors import ConfigError, SourceError
from harness.sources import Order, load_migrations
from tests.projects import apply, load, write_project


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def ids(folder: Path, layout: str) -> list[str]:
    return [m.id for m in load_migrations(folder, layout=layout)]


# Four diesel versions whose text order (diesel's), integer order and plain string order all differ.
DIESEL_MIXED = {
    "20250101000000_p/up.sql": "CREATE TABLE p (id int);",
    "2017-09-23-182408-0000_q/up.sql": "CREATE TABLE q (id int);",
    "2025-11-19-091444_r/up.sql": "CREATE TABLE r (id int);",
    "2016-01-01-000000_s/up.sql": "CREATE TABLE s (id int);",
}
DIESEL_ORDER = ["2016-01-01-000000_s", "2017-09-23-182408-0000_q", "20250101000000_p", "2025-11-19-091444_r"]


# --------------------------------------------------------------------------
# Order itself


def test_text_orders_compare_as_text_and_never_as_numbers() -> None:
    assert Order(text="20170923182408") < Order(text="201709231824080000") < Order(text="20251119091444")
    assert Order(text="10_b.sql") < Order(text="1_a.sql") < Order(text="9_c.sql")
    assert Order(text="1") != 1 and Order(text="1") != Order((1,)) and Order(text="1") == Order(text="1")
    assert hash(Order(text="7")) == hash(Order(text="7")) and str(Order(text="2016")) == "2016"
    with pytest.raises(TypeError):
        int(Order(text="7"))
    assert sorted([Order(repeatable=True, tiebreak="R__a"), Order(text="2")]) == [
        Order(text="2"), Order(repeatable=True, tiebreak="R__a")]


# --------------------------------------------------------------------------
# Each layout


def test_diesel_sorts_versions_as_text_without_dashes(tmp_path: Path) -> None:
    write(tmp_path, {**DIESEL_MIXED, "20140924113530_z/up.sql": "SELECT 1;"})
    migrations = load_migrations(tmp_path, layout="diesel")
    # Text puts 2017-...-0000 before 2025-11-19-091444; as integers it would come last (18 digits).
    assert [m.id for m in migrations] == ["20140924113530_z", *DIESEL_ORDER]
    assert [str(m.order) for m in migrations][:3] == ["20140924113530", "20160101000000", "201709231824080000"]


def test_diesel_versions_one_a_prefix_of_the_other_are_two_versions(tmp_path: Path) -> None:
    write(tmp_path, {"2017-09-23-182408-0000_b/up.sql": "SELECT 2;", "2017-09-23-182408_a/up.sql": "SELECT 1;"})
    assert ids(tmp_path, "diesel") == ["2017-09-23-182408_a", "2017-09-23-182408-0000_b"]


def test_golang_migrate_sorts_numerically_and_refuses_leading_zero_twins(tmp_path: Path) -> None:
    write(tmp_path, {"10_c.up.sql": "SELECT 10;", "000009_d.up.sql": "SELECT 9;", "1_a.up.sql": "SELECT 1;",
                     "0002_b.up.sql": "SELECT 2;"})
    assert ids(tmp_path, "golang-migrate") == ["1_a", "0002_b", "000009_d", "10_c"]
    write(tmp_path, {"001_e.up.sql": "SELECT 1;"})  # uint 1, like 1_a: golang-migrate's ErrDuplicateMigration
    with pytest.raises(SourceError, match=r"001_e\.up\.sql and .*1_a\.up\.sql have the same version \(1\)"):
        load_migrations(tmp_path, layout="golang-migrate")


def test_goose_sorts_sequential_and_timestamp_versions_numerically(tmp_path: Path) -> None:
    write(tmp_path, {
        "20240101120000_stamp.sql": "-- +goose Up\nSELECT 3;\n",
        "00001_first.sql": "-- +goose Up\nSELECT 1;\n",
        "2_second.sql": "-- +goose Up\nSELECT 2;\n",
    })
    assert ids(tmp_path, "goose") == ["00001_first", "2_second", "20240101120000_stamp"]
    write(tmp_path, {"001_again.sql": "-- +goose Up\nSELECT 1;\n"})  # goose: "found duplicate migration version 1"
    with pytest.raises(SourceError, match="same version"):
        load_migrations(tmp_path, layout="goose")


def test_dbmate_sorts_by_file_name_and_keeps_leading_zeros_apart(tmp_path: Path) -> None:
    up = "-- migrate:up\nSELECT 1;\n"
    write(tmp_path, {"1_a.sql": up, "10_b.sql": up, "9_c.sql": up, "20240101000000_d.sql": up, "001_e.sql": up})
    # dbmate sorts FileName as a string: "001_e" < "10_b" < "1_a" ('0' < '_') < "2024..." < "9_c".
    assert ids(tmp_path, "dbmate") == ["001_e", "10_b", "1_a", "20240101000000_d", "9_c"]
    write(tmp_path, {"1_f.sql": up})  # one version string twice: dbmate's INSERT of the second fails
    with pytest.raises(SourceError, match=r"1_a\.sql and .*1_f\.sql have the same version \(1\)"):
        load_migrations(tmp_path, layout="dbmate")


def test_flyway_compares_numeric_parts_not_text(tmp_path: Path) -> None:
    write(tmp_path, {
        "V2__two.sql": "SELECT 2;",
        "V001.010__one_ten.sql": "SELECT 110;",  # 1.10: parts are numbers, so after 1.9
        "V1_9__one_nine.sql": "SELECT 19;",
        "V1__one.sql": "SELECT 1;",
        "V10__ten.sql": "SELECT 10;",
        "R__a_view.sql": "SELECT 'a';",
        "R__B_view.sql": "SELECT 'B';",  # Java's String.compareTo: 'B' < 'a'
    })
    assert [m.version for m in load_migrations(tmp_path, layout="flyway")] == [
        "1", "1.9", "001.010", "2", "10", "R__B_view", "R__a_view"]
    write(tmp_path, {"V01__again.sql": "SELECT 1;"})  # BigInteger("01") is 1: "more than one migration with version 1"
    with pytest.raises(SourceError, match="same version"):
        load_migrations(tmp_path, layout="flyway")


def test_supabase_sorts_by_file_name_native_by_number(tmp_path: Path) -> None:
    write(tmp_path, {"9_b.sql": "SELECT 9;", "100_c.sql": "SELECT 100;", "20240101000000_a.sql": "SELECT 1;"})
    # The Supabase CLI applies fs.ReadDir's sorted names; the native layout orders versions as integers.
    assert ids(tmp_path, "supabase") == ["100_c", "20240101000000_a", "9_b"]
    assert ids(tmp_path, "native") == ["9_b", "100_c", "20240101000000_a"]


def test_drizzle_follows_the_journal_not_tags_or_when(tmp_path: Path) -> None:
    write(tmp_path, {
        "0000_a.sql": "SELECT 0;", "0001_b.sql": "SELECT 1;", "0002_c.sql": "SELECT 2;",
        "meta/_journal.json": json.dumps({"version": "7", "dialect": "postgresql", "entries": [
            {"idx": 2, "when": 30, "tag": "0002_c", "breakpoints": True},
            {"idx": 0, "when": 10, "tag": "0000_a", "breakpoints": True},
            {"idx": 1, "when": 20, "tag": "0001_b", "breakpoints": True},
        ]}),
    })
    assert ids(tmp_path, "drizzle") == ["0002_c", "0000_a", "0001_b"]


def test_new_diesel_version_after_a_longer_one_is_not_out_of_order(tmp_path: Path) -> None:
    import datetime as dt

    write(tmp_path, {"2025-11-19-091444-0000_old/up.sql": "SELECT 1;"})
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    # "20260102030405" sorts after "202511190914440000" as text, so diesel runs it after: no refusal.
    assert plan_versions(tmp_path, DieselLayout(), now=now) == ["2026-01-02-030405"]
    with pytest.raises(ConfigError, match="sorts before the newest"):
        plan_versions(tmp_path, DieselLayout(), now=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))


# --------------------------------------------------------------------------
# Status and apply on a real database


def test_status_lists_a_mixed_diesel_folder_in_diesel_order(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write(tmp_path / "migrations", DIESEL_MIXED)
    migrations = load_migrations(folder)
    assert [m.id for m in migrations] == DIESEL_ORDER
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        history.ensure_table(conn)
        for m in migrations:
            if m.name in ("q", "r"):
                with conn.transaction():
                    history.record_applied(conn, m, execution_ms=1, mode="development")
    code = main(["status", "--dsn", db_dsn, "--migrations", str(folder)])
    out = capsys.readouterr().out
    assert code == 0, out
    listed = [line.split()[:3] for line in out.splitlines() if line.split()[2:3] in (["pending"], ["applied"])]
    assert listed == [
        ["2016-01-01-000000", "s", "pending"],
        ["2017-09-23-182408-0000", "q", "applied"],
        ["20250101000000", "p", "pending"],
        ["2025-11-19-091444", "r", "applied"],
    ]
    assert main(["status", "--dsn", db_dsn, "--migrations", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["version"] for row in data["applied"]] == ["2017-09-23-182408-0000", "2025-11-19-091444"]
    assert [m["version"] for m in data["pending"]] == ["2016-01-01-000000", "20250101000000"]


def test_apply_orders_diesel_as_text_and_flags_only_true_latecomers(tmp_path: Path, db_dsn: str) -> None:
    plan_path = write_project(tmp_path, {}, "layout: diesel\n")
    folder = tmp_path / "migrations"
    write(folder, {"2017-09-23-182408-0000_q/up.sql": "CREATE TABLE q (id int);"})
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None and result.applied == ["2017-09-23-182408-0000_q"], out

    # Newer by text (though a smaller number): diesel runs it, and it is not out of order.
    write(folder, {"2025-11-19-091444_r/up.sql": "CREATE TABLE r (id int);"})
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None and result.applied == ["2025-11-19-091444_r"], out
    assert "out of order" not in out

    # Older by text than the newest applied: diesel would run it silently; the harness says so
    # (and refuses in production).
    write(folder, {"2016-01-01-000000_s/up.sql": "CREATE TABLE s (id int);"})
    result, out, error = apply(load(plan_path, db_dsn))
    assert error is None and result is not None and result.applied == ["2016-01-01-000000_s"], out
    assert "out of order: 2016-01-01-000000_s" in out
