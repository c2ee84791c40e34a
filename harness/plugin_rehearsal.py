"""The rehearsal half of the pytest plugin: plan files as collectors, migrations as nodes, assertions as items.

:mod:`harness.plugin` registers this module as a second plugin when plans
are given (``--migrate-plan`` or ``harness_plans``); it imports the engine
(:class:`harness.rehearsal.Rehearsal`, the servers, apply) at its top.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .apply import ApplyOptions, apply_plan
from .cache import PrefixCache
from .errors import HarnessError
from .plan import Plan, load_plan, resolve_plan_path
from .postgres import Server
from .receipt import receipt_earned
from .redact import scrub
from .rehearsal import CACHED, FAILED, PASSED, SKIPPED, Item, Rehearsal
from .targets import rehearsal_server, rehearsal_settings

__all__ = ["PlanFile", "MigrationNode", "AssertionItem", "RehearsalFailed", "CacheWarning", "start"]

log = logging.getLogger(__name__)

_APPLY = "apply_target"
_OFF = ("false", "no", "off", "0", "none")

_plans_key = pytest.StashKey[dict[Path, str]]()
_servers_key = pytest.StashKey["_Servers"]()


def start(config: pytest.Config, names: list[str]) -> None:
    """Make the plans *names* collection arguments of this session, and this module a plugin of it."""
    cwd = config.invocation_params.dir
    plans: dict[Path, str] = {}
    for name in names:
        try:
            path = resolve_plan_path(name, cwd=cwd).resolve()
        except HarnessError as exc:
            pytest.exit(scrub(str(exc)), returncode=exc.exit_code)
        plans[path] = name
    config.stash[_plans_key] = plans
    config.stash[_servers_key] = _Servers(config)
    config.pluginmanager.register(sys.modules[__name__], "harness-rehearsal")
    config.pluginmanager.register(_Notes(config), "harness-notes")
    # Positional arguments given: rehearse the plans alongside them; otherwise the plans alone.
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    plan_args = [str(p) for p in plans]
    config.args = [*config.args, *plan_args] if explicit else plan_args
    # All items of a plan share one working database: keep them on one xdist worker.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerGroups(), "harness-xdist-groups")


class _WorkerGroups:
    """Tells each xdist worker that the controller groups items (the worker reads it in pytest_configure)."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["harness_loadgroup"] = node.config.getvalue("dist") == "loadgroup"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> PlanFile | None:
    """Collect the plan files given with ``--migrate-plan``."""
    plans = parent.config.stash.get(_plans_key, {})
    if file_path.resolve() in plans:
        return PlanFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write receipts of fully green plans, drop rehearsal databases, stop servers."""
    servers = session.config.stash.get(_servers_key, None)
    if servers is not None:
        servers.close()


_NOTE_SECTION = "Captured note call"


class _Notes:
    """With ``-v``, a passed item's note, indented under its line (``-rP`` shows it too; JUnit XML has ``note``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or not report.passed or self.config.get_verbosity() < 1:
            return
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        for name, content in report.sections:
            if name == _NOTE_SECTION and content.strip():
                terminal.ensure_newline()
                terminal.write("\n".join(f"    {line}" for line in content.splitlines()))
                # As pytest does after its own lines: the next item's line starts on a new one.
                terminal.currentfspath = -2


class CacheWarning(UserWarning):
    """A rehearsal cache entry was not used or not written; the plan was rehearsed without it."""


