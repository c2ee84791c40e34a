"""Paths in messages: relative to the working directory when below it, whatever directory that is now."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.execute import relpath


def test_relpath_follows_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migration = tmp_path / "project" / "migrations" / "1_a.sql"
    migration.parent.mkdir(parents=True)
    migration.write_text("SELECT 1;\n")
    monkeypatch.chdir(tmp_path / "project")
    assert relpath(migration) == "migrations/1_a.sql"
    assert relpath(str(migration)) == "migrations/1_a.sql"
    monkeypatch.chdir(tmp_path / "project" / "migrations")
    assert relpath(migration) == "1_a.sql"  # the same path asked again after a chdir
    elsewhere = tmp_path / "other.sql"
    assert relpath(elsewhere) == str(elsewhere)  # not below the working directory: as given
