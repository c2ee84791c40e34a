"""The rehearsal engine: prove every migration of a plan on a throwaway database.

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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pglast import visitors
from psycopg import generators, pq, sql

from . import bases
from . import lint as lint_mod
from . import tracking
from .batch import run_migration_batched
from .cache import (
    REPLAY_LIMIT, CacheError, CachedItem, ChainProof, Entry, PrefixCache, prefix_keys, restore, restore_roles,
)
from .checks import check_problem, check_summary
from .compat import breaking_changes, redefined_tables
from .desired_schema import schema_matches
from .errors import HarnessError
from .execute import StatementFailed, describe_pg_error, relpath, run_statements
from .layouts import supabase_folder
from .locks import LockReport, judge, run_measured
from .plan import Check, Plan
from .postgres import Server
from .receipt import write_receipt
from .redact import scrub
from .snapshot import (
    Change,
    SchemaDigest,
    Snapshot,
    diff_snapshots,
    format_changes,
    table_fingerprints,
    take_rooted_snapshot,
    take_snapshot,
)
from .sources import Migration, Statement, baseline_index, load_plan_migrations, parse_sql

__all__ = ["Item", "Outcome", "Rehearsal", "ASSERTIONS", "PASSED", "FAILED", "SKIPPED", "CACHED"]

# The column of the marker that ends each segment of a message sent ahead.
_SEGMENT = "harness.segment"
# Every _CHECKPOINT-th migration let go keeps its schema whole (Rehearsal._release).
_CHECKPOINT = 16
# Every _VERIFY_EVERY-th tracked apply, and the last, is compared with a full
# snapshot taken in the same transaction (Rehearsal._apply_tracked).
_VERIFY_EVERY = 32

log = logging.getLogger(__name__)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: Not run: an earlier rehearsal of the same prefix proved it (harness/cache.py); the message names its receipt.
CACHED = "cached"

#: Assertions in the order they run for each migration.
ASSERTIONS = (
    "baseline", "lint", "apply", "batch", "locks", "idempotent", "rollback", "atomic", "backward_compatible",
    "preserve_rows", "check",
)


@dataclass(frozen=True)
class Item:
    """One assertion about one migration: the unit a test report shows."""

    migration: Migration
    assertion: str
    index: int  # position of the migration in the plan's history
    check: Check | None = None
    plan_level: bool = False  # about the whole history (chain_rollback), not one migration

    @property
    def name(self) -> str:
        """The item's name within its migration, e.g. ``rollback`` or ``check[no null emails]``."""
        if self.check is not None:
            return f"check[{self.check.name}]"
        return self.assertion

    @property
    def id(self) -> str:
        """``<migration id>::<name>``, or just the name for a plan-level item."""
        return self.name if self.plan_level else f"{self.migration.id}::{self.name}"


