"""The rehearsal's assertions about downs: ``rollback`` (up → down → up), ``atomic`` and ``chain_rollback``.

Functions over the engine like the others (harness/rehearsal_assertions.py,
where they are registered).  A judgement made on tracked states that fails
stands only once the self-check (harness/rehearsal_selfcheck.py) has
confirmed those states; otherwise it is made again with full snapshots.
"""

from __future__ import annotations

from typing import Any

import psycopg

from . import tracking
from .cache import ChainProof
from .compat import redefined_tables
from .execute import StatementFailed, relpath, run_statements
from .rehearsal_engine import Engine
from .rehearsal_model import (
    CACHED, PASSED, SKIPPED, Item, ItemFailed, Mismatch, Outcome, as_script, changed_data, counters, data_changes,
    tool_refusal, touched_data, trackable_statements,
)
from .snapshot import Change, diff_snapshots, format_changes, table_fingerprints, take_snapshot
from .sources import Migration

__all__ = ["rollback", "atomic", "chain_rollback"]


def rollback(engine: Engine, item: Item) -> Outcome:
    """up → down → up: the down restores the state before the up, and the up then reproduces its state.

    Passes only when a down ran and restored the states.  A declared
    irreversible migration (``rollback: none``) and one without a down
    file are skipped with the reason (or fail, without a down, where the
    plan says ``require_down``); an empty down fails with what the up
    left that it does not undo; a down the layout's tool cannot run fails.
    """
    migration = item.migration
    cfg = engine.configs[migration.id]
    step = engine.steps[item.index]
    assert step.before is not None and step.after is not None
    if cfg.irreversible:
        why = f": {cfg.reason}" if cfg.reason else ""
        return Outcome(SKIPPED, f"declared irreversible in the plan (rollback: none){why}")
    if migration.down_error is not None:
        raise ItemFailed(f"the down migration of {migration.id} cannot be run:\n{migration.down_error}")
    if not migration.has_down:
        if getattr(engine.plan, "require_down", False):
            raise ItemFailed(
                f"{migration.id} has no down migration, and the plan requires one (require_down: true). Add "
                f"{_down_file_hint(migration)}, or declare `rollback: none` for this step in the plan"
            )
        return Outcome(SKIPPED, "no down migration")
    if not migration.reversible:
        return _empty_down(engine, item)
    refusal = tool_refusal(migration, "down")
    if refusal is not None:
        raise ItemFailed(f"the down migration of {migration.id} fails as its layout's tool runs it:\n{refusal}")
    assert migration.down_path is not None and migration.down_statements is not None
    engine.await_ahead(item.index)
    if step.down is not None and step.reup is not None and step.after_state is not None:
        _rollback_tracked(engine, item)
        return Outcome(PASSED, "up → down → up: down restores the previous schema and data, up reproduces it")
    try:
        return _rollback_untracked(engine, item)
    except Mismatch:
        if engine.selfcheck.exact_or_replayed((item.index - 1, item.index)):
            raise
        return _rollback_untracked(engine, item)  # judged again against the states replayed in full


