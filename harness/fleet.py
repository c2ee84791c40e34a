"""Apply one rehearsed plan to a fleet: many databases, or many tenant schemas, in waves.

A plan with ``targets:`` or ``fleet:`` (docs/fleet.md) names its members:
a fixed list of databases, databases a query discovers, and tenant schemas a
query lists.  :func:`apply_fleet` and :func:`rollback_fleet` run the
single-target engine (:func:`harness.apply.apply_plan`,
:func:`harness.rollback.rollback_plan`) on each member, with every guard it
has (connection retries, the run lock, the receipt and drift checks,
backup, transactions and timeouts, verification, health), and add what a
fleet needs:

* **one rehearsal**: the receipt is checked once before any member is
  touched; the migrations are loaded once; the schemas a drift or
  verification check compares with are rehearsed once per version and shared
  (:class:`SharedRehearsal`);
* **waves** run in order (``canary: N``, ``percent: P``, ``rest: true``);
  inside a wave at most ``concurrency`` members run at once; when a wave's
  failures reach ``stop_after_failures`` no further member starts, in this
  wave or a later one; one member's failure never touches another;
* **resume**: a member already at the head is skipped after one history
  read; failed and pending ones are tried again;
* **selection**: ``--only`` / ``--exclude`` (names or shell patterns) and
  ``--shard i/n``, a stable slice by a hash of the name, so a fleet can be
  split across CI jobs; the members' own run locks keep overlapping runs safe;
* **Ctrl-C** stops starting members; running ones stop after their current
  migration (:class:`harness.errors.Stopped`);
* one JSON-lines log per fleet run (``logs/<plan>-fleet-<time>.jsonl``) with
  a record per member and migration; each member also writes its own run log
  and backups under ``<plan>.<member>`` names.

:func:`fleet_status` reads every member's history for ``harness status``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import psycopg

from . import history
from ._apply_text import first_line, seconds
from .apply import apply_plan
from .apply_context import REHEARSAL_SCHEMA, ApplyOptions, ApplyResult, history_scope, rehearse_schemas
from .connection import classify_connect_error, tenant_dsn
from .errors import ConfigError, HarnessError, Stopped, TargetUnreachable
from .plan import Discovery, Fleet, Plan, Wave
from .mirror import mirror_for
from .receipt import Receipt, verify_receipt
from .redact import describe_dsn, register_dsn, scrub
from .rollback import rollback_plan
from .runlog import RunLog
from .snapshot import Snapshot, diff_snapshots, schema_view, take_snapshot
from .sources import Migration, load_plan_migrations
from .targets import confirm

__all__ = [
    "Target",
    "Selection",
    "MemberOutcome",
    "FleetResult",
    "SharedRehearsal",
    "fleet_targets",
    "select_targets",
    "parse_shard",
    "shard_of",
    "plan_waves",
    "apply_fleet",
    "rollback_fleet",
    "fleet_status",
    "format_fleet_status",
    "MemberStatus",
    "STATES",
]

#: What a member's run ended in.
STATES = ("applied", "at head", "rolled back", "failed", "stopped", "not started", "not in a wave", "running",
          "would apply", "would roll back", "would refuse")

_CONNECT_TIMEOUT = 10


# --------------------------------------------------------------------------
# Members and selection


@dataclass(frozen=True)
class Target:
    """One member of a fleet: a database, or a tenant schema in one (``schema``)."""

    name: str
    dsn: str = field(repr=False)
    schema: str | None = None

    @property
    def where(self) -> str:
        """The member for messages: its database without secrets, and its schema."""
        return describe_dsn(self.dsn) + (f", schema {self.schema}" if self.schema else "")


@dataclass(frozen=True)
class Selection:
    """Which members one run takes: names or patterns to keep or leave out, and a shard ``(i, n)``."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None