@dataclass
class Outcome:
    """What running an item found."""

    status: str
    message: str = ""
    duration: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True unless the item failed."""
        return self.status != FAILED


class _Fail(Exception):
    """Internal: an assertion failed with a message for the reviewer."""


class _Mismatch(_Fail):
    """Internal: a state read in full differs from a recorded one (which may have been tracked)."""


@dataclass
class _Step:
    """What the engine knows about one migration of the working history."""

    before: Snapshot | None = None
    before_data: dict[str, tuple[int, str]] | None = None
    touched: frozenset[str] = frozenset()  # tables whose data or storage the up migration changed
    after: Snapshot | None = None
    after_data: dict[str, tuple[int, str]] | None = None
    applied: bool = False
    apply_error: str | None = None
    failure_rehearsal: str | None = None  # None = ok or not run; text = what remained
    failure_rehearsal_run: bool = False
    apply_seconds: float = 0.0
    locks: LockReport | None = None  # locks: measured while the up migration ran
    batched: _BatchedRun | None = None  # batch: the migration run in batches, on a copy of the state before
    # Tracked runs (see harness/tracking.py): the state after up, the objects
    # up changed, and what the second up, the down and the up after it changed.
    # The state, the data and the deltas serve only the migration's own items
    # and are let go when the migration two later is applied (Rehearsal._release).
    after_state: tracking.State | None = None
    tracked: bool = False  # up was applied by a tracked run
    up_keys: frozenset[str] = frozenset()
    again: tracking.Delta | None = None
    down: tracking.Delta | None = None
    reup: tracking.Delta | None = None
    # Once let go, a migration keeps its schema after as the objects that
    # differ from the schema before it (None: the object is gone), except at
    # every _CHECKPOINT-th migration (see Rehearsal.snapshot_at).
    released: bool = False
    after_delta: _Changes | None = None


@dataclass
class _BatchedRun:
    """batch: what running a migration in batches left on a copy of the working database."""

    snapshot: Snapshot | None = None
    data: dict[str, tuple[int, str]] = field(default_factory=dict)
    batches: int = 0
    rows: int = 0
    error: str | None = None


class Rehearsal:
    """Rehearse one plan on one server.  Use as a context manager."""

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
        self._measure = measure
        self.dbname = f"mh_rehearsal_{uuid.uuid4().hex[:10]}"
        # Most warm runs go on from the newest entry: its restore need not wait for the keys (see _resume).
        self._ahead: threading.Thread | None = None
        self._restored_ahead: Entry | None = None  # the entry whose archive the thread restored into dbname
        self._ahead_error: Exception | None = None  # the server did not start in the thread: raised where first needed
        if ahead and cache is not None:
            self._ahead = threading.Thread(target=self._restore_ahead, args=(cache,), name="harness-restore-ahead")
            self._ahead.start()
        try:
            # Layouts and substitutions: the plan says how to read its folder.
            self.migrations = list(migrations) if migrations is not None else load_plan_migrations(plan)
            plan.bind([(m.id, m.version) for m in self.migrations])
            # baseline: index of the last migration the plan's baseline covers (-1: none).
            self._baseline = baseline_index(self.migrations, getattr(plan, "baseline", None))
            self.configs = {m.id: plan.step_for(m.id, m.version) for m in self.migrations}
        except BaseException:
            self._drop_restored_ahead()
            raise
        self._conn: psycopg.Connection | None = None
        self._steps = [_Step() for _ in self.migrations]
        self._position = -1  # index of the last migration applied to the working database
        self._broken: tuple[int, str] | None = None  # (index, reason) of the first migration that failed
        self._seeded = bool(plan.rehearsal.seed)
        # A built-in base (harness/bases): loaded before the seed, so none of its objects is a migration's change.
        self._base = bases.base(base) if (base := getattr(plan.rehearsal, "base", None)) else None
        self._results: dict[str, Outcome] = {}
        self._started = False
        self._final: Snapshot | None = None
        # Data of every user table at the current position, kept up to date
        # incrementally: a migration can only change the tables PostgreSQL
        # reports as written (pg_stat_xact_user_tables) or rewritten (new
        # relfilenode) inside its transaction, so only those are re-read.
        self._data: dict[str, tuple[int, str]] = {}
        self._nodes: dict[str, int] = {}
        self._nodes_stale = False  # a tracked run moved on without reading the storage files
        # Incremental snapshots (harness/tracking.py): on unless HARNESS_SNAPSHOTS=full
        # or the rehearsal role cannot create event triggers.
        self._track_mode = tracking.mode()
        self._tracking = False
        self._state: tracking.State | None = None  # schema, roots and data at the current position
        self._tracked = False  # some state came from a delta: check the last one against a full snapshot
        self._flight: list[tuple[int, str]] | None = None  # segments of the message sent and not yet read
        self._landed: dict[int, tracking.Delta] = {}  # applies done by a message sent ahead
        self._followed: int | None = None  # migration whose follow-up message went out before its apply was taken in
        self._verified = -1  # last position whose tracked state equalled a full snapshot (or was read in full)
        self._exact = {-1}  # positions whose schema was read in full or compared with a full snapshot
        self._warned = False  # the warning that tracking was wrong is logged once
        # The rehearsed-prefix cache (harness/cache.py): items of the migrations restored from it are not run.
        self._cache = cache
        self._keys: list[str] | None = None
        self._cached: dict[str, CachedItem] = {}
        self._resumed: Entry | None = None  # the entry the rehearsal went on from
        self._replay_failed = False  # an entry's migrations applied again did not give its state: dump anew
        self._chain_data: dict[str, tuple[int, str]] | None = None  # data after the downs chain_rollback ran
        self._chain_clean = False  # chain_rollback passed without a warning
        self._chain_fresh = False  # chain_rollback runs every down, whatever the cache proved
        # Verdicts already reported that full snapshots overturn (item id, reported, full-mode outcome).
        self._overturned: list[tuple[str, Outcome, Outcome]] = []

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self) -> Server:
        """The rehearsal server, started on first use when a factory was given."""
        if self._ahead is not None and self._ahead is not threading.current_thread():
            self._ahead.join()  # it may be starting the server
            self._ahead = None
        if self._ahead_error is not None:
            error, self._ahead_error = self._ahead_error, None
            raise error
        if not isinstance(self._server, Server):
            self._server = self._server()
        return self._server

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._cache is not None and self._resume():
            return
        self.server.create_database(self.dbname)
        self._connect()
        self._load_seed()
        # After the seed: a seed dumped from a managed database may create the harness schema itself.
        if self._track_mode != "full":
            self._tracking = tracking.install(self.conn)
        self._refresh_data()

    def _load_seed(self) -> None:
        self._load_base()
        for seed in self.plan.rehearsal.seed:
            text = seed.read_text(encoding="utf-8")
            statements = parse_sql(text, seed, target_major=self.server.major)
            try:
                run_statements(self.conn, statements, seed)
            except StatementFailed as exc:
                raise HarnessError(f"the rehearsal seed failed to load: {exc}") from None

    def _load_base(self) -> None:
        """Load the plan's built-in base: the state before the first migration starts from it, like a seed."""
        if self._base is None:
            return
        statements = parse_sql(self._base.read(), self._base.path, target_major=self.server.major)
        try:
            run_statements(self.conn, statements, self._base.path)
        except StatementFailed as exc:
            raise HarnessError(f"the rehearsal base {self._base.name} failed to load: {exc}") from None
        setting = self._search_path()
        if setting is not None:
            # For every later session on this database, and for one that RESETs it.
            self.conn.execute(sql.SQL("ALTER DATABASE {} SET {}").format(sql.Identifier(self.dbname), setting))
            self.conn.execute(sql.SQL("SET {}").format(setting))

    def _search_path(self) -> sql.Composable | None:
        """``search_path = ...`` as the base wants it for sessions that run migrations, or ``None``."""
        if self._base is None or not self._base.search_path:
            return None
        return sql.SQL("search_path = {}").format(sql.SQL(", ").join(map(sql.Identifier, self._base.search_path)))

    def _refresh_data(self) -> None:
        """Read the data of every table (after the seed, or a non-transactional migration)."""
        self._nodes = _counters(self.conn).nodes
        self._nodes_stale = False
        self._data = table_fingerprints(self.conn, self._nodes) if self._nodes else {}

    def _sync_nodes(self) -> None:
        """Make ``_nodes`` current again after tracked runs (the untracked paths compare against it)."""
        if self._nodes_stale:
            self._nodes = _counters(self.conn).nodes
            self._nodes_stale = False

    def _connect(self) -> None:
        self._conn = self.server.connect(self.dbname, autocommit=True)
        # psycopg drops every prepared statement of a connection after a
        # ROLLBACK once it prepared any of its own; the snapshot query stays
        # prepared only if psycopg prepares nothing itself.
        self._conn.prepare_threshold = None
        self._conn.execute("SET client_min_messages = warning")
        setting = self._search_path()
        if setting is not None:  # a database restored or copied has lost its settings
            self._conn.execute(sql.SQL("SET {}").format(setting))

    @property
    def conn(self) -> psycopg.Connection:
        """The autocommit connection to the working database (after landing a message in flight)."""
        if self._flight is not None:
            self._land()
        return self._raw

    @property
    def _raw(self) -> psycopg.Connection:
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Drop the working database (best effort; never hides an earlier error)."""
        self._drop_restored_ahead()
        self._flight = None  # closing the connection discards any results still coming
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._started:
            try:
                self.server.drop_database(self.dbname)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.warning("could not drop rehearsal database %s: %s", self.dbname, exc)
            self._started = False

    # ------------------------------------------------------------------ cached prefix (harness/cache.py)

    @property
    def cache_warnings(self) -> list[str]:
        """Why a cache entry was not used or not written (the rehearsal went on without it)."""
        return list(self._cache.warnings) if self._cache is not None else []

    @property
    def cached_migrations(self) -> int:
        """How many migrations were restored from the cache instead of being rehearsed again."""
        return self._position + 1 if self._resumed is not None else 0

    def _replayable(self, index: int) -> bool:
        """Whether migration *index* can be applied again after an entry's archive as the rehearsal applied it."""
        migration = self.migrations[index]
        return index > self._baseline and migration.error is None and migration.transactional

    def _prefix_keys(self) -> list[str]:
        if self._keys is None:
            self._keys = prefix_keys(self.plan, self.migrations, self.configs, self.server.version)
        return self._keys

    def _restore_ahead(self, cache: PrefixCache) -> None:
        """In a thread: start the server and restore the newest entry's archive into the working database."""
        try:
            entry = cache.latest()
            if entry is None:
                return
            try:
                server = self.server
            except Exception as exc:  # noqa: BLE001 - not started twice: raised again where it is first needed
                self._ahead_error = exc
                return
            restore(server, self.dbname, entry)
            self._restored_ahead = entry
        except Exception as exc:  # noqa: BLE001 - a guess: _resume restores, and reports, what it finds
            log.debug("no restore ahead of the cache keys: %s", exc)
            if isinstance(self._server, Server):
                with contextlib.suppress(Exception):
                    self._server.drop_database(self.dbname)

    def _drop_restored_ahead(self) -> None:
        """Wait for the restore ahead of the keys; drop what it restored unless it was taken (best effort)."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None
        if self._restored_ahead is not None:
            self._restored_ahead = None
            try:
                self.server.drop_database(self.dbname)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.warning("could not drop rehearsal database %s: %s", self.dbname, exc)

    def _resume(self) -> bool:
        """Restore the longest rehearsed prefix the cache holds, check it, and go on from there.

        The restored database must equal, in a full snapshot and the data of
        every table, the state the entry recorded; otherwise the entry is
        discarded with a warning and the rehearsal starts from the beginning.
        """
        assert self._cache is not None
        keys = self._prefix_keys()  # starts the server: after the restore ahead, if any
        ahead, self._restored_ahead = self._restored_ahead, None
        # An entry whose migrations applied again miss its state may share its archive with a shorter one.
        for _attempt in range(2):
            entry = self._cache.find(keys, known=ahead)
            if entry is None:
                break
            # The database holds that entry's archive if the guess restored the same one (by its hash).
            restored = ahead is not None and ahead.dump_sha256 == entry.dump_sha256
            if ahead is not None and not restored:
                self.server.drop_database(self.dbname)
            ahead = None
            if self._resume_from(entry, restored=restored):
                return True
        if ahead is not None:
            self.server.drop_database(self.dbname)
        return False

    def _resume_from(self, entry: Entry, *, restored: bool = False) -> bool:
        assert self._cache is not None
        last = entry.length - 1
        wanted = {i.id for i in self.items() if not i.plan_level and i.index <= last}
        try:
            if set(entry.items) != wanted or any(i.status != PASSED for i in entry.items.values()):
                raise CacheError("its items are not those of these migrations, or not all of them passed")
            if restored:
                restore_roles(self.server, entry)  # those of the entry found, if the one guessed named fewer
            else:
                restore(self.server, self.dbname, entry)
            self._connect()
            kept, expected = entry.schemas(_CHECKPOINT)
            self._drop_event_triggers()
            for index in entry.replayed:
                self._replay(index)
            snapshot, roots = take_rooted_snapshot(self.conn)
            self._refresh_data()
            changes = diff_snapshots(expected, snapshot)
            if changes:
                self._replay_failed = bool(entry.replayed)
                raise CacheError(f"the restored schema differs from the recorded one:\n{format_changes(changes)}")
            if self._data != entry.data:
                self._replay_failed = bool(entry.replayed)
                raise CacheError(f"the restored data differs from the recorded data:\n{_data_changes(entry.data, self._data)}")
            if self._track_mode != "full":
                self._tracking = tracking.install(self.conn)
        except (CacheError, psycopg.Error, HarnessError) as exc:
            self._cache.warn(
                f"the cached rehearsal of the first {entry.length} migrations ({entry.path}) cannot be used and is "
                f"discarded: {scrub(str(exc))[:2000]}. Rehearsing its migrations without it."
            )
            self._cache.discard(entry.path)
            self.close()  # drops the database restored so far
            self._started = True
            self._tracking, self._data, self._nodes = False, {}, {}
            return False
        self._state = tracking.State(snapshot, roots, dict(self._data))
        self._steps[0].before = entry.base
        for index in range(entry.length):
            step = self._steps[index]
            step.applied = step.released = step.tracked = True
            step.after_delta = entry.changes[index]
            # What differs from the schema before: all that chain_rollback needs to compare.
            step.up_keys = frozenset(entry.changes[index])
            step.after = kept[index]
        self._steps[last].after = snapshot
        self._position = self._verified = last
        self._exact = {-1, last}
        self._cached = {item_id: entry.items[item_id] for item_id in wanted}
        self._resumed = entry
        log.info("rehearsal of plan %s goes on after %s, restored from the cache%s", self.plan.name,
                 self.migrations[last].id, " (while the folder loaded)" if restored else "")
        return True

    def _replay(self, index: int) -> None:
        """Apply migration *index* again after an entry's archive, in one transaction, as the rehearsal did."""
        migration = self.migrations[index]
        if not self._replayable(index):
            raise CacheError(f"{migration.id} cannot be applied again as the rehearsal applied it")
        self.conn.execute("BEGIN")
        try:
            run_statements(self.conn, migration.statements, migration.path)
        except StatementFailed as exc:
            self.conn.execute("ROLLBACK")
            self._replay_failed = True
            raise CacheError(f"{migration.id} does not apply again after the archive: {exc}") from None
        self.conn.execute("COMMIT")

    def _drop_event_triggers(self) -> None:
        """Remove the tracking's event triggers a restored archive brought (installed again when tracking is on)."""
        names = [r[0] for r in self.conn.execute(
            "SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s)",
            (["harness_track_ddl", "harness_track_drop", "harness_track_links"],),
        ).fetchall()]
        for name in names:
            self.conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(name)))

    def save_cache(self, receipt: Path) -> Path | None:
        """After a green rehearsal that wrote *receipt*, cache the rehearsed history; return the entry's path.

        Only when every item ran and passed (or was itself cached) and the
        whole history applied; a failure to write is a warning, never an error.
        """
        if self._cache is None or not self.migrations or self._broken is not None:
            return None
        if self._position != len(self.migrations) - 1:
            return None
        items = self.items()
        outcomes = [self._results.get(item.id) for item in items]
        if any(o is None or o.status not in (PASSED, CACHED) for o in outcomes):
            return None
        key = self._prefix_keys()[-1]
        resumed = self._resumed
        if resumed is not None and key == resumed.key:
            return None  # the whole history came from this entry: nothing new to keep
        # Share the archive restored when the migrations since it can be applied again, and are few.
        shared = resumed is not None and not self._replay_failed and all(
            self._replayable(i) for i in range(resumed.archive_length, len(self.migrations))
        ) and len(self.migrations) - resumed.archive_length <= REPLAY_LIMIT
        try:
            proof = hashlib.sha256(receipt.read_bytes()).hexdigest()
            verdicts = []
            for item, outcome in zip(items, outcomes):
                assert outcome is not None
                if item.plan_level:
                    continue  # chain_rollback and schema_matches are about the whole history: always run
                cached = self._cached.get(item.id)
                verdicts.append(cached if cached is not None else CachedItem(item.id, PASSED, outcome.message, proof))
            base = self.snapshot_at(-1)
            assert base is not None
            objects = dict(base.objects)
            changes: list[dict[str, Mapping[str, Any] | None]] = []
            for step in self._steps:
                delta = step.after_delta
                if delta is None:  # not let go yet: compared in full
                    assert step.after is not None
                    delta = _object_changes(objects, step.after.objects)
                _apply_object_changes(objects, delta)
                changes.append(delta)
            if self._flight is not None:
                self._land()  # the database must be idle, at head, when it is dumped
            chain = self._results.get("chain_rollback")
            return self._cache.save(
                server=self.server, dbname=self.dbname, key=key, base=base, changes=changes, data=self._data,
                items=verdicts, archive=resumed if shared else None,
                chain=ChainProof(tuple(chain.details["chain"]), proof)
                if chain is not None and chain.status == PASSED and self._chain_clean else None,
            )
        except (CacheError, OSError, psycopg.Error) as exc:
            self._cache.warn(f"could not write the rehearsal cache: {scrub(str(exc))[:1000]}")
            return None

    # ------------------------------------------------------------------ items

    def items(self) -> list[Item]:
        """Every item of the plan, in migration order then assertion order."""
        items: list[Item] = []
        # baseline: one item applies every migration up to the baseline; they get no other item.
        if self._baseline >= 0:
            items.append(Item(self.migrations[self._baseline], "baseline", self._baseline))
        for index, migration in enumerate(self.migrations):
            if index <= self._baseline:
                continue
            cfg = self.configs[migration.id]
            if cfg.lint:
                items.append(Item(migration, "lint", index))
            items.append(Item(migration, "apply", index))
            if migration.batches:  # batch: batched statements must give what one statement gives
                items.append(Item(migration, "batch", index))
            if cfg.locks.enabled:
                items.append(Item(migration, "locks", index))
            if cfg.idempotent:
                items.append(Item(migration, "idempotent", index))
            if cfg.rollback or cfg.irreversible:
                items.append(Item(migration, "rollback", index))
            if self._wants_atomic(index):
                items.append(Item(migration, "atomic", index))
            if cfg.backward_compatible.enabled:
                items.append(Item(migration, "backward_compatible", index))
            if self._seeded and cfg.preserve_rows:
                items.append(Item(migration, "preserve_rows", index))
            for check in cfg.checks:
                items.append(Item(migration, "check", index, check))
            if migration.verify_sql is not None:  # sqitch verify: passes when the script runs without error
                verify = Check(name="sqitch verify", sql=f"{migration.verify_sql}\n;\nSELECT true")
                items.append(Item(migration, "check", index, verify))
        if self.migrations and getattr(self.plan, "schema_matches", False):
            last = len(self.migrations) - 1
            items.append(Item(self.migrations[last], "schema_matches", last, plan_level=True))
        if (
            self.migrations
            and len(self.migrations) - 1 > self._baseline
            and self.migrations[-1].has_down
            and not self.configs[self.migrations[-1].id].irreversible
            and self._chain_enabled()
        ):
            last = len(self.migrations) - 1
            items.append(Item(self.migrations[last], "chain_rollback", last, plan_level=True))
        return items

    def _wants_atomic(self, index: int) -> bool:
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

    def _chain_enabled(self) -> bool:
        setting = getattr(self.plan, "chain_rollback", None)
        if setting is None:
            # On by default when the plan asks for rollbacks at all.
            return any(self.configs[m.id].rollback for m in self.migrations)
        return bool(setting)

    def run(self, item: Item) -> Outcome:
        """Run *item* and return its outcome (never raises for a failed assertion)."""
        t0 = time.perf_counter()
        try:
            outcome = self._run(item)
        except _Fail as exc:
            outcome = Outcome(FAILED, scrub(str(exc)))
        except StatementFailed as exc:
            outcome = Outcome(FAILED, scrub(str(exc)))
        if self._overturned:
            # A verdict reported earlier rested on a tracked state that turned out wrong, and full snapshots
            # judge it otherwise: it cannot be taken back, so the item running now carries the failure.
            lines = [f"  {i}: reported {was.status}, with full snapshots {now.status}: {now.message}"
                     for i, was, now in self._overturned]
            self._overturned = []
            outcome = Outcome(FAILED, "verdicts reported earlier were wrong (the rehearsal's incremental snapshot "
                              "was wrong and full snapshots judge them otherwise):\n" + "\n".join(lines)
                              + (f"\nThis item: {outcome.status} {outcome.message}" if outcome.message else ""))
        outcome.duration = time.perf_counter() - t0
        self._results[item.id] = outcome
        return outcome

    def _run(self, item: Item) -> Outcome:
        self._start()
        cached = self._cached.get(item.id)
        if cached is not None:
            return Outcome(CACHED, cached.reason, details={"receipt": cached.receipt, "verdict": cached.message})
        if self._broken and self._broken[0] < item.index and item.assertion != "lint":
            index, _reason = self._broken
            return Outcome(SKIPPED, f"depends on {self.migrations[index].id}, which failed to apply")
        if item.assertion == "baseline":  # baseline: apply the baseline migrations, assert nothing else
            self._advance(item.index)
            if self._broken and self._broken[0] <= item.index:
                failed = self.migrations[self._broken[0]].id
                return Outcome(FAILED, f"baseline migration {failed} failed to apply:\n{self._broken[1]}")
            return Outcome(PASSED, f"applied {item.index + 1} baseline migrations, up to {item.migration.id}")
        if item.assertion == "lint":
            return self._lint(item)
        self._advance(item.index)
        step = self._steps[item.index]
        if step.released and not item.plan_level:
            self._require_position(item)
        if step.apply_error is not None:
            if item.assertion == "apply":
                return Outcome(FAILED, step.apply_error)
            return Outcome(SKIPPED, f"{item.migration.id} failed to apply")
        handler = {
            "apply": self._apply_item,
            "locks": self._locks,
            "batch": self._batch,
            "idempotent": self._idempotent,
            "rollback": self._rollback,
            "atomic": self._atomic,
            "backward_compatible": self._compat,
            "preserve_rows": self._preserve_rows,
            "check": self._check,
            "chain_rollback": self._chain_rollback,
            "schema_matches": self._schema_matches,
        }[item.assertion]
        return handler(item)

    # ------------------------------------------------------------------ state

    def _snapshot(self) -> Snapshot:
        return take_snapshot(self.conn)

    def _current_state(self) -> tracking.State:
        """The schema (with roots) and data at the current position, read in full when not known."""
        if self._state is None:
            snapshot, roots = take_rooted_snapshot(self.conn)
            self._state = tracking.State(snapshot, roots, dict(self._data))
        return self._state

    def _before(self, index: int) -> None:
        """Make sure the before-state of migration *index* is recorded."""
        step = self._steps[index]
        if step.before is None:
            prev = self._steps[index - 1] if index > 0 else None
            if prev is not None and prev.after is not None and self._position == index - 1:
                step.before = prev.after
            elif self._tracking:
                step.before = self._current_state().snapshot
            else:
                step.before = self._snapshot()
            step.before_data = self._data

    def _advance(self, index: int) -> None:
        """Apply migrations up to and including *index* (each at most once)."""
        while self._position < index:
            nxt = self._position + 1
            self._apply(nxt)
            if not self._steps[nxt].applied and self._steps[nxt].apply_error is None:
                self._apply(nxt)  # a fall back to full snapshots replayed the history up to the one before
            error = self._steps[nxt].apply_error
            if error is not None:
                self._broken = (nxt, error)
                return
            self._position = nxt
            if nxt == len(self.migrations) - 1:
                self._verify_tracking()

    def _verify_tracking(self) -> None:
        """At head, the schema built from deltas must equal a full snapshot; if not, go on in full mode.

        Usually the head's own apply was compared in its transaction
        (:meth:`_apply_tracked`) and there is nothing left to do.
        """
        final = self._steps[-1].after
        if not self._tracked or final is None or self._verified >= len(self.migrations) - 1:
            return
        self._tracked = False
        changes = diff_snapshots(take_snapshot(self.conn), final)
        if changes:
            self._fall_back(changes, "at head")
        else:
            self._verified = len(self.migrations) - 1

    # ------------------------------------------------------------ self-check of the tracking

    def _checkpoint(self, index: int) -> bool:
        """Whether the apply of migration *index* is compared with a full snapshot in its own transaction."""
        return index == len(self.migrations) - 1 or (index + 1) % _VERIFY_EVERY == 0

    def _changes_at(self, index: int) -> str:
        """The statement that ends the measurement of migration *index*'s apply."""
        if self._track_mode != "verify" and self._checkpoint(index):
            return tracking.changes_sql(verify=True)
        return self._changes

    def _warn(self, changes: Sequence[Change], where: str) -> None:
        if self._warned:
            return
        self._warned = True
        names = sorted({f"{c.object_type} {c.object}" for c in changes})
        log.warning(
            "the rehearsal's incremental snapshot differed from a full one %s (%s); the rehearsal goes on with "
            "full snapshots, and its verdicts are those of HARNESS_SNAPSHOTS=full. Please report this "
            "(a migration changed the catalogs without a DDL command, or a bug in migration-harness):\n%s",
            where, ", ".join(names[:20]) + (", ..." if len(names) > 20 else ""), format_changes(changes),
        )

    def _fall_back(self, changes: Sequence[Change], where: str) -> None:
        """The tracked state was wrong: warn once, rebuild every state in full, and go on untracked.

        The verdicts reported since the last verified position may rest on the
        wrong state: they are judged again with full snapshots, and any that
        differs is reported by the item running now (:meth:`run`).
        """
        self._warn(changes, where)
        verified = self._verified
        self._rebuild(track=False)
        self._rejudge(verified + 1, self._position)

    def _rejudge(self, first: int, last: int) -> None:
        """Judge again, on a rehearsal of its own with full snapshots, the reported items of migrations *first*..*last*."""
        reported = {item.id: item for item in self.items() if first <= item.index <= last and not item.plan_level
                    and item.id in self._results and item.assertion != "lint"}
        if not reported:
            return
        with Rehearsal(self.plan, self.server, migrations=self.migrations, measure=self._measure) as again:
            again._track_mode = "full"
            for item in again.items():
                if item.plan_level or item.index > last:
                    continue
                outcome = again.run(item)
                was = self._results.get(item.id)
                if item.id in reported and was is not None and was.status != outcome.status:
                    self._overturned.append((item.id, was, outcome))

    def _rebuild(self, *, track: bool) -> list[Change]:
        """Replay the history up to the current position on a new working database, with full snapshots.

        Every state up to the position is then exact; migrations a message
        sent ahead applied beyond it are applied again later.  With *track*,
        the tracking goes on afterwards unless a replayed state differs from
        the one tracked.  Returns those differences (tracked → replayed).
        """
        upto = self._position
        known = {i: self.snapshot_at(i) for i in range(upto + 1) if i not in self._exact}
        self.close()  # discards a message in flight, drops the working database
        self._started = True
        self.server.create_database(self.dbname)
        self._connect()
        self._load_seed()
        self._tracking, self._tracked, self._state = False, False, None
        self._landed.clear()
        self._followed = None
        self._refresh_data()
        for step in self._steps:
            # What the items of a migration already measured stays; its states are read again.
            kept = (step.failure_rehearsal, step.failure_rehearsal_run, step.apply_seconds, step.locks, step.batched)
            step.__init__()  # type: ignore[misc]
            (step.failure_rehearsal, step.failure_rehearsal_run, step.apply_seconds, step.locks, step.batched) = kept
        measure, self._measure = self._measure, False  # no lock measurement, batched or failure rehearsal again
        try:
            self._position = -1
            for i in range(upto + 1):
                self._apply_untracked(i)
                if self._steps[i].apply_error is not None:
                    raise HarnessError(
                        f"replaying the history with full snapshots, {self.migrations[i].id} failed where it "
                        f"applied before:\n{self._steps[i].apply_error}"
                    )
                self._release(i - 2)
                self._position = i
        finally:
            self._measure = measure
        self._verified = upto
        self._exact = set(range(-1, upto + 1))
        differ: list[Change] = []
        for i, before in known.items():
            replayed = self.snapshot_at(i)
            if before is not None and replayed is not None:
                differ = diff_snapshots(replayed, before)
                if differ:
                    break
        if track and not differ and self._track_mode != "full":
            self._tracking = tracking.install(self.conn)
        elif differ:
            self._warn(differ, f"after {self.migrations[i].id}")
        return differ

    def _physically_ahead(self) -> bool:
        """Whether a message sent ahead applied a migration beyond the current position."""
        if self._flight is not None:
            self._land()
        return bool(self._landed) or any(s.applied for s in self._steps[self._position + 1:])

    def _confirm(self, index: int, base: tracking.State, parts: Sequence[str], needs: Iterable[int]) -> bool:
        """Before a tracked judgement of migration *index* is reported as a failure: were its states right?

        When the states it was compared with (positions *needs*; its own
        is checked here) were read in full or compared with a full snapshot,
        and the working database is still there, the measurements
        (*parts*, from *base*) run again, each compared with a full snapshot
        taken in the same transaction.  Otherwise the history is replayed
        with full snapshots.  ``True``: the tracked states were right and the
        failure stands; ``False``: judge again untracked (full snapshots).
        """
        if any(i not in self._exact for i in needs) or self._physically_ahead():
            verified = self._verified
            if self._rebuild(track=True):
                # The replay found tracked states wrong: verdicts reported since may rest on them.
                self._rejudge(verified + 1, self._position)
            return False
        verify = tracking.changes_sql(verify=True)
        mark = tracking.mark_sql()
        script = "; ".join(["BEGIN", mark, verify] + [f"{mark}; {part}; {verify}" for part in parts] + ["ROLLBACK"])
        try:
            deltas = self._exchange(script)
        except psycopg.Error:
            self._recover()
            self._rebuild(track=False)
            return False
        found = tracking.differences(base, deltas[0])
        state = base
        for delta in deltas[1:]:
            if found:
                break
            state, _keys = tracking.advance(state, delta, check=False)
            found = tracking.differences(state, delta)
        if found:
            self._fall_back(found, f"judging {self.migrations[index].id}")
            return False
        return True

    def _exact_or_replayed(self, positions: Iterable[int]) -> bool:
        """Before an untracked judgement that compared full snapshots with recorded states fails: were those exact?

        ``True`` when the states at *positions* were read in full or compared
        with a full snapshot, and the failure stands.  Otherwise they may be
        tracked ones: the history is replayed with full snapshots (a wrong
        one warns and stops the tracking, see :meth:`_rebuild`), and
        ``False`` says to judge again.
        """
        if all(i in self._exact for i in positions):
            return True
        verified = self._verified
        if self._rebuild(track=True):
            self._rejudge(verified + 1, self._position)  # verdicts reported on the wrong states
        return False

    def _apply(self, index: int) -> None:
        if self._steps[index].applied:
            return  # taken in early, from a message sent ahead
        if self.migrations[index].error is not None:  # the file cannot be run: its items fail, later ones skip
            self._steps[index].apply_error = self.migrations[index].error
            return
        if self._trackable(index):
            self._apply_tracked(index)
        else:
            self._apply_untracked(index)
            self._exact.add(index)
        self._release(index - 2)

    def _apply_failure(self, exc: StatementFailed) -> str:
        """A migration's apply failure as reported, with advice when a missing platform object or extension explains it."""
        layout = self.plan.layout
        supabase = layout == "supabase" or (layout == "auto" and supabase_folder(self.plan.migrations_dir))
        base = self._base.name if self._base is not None else None
        hint = bases.advice(exc.failure.error, base_name=base, supabase_project=supabase)
        message = scrub(str(exc))
        return f"{message}\n    advice: {hint}" if hint else message

    def _release(self, index: int) -> None:
        """Let go of what only the items of migration *index* use; they have all run by now.

        Called when the migration two later is applied.  Kept for every
        migration, the states and data made memory grow with the history
        times the schema (0.31 MB a migration with a seed of 500 partitions;
        0.145 MB with only the snapshots kept).  The schema after the
        migration stays, for receipts and chain_rollback, as what differs
        from the schema before it; every ``_CHECKPOINT``-th one stays whole,
        so that :meth:`snapshot_at` rebuilds any of them from a few changes.
        Items run out of order fail with the usual "run the plan's items in
        order".
        """
        if index < 0:
            return
        step = self._steps[index]
        step.after_state = step.before_data = step.after_data = None
        step.again = step.down = step.reup = None
        step.batched = None
        before, after = step.before, step.after
        step.released = True
        if before is None or after is None:
            return  # never applied (the history broke before it): nothing to keep
        # A tracked up names the objects it may have changed; others are compared in full.
        step.after_delta = _object_changes(before.objects, after.objects, step.up_keys if step.tracked else None)
        if index > 0:
            step.before = None  # the schema after the migration before, kept (or rebuilt) there
        if index % _CHECKPOINT:
            step.after = None

    def _apply_untracked(self, index: int) -> None:
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        step = self._steps[index]
        self._sync_nodes()
        self._before(index)
        if self._measure and migration.batches:  # batch: the batched run needs the state before, first
            step.batched = self._batched_run(migration)
        if self._measure and self._wants_atomic(index) and migration.transactional and not step.failure_rehearsal_run:
            step.failure_rehearsal = self._failure_rehearsal(migration, step)
            step.failure_rehearsal_run = True
        t0 = time.perf_counter()
        if migration.transactional:
            self.conn.execute("BEGIN")
            start = _counters(self.conn)
            try:
                self._run_up(index)  # locks: measured when the locks item is on
            except StatementFailed as exc:
                self.conn.execute("ROLLBACK")
                step.apply_error = self._apply_failure(exc)
                return
            step.apply_seconds = time.perf_counter() - t0
            now, touched = _touched(self.conn, start, self._nodes)
            step.after, roots = take_rooted_snapshot(self.conn)
            assert step.before is not None
            # Tables whose rows read differently without a write (a column added or dropped).
            touched |= redefined_tables(diff_snapshots(step.before, step.after), now.nodes)
            data = {t: v for t, v in self._data.items() if t in now.nodes}
            if touched:
                data.update(table_fingerprints(self.conn, touched))
            self.conn.execute("COMMIT")
            self._data, self._nodes = data, now.nodes
            step.touched = frozenset(touched)
        else:
            try:
                self._run_up(index)  # locks: measured when the locks item is on
            except StatementFailed as exc:
                step.apply_error = self._apply_failure(exc)
                return
            step.apply_seconds = time.perf_counter() - t0
            step.after, roots = take_rooted_snapshot(self.conn)
            self._refresh_data()
            step.touched = frozenset(self._nodes)
        step.applied = True
        step.after_data = self._data
        self._state = tracking.State(step.after, roots, dict(self._data))

    # ---------------------------------------------------------------- tracked runs (harness/tracking.py)

    def _trackable(self, index: int) -> bool:
        """Whether migration *index* can be applied and proved with incremental snapshots."""
        migration = self.migrations[index]
        return (
            self._tracking and migration.error is None and migration.transactional
            and _trackable_statements(migration.statements)
        )

    def _exchange(self, script: str) -> list[tracking.Delta]:
        """Send *script* (several statements, one message) and return its deltas in order."""
        cur = self.conn.cursor()
        # Migration text is trusted SQL, sent as written.
        cur.execute(script.encode(self.conn.info.encoding), prepare=False)  # type: ignore[call-overload]
        deltas = []
        column = tracking.DELTA_COLUMN.encode()
        while True:
            # The raw results: one column named DELTA_COLUMN, one text value.
            result = cur.pgresult
            if result is not None and result.status == pq.ExecStatus.TUPLES_OK and result.fname(0) == column:
                value = result.get_value(0, 0)
                assert value is not None
                deltas.append(tracking.parse_delta(bytes(value).decode()))
            if not cur.nextset():
                return deltas

    def _recover(self) -> None:
        """Leave a transaction that a failed message left open."""
        if self.conn.info.transaction_status != pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")

    def _apply_tracked(self, index: int) -> None:
        """Apply migration *index* in one message; send its second up, down and up again after it.

        Each run is measured by the tracking functions; the assertions judge
        the deltas later.  The follow-up message goes out without waiting
        for it (see :meth:`_send`), with the next migration's apply when the
        items still to run need nothing from the working database.  When a
        message fails, the untracked path runs the statements one by one
        again and reports exactly what failed.
        """
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        step = self._steps[index]
        state = self._current_state()
        if step.before is None:
            step.before, step.before_data = state.snapshot, dict(state.data)
        if self._flight is not None and index not in self._landed:
            self._land()  # it may carry this apply (no item landed it: idempotent and rollback off, or deselected)
        delta = self._landed.pop(index, None)  # applied by a message sent ahead
        if delta is not None:
            seconds = delta.seconds
        else:
            if self._measure and self._wants_atomic(index):
                step.failure_rehearsal = self._failure_rehearsal(migration, step)
                step.failure_rehearsal_run = True
            measured = self._measure and cfg.locks.enabled and index > self._baseline
            try:
                if measured:  # locks: statement by statement, watching pg_locks
                    self.conn.execute(f"BEGIN; {tracking.mark_sql()}".encode(), prepare=False)  # type: ignore[call-overload]
                    t0 = time.perf_counter()
                    self._run_up(index)
                    seconds = time.perf_counter() - t0
                    (delta,) = self._exchange(f"{self._changes_at(index)}; COMMIT")
                else:
                    (delta,) = self._exchange(self._apply_script(index))
                    seconds = delta.seconds
            except StatementFailed as exc:
                self._recover()
                step.apply_error = self._apply_failure(exc)
                return
            except psycopg.Error:
                self._recover()
                self._apply_untracked(index)
                return
        after, keys = tracking.advance(state, delta, check=self._track_mode == "verify")
        if delta.verify is not None:
            wrong = tracking.differences(after, delta)
            if wrong:
                self._fall_back(wrong, f"after {migration.id}")
                return  # the replay stopped before it: applied again, untracked, when the history gets there
            self._verified = index
            self._exact.add(index)
        self._tracked = True
        step.after, step.after_state, step.up_keys, step.tracked = after.snapshot, after, keys, True
        step.after_data = dict(after.data)
        step.touched = frozenset(after.tables[oid] for oid in delta.touched if oid in after.tables)
        step.apply_seconds = seconds
        step.applied = True
        self._state, self._data, self._nodes_stale = after, dict(after.data), True

        if self._followed == index:
            self._followed = None  # already sent, by _await_ahead
        else:
            self._send_follow_up(index)

    def _send_follow_up(self, index: int) -> None:
        """Send the second up, down and up again of migration *index* (applied), with the next apply when it may go."""
        segments: list[tuple[int, str, str]] = []
        ahead = self._ahead_script(index)
        if ahead is not None:
            segments.append((index, "ahead", ahead))
        nxt = index + 1
        if nxt < len(self.migrations) and self._streamable(index) and self._apply_streamable(nxt):
            segments.append((nxt, "apply", self._apply_script(nxt)))
        if segments:
            self._send(segments)

    @functools.cached_property
    def _changes(self) -> str:
        """The statement that ends a measurement (the mode does not change during a rehearsal)."""
        return tracking.changes_sql(verify=self._track_mode == "verify")

    def _apply_script(self, index: int) -> str:
        migration = self.migrations[index]
        return f"BEGIN; {tracking.mark_sql()}; {_script(migration.statements)}; {self._changes_at(index)}; COMMIT"

    def _ahead_parts(self, index: int) -> tuple[bool, bool]:
        """Whether migration *index* gets a tracked second up, and a tracked down and up again."""
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        # Only where items will judge them: not for a schema-only rehearsal, nor inside the baseline.
        ahead = self._measure and index > self._baseline
        down = migration.down_statements
        return (
            ahead and cfg.idempotent,
            ahead and cfg.rollback and migration.reversible and down is not None and migration.down_transactional
            and _tool_refusal(migration, "down") is None and _trackable_statements(down),
        )

    def _ahead_script(self, index: int) -> str | None:
        """The second up, down and up again of migration *index*, each in a rolled-back transaction."""
        migration = self.migrations[index]
        again, down = self._ahead_parts(index)
        mark, up, changes = tracking.mark_sql(), _script(migration.statements), self._changes
        parts = []
        if again:
            parts.append(f"BEGIN; {mark}; {up}; {changes}; ROLLBACK")
        if down:
            assert migration.down_statements is not None
            parts.append(
                f"BEGIN; {mark}; {_script(migration.down_statements)}; {changes}; {mark}; {up}; {changes}; ROLLBACK"
            )
        return "; ".join(parts) if parts else None

    def _streamable(self, index: int) -> bool:
        """Whether the items of migration *index* need nothing from the working database at its position.

        Then the next migration may be applied before they run.
        """
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        if cfg.checks or migration.verify_sql is not None:
            return False
        if cfg.backward_compatible.enabled and cfg.backward_compatible.queries:
            return False
        _again, down = self._ahead_parts(index)
        return not (cfg.rollback and migration.reversible and not down)

    def _apply_streamable(self, index: int) -> bool:
        """Whether migration *index* can be applied by a message sent ahead (no lock measurement, no failure rehearsal)."""
        migration = self.migrations[index]
        cfg = self.configs[migration.id]
        return (
            self._measure and index > self._baseline and self._trackable(index) and not cfg.locks.enabled
            and not self._wants_atomic(index)
        )

    def _send(self, segments: list[tuple[int, str, str]]) -> None:
        """Send the scripts of *segments* (index, kind, script) as one message, without waiting for the results.

        A marker after each segment says it completed.  The results are read
        when an item needs them (:meth:`_land`), or before anything else uses
        the connection (the ``conn`` property), so the server runs the
        message while the items of the migration before are judged.
        """
        text = "; ".join(
            f'{script}; SELECT \'{index}:{kind}\' AS "{_SEGMENT}"' for index, kind, script in segments
        )
        conn = self._raw
        conn.pgconn.send_query(text.encode(conn.info.encoding))
        conn.wait(generators.send(conn.pgconn))
        self._flight = [(index, kind) for index, kind, _ in segments]

    def _land(self) -> None:
        """Read the results of the message in flight; keep what the segments that completed found."""
        self._take(self._receive())

    def _receive(self) -> dict[tuple[int, str], list[bytes]]:
        """The raw documents of each segment of the message in flight that completed, by (index, kind)."""
        flight, self._flight = self._flight, None
        if flight is None:
            return {}
        conn = self._raw
        results = conn.wait(generators.fetch_many(conn.pgconn))
        documents: list[bytes] = []
        completed: dict[tuple[int, str], list[bytes]] = {}
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                break  # the server skipped the rest; the untracked path will say what failed
            if result.status != pq.ExecStatus.TUPLES_OK or result.nfields != 1:
                continue
            value = result.get_value(0, 0)
            if result.fname(0) == tracking.DELTA_COLUMN.encode() and value is not None:
                documents.append(bytes(value))
            elif result.fname(0) == _SEGMENT.encode() and value is not None:
                number, _, kind = bytes(value).decode().partition(":")
                completed[(int(number), kind)], documents = documents, []
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        return completed

    def _take(self, completed: dict[tuple[int, str], list[bytes]]) -> None:
        """Keep what the segments *completed* found: applies for later, the rest on their steps."""
        for (index, kind), documents in completed.items():
            found = [tracking.parse_delta(document.decode()) for document in documents]
            if kind == "apply":
                self._landed[index] = found[0]
                continue
            step = self._steps[index]
            again, down = self._ahead_parts(index)
            if again:
                step.again = found.pop(0)
            if down:
                step.down, step.reup = found

    def _await_ahead(self, index: int) -> None:
        """Land the message with the second up, down and up again of migration *index*, if it is in flight.

        When the same message applied the next migration, that migration's
        own follow-up message goes out at once, before these results are
        parsed, the next state is computed and the items of *index* are
        judged: the server works meanwhile (it waited about 0.33 ms a
        migration for the client before).
        """
        if self._flight is None or (index, "ahead") not in self._flight:
            return
        completed = self._receive()
        nxt = index + 1
        early = (nxt, "apply") in completed and self._broken is None and not self._steps[nxt].applied
        if early:
            self._send_follow_up(nxt)
            self._followed = nxt
        self._take(completed)
        if nxt in self._landed and self._broken is None:
            self._apply(nxt)

    # ---------------------------------------------------------------- end tracked runs

    @contextlib.contextmanager
    def _scratch(self, transactional: bool) -> Iterator[tuple[psycopg.Connection, _Counters | None]]:
        """A place to try things on the current state that leaves the working database untouched.

        Transactional work runs in a transaction that is rolled back; other work
        runs on a copy of the working database.
        """
        if transactional:
            self.conn.execute("BEGIN")
            try:
                yield self.conn, _counters(self.conn)
            finally:
                self.conn.execute("ROLLBACK")
            return
        copy = f"{self.dbname}_copy"
        self.conn.close()
        try:
            self.server.create_database(copy, template=self.dbname)
        finally:
            self._connect()
        try:
            with self.server.connect(copy, autocommit=True) as conn:
                conn.prepare_threshold = None
                conn.execute("SET client_min_messages = warning")
                setting = self._search_path()
                if setting is not None:  # CREATE DATABASE ... TEMPLATE does not copy database settings
                    conn.execute(sql.SQL("SET {}").format(setting))
                yield conn, None
        finally:
            self.server.drop_database(copy)

    # ------------------------------------------------------------------ assertions

    def _lint(self, item: Item) -> Outcome:
        migration = item.migration
        cfg = self.configs[migration.id]
        step = self._steps[item.index]
        if step.before is None and self._position < item.index:
            self._advance(item.index - 1)
            if not (self._broken and self._broken[0] < item.index):
                self._before(item.index)
        if self._broken and self._broken[0] < item.index:
            # Lint needs no database: after a failed migration it still runs, on the schema the history
            # reached plus the tables the migrations since then create.
            reached = self.snapshot_at(self._broken[0] - 1)
            existing = set(reached.tables()) if reached is not None else None
            if existing is not None:
                for earlier in self.migrations[self._broken[0]:item.index]:
                    existing |= _created_tables(earlier)
        else:
            # "Existed before" comes from the rehearsal's own snapshot, not from guesswork.
            reached = step.before if not step.released else self.snapshot_at(item.index - 1)
            existing = set(reached.tables()) if reached is not None else None
        # Declared volatility decides whether an ADD COLUMN ... DEFAULT f() rewrites the table.
        functions = ({name: attrs["volatility"] for name, attrs in reached.of_type("function").items()}
                     if reached is not None else None)
        findings = lint_mod.lint_sql(
            migration.sql,
            relpath(migration.path),
            existing_tables=existing,
            functions=functions,
            allow=cfg.allow,
            allow_reason=cfg.reason,
            in_transaction=migration.transactional,
            severities=self.plan.lint_severity,
            require_lock_timeout=self.plan.require_lock_timeout,
        )
        findings += _load_findings(migration, findings)
        errors = [f for f in findings if f.severity == "error" and not f.allowed]
        shown = lint_mod.format_findings(findings)
        quirks = "\n".join(f"{f}\n    {f.advice}" for f in migration.findings)  # the layout's tool's view
        shown = "\n".join(part for part in (shown, quirks) if part)
        if errors:
            return Outcome(FAILED, shown, details={"findings": len(findings)})
        if not migration.statements and migration.error is None:
            shown = "\n".join(part for part in (shown, "the migration holds no SQL: a no-op, recorded like any other")
                              if part)
        return Outcome(PASSED, shown)

    def _apply_item(self, item: Item) -> Outcome:
        step = self._steps[item.index]
        refusal = _tool_refusal(item.migration, "up")
        if refusal is not None:
            # The state moves on (the harness can run it), so the rest of the history is still rehearsed.
            raise _Fail(
                f"{refusal}\nThe rehearsal applied it as migration-harness runs it, to rehearse the migrations after it."
            )
        return Outcome(PASSED, f"applied in {step.apply_seconds * 1000:.1f} ms")

    # ---------------------------------------------------------------- locks (measured safety)

    def _run_up(self, index: int) -> None:
        """Run migration *index*'s up statements; measure its locks when its ``locks`` item is on."""
        migration = self.migrations[index]
        if not self._measure or not self.configs[migration.id].locks.enabled or index <= self._baseline:
            run_statements(self.conn, migration.statements, migration.path)
            return
        step = self._steps[index]
        assert step.before is not None
        # The working database is at the state before the migration: its own
        # catalogs name the pre-existing tables and indexes (the before
        # snapshot's, read on the server in one statement).
        step.locks = run_measured(
            self.conn,
            migration.statements,
            migration.path,
            monitor=lambda: self.server.connect(self.dbname, autocommit=True),
            functions=self._tracking,  # installed with the tracking
        )

    def _locks(self, item: Item) -> Outcome:
        cfg = self.configs[item.migration.id]
        report = self._steps[item.index].locks
        if report is None:
            return Outcome(SKIPPED, f"the locks of {item.migration.id} were not measured")
        verdict = judge(report, cfg.locks, reason=cfg.reason)
        if not verdict.ok:
            raise _Fail(f"{item.migration.id} locks or rewrites tables that existed before it:\n{verdict.message()}")
        return Outcome(PASSED, verdict.message())

    # ---------------------------------------------------------------- end locks

    # ---------------------------------------------------------------- batch (batched data migrations)

    def _batched_run(self, migration: Migration) -> _BatchedRun:
        """Run *migration* with its ``-- harness:batch`` statements in batches, on a copy of the current state.

        The working database then applies it unbatched, as one statement; the
        ``batch`` item compares the two.  Pauses are skipped.
        """
        with self._scratch(False) as (conn, _start):
            try:
                states = run_migration_batched(conn, migration)
            except HarnessError as exc:  # a statement failed, or the key is no NOT NULL column (SourceError)
                return _BatchedRun(error=scrub(str(exc)))
            nodes = _counters(conn).nodes
            data = table_fingerprints(conn, nodes) if nodes else {}
            return _BatchedRun(snapshot=take_snapshot(conn), data=data, batches=sum(s.batches for s in states),
                               rows=sum(s.rows for s in states))

    def _batch(self, item: Item) -> Outcome:
        """Run in batches, the migration leaves the same schema and data as run unbatched."""
        migration = item.migration
        step = self._steps[item.index]
        run = step.batched
        if run is None:
            return Outcome(SKIPPED, f"{migration.id} was not run in batches")
        if run.error is not None:
            raise _Fail(f"running {migration.id} in batches fails:\n{run.error}")
        assert step.after is not None and run.snapshot is not None
        changes = diff_snapshots(step.after, run.snapshot)
        if changes:
            raise _Fail(f"in batches, {migration.id} leaves another schema than unbatched (unbatched → batched):\n"
                        f"{format_changes(changes)}")
        differ = _data_changes(step.after_data or {}, run.data)
        if differ:
            raise _Fail(
                f"in batches, {migration.id} leaves other data than run as one statement (unbatched → batched):\n"
                f"{differ}\nA statement whose result depends on when or in which order it runs (now(), random(), "
                "nextval(), a subquery reading the table it changes) gives batches other values than one statement."
            )
        specs = ", ".join(f"line {b.statement_line} ({b.describe()})" for b in migration.batches)
        return Outcome(
            PASSED,
            f"{run.batches} batches changed {run.rows} rows; schema and data of {len(run.data)} tables equal the "
            f"unbatched run: {specs}",
        )

    # ---------------------------------------------------------------- end batch

    def _idempotent(self, item: Item) -> Outcome:
        migration = item.migration
        step = self._steps[item.index]
        assert step.after is not None
        self._await_ahead(item.index)
        if step.again is not None and step.after_state is not None:
            again_state, keys = tracking.advance(step.after_state, step.again)
            again, data = again_state.snapshot, _touched_data(again_state, step.again)
            changes = diff_snapshots(step.after, again, keys)
            failing = changes or _data_changes(
                {t: v for t, v in (step.after_data or {}).items() if t in data}, data
            )
            if failing and not self._confirm(item.index, step.after_state, [_script(migration.statements)], needs=()):
                again, data = self._apply_again(item)  # the states were wrong or unverified: judged in full
                changes = diff_snapshots(step.after, again)
        else:
            again, data = self._apply_again(item)
            changes = diff_snapshots(step.after, again)
            failing = changes or _data_changes({t: v for t, v in (step.after_data or {}).items() if t in data}, data)
            if failing and not self._exact_or_replayed((item.index,)):
                again, data = self._apply_again(item)  # judged again against the state replayed in full
                changes = diff_snapshots(step.after, again)
        if changes:
            raise _Fail(
                f"applying {migration.id} a second time changes the schema:\n{format_changes(changes)}"
            )
        changed = _data_changes({t: v for t, v in (step.after_data or {}).items() if t in data}, data)
        if changed:
            raise _Fail(f"applying {migration.id} a second time changes data:\n{changed}")
        return Outcome(PASSED, "second apply succeeded and changed nothing")

    def _apply_again(self, item: Item) -> tuple[Snapshot, dict[str, tuple[int, str]]]:
        """Apply the migration a second time (untracked): the schema then, and the data it changed."""
        migration = item.migration
        step = self._steps[item.index]
        assert step.after is not None
        self._require_position(item)
        self._sync_nodes()
        with self._scratch(migration.transactional) as (conn, start):
            try:
                run_statements(conn, migration.statements, migration.path)
            except StatementFailed as exc:
                raise _Fail(f"applying {migration.id} a second time fails:\n{exc}") from None
            data, catalog_written = _changed_data(conn, start, self._nodes)
            # No catalog row written means the schema cannot have changed: skip the snapshot.
            again = take_snapshot(conn) if catalog_written else step.after
        return again, data

    def _failure_rehearsal(self, migration: Migration, step: _Step) -> str | None:
        """Run the up migration in a transaction that is rolled back; report what survived."""
        assert step.before is not None
        self.conn.execute("BEGIN")
        try:
            run_statements(self.conn, migration.statements, migration.path)
        except StatementFailed:
            # The real apply reports this error; nothing to learn here.
            self.conn.execute("ROLLBACK")
            return None
        self.conn.execute("ROLLBACK")
        remaining = diff_snapshots(step.before, self._snapshot())
        if remaining:
            return "changes survived a rolled-back transaction:\n" + format_changes(remaining)
        return None

    def _rollback(self, item: Item) -> Outcome:
        """up → down → up: the down restores the state before the up, and the up then reproduces its state.

        Passes only when a down ran and restored the states.  A declared
        irreversible migration (``rollback: none``) and one without a down
        file are skipped with the reason (or fail, without a down, where the
        plan says ``require_down``); an empty down fails with what the up
        left that it does not undo; a down the layout's tool cannot run fails.
        """
        migration = item.migration
        cfg = self.configs[migration.id]
        step = self._steps[item.index]
        assert step.before is not None and step.after is not None
        if cfg.irreversible:
            why = f": {cfg.reason}" if cfg.reason else ""
            return Outcome(SKIPPED, f"declared irreversible in the plan (rollback: none){why}")
        if migration.down_error is not None:
            raise _Fail(f"the down migration of {migration.id} cannot be run:\n{migration.down_error}")
        if not migration.has_down:
            if getattr(self.plan, "require_down", False):
                raise _Fail(
                    f"{migration.id} has no down migration, and the plan requires one (require_down: true). Add "
                    f"{_down_file_hint(migration)}, or declare `rollback: none` for this step in the plan"
                )
            return Outcome(SKIPPED, "no down migration")
        if not migration.reversible:
            return self._empty_down(item)
        refusal = _tool_refusal(migration, "down")
        if refusal is not None:
            raise _Fail(f"the down migration of {migration.id} fails as its layout's tool runs it:\n{refusal}")
        assert migration.down_path is not None and migration.down_statements is not None
        self._await_ahead(item.index)
        if step.down is not None and step.reup is not None and step.after_state is not None:
            self._rollback_tracked(item)
            return Outcome(PASSED, "up → down → up: down restores the previous schema and data, up reproduces it")
        try:
            return self._rollback_untracked(item)
        except _Mismatch:
            if self._exact_or_replayed((item.index - 1, item.index)):
                raise
            return self._rollback_untracked(item)  # judged again against the states replayed in full

    def _rollback_untracked(self, item: Item) -> Outcome:
        """up → down → up on a copy or in a rolled-back transaction, each state read in full and compared."""
        migration = item.migration
        step = self._steps[item.index]
        assert migration.down_path is not None and migration.down_statements is not None
        assert step.before is not None and step.after is not None
        self._require_position(item)
        self._sync_nodes()
        transactional = migration.transactional and migration.down_transactional
        with self._scratch(transactional) as (conn, start):
            try:
                run_statements(conn, migration.down_statements, migration.down_path)
            except StatementFailed as exc:
                raise _Fail(f"the down migration of {migration.id} fails:\n{exc}") from None
            down = take_snapshot(conn)
            data, _ = _changed_data(conn, start, self._nodes)
            changes = diff_snapshots(step.before, down)
            if changes:
                raise _Mismatch(
                    f"after down, the schema differs from before {migration.id} (before → after down):\n"
                    f"{format_changes(changes)}"
                )
            # Tables the up or the down wrote or redefined must hold exactly the data they had before the up.
            before_data = step.before_data or {}
            redefined = redefined_tables(diff_snapshots(step.after, down), before_data)
            suspects = (set(data) | step.touched | redefined) & set(before_data)
            missing = suspects - set(data)
            if missing:
                data.update(table_fingerprints(conn, missing & set(_counters(conn).nodes)))
            lost = _data_changes({t: before_data[t] for t in suspects}, {t: data[t] for t in suspects if t in data})
            if lost:
                raise _Mismatch(f"after down, data of tables that existed before {migration.id} differs:\n{lost}")
            try:
                run_statements(conn, migration.statements, migration.path)
            except StatementFailed as exc:
                raise _Fail(f"re-applying {migration.id} after its down migration fails:\n{exc}") from None
            changes = diff_snapshots(step.after, take_snapshot(conn))
            if changes:
                raise _Mismatch(
                    f"up → down → up does not reproduce the schema after the first up (first → second):\n"
                    f"{format_changes(changes)}"
                )
        return Outcome(PASSED, "up → down → up: down restores the previous schema and data, up reproduces it")

    def _empty_down(self, item: Item) -> Outcome:
        """An empty down restores the state only when the up changed nothing."""
        migration = item.migration
        step = self._steps[item.index]
        assert step.before is not None and step.after is not None and migration.down_path is not None
        changes = diff_snapshots(step.before, step.after)
        before_data = step.before_data or {}
        after_data = step.after_data or {}
        written = sorted(t for t in step.touched if t in before_data and after_data.get(t) != before_data[t])
        if not changes and not written:
            return Outcome(PASSED, "the down is empty and the up changes neither schema nor data: nothing to undo")
        stays = format_changes(changes) if changes else ""
        if written:
            stays = "\n".join(p for p in (stays, "data written in: " + ", ".join(written)) if p)
        raise _Fail(
            f"the down migration {relpath(migration.down_path)} is empty (no SQL), so rolling back {migration.id} "
            f"would leave what its up did (before → after up):\n{stays}\nWrite the SQL that undoes it, or declare "
            "the migration irreversible with `rollback: none` on its step in the plan (the item is then skipped "
            "with that reason)"
        )

    def _atomic(self, item: Item) -> Outcome:
        """A migration without a usable down: the up, run in a transaction that is rolled back, leaves nothing."""
        migration = item.migration
        step = self._steps[item.index]
        if not migration.transactional:
            return Outcome(
                SKIPPED,
                "runs outside a transaction (a statement PostgreSQL refuses in one, a batch, or the layout says so): "
                "a failure part-way keeps the statements already run, so there is no rollback to prove",
            )
        if not step.failure_rehearsal_run:
            return Outcome(SKIPPED, f"{migration.id} was applied before its failure rehearsal could run")
        if step.failure_rehearsal:
            raise _Fail(f"{migration.id} is not undone by rolling back its transaction: {step.failure_rehearsal}")
        return Outcome(PASSED, "the up, run in a transaction that was rolled back, left nothing behind")

    def _rollback_tracked(self, item: Item) -> None:
        """Judge the tracked down and up-again runs of the item's migration (messages as the untracked path).

        A failure stands only once the states it compares proved right
        (:meth:`_confirm`); otherwise the item is judged again untracked.
        """
        step = self._steps[item.index]
        try:
            self._judge_rollback_tracked(item)
        except _Fail:
            migration = item.migration
            assert migration.down_statements is not None and step.after_state is not None
            parts = [_script(migration.down_statements), _script(migration.statements)]
            if self._confirm(item.index, step.after_state, parts, needs=(item.index - 1,)):
                raise
            self._rollback(item)  # the states were wrong or unverified: judged again with full snapshots

    def _judge_rollback_tracked(self, item: Item) -> None:
        migration = item.migration
        step = self._steps[item.index]
        assert step.before is not None and step.after_state is not None
        assert step.down is not None and step.reup is not None
        down, down_keys = tracking.advance(step.after_state, step.down)
        changes = diff_snapshots(step.before, down.snapshot, down_keys | step.up_keys)
        if changes:
            raise _Fail(
                f"after down, the schema differs from before {migration.id} (before → after down):\n"
                f"{format_changes(changes)}"
            )
        before_data = step.before_data or {}
        suspects = (set(_touched_data(down, step.down)) | step.touched) & set(before_data)
        lost = _data_changes({t: before_data[t] for t in suspects}, {t: down.data[t] for t in suspects if t in down.data})
        if lost:
            raise _Fail(f"after down, data of tables that existed before {migration.id} differs:\n{lost}")
        again, again_keys = tracking.advance(down, step.reup)
        changes = diff_snapshots(step.after_state.snapshot, again.snapshot, down_keys | again_keys)
        if changes:
            raise _Fail(
                f"up → down → up does not reproduce the schema after the first up (first → second):\n"
                f"{format_changes(changes)}"
            )

    def _chain_rollback(self, item: Item) -> Outcome:
        """Every down from head back to the base, each compared with the state it must restore.

        Downs that only work in isolation (they rely on state a later down
        removed) and downs that only work in a chain are both caught; column
        order differences are reported as their own class.
        """
        self._require_position(item)
        stop = -1
        for index in range(len(self.migrations) - 1, -1, -1):
            migration = self.migrations[index]
            if migration.down_error is not None:
                raise _Fail(f"the chain breaks at {migration.id}: its down migration cannot be run:\n"
                            f"{migration.down_error}")
            refusal = _tool_refusal(migration, "down")
            if refusal is not None and migration.reversible:
                raise _Fail(f"the chain breaks at {migration.id}: its down fails as its layout's tool runs it:\n"
                            f"{refusal}")
            if not migration.reversible or self.configs[migration.id].irreversible:
                stop = index
                break
        baseline = self._baseline >= 0 and self._baseline > stop
        stop = max(stop, self._baseline)  # migrations up to the baseline are out of scope
        chain = list(range(len(self.migrations) - 1, stop, -1))
        if not chain:
            return Outcome(SKIPPED, f"{self.migrations[-1].id} cannot be rolled back: there is no chain to roll back")
        if stop < 0:
            where = "the base"
        elif baseline:
            where = f"the baseline {self.migrations[stop].id}"
        else:
            where = f"{self.migrations[stop].id} (it cannot be rolled back)"
        # Which downs the chain proved, for the receipt (rollback on the target needs this proof).
        chained: dict[str, Any] = {"chain": [self.migrations[i].id for i in chain]}
        run, proof = self._chain_to_run(chain)
        if proof is not None and not run:
            return Outcome(CACHED, f"{len(chain)} downs roll the chain back from head to {where}: {proof.reason}",
                           details={**chained, "receipt": proof.receipt})
        transactional = all(
            self.migrations[i].transactional and self.migrations[i].down_transactional for i in run
        )
        column_order_only: list[str] = []
        tracked = self._chain_tracked(run) if transactional and self._tracking else None
        if tracked is not None:
            for index, changes in tracked:
                self._judge_chain_step(index, changes, column_order_only)
        else:
            self._chain_untracked(run, transactional, column_order_only, data=proof is not None)
        if proof is not None and self._resumed is not None and self._chain_data != self._resumed.data:
            # The new downs left other data than the cached chain started from: its verdict says nothing here.
            self._chain_fresh = True
            return self._chain_rollback(item)
        done = f"; the {len(chain) - len(run)} below {self.migrations[run[-1]].id}: {proof.reason}" if proof else ""
        if column_order_only:
            message = (
                "column order differs after down (visible to SELECT * and COPY):\n  " + "\n  ".join(column_order_only)
            )
            if getattr(self.plan, "column_order", "error") == "warn":
                return Outcome(PASSED, f"chain rolled back to {where}{done}; warning: {message}", details=chained)
            raise _Fail(message)
        self._chain_clean = True
        return Outcome(PASSED, f"{len(chain)} downs rolled the chain back from head to {where}, each restoring its "
                       f"state{done}", details=chained)

    def _chain_to_run(self, chain: list[int]) -> tuple[list[int], ChainProof | None]:
        """The downs of *chain* to run, and the cached chain that proved the rest from the restored state.

        The prefix's entry proves the downs below it when its own chain ran
        exactly those, from the state restored: the new downs must bring
        that state back, schema (each down is judged) and data (compared
        after them; otherwise the whole chain runs).
        """
        entry = self._resumed
        if entry is None or entry.chain is None or self._chain_fresh:
            return chain, None
        last = entry.length - 1
        if tuple(self.migrations[i].id for i in chain if i <= last) != entry.chain.ids:
            return chain, None
        return [i for i in chain if i > last], entry.chain

    def _chain_untracked(
        self, chain: list[int], transactional: bool, column_order_only: list[str], *, data: bool = False
    ) -> None:
        """Every down of *chain* in turn, each compared with a full snapshot of the state before it.

        With *data*, ``_chain_data`` is the data of every table after the last down.
        """
        with self._scratch(transactional) as (conn, _start):
            for index in chain:
                migration = self.migrations[index]
                assert migration.down_statements is not None and migration.down_path is not None
                try:
                    run_statements(conn, migration.down_statements, migration.down_path)
                except StatementFailed as exc:
                    raise _Fail(
                        f"rolling the chain back from head, the down migration of {migration.id} fails "
                        f"(it may rely on state that a later down removed):\n{exc}"
                    ) from None
                expected = self.snapshot_at(index - 1)
                if expected is None:
                    continue
                self._judge_chain_step(index, diff_snapshots(expected, take_snapshot(conn)), column_order_only)
            if data:
                self._chain_data = table_fingerprints(conn)

    def _judge_chain_step(self, index: int, changes: list[Change], column_order_only: list[str]) -> None:
        """After the down of migration *index*, the schema must be the one before it (column order aside)."""
        migration = self.migrations[index]
        order = [c for c in changes if c.attribute == "column_order"]
        other = [c for c in changes if c.attribute != "column_order"]
        if other:
            raise _Fail(
                f"rolling the chain back from head, after the down of {migration.id} the schema differs "
                f"from the state before it (expected → got):\n{format_changes(other)}"
            )
        column_order_only.extend(f"after the down of {migration.id}: {c.describe()}" for c in order)

    def _chain_tracked(self, chain: list[int]) -> list[tuple[int, list[Change]]] | None:
        """Run every down of *chain* in one rolled-back transaction, tracked: per down, its diff from the state before.

        ``None`` when a statement fails (the untracked path then says which)
        or a down cannot be tracked.
        """
        state = self._state
        if state is None or any(not _trackable_statements(self.migrations[i].down_statements or ()) for i in chain):
            return None
        changes = self._changes
        mark = tracking.mark_sql()
        parts = ["BEGIN"]
        for index in chain:
            statements = self.migrations[index].down_statements
            assert statements is not None
            parts += [mark, _script(statements), changes]
        parts.append("ROLLBACK")
        try:
            deltas = self._exchange("; ".join(parts))
        except psycopg.Error:
            self._recover()
            return None
        found: list[tuple[int, list[Change]]] = []
        state_at_head = state
        # Objects that may differ from the expected state: what the ups after it and the downs so far
        # re-read; all of them when an up was not tracked.
        keys: set[str] | None = set() if all(self._steps[i].tracked for i in chain) else None
        for index, delta in zip(chain, deltas):
            state, down_keys = tracking.advance(state, delta)
            if keys is not None:
                keys |= down_keys | self._steps[index].up_keys
            expected = self.snapshot_at(index - 1)
            if expected is not None:
                found.append((index, diff_snapshots(expected, state.snapshot, keys)))
        failing = any(c.attribute != "column_order" for _, changes in found for c in changes)
        scripts = [_script(self.migrations[i].down_statements or ()) for i in chain]
        if failing and not self._confirm(chain[0], state_at_head, scripts, needs=range(chain[-1] - 1, chain[0] + 1)):
            return None  # judged again untracked, with full snapshots
        self._chain_data = dict(state.data)
        return found

    def _schema_matches(self, item: Item) -> Outcome:
        """The migrations produce exactly the plan's desired schema (``schema:``)."""
        final = self._steps[item.index].after
        assert final is not None  # _run applied the whole history first
        ok, message = schema_matches(self.plan, self.server, final)
        if not ok:
            raise _Fail(message)
        return Outcome(PASSED, message)

    def _require_position(self, item: Item) -> None:
        if self._position != item.index:
            raise _Fail(
                f"{item.id} ran after a later migration was applied; run the plan's items in order "
                "(pytest keeps them in order unless a plugin reorders them)"
            )

    def _compat(self, item: Item) -> Outcome:
        migration = item.migration
        cfg = self.configs[migration.id]
        step = self._steps[item.index]
        assert step.before is not None and step.after is not None
        problems: list[str] = []
        acknowledged: list[str] = []
        # After a tracked apply, only the objects it re-read can differ.
        diff = diff_snapshots(step.before, step.after, step.up_keys if step.tracked else None)
        for breaking in breaking_changes(step.before, step.after, diff):
            if breaking.code in cfg.backward_compatible.allow:
                acknowledged.append(f"{breaking.code} {breaking.object} (allowed)")
            else:
                problems.append(f"{breaking.code}: {breaking.message}")
        for number, query in enumerate(cfg.backward_compatible.queries, 1):
            error = self._prepare(query.sql, number)
            if error:
                problems.append(f"old query from {query.origin} no longer works: {error}\n      {query.sql.strip()}")
        if problems:
            raise _Fail(
                f"{migration.id} breaks the previous application version:\n  - " + "\n  - ".join(problems)
            )
        message = "no breaking change for old readers and writers"
        if acknowledged:
            message += "; acknowledged: " + ", ".join(acknowledged)
        return Outcome(PASSED, message)

    def _prepare(self, query: str, number: int) -> str | None:
        """Parse and plan *query* against the current schema without running it."""
        name = sql.Identifier(f"mh_compat_{number}")
        self.conn.execute("BEGIN")
        try:
            self.conn.execute(sql.SQL("PREPARE {} AS ").format(name) + sql.SQL(query))  # type: ignore[arg-type]
            self.conn.execute(sql.SQL("DEALLOCATE {}").format(name))
        except psycopg.Error as exc:
            return describe_pg_error(exc)
        finally:
            self.conn.execute("ROLLBACK")
            with contextlib.suppress(psycopg.Error):
                self.conn.execute(sql.SQL("DEALLOCATE {}").format(name))
        return None

    def _preserve_rows(self, item: Item) -> Outcome:
        step = self._steps[item.index]
        assert step.before is not None
        before = step.before_data or {}
        after = step.after_data or {}
        lost = []
        # Only the tables whose count or hash differs (most are the same objects).
        for table, (count, _hash) in sorted(before.items() - after.items()):
            if table not in after:
                lost.append(f"{table}: table is gone ({count} rows before)")
            elif after[table][0] != count:
                lost.append(f"{table}: {count} rows before, {after[table][0]} after")
        if lost:
            raise _Fail(
                "row counts of pre-existing tables changed (declare `preserve_rows: false` for this step if "
                "that is intended):\n  " + "\n  ".join(lost)
            )
        return Outcome(PASSED, f"row counts of {len(before)} pre-existing tables unchanged")

    def _check(self, item: Item) -> Outcome:
        check = item.check
        assert check is not None
        self.conn.execute("BEGIN")
        try:
            # Plan SQL is trusted, sent as written (psycopg types it as a literal string).
            cur = self.conn.execute(check.sql)  # type: ignore[call-overload]
            rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise _Fail(f"check {check.name!r} failed to run: {describe_pg_error(exc)}\n    {check.sql}") from None
        finally:
            self.conn.execute("ROLLBACK")
        return Outcome(PASSED, _compare_check(check, rows))

    # ------------------------------------------------------------------ results

    def run_all(self, items: Sequence[Item] | None = None) -> list[tuple[Item, Outcome]]:
        """Run *items* (default: all) in order and return their outcomes."""
        return [(item, self.run(item)) for item in (items if items is not None else self.items())]

    def final_snapshot(self) -> Snapshot | None:
        """The schema after the last migration, if the whole history applied."""
        if self._position == len(self.migrations) - 1 and self.migrations:
            self._verify_tracking()  # normally done when the head was reached
            return self._steps[-1].after
        if not self.migrations and self._started:
            return self._snapshot()
        return None

    def schema_after(self, index: int) -> Snapshot:
        """Apply the history up to migration *index* (``-1``: none) and return the schema there.

        Used by apply's drift check to show what the target should look like
        at its current version.
        """
        self._start()
        if index < 0:
            if self._steps:
                self._before(0)
                assert self._steps[0].before is not None
                return self._steps[0].before
            return self._snapshot()
        self._advance(index)
        if self._broken and self._broken[0] <= index:
            raise HarnessError(f"the rehearsal could not apply {self.migrations[self._broken[0]].id}: {self._broken[1]}")
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
        self._broken = (index, "the rehearsal was stopped part-way through this migration")
        for count in range(upto + 1):
            if count >= completed:
                snapshots.append(self._snapshot())
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
        # The digest after each migration, moved along by what each one changed.
        base = self.snapshot_at(-1)
        objects = dict(base.objects) if base is not None else {}
        digest = SchemaDigest(objects)
        digests = {}
        for migration, step in zip(self.migrations, self._steps):
            changes = step.after_delta
            if changes is None:  # not let go yet: compared in full
                assert step.after is not None
                changes = _object_changes(objects, step.after.objects)
            for key, attrs in changes.items():
                digest.replace(key, objects.get(key), attrs)
            _apply_object_changes(objects, changes)
            digests[migration.id] = digest.hexdigest()
        return write_receipt(self.plan, self.migrations, digests, final, self.server.version, downs=self._down_proofs())

    def _down_proofs(self) -> dict[str, list[str]]:
        """Per migration, the items that proved its down in this rehearsal: ``rollback`` (up → down → up, passed
        or proved by the cached prefix) and ``chain_rollback`` (the chain from head back through it)."""
        chain = self._results.get("chain_rollback")
        chained = set(chain.details.get("chain", ())) if chain is not None and chain.status in (PASSED, CACHED) else set()
        proofs: dict[str, list[str]] = {}
        for migration in self.migrations:
            own = self._results.get(f"{migration.id}::rollback")
            proofs[migration.id] = [
                *(["rollback"] if own is not None and own.status in (PASSED, CACHED) else []),
                *(["chain_rollback"] if migration.id in chained else []),
            ]
        return proofs

    def snapshot_at(self, index: int) -> Snapshot | None:
        """The schema after migration *index* (``-1``: before the first), when known.

        A migration let go (see :meth:`_release`) has its schema rebuilt from
        the last one kept whole before it and the changes since.
        """
        if index < 0:
            return self._steps[0].before if self._steps else None
        changes: list[_Changes] = []
        at = index
        while at >= 0 and self._steps[at].after is None:
            delta = self._steps[at].after_delta
            if delta is None:
                return None  # not applied
            changes.append(delta)
            at -= 1
        base = self._steps[at].after if at >= 0 else self._steps[0].before
        if not changes or base is None:
            return base
        objects = dict(base.objects)
        for delta in reversed(changes):
            _apply_object_changes(objects, delta)
        return Snapshot(objects=objects)


