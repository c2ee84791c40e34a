"""The rehearsal engine: one working database stepped forward through a plan's history.

:class:`Engine` owns the server and the working database, applies each
migration at most once (tracked in one message, or untracked with full
snapshots), records what each one changed (:class:`~harness.rehearsal_model.Step`)
and lets go of what only its items needed.  Its parts are units of their own,
each holding the engine it serves:

* :class:`~harness.rehearsal_pipeline.Pipeline`: statements sent ahead on the connection;
* :class:`~harness.rehearsal_selfcheck.SelfCheck`: tracked states checked against full snapshots;
* :class:`~harness.rehearsal_prefix.CachedPrefix`: going on from, and saving to, the prefix cache.

The assertions (harness/rehearsal_assertions.py) judge what the engine
recorded; :class:`harness.rehearsal.Rehearsal` lists the items and runs them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import psycopg

from . import bases, rehearsal_model, rehearsal_session, tracking
from .cache import PrefixCache
from .compat import redefined_tables
from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .locks import run_measured
from .plan import Plan
from .postgres import Server
from .rehearsal_measure import batched_run, failure_rehearsal
from .rehearsal_model import (
    Changes, Counters, Item, ItemFailed, Outcome, Step, apply_object_changes, counters, object_changes,
    touched_tables, trackable_statements,
)
from .rehearsal_pipeline import Pipeline
from .rehearsal_prefix import CachedPrefix
from .rehearsal_selfcheck import SelfCheck
from .snapshot import Snapshot, diff_snapshots, table_fingerprints, take_rooted_snapshot, take_snapshot
from .sources import Migration, baseline_index, load_plan_migrations

__all__ = ["Engine"]

# Logged under the rehearsal's name, as users filter it.
log = logging.getLogger("harness.rehearsal")


class Engine:
    """Step one working database through a plan's history on one server.  Use as a context manager."""

    def __init__(
        self,
        plan: Plan,
        server: Server | Callable[[], Server],
        *,
        migrations: Sequence[Migration] | None = None,
        measure: bool = True,
        cache: PrefixCache | None = None,
        ahead: bool = False,
    ) -> None:
        """*ahead*: with a *cache*, start the server and restore the newest entry while the folder loads."""
        self.plan = plan
        self._server = server
        # False when only the schema at some version is wanted (apply's drift
        # check, generate): no lock measurement, failure rehearsal or batched run.
        self.measure = measure
        self.dbname = f"mh_rehearsal_{uuid.uuid4().hex[:10]}"
        # The rehearsed-prefix cache (harness/cache.py): items of the migrations restored from it are not run.
        self.prefix = CachedPrefix(self, cache)
        if ahead and cache is not None:
            self.prefix.restore_ahead()
        try:
            # Layouts and substitutions: the plan says how to read its folder.
            self.migrations = list(migrations) if migrations is not None else load_plan_migrations(plan)
            plan.bind([(m.id, m.version) for m in self.migrations])
            # baseline: index of the last migration the plan's baseline covers (-1: none).
            self.baseline = baseline_index(self.migrations, getattr(plan, "baseline", None))
            self.configs = {m.id: plan.step_for(m.id, m.version) for m in self.migrations}
        except BaseException:
            self.prefix.drop_restored_ahead()
            raise
        self._conn: psycopg.Connection | None = None
        self.steps = [Step() for _ in self.migrations]
        self.position = -1  # index of the last migration applied to the working database
        self.broken: tuple[int, str] | None = None  # (index, reason) of the first migration that failed
        self.seeded = bool(plan.rehearsal.seed)
        # A built-in base (harness/bases): loaded before the seed, so none of its objects is a migration's change.
        self.base = bases.base(base) if (base := getattr(plan.rehearsal, "base", None)) else None
        self.results: dict[str, Outcome] = {}  # the outcome of every item run, by item id
        self.started = False
        # Data of every user table at the current position, kept up to date
        # incrementally: a migration can only change the tables PostgreSQL
        # reports as written (pg_stat_xact_user_tables) or rewritten (new
        # relfilenode) inside its transaction, so only those are re-read.
        self.data: dict[str, tuple[int, str]] = {}
        self.nodes: dict[str, int] = {}
        self._nodes_stale = False  # a tracked run moved on without reading the storage files
        # Incremental snapshots (harness/tracking.py): on unless HARNESS_SNAPSHOTS=full
        # or the rehearsal role cannot create event triggers.
        self.track_mode = tracking.mode()
        self.tracking_on = False
        self.state: tracking.State | None = None  # schema, roots and data at the current position
        self.pipeline = Pipeline(self)
        self.selfcheck = SelfCheck(self)

    # ------------------------------------------------------------------ what the front end provides

    def items(self) -> list[Item]:
        """Every item of the plan, in migration order then assertion order (listed by ``Rehearsal``)."""
        raise NotImplementedError

    def run(self, item: Item) -> Outcome:
        """Run *item* and return its outcome (run by ``Rehearsal``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ server and session

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self) -> Server:
        """The rehearsal server, started on first use when a factory was given."""
        self.prefix.wait_ahead()  # the restore ahead may be starting the server
        if not isinstance(self._server, Server):
            self._server = self._server()
        return self._server

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.prefix.cache is not None and self.prefix.resume():
            return
        self._create()
        # After the seed: a seed dumped from a managed database may create the harness schema itself.
        if self.track_mode != "full":
            self.tracking_on = tracking.install(self.conn)
        self.refresh_data()

    def _create(self) -> None:
        """Create the working database and load the plan's base and seed into it."""
        self.server.create_database(self.dbname)
        self.connect()
        rehearsal_session.load_base_and_seed(self.conn, self.plan, self.base, major=self.server.major,
                                             dbname=self.dbname)

    def refresh_data(self) -> None:
        """Read the data of every table (after the seed, or a non-transactional migration)."""
        self.nodes = counters(self.conn).nodes
        self._nodes_stale = False
        self.data = table_fingerprints(self.conn, self.nodes) if self.nodes else {}

    def sync_nodes(self) -> None:
        """Make ``nodes`` current again after tracked runs (the untracked paths compare against it)."""
        if self._nodes_stale:
            self.nodes = counters(self.conn).nodes
            self._nodes_stale = False

    def connect(self) -> None:
        """Open the autocommit connection to the working database."""
        self._conn = self.server.connect(self.dbname, autocommit=True)
        rehearsal_session.configure(self._conn, self.base)

    @property
    def conn(self) -> psycopg.Connection:
        """The autocommit connection to the working database (after landing a message in flight)."""
        if self.pipeline.flight is not None:
            self.pipeline.land()
        return self.raw_conn

    @property
    def raw_conn(self) -> psycopg.Connection:
        """The connection as it is, maybe with a message in flight (for the pipeline)."""
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Drop the working database (best effort; never hides an earlier error)."""
        self.prefix.drop_restored_ahead()
        self.pipeline.flight = None  # closing the connection discards any results still coming
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self.started:
            try:
                self.server.drop_database(self.dbname)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.warning("could not drop rehearsal database %s: %s", self.dbname, exc)
            self.started = False

    @contextlib.contextmanager
    def scratch(self, transactional: bool) -> Iterator[tuple[psycopg.Connection, Counters | None]]:
        """A place to try things on the current state that leaves the working database untouched.

        Transactional work runs in a transaction that is rolled back; other work
        runs on a copy of the working database.
        """
        if transactional:
            self.conn.execute("BEGIN")
            try:
                yield self.conn, counters(self.conn)
            finally:
                self.conn.execute("ROLLBACK")
            return
        copy = f"{self.dbname}_copy"
        self.conn.close()
        try:
            self.server.create_database(copy, template=self.dbname)
        finally:
            self.connect()
        try:
            with self.server.connect(copy, autocommit=True) as conn:
                # CREATE DATABASE ... TEMPLATE does not copy database settings.
                rehearsal_session.configure(conn, self.base)
                yield conn, None
        finally:
            self.server.drop_database(copy)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> Snapshot:
        """A full snapshot of the working database now."""
        return take_snapshot(self.conn)

    def current_state(self) -> tracking.State:
        """The schema (with roots) and data at the current position, read in full when not known."""
        if self.state is None:
            snapshot, roots = take_rooted_snapshot(self.conn)
            self.state = tracking.State(snapshot, roots, dict(self.data))
        return self.state

    def record_before(self, index: int) -> None:
        """Make sure the before-state of migration *index* is recorded."""
        step = self.steps[index]
        if step.before is None:
            prev = self.steps[index - 1] if index > 0 else None
            if prev is not None and prev.after is not None and self.position == index - 1:
                step.before = prev.after
            elif self.tracking_on:
                step.before = self.current_state().snapshot
            else:
                step.before = self.snapshot()
            step.before_data = self.data

    def require_position(self, item: Item) -> None:
        """Fail *item* unless the working database is at its migration (items run out of order)."""
        if self.position != item.index:
            raise ItemFailed(
                f"{item.id} ran after a later migration was applied; run the plan's items in order "
                "(pytest keeps them in order unless a plugin reorders them)"
            )

    def snapshot_at(self, index: int) -> Snapshot | None:
        """The schema after migration *index* (``-1``: before the first), when known.

        A migration let go (see :meth:`_release`) has its schema rebuilt from
        the last one kept whole before it and the changes since.
        """
        if index < 0:
            return self.steps[0].before if self.steps else None
        changes: list[Changes] = []
        at = index
        while at >= 0 and self.steps[at].after is None:
            delta = self.steps[at].after_delta
            if delta is None:
                return None  # not applied
            changes.append(delta)
            at -= 1
        base = self.steps[at].after if at >= 0 else self.steps[0].before
        if not changes or base is None:
            return base
        objects = dict(base.objects)
        for delta in reversed(changes):
            apply_object_changes(objects, delta)
        return Snapshot(objects=objects)

    def wants_atomic(self, index: int) -> bool:
        """Whether migration *index* gets an ``atomic`` item: rollbacks are asked for, and it has no usable down.

        Without a down (none, an empty one, or ``rollback: none``), the
        failure rehearsal is what is left to prove: the up, run in a
        transaction that is rolled back, leaves nothing behind.
        """
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        if migration.error is not None or migration.down_error is not None:
            return False
        return cfg.irreversible or (cfg.rollback and not migration.reversible)

    def trackable(self, index: int) -> bool:
        """Whether migration *index* can be applied and proved with incremental snapshots."""
        migration = self.migrations[index]
        return (
            self.tracking_on and migration.error is None and migration.transactional
            and trackable_statements(migration.statements)
        )

    # ------------------------------------------------------------------ stepping

    def advance(self, index: int) -> None:
        """Apply migrations up to and including *index* (each at most once)."""
        while self.position < index:
            nxt = self.position + 1
            self._apply(nxt)
            if not self.steps[nxt].applied and self.steps[nxt].apply_error is None:
                self._apply(nxt)  # a fall back to full snapshots replayed the history up to the one before
            error = self.steps[nxt].apply_error
            if error is not None:
                self.broken = (nxt, error)
                return
            self.position = nxt
            if nxt == len(self.migrations) - 1:
                self.selfcheck.verify_at_head()

    def await_ahead(self, index: int) -> None:
        """Land the message with the second up, down and up again of migration *index*, if it is in flight.

        When that message also applied the next migration, it is taken in
        (see :meth:`harness.rehearsal_pipeline.Pipeline.await_ahead`).
        """
        nxt = index + 1
        if self.pipeline.await_ahead(index) and nxt in self.pipeline.landed and self.broken is None:
            self._apply(nxt)

    def _apply(self, index: int) -> None:
        if self.steps[index].applied:
            return  # taken in early, from a message sent ahead
        if self.migrations[index].error is not None:  # the file cannot be run: its items fail, later ones skip
            self.steps[index].apply_error = self.migrations[index].error
            return
        if self.trackable(index):
            self._apply_tracked(index)
        else:
            self._apply_untracked(index)
            self.selfcheck.exact.add(index)
        self._release(index - 2)

    def _release(self, index: int) -> None:
        """Let go of what only the items of migration *index* use; they have all run by now.

        Called when the migration two later is applied.  Kept for every
        migration, the states and data made memory grow with the history
        times the schema.  The schema after the migration stays, for receipts
        and chain_rollback, as what differs from the schema before it; every
        ``CHECKPOINT``-th one stays whole, so that :meth:`snapshot_at`
        rebuilds any of them from a few changes.  Items run out of order fail
        with the usual "run the plan's items in order".
        """
        if index < 0:
            return
        step = self.steps[index]
        step.after_state = step.before_data = step.after_data = None
        step.again = step.down = step.reup = None
        step.batched = None
        before, after = step.before, step.after
        step.released = True
        if before is None or after is None:
            return  # never applied (the history broke before it): nothing to keep
        # A tracked up names the objects it may have changed; others are compared in full.
        step.after_delta = object_changes(before.objects, after.objects, step.up_keys if step.tracked else None)
        if index > 0:
            step.before = None  # the schema after the migration before, kept (or rebuilt) there
        if index % rehearsal_model.CHECKPOINT:
            step.after = None

    def _apply_untracked(self, index: int) -> None:
        migration = self.migrations[index]
        step = self.steps[index]
        self.sync_nodes()
        self.record_before(index)
        if self.measure and migration.batches:  # batch: the batched run needs the state before, first
            with self.scratch(False) as (copy, _start):
                step.batched = batched_run(copy, migration)
        if self.measure and self.wants_atomic(index) and migration.transactional and not step.failure_rehearsal_run:
            assert step.before is not None
            step.failure_rehearsal = failure_rehearsal(self.conn, migration, step.before)
            step.failure_rehearsal_run = True
        t0 = time.perf_counter()
        if migration.transactional:
            self.conn.execute("BEGIN")
            start = counters(self.conn)
            try:
                self._run_up(index)  # locks: measured when the locks item is on
            except StatementFailed as exc:
                self.conn.execute("ROLLBACK")
                step.apply_error = rehearsal_session.describe_apply_failure(exc, self.plan, self.base)
                return
            step.apply_seconds = time.perf_counter() - t0
            now, touched = touched_tables(self.conn, start, self.nodes)
            step.after, roots = take_rooted_snapshot(self.conn)
            assert step.before is not None
            # Tables whose rows read differently without a write (a column added or dropped).
            touched |= redefined_tables(diff_snapshots(step.before, step.after), now.nodes)
            data = {t: v for t, v in self.data.items() if t in now.nodes}
            if touched:
                data.update(table_fingerprints(self.conn, touched))
            self.conn.execute("COMMIT")
            self.data, self.nodes = data, now.nodes
            step.touched = frozenset(touched)
        else:
            try:
                self._run_up(index)  # locks: measured when the locks item is on
            except StatementFailed as exc:
                step.apply_error = rehearsal_session.describe_apply_failure(exc, self.plan, self.base)
                return
            step.apply_seconds = time.perf_counter() - t0
            step.after, roots = take_rooted_snapshot(self.conn)
            self.refresh_data()
            step.touched = frozenset(self.nodes)
        step.applied = True
        step.after_data = self.data
        self.state = tracking.State(step.after, roots, dict(self.data))

    def _apply_tracked(self, index: int) -> None:
        """Apply migration *index* in one message; send its second up, down and up again after it.

        Each run is measured by the tracking functions; the assertions judge
        the deltas later.  The follow-up message goes out without waiting
        for it (see :meth:`harness.rehearsal_pipeline.Pipeline.send`), with
        the next migration's apply when the items still to run need nothing
        from the working database.  When a message fails, the untracked path
        runs the statements one by one again and reports exactly what failed.
        """
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        step = self.steps[index]
        pipeline = self.pipeline
        state = self.current_state()
        if step.before is None:
            step.before, step.before_data = state.snapshot, dict(state.data)
        if pipeline.flight is not None and index not in pipeline.landed:
            pipeline.land()  # it may carry this apply (no item landed it: idempotent and rollback off, or deselected)
        delta = pipeline.landed.pop(index, None)  # applied by a message sent ahead
        if delta is not None:
            seconds = delta.seconds
        else:
            if self.measure and self.wants_atomic(index):
                step.failure_rehearsal = failure_rehearsal(self.conn, migration, step.before)
                step.failure_rehearsal_run = True
            measured = self.measure and cfg.locks.enabled and index > self.baseline
            try:
                if measured:  # locks: statement by statement, watching pg_locks
                    self.conn.execute(f"BEGIN; {tracking.mark_sql()}".encode(), prepare=False)  # type: ignore[call-overload]
                    t0 = time.perf_counter()
                    self._run_up(index)
                    seconds = time.perf_counter() - t0
                    (delta,) = pipeline.exchange(f"{self.selfcheck.changes_at(index)}; COMMIT")
                else:
                    (delta,) = pipeline.exchange(pipeline.apply_script(index))
                    seconds = delta.seconds
            except StatementFailed as exc:
                pipeline.recover()
                step.apply_error = rehearsal_session.describe_apply_failure(exc, self.plan, self.base)
                return
            except psycopg.Error:
                pipeline.recover()
                self._apply_untracked(index)
                return
        after, keys = tracking.advance(state, delta, check=self.track_mode == "verify")
        if delta.verify is not None:
            wrong = tracking.differences(after, delta)
            if wrong:
                self.selfcheck.fall_back(wrong, f"after {migration.id}")
                return  # the replay stopped before it: applied again, untracked, when the history gets there
            self.selfcheck.verified = index
            self.selfcheck.exact.add(index)
        self.selfcheck.tracked = True
        step.after, step.after_state, step.up_keys, step.tracked = after.snapshot, after, keys, True
        step.after_data = dict(after.data)
        step.touched = frozenset(after.tables[oid] for oid in delta.touched if oid in after.tables)
        step.apply_seconds = seconds
        step.applied = True
        self.state, self.data, self._nodes_stale = after, dict(after.data), True

        if pipeline.followed == index:
            pipeline.followed = None  # already sent, by Pipeline.await_ahead
        else:
            pipeline.send_follow_up(index)

    def _run_up(self, index: int) -> None:
        """Run migration *index*'s up statements; measure its locks when its ``locks`` item is on."""
        migration = self.migrations[index]
        if not self.measure or not self.configs[migration.id].locks.enabled or index <= self.baseline:
            run_statements(self.conn, migration.statements, migration.path)
            return
        step = self.steps[index]
        assert step.before is not None
        # The working database is at the state before the migration: its own
        # catalogs name the pre-existing tables and indexes (the before
        # snapshot's, read on the server in one statement).
        step.locks = run_measured(
            self.conn,
            migration.statements,
            migration.path,
            monitor=lambda: self.server.connect(self.dbname, autocommit=True),
            functions=self.tracking_on,  # installed with the tracking
        )

    def replay_in_full(self) -> None:
        """Replay the history up to the current position on a new working database, untracked, with full snapshots.

        Migrations a message sent ahead applied beyond the position are
        applied again later.  What the items of a migration already measured
        stays; its states are read again.
        """
        upto = self.position
        self.close()  # discards a message in flight, drops the working database
        self.started = True
        self._create()
        self.tracking_on, self.selfcheck.tracked, self.state = False, False, None
        self.pipeline.landed.clear()
        self.pipeline.followed = None
        self.refresh_data()
        for step in self.steps:
            kept = (step.failure_rehearsal, step.failure_rehearsal_run, step.apply_seconds, step.locks, step.batched)
            step.__init__()  # type: ignore[misc]
            (step.failure_rehearsal, step.failure_rehearsal_run, step.apply_seconds, step.locks, step.batched) = kept
        measure, self.measure = self.measure, False  # no lock measurement, batched or failure rehearsal again
        try:
            self.position = -1
            for i in range(upto + 1):
                self._apply_untracked(i)
                if self.steps[i].apply_error is not None:
                    raise HarnessError(
                        f"replaying the history with full snapshots, {self.migrations[i].id} failed where it "
                        f"applied before:\n{self.steps[i].apply_error}"
                    )
                self._release(i - 2)
                self.position = i
        finally:
            self.measure = measure