def fleet_targets(plan: Plan) -> list[Target]:
    """Every member of *plan*'s fleet, in order: the listed databases, the discovered ones, the tenant schemas.

    Discovery queries run now (a fleet is whatever they return at the start
    of a run).  Every discovered connection string is registered for
    redaction before anything can print it.  Two members with one name are
    a :class:`~harness.errors.ConfigError`.
    """
    fleet = plan.fleet
    found = [Target(t.name, t.dsn) for t in fleet.targets]
    if fleet.discover is not None:
        rows = _query(plan, fleet.discover, "fleet.discover")
        for number, row in enumerate(rows, 1):
            if len(row) < 2 or not isinstance(row[0], str) or not isinstance(row[1], str) or not row[0] or not row[1]:
                raise ConfigError(f"{_origin(plan, fleet.discover)}: fleet.discover: row {number} is not (name, dsn) "
                                  "text; the query must return a name and a connection string per target")
            register_dsn(row[1])
            found.append(Target(row[0], row[1]))
    if fleet.schemas is not None:
        rows = _query(plan, fleet.schemas, "fleet.schemas")
        for number, row in enumerate(rows, 1):
            if not row or not isinstance(row[0], str) or not row[0]:
                raise ConfigError(f"{_origin(plan, fleet.schemas)}: fleet.schemas: row {number} is not a schema name; "
                                  "the query must return one schema name per row")
            found.append(Target(row[0], fleet.schemas.dsn, row[0]))
    seen: set[str] = set()
    for target in found:
        if target.name in seen:
            raise ConfigError(f"{plan.display_path or plan.path}: the fleet has two members named {target.name!r}; "
                              "names must be unique (they name logs, backups and --only selections)")
        seen.add(target.name)
    return found


def _origin(plan: Plan, discovery: Discovery) -> str:
    return f"{plan.display_path or plan.path}:{discovery.line}"


def _query(plan: Plan, discovery: Discovery, key: str) -> list[tuple[Any, ...]]:
    """Rows of a discovery query, read-only; an unreachable catalog exits 1, a refused login or a bad query 2."""
    where = describe_dsn(discovery.dsn)
    try:
        conn = psycopg.connect(discovery.dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                               options="-c default_transaction_read_only=on")
    except psycopg.Error as exc:
        verdict = classify_connect_error(exc, discovery.dsn, connect_timeout=_CONNECT_TIMEOUT)
        if verdict.transient:
            raise TargetUnreachable(f"{key}: cannot reach {where}: {verdict.reason}; nothing was changed",
                                    where=where, reason=verdict.reason, attempts=1) from None
        raise ConfigError(f"{_origin(plan, discovery)}: {key}: cannot connect to {where}: {verdict.reason}; "
                          f"{verdict.advice}") from None
    with conn:
        try:
            return [tuple(r) for r in conn.execute(discovery.sql.encode()).fetchall()]
        except psycopg.Error as exc:
            raise ConfigError(f"{_origin(plan, discovery)}: {key}: the query failed on {where}: "
                              f"{scrub(first_line(exc))}; fix the query in the plan") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/5"`` as ``(2, 5)``; a :class:`ConfigError` for anything but ``i/n`` with ``1 <= i <= n``."""
    head, _, tail = text.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = 0, 0
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: expected i/n with 1 <= i <= n, like 1/4")
    return index, count


def shard_of(name: str, count: int) -> int:
    """The shard (1..*count*) a member belongs to: a hash of its name, so it stays put as the fleet grows."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def select_targets(targets: Sequence[Target], selection: Selection) -> list[Target]:
    """The members *selection* keeps, in fleet order; a name in ``only`` that matches nothing is an error."""
    chosen = list(targets)
    names = [t.name for t in targets]
    for pattern in selection.only + selection.exclude:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"no fleet member matches {pattern!r}; members are named like "
                              f"{', '.join(names[:5]) or '(none)'}")
    if selection.only:
        chosen = [t for t in chosen if any(fnmatch.fnmatchcase(t.name, p) for p in selection.only)]
    if selection.exclude:
        chosen = [t for t in chosen if not any(fnmatch.fnmatchcase(t.name, p) for p in selection.exclude)]
    if selection.shard is not None:
        index, count = selection.shard
        chosen = [t for t in chosen if shard_of(t.name, count) == index]
    return chosen


def plan_waves(targets: Sequence[Target], waves: Sequence[Wave]) -> tuple[list[list[Target]], list[Target]]:
    """Split *targets* (in fleet order) into waves, and the members no wave takes (no ``rest`` wave).

    ``canary: N`` takes the next N members; ``percent: P`` the next P% of
    the whole selection, rounded up (at least one); ``rest`` every member left.
    """
    left = list(targets)
    planned: list[list[Target]] = []
    for wave in waves:
        if wave.rest:
            size = len(left)
        elif wave.canary is not None:
            size = wave.canary
        else:
            size = max(1, math.ceil(len(targets) * (wave.percent or 0) / 100))
        planned.append(left[:size])
        left = left[size:]
    return planned, left


def _limit(fleet: Fleet, wave_size: int) -> int:
    """Failures in a wave of *wave_size* members that stop the fleet."""
    if fleet.stop_after_percent is not None:
        return max(1, math.ceil(wave_size * fleet.stop_after_percent / 100))
    return fleet.stop_after_failures or 1


# --------------------------------------------------------------------------
# The shared rehearsal


class SharedRehearsal:
    """The schemas a rehearsal reaches, computed once per (history, position) and shared by a fleet's members.

    Members at the same version ask for the same schema; the first one
    rehearses while the others wait for its answer.  Only snapshots are kept,
    a few per fleet run, never one per member.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[threading.Lock, list[list[Snapshot]]]] = {}
        self.rehearsals = 0

    def schemas(
        self, plan: Plan, migrations: Sequence[Migration], index: int, completed: int | None, upto: int | None,
    ) -> list[Snapshot]:
        key = (tuple((m.id, m.checksum) for m in migrations[: index + 1]), index, completed, upto)
        with self._lock:
            entry = self._entries.setdefault(key, (threading.Lock(), []))
        lock, found = entry
        with lock:
            if not found:
                found.append(rehearse_schemas(plan, migrations, index, completed, upto))
                self.rehearsals += 1
            return found[0]


