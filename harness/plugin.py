"""The pytest plugin: ``pytest --migrate-plan NAME`` rehearses a plan as test items.

Each plan file becomes a collector, each migration a collector under it, and
each assertion an item, so node ids read
``plans/staging.yaml::20261101120000_add_users::rollback`` and ``-k``, ``-x``,
``--junitxml``, ``-v`` and pytest-xdist behave as usual.  The engine behind the
items is :class:`harness.rehearsal.Rehearsal`, the same one ``harness
rehearse`` uses.

Without positional arguments, ``pytest --migrate-plan NAME`` collects the
plan alone (not the project's own tests); with them, both.

This module is what pytest loads in every run: the ``--migrate-*``
options and their ``harness_*`` ini twins.  When plans are given it
registers :mod:`harness.plugin_rehearsal` (the collectors and items, and
the engine behind them) as a second plugin.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

__all__ = ["pytest_addoption", "pytest_configure"]

_HELP = {
    "plan": "rehearse the migration plan NAME (plans/NAME.yaml) or PATH; may be given more than once",
    "provider": "rehearsal server provider: auto, local, embedded, docker or dsn (overrides the plan)",
    "dsn": "server for the dsn provider: scratch databases are created there and dropped afterwards",
    "apply": "after a fully green rehearsal, apply each plan to its target as the last item (harness apply)",
    "cache": (
        "rehearsed-prefix cache directory, or false for none (overrides the plan's rehearsal.cache, by default "
        ".harness/cache): items of migrations an earlier green rehearsal proved are skipped as cached"
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--migrate-*`` options and their ``harness_*`` ini twins."""
    group = parser.getgroup("migration-harness", "rehearse PostgreSQL migrations (migration-harness)")
    group.addoption("--migrate-plan", action="append", default=[], metavar="NAME", help=_HELP["plan"])
    group.addoption("--migrate-provider", default=None, metavar="PROVIDER", help=_HELP["provider"])
    group.addoption("--migrate-rehearsal-dsn", default=None, metavar="DSN", help=_HELP["dsn"])
    group.addoption("--migrate-apply", action="store_true", default=None, help=_HELP["apply"])
    group.addoption("--migrate-cache", default=None, metavar="DIR", help=_HELP["cache"])
    parser.addini("harness_plans", type="args", default=[], help=_HELP["plan"])
    parser.addini("harness_provider", default="", help=_HELP["provider"])
    parser.addini("harness_rehearsal_dsn", default="", help=_HELP["dsn"])
    parser.addini("harness_apply", type="bool", default=False, help=_HELP["apply"])
    parser.addini("harness_cache", default="", help=_HELP["cache"])


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the plans and make them collection arguments."""
    config.addinivalue_line("markers", "harness_plan(name): an item generated from a migration plan")
    # Plan items carry xdist_group; without pytest-xdist the mark would be unknown.
    config.addinivalue_line("markers", "xdist_group(name): items that run on one pytest-xdist worker")
    if getattr(config, "workerinput", {}).get("harness_loadgroup"):
        # An xdist worker parses the command line without -n, so it never learns that the controller
        # switched to loadgroup; without the group suffix on node ids, a plan's items would be spread.
        config.option.loadgroup = True
    names = list(config.getoption("migrate_plan") or []) or list(config.getini("harness_plans"))
    if names:
        _rehearsal().start(config, names)


def _rehearsal() -> ModuleType:
    """The rehearsal half of the plugin (:mod:`harness.plugin_rehearsal`), imported now.

    The plugin's one lazy import: pytest loads this module in every run
    where the package is installed, and the engine behind the items (the
    plan format, the rehearsal, servers, apply) is imported only when a
    plan is given, so a project's own test runs do not pay for it.
    """
    return importlib.import_module("harness.plugin_rehearsal")
