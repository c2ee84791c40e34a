"""The typed Python API: production and development runners over apply, rehearsal and status.

```python
from harness import ProductionMigrationRunner

runner = ProductionMigrationRunner(plan="plans/production.yaml", backup_enabled=True, max_retries=5,
                                   hooks={"post_run": [notify]})
runner.rehearse()      # RehearsalResult: every item with its outcome, and the receipt path
result = runner.run()  # ApplyResult: applied migrations, backup, verification, health, timings
runner.rollback(steps=1)  # RollbackResult: the newest migration rolled back with its down
runner.status()        # history.Status: applied, pending, changed, missing, failed
```

A runner is a plan plus a few keyword overrides of its apply settings
(backup, rollback on failure, retries, health URL) and Python hooks.  The
overrides are validated and applied by the plan layer
(:func:`harness.plan.with_settings`) as if the plan file held them; they
change how apply behaves, never what was rehearsed, so a receipt written
for the plan file still matches.

The command line is a thin wrapper over the same functions:
``harness apply`` calls :func:`harness.apply.apply_plan`, ``harness
rollback`` calls :func:`harness.rollback.rollback_plan`, ``harness
rehearse`` calls :func:`rehearse_plan` and ``harness status`` calls
:func:`read_status`, so the API and the CLI cannot drift apart.  The rules
every front end shares are decided below them: the database to work on and
the rehearsal server in :mod:`harness.targets`, when a rehearsal earns a
receipt in :func:`harness.receipt.receipt_earned`, and the overrides are
validated by the plan format (:func:`harness.plan.with_settings`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

import psycopg

from . import history
from .apply import ApplyOptions, ApplyResult, apply_plan
from .connection import check_conninfo, classify_connect_error
from .errors import ConfigError, ConnectionRefusedByConfig, TargetUnreachable
from .hooks import EVENTS, PythonHook
from .cache import PrefixCache
from .plan import Hook, Plan, load_plan, with_settings
from .postgres import Server
from .receipt import receipt_earned
from .redact import describe_dsn, register_dsn
from .rehearsal import CACHED, FAILED, PASSED, SKIPPED, Item, Outcome, Rehearsal
from .rollback import RollbackResult, rollback_plan
from .sources import Migration, load_plan_migrations
from .targets import find_target, rehearsal_server

__all__ = [
    "MigrationRunner",
    "ProductionMigrationRunner",
    "DevelopmentMigrationRunner",
    "ItemResult",
    "RehearsalResult",
    "rehearse_plan",
    "status_target",
    "read_status",
]

log = logging.getLogger(__name__)

#: Called after each rehearsal item with the item and its outcome (``harness rehearse`` prints them).
OnItem = Callable[[Item, Outcome], None]


# --------------------------------------------------------------------------
# Rehearsal


@dataclass(frozen=True)
class ItemResult:
    """One rehearsal item and what running it found."""

    id: str  # "<plan>::<item id>", as pytest and `harness rehearse --json` name it
    item: Item = field(repr=False)
    outcome: Outcome

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``skipped`` or ``cached`` (proved by an earlier rehearsal, see harness/cache.py)."""
        return self.outcome.status

    @property
    def message(self) -> str:
        """The outcome's report."""
        return self.outcome.message


@dataclass
class RehearsalResult:
    """What a rehearsal found: the items run, in order, and the receipt a fully green one wrote."""

    plan: str
    items: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0
    receipt: Path | None = None
    #: Things to know about the rehearsal as a whole (no PostgreSQL major pinned...).
    warnings: list[str] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for r in self.items if r.status == status)

    @property
    def passed(self) -> int:
        """How many items passed."""
        return self._count(PASSED)

    @property
    def failed(self) -> int:
        """How many items failed."""
        return self._count(FAILED)

    @property
    def skipped(self) -> int:
        """How many items were skipped."""
        return self._count(SKIPPED)

    @property
    def cached(self) -> int:
        """How many items were not run because an earlier rehearsal of the same prefix proved them."""
        return self._count(CACHED)

    @property
    def ok(self) -> bool:
        """True when no item failed."""
        return self.failed == 0

    def summary(self) -> str:
        """``N passed, N failed, N skipped[, N cached] in S s``."""
        cached = f", {self.cached} cached" if self.cached else ""
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped{cached} in {self.seconds:.2f}s"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (the shape of ``harness rehearse --json``)."""
        return {
            "plan": self.plan,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "receipt": str(self.receipt) if self.receipt else None,
            "warnings": list(self.warnings),
            "items": [
                {"id": r.id, "status": r.status, "message": r.message, "duration": round(r.outcome.duration, 4)}
                for r in self.items
            ],
        }


