"""Receipts read back what they wrote; a receipt of an older format, or of another PostgreSQL major, is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.postgres import embedded_binaries
from harness.receipt import Receipt, server_major
from harness.snapshot import Snapshot
from tests.fix_db import query, table_exists
from tests.projects import cli, write_project


@pytest.mark.parametrize("old_format", [1, 2, None])
def test_a_receipt_of_an_older_format_is_refused(old_format: int | None) -> None:
    """Older receipts hash function bodies (format 2) or whole snapshots (format 1): rehearse again."""
    receipt = Receipt(
        plan="p", plan_sha256="0" * 64, migrations={"1_a": "c"}, digests={"1_a": "d" * 64},
        final_snapshot=Snapshot(objects={}), server_version="18", created_at="2026-12-01T00:00:00+00:00",
    )
    assert Receipt.from_json(receipt.to_json()).digests == {"1_a": "d" * 64}
    old = json.loads(receipt.to_json())
    if old_format is None:
        del old["format"]
    else:
        old["format"] = old_format
    with pytest.raises(ValueError, match="older migration-harness"):
        Receipt.from_json(json.dumps(old))


def test_format_4_records_the_proofs_of_each_down_and_format_3_still_reads() -> None:
    """Rollback needs the proofs of its downs (format 4); apply still reads a format 3 receipt, without them."""
    receipt = Receipt(
        plan="p", plan_sha256="0" * 64, migrations={"1_a": "c", "2_b": "c"}, digests={"1_a": "d" * 64},
        final_snapshot=Snapshot(objects={}), server_version="18", created_at="2026-12-01T00:00:00+00:00",
        downs={"1_a": ("rollback", "chain_rollback"), "2_b": ()},
    )
    data = json.loads(receipt.to_json())
    assert data["format"] == 4 and data["downs"] == {"1_a": ["rollback", "chain_rollback"], "2_b": []}
    assert Receipt.from_json(receipt.to_json()).downs == {"1_a": ("rollback", "chain_rollback"), "2_b": ()}
    data["format"] = 3
    del data["downs"]
    old = Receipt.from_json(json.dumps(data))
    assert old.downs is None and old.digests == {"1_a": "d" * 64}


# --------------------------------------------------------------------------
# The PostgreSQL major of the rehearsal against the target's (real rehearsal and target)

MIGRATIONS = {"1_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);"}


def _server_version(dsn: str) -> str:
    return str(query(dsn, "SHOW server_version")[0][0]).split()[0]


def _events(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((root / "logs").glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_production_refuses_a_receipt_rehearsed_on_another_major(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, "backup: {mode: none}\n", mode="production")
    monkeypatch.setenv("TARGET_URL", db_dsn)
    code, out, err = cli(["rehearse", str(plan_path)], capsys)
    assert code == 0, out + err
    assert "pins no PostgreSQL major" in err  # rehearse warns: the receipt is only good for that major
    receipt_file = tmp_path / ".harness" / "receipts" / "p.json"
    target = _server_version(db_dsn)
    other = f"{server_major(target) - 3}.4"  # type: ignore[operator]
    data = json.loads(receipt_file.read_text())
    data["server_version"] = other
    receipt_file.write_text(json.dumps(data))

    code, out, err = cli(["apply", str(plan_path), "--yes"], capsys)
    assert code == 1, out + err
    assert f"rehearsed on PostgreSQL {other} but the target runs PostgreSQL {target}" in err
    assert f"rehearsal: {{postgres: {server_major(target)}}}" in err and "Traceback" not in err
    assert not table_exists(db_dsn, "users")
    (refused,) = [e for e in _events(tmp_path) if e["event"] == "receipt_server_version"]
    assert refused["refused"] is True and refused["forced"] is False

    for path in (tmp_path / "logs").glob("*.jsonl"):
        path.unlink()
    code, out, err = cli(["apply", str(plan_path), "--yes", "--force"], capsys)
    assert code == 0, out + err
    assert f"WARNING: --force: applying although plan 'p' was rehearsed on PostgreSQL {other}" in out
    assert table_exists(db_dsn, "users")
    events = _events(tmp_path)
    (forced,) = [e for e in events if e["event"] == "receipt_server_version"]
    assert forced == {**forced, "rehearsed": other, "target": target, "forced": True, "refused": False}
    assert any(e["event"] == "warning" and "--force: applying although" in e["text"] for e in events)


def test_rehearse_does_not_warn_when_the_plan_pins_its_major(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_path = write_project(tmp_path, MIGRATIONS, mode="production")
    binaries = embedded_binaries()
    if binaries is None:
        pytest.skip("no embedded PostgreSQL binaries")
    text = plan_path.read_text().replace("{provider: embedded", f"{{provider: embedded, postgres: {binaries.major}")
    plan_path.write_text(text)
    monkeypatch.setenv("TARGET_URL", db_dsn)
    code, out, err = cli(["rehearse", str(plan_path), "--json"], capsys)
    assert code == 0, out + err
    assert "pins no PostgreSQL major" not in err and json.loads(out)["warnings"] == []
