"""A rehearsal's verdicts never depend on its incremental snapshots being right (harness/rehearsal.py).

The tracked state is compared with a full snapshot at checkpoints, and a
tracked judgement that would fail is confirmed first; when the tracking was
wrong the rehearsal goes on with full snapshots and warns once.  The cases
here are histories that once made the tracking wrong, and a tracking broken
on purpose.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

import harness.rehearsal_selfcheck as selfcheck_mod
from harness import tracking
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, Rehearsal

PLAN = "defaults: {lint: false, locks: false, idempotent: true, rollback: true, backward_compatible: true}\n"

# ALTER COLUMN TYPE rebuilds t_c under a new OID; the same migration drops it.
# A later migration creates it again and its down drops it: the phantom left
# by the first made that rollback fail, and chain_rollback with it.
RETYPED_THEN_DROPPED = {
    "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int, c int);\nCREATE INDEX IF NOT EXISTS t_c ON t (c);",
    "1_t.down.sql": "DROP TABLE IF EXISTS t;",
    "2_retype.sql": "ALTER TABLE t ALTER COLUMN c TYPE bigint;\nDROP INDEX IF EXISTS t_c;",
    "2_retype.down.sql": "ALTER TABLE t ALTER COLUMN c TYPE int;\nCREATE INDEX IF NOT EXISTS t_c ON t (c);",
    "3_index.sql": "CREATE INDEX IF NOT EXISTS t_c ON t (c);",
    "3_index.down.sql": "DROP INDEX IF EXISTS t_c;",
}
# A unique index made the primary key (renamed to t_pkey), its column widened.
UNIQUE_TO_PRIMARY_KEY = {
    "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int NOT NULL, c int);\n"
    "CREATE UNIQUE INDEX IF NOT EXISTS t_uidx ON t (id);",
    "1_t.down.sql": "DROP TABLE IF EXISTS t;",
    "2_pk.sql": "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_uidx;\n"
    "ALTER TABLE t ALTER COLUMN id TYPE bigint;",
    "2_pk.down.sql": "ALTER TABLE t ALTER COLUMN id TYPE int;\nALTER TABLE t DROP CONSTRAINT t_pkey;\n"
    "CREATE UNIQUE INDEX t_uidx ON t (id);",
    "3_col.sql": "ALTER TABLE t ADD COLUMN IF NOT EXISTS d int;",
    "3_col.down.sql": "ALTER TABLE t DROP COLUMN IF EXISTS d;",
}
# Correct migrations whose downs only drop: the broken tracking below keeps what they drop.
DROPPING_DOWNS = {
    "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int, c int);",
    "1_t.down.sql": "DROP TABLE IF EXISTS t;",
    "2_index.sql": "CREATE INDEX IF NOT EXISTS t_c ON t (c);",
    "2_index.down.sql": "DROP INDEX IF EXISTS t_c;",
    "3_fn.sql": "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
    "3_fn.down.sql": "DROP FUNCTION IF EXISTS f();",
}


def make_project(root: Path, migrations: dict[str, str], plan: str = PLAN) -> Path:
    folder = root / "migrations"
    folder.mkdir(parents=True)
    for name, text in migrations.items():
        (folder / name).write_text(textwrap.dedent(text))
    path = root / "plan.yaml"
    path.write_text("migrations: migrations/\nrehearsal: {provider: embedded}\n" + plan)
    return path


def rehearse(pg_server: Server, path: Path) -> dict[str, tuple[str, str]]:
    with Rehearsal(load_plan(path), pg_server) as rehearsal:
        return {item.id: (outcome.status, outcome.message) for item, outcome in rehearsal.run_all()}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "harness.rehearsal"]


@pytest.mark.parametrize("snapshots", ["incremental", "verify", "full"])
@pytest.mark.parametrize(
    ("migrations", "plan"),
    [(RETYPED_THEN_DROPPED, PLAN), (UNIQUE_TO_PRIMARY_KEY, PLAN.replace("idempotent: true", "idempotent: false"))],
    ids=["retyped then dropped", "unique to primary key"],
)
def test_histories_that_broke_the_tracking_pass_without_falling_back(
    pg_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    snapshots: str,
    migrations: dict[str, str],
    plan: str,
) -> None:
    monkeypatch.setenv("HARNESS_SNAPSHOTS", snapshots)
    with caplog.at_level("WARNING"):
        results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    assert [(k, v) for k, v in results.items() if v[0] != PASSED] == []
    assert "chain_rollback" in results
    assert warnings_of(caplog) == []  # the tracking was right: no fall back to full snapshots


def _keep_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the tracking on purpose: a delta that only drops leaves what it dropped in the state."""
    real = tracking._advance_incrementally

    def broken(state: tracking.State, delta: tracking.Delta) -> tuple[tracking.State, frozenset[str]]:
        if delta.roots and not delta.objects:
            return state, frozenset()
        return real(state, delta)

    monkeypatch.setattr(tracking, "_advance_incrementally", broken)