def rehearse_plan(
    plan: Plan,
    *,
    provider: str | None = None,
    dsn: str | None = None,
    select: str | None = None,
    exitfirst: bool = False,
    on_item: OnItem | None = None,
    cache: Path | bool | None = None,
) -> RehearsalResult:
    """Rehearse *plan* on a throwaway server and write its receipt when every item passed.

    *provider* and *dsn* override the plan's rehearsal server; *select* keeps
    only items whose id contains it (no receipt is written then);
    *exitfirst* stops at the first failure; *on_item* is called after each
    item.  *cache* is the rehearsed-prefix cache directory (``None``: the
    plan's ``rehearsal.cache``; ``False``: none): the migrations an earlier
    green rehearsal proved are restored, their items reported ``cached``, and
    a green rehearsal is cached in turn.  The server is started on first use
    and always stopped.
    """
    servers: list[Server] = []

    def factory() -> Server:
        servers.append(rehearsal_server(plan, provider, dsn))
        return servers[0]

    t0 = time.perf_counter()
    result = RehearsalResult(plan=plan.name)
    directory = plan.rehearsal.cache if cache is None or cache is True else (cache or None)
    prefix_cache = PrefixCache(directory, plan.name) if directory is not None and not select else None
    try:
        with Rehearsal(plan, factory, cache=prefix_cache, ahead=True) as rehearsal:
            items = rehearsal.items()
            if select:
                items = [i for i in items if select in i.id]
            for item in items:
                outcome = rehearsal.run(item)
                result.items.append(ItemResult(f"{plan.name}::{item.id}", item, outcome))
                if on_item is not None:
                    on_item(item, outcome)
                if exitfirst and outcome.status == FAILED:
                    break
            statuses = {r.item.id: r.status for r in result.items}
            if receipt_earned([i.id for i in items], statuses, selected=bool(select)):
                result.receipt = rehearsal.write_receipt()
                if result.receipt is not None:
                    rehearsal.save_cache(result.receipt)
            result.warnings.extend(rehearsal.cache_warnings)
    finally:
        for server in servers:
            server.stop()
        result.seconds = time.perf_counter() - t0
    if plan.rehearsal.postgres is None and servers:
        result.warnings.append(_unpinned_major(plan, servers[0].version))
    return result


def _unpinned_major(plan: Plan, version: str) -> str:
    return (
        f"plan {plan.name!r} pins no PostgreSQL major (rehearsal: {{postgres: N}}), so it was rehearsed on "
        f"PostgreSQL {version}, the first server found; production apply refuses the receipt when the target runs "
        "another major. Pin the production's major and rehearse with its binaries (docs/plans.md)."
    )


# --------------------------------------------------------------------------
# Status


def status_target(plan: Plan, dsn: str | None = None) -> tuple[str, str | None]:
    """The database whose status to show, and a note when it is the development database.

    *dsn* wins, then the plan's target; a plan without a target means its
    running development database (apply's database for such a plan).  Raises
    :class:`~harness.errors.ConfigError` when that is not running: status
    never starts it.  The rule is :func:`harness.targets.find_target`'s.
    """
    target = find_target(plan, dsn, dev="running", what="inspect")
    assert target.dsn is not None
    return target.dsn, target.note


def read_status(dsn: str, migrations: Sequence[Migration]) -> history.Status[Migration]:
    """The history of the database at *dsn* compared with *migrations* (read only)."""
    register_dsn(dsn)
    where = describe_dsn(dsn)
    check_conninfo(dsn, where)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        # Classified like apply's connections, without retries: status is a quick look.
        verdict = classify_connect_error(exc, dsn)
        if verdict.transient:
            raise TargetUnreachable(
                f"cannot connect to {where}: {verdict.reason}. Check that the server is running and reachable.",
                where=where, reason=verdict.reason,
            ) from None
        raise ConnectionRefusedByConfig(
            f"cannot connect to {where}: {verdict.reason}. {verdict.advice[0].upper() + verdict.advice[1:]}.",
            where=where, reason=verdict.reason,
        ) from None
    with conn:
        applied = history.read_applied(conn)
        progress = history.read_progress(conn)
    return history.compute_status(migrations, applied, progress)