# --------------------------------------------------------------------------
# Results


@dataclass
class MemberOutcome:
    """What one member's run did."""

    name: str
    where: str
    wave: int  # 1-based; 0: in no wave
    state: str = "not started"
    applied: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    log: str | None = None
    backup: str | None = None

    @property
    def ok(self) -> bool:
        if self.state in ("would apply", "would roll back"):
            return True
        return self.state in ("applied", "at head", "rolled back") and not self.pending

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "where": self.where, "wave": self.wave, "state": self.state, "ok": self.ok,
            "applied": self.applied, "rolled_back": self.rolled_back, "pending": self.pending,
            "error": self.error, "seconds": round(self.seconds, 3), "log": self.log, "backup": self.backup,
        }


@dataclass
class FleetResult:
    """What a fleet run did, member by member; ``ok`` only when every selected member is where it was asked to be."""

    plan: str
    command: str
    mode: str
    members: list[MemberOutcome] = field(default_factory=list)
    waves: list[str] = field(default_factory=list)
    stopped: str | None = None  # why later members did not start
    log_path: str | None = None
    rehearsals: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    dry_run_plan: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.members)

    def counts(self) -> dict[str, int]:
        found = {state: 0 for state in STATES}
        for m in self.members:
            found[m.state] = found.get(m.state, 0) + 1
        return {k: v for k, v in found.items() if v}

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan, "command": self.command, "mode": self.mode, "ok": self.ok, "dry_run": self.dry_run,
            "waves": self.waves, "stopped": self.stopped, "counts": self.counts(), "rehearsals": self.rehearsals,
            "seconds": round(self.seconds, 3), "log": self.log_path,
            "members": [m.to_dict() for m in self.members],
            **({"steps": self.dry_run_plan} if self.dry_run else {}),
        }


# --------------------------------------------------------------------------
# Running a fleet


def apply_fleet(plan: Plan, options: ApplyOptions | None = None, selection: Selection | None = None, *,
                out: TextIO | None = None) -> FleetResult:
    """Apply *plan* to every selected member of its fleet, in waves (see the module docstring)."""
    options = options or ApplyOptions()

    def one(target: Target, member_options: ApplyOptions) -> ApplyResult:
        return apply_plan(plan, member_options, out=None)

    return _FleetRun(plan, options, selection or Selection(), out, "apply", one).run()


def rollback_fleet(plan: Plan, options: ApplyOptions | None = None, selection: Selection | None = None, *,
                   to: str | None = None, steps: int | None = None, out: TextIO | None = None) -> FleetResult:
    """Roll every selected member back (``--to`` / ``--steps``), in the fleet's waves."""
    options = options or ApplyOptions()

    def one(target: Target, member_options: ApplyOptions) -> ApplyResult:
        return rollback_plan(plan, member_options, to=to, steps=steps, out=None)

    return _FleetRun(plan, options, selection or Selection(), out, "rollback", one).run()