def _rollback_untracked(engine: Engine, item: Item) -> Outcome:
    """up → down → up on a copy or in a rolled-back transaction, each state read in full and compared."""
    migration = item.migration
    step = engine.steps[item.index]
    assert migration.down_path is not None and migration.down_statements is not None
    assert step.before is not None and step.after is not None
    engine.require_position(item)
    engine.sync_nodes()
    transactional = migration.transactional and migration.down_transactional
    with engine.scratch(transactional) as (conn, start):
        try:
            run_statements(conn, migration.down_statements, migration.down_path)
        except StatementFailed as exc:
            raise ItemFailed(f"the down migration of {migration.id} fails:\n{exc}") from None
        down = take_snapshot(conn)
        data, _ = changed_data(conn, start, engine.nodes)
        changes = diff_snapshots(step.before, down)
        if changes:
            raise Mismatch(
                f"after down, the schema differs from before {migration.id} (before → after down):\n"
                f"{format_changes(changes)}"
            )
        # Tables the up or the down wrote or redefined must hold exactly the data they had before the up.
        before_data = step.before_data or {}
        redefined = redefined_tables(diff_snapshots(step.after, down), before_data)
        suspects = (set(data) | step.touched | redefined) & set(before_data)
        missing = suspects - set(data)
        if missing:
            data.update(table_fingerprints(conn, missing & set(counters(conn).nodes)))
        lost = data_changes({t: before_data[t] for t in suspects}, {t: data[t] for t in suspects if t in data})
        if lost:
            raise Mismatch(f"after down, data of tables that existed before {migration.id} differs:\n{lost}")
        try:
            run_statements(conn, migration.statements, migration.path)
        except StatementFailed as exc:
            raise ItemFailed(f"re-applying {migration.id} after its down migration fails:\n{exc}") from None
        changes = diff_snapshots(step.after, take_snapshot(conn))
        if changes:
            raise Mismatch(
                f"up → down → up does not reproduce the schema after the first up (first → second):\n"
                f"{format_changes(changes)}"
            )
    return Outcome(PASSED, "up → down → up: down restores the previous schema and data, up reproduces it")


def _empty_down(engine: Engine, item: Item) -> Outcome:
    """An empty down restores the state only when the up changed nothing."""
    migration = item.migration
    step = engine.steps[item.index]
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
    raise ItemFailed(
        f"the down migration {relpath(migration.down_path)} is empty (no SQL), so rolling back {migration.id} "
        f"would leave what its up did (before → after up):\n{stays}\nWrite the SQL that undoes it, or declare "
        "the migration irreversible with `rollback: none` on its step in the plan (the item is then skipped "
        "with that reason)"
    )


def atomic(engine: Engine, item: Item) -> Outcome:
    """A migration without a usable down: the up, run in a transaction that is rolled back, leaves nothing."""
    migration = item.migration
    step = engine.steps[item.index]
    if not migration.transactional:
        return Outcome(
            SKIPPED,
            "runs outside a transaction (a statement PostgreSQL refuses in one, a batch, or the layout says so): "
            "a failure part-way keeps the statements already run, so there is no rollback to prove",
        )
    if not step.failure_rehearsal_run:
        return Outcome(SKIPPED, f"{migration.id} was applied before its failure rehearsal could run")
    if step.failure_rehearsal:
        raise ItemFailed(f"{migration.id} is not undone by rolling back its transaction: {step.failure_rehearsal}")
    return Outcome(PASSED, "the up, run in a transaction that was rolled back, left nothing behind")


def _rollback_tracked(engine: Engine, item: Item) -> None:
    """Judge the tracked down and up-again runs of the item's migration (messages as the untracked path).

    A failure stands only once the states it compares proved right
    (:meth:`_confirm`); otherwise the item is judged again untracked.
    """
    step = engine.steps[item.index]
    try:
        _judge_rollback_tracked(engine, item)
    except ItemFailed:
        migration = item.migration
        assert migration.down_statements is not None and step.after_state is not None
        parts = [as_script(migration.down_statements), as_script(migration.statements)]
        if engine.selfcheck.confirm(item.index, step.after_state, parts, needs=(item.index - 1,)):
            raise
        rollback(engine, item)  # the states were wrong or unverified: judged again with full snapshots


def _judge_rollback_tracked(engine: Engine, item: Item) -> None:
    migration = item.migration
    step = engine.steps[item.index]
    assert step.before is not None and step.after_state is not None
    assert step.down is not None and step.reup is not None
    down, down_keys = tracking.advance(step.after_state, step.down)
    changes = diff_snapshots(step.before, down.snapshot, down_keys | step.up_keys)
    if changes:
        raise ItemFailed(
            f"after down, the schema differs from before {migration.id} (before → after down):\n"
            f"{format_changes(changes)}"
        )
    before_data = step.before_data or {}
    suspects = (set(touched_data(down, step.down)) | step.touched) & set(before_data)
    lost = data_changes({t: before_data[t] for t in suspects}, {t: down.data[t] for t in suspects if t in down.data})
    if lost:
        raise ItemFailed(f"after down, data of tables that existed before {migration.id} differs:\n{lost}")
    again, again_keys = tracking.advance(down, step.reup)
    changes = diff_snapshots(step.after_state.snapshot, again.snapshot, down_keys | again_keys)
    if changes:
        raise ItemFailed(
            f"up → down → up does not reproduce the schema after the first up (first → second):\n"
            f"{format_changes(changes)}"
        )