_Changes = dict[str, Mapping[str, Any] | None]


def _object_changes(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], keys: frozenset[str] | None = None
) -> _Changes:
    """The objects of *new* that differ from *old*'s (None: gone), among *keys* (default: all of both)."""
    candidates = old.keys() | new.keys() if keys is None else keys
    return {key: new.get(key) for key in candidates if old.get(key) != new.get(key)}


def _apply_object_changes(objects: dict[str, Mapping[str, Any]], changes: _Changes) -> None:
    """Bring *objects* up to date with *changes* (see :func:`_object_changes`)."""
    for key, attrs in changes.items():
        if attrs is None:
            objects.pop(key, None)
        else:
            objects[key] = attrs


# Write counters are read twice, at the start of a transaction and after the
# statements: since PostgreSQL 15 the pg_stat_xact_* views also include
# counts of earlier transactions not yet flushed, so only the difference says
# what this transaction did.
# The pg_stat_get_xact_* functions are called directly rather than through the
# pg_stat_xact_* views, which compute a dozen counters per relation.
_COUNTERS = """
SELECT CASE WHEN c.relnamespace = 'pg_catalog'::regnamespace THEN NULL
            ELSE quote_ident(n.nspname) || '.' || quote_ident(c.relname) END,
       c.relfilenode,
       pg_stat_get_xact_tuples_inserted(c.oid) + pg_stat_get_xact_tuples_updated(c.oid)
       + pg_stat_get_xact_tuples_deleted(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('information_schema', 'harness')
  AND n.nspname !~ '^pg_(toast|temp)'
"""