class _FleetRun:
    """One fleet run: members, receipt, waves, the pool, progress and the fleet log."""

    def __init__(self, plan: Plan, options: ApplyOptions, selection: Selection, out: TextIO | None, command: str,
                 one: Callable[[Target, ApplyOptions], ApplyResult]) -> None:
        self.plan = plan
        self.options = options
        self.selection = selection
        self.out = out
        self.command = command
        self.one = one
        self.mode = options.mode or plan.mode
        self.stop = threading.Event()
        self.shared = SharedRehearsal()
        self.result = FleetResult(plan=plan.name, command=command, mode=self.mode, dry_run=options.dry_run)
        self.rl: RunLog | None = None
        self.migrations: list[Migration] = []  # loaded once per run, shared by every member
        self.done = 0
        self.total = 0
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        assert self.rl is not None
        self.rl.say(text)

    def run(self) -> FleetResult:
        t0 = time.perf_counter()
        if self.mode not in ("development", "production"):
            raise ConfigError(f"unknown mode {self.mode!r}; use development or production")
        targets = select_targets(fleet_targets(self.plan), self.selection)
        migrations = self.migrations = load_plan_migrations(self.plan)
        if self.mode == "production" and not self.options.force and self.plan.guards.require_receipt:
            verify_receipt(self.plan, migrations)  # once, before any member is touched
        log_dir = None if self.options.dry_run else self.plan.root / "logs"
        self.rl = RunLog(f"{self.plan.name}-fleet", log_dir, out=self.out)
        self.result.log_path = str(self.rl.path) if self.rl.path else None
        waves, leftover = plan_waves(targets, self.plan.fleet.waves)
        self.result.waves = [f"{w.describe()}: {len(members)}" for w, members in zip(self.plan.fleet.waves, waves)]
        self.total = len(targets)
        self.rl.event("fleet_start", plan=self.plan.name, command=self.command, mode=self.mode,
                      dry_run=self.options.dry_run, members=[t.name for t in targets],
                      waves=[[t.name for t in w] for w in waves], concurrency=self.plan.fleet.concurrency)
        self.say(f"harness {self.command} {self.plan.name}: {self.mode} run on a fleet of {len(targets)} member"
                 f"{'s' if len(targets) != 1 else ''} ({', '.join(self.result.waves) or 'no waves'}; "
                 f"concurrency {self.plan.fleet.concurrency})")
        if self.mode == "production" and not self.options.yes and not self.options.dry_run and targets:
            self._confirm(len(targets))
        base = replace(self.options, yes=True, migrations=migrations, reference=self.shared, stop=self.stop)
        outcomes = {t.name: MemberOutcome(t.name, t.where, 0) for t in targets}
        for number, members in enumerate(waves, 1):
            for t in members:
                outcomes[t.name].wave = number
        for t in leftover:
            outcomes[t.name].state = "not in a wave"
            outcomes[t.name].pending = ["(not in any wave)"]
        self.result.members = list(outcomes.values())
        try:
            for number, members in enumerate(waves, 1):
                if not members:
                    continue
                if self.result.stopped is not None:
                    break
                self._wave(number, len(waves), members, outcomes, base)
        finally:
            self.result.rehearsals = self.shared.rehearsals
            self.result.seconds = time.perf_counter() - t0
            if leftover:
                self.say(f"{len(leftover)} member{'s' if len(leftover) != 1 else ''} in no wave (add a wave with "
                         "rest: true): " + ", ".join(t.name for t in leftover[:10]) + (" ..." if len(leftover) > 10 else ""))
            self._summary()
            self.rl.event("fleet_end", ok=self.result.ok, counts=self.result.counts(), stopped=self.result.stopped,
                          seconds=round(self.result.seconds, 3), rehearsals=self.result.rehearsals)
            self.rl.close()
        return self.result

    def _confirm(self, count: int) -> None:
        refusal = (f"production {self.command} on a fleet of {count} needs confirmation and there is no terminal to "
                   "ask; pass --yes to confirm (or --dry-run to see what would run)")
        answer = confirm(f"{self.command.capitalize()} plan {self.plan.name} on {count} fleet members? [y/N] ",
                         refusal=refusal, out=self.out)
        self.rl_event("confirmation", answer=answer)
        if not answer:
            raise ConfigError("not confirmed; nothing was changed")

    def _wave(self, number: int, count: int, members: list[Target], outcomes: dict[str, MemberOutcome],
              base: ApplyOptions) -> None:
        limit = _limit(self.plan.fleet, len(members))
        failures = 0
        self.say(f"wave {number}/{count}: {len(members)} member{'s' if len(members) != 1 else ''}"
                 + (f" (stops after {limit} failure{'s' if limit != 1 else ''})" if limit < len(members) else ""))
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.plan.fleet.concurrency, len(members))),
                                  thread_name_prefix="fleet")
        futures: dict[Future[MemberOutcome], Target] = {
            pool.submit(self._member, t, outcomes[t.name], base): t for t in members
        }
        running = set(futures)
        try:
            while running:
                try:
                    finished, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    self._interrupt(futures)
                    continue
                except SystemExit:
                    # SIGTERM (harness.cli): the same orderly stop, then exit once running members have stopped.
                    if not self.stop.is_set():
                        self._interrupt(futures)
                    raise
                for future in finished:
                    if future.cancelled():
                        continue
                    outcome = future.result()
                    if outcome.state == "failed":
                        failures += 1
                        if failures >= limit and self.result.stopped is None:
                            self.result.stopped = (f"wave {number} reached its failure limit ({failures} of "
                                                   f"{len(members)} failed)")
                            self.say(f"wave {number}: {self.result.stopped}; no further member starts")
                            self.rl_event("wave_stopped", wave=number, failures=failures)
                            for f in futures:
                                f.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self.rl_event("wave_end", wave=number, failures=failures,
                      states={t.name: outcomes[t.name].state for t in members})

    def rl_event(self, event: str, **fields: Any) -> None:
        assert self.rl is not None
        self.rl.event(event, **fields)

    def _interrupt(self, futures: dict[Future[MemberOutcome], Target]) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: give up waiting
        self.stop.set()
        self.result.stopped = "interrupted (Ctrl-C)"
        for f in futures:
            f.cancel()
        self.say("interrupted: no further member starts; running members stop after their current migration "
                 "(Ctrl-C again to stop waiting)")
        self.rl_event("interrupted")

    def _member(self, target: Target, outcome: MemberOutcome, base: ApplyOptions) -> MemberOutcome:
        """Run one member; never raises (one member's failure never reaches another)."""
        if self.stop.is_set():
            return outcome
        t0 = time.perf_counter()
        outcome.state = "running"
        self.rl_event("member_start", member=target.name, wave=outcome.wave, where=target.where)
        try:
            if self.command == "apply" and not self.options.dry_run and self._at_head(target):
                outcome.state = "at head"
            else:
                member = replace(base, target=target.dsn, schema=target.schema, label=target.name)
                result = self.one(target, member)
                self._absorb(outcome, result)
                if self.options.dry_run:
                    outcome.state = ("would refuse" if not result.ok
                                     else "would roll back" if self.command == "rollback"
                                     else "would apply" if result.pending or result.baselined else "at head")
                    if not result.ok:
                        outcome.error = next((line.strip() for line in reversed(result.dry_run_plan)
                                              if "would refuse" in line), "would refuse")
                    with self._lock:
                        self.result.dry_run_plan.extend([f"== {target.name} ({target.where})", *result.dry_run_plan])
                elif self.command == "rollback":
                    outcome.state = "rolled back"
                else:
                    outcome.state = "applied" if result.applied or result.baselined else "at head"
        except Stopped as exc:
            self._absorb(outcome, getattr(exc, "result", None))
            outcome.state, outcome.error = "stopped", scrub(str(exc))
        except HarnessError as exc:
            self._absorb(outcome, getattr(exc, "result", None))
            outcome.state, outcome.error = "failed", scrub(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or an odd failure in one member must not end the fleet
            outcome.state, outcome.error = "failed", scrub(f"{type(exc).__name__}: {exc}")
        outcome.seconds = time.perf_counter() - t0
        self._report(outcome)
        return outcome

    def _absorb(self, outcome: MemberOutcome, result: ApplyResult | None) -> None:
        if result is None:
            return
        outcome.applied = list(result.applied)
        outcome.rolled_back = list(result.rolled_back)
        outcome.pending = [] if self.command == "rollback" and result.ok else list(result.pending)
        outcome.log = str(result.log_path) if result.log_path else None
        outcome.backup = str(result.backup) if result.backup else None
        for mid in result.applied:
            self.rl_event("migration", member=outcome.name, migration=mid, action="applied",
                          seconds=result.timings.get(f"migration:{mid}"))
        for mid in result.rolled_back:
            self.rl_event("migration", member=outcome.name, migration=mid, action="rolled back")

    def _at_head(self, target: Target) -> bool:
        """Whether *target* has every migration (up to ``--to``) and nothing failed, part-way or changed."""
        try:
            with _member_history(target, self.migrations) as (_, status):
                pass
        except psycopg.Error:
            return False  # the member's own run connects with retries and says what is wrong
        wanted = status.pending
        if self.options.to is not None:
            position = {m.id: i for i, m in enumerate(status.files)}
            stop = next((i for i, m in enumerate(status.files) if self.options.to in (m.version, m.id)),
                        len(status.files) - 1)
            wanted = [m for m in status.pending if position[m.id] <= stop]
        return not wanted and not status.failed and not status.partial and not status.changed and not status.missing

    def _report(self, outcome: MemberOutcome) -> None:
        with self._lock:
            self.done += 1
            failed = sum(1 for m in self.result.members if m.state == "failed")
            running = sum(1 for m in self.result.members if m.state == "running")
            waiting = sum(1 for m in self.result.members if m.state == "not started")
        what = {
            "applied": f"applied {len(outcome.applied)} ({', '.join(outcome.applied[:3])}"
                       f"{' ...' if len(outcome.applied) > 3 else ''})",
            "rolled back": f"rolled back {len(outcome.rolled_back)}",
            "at head": "at head" if not self.options.dry_run else "nothing to do",
            "would apply": f"would apply {len(outcome.pending)}",
            "would roll back": "would roll back",
        }.get(outcome.state, f"{outcome.state.upper()}: {_line(outcome.error)}")
        self.say(f"[{self.done}/{self.total}] {outcome.name}: {what} in {seconds(outcome.seconds)} "
                 f"(wave {outcome.wave}; running {running}, failed {failed}, waiting {waiting})")
        self.rl_event("member_end", **outcome.to_dict())

    def _summary(self) -> None:
        members = self.result.members
        counts = ", ".join(f"{n} {state}" for state, n in self.result.counts().items())
        shown = members if len(members) <= 50 else [m for m in members if not m.ok]
        if shown:
            width = max(len(m.name) for m in shown)
            self.say("")
            self.say(f"{'member'.ljust(width)}  wave  {'state':<12} {'done':>4} {'left':>4}  note")
            for m in shown:
                done = len(m.applied) if self.command == "apply" else len(m.rolled_back)
                note = _line(m.error) if m.error else (m.log or "")
                self.say(f"{m.name.ljust(width)}  {m.wave or '-':>4}  {m.state:<12} {done:>4} {len(m.pending):>4}  {note}")
        self.say(f"fleet: {counts or 'no members'} in {seconds(self.result.seconds)}"
                 + (f"; {self.result.stopped}" if self.result.stopped else "")
                 + (f"; log: {self.result.log_path}" if self.result.log_path else ""))


def _line(text: str | None) -> str:
    """The first line of an error; when it ends in a colon, with the line that follows it."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


# --------------------------------------------------------------------------
# Status


@dataclass
class MemberStatus:
    """One member's row of the status matrix."""

    name: str
    where: str
    state: str  # at head, pending, failed, partly applied, changed, unreachable
    applied: int = 0
    pending: list[str] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "state": self.state, "applied": self.applied,
                "pending": self.pending, "detail": self.detail}