# --------------------------------------------------------------------------
# Runners


class MigrationRunner:
    """A plan with keyword overrides, run from Python: :meth:`run`, :meth:`rehearse`, :meth:`status`.

    Use :class:`ProductionMigrationRunner` or :class:`DevelopmentMigrationRunner`;
    they differ only in the mode apply runs in.  Keyword arguments (``None``:
    keep the plan's setting):

    ``backup_enabled``
        ``False``: ``backup.mode: none``; ``True``: the plan's mode, or
        ``full`` when the plan says ``none``.
    ``rollback_on_failure``
        ``health.on_failure``: ``rollback`` (True) or ``stop`` (False).
    ``max_retries``, ``retry_delay``
        ``guards.max_retries`` and ``guards.retry_delay`` (seconds).
    ``health_check_url``
        ``health.url`` (http or https).
    ``hooks``
        Python callables per event (``pre_run``, ``pre_migration``, ...),
        run after the plan's own hooks with a :class:`harness.hooks.HookContext`.
    ``target``
        The database to migrate instead of the plan's target.
    ``force``, ``dry_run``
        As ``harness apply --force`` / ``--dry-run``.
    ``yes``
        Calling :meth:`run` is the confirmation (True, the default); False
        asks on the terminal like ``harness apply`` does.
    ``provider``, ``rehearsal_dsn``
        Override the plan's rehearsal server (``harness rehearse --provider``).
    ``out``
        Where progress lines go (``None``, the default: nowhere; every run
        still writes its JSON-lines log under ``<root>/logs/``).
    """

    #: The mode :meth:`run` applies in.
    mode: ClassVar[str] = "development"

    def __init__(
        self,
        plan: Plan | str | os.PathLike[str],
        *,
        backup_enabled: bool | None = None,
        rollback_on_failure: bool | None = None,
        max_retries: int | None = None,
        retry_delay: float | str | None = None,
        health_check_url: str | None = None,
        hooks: Mapping[str, Sequence[PythonHook | Hook] | PythonHook] | None = None,
        target: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        yes: bool = True,
        provider: str | None = None,
        rehearsal_dsn: str | None = None,
        out: TextIO | None = None,
    ) -> None:
        # A name ("prod": plans/prod.yaml) or a path, resolved as `harness apply NAME` does.
        loaded = plan if isinstance(plan, Plan) else load_plan(plan if isinstance(plan, str) else Path(plan))
        self.plan: Plan = _override(
            loaded,
            backup_enabled=backup_enabled,
            rollback_on_failure=rollback_on_failure,
            max_retries=max_retries,
            retry_delay=retry_delay,
            health_check_url=health_check_url,
        )
        self.hooks: dict[str, tuple[PythonHook | Hook, ...]] = _check_hooks(hooks or {})
        if target:
            register_dsn(target)
        self.target = target
        self.force = force
        self.dry_run = dry_run
        self.yes = yes
        self.provider = provider
        self.rehearsal_dsn = rehearsal_dsn
        if rehearsal_dsn:
            register_dsn(rehearsal_dsn)
        self.out = out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(plan={self.plan.name!r}, mode={self.mode!r})"

    @property
    def options(self) -> ApplyOptions:
        """The :class:`~harness.apply.ApplyOptions` :meth:`run` passes to :func:`~harness.apply.apply_plan`."""
        return ApplyOptions(
            dry_run=self.dry_run,
            force=self.force,
            mode=self.mode,
            yes=self.yes,
            hooks=self.hooks,
            target=self.target,
        )

    def run(self, *, to: str | None = None) -> ApplyResult:
        """Apply the plan's pending migrations (``harness apply``); the :class:`~harness.apply.ApplyResult`.

        *to* (a version or migration id) stops after that migration
        (``harness apply --to``).  Raises the
        :class:`~harness.errors.HarnessError` subclass of a failure, with the
        partial result as ``exc.result``.
        """
        options = dataclasses.replace(self.options, to=to) if to is not None else self.options
        return apply_plan(self.plan, options, out=self.out)

    def rollback(self, *, to: str | None = None, steps: int | None = None) -> RollbackResult:
        """Roll back every migration applied after version *to*, or the newest *steps* (``harness rollback``).

        Exactly one of the two; guards, receipt, backup and verification as
        for :meth:`run` (see :mod:`harness.rollback`).  Raises like :meth:`run`.
        """
        return rollback_plan(self.plan, self.options, to=to, steps=steps, out=self.out)

    def rehearse(
        self, *, select: str | None = None, exitfirst: bool = False, on_item: OnItem | None = None
    ) -> RehearsalResult:
        """Rehearse the plan (``harness rehearse``); a fully green rehearsal writes the receipt :meth:`run` checks."""
        return rehearse_plan(
            self.plan, provider=self.provider, dsn=self.rehearsal_dsn, select=select, exitfirst=exitfirst,
            on_item=on_item,
        )

    def status(self) -> history.Status[Migration]:
        """Applied, pending, changed, missing and failed migrations of the target (``harness status``)."""
        target = find_target(self.plan, self.target, mode=self.mode, dev="running", what="inspect")
        assert target.dsn is not None
        return read_status(target.dsn, load_plan_migrations(self.plan))


