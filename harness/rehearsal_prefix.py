"""The rehearsal's use of the prefix cache (harness/cache.py): go on from a cached prefix, save a green history.

A rehearsal whose first migrations an earlier green rehearsal proved
restores that one's archive, checks the restored database against the
state the entry recorded, and runs only the items after it
(:meth:`CachedPrefix.resume`).  After a green rehearsal the history is saved
for the next one (:meth:`CachedPrefix.save`).  With a cache, the newest entry
can be restored in a thread while the migration folder loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import rehearsal_model, tracking
from .cache import (
    REPLAY_LIMIT, CacheError, CachedItem, ChainProof, Entry, PrefixCache, prefix_keys, restore, restore_roles,
)
from .errors import HarnessError
from .execute import StatementFailed, run_statements
from .postgres import Server
from .redact import scrub
from .rehearsal_model import CACHED, PASSED, apply_object_changes, data_changes, object_changes
from .snapshot import diff_snapshots, format_changes, take_rooted_snapshot

if TYPE_CHECKING:
    from .rehearsal_engine import Engine

__all__ = ["CachedPrefix"]

# Logged under the rehearsal's name, as users filter it.
log = logging.getLogger("harness.rehearsal")


class CachedPrefix:
    """One rehearsal's entry in the prefix cache: the one it went on from, and the one it saves."""

    def __init__(self, engine: Engine, cache: PrefixCache | None) -> None:
        self.engine = engine
        self.cache = cache
        # Most warm runs go on from the newest entry: its restore need not wait for the keys (see resume).
        self._ahead: threading.Thread | None = None
        self._restored_ahead: Entry | None = None  # the entry whose archive the thread restored into dbname
        self._ahead_error: Exception | None = None  # the server did not start in the thread: raised where first needed
        self._keys: list[str] | None = None
        self.cached: dict[str, CachedItem] = {}  # the verdicts of the restored migrations' items, by item id
        self.resumed: Entry | None = None  # the entry the rehearsal went on from
        self._replay_failed = False  # an entry's migrations applied again did not give its state: dump anew
        # What chain_rollback tells the cache.
        self.chain_data: dict[str, tuple[int, str]] | None = None  # data after the downs chain_rollback ran
        self.chain_clean = False  # chain_rollback passed without a warning
        self.chain_fresh = False  # chain_rollback runs every down, whatever the cache proved

    @property
    def warnings(self) -> list[str]:
        """Why a cache entry was not used or not written (the rehearsal went on without it)."""
        return list(self.cache.warnings) if self.cache is not None else []

    @property
    def restored_migrations(self) -> int:
        """How many migrations were restored from the cache instead of being rehearsed again."""
        return self.engine.position + 1 if self.resumed is not None else 0

    def _replayable(self, index: int) -> bool:
        """Whether migration *index* can be applied again after an entry's archive as the rehearsal applied it."""
        migration = self.engine.migrations[index]
        return index > self.engine.baseline and migration.error is None and migration.transactional

    def _prefix_keys(self) -> list[str]:
        if self._keys is None:
            engine = self.engine
            self._keys = prefix_keys(engine.plan, engine.migrations, engine.configs, engine.server.version)
        return self._keys

    # ------------------------------------------------------------------ restore ahead of the keys

    def restore_ahead(self) -> None:
        """Start the server and restore the newest entry's archive in a thread, while the folder loads."""
        assert self.cache is not None
        self._ahead = threading.Thread(target=self._restore_ahead, args=(self.cache,), name="harness-restore-ahead")
        self._ahead.start()

    def _restore_ahead(self, cache: PrefixCache) -> None:
        """In a thread: start the server and restore the newest entry's archive into the working database."""
        server: Server | None = None
        try:
            entry = cache.latest()
            if entry is None:
                return
            try:
                server = self.engine.server
            except Exception as exc:  # noqa: BLE001 - not started twice: raised again where it is first needed
                self._ahead_error = exc
                return
            restore(server, self.engine.dbname, entry)
            self._restored_ahead = entry
        except Exception as exc:  # noqa: BLE001 - a guess: resume restores, and reports, what it finds
            log.debug("no restore ahead of the cache keys: %s", exc)
            if server is not None:
                with contextlib.suppress(Exception):
                    server.drop_database(self.engine.dbname)

    def wait_ahead(self) -> None:
        """Wait for the restore ahead of the keys (it may be starting the server); raise what stopped its server."""
        if self._ahead is not None and self._ahead is not threading.current_thread():
            self._ahead.join()
            self._ahead = None
        if self._ahead_error is not None:
            error, self._ahead_error = self._ahead_error, None
            raise error

    def drop_restored_ahead(self) -> None:
        """Wait for the restore ahead of the keys; drop what it restored unless it was taken (best effort)."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None
        if self._restored_ahead is not None:
            self._restored_ahead = None
            try:
                self.engine.server.drop_database(self.engine.dbname)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.warning("could not drop rehearsal database %s: %s", self.engine.dbname, exc)

    # ------------------------------------------------------------------ going on from an entry

    def resume(self) -> bool:
        """Restore the longest rehearsed prefix the cache holds, check it, and go on from there.

        The restored database must equal, in a full snapshot and the data of
        every table, the state the entry recorded; otherwise the entry is
        discarded with a warning and the rehearsal starts from the beginning.
        """
        assert self.cache is not None
        keys = self._prefix_keys()  # starts the server: after the restore ahead, if any
        ahead, self._restored_ahead = self._restored_ahead, None
        # An entry whose migrations applied again miss its state may share its archive with a shorter one.
        for _attempt in range(2):
            entry = self.cache.find(keys, known=ahead)
            if entry is None:
                break
            # The database holds that entry's archive if the guess restored the same one (by its hash).
            restored = ahead is not None and ahead.dump_sha256 == entry.dump_sha256
            if ahead is not None and not restored:
                self.engine.server.drop_database(self.engine.dbname)
            ahead = None
            if self._resume_from(entry, restored=restored):
                return True
        if ahead is not None:
            self.engine.server.drop_database(self.engine.dbname)
        return False

    def _resume_from(self, entry: Entry, *, restored: bool = False) -> bool:
        assert self.cache is not None
        engine = self.engine
        last = entry.length - 1
        wanted = {i.id for i in engine.items() if not i.plan_level and i.index <= last}
        try:
            if set(entry.items) != wanted or any(i.status != PASSED for i in entry.items.values()):
                raise CacheError("its items are not those of these migrations, or not all of them passed")
            if restored:
                restore_roles(engine.server, entry)  # those of the entry found, if the one guessed named fewer
            else:
                restore(engine.server, engine.dbname, entry)
            engine.connect()
            kept, expected = entry.schemas(rehearsal_model.CHECKPOINT)
            self._drop_event_triggers()
            for index in entry.replayed:
                self._replay(index)
            snapshot, roots = take_rooted_snapshot(engine.conn)
            engine.refresh_data()
            changes = diff_snapshots(expected, snapshot)
            if changes:
                self._replay_failed = bool(entry.replayed)
                raise CacheError(f"the restored schema differs from the recorded one:\n{format_changes(changes)}")
            if engine.data != entry.data:
                self._replay_failed = bool(entry.replayed)
                raise CacheError(
                    f"the restored data differs from the recorded data:\n{data_changes(entry.data, engine.data)}"
                )
            if engine.track_mode != "full":
                engine.tracking_on = tracking.install(engine.conn)
        except (CacheError, psycopg.Error, HarnessError) as exc:
            self.cache.warn(
                f"the cached rehearsal of the first {entry.length} migrations ({entry.path}) cannot be used and is "
                f"discarded: {scrub(str(exc))[:2000]}. Rehearsing its migrations without it."
            )
            self.cache.discard(entry.path)
            engine.close()  # drops the database restored so far
            engine.started = True
            engine.tracking_on, engine.data, engine.nodes = False, {}, {}
            return False
        engine.state = tracking.State(snapshot, roots, dict(engine.data))
        engine.steps[0].before = entry.base
        for index in range(entry.length):
            step = engine.steps[index]
            step.applied = step.released = step.tracked = True
            step.after_delta = entry.changes[index]
            # What differs from the schema before: all that chain_rollback needs to compare.
            step.up_keys = frozenset(entry.changes[index])
            step.after = kept[index]
        engine.steps[last].after = snapshot
        engine.position = engine.selfcheck.verified = last
        engine.selfcheck.exact = {-1, last}
        self.cached = {item_id: entry.items[item_id] for item_id in wanted}
        self.resumed = entry
        log.info("rehearsal of plan %s goes on after %s, restored from the cache%s", engine.plan.name,
                 engine.migrations[last].id, " (while the folder loaded)" if restored else "")
        return True

    def _replay(self, index: int) -> None:
        """Apply migration *index* again after an entry's archive, in one transaction, as the rehearsal did."""
        conn = self.engine.conn
        migration = self.engine.migrations[index]
        if not self._replayable(index):
            raise CacheError(f"{migration.id} cannot be applied again as the rehearsal applied it")
        conn.execute("BEGIN")
        try:
            run_statements(conn, migration.statements, migration.path)
        except StatementFailed as exc:
            conn.execute("ROLLBACK")
            self._replay_failed = True
            raise CacheError(f"{migration.id} does not apply again after the archive: {exc}") from None
        conn.execute("COMMIT")

    def _drop_event_triggers(self) -> None:
        """Remove the tracking's event triggers a restored archive brought (installed again when tracking is on)."""
        conn = self.engine.conn
        names = [r[0] for r in conn.execute(
            "SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s)",
            (["harness_track_ddl", "harness_track_drop", "harness_track_links"],),
        ).fetchall()]
        for name in names:
            conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(name)))

    # ------------------------------------------------------------------ saving a green history

    def save(self, receipt: Path) -> Path | None:
        """After a green rehearsal that wrote *receipt*, cache the rehearsed history; return the entry's path.

        Only when every item ran and passed (or was itself cached) and the
        whole history applied; a failure to write is a warning, never an error.
        """
        engine = self.engine
        if self.cache is None or not engine.migrations or engine.broken is not None:
            return None
        if engine.position != len(engine.migrations) - 1:
            return None
        items = engine.items()
        outcomes = [engine.results.get(item.id) for item in items]
        if any(o is None or o.status not in (PASSED, CACHED) for o in outcomes):
            return None
        key = self._prefix_keys()[-1]
        resumed = self.resumed
        if resumed is not None and key == resumed.key:
            return None  # the whole history came from this entry: nothing new to keep
        # Share the archive restored when the migrations since it can be applied again, and are few.
        shared = resumed is not None and not self._replay_failed and all(
            self._replayable(i) for i in range(resumed.archive_length, len(engine.migrations))
        ) and len(engine.migrations) - resumed.archive_length <= REPLAY_LIMIT
        try:
            proof = hashlib.sha256(receipt.read_bytes()).hexdigest()
            verdicts = []
            for item, outcome in zip(items, outcomes):
                assert outcome is not None
                if item.plan_level:
                    continue  # chain_rollback and schema_matches are about the whole history: always run
                cached = self.cached.get(item.id)
                verdicts.append(cached if cached is not None else CachedItem(item.id, PASSED, outcome.message, proof))
            base = engine.snapshot_at(-1)
            assert base is not None
            objects = dict(base.objects)
            changes: list[dict[str, Mapping[str, Any] | None]] = []
            for step in engine.steps:
                delta = step.after_delta
                if delta is None:  # not let go yet: compared in full
                    assert step.after is not None
                    delta = object_changes(objects, step.after.objects)
                apply_object_changes(objects, delta)
                changes.append(delta)
            if engine.pipeline.flight is not None:
                engine.pipeline.land()  # the database must be idle, at head, when it is dumped
            chain = engine.results.get("chain_rollback")
            return self.cache.save(
                server=engine.server, dbname=engine.dbname, key=key, base=base, changes=changes, data=engine.data,
                items=verdicts, archive=resumed if shared else None,
                chain=ChainProof(tuple(chain.details["chain"]), proof)
                if chain is not None and chain.status == PASSED and self.chain_clean else None,
            )
        except (CacheError, OSError, psycopg.Error) as exc:
            self.cache.warn(f"could not write the rehearsal cache: {scrub(str(exc))[:1000]}")
            return None