def fleet_status(plan: Plan, selection: Selection | None = None, *, concurrency: int | None = None,
                 drift: bool = True) -> list[MemberStatus]:
    """Every selected member's history against the files: the rows of ``harness status`` for a fleet.

    States: ``at head``, ``pending`` (some migrations not applied),
    ``partly applied`` (a run stopped inside a migration that commits part by
    part), ``failed`` (a failed history row), ``changed`` (an applied file
    changed or is missing), ``drifted`` (the schema is not the rehearsal's at
    the member's version), ``unreachable``.  Drift is checked when the plan's
    receipt matches its migrations (and *drift*): a database against the
    receipt's digest, a tenant schema against a rehearsal shared by the
    members at its version.
    """
    targets = select_targets(fleet_targets(plan), selection or Selection())
    migrations = load_plan_migrations(plan)
    receipt = _matching_receipt(plan, migrations) if drift else None
    shared = SharedRehearsal()
    keeper = mirror_for(plan.history_mirror, migrations, plan.migrations_dir)

    def drifted(conn: psycopg.Connection[Any], target: Target, status: history.Status[Migration]) -> str | None:
        """What differs from the rehearsal at the member's version, or ``None``."""
        applied = [m for _, m in status.applied if m is not None]
        if receipt is None or not applied or applied != migrations[: len(applied)]:
            return None
        index = len(applied) - 1
        actual = take_snapshot(conn, exclude_schemas=(history.SCHEMA, history.history_schema()))
        if keeper is not None:
            actual = keeper.without_table(conn, actual)
        if target.schema is None:
            if receipt.digests.get(applied[-1].id) == actual.digest:
                return None
            expected = receipt.final_snapshot if index == len(migrations) - 1 else None
        else:
            actual = schema_view(actual, target.schema, REHEARSAL_SCHEMA)
            expected = schema_view(shared.schemas(plan, migrations, index, None, None)[0], REHEARSAL_SCHEMA)
        if expected is None:
            return f"the schema is not the rehearsal's after {applied[-1].id} (apply --dry-run shows how)"
        changes = diff_snapshots(expected, actual)
        return (f"{len(changes)} difference{'s' if len(changes) != 1 else ''} from the rehearsal after "
                f"{applied[-1].id}: {changes[0].describe()}") if changes else None

    def one(target: Target) -> MemberStatus:
        row = MemberStatus(target.name, target.where, "unreachable")
        try:
            with _member_history(target, migrations) as (conn, status):
                difference = drifted(conn, target, status) if not (status.failed or status.partial) else None
        except psycopg.Error as exc:
            row.detail = scrub(first_line(exc))
            return row
        row.applied = len(status.applied)
        row.pending = [m.id for m in status.pending]
        if status.failed:
            row.state, row.detail = "failed", ", ".join(f"{r.version}_{r.name}" for r in status.failed)
        elif status.partial:
            version, progress = next(iter(status.partial.items()))
            row.state, row.detail = "partly applied", f"{version}: {progress.describe()}"
        elif status.changed or status.missing:
            row.state = "changed"
            row.detail = ", ".join([f"{m.id} changed" for _, m in status.changed]
                                   + [f"{r.version}_{r.name} missing" for r in status.missing])
        elif difference is not None:
            row.state, row.detail = "drifted", difference
        elif status.pending:
            row.state = "pending"
            row.detail = ", ".join(row.pending[:3]) + (" ..." if len(row.pending) > 3 else "")
        else:
            row.state = "at head"
        return row

    with ThreadPoolExecutor(max_workers=max(1, concurrency or plan.fleet.concurrency)) as pool:
        return list(pool.map(one, targets))