def chain_rollback(engine: Engine, item: Item) -> Outcome:
    """Every down from head back to the base, each compared with the state it must restore.

    Downs that only work in isolation (they rely on state a later down
    removed) and downs that only work in a chain are both caught; column
    order differences are reported as their own class.
    """
    engine.require_position(item)
    stop = -1
    for index in range(len(engine.migrations) - 1, -1, -1):
        migration = engine.migrations[index]
        if migration.down_error is not None:
            raise ItemFailed(f"the chain breaks at {migration.id}: its down migration cannot be run:\n"
                        f"{migration.down_error}")
        refusal = tool_refusal(migration, "down")
        if refusal is not None and migration.reversible:
            raise ItemFailed(f"the chain breaks at {migration.id}: its down fails as its layout's tool runs it:\n"
                        f"{refusal}")
        if not migration.reversible or engine.configs[migration.id].irreversible:
            stop = index
            break
    baseline = engine.baseline >= 0 and engine.baseline > stop
    stop = max(stop, engine.baseline)  # migrations up to the baseline are out of scope
    chain = list(range(len(engine.migrations) - 1, stop, -1))
    if not chain:
        return Outcome(SKIPPED, f"{engine.migrations[-1].id} cannot be rolled back: there is no chain to roll back")
    if stop < 0:
        where = "the base"
    elif baseline:
        where = f"the baseline {engine.migrations[stop].id}"
    else:
        where = f"{engine.migrations[stop].id} (it cannot be rolled back)"
    # Which downs the chain proved, for the receipt (rollback on the target needs this proof).
    chained: dict[str, Any] = {"chain": [engine.migrations[i].id for i in chain]}
    run, proof = _chain_to_run(engine, chain)
    if proof is not None and not run:
        return Outcome(CACHED, f"{len(chain)} downs roll the chain back from head to {where}: {proof.reason}",
                       details={**chained, "receipt": proof.receipt})
    transactional = all(
        engine.migrations[i].transactional and engine.migrations[i].down_transactional for i in run
    )
    column_order_only: list[str] = []
    tracked = _chain_tracked(engine, run) if transactional and engine.tracking_on else None
    if tracked is not None:
        for index, changes in tracked:
            _judge_chain_step(engine, index, changes, column_order_only)
    else:
        _chain_untracked(engine, run, transactional, column_order_only, data=proof is not None)
    resumed = engine.prefix.resumed
    if proof is not None and resumed is not None and engine.prefix.chain_data != resumed.data:
        # The new downs left other data than the cached chain started from: its verdict says nothing here.
        engine.prefix.chain_fresh = True
        return chain_rollback(engine, item)
    done = f"; the {len(chain) - len(run)} below {engine.migrations[run[-1]].id}: {proof.reason}" if proof else ""
    if column_order_only:
        message = (
            "column order differs after down (visible to SELECT * and COPY):\n  " + "\n  ".join(column_order_only)
        )
        if getattr(engine.plan, "column_order", "error") == "warn":
            return Outcome(PASSED, f"chain rolled back to {where}{done}; warning: {message}", details=chained)
        raise ItemFailed(message)
    engine.prefix.chain_clean = True
    return Outcome(PASSED, f"{len(chain)} downs rolled the chain back from head to {where}, each restoring its "
                   f"state{done}", details=chained)


def _chain_to_run(engine: Engine, chain: list[int]) -> tuple[list[int], ChainProof | None]:
    """The downs of *chain* to run, and the cached chain that proved the rest from the restored state.

    The prefix's entry proves the downs below it when its own chain ran
    exactly those, from the state restored: the new downs must bring
    that state back, schema (each down is judged) and data (compared
    after them; otherwise the whole chain runs).
    """
    entry = engine.prefix.resumed
    if entry is None or entry.chain is None or engine.prefix.chain_fresh:
        return chain, None
    last = entry.length - 1
    if tuple(engine.migrations[i].id for i in chain if i <= last) != entry.chain.ids:
        return chain, None
    return [i for i in chain if i > last], entry.chain