@dataclass(frozen=True)
class _Counters:
    """Storage files and write counters of user tables, and catalog writes, at one moment."""

    nodes: dict[str, int]
    writes: dict[str, int]
    catalog: int


def _counters(conn: psycopg.Connection) -> _Counters:
    nodes: dict[str, int] = {}
    writes: dict[str, int] = {}
    catalog = 0
    for name, node, count in conn.execute(_COUNTERS).fetchall():
        if name is None:
            catalog += int(count)
        else:
            nodes[name], writes[name] = node, int(count)
    return _Counters(nodes, writes, catalog)


def _touched(conn: psycopg.Connection, start: _Counters, nodes_before: dict[str, int]) -> tuple[_Counters, set[str]]:
    """Tables written, rewritten (TRUNCATE, ALTER TYPE) or created since *start*."""
    now = _counters(conn)
    touched = {
        t for t, node in now.nodes.items()
        if nodes_before.get(t) != node or now.writes[t] > start.writes.get(t, 0)
    }
    return now, touched


def _changed_data(
    conn: psycopg.Connection, start: _Counters | None, nodes_before: dict[str, int]
) -> tuple[dict[str, tuple[int, str]], bool]:
    """Fingerprints of the tables changed since *start*, and whether any catalog row was written.

    Without *start* (work outside a transaction) every table is read and the
    catalogs count as written.
    """
    if start is None:
        now = _counters(conn)
        return (table_fingerprints(conn, now.nodes) if now.nodes else {}), True
    now, touched = _touched(conn, start, nodes_before)
    return (table_fingerprints(conn, touched) if touched else {}), now.catalog > start.catalog


