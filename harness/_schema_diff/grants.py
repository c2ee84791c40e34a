"""Privileges and comments of generated SQL: aclitem texts to GRANT/REVOKE, COMMENT ON statements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .actions import Stmt
from .names import literal, owner_of, quote, split_key

# Privilege letters of an aclitem, in the order GRANT lists them.
_PRIVILEGES = {
    "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
    "t": "TRIGGER", "m": "MAINTAIN", "X": "EXECUTE", "U": "USAGE", "C": "CREATE", "c": "CONNECT",
    "T": "TEMPORARY", "s": "SET", "A": "ALTER SYSTEM",
}
_ACL_KIND = {
    "table": "r", "view": "r", "materialized_view": "r", "sequence": "s", "function": "f", "procedure": "f",
    "schema": "n", "enum": "T", "domain": "T", "composite": "T", "range": "T",
}


def _acl_entries(items: Iterable[str]) -> dict[str | None, tuple[frozenset[str], frozenset[str]]]:
    """aclitem texts → grantee (None: PUBLIC) → (privileges, privileges with grant option)."""
    found: dict[str | None, tuple[set[str], set[str]]] = {}
    for item in items:
        grantee, i = _acl_name(item, 0)
        if item[i : i + 1] != "=":
            continue
        privs, _, _grantor = item[i + 1 :].rpartition("/")
        have, grantable = found.setdefault(grantee or None, (set(), set()))
        for pos, letter in enumerate(privs):
            if letter == "*":
                continue
            have.add(letter)
            if privs[pos + 1 : pos + 2] == "*":
                grantable.add(letter)
    return {k: (frozenset(v[0]), frozenset(v[1])) for k, v in found.items()}


def _acl_name(text: str, i: int) -> tuple[str, int]:
    """A role name as aclitem prints it (quoted when it holds odd characters), and where it ends."""
    if text[i : i + 1] != '"':
        j = i
        while j < len(text) and text[j] != "=":
            j += 1
        return text[i:j], j
    out, j = [], i + 1
    while j < len(text):
        if text[j] == '"':
            if text[j + 1 : j + 2] == '"':
                out.append('"')
                j += 2
                continue
            return "".join(out), j + 1
        out.append(text[j])
        j += 1
    return "".join(out), j


def _privilege_list(letters: Iterable[str]) -> str:
    chosen = set(letters)
    return ", ".join(name for letter, name in _PRIVILEGES.items() if letter in chosen)


def _grantee(role: str | None) -> str:
    return "PUBLIC" if role is None else quote(role)


def _grant_target(key: str, attrs: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(``ON ...`` target, column list or "") of an object's GRANT."""
    object_type, name = split_key(key)
    if object_type == "column":
        table, column = owner_of(name)
        return f"TABLE {table}", f" ({column})"
    kind = {
        "schema": "SCHEMA", "table": "TABLE", "view": "TABLE", "materialized_view": "TABLE",
        "sequence": "SEQUENCE", "function": "FUNCTION", "procedure": "PROCEDURE", "domain": "DOMAIN",
        "enum": "TYPE", "composite": "TYPE", "range": "TYPE",
    }[object_type]
    if object_type == "table" and attrs and attrs.get("kind") == "foreign":
        kind = "FOREIGN TABLE"
    return f"{kind} {name}", ""


def acl_statements(default_acl: Mapping[str, tuple[str, ...]], key: str, before: Sequence[str] | None,
                   after: Sequence[str] | None, attrs: Mapping[str, Any] | None = None) -> list[Stmt]:
    """GRANT/REVOKE statements that turn the *before* privileges into *after* (None: the owner's defaults)."""
    object_type, _ = split_key(key)
    kind = _ACL_KIND.get(object_type)
    default = list(default_acl.get(kind, ())) if kind else []
    old = _acl_entries(before if before is not None else default)
    new = _acl_entries(after if after is not None else default)
    if old == new:
        return []
    target, columns = _grant_target(key, attrs)

    def privileges(letters: Iterable[str]) -> str:
        if not columns:
            return _privilege_list(letters)
        return ", ".join(f"{p}{columns}" for p in _privilege_list(letters).split(", "))

    out: list[Stmt] = []
    for role in sorted(set(old) | set(new), key=lambda r: (r is not None, r or "")):
        had, had_option = old.get(role, (frozenset(), frozenset()))
        has, has_option = new.get(role, (frozenset(), frozenset()))
        plain = (has - had) - has_option
        with_option = has_option - had_option
        removed = had - has
        option_removed = (had_option - has_option) - removed
        who = _grantee(role)
        if plain:
            out.append(Stmt(f"GRANT {privileges(plain)} ON {target} TO {who}"))
        if with_option:
            out.append(Stmt(f"GRANT {privileges(with_option)} ON {target} TO {who} WITH GRANT OPTION"))
        if removed:
            out.append(Stmt(f"REVOKE {privileges(removed)} ON {target} FROM {who}"))
        if option_removed:
            out.append(Stmt(f"REVOKE GRANT OPTION FOR {privileges(option_removed)} ON {target} FROM {who}"))
    return out


def _comment_target(key: str, attrs: Mapping[str, Any] | None = None) -> str:
    object_type, name = split_key(key)
    if object_type in ("constraint", "trigger", "rule", "policy"):
        table, local = owner_of(name)
        return f"{object_type.upper()} {local} ON {table}"
    kind = {
        "schema": "SCHEMA", "extension": "EXTENSION", "table": "TABLE", "column": "COLUMN", "index": "INDEX",
        "sequence": "SEQUENCE", "view": "VIEW", "materialized_view": "MATERIALIZED VIEW",
        "function": "FUNCTION", "procedure": "PROCEDURE", "enum": "TYPE", "composite": "TYPE",
        "range": "TYPE", "domain": "DOMAIN",
    }[object_type]
    if object_type == "table" and attrs and attrs.get("kind") == "foreign":
        kind = "FOREIGN TABLE"
    return f"{kind} {name}"


def comment_sql(key: str, text: str | None, attrs: Mapping[str, Any] | None = None) -> Stmt:
    value = "NULL" if text is None else literal(text)
    return Stmt(f"COMMENT ON {_comment_target(key, attrs)} IS {value}")