class _Servers:
    """Rehearsal servers of this session, one per (provider, major, dsn), started on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._servers: dict[tuple[str, int | None, str | None], Server] = {}
        self.files: list[PlanFile] = []

    def cache_for(self, plan: Plan) -> Path | None:
        """The plan's cache directory: ``--migrate-cache``, else ``harness_cache``, else the plan's own."""
        option = self.config.getoption("migrate_cache")
        base = self.config.invocation_params.dir
        if not option:
            option = self.config.getini("harness_cache")
            if self.config.inipath is not None:
                base = self.config.inipath.parent
        if not option:
            return plan.rehearsal.cache
        if option.strip().lower() in _OFF:
            return None
        return base / Path(option).expanduser()

    def overrides(self) -> tuple[str | None, str | None]:
        """``--migrate-provider`` and ``--migrate-rehearsal-dsn`` (else their ini twins), ``None`` when not set."""
        provider = self.config.getoption("migrate_provider") or self.config.getini("harness_provider") or None
        dsn = self.config.getoption("migrate_rehearsal_dsn") or self.config.getini("harness_rehearsal_dsn") or None
        return provider, dsn

    def get(self, plan: Plan) -> Server:
        """The server to rehearse *plan* on (:func:`harness.targets.rehearsal_server`), shared by equal settings."""
        provider, dsn = self.overrides()
        key = rehearsal_settings(plan, provider, dsn)
        if key not in self._servers:
            self._servers[key] = rehearsal_server(plan, provider, dsn)
        return self._servers[key]

    def close(self) -> None:
        for plan_file in self.files:
            plan_file.finish()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        self._servers.clear()


class RehearsalFailed(Exception):
    """An assertion about a migration failed; the message is the whole report."""


class PlanFile(pytest.File):
    """A plan file: collects one node per migration."""

    plan: Plan
    rehearsal: Rehearsal

    def collect(self) -> Iterator[MigrationNode | AssertionItem]:
        servers: _Servers = self.config.stash[_servers_key]
        try:
            self.plan = load_plan(self.path, cwd=self.config.invocation_params.dir)
            directory = servers.cache_for(self.plan)
            cache = PrefixCache(directory, self.plan.name) if directory is not None else None
            self.rehearsal = Rehearsal(self.plan, lambda: servers.get(self.plan), cache=cache)
        except HarnessError as exc:
            raise self.CollectError(scrub(str(exc))) from None
        servers.files.append(self)
        self.results: dict[str, str] = {}
        self._receipt: Path | None = None
        self.warned = 0  # cache warnings already shown
        self.expected = [item.id for item in self.rehearsal.items()]
        by_migration: dict[str, list[Item]] = {}
        plan_level: list[Item] = []
        for item in self.rehearsal.items():
            if item.plan_level:
                plan_level.append(item)
            else:
                by_migration.setdefault(item.migration.id, []).append(item)
        for migration in self.rehearsal.migrations:
            node = MigrationNode.from_parent(self, name=migration.id)
            node.specs = by_migration.get(migration.id, [])
            yield node
        for spec in plan_level:
            yield _make_item(self, spec, self)
        apply = self.config.getoption("migrate_apply")
        if (apply if apply is not None else self.config.getini("harness_apply")) and self.rehearsal.migrations:
            last = len(self.rehearsal.migrations) - 1
            spec = Item(self.rehearsal.migrations[last], _APPLY, last, plan_level=True)
            yield _make_item(self, spec, self)

    def record(self, item: Item, status: str) -> None:
        self.results[item.id] = status

    def green(self) -> bool:
        """Whether every rehearsal item of the plan ran and none failed.

        A skipped item says what was not claimed (no down migration, ``rollback: none``); items skip for a
        failed migration only after that failure. Cached items were proved by an earlier rehearsal.
        """
        return receipt_earned(self.expected, self.results)

    def write_receipt(self) -> Path | None:
        """Write the receipt once, if the plan is green."""
        if self._receipt is None and self.green():
            self._receipt = self.rehearsal.write_receipt()
            if self._receipt:
                log.info("wrote rehearsal receipt %s", self._receipt)
        return self._receipt

    def finish(self) -> None:
        """Write the receipt if every item of the plan ran and passed; drop the database."""
        try:
            receipt = self.write_receipt()
            if receipt is not None:
                self.rehearsal.save_cache(receipt)
        finally:
            self.rehearsal.close()


class MigrationNode(pytest.Collector):
    """One migration of a plan: collects its assertion items."""

    specs: list[Item]

    def collect(self) -> Iterator[AssertionItem]:
        plan_file = self.parent
        assert isinstance(plan_file, PlanFile)
        for spec in self.specs:
            yield _make_item(self, spec, plan_file)


def _make_item(parent: pytest.Collector, spec: Item, plan_file: PlanFile) -> AssertionItem:
    item = AssertionItem.from_parent(parent, name=spec.name)
    item.spec = spec
    item.add_marker(pytest.mark.harness_plan(plan_file.name))
    # All items of a plan share one working database: keep them on one xdist worker.
    item.add_marker(pytest.mark.xdist_group(plan_file.nodeid))
    return item


class AssertionItem(pytest.Item):
    """One assertion about one migration."""

    spec: Item

    @property
    def plan_file(self) -> PlanFile:
        node = self.parent
        while not isinstance(node, PlanFile):
            assert node is not None
            node = node.parent
        return node

    def runtest(self) -> None:
        plan_file = self.plan_file
        if self.spec.assertion == _APPLY:
            self._apply(plan_file)
            return
        try:
            outcome = plan_file.rehearsal.run(self.spec)
        except HarnessError as exc:
            plan_file.record(self.spec, FAILED)
            raise RehearsalFailed(scrub(str(exc))) from None
        plan_file.record(self.spec, outcome.status)
        for message in plan_file.rehearsal.cache_warnings[plan_file.warned:]:
            warnings.warn(CacheWarning(message), stacklevel=1)
            plan_file.warned += 1
        if outcome.status in (SKIPPED, CACHED):  # cached: proved by an earlier rehearsal, not run now
            pytest.skip(outcome.message)
        if outcome.status == FAILED:
            raise RehearsalFailed(outcome.message)
        self._note(outcome.message)

    def _note(self, message: str) -> None:
        """Keep a passed item's note: a JUnit XML property ``note``, and a report section (``-rP``, ``-v``)."""
        if message:
            self.user_properties.append(("note", message))
            self.add_report_section("call", "note", message)

    def _apply(self, plan_file: PlanFile) -> None:
        """Apply the plan to its target, only after every rehearsal item passed."""
        if not plan_file.green():
            failed = [i for i in plan_file.expected if plan_file.results.get(i) not in (PASSED, CACHED)]
            pytest.skip(
                f"not applying: {len(failed)} rehearsal item(s) did not pass or did not run "
                f"(first: {failed[0]})"
            )
        plan_file.write_receipt()
        out = io.StringIO()
        try:
            # --migrate-apply is the explicit consent a terminal prompt would ask for.
            result = apply_plan(plan_file.plan, ApplyOptions(yes=True), out=out)
        except HarnessError as exc:
            raise RehearsalFailed(scrub(f"{out.getvalue()}\n{exc}".strip())) from None
        if not result.ok:
            raise RehearsalFailed(scrub(f"{out.getvalue()}\n{result.error or 'apply failed'}".strip()))
        self._note(scrub(out.getvalue()).strip())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, RehearsalFailed):
            return str(excinfo.value)
        return scrub(str(super().repr_failure(excinfo, style)))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.plan_file.path, None, self.spec.id
