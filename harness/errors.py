"""The exception hierarchy: one root, a subclass per failure a caller handles.

Every error carries the exit code the CLI uses for it (0 ok, 1 a check or
migration failed, 2 bad usage or configuration) and a message that says what
failed, shows the value and says what to do.

A database that cannot be reached is not bad usage: a transient failure
(connection refused, a timeout, a server starting up or shutting down, no
free connection slots) that outlasts its retries is :class:`TargetUnreachable`
(exit 1, run again later); a connection the server or libpq refuses because
of its settings (malformed connection string, wrong password, unknown role or
database, an invalid option) is :class:`ConnectionRefusedByConfig` (exit 2,
never retried: trying again cannot help).  Messages never contain a
password: build them from :func:`harness.redact.describe_dsn`, never from a
raw connection string.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "HarnessError",
    "ConfigError",
    "PlanError",
    "SourceError",
    "ServerError",
    "ConnectionFailed",
    "ConnectionRefusedByConfig",
    "TargetUnreachable",
    "LockTimeout",
    "MigrationError",
    "GuardError",
    "BackupError",
    "CheckFailed",
    "RunLockLost",
    "Stopped",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class HarnessError(Exception):
    """Root of every error the harness raises on purpose.

    An error that ends an apply or a rollback carries what the run did up
    to then in :attr:`result`.
    """

    exit_code = EXIT_FAILED

    #: The partial result of the apply or rollback this error ended (a :class:`harness.apply.ApplyResult` or
    #: :class:`harness.rollback.RollbackResult`), attached by the run as the error leaves it
    #: (:meth:`harness.apply_context.RunContext.conduct`); ``None`` for an error raised outside a run.
    result: Any = None


class ConfigError(HarnessError):
    """Bad usage or configuration: wrong option, missing file, bad setting."""

    exit_code = EXIT_USAGE


class PlanError(ConfigError):
    """A plan file is malformed or refers to something that does not exist."""


class SourceError(ConfigError):
    """A migration file or folder cannot be read: bad name, bad SQL, duplicates."""


class ServerError(HarnessError):
    """A rehearsal PostgreSQL server could not be found, started or stopped."""

    exit_code = EXIT_USAGE


class ConnectionFailed(HarnessError):
    """A database could not be connected to (exit 1 unless a subclass says otherwise).

    *where* is the database as :func:`harness.redact.describe_dsn` shows it,
    *reason* libpq's or the server's first line (scrubbed by the raiser),
    *attempts* how many connections were tried.
    """

    def __init__(self, message: str, *, where: str = "?", reason: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.where = where
        self.reason = reason
        self.attempts = attempts


class TargetUnreachable(ConnectionFailed):
    """A transient connection failure outlasted its retries: exit 1, try again later."""


class ConnectionRefusedByConfig(ConnectionFailed, ConfigError):
    """The connection settings are wrong (malformed DSN, password, role, database, option): exit 2, no retry."""

    exit_code = EXIT_USAGE


class LockTimeout(HarnessError):
    """The run lock (advisory lock) could not be taken in time."""


class MigrationError(HarnessError):
    """A migration statement failed on the server."""


class GuardError(HarnessError):
    """A safety guard refused the run (drift, tampered history, no receipt)."""


class BackupError(HarnessError):
    """A backup could not be written or verified."""


class CheckFailed(HarnessError):
    """An assertion or check found a problem."""


class RunLockLost(GuardError):
    """This run can no longer prove that it holds the migration run lock, so it stops before its next statement."""


class Stopped(HarnessError):
    """The run was asked to stop (Ctrl-C on a fleet) and did, after its current migration."""