@pytest.mark.parametrize("every", [1, 32], ids=["every state verified", "checkpoints apart"])
def test_a_wrong_tracked_failure_is_judged_again_in_full(
    pg_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    every: int,
) -> None:
    """With a tracking that keeps dropped objects, every rollback would fail; the verdicts are full mode's."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    monkeypatch.setattr(selfcheck_mod, "VERIFY_EVERY", every)
    _keep_dropped(monkeypatch)
    with caplog.at_level("WARNING"):
        results = rehearse(pg_server, make_project(tmp_path, DROPPING_DOWNS))
    assert [(k, v) for k, v in results.items() if v[0] != PASSED] == []
    assert "2_index::rollback" in results and "chain_rollback" in results
    warnings = warnings_of(caplog)
    assert len(warnings) <= 1, warnings
    if every == 1:
        # The in-place check compared a down's state with a full snapshot: it names the object kept.
        assert len(warnings) == 1, warnings
        assert "index public.t_c" in warnings[0] or "function public.f()" in warnings[0], warnings


def test_a_true_failure_stands_and_tracking_goes_on(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    migrations = {**DROPPING_DOWNS, "2_index.down.sql": "SELECT 1;"}  # the down forgets the index
    with caplog.at_level("WARNING"):
        plan = load_plan(make_project(tmp_path, migrations))
        with Rehearsal(plan, pg_server) as rehearsal:
            results = {item.id: outcome for item, outcome in rehearsal.run_all()}
            tracking_on = rehearsal.tracking_on
    status, message = results["2_index::rollback"].status, results["2_index::rollback"].message
    assert status == FAILED and "index public.t_c" in message, message
    assert results["3_fn::rollback"].status == PASSED
    assert warnings_of(caplog) == []
    assert tracking_on  # the tracked states proved right: no reason to stop tracking


def test_a_missed_change_is_caught_at_a_checkpoint_before_head(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A catalog write the tracking cannot see (in a DO block) is found at the next checkpoint, not only at head."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    monkeypatch.setattr(selfcheck_mod, "VERIFY_EVERY", 2)
    update = "UPDATE pg_catalog.pg_class SET relrowsecurity = {} WHERE oid = 'public.t'::regclass"
    migrations = {
        "1_t.sql": "CREATE TABLE IF NOT EXISTS t (id int);",
        "1_t.down.sql": "DROP TABLE IF EXISTS t;",
        "2_hack.sql": f"CREATE TABLE IF NOT EXISTS u (id int);\nDO $$ BEGIN {update.format('true')}; END $$;",
        "2_hack.down.sql": f"DROP TABLE IF EXISTS u;\nDO $$ BEGIN {update.format('false')}; END $$;",
        "3_v.sql": "CREATE OR REPLACE VIEW v AS SELECT id FROM t;",
        "3_v.down.sql": "DROP VIEW IF EXISTS v;",
    }
    with caplog.at_level("WARNING"):
        plan = load_plan(make_project(tmp_path, migrations))
        with Rehearsal(plan, pg_server) as rehearsal:
            results = {item.id: outcome.status for item, outcome in rehearsal.run_all()}
            tracking_on = rehearsal.tracking_on
    assert set(results.values()) == {PASSED}, results
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "after 2_hack (table public.t)" in warnings[0], warnings
    assert not tracking_on


def _blind_to_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the tracking on purpose: it never sees an index, so a down that forgets one looks right."""
    real = tracking._advance_incrementally

    def broken(state: tracking.State, delta: tracking.Delta) -> tuple[tracking.State, frozenset[str]]:
        objects = {k: v for k, v in delta.objects.items() if not k.startswith("index ")}
        return real(state, dataclasses.replace(delta, objects=objects))

    monkeypatch.setattr(tracking, "_advance_incrementally", broken)


