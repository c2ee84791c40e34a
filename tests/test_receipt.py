"""Receipts read back what they wrote; a receipt of an older format is refused."""

from __future__ import annotations

import json

import pytest

from harness.receipt import Receipt
from harness.snapshot import Snapshot


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