@contextlib.contextmanager
def _member_history(
    target: Target, migrations: Sequence[Migration],
) -> Iterator[tuple[psycopg.Connection[Any], history.Status[Migration]]]:
    """A read-only session on *target*, in its history's scope, and its history against *migrations*."""
    with history_scope(ApplyOptions(schema=target.schema)):
        dsn = tenant_dsn(target.dsn, target.schema) if target.schema else target.dsn
        with psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                             options="-c default_transaction_read_only=on") as conn:
            yield conn, history.compute_status(list(migrations), history.read_applied(conn),
                                               history.read_progress(conn))


def _matching_receipt(plan: Plan, migrations: Sequence[Migration]) -> Receipt | None:
    """The plan's receipt when it matches the migrations (drift is measured against it), else ``None``."""
    try:
        return verify_receipt(plan, list(migrations))
    except HarnessError:
        return None


def format_fleet_status(rows: Iterable[MemberStatus]) -> str:
    """The status matrix as text: one line per member, then the counts per state."""
    rows = list(rows)
    if not rows:
        return "no fleet members selected"
    width = max(len(r.name) for r in rows)
    lines = [f"{'member'.ljust(width)}  {'state':<15} {'applied':>7} {'pending':>7}  detail"]
    for r in rows:
        lines.append(f"{r.name.ljust(width)}  {r.state:<15} {r.applied:>7} {len(r.pending):>7}  {r.detail}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append("fleet: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)

