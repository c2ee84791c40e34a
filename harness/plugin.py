"""The pytest plugin: ``pytest --migrate-plan NAME`` rehearses a plan as test items.

Each plan file becomes a collector, each migration a collector under it, and
each assertion an item, so node ids read
``plans/staging.yaml::20261101120000_add_users::rollback`` and ``-k``, ``-x``,
``--junitxml``, ``-v`` and pytest-xdist behave as usual.  The engine behind the
items is :class:`harness.rehearsal.Rehearsal`, the same one ``harness
rehearse`` uses.

Without positional arguments, ``pytest --migrate-plan NAME`` collects the
plan alone (not the project's own tests); with them, both.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import HarnessError
from .redact import scrub

# The plugin is loaded by every pytest run where the package is installed;
# the engine is imported only when a plan is actually rehearsed.
if TYPE_CHECKING:
    from .plan import Plan
    from .postgres import Server
    from .rehearsal import Item, Rehearsal

PASSED, FAILED, SKIPPED, CACHED = "passed", "failed", "skipped", "cached"
_APPLY = "apply_target"

__all__ = ["PlanFile", "MigrationNode", "AssertionItem", "RehearsalFailed", "CacheWarning"]

log = logging.getLogger(__name__)

_plans_key = pytest.StashKey[dict[Path, str]]()
_servers_key = pytest.StashKey["_Servers"]()

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
_OFF = ("false", "no", "off", "0", "none")


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
    if not names:
        return
    cwd = config.invocation_params.dir
    plans: dict[Path, str] = {}
    for name in names:
        try:
            from .plan import resolve_plan_path

            path = resolve_plan_path(name, cwd=cwd).resolve()
        except HarnessError as exc:
            pytest.exit(scrub(str(exc)), returncode=exc.exit_code)
        plans[path] = name
    config.stash[_plans_key] = plans
    config.stash[_servers_key] = _Servers(config)
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

    def provider_for(self, plan: Plan) -> tuple[str, str | None]:
        provider = self.config.getoption("migrate_provider") or self.config.getini("harness_provider") or None
        dsn = self.config.getoption("migrate_rehearsal_dsn") or self.config.getini("harness_rehearsal_dsn") or None
        return provider or plan.rehearsal.provider, dsn or plan.rehearsal.dsn

    def get(self, plan: Plan) -> Server:
        provider, dsn = self.provider_for(plan)
        key = (provider, plan.rehearsal.postgres, dsn)
        if key not in self._servers:
            from .postgres import start_server

            self._servers[key] = start_server(
                provider, plan.rehearsal.postgres, dsn, data_bytes=plan.rehearsal.seed_bytes
            )
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
        from .cache import PrefixCache
        from .plan import load_plan
        from .rehearsal import Rehearsal

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
            from .rehearsal import Item

            spec = Item(self.rehearsal.migrations[last], _APPLY, last, plan_level=True)
            yield _make_item(self, spec, self)

    def record(self, item: Item, status: str) -> None:
        self.results[item.id] = status

    def green(self) -> bool:
        """Whether every rehearsal item of the plan ran and none failed.

        A skipped item says what was not claimed (no down migration, ``rollback: none``); items skip for a
        failed migration only after that failure. Cached items were proved by an earlier rehearsal.
        """
        return bool(self.expected) and all(self.results.get(i) in (PASSED, CACHED, SKIPPED) for i in self.expected)

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
        import io

        from .apply import ApplyOptions, apply_plan

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
