"""migration-harness: a pytest-style, declarative test-and-apply harness for PostgreSQL migrations.

The public API is imported lazily, so that the pytest plugin (loaded by
every pytest run where this package is installed) costs nothing until a plan
is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "HarnessError",
    "Plan",
    "load_plan",
    "Rehearsal",
    "start_server",
    "load_migrations",
    "take_snapshot",
    "diff_snapshots",
    "lint_sql",
    "ProductionMigrationRunner",
    "DevelopmentMigrationRunner",
    "rehearse_plan",
]

_EXPORTS = {
    "HarnessError": "harness.errors",
    "Plan": "harness.plan",
    "load_plan": "harness.plan",
    "Rehearsal": "harness.rehearsal",
    "start_server": "harness.postgres",
    "load_migrations": "harness.sources",
    "take_snapshot": "harness.snapshot",
    "diff_snapshots": "harness.snapshot",
    "lint_sql": "harness.lint",
    "ProductionMigrationRunner": "harness.runner",
    "DevelopmentMigrationRunner": "harness.runner",
    "rehearse_plan": "harness.runner",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