class ProductionMigrationRunner(MigrationRunner):
    """A runner in production mode: receipt gate, drift check, backup, verification, health."""

    mode: ClassVar[str] = "production"


class DevelopmentMigrationRunner(MigrationRunner):
    """A runner in development mode: no receipt, drift check or backup; the dev database without a target."""

    mode: ClassVar[str] = "development"


# --------------------------------------------------------------------------
# Overrides


def _override(
    plan: Plan,
    *,
    backup_enabled: bool | None,
    rollback_on_failure: bool | None,
    max_retries: int | None,
    retry_delay: float | str | None,
    health_check_url: str | None,
) -> Plan:
    """*plan* with the runner's keyword overrides, validated by the plan format (:func:`harness.plan.with_settings`).

    The two switches are the runner's own words for plan values, translated here: ``backup_enabled``
    (``backup.mode``: ``none``, or the plan's mode and ``full`` when it says ``none``) and
    ``rollback_on_failure`` (``health.on_failure``: ``rollback`` or ``stop``).
    """
    settings: dict[str, dict[str, Any]] = {}
    if backup_enabled is not None:
        _want_bool("backup_enabled", backup_enabled)
        mode = "none" if not backup_enabled else ("full" if plan.backup.mode == "none" else plan.backup.mode)
        settings.setdefault("backup", {})["mode"] = mode
    if max_retries is not None:
        settings.setdefault("guards", {})["max_retries"] = max_retries
    if retry_delay is not None:
        settings.setdefault("guards", {})["retry_delay"] = retry_delay
    if rollback_on_failure is not None:
        _want_bool("rollback_on_failure", rollback_on_failure)
        settings.setdefault("health", {})["on_failure"] = "rollback" if rollback_on_failure else "stop"
    if health_check_url is not None:
        settings.setdefault("health", {})["url"] = health_check_url
    return with_settings(plan, settings, source="runner keyword arguments") if settings else plan


def _want_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected True or False, got {value!r}")


def _check_hooks(
    hooks: Mapping[str, Sequence[PythonHook | Hook] | PythonHook],
) -> dict[str, tuple[PythonHook | Hook, ...]]:
    checked: dict[str, tuple[PythonHook | Hook, ...]] = {}
    for event, value in hooks.items():
        if event not in EVENTS:
            raise ConfigError(f"hooks: unknown event {event!r}; the events are {', '.join(EVENTS)}")
        listed = (value,) if callable(value) and not isinstance(value, Hook) else tuple(value)  # type: ignore[arg-type]
        for hook in listed:
            if not (callable(hook) or isinstance(hook, Hook)):
                raise ConfigError(f"hooks[{event!r}]: {hook!r} is not callable; pass functions taking a HookContext")
        checked[event] = listed
    return checked