def _chain_untracked(
    engine: Engine, chain: list[int], transactional: bool, column_order_only: list[str], *, data: bool = False
) -> None:
    """Every down of *chain* in turn, each compared with a full snapshot of the state before it.

    With *data*, ``_chain_data`` is the data of every table after the last down.
    """
    with engine.scratch(transactional) as (conn, _start):
        for index in chain:
            migration = engine.migrations[index]
            assert migration.down_statements is not None and migration.down_path is not None
            try:
                run_statements(conn, migration.down_statements, migration.down_path)
            except StatementFailed as exc:
                raise ItemFailed(
                    f"rolling the chain back from head, the down migration of {migration.id} fails "
                    f"(it may rely on state that a later down removed):\n{exc}"
                ) from None
            expected = engine.snapshot_at(index - 1)
            if expected is None:
                continue
            _judge_chain_step(engine, index, diff_snapshots(expected, take_snapshot(conn)), column_order_only)
        if data:
            engine.prefix.chain_data = table_fingerprints(conn)


def _judge_chain_step(engine: Engine, index: int, changes: list[Change], column_order_only: list[str]) -> None:
    """After the down of migration *index*, the schema must be the one before it (column order aside)."""
    migration = engine.migrations[index]
    order = [c for c in changes if c.attribute == "column_order"]
    other = [c for c in changes if c.attribute != "column_order"]
    if other:
        raise ItemFailed(
            f"rolling the chain back from head, after the down of {migration.id} the schema differs "
            f"from the state before it (expected → got):\n{format_changes(other)}"
        )
    column_order_only.extend(f"after the down of {migration.id}: {c.describe()}" for c in order)


def _chain_tracked(engine: Engine, chain: list[int]) -> list[tuple[int, list[Change]]] | None:
    """Run every down of *chain* in one rolled-back transaction, tracked: per down, its diff from the state before.

    ``None`` when a statement fails (the untracked path then says which)
    or a down cannot be tracked.
    """
    state = engine.state
    if state is None or any(not trackable_statements(engine.migrations[i].down_statements or ()) for i in chain):
        return None
    changes = engine.selfcheck.changes
    mark = tracking.mark_sql()
    parts = ["BEGIN"]
    for index in chain:
        statements = engine.migrations[index].down_statements
        assert statements is not None
        parts += [mark, as_script(statements), changes]
    parts.append("ROLLBACK")
    try:
        deltas = engine.pipeline.exchange("; ".join(parts))
    except psycopg.Error:
        engine.pipeline.recover()
        return None
    found: list[tuple[int, list[Change]]] = []
    state_at_head = state
    # Objects that may differ from the expected state: what the ups after it and the downs so far
    # re-read; all of them when an up was not tracked.
    keys: set[str] | None = set() if all(engine.steps[i].tracked for i in chain) else None
    for index, delta in zip(chain, deltas):
        state, down_keys = tracking.advance(state, delta)
        if keys is not None:
            keys |= down_keys | engine.steps[index].up_keys
        expected = engine.snapshot_at(index - 1)
        if expected is not None:
            found.append((index, diff_snapshots(expected, state.snapshot, keys)))
    failing = any(c.attribute != "column_order" for _, changes in found for c in changes)
    scripts = [as_script(engine.migrations[i].down_statements or ()) for i in chain]
    needs = range(chain[-1] - 1, chain[0] + 1)
    if failing and not engine.selfcheck.confirm(chain[0], state_at_head, scripts, needs=needs):
        return None  # judged again untracked, with full snapshots
    engine.prefix.chain_data = dict(state.data)
    return found


def _down_file_hint(migration: Migration) -> str:
    if migration.layout in ("native", "supabase"):
        return f"{migration.path.with_suffix('').name}.down.sql"
    return "a down migration"