def test_a_pass_that_rested_on_a_wrong_tracked_state_is_overturned(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A false pass reported before a checkpoint found the tracking wrong cannot stay green: the run fails."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    _blind_to_indexes(monkeypatch)
    migrations = {**DROPPING_DOWNS, "2_index.down.sql": "SELECT 1;"}  # the down forgets the index
    plan = PLAN.replace("locks: false", "locks: true")  # one migration at a time: 2's items report before 3 applies
    with caplog.at_level("WARNING"):
        results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    # The tracked rollback of 2_index passed: the broken tracking never saw the index the down leaves.
    assert results["2_index::rollback"][0] == PASSED
    # The head's checkpoint found the tracked state wrong; full snapshots judge that rollback FAILED, so a
    # later item carries the failure and the rehearsal is red.
    failed = {k: v for k, v in results.items() if v[0] == FAILED}
    assert any("2_index::rollback: reported passed, with full snapshots failed" in m for _, m in failed.values()), (
        results
    )
    assert len(warnings_of(caplog)) == 1



def test_an_untracked_rollback_against_a_wrong_tracked_state_is_judged_again(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A second apply that fails sends the rollback to the untracked path, which compares full snapshots with
    the states recorded; the tracked one after 3_drop is wrong (the broken tracking keeps the dropped index),
    so that failure is confirmed on states replayed in full, and the verdicts are those of full snapshots."""
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
    real = tracking._advance_incrementally

    def keeps_dropped_indexes(state: tracking.State, delta: tracking.Delta) -> tuple[tracking.State, frozenset[str]]:
        keys = [k for root in delta.roots for k in state.keys_by_root.get(root, ())]
        if keys and not delta.objects and all(k.startswith("index ") for k in keys):
            return state, frozenset()
        return real(state, delta)

    monkeypatch.setattr(tracking, "_advance_incrementally", keeps_dropped_indexes)
    migrations = {
        **DROPPING_DOWNS,
        # Not idempotent (the second apply fails): their rollbacks are judged untracked.
        "2_index.sql": "CREATE INDEX t_c ON t (c);",
        "2_index.down.sql": "DROP INDEX t_c;",
        "3_drop.sql": "DROP INDEX t_c;",
        "3_drop.down.sql": "CREATE INDEX t_c ON t (c);",
        "4_fn.sql": DROPPING_DOWNS["3_fn.sql"],
        "4_fn.down.sql": DROPPING_DOWNS["3_fn.down.sql"],
    }
    del migrations["3_fn.sql"], migrations["3_fn.down.sql"]
    plan = PLAN.replace("locks: false", "locks: true")  # one migration at a time
    with caplog.at_level("WARNING"):
        results = rehearse(pg_server, make_project(tmp_path, migrations, plan))
    failed = {k: v for k, v in results.items() if v[0] != PASSED}
    assert set(failed) == {"2_index::idempotent", "3_drop::idempotent"}, failed
    assert len(warnings_of(caplog)) == 1
