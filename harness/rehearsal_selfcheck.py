"""The rehearsal's self-check: its verdicts never rest on a tracked state that a full snapshot contradicts.

Tracked states (harness/tracking.py) are built from deltas.  Every
``VERIFY_EVERY``-th tracked apply, and the head's, is compared with a full
snapshot taken in the same transaction; a tracked judgement that fails is
confirmed with full snapshots before it is reported.  When a tracked state
turns out wrong, the history is replayed with full snapshots, the rehearsal
goes on untracked, and the verdicts already reported are judged again on a
rehearsal of their own (:meth:`SelfCheck.rejudge`): any that differs is
reported by the item running next.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import psycopg

from . import tracking
from .rehearsal_model import Outcome
from .snapshot import Change, diff_snapshots, format_changes, take_snapshot

if TYPE_CHECKING:
    from .rehearsal_engine import Engine

__all__ = ["SelfCheck", "VERIFY_EVERY"]

# Every VERIFY_EVERY-th tracked apply, and the last, is compared with a full
# snapshot taken in the same transaction (SelfCheck.changes_at).
VERIFY_EVERY = 32

# The warning is the rehearsal's: logged under the engine's name.
log = logging.getLogger("harness.rehearsal")


class SelfCheck:
    """Which tracked states of one rehearsal were proved exact, and what to do when one was wrong."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tracked = False  # some state came from a delta: check the last one against a full snapshot
        self.verified = -1  # last position whose tracked state equalled a full snapshot (or was read in full)
        self.exact = {-1}  # positions whose schema was read in full or compared with a full snapshot
        self.warned = False  # the warning that tracking was wrong is logged once
        # Verdicts already reported that full snapshots overturn (item id, reported, full-mode outcome).
        self.overturned: list[tuple[str, Outcome, Outcome]] = []

    # ------------------------------------------------------------------ where tracked states are checked

    def _checkpoint(self, index: int) -> bool:
        """Whether the apply of migration *index* is compared with a full snapshot in its own transaction."""
        return index == len(self.engine.migrations) - 1 or (index + 1) % VERIFY_EVERY == 0

    @functools.cached_property
    def changes(self) -> str:
        """The statement that ends a measurement (the mode does not change during a rehearsal)."""
        return tracking.changes_sql(verify=self.engine.track_mode == "verify")

    def changes_at(self, index: int) -> str:
        """The statement that ends the measurement of migration *index*'s apply."""
        if self.engine.track_mode != "verify" and self._checkpoint(index):
            return tracking.changes_sql(verify=True)
        return self.changes

    def verify_at_head(self) -> None:
        """At head, the schema built from deltas must equal a full snapshot; if not, go on in full mode.

        Usually the head's own apply was compared in its transaction
        (:meth:`changes_at`) and there is nothing left to do.
        """
        engine = self.engine
        final = engine.steps[-1].after
        if not self.tracked or final is None or self.verified >= len(engine.migrations) - 1:
            return
        self.tracked = False
        changes = diff_snapshots(take_snapshot(engine.conn), final)
        if changes:
            self.fall_back(changes, "at head")
        else:
            self.verified = len(engine.migrations) - 1

    # ------------------------------------------------------------------ before a failure is reported

    def confirm(self, index: int, base: tracking.State, parts: Sequence[str], needs: Iterable[int]) -> bool:
        """Before a tracked judgement of migration *index* is reported as a failure: were its states right?

        When the states it was compared with (positions *needs*; its own
        is checked here) were read in full or compared with a full snapshot,
        and the working database is still there, the measurements
        (*parts*, from *base*) run again, each compared with a full snapshot
        taken in the same transaction.  Otherwise the history is replayed
        with full snapshots.  ``True``: the tracked states were right and the
        failure stands; ``False``: judge again untracked (full snapshots).
        """
        if any(i not in self.exact for i in needs) or self._physically_ahead():
            verified = self.verified
            if self.rebuild(track=True):
                # The replay found tracked states wrong: verdicts reported since may rest on them.
                self.rejudge(verified + 1, self.engine.position)
            return False
        verify = tracking.changes_sql(verify=True)
        mark = tracking.mark_sql()
        script = "; ".join(["BEGIN", mark, verify] + [f"{mark}; {part}; {verify}" for part in parts] + ["ROLLBACK"])
        try:
            deltas = self.engine.pipeline.exchange(script)
        except psycopg.Error:
            self.engine.pipeline.recover()
            self.rebuild(track=False)
            return False
        found = tracking.differences(base, deltas[0])
        state = base
        for delta in deltas[1:]:
            if found:
                break
            state, _keys = tracking.advance(state, delta, check=False)
            found = tracking.differences(state, delta)
        if found:
            self.fall_back(found, f"judging {self.engine.migrations[index].id}")
            return False
        return True

    def exact_or_replayed(self, positions: Iterable[int]) -> bool:
        """Before an untracked judgement that compared full snapshots with recorded states fails: were those exact?

        ``True`` when the states at *positions* were read in full or compared
        with a full snapshot, and the failure stands.  Otherwise they may be
        tracked ones: the history is replayed with full snapshots (a wrong
        one warns and stops the tracking, see :meth:`rebuild`), and
        ``False`` says to judge again.
        """
        if all(i in self.exact for i in positions):
            return True
        verified = self.verified
        if self.rebuild(track=True):
            self.rejudge(verified + 1, self.engine.position)  # verdicts reported on the wrong states
        return False

    def _physically_ahead(self) -> bool:
        """Whether a message sent ahead applied a migration beyond the current position."""
        engine = self.engine
        if engine.pipeline.flight is not None:
            engine.pipeline.land()
        return bool(engine.pipeline.landed) or any(s.applied for s in engine.steps[engine.position + 1:])

    # ------------------------------------------------------------------ when a tracked state was wrong

    def _warn(self, changes: Sequence[Change], where: str) -> None:
        if self.warned:
            return
        self.warned = True
        names = sorted({f"{c.object_type} {c.object}" for c in changes})
        log.warning(
            "the rehearsal's incremental snapshot differed from a full one %s (%s); the rehearsal goes on with "
            "full snapshots, and its verdicts are those of HARNESS_SNAPSHOTS=full. Please report this "
            "(a migration changed the catalogs without a DDL command, or a bug in migration-harness):\n%s",
            where, ", ".join(names[:20]) + (", ..." if len(names) > 20 else ""), format_changes(changes),
        )

    def fall_back(self, changes: Sequence[Change], where: str) -> None:
        """The tracked state was wrong: warn once, rebuild every state in full, and go on untracked.

        The verdicts reported since the last verified position may rest on the
        wrong state: they are judged again with full snapshots, and any that
        differs is reported by the item running now (``Rehearsal.run``).
        """
        self._warn(changes, where)
        verified = self.verified
        self.rebuild(track=False)
        self.rejudge(verified + 1, self.engine.position)

    def rebuild(self, *, track: bool) -> list[Change]:
        """Replay the history up to the current position on a new working database, with full snapshots.

        Every state up to the position is then exact; migrations a message
        sent ahead applied beyond it are applied again later.  With *track*,
        the tracking goes on afterwards unless a replayed state differs from
        the one tracked.  Returns those differences (tracked → replayed).
        """
        engine = self.engine
        upto = engine.position
        known = {i: engine.snapshot_at(i) for i in range(upto + 1) if i not in self.exact}
        engine.replay_in_full()
        self.verified = upto
        self.exact = set(range(-1, upto + 1))
        differ: list[Change] = []
        for i, before in known.items():
            replayed = engine.snapshot_at(i)
            if before is not None and replayed is not None:
                differ = diff_snapshots(replayed, before)
                if differ:
                    break
        if track and not differ and engine.track_mode != "full":
            engine.tracking_on = tracking.install(engine.conn)
        elif differ:
            self._warn(differ, f"after {engine.migrations[i].id}")
        return differ

    def rejudge(self, first: int, last: int) -> None:
        """Judge again, on a rehearsal of its own with full snapshots, the items reported of migrations *first*..*last*."""
        engine = self.engine
        reported = {item.id: item for item in engine.items() if first <= item.index <= last and not item.plan_level
                    and item.id in engine.results and item.assertion != "lint"}
        if not reported:
            return
        # A rehearsal of the same kind as the one checked (the front end's, which lists and runs items).
        with type(engine)(engine.plan, engine.server, migrations=engine.migrations, measure=engine.measure) as again:
            again.track_mode = "full"
            for item in again.items():
                if item.plan_level or item.index > last:
                    continue
                outcome = again.run(item)
                was = engine.results.get(item.id)
                if item.id in reported and was is not None and was.status != outcome.status:
                    self.overturned.append((item.id, was, outcome))
