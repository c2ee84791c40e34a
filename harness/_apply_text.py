"""How apply and rollback word things: durations, counts, first lines, URLs without secrets."""

from __future__ import annotations

import urllib.parse

from .redact import scrub

__all__ = ["ms", "seconds", "plural", "batches", "first_line", "describe_url", "indent"]


def ms(value: float) -> str:
    """*value* seconds as a PostgreSQL setting in milliseconds (``'1500ms'``)."""
    return f"{int(round(value * 1000))}ms"


def seconds(value: float) -> str:
    """*value* seconds for a person: ``250 ms``, ``2.50 s``, ``12.3 s``."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def plural(n: int, word: str) -> str:
    """``1 migration``, ``2 migrations``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def batches(n: int) -> str:
    """``1 batch``, ``2 batches``."""
    return f"{n} batch{'' if n == 1 else 'es'}"


def first_line(exc: BaseException) -> str:
    """The first line of *exc*'s message, secrets scrubbed (its class name when it has none)."""
    lines = str(exc).strip().splitlines()
    return scrub(lines[0]) if lines else type(exc).__name__


def describe_url(url: str) -> str:
    """An URL without userinfo and query string (either may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path or '/'}"


def indent(text: str, prefix: str = "    ") -> str:
    """*text* with every non-empty line prefixed."""
    return "\n".join(prefix + line if line else line for line in text.splitlines())
