"""What a green rehearsal records for apply: the receipt (harness/receipt.py) with the digest after each migration.

Apply checks a target against the schema the rehearsal proved at its
version, and rollback on a target needs the downs the rehearsal proved.
"""

from __future__ import annotations

from pathlib import Path

from .receipt import write_receipt
from .rehearsal_engine import Engine
from .rehearsal_model import CACHED, PASSED, apply_object_changes, object_changes
from .snapshot import SchemaDigest, Snapshot

__all__ = ["write_rehearsal_receipt"]


def write_rehearsal_receipt(engine: Engine, final: Snapshot) -> Path:
    """Write the plan's receipt from *engine*'s rehearsal, whose whole history applied and gave *final*."""
    # The digest after each migration, moved along by what each one changed.
    base = engine.snapshot_at(-1)
    objects = dict(base.objects) if base is not None else {}
    digest = SchemaDigest(objects)
    digests = {}
    for migration, step in zip(engine.migrations, engine.steps):
        changes = step.after_delta
        if changes is None:  # not let go yet: compared in full
            assert step.after is not None
            changes = object_changes(objects, step.after.objects)
        for key, attrs in changes.items():
            digest.replace(key, objects.get(key), attrs)
        apply_object_changes(objects, changes)
        digests[migration.id] = digest.hexdigest()
    return write_receipt(engine.plan, engine.migrations, digests, final, engine.server.version,
                         downs=_down_proofs(engine))


def _down_proofs(engine: Engine) -> dict[str, list[str]]:
    """Per migration, the items that proved its down in this rehearsal: ``rollback`` (up → down → up, passed
    or proved by the cached prefix) and ``chain_rollback`` (the chain from head back through it)."""
    chain = engine.results.get("chain_rollback")
    chained = set(chain.details.get("chain", ())) if chain is not None and chain.status in (PASSED, CACHED) else set()
    proofs: dict[str, list[str]] = {}
    for migration in engine.migrations:
        own = engine.results.get(f"{migration.id}::rollback")
        proofs[migration.id] = [
            *(["rollback"] if own is not None and own.status in (PASSED, CACHED) else []),
            *(["chain_rollback"] if migration.id in chained else []),
        ]
    return proofs
