"""The rehearsal: prove every migration of a plan on a throwaway database.

A :class:`Rehearsal` turns a plan into an ordered list of :class:`Item`
objects (one per migration and assertion) and runs them one at a time,
keeping a single working database that moves forward through the history.
Items may be run in any subset (``-k``): the engine applies whatever earlier
migrations are missing first.  When a migration fails to apply, every later
item is skipped with the reason.

Cost grows linearly with the number of migrations: the history is never
replayed.  Assertions on transactional migrations run inside a transaction
that is rolled back (second apply for idempotency; down then up for
rollback), so the working database returns to the post-migration state for
free.  Only migrations that cannot run in a transaction use a copy of the
working database, made with ``CREATE DATABASE ... TEMPLATE``.

The parts, from the bottom: ``rehearsal_model`` (items, outcomes, steps),
``rehearsal_session`` and ``rehearsal_measure``, ``rehearsal_pipeline``,
``rehearsal_selfcheck`` and ``rehearsal_prefix`` (the engine's units),
``rehearsal_engine`` (stepping through the history), ``rehearsal_rollback``
and ``rehearsal_assertions`` (the assertions and their registry),
``rehearsal_receipt``; this module lists and runs the items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .redact import scrub
from .rehearsal_assertions import ASSERTIONS, REGISTRY
from .rehearsal_engine import Engine
from .rehearsal_model import CACHED, FAILED, PASSED, SKIPPED, Item, ItemFailed, Outcome
from .rehearsal_receipt import write_rehearsal_receipt
from .snapshot import Snapshot

__all__ = ["Item", "Outcome", "Rehearsal", "ASSERTIONS", "PASSED", "FAILED", "SKIPPED", "CACHED"]


class Rehearsal(Engine):
    """Rehearse one plan on one server.  Use as a context manager."""

    def __enter__(self) -> Rehearsal:
        return self

    # ------------------------------------------------------------------ items

    def items(self) -> list[Item]:
        """Every item of the plan, in migration order then assertion order."""
        items: list[Item] = []
        # baseline: one item applies every migration up to the baseline; they get no other item.
        if self.baseline >= 0:
            items.append(Item(self.migrations[self.baseline], "baseline", self.baseline))
        per_migration = [a for a in REGISTRY.values() if not a.plan_level]
        for index in range(self.baseline + 1, len(self.migrations)):
            for assertion in per_migration:
                items += assertion.items(self, index)
        if self.migrations:
            last = len(self.migrations) - 1
            for assertion in REGISTRY.values():
                if assertion.plan_level:
                    items += assertion.items(self, last)
        return items

    def run(self, item: Item) -> Outcome:
        """Run *item* and return its outcome (never raises for a failed assertion)."""
        t0 = time.perf_counter()
        try:
            outcome = self._run(item)
        except ItemFailed as exc:
            outcome = Outcome(FAILED, scrub(str(exc)))
        except StatementFailed as exc:
            outcome = Outcome(FAILED, scrub(str(exc)))
        if self.selfcheck.overturned:
            # A verdict reported earlier rested on a tracked state that turned out wrong, and full snapshots
            # judge it otherwise: it cannot be taken back, so the item running now carries the failure.
            lines = [f"  {i}: reported {was.status}, with full snapshots {now.status}: {now.message}"
                     for i, was, now in self.selfcheck.overturned]
            self.selfcheck.overturned = []
            outcome = Outcome(FAILED, "verdicts reported earlier were wrong (the rehearsal's incremental snapshot "
                              "was wrong and full snapshots judge them otherwise):\n" + "\n".join(lines)
                              + (f"\nThis item: {outcome.status} {outcome.message}" if outcome.message else ""))
        outcome.duration = time.perf_counter() - t0
        self.results[item.id] = outcome
        return outcome

    def _run(self, item: Item) -> Outcome:
        self._start()
        cached = self.prefix.cached.get(item.id)
        if cached is not None:
            return Outcome(CACHED, cached.reason, details={"receipt": cached.receipt, "verdict": cached.message})
        if self.broken and self.broken[0] < item.index and item.assertion != "lint":
            index, _reason = self.broken
            return Outcome(SKIPPED, f"depends on {self.migrations[index].id}, which failed to apply")
        if item.assertion == "baseline":  # baseline: apply the baseline migrations, assert nothing else
            self.advance(item.index)
            if self.broken and self.broken[0] <= item.index:
                failed = self.migrations[self.broken[0]].id
                return Outcome(FAILED, f"baseline migration {failed} failed to apply:\n{self.broken[1]}")
            return Outcome(PASSED, f"applied {item.index + 1} baseline migrations, up to {item.migration.id}")
        judge = REGISTRY[item.assertion].judge
        if item.assertion == "lint":  # lint needs no database: it runs even after a failed migration
            return judge(self, item)
        self.advance(item.index)
        step = self.steps[item.index]
        if step.released and not item.plan_level:
            self.require_position(item)
        if step.apply_error is not None:
            if item.assertion == "apply":
                return Outcome(FAILED, step.apply_error)
            return Outcome(SKIPPED, f"{item.migration.id} failed to apply")
        return judge(self, item)

    def run_all(self, items: Sequence[Item] | None = None) -> list[tuple[Item, Outcome]]:
        """Run *items* (default: all) in order and return their outcomes."""
        return [(item, self.run(item)) for item in (items if items is not None else self.items())]

    # ------------------------------------------------------------------ results

    def final_snapshot(self) -> Snapshot | None:
        """The schema after the last migration, if the whole history applied."""
        if self.position == len(self.migrations) - 1 and self.migrations:
            self.selfcheck.verify_at_head()  # normally done when the head was reached
            return self.steps[-1].after
        if not self.migrations and self.started:
            return self.snapshot()
        return None

    def schema_after(self, index: int) -> Snapshot:
        """Apply the history up to migration *index* (``-1``: none) and return the schema there.

        Used by apply's drift check to show what the target should look like
        at its current version.
        """
        self._start()
        if index < 0:
            if self.steps:
                self.record_before(0)
                assert self.steps[0].before is not None
                return self.steps[0].before
            return self.snapshot()
        self.advance(index)
        if self.broken and self.broken[0] <= index:
            raise HarnessError(f"the rehearsal could not apply {self.migrations[self.broken[0]].id}: {self.broken[1]}")
        after = self.snapshot_at(index)
        assert after is not None
        return after

    def schemas_within(self, index: int, completed: int, upto: int | None = None) -> list[Snapshot]:
        """The schema part-way through migration *index*: after its first *completed* statements, then after each next one up to *upto*.

        For apply's drift check when an interrupted run left a migration that
        commits statement by statement (or unit by unit, with batched
        statements) part-way.  Applies the history up to the migration before,
        then the statements one by one in autocommit, as apply runs them; a
        batched statement runs whole (it changes rows, not the schema).  The
        working database is left part-way through the migration: nothing can
        be rehearsed after this.
        """
        self.schema_after(index - 1)
        migration = self.migrations[index]
        upto = completed if upto is None else min(upto, len(migration.statements))
        snapshots: list[Snapshot] = []
        self.broken = (index, "the rehearsal was stopped part-way through this migration")
        for count in range(upto + 1):
            if count >= completed:
                snapshots.append(self.snapshot())
            if count < upto:
                try:
                    run_statements(self.conn, migration.statements[count:count + 1], migration.path)
                except StatementFailed as exc:
                    raise HarnessError(f"the rehearsal could not run {migration.id} up to statement {count + 1}: {exc}") from None
        return snapshots

    def write_receipt(self) -> Path | None:
        """Write the plan's receipt from this (green) rehearsal; ``None`` if the history is incomplete.

        The caller decides that every item passed; this records what was proved.
        """
        final = self.final_snapshot()
        if final is None:
            return None
        return write_rehearsal_receipt(self, final)

    # ------------------------------------------------------------------ the prefix cache (harness/rehearsal_prefix.py)

    def save_cache(self, receipt: Path) -> Path | None:
        """After a green rehearsal that wrote *receipt*, cache the rehearsed history; return the entry's path.

        Only when every item ran and passed (or was itself cached) and the
        whole history applied; a failure to write is a warning, never an error.
        """
        return self.prefix.save(receipt)

    @property
    def cache_warnings(self) -> list[str]:
        """Why a cache entry was not used or not written (the rehearsal went on without it)."""
        return self.prefix.warnings

    @property
    def cached_migrations(self) -> int:
        """How many migrations were restored from the cache instead of being rehearsed again."""
        return self.prefix.restored_migrations
