"""After the migrations: verification against the rehearsal, health checks, the rollback a failure triggers.

Verification compares the target's schema with the receipt's (at the
version reached, with ``--to``); health runs the plan's SQL checks and
probes its URL.  When either fails, ``health.on_failure: rollback`` runs the
downs of this run's migrations, newest first, else the run stops naming the
backup.  Retention of backups closes a successful run.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import psycopg

from ._apply_text import describe_url as _describe_url
from ._apply_text import indent as _indent
from .apply_context import RunContext
from .backup import prune_backups
from .checks import check_problem
from .errors import CheckFailed, HarnessError, MigrationError
from .execute import StatementFailed, describe_pg_error, relpath, run_statements
from .migrator import Migrator, down_units
from .plan import Check
from .redact import scrub
from .snapshot import diff_snapshots, format_changes
from .sources import Migration

__all__ = ["Finish", "HealthFailed"]


class HealthFailed(Exception):
    """Verification or a health check failed, with the text to show."""


class Finish:
    """Verification, health and what follows a failure of either, for one run."""

    def __init__(self, run: RunContext, migrator: Migrator) -> None:
        self.run = run
        self.migrator = migrator

    def verify_and_health(self, *, nothing_applied: bool) -> None:
        failure = self._check("verify", "verification", self.verify, "verification failed")
        if failure is None:
            failure = self._check("health", "health", self.health, "health check failed")
        if failure is not None:
            self.after_check_failure(failure)

    def _check(self, phase: str, field: str, check: Callable[[], str], failed: str) -> str | None:
        """Run one check in its log phase, record its outcome on the result; the failure's text, if it failed."""
        rl = self.run.rl
        failure: str | None = None
        with rl.phase(phase):
            try:
                outcome = check()
            except HealthFailed as exc:
                outcome, failure = "failed", f"{failed}: {exc}"
        setattr(self.run.result, field, outcome)
        rl.say(f"{field}: {outcome}")
        return failure

    def verify(self) -> str:
        if not self.run.production:
            return "skipped (development mode)"
        if self.run.receipt is None or not self.run.receipt_valid:
            return "skipped (no matching receipt)"
        reached = self.reached()
        if reached is not None:
            return self.verify_at(reached)
        actual = self.run.schema(self.run.session.live())
        changes = diff_snapshots(self.run.expected(self.run.receipt.final_snapshot), actual)
        self.run.rl.event("verification", outcome="failed" if changes else "passed",
                      changes=[c.describe() for c in changes[:200]])
        if changes:
            raise HealthFailed(
                f"the schema of {self.run.where} differs from the rehearsal's final schema (expected → actual):\n"
                + _indent(format_changes(changes))
            )
        return "passed (schema equals the rehearsal's final schema)"

    def reached(self) -> int | None:
        """With ``--to``, the index of the newest migration the target has after this run, when it is not the
        last file (verification compares there); ``None``: the receipt's final schema."""
        if self.run.stop is None:
            return None
        done = {*self.run.result.skipped, *self.run.result.baselined, *(m.id for m in self.run.pending)}
        reached = max((i for i, m in enumerate(self.run.migrations) if m.id in done), default=-1)
        return reached if reached < len(self.run.migrations) - 1 else None

    def verify_at(self, index: int) -> str:
        """Verification against the rehearsal's schema after migration *index* (``-1``: before the first).

        The receipt's digest after it decides; on a mismatch (or without a
        digest: before the first migration) the plan is rehearsed up to there
        on a throwaway server, which also shows the difference.
        """
        if not self.run.production:
            return "skipped (development mode)"
        if self.run.receipt is None or not self.run.receipt_valid:
            return "skipped (no matching receipt)"
        mid = self.run.migrations[index].id if index >= 0 else None
        at = f"after {mid}" if mid else "before the first migration"
        actual = self.run.schema(self.run.session.live())
        digest = self.run.receipt.digests.get(mid) if mid else None
        if digest is not None and digest == actual.digest:
            self.run.rl.event("verification", outcome="passed", at=mid, digest=digest)
            return f"passed (schema digest matches the rehearsal {at})"
        self.run.rl.say(f"  verify: rehearsing the plan up to {mid or 'its start'} to compare the schema ...")
        with self.run.rl.progress("verify rehearsal"):
            expected = self.run.rehearsed_schema(index)
        changes = diff_snapshots(expected, actual)
        self.run.rl.event("verification", outcome="failed" if changes else "passed", at=mid, rehearsed=True,
                      changes=[c.describe() for c in changes[:200]])
        if changes:
            raise HealthFailed(
                f"the schema of {self.run.where} differs from the rehearsal's schema {at} (expected → actual):\n"
                + _indent(format_changes(changes))
            )
        return f"passed (schema equals the rehearsal {at})"

    def health(self) -> str:
        health = self.run.plan.health
        if not health.checks and not health.url:
            return "skipped (no health checks in the plan)"
        done: list[str] = []
        for check in health.checks:
            self.run_check(check)
            done.append(f"check {check.name!r}")
        if health.url:
            self.probe(health.url)
            done.append(f"url {_describe_url(health.url)}")
        return "passed (" + ", ".join(done) + ")"

    def run_check(self, check: Check) -> None:
        conn = self.run.session.live()
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                cur = conn.execute(check.sql)  # plan SQL is trusted
                rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            self.run.rl.event("health_check", name=check.name, outcome="error", error=describe_pg_error(exc))
            raise HealthFailed(f"check {check.name!r} failed to run: {describe_pg_error(exc)}\n    {check.sql}") from None
        problem = check_problem(check, rows)
        self.run.rl.event("health_check", name=check.name, outcome="failed" if problem else "passed", problem=problem)
        if problem:
            raise HealthFailed(problem)
        self.run.rl.say(f"  health check {check.name!r}: ok")

    def probe(self, url: str) -> None:
        health = self.run.plan.health
        shown = _describe_url(url)
        attempts = health.retries + 1
        last = "?"
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(url, method="GET", headers={"User-Agent": "migration-harness"})
            status: int | None = None
            try:
                with urllib.request.urlopen(request, timeout=health.timeout) as response:  # noqa: S310 - http(s) only, validated by the plan
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = scrub(str(reason))
            if status is not None:
                if 200 <= status < 300:
                    self.run.rl.event("health_url", url=shown, attempt=attempt, status=status, outcome="passed")
                    self.run.rl.say(f"  health url {shown}: HTTP {status}")
                    return
                last = f"HTTP {status}"
            self.run.rl.event("health_url", url=shown, attempt=attempt, outcome="failed", answer=last)
            if attempt < attempts:
                delay = self.run.session.delay(attempt)
                self.run.rl.say(f"  health url {shown}: {last}; try {attempt + 1} of {attempts} in {delay:.1f}s")
                time.sleep(delay)
        raise HealthFailed(f"{shown} did not answer 2xx in {attempts} tries (last answer: {last})")

    def restore_advice(self) -> str:
        if self.run.backup_path is not None:
            return f"Restore the backup taken before this run if needed: harness restore {self.run.backup_path}"
        if self.run.production:
            return "No backup file was taken by the harness; fix forward with a new migration."
        return "Development mode takes no backup; fix forward, or reset the development database."

    def after_check_failure(self, failure: str) -> None:
        rl = self.run.rl
        text = [failure]
        applied = list(self.run.applied_now)
        if not applied:
            text.append("No migration was applied by this run.")
        elif self.run.plan.health.on_failure == "rollback":
            lacking = [m.id for m in applied if not m.reversible]
            if lacking:
                text.append(
                    f"Cannot roll back: no down migration for {', '.join(lacking)}; the migrations of this run "
                    f"({', '.join(m.id for m in applied)}) stay applied. {self.restore_advice()}"
                )
            else:
                try:
                    with rl.phase("rollback"):
                        self.rollback(applied)
                    text.append(
                        "Rolled back with their down migrations (newest first): "
                        + ", ".join(m.id for m in reversed(applied))
                        + "; the history no longer lists them."
                    )
                except HarnessError as exc:
                    text.append(f"The rollback failed: {exc}\n{self.restore_advice()}")
        else:
            text.append(
                f"health.on_failure is stop: the migrations of this run ({', '.join(m.id for m in applied)}) stay "
                f"applied. {self.restore_advice()}"
            )
        raise CheckFailed("\n".join(text))

    def rollback(self, applied: Sequence[Migration]) -> None:
        """Run the downs of *applied*, newest first: the units ``harness rollback`` runs (:func:`down_units`)."""
        run = self.run
        mirror = run.plan.history_mirror if run.mirror is not None else None
        for migration in reversed(applied):
            path = migration.down_path or migration.path
            run.rl.say(f"rolling back {migration.id} with {relpath(path)} ...")
            try:
                # The layout may declare the down non-transactional (diesel, dbmate, goose, Flyway flags).
                for unit in down_units(migration, run.guards, mirror):
                    self.migrator.run_unit(unit, migration)
            except (StatementFailed, psycopg.Error) as exc:
                text = str(exc) if isinstance(exc, StatementFailed) else describe_pg_error(exc)
                raise MigrationError(f"the down migration of {migration.id} failed:\n{_indent(text)}") from None
            run.result.rolled_back.append(migration.id)
            if migration.id in run.result.applied:
                run.result.applied.remove(migration.id)
            run.rl.event("rolled_back", migration=migration.id)

    def retention(self) -> None:
        if self.run.backup is None:
            return
        removed = prune_backups(self.run.plan.backup.dir, self.run.stem, self.run.plan.backup.keep)
        if removed:
            self.run.rl.say(f"retention: removed {len(removed)} old backup(s), keeping the newest {self.run.plan.backup.keep}")
            self.run.rl.event("retention", removed=[str(p) for p in removed], keep=self.run.plan.backup.keep)
