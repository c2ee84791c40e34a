"""Receipts read back what they wrote; an older format's digests are not trusted."""

from __future__ import annotations

import json

from harness.receipt import Receipt
from harness.snapshot import Snapshot


def test_a_receipt_of_the_first_format_is_read_without_its_digests() -> None:
    """Format 1 digests hashed the whole JSON: not comparable, so apply rehearses to check for drift instead."""
    receipt = Receipt(
        plan="p", plan_sha256="0" * 64, migrations={"1_a": "c"}, digests={"1_a": "d" * 64},
        final_snapshot=Snapshot(objects={}), server_version="18", created_at="2026-12-01T00:00:00+00:00",
    )
    assert Receipt.from_json(receipt.to_json()).digests == {"1_a": "d" * 64}
    old = json.loads(receipt.to_json())
    old["format"] = 1
    assert Receipt.from_json(json.dumps(old)).digests == {}
    del old["format"]
    assert Receipt.from_json(json.dumps(old)).digests == {}
