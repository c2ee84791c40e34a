"""Why a connection failed: a transient failure worth another try, or settings that retrying cannot fix.

``apply`` (and ``harness status``) retry only what may succeed later:
connection refused, a timeout, a server starting up or shutting down, no
free connection slots, a dropped connection; inside a migration also lock
timeouts, deadlocks and serialization failures (:data:`RETRYABLE`).  A
malformed connection string, a wrong password, an unknown role or database
or an option libpq or the server rejects fails at once
(:class:`~harness.errors.ConnectionRefusedByConfig`, exit 2).

Errors are matched by psycopg's class per SQLSTATE.  A failure while the
connection starts has no SQLSTATE in psycopg (up to 3.3 at least): libpq
keeps the code the server sent in private state and psycopg raises a bare
``OperationalError`` from the message.  For those, libpq is asked with
``PQpingParams`` on the same connection string: it reads that private code
and tells apart options it cannot use (``NO_ATTEMPT``), no answer at all
(``NO_RESPONSE``: refused, timed out, no such socket or host), a server not
accepting connections now (``REJECT``: 57P03, starting up, shutting down,
recovery), and a server that answered and refused this session (``OK``:
password, role, database, a rejected setting, pg_hba.conf).  That last
answer also covers "too many connections" (53300), the one transient
refusal ping cannot separate; only there is the message text read, as a
last resort, for the server's English wording of 53300.  A server with
translated messages then gets it reported as a configuration problem,
message included, instead of retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionRefusedByConfig
from .redact import scrub

__all__ = ["RETRYABLE", "CONNECTION_LOST", "Verdict", "check_conninfo", "classify_connect_error", "tenant_dsn"]

#: Errors inside a migration worth another try, with the reason logged for them.
RETRYABLE: tuple[tuple[type[psycopg.Error], str], ...] = (
    (pgerrors.LockNotAvailable, "lock timeout"),
    (pgerrors.DeadlockDetected, "deadlock"),
    (pgerrors.SerializationFailure, "serialization failure"),
)

#: The server went away, or is going away: reconnect and try again.
CONNECTION_LOST: tuple[type[psycopg.Error], ...] = (
    pgerrors.ConnectionException,  # 08000
    pgerrors.ConnectionDoesNotExist,  # 08003
    pgerrors.ConnectionFailure,  # 08006
    pgerrors.SqlclientUnableToEstablishSqlconnection,  # 08001
    pgerrors.SqlserverRejectedEstablishmentOfSqlconnection,  # 08004
    pgerrors.TransactionResolutionUnknown,  # 08007
    pgerrors.ProtocolViolation,  # 08P01
    pgerrors.AdminShutdown,  # 57P01
    pgerrors.CrashShutdown,  # 57P02
    pgerrors.CannotConnectNow,  # 57P03: starting up, shutting down, in recovery
    pgerrors.IdleSessionTimeout,  # 57P05
)

# Refusals worth another try when connecting.
_TRANSIENT_REFUSALS: tuple[type[psycopg.Error], ...] = (pgerrors.TooManyConnections, *CONNECTION_LOST)

# Refusals that are the connection settings' fault, with what to do about them.
_CONFIG_REFUSALS: tuple[tuple[type[psycopg.Error], str], ...] = (
    (pgerrors.InvalidPassword, "check the password of the target's connection string (or PGPASSWORD, ~/.pgpass)"),
    (pgerrors.InvalidAuthorizationSpecification,
     "check the user name, and that pg_hba.conf lets it connect from here with this method"),
    (pgerrors.InvalidCatalogName, "check the database name; create the database first if it is a new one"),
    (pgerrors.InsufficientPrivilege, "the role may not log in or connect to this database: GRANT CONNECT, or LOGIN"),
    (pgerrors.UndefinedObject, "remove the unknown setting from the connection's options"),
    (pgerrors.InvalidParameterValue, "fix the setting's value in the connection's options"),
)

_CONFIG_ADVICE = (
    "the server answered and refused this connection: check the user, password and database name of the "
    "target's connection string, and pg_hba.conf"
)

# The server's English wording of 53300 (src/backend: "sorry, too many clients already", "remaining
# connection slots are reserved for ...", "too many connections for role/database ..."): the only
# message text read, and only when ping says the server is up (see the module docstring).
_TOO_MANY = re.compile(r"too many clients|connection slots are reserved|too many connections", re.IGNORECASE)

# Quoted fragments of a libpq parse error may be pieces of the connection string, a password included.
_QUOTED = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class Verdict:
    """What a connection failure means: *transient* (retry) or not, its *reason* and *advice* (scrubbed)."""

    transient: bool
    reason: str
    advice: str
    #: True when only ping's answer, taken after the failure, made it a configuration problem:
    #: the caller tries once more at once, in case the server's state changed in between.
    from_ping: bool = False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    return scrub(text)


def _keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def _mask(reason: str) -> str:
    """*reason* with quoted fragments that are not connection option names replaced: they may be a password."""
    known = _keywords() | {"="}
    return _QUOTED.sub(lambda m: m.group(0) if m.group(1) in known else '"…"', reason)


def tenant_dsn(dsn: str, schema: str) -> str:
    """*dsn* with ``search_path`` set to tenant *schema* (then ``public``, where shared extensions live) for every
    session: migrations, hooks and health checks then find and create unqualified names in the tenant's schema.

    The setting goes into libpq's ``options`` after the DSN's own, with
    spaces and backslashes escaped as libpq wants them there.
    """
    quoted = '"' + schema.replace('"', '""') + '"'
    escaped = quoted.replace("\\", "\\\\").replace(" ", "\\ ")
    params = conninfo_to_dict(dsn)
    setting = f"-c search_path={escaped},public"
    params["options"] = f"{params['options']} {setting}" if params.get("options") else setting
    return make_conninfo("", **params)


def check_conninfo(dsn: str, where: str) -> None:
    """Raise :class:`ConnectionRefusedByConfig` when *dsn* is not a connection string libpq can use.

    The message never shows the string: only option names, and ports (not secret).
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        reason = _mask(_first_line(exc))
        raise ConnectionRefusedByConfig(
            f"the target's connection string is malformed: {reason}. Write it as key=value pairs "
            "(host=... dbname=... user=...) or as a URI postgresql://user@host:port/dbname; quote values with "
            "spaces ('...') and percent-encode special characters in a URI.",
            where=where, reason=reason, attempts=0,
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not port.strip().isdigit():
            raise ConnectionRefusedByConfig(
                f"the target's connection string has port {port.strip()!r}, which is not a number; "
                "give the server's TCP port (5432 by default)",
                where=where, reason=f"invalid port {port.strip()!r}", attempts=0,
            )


def classify_connect_error(exc: psycopg.Error, dsn: str, *, connect_timeout: int = 10) -> Verdict:
    """Whether a failure to connect to *dsn* is worth another try (see the module docstring)."""
    reason = _first_line(exc)
    if isinstance(exc, (psycopg.ProgrammingError, psycopg.InterfaceError)) and exc.sqlstate is None:
        # Raised by psycopg/libpq before any network traffic: the string or an option is unusable.
        return Verdict(False, _mask(reason), "fix the target's connection string")
    for cls, advice in _CONFIG_REFUSALS:
        if isinstance(exc, cls):
            return Verdict(False, reason, advice)
    if isinstance(exc, _TRANSIENT_REFUSALS):
        return Verdict(True, reason, "")
    if exc.sqlstate is not None:
        # Any other error the server sends while we connect is about this session, not the server's state.
        return Verdict(False, reason, _CONFIG_ADVICE)
    conninfo = dsn if "connect_timeout" in conninfo_to_dict(dsn) else make_conninfo(dsn, connect_timeout=connect_timeout)
    answer = pq.PGconn.ping(conninfo.encode())
    if answer == pq.Ping.NO_ATTEMPT:
        return Verdict(False, reason, "libpq cannot use the connection options: fix the target's connection string")
    if answer in (pq.Ping.NO_RESPONSE, pq.Ping.REJECT):
        return Verdict(True, reason, "")
    if _TOO_MANY.search(reason):
        return Verdict(True, reason, "")
    return Verdict(False, reason, _CONFIG_ADVICE, from_ping=True)