def _created_tables(migration: Migration) -> set[str]:
    """The tables *migration*'s CREATE TABLE statements name, as ``schema.table`` (``public`` when unqualified)."""
    found = set()
    for statement in migration.statements:
        if statement.kind in ("CreateStmt", "CreateTableAsStmt"):
            node = statement.node
            relation = getattr(node, "relation", None) or getattr(getattr(node, "into", None), "rel", None)
            if relation is not None:
                found.add(f"{relation.schemaname or 'public'}.{relation.relname}")
    return found


def _tool_refusal(migration: Migration, side: str) -> str | None:
    """The layout findings of *migration* that say its tool would fail running *side* ("up" or "down")."""
    errors = [f for f in migration.findings if f.severity == "error" and (f.side == side or (not f.side and side == "up"))]
    if not errors:
        return None
    return "\n".join(f"{relpath(f.path)}:{f.line}:{f.column}: {f.message}; {f.advice}" for f in errors)


def _load_findings(migration: Migration, found: Sequence[lint_mod.Finding]) -> list[lint_mod.Finding]:
    """``parse-error`` findings for the migration's files that could not be read or run, unless lint found them."""
    out = []
    for path, error in ((migration.path, migration.error), (migration.down_path, migration.down_error)):
        if error is None or path is None:
            continue
        shown = relpath(path)
        if any(f.rule == "parse-error" and f.path == shown for f in found):
            continue
        # The message starts with the file's own position ("<path>:<line>:<column>: "); show it once.
        where = _POSITION.match(error)
        line, column, message = (int(where[2]), int(where[3]), where[4]) if where else (1, 1, error)
        out.append(lint_mod.Finding(rule="parse-error", severity="error", message=message, path=shown, line=line,
                                    column=column, advice="fix the file so that it can be read and parsed",
                                    statement=""))
    return out


