"""Keep secrets out of output: describe connection strings without passwords.

Every place that shows a database to a person goes through
:func:`describe_dsn`; every text that may contain a secret value (an error
from the server, a statement echoed back) goes through :func:`scrub`.  Secret
values are registered once, where they enter the process (a DSN, a
``${VAR}`` interpolated into a plan), with :func:`register_secret`.
"""

from __future__ import annotations

import logging
import re
import threading

from psycopg.conninfo import conninfo_to_dict

__all__ = ["describe_dsn", "register_secret", "scrub", "secret_values", "ScrubFilter"]

_lock = threading.Lock()
_secrets: set[str] = set()

# key=value pairs and URI userinfo that carry a password.
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Remember *value* so that :func:`scrub` removes it from any text."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


def secret_values() -> frozenset[str]:
    """The secret values registered so far."""
    with _lock:
        return frozenset(_secrets)


def register_dsn(dsn: str) -> None:
    """Register the password inside a connection string, if it has one."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - an unparsable DSN still gets scrubbed textually
        return
    password = params.get("password")
    register_secret(str(password) if password is not None else None)


def scrub(text: str) -> str:
    """Return *text* with passwords and registered secrets replaced by ``***``."""
    text = _PASSWORD_KV.sub(r"\1***", text)
    text = _URI_USERINFO.sub(r"\1***\3", text)
    for secret in sorted(secret_values(), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def describe_dsn(dsn: str) -> str:
    """A human description of a connection string: user, host, port and database only."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - never echo what we could not parse
        return "<unparsable connection string>"
    password = params.get("password")
    register_secret(str(password) if password is not None else None)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "?"
    user = str(params["user"]) if params.get("user") else None
    where = f"{host}:{port}" if not str(host).startswith("/") else f"{host} (socket, port {port})"
    return f"{user + '@' if user else ''}{where}/{db}"


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs secrets from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API name
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
