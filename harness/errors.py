"""The exception hierarchy: one root, a subclass per failure a caller handles.

Every error carries the exit code the CLI uses for it (0 ok, 1 a check or
migration failed, 2 bad usage or configuration) and a message that says what
failed, shows the value and says what to do.  Messages never contain a
password: build them from :func:`harness.redact.describe_dsn`, never from a
raw connection string.
"""

from __future__ import annotations

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
    "LockTimeout",
    "MigrationError",
    "GuardError",
    "BackupError",
    "CheckFailed",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class HarnessError(Exception):
    """Root of every error the harness raises on purpose."""

    exit_code = EXIT_FAILED


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


class ConnectionFailed(ServerError):
    """A target database could not be reached (after any retries)."""


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