_POSITION = re.compile(r"(.*?):([0-9]+):([0-9]+): (.*)", re.DOTALL)


def _down_file_hint(migration: Migration) -> str:
    if migration.layout in ("native", "supabase"):
        return f"{migration.path.with_suffix('').name}.down.sql"
    return "a down migration"


def _script(statements: Sequence[Statement]) -> str:
    """Statements as one script; a newline before each semicolon ends a trailing ``--`` comment."""
    return "\n;\n".join(s.sql for s in statements)


def _trackable_statements(statements: Sequence[Statement]) -> bool:
    """Whether *statements* can run in one message with their changes tracked.

    Not: COPY ... FROM STDIN (needs the copy protocol), RESET ALL (would
    reset the record of changes), SET event_triggers (would stop it), and a
    write to a system catalog (``UPDATE pg_attribute SET atttypmod ...``,
    the old trick to widen a column without a rewrite): no event trigger
    reports it, and next to a DDL command the record would look complete.
    """
    for statement in statements:
        if statement.kind == "CopyStmt":
            node = statement.node
            if getattr(node, "is_from", False) and not getattr(node, "filename", None):
                return False
        elif statement.kind == "VariableSetStmt":
            name = (getattr(statement.node, "name", None) or "").lower()
            if name in ("", "all", "event_triggers"):
                return False
        elif statement.kind in _MAY_WRITE_TABLES and _writes_system_catalog(statement.node):
            return False
    return True


