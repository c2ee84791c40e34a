"""The rehearsal bench's own parts on a few migrations: its plan is green and every layer it times runs.

The bench (``bench/rehearsal_bench.py``) backs the speed target's numbers,
so a change that broke its plan or one of its layers would leave those
numbers unchecked.  No timing is asserted here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import PASSED, Rehearsal
from harness.sources import load_plan_migrations

BENCH = Path(__file__).resolve().parent.parent / "bench" / "rehearsal_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rehearsal_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _databases(server: Server) -> set[str]:
    with server.connect("postgres", autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_bench_plan_rehearses_green(bench: ModuleType, pg_server: Server, tmp_path: Path) -> None:
    plan = load_plan(bench.generate(tmp_path, 8))
    with Rehearsal(plan, pg_server) as rehearsal:
        results = rehearsal.run_all()
    assert len(results) == 8 * 4
    assert [(item.id, outcome.message) for item, outcome in results if outcome.status != PASSED] == []


@pytest.mark.parametrize("layer", [None, *range(4)])
def test_every_layer_runs_and_drops_its_database(
    bench: ModuleType, pg_server: Server, tmp_path: Path, layer: int | None
) -> None:
    migrations = load_plan_migrations(load_plan(bench.generate(tmp_path, 8)))
    options = () if layer is None else list(bench.LAYERS.values())[layer]
    before = _databases(pg_server)
    assert bench.replay(pg_server, migrations, False, *options) > 0
    assert _databases(pg_server) == before


def test_provider_dsn_comparison_runs_green(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """``--provider-dsn``: both servers rehearse the plan green and the comparison is printed."""
    bench.provider_dsn(4, 1)
    out = capsys.readouterr().out
    assert "rehearsal items: 16" in out
    assert "JIT available (pg_jit_available): " in out
    assert "a new session there says jit = on" in out
    assert "ratio dsn / throwaway: " in out
