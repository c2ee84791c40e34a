"""Receipts: the record a fully green rehearsal leaves for apply to check.

A receipt names the plan, the hash of the plan file, the checksum of every
migration, the schema digest after each migration and the full expected
final schema, which proofs each migration's down passed (``rollback``,
``chain_rollback``), the PostgreSQL version rehearsed on, and when.
Production apply refuses to run unless a receipt matches the plan and
migrations it is about to apply; production rollback also needs the proofs
of the downs it is about to run.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import GuardError
from .migration import Migration
from .plan import Plan
from .snapshot import Snapshot

__all__ = [
    "Receipt",
    "receipt_path",
    "write_receipt",
    "read_receipt",
    "verify_receipt",
    "DOWN_PROOFS",
    "server_major",
    "server_version_problem",
    "receipt_earned",
]

_FORMAT = 4
# Format 1 digests hashed each snapshot's whole JSON text; format 2 ones are
# snapshot.SchemaDigest.  Format 3 snapshots hold function bodies as text
# (format 2 ones, a hash of it): the schema of an older receipt does not
# compare with a snapshot taken now, so older receipts are refused and the
# plan is rehearsed again.  Format 4 adds ``downs`` (format 3 receipts are
# read with ``downs = None``: good for apply, not for rollback).
_OLDEST_FORMAT = 3

#: The rehearsal items that prove a down, as a receipt's ``downs`` records them.
DOWN_PROOFS = ("rollback", "chain_rollback")


@dataclass(frozen=True)
class Receipt:
    """Proof that a plan rehearsed green with these exact migrations."""

    plan: str
    plan_sha256: str
    migrations: dict[str, str]  # migration id -> checksum, in order
    digests: dict[str, str]  # migration id -> schema digest after it
    final_snapshot: Snapshot
    server_version: str
    created_at: str
    #: migration id -> the items of DOWN_PROOFS that passed for its down; ``None``: a receipt older than format 4.
    downs: dict[str, tuple[str, ...]] | None = None

    def to_json(self) -> str:
        """The receipt as JSON text."""
        data: dict[str, Any] = {
            "format": _FORMAT,
            "plan": self.plan,
            "plan_sha256": self.plan_sha256,
            "migrations": self.migrations,
            "digests": self.digests,
            "downs": {mid: list(proofs) for mid, proofs in self.downs.items()} if self.downs is not None else None,
            "server_version": self.server_version,
            "created_at": self.created_at,
            "final_snapshot": json.loads(self.final_snapshot.to_json()),
        }
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        """Parse a receipt written by :meth:`to_json`."""
        data = json.loads(text)
        if data.get("format", 1) < _OLDEST_FORMAT:
            raise ValueError(f"format {data.get('format', 1)}, written by an older migration-harness")
        return cls(
            plan=data["plan"],
            plan_sha256=data["plan_sha256"],
            migrations=dict(data["migrations"]),
            digests=dict(data.get("digests", {})),
            final_snapshot=Snapshot.from_json(json.dumps(data["final_snapshot"])),
            server_version=data["server_version"],
            created_at=data["created_at"],
            downs=({mid: tuple(proofs) for mid, proofs in data["downs"].items()}
                   if isinstance(data.get("downs"), dict) else None),
        )


def receipt_path(plan: Plan) -> Path:
    """Where the receipt of *plan* lives: ``<root>/.harness/receipts/<plan>.json``."""
    return plan.root / ".harness" / "receipts" / f"{plan.name}.json"


def write_receipt(
    plan: Plan,
    migrations: list[Migration],
    digests: dict[str, str],
    final_snapshot: Snapshot,
    server_version: str,
    downs: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write the receipt atomically and return its path.

    *downs* maps a migration id to the items of :data:`DOWN_PROOFS` that
    passed for its down (an id without passed proofs maps to nothing).
    """
    receipt = Receipt(
        plan=plan.name,
        plan_sha256=plan.sha256,
        migrations={m.id: m.checksum for m in migrations},
        digests=digests,
        final_snapshot=final_snapshot,
        server_version=server_version,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        downs={m.id: tuple((downs or {}).get(m.id, ())) for m in migrations},
    )
    path = receipt_path(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".receipt-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(receipt.to_json())
    os.replace(tmp, path)
    return path


def read_receipt(plan: Plan) -> Receipt | None:
    """The plan's receipt, or ``None`` when there is none."""
    path = receipt_path(plan)
    try:
        return Receipt.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as exc:
        raise GuardError(f"{path}: unreadable receipt ({exc}); run the rehearsal again") from None


def verify_receipt(plan: Plan, migrations: list[Migration]) -> Receipt:
    """The receipt if it matches *plan* and *migrations* exactly; else :class:`GuardError`."""
    receipt = read_receipt(plan)
    if receipt is None:
        raise GuardError(
            f"no green rehearsal receipt for plan {plan.name!r} ({receipt_path(plan)}); run "
            f"`harness rehearse {plan.name}` (or pytest --migrate-plan {plan.name}) first"
        )
    problems = []
    if receipt.plan_sha256 != plan.sha256:
        problems.append("the plan file changed since the rehearsal")
    current = {m.id: m.checksum for m in migrations}
    for mid in sorted(set(current) | set(receipt.migrations)):
        if mid not in receipt.migrations:
            problems.append(f"{mid} was not rehearsed")
        elif mid not in current:
            problems.append(f"{mid} was rehearsed but its file is gone")
        elif current[mid] != receipt.migrations[mid]:
            problems.append(f"{mid} changed since the rehearsal (checksum differs)")
    if problems:
        raise GuardError(
            f"the rehearsal receipt of plan {plan.name!r} ({receipt.created_at}) does not match: "
            + "; ".join(problems)
            + f". Rehearse again: `harness rehearse {plan.name}`"
        )
    return receipt


def server_major(version: str) -> int | None:
    """The major version in a ``server_version`` text (``15.4``, ``16beta2``, ``15.4 (Debian 15.4-1)``)."""
    found = re.match(r"\s*(\d+)", version)
    return int(found.group(1)) if found else None


def server_version_problem(receipt: Receipt, target_version: str) -> str | None:
    """Why *receipt* proves little for a target running *target_version* (another major), else ``None``.

    Majors differ in syntax, catalogs, lock levels and planner: a plan
    rehearsed on one major can fail, or lock differently, on another.
    """
    rehearsed, target = server_major(receipt.server_version), server_major(target_version)
    if rehearsed is None or target is None or rehearsed == target:
        return None
    return (
        f"plan {receipt.plan!r} was rehearsed on PostgreSQL {receipt.server_version} but the target runs PostgreSQL "
        f"{target_version}: a rehearsal on major {rehearsed} does not prove the migrations on major {target}. Pin the "
        f"production major in the plan (rehearsal: {{postgres: {target}}}) and rehearse again with PostgreSQL {target} "
        f"binaries (a local package such as Debian's postgresql-{target}, provider: docker, or a scratch server with "
        "provider: dsn; see docs/apply.md)"
    )


def receipt_earned(expected: Sequence[str], statuses: Mapping[str, str], *, selected: bool = False) -> bool:
    """Whether a rehearsal earns its plan a receipt: every item in *expected* ran and none failed.

    *statuses* maps an item id to its outcome (``passed``, ``failed``,
    ``skipped``, ``cached``).  A skipped item says what was not claimed (no
    down migration, ``rollback: none``; the receipt records which downs were
    proved), and a cached one was proved by an earlier rehearsal of the same
    prefix; an item that did not run (``-x``, a deselection) or failed
    withholds the receipt, and so does a *selected* subset (``-k``).  The
    front ends (``harness rehearse``, the pytest plugin, the Python API) all
    ask this.
    """
    return not selected and all(statuses.get(item) in ("passed", "skipped", "cached") for item in expected)
