"""Names and literals of generated SQL: quoting, qualified-name parts, object keys, DO blocks and guards.

Snapshot names are quote_ident()-quoted and schema-qualified, so they are
valid SQL as they stand; names this package makes up are quoted like
quote_ident() would.
"""

from __future__ import annotations

import re

from pglast import keywords as _keywords
from psycopg import sql

_QUOTED_KEYWORDS = frozenset(
    k.lower() for k in (*_keywords.RESERVED_KEYWORDS, *_keywords.COL_NAME_KEYWORDS, *_keywords.TYPE_FUNC_NAME_KEYWORDS)
)
_SIMPLE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_MAX_IDENT = 63


def quote(raw: str) -> str:
    """*raw* as quote_ident() writes it."""
    if _SIMPLE_IDENT.fullmatch(raw) and raw not in _QUOTED_KEYWORDS:
        return raw
    return '"' + raw.replace('"', '""') + '"'


def unquote(part: str) -> str:
    """The identifier a (possibly quoted) name part stands for."""
    if part.startswith('"') and part.endswith('"') and len(part) >= 2:
        return part[1:-1].replace('""', '"')
    return part


def split_name(name: str) -> list[str]:
    """The dot-separated parts of a qualified name, quotes kept: ``a."b.c".d`` → ``[a, "b.c", d]``."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(name):
        ch = name[i]
        if quoted:
            current.append(ch)
            if ch == '"':
                if name[i + 1 : i + 2] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
        elif ch == '"':
            quoted = True
            current.append(ch)
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def owner_of(name: str) -> tuple[str, str]:
    """``schema.table.x`` → (``schema.table``, ``x``): a column, constraint, trigger, rule or policy."""
    parts = split_name(name)
    return ".".join(parts[:-1]), parts[-1]


def schema_of(name: str) -> str:
    return split_name(name)[0]


def local_name(name: str) -> str:
    """The last part of a qualified name, as written."""
    return split_name(name)[-1]


def literal(text: str) -> str:
    """A SQL string literal."""
    return sql.Literal(text).as_string(None)


def made_name(*raw_parts: str, suffix: str) -> str:
    """A new identifier ``<parts>_<suffix>`` of at most 63 bytes, quoted if needed."""
    base = "_".join(raw_parts)
    room = _MAX_IDENT - len(suffix.encode()) - 1
    while len(base.encode()) > room:
        base = base[:-1]
    return quote(f"{base}_{suffix}")


def object_key(object_type: str, name: str) -> str:
    return f"{object_type} {name}"


def split_key(key: str) -> tuple[str, str]:
    object_type, _, name = key.partition(" ")
    return object_type, name


def _dollar(body: str) -> str:
    """A dollar quote tag not used in *body*."""
    tag, n = "$$", 0
    while tag in body:
        n += 1
        tag = f"$do{n}$"
    return tag


def do_block(body: str) -> str:
    """A ``DO`` block running *body* (PL/pgSQL statements)."""
    tag = _dollar(body)
    inner = "\n".join("    " + line if line else line for line in body.strip("\n").splitlines())
    return f"DO {tag}\nBEGIN\n{inner}\nEND\n{tag}"


def guard(condition: str, statement: str) -> str:
    """``statement`` in a DO block, run only when ``condition`` holds."""
    body = "\n".join("    " + line for line in statement.rstrip().rstrip(";").splitlines())
    return do_block(f"IF {condition} THEN\n{body};\nEND IF;")


def has_constraint(table: str, constraint: str) -> str:
    return (
        "EXISTS (SELECT FROM pg_catalog.pg_constraint "
        f"WHERE conrelid = {literal(table)}::regclass AND conname = {literal(unquote(constraint))})"
    )


def no_constraint(table: str, constraint: str) -> str:
    return "NOT " + has_constraint(table, constraint)


def strip_semicolon(text: str) -> str:
    return text.strip().rstrip(";").rstrip()

