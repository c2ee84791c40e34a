"""The rehearsal's assertions: one function per property a migration must have, and their registry.

Each assertion is a plain function over the engine, the way pytest-alembic's
built-in tests are functions over a runner: ``judge(engine, item)`` returns
the item's :class:`~harness.rehearsal_model.Outcome` or raises
:class:`~harness.rehearsal_model.ItemFailed` with a message for the reviewer.
The engine has applied the item's migration first and recorded what it
changed (:class:`~harness.rehearsal_model.Step`).  The downs' assertions
(``rollback``, ``atomic``, ``chain_rollback``) are in
harness/rehearsal_rollback.py.

To add an assertion: write its function, add an :class:`Assertion` to
:data:`REGISTRY` at the place its items run (with the switch that asks for
it, usually a field of the plan's step config), and describe it in
docs/rehearsal.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import desired_schema
from . import lint as lint_mod
from . import tracking
from .checks import check_problem, check_summary
from .compat import breaking_changes
from .execute import StatementFailed, describe_pg_error, relpath, run_statements
from .locks import judge
from .plan import Check, StepConfig
from .rehearsal_engine import Engine
from .rehearsal_model import (
    FAILED, PASSED, SKIPPED, Item, ItemFailed, Outcome, as_script, changed_data, data_changes, tool_refusal,
    touched_data,
)
from .rehearsal_rollback import atomic, chain_rollback, rollback
from .snapshot import Snapshot, diff_snapshots, format_changes, take_snapshot
from .sources import Migration

__all__ = ["Assertion", "REGISTRY", "ASSERTIONS"]


def lint(engine: Engine, item: Item) -> Outcome:
    """The static rules pass, judged on the schema the history reached (which tables existed before)."""
    migration = item.migration
    cfg = engine.configs[migration.id]
    step = engine.steps[item.index]
    if step.before is None and engine.position < item.index:
        engine.advance(item.index - 1)
        if not (engine.broken and engine.broken[0] < item.index):
            engine.record_before(item.index)
    if engine.broken and engine.broken[0] < item.index:
        # Lint needs no database: after a failed migration it still runs, on the schema the history
        # reached plus the tables the migrations since then create.
        reached = engine.snapshot_at(engine.broken[0] - 1)
        existing = set(reached.tables()) if reached is not None else None
        if existing is not None:
            for earlier in engine.migrations[engine.broken[0]:item.index]:
                existing |= _created_tables(earlier)
    else:
        # "Existed before" comes from the rehearsal's own snapshot, not from guesswork.
        reached = step.before if not step.released else engine.snapshot_at(item.index - 1)
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
        severities=engine.plan.lint_severity,
        require_lock_timeout=engine.plan.require_lock_timeout,
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


def apply(engine: Engine, item: Item) -> Outcome:
    """The migration applies, and its layout's tool would run it too."""
    step = engine.steps[item.index]
    refusal = tool_refusal(item.migration, "up")
    if refusal is not None:
        # The state moves on (the harness can run it), so the rest of the history is still rehearsed.
        raise ItemFailed(
            f"{refusal}\nThe rehearsal applied it as migration-harness runs it, to rehearse the migrations after it."
        )
    return Outcome(PASSED, f"applied in {step.apply_seconds * 1000:.1f} ms")


def locks(engine: Engine, item: Item) -> Outcome:
    """The locks and rewrites measured while the migration ran stay within the plan's limits."""
    cfg = engine.configs[item.migration.id]
    report = engine.steps[item.index].locks
    if report is None:
        return Outcome(SKIPPED, f"the locks of {item.migration.id} were not measured")
    verdict = judge(report, cfg.locks, reason=cfg.reason)
    if not verdict.ok:
        raise ItemFailed(f"{item.migration.id} locks or rewrites tables that existed before it:\n{verdict.message()}")
    return Outcome(PASSED, verdict.message())