# Statements whose parse tree may hold an INSERT, UPDATE, DELETE or MERGE
# (a SELECT through a data-modifying WITH).  A DO block's body is opaque: a
# catalog write there with no command at all still falls back to a full
# snapshot (tracking.py), one next to a command is a known limit.
_MAY_WRITE_TABLES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt"})


class _CatalogWrites(visitors.Visitor):
    """Finds the INSERT, UPDATE, DELETE and MERGE targets in a parse tree that are system catalogs."""

    def __init__(self) -> None:
        self.found = False

    def _target(self, node: Any) -> None:
        relation = getattr(node, "relation", None)
        schema, name = getattr(relation, "schemaname", None), getattr(relation, "relname", None) or ""
        # Unqualified, a pg_ name finds pg_catalog first (it is searched before the path).
        if schema == "pg_catalog" or (schema is None and name.startswith("pg_")):
            self.found = True

    def visit_InsertStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_UpdateStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_DeleteStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)

    def visit_MergeStmt(self, ancestors: Any, node: Any) -> None:
        self._target(node)


def _writes_system_catalog(node: Any) -> bool:
    walker = _CatalogWrites()
    walker(node)
    return walker.found


def _touched_data(state: tracking.State, delta: tracking.Delta) -> dict[str, tuple[int, str]]:
    """Row count and hash of the tables *delta* wrote, by name in *state*."""
    names = (state.tables.get(oid) for oid in delta.touched)
    return {name: state.data[name] for name in names if name is not None and name in state.data}


def _data_changes(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> str:
    lines = []
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table), after.get(table)
        if b == a:
            continue
        if b is None or a is None:
            continue  # a table added or removed shows up in the schema diff
        if b[0] != a[0]:
            lines.append(f"  {table}: {b[0]} rows → {a[0]} rows")
        else:
            lines.append(f"  {table}: same row count ({a[0]}) but row contents changed")
    return "\n".join(lines)


def _compare_check(check: Check, rows: list[tuple[Any, ...]]) -> str:
    problem = check_problem(check, rows)
    if problem:
        raise _Fail(problem)
    return check_summary(check, rows)
