"""``harness status`` against a real database with applied, pending and tampered migrations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from harness import history
from harness.cli import main
from harness.sources import load_migrations

DATA = Path(__file__).parent / "data" / "status"


def _migrations(tmp_path: Path) -> Path:
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    (mdir / "1_users.sql").write_text("CREATE TABLE users (id int);\n")
    (mdir / "2_orders.sql").write_text("CREATE TABLE orders (id int);\n")
    (mdir / "3_items.sql").write_text("CREATE TABLE items (id int);\n")
    (mdir / "4_tags.sql").write_text("CREATE TABLE tags (id int);\n")
    return mdir


def _record(dsn: str, mdir: Path, count: int) -> None:
    migrations = load_migrations(mdir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        history.ensure_table(conn)
        for m in migrations[:count]:
            with conn.transaction():
                history.record_applied(conn, m, execution_ms=3, mode="development")


def test_status_shows_applied_and_pending(db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir = _migrations(tmp_path)
    _record(db_dsn, mdir, 2)
    code = main(["status", "--dsn", db_dsn, "--migrations", str(mdir)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert "applied" in lines["1"] and "applied" in lines["2"]
    assert "pending" in lines["3"] and "pending" in lines["4"]


def test_status_json_and_tampered_and_missing(db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir = _migrations(tmp_path)
    _record(db_dsn, mdir, 3)
    (mdir / "1_users.sql").write_text("CREATE TABLE users (id bigint);\n")  # tampered after apply
    (mdir / "2_orders.sql").unlink()  # applied, file gone
    code = main(["status", "--dsn", db_dsn, "--migrations", str(mdir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1  # a tampered or missing migration is a failed check
    assert [c["version"] for c in data["changed"]] == ["1"]
    assert [m["version"] for m in data["missing"]] == ["2"]
    assert [p["version"] for p in data["pending"]] == ["4"]
    assert data["last_applied_at"]

    code = main(["status", "--dsn", db_dsn, "--migrations", str(mdir)])
    out = capsys.readouterr().out
    assert code == 1
    assert "CHANGED" in out and "MISSING" in out


def test_status_of_a_fresh_database_lists_everything_pending(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdir = _migrations(tmp_path)
    assert main(["status", "--dsn", db_dsn, "--migrations", str(mdir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["pending"]) == 4 and data["applied"] == []


def test_status_never_prints_the_password(db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir = _migrations(tmp_path)
    dsn = db_dsn + " password=Sup3rS3cretPw"
    for args in (["status", "--dsn", dsn, "--migrations", str(mdir)], ["status", "--dsn", dsn, "--migrations",
                                                                          str(mdir), "--json"]):
        main(args)
        captured = capsys.readouterr()
        assert "Sup3rS3cretPw" not in captured.out + captured.err


def test_status_unreachable_database_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir = _migrations(tmp_path)
    dsn = f"postgresql://app:Sup3rS3cretPw@/app?host={tmp_path}&port=5999&connect_timeout=2"
    code = main(["status", "--dsn", dsn, "--migrations", str(mdir)])
    err = capsys.readouterr().err
    assert code == 1  # unreachable is not bad usage (harness.connection); a wrong database name is
    assert "cannot connect to" in err
    assert "Sup3rS3cretPw" not in err
    assert "Traceback" not in err


def test_status_without_any_database_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = main(["status", "--migrations", str(_migrations(tmp_path))])
    assert code == 2
    assert "no database to inspect" in capsys.readouterr().err


def test_status_bad_migrations_folder_names_the_file(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdir = _migrations(tmp_path)
    # Two files with one version: the folder itself is refused (a badly named file is only skipped, with a warning).
    (mdir / "0001_oops.sql").write_text("SELECT 1;")
    (mdir / "1_again.sql").write_text("SELECT 1;")
    code = main(["status", "--dsn", db_dsn, "--migrations", str(mdir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "0001_oops.sql" in err and "Traceback" not in err


def test_unknown_command_and_bad_option_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["status", "--no-such-option"])
    assert info.value.code == 2


def test_console_script_is_installed() -> None:
    assert shutil.which("harness"), "the harness console script should be on PATH after pip install"