def batch(engine: Engine, item: Item) -> Outcome:
    """Run in batches, the migration leaves the same schema and data as run unbatched."""
    migration = item.migration
    step = engine.steps[item.index]
    run = step.batched
    if run is None:
        return Outcome(SKIPPED, f"{migration.id} was not run in batches")
    if run.error is not None:
        raise ItemFailed(f"running {migration.id} in batches fails:\n{run.error}")
    assert step.after is not None and run.snapshot is not None
    changes = diff_snapshots(step.after, run.snapshot)
    if changes:
        raise ItemFailed(f"in batches, {migration.id} leaves another schema than unbatched (unbatched → batched):\n"
                    f"{format_changes(changes)}")
    differ = data_changes(step.after_data or {}, run.data)
    if differ:
        raise ItemFailed(
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


def idempotent(engine: Engine, item: Item) -> Outcome:
    """Applied a second time, the migration succeeds and changes neither schema nor data."""
    migration = item.migration
    step = engine.steps[item.index]
    assert step.after is not None
    engine.await_ahead(item.index)
    if step.again is not None and step.after_state is not None:
        again_state, keys = tracking.advance(step.after_state, step.again)
        again, data = again_state.snapshot, touched_data(again_state, step.again)
        changes = diff_snapshots(step.after, again, keys)
        failing = changes or data_changes(
            {t: v for t, v in (step.after_data or {}).items() if t in data}, data
        )
        if failing and not engine.selfcheck.confirm(
            item.index, step.after_state, [as_script(migration.statements)], needs=()
        ):
            again, data = _apply_again(engine, item)  # the states were wrong or unverified: judged in full
            changes = diff_snapshots(step.after, again)
    else:
        again, data = _apply_again(engine, item)
        changes = diff_snapshots(step.after, again)
        failing = changes or data_changes({t: v for t, v in (step.after_data or {}).items() if t in data}, data)
        if failing and not engine.selfcheck.exact_or_replayed((item.index,)):
            again, data = _apply_again(engine, item)  # judged again against the state replayed in full
            changes = diff_snapshots(step.after, again)
    if changes:
        raise ItemFailed(
            f"applying {migration.id} a second time changes the schema:\n{format_changes(changes)}"
        )
    changed = data_changes({t: v for t, v in (step.after_data or {}).items() if t in data}, data)
    if changed:
        raise ItemFailed(f"applying {migration.id} a second time changes data:\n{changed}")
    return Outcome(PASSED, "second apply succeeded and changed nothing")


def _apply_again(engine: Engine, item: Item) -> tuple[Snapshot, dict[str, tuple[int, str]]]:
    """Apply the migration a second time (untracked): the schema then, and the data it changed."""
    migration = item.migration
    step = engine.steps[item.index]
    assert step.after is not None
    engine.require_position(item)
    engine.sync_nodes()
    with engine.scratch(migration.transactional) as (conn, start):
        try:
            run_statements(conn, migration.statements, migration.path)
        except StatementFailed as exc:
            raise ItemFailed(f"applying {migration.id} a second time fails:\n{exc}") from None
        data, catalog_written = changed_data(conn, start, engine.nodes)
        # No catalog row written means the schema cannot have changed: skip the snapshot.
        again = take_snapshot(conn) if catalog_written else step.after
    return again, data


def schema_matches(engine: Engine, item: Item) -> Outcome:
    """The migrations produce exactly the plan's desired schema (``schema:``)."""
    final = engine.steps[item.index].after
    assert final is not None  # _run applied the whole history first
    ok, message = desired_schema.schema_matches(engine.plan, engine.server, final)
    if not ok:
        raise ItemFailed(message)
    return Outcome(PASSED, message)


def backward_compatible(engine: Engine, item: Item) -> Outcome:
    """No change breaks the previous application version: breaking changes, and its old queries still plan."""
    migration = item.migration
    cfg = engine.configs[migration.id]
    step = engine.steps[item.index]
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
        error = _prepare(engine, query.sql, number)
        if error:
            problems.append(f"old query from {query.origin} no longer works: {error}\n      {query.sql.strip()}")
    if problems:
        raise ItemFailed(
            f"{migration.id} breaks the previous application version:\n  - " + "\n  - ".join(problems)
        )
    message = "no breaking change for old readers and writers"
    if acknowledged:
        message += "; acknowledged: " + ", ".join(acknowledged)
    return Outcome(PASSED, message)


def _prepare(engine: Engine, query: str, number: int) -> str | None:
    """Parse and plan *query* against the current schema without running it."""
    name = sql.Identifier(f"mh_compat_{number}")
    engine.conn.execute("BEGIN")
    try:
        engine.conn.execute(sql.SQL("PREPARE {} AS ").format(name) + sql.SQL(query))  # type: ignore[arg-type]
        engine.conn.execute(sql.SQL("DEALLOCATE {}").format(name))
    except psycopg.Error as exc:
        return describe_pg_error(exc)
    finally:
        engine.conn.execute("ROLLBACK")
        with contextlib.suppress(psycopg.Error):
            engine.conn.execute(sql.SQL("DEALLOCATE {}").format(name))
    return None


def preserve_rows(engine: Engine, item: Item) -> Outcome:
    """The tables that existed before the migration keep their row counts."""
    step = engine.steps[item.index]
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
        raise ItemFailed(
            "row counts of pre-existing tables changed (declare `preserve_rows: false` for this step if "
            "that is intended):\n  " + "\n  ".join(lost)
        )
    return Outcome(PASSED, f"row counts of {len(before)} pre-existing tables unchanged")


def check(engine: Engine, item: Item) -> Outcome:
    """The plan's SQL check, run in a rolled-back transaction, gives what it expects."""
    check = item.check
    assert check is not None
    engine.conn.execute("BEGIN")
    try:
        # Plan SQL is trusted, sent as written (psycopg types it as a literal string).
        cur = engine.conn.execute(check.sql)  # type: ignore[call-overload]
        rows = cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise ItemFailed(f"check {check.name!r} failed to run: {describe_pg_error(exc)}\n    {check.sql}") from None
    finally:
        engine.conn.execute("ROLLBACK")
    return Outcome(PASSED, _compare_check(check, rows))


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


def _compare_check(check: Check, rows: list[tuple[Any, ...]]) -> str:
    problem = check_problem(check, rows)
    if problem:
        raise ItemFailed(problem)
    return check_summary(check, rows)


# ---------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Assertion:
    """One kind of item: which migrations get one, and the function that judges it."""

    name: str
    judge: Callable[[Engine, Item], Outcome]
    wanted: Callable[[Engine, int], bool]  # whether migration *index* (the last one, if plan_level) gets an item
    plan_level: bool = False  # about the whole history, not one migration
    expand: Callable[[Engine, int], list[Item]] | None = None  # several items for one migration (checks)

    def items(self, engine: Engine, index: int) -> list[Item]:
        """The items of this assertion for migration *index*."""
        if self.expand is not None:
            return self.expand(engine, index)
        if not self.wanted(engine, index):
            return []
        return [Item(engine.migrations[index], self.name, index, plan_level=self.plan_level)]


def _config(engine: Engine, index: int) -> StepConfig:
    return engine.configs[engine.migrations[index].id]


def _checks(engine: Engine, index: int) -> list[Item]:
    """One item per check of the migration's step, and one for a sqitch verify script."""
    migration = engine.migrations[index]
    items = [Item(migration, "check", index, check) for check in _config(engine, index).checks]
    if migration.verify_sql is not None:  # sqitch verify: passes when the script runs without error
        verify = Check(name="sqitch verify", sql=f"{migration.verify_sql}\n;\nSELECT true")
        items.append(Item(migration, "check", index, verify))
    return items


def _wants_chain(engine: Engine, last: int) -> bool:
    """Whether the history gets a ``chain_rollback`` item: its head can be rolled back, and the plan wants it."""
    migrations = engine.migrations
    if not (last > engine.baseline and migrations[last].has_down and not _config(engine, last).irreversible):
        return False
    setting = getattr(engine.plan, "chain_rollback", None)
    if setting is None:
        # On by default when the plan asks for rollbacks at all.
        return any(engine.configs[m.id].rollback for m in migrations)
    return bool(setting)


#: Every assertion, in the order its items run: per migration, then about the whole history.
REGISTRY: dict[str, Assertion] = {a.name: a for a in (
    Assertion("lint", lint, lambda e, i: _config(e, i).lint),
    Assertion("apply", apply, lambda e, i: True),
    Assertion("batch", batch, lambda e, i: bool(e.migrations[i].batches)),  # batched must give what unbatched gives
    Assertion("locks", locks, lambda e, i: _config(e, i).locks.enabled),
    Assertion("idempotent", idempotent, lambda e, i: _config(e, i).idempotent),
    Assertion("rollback", rollback, lambda e, i: _config(e, i).rollback or _config(e, i).irreversible),
    Assertion("atomic", atomic, lambda e, i: e.wants_atomic(i)),
    Assertion("backward_compatible", backward_compatible, lambda e, i: _config(e, i).backward_compatible.enabled),
    Assertion("preserve_rows", preserve_rows, lambda e, i: e.seeded and _config(e, i).preserve_rows),
    Assertion("check", check, lambda e, i: True, expand=_checks),
    Assertion("schema_matches", schema_matches, lambda e, i: getattr(e.plan, "schema_matches", False), plan_level=True),
    Assertion("chain_rollback", chain_rollback, _wants_chain, plan_level=True),
)}

#: Assertions in the order they run for each migration.
ASSERTIONS = ("baseline", *(a.name for a in REGISTRY.values() if not a.plan_level))
