"""Static rules on pglast parse trees: what a migration would lock, rewrite or break.

The linter reads migration SQL with PostgreSQL's own parser (pglast) and walks
the parse tree; rules never match on the SQL text.  Two things are found in the
text on purpose, with a small lexer that knows quotes, comments and dollar
quoting: psql input that is not SQL (meta-commands such as ``\\connect`` and the
data block after ``COPY ... FROM stdin``) is blanked out before parsing, and
``-- harness:allow rule-id[, rule-id] [reason]`` comments are read from the
comments next to each statement.  Over-long identifiers come from PostgreSQL's
own scanner, because the parse tree holds them already truncated.

Whether a table "exists" decides most rules: a ``CREATE INDEX`` on a table made
earlier in the same migration locks nothing anyone else uses.  With a database
the rehearsal passes the tables of its schema snapshot (``existing_tables``);
without one every table not created earlier in the text is assumed to exist.

Every rule is listed in :data:`RULES` and documented in ``docs/lint.md``.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pglast import ast, enums, parser

from .batch import BATCH_MARK as _BATCH_MARK
from .errors import ConfigError, SourceError

__all__ = [
    "Finding",
    "Rule",
    "RULES",
    "SEVERITIES",
    "FORMATS",
    "lint_sql",
    "lint_files",
    "format_findings",
]

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning")
"""Severities a finding can have; a severity override may also say ``"off"``."""

FORMATS = ("text", "json", "github")
"""Output formats understood by :func:`format_findings`."""

# PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated with only a NOTICE.
_MAX_IDENTIFIER_BYTES = 63
_STATEMENT_SHOWN = 200
_MAX_PARSE_ERRORS = 50
_ALLOW_MARK = "harness:allow"


# ---------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Finding:
    """One rule violation at one place in one file."""

    rule: str
    """Stable rule id, a key of :data:`RULES`."""
    severity: str
    """``"error"`` or ``"warning"``."""
    message: str
    """What is wrong, on one line."""
    advice: str
    """The safe alternative, one or two lines."""
    path: str
    """The file path as given."""
    line: int
    """1-based line of the offending node, or of the statement."""
    column: int
    """1-based column of the offending node, or of the statement."""
    statement: str
    """The statement text, whitespace collapsed and shortened to about 200 characters."""
    allowed: str | None = None
    """Why the finding is acknowledged (allow comment or per-step allow), or ``None``."""


@dataclass(frozen=True)
class Rule:
    """A lint rule: stable id, default severity, category and the safe alternative."""

    id: str
    severity: str
    category: str
    summary: str
    advice: str


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {r.id: r for r in rules}


RULES: dict[str, Rule] = _rules(
    # -- indexes
    Rule(
        "index-not-concurrent", "error", "index",
        "CREATE INDEX without CONCURRENTLY on an existing table blocks writes while the index builds.",
        "Use CREATE INDEX CONCURRENTLY in a migration that does not run in a transaction.",
    ),
    Rule(
        "drop-index-not-concurrent", "error", "index",
        "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the index's table.",
        "Use DROP INDEX CONCURRENTLY in a migration that does not run in a transaction.",
    ),
    Rule(
        "reindex-not-concurrent", "error", "index",
        "REINDEX without CONCURRENTLY blocks writes (and reads that use the index) while it rebuilds.",
        "Use REINDEX ... CONCURRENTLY (PostgreSQL 12+) outside a transaction.",
    ),
    Rule(
        "concurrently-in-transaction", "error", "index",
        "A CONCURRENTLY operation cannot run inside a transaction block and fails.",
        "Put it in its own migration marked to run without a transaction, with no BEGIN/COMMIT around it.",
    ),
    # -- constraints
    Rule(
        "constraint-missing-not-valid", "error", "constraints",
        "ADD FOREIGN KEY / CHECK on an existing table validates every row under a blocking lock.",
        "ADD CONSTRAINT ... NOT VALID now, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration.",
    ),
    Rule(
        "unique-constraint-without-index", "error", "constraints",
        "ADD UNIQUE / PRIMARY KEY on an existing table builds its index under an ACCESS EXCLUSIVE lock.",
        "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... UNIQUE (or PRIMARY KEY) USING INDEX.",
    ),
    Rule(
        "validate-in-same-transaction", "error", "constraints",
        "VALIDATE CONSTRAINT runs in the transaction that added the constraint NOT VALID: the scan of every "
        "row still happens under the lock the ADD CONSTRAINT took, held until commit.",
        "Validate in a later migration (or after a COMMIT in one that runs without a transaction): "
        "alone, VALIDATE CONSTRAINT only takes a SHARE UPDATE EXCLUSIVE lock.",
    ),
    Rule(
        "set-not-null", "error", "constraints",
        "SET NOT NULL on an existing table scans every row under an ACCESS EXCLUSIVE lock.",
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c (later); "
        "then SET NOT NULL (no scan) and DROP CONSTRAINT c.",
    ),
    # -- rewrites
    Rule(
        "column-type-change", "error", "rewrites",
        "ALTER COLUMN ... TYPE on an existing table usually rewrites the table and its indexes under an "
        "ACCESS EXCLUSIVE lock.",
        "Add a new column, backfill it in batches, switch readers and writers, then drop the old column. "
        "Only varchar(n)->varchar(m>=n)/text and numeric(p,s)->numeric(q>=p,s) are rewrite-free.",
    ),
    Rule(
        "add-column-volatile-default", "error", "rewrites",
        "ADD COLUMN with a volatile default (random(), gen_random_uuid(), nextval(), identity, serial...) "
        "rewrites the whole table.",
        "Add the column without a default (or with a constant one), set the default afterwards, "
        "and backfill existing rows in batches.",
    ),
    Rule(
        "add-column-generated-stored", "error", "rewrites",
        "ADD COLUMN ... GENERATED ALWAYS AS (...) STORED rewrites the whole table.",
        "Add a plain column kept up to date by a trigger and backfilled in batches "
        "(or a VIRTUAL generated column on PostgreSQL 18+).",
    ),
    Rule(
        "unbatched-data-change", "warning", "rewrites",
        "UPDATE / DELETE of an existing table runs as one statement: it locks every row it changes and keeps "
        "their old versions alive until the migration commits.",
        "Mark it -- harness:batch key=<column> size=<rows> to run it in short transactions over key ranges "
        "(docs/authoring.md).",
    ),
    Rule(
        "vacuum-full", "error", "rewrites",
        "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock.",
        "Use plain VACUUM, or an online tool such as pg_repack / pg_squeeze, outside migrations.",
    ),
    Rule(
        "cluster", "error", "rewrites",
        "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock.",
        "Use an online tool such as pg_repack, outside migrations.",
    ),
    # -- compatibility
    Rule(
        "drop-table", "error", "compatibility",
        "DROP TABLE breaks every reader and writer of the table still deployed.",
        "Stop using the table in the application first; drop it in a later release.",
    ),
    Rule(
        "drop-column", "error", "compatibility",
        "DROP COLUMN breaks deployed code that still reads or writes the column.",
        "Stop using the column (and remove it from ORM models) first; drop it in a later release.",
    ),
    Rule(
        "drop-schema", "error", "compatibility",
        "DROP SCHEMA removes every object in it for every deployed reader.",
        "Move or retire the objects first; drop the empty schema in a later release.",
    ),
    Rule(
        "rename-table", "error", "compatibility",
        "Renaming a table breaks deployed code that uses the old name.",
        "Create the new table (or a view with the new name), migrate code, then retire the old name.",
    ),
    Rule(
        "rename-column", "error", "compatibility",
        "Renaming a column breaks deployed code that uses the old name.",
        "Add the new column, write both, backfill, switch readers, then drop the old column.",
    ),
    Rule(
        "drop-not-null", "warning", "compatibility",
        "DROP NOT NULL lets NULLs into a column that deployed readers may assume is never NULL.",
        "Make sure every reader handles NULL before deploying this.",
    ),
    Rule(
        "add-column-not-null-without-default", "error", "compatibility",
        "ADD COLUMN ... NOT NULL without a DEFAULT fails on a table that has rows, "
        "and breaks deployed writers that do not set the column.",
        "Add the column with a constant DEFAULT (no rewrite on PostgreSQL 11+), "
        "or add it nullable, backfill, then enforce NOT NULL safely.",
    ),
    Rule(
        "enum-rename-value", "error", "compatibility",
        "Renaming an enum value breaks deployed code that reads or writes the old label.",
        "Add the new value, migrate data and code, and stop using the old one.",
    ),
    Rule(
        "enum-add-value", "warning", "compatibility",
        "A new enum value can reach deployed readers whose exhaustive matches do not know it.",
        "Deploy readers that accept the new value before writers start using it.",
    ),
    # -- robustness
    Rule(
        "enum-value-used-in-transaction", "error", "robustness",
        "An enum value added by ALTER TYPE ... ADD VALUE is used before its transaction commits: "
        "PostgreSQL 12+ fails with \"unsafe use of new value\".",
        "Add the value in one migration (or before a COMMIT in one that runs without a transaction) "
        "and use it in a later one.",
    ),
    Rule(
        "not-rerunnable", "warning", "robustness",
        "The statement fails when run a second time; PostgreSQL offers a re-runnable form.",
        "Use IF [NOT] EXISTS or CREATE OR REPLACE so a half-applied migration can be re-run.",
    ),
    Rule(
        "nested-transaction", "error", "robustness",
        "BEGIN inside an open transaction is ignored with a warning, and its COMMIT ends the outer "
        "transaction early.",
        "Remove BEGIN/COMMIT from the file: the harness runs each migration in a transaction "
        "(or mark the migration to run without one).",
    ),
    Rule(
        "unterminated-transaction", "error", "robustness",
        "BEGIN without a matching COMMIT or ROLLBACK leaves the transaction open at the end of the file.",
        "Add the COMMIT, or remove the BEGIN and let the harness manage the transaction.",
    ),
    Rule(
        "commit-without-begin", "error", "robustness",
        "COMMIT / ROLLBACK without a BEGIN in the file ends the harness's transaction (or does nothing).",
        "Remove it; the harness commits or rolls back the migration's transaction itself.",
    ),
    Rule(
        "cannot-run-in-transaction", "error", "robustness",
        "The statement (VACUUM, CREATE/DROP DATABASE, ALTER SYSTEM, tablespaces, REINDEX DATABASE/SYSTEM) "
        "cannot run inside a transaction block.",
        "Put it in a migration marked to run without a transaction, with no BEGIN/COMMIT around it.",
    ),
    Rule(
        "missing-lock-timeout", "error", "robustness",
        "A lock-taking statement runs with no lock_timeout: waiting for its lock queues every other "
        "query on the table behind it.",
        "Start the migration with SET lock_timeout = '2s' (or SET LOCAL) and retry on timeout.",
    ),
    Rule(
        "identifier-too-long", "warning", "robustness",
        "An identifier longer than 63 bytes is silently truncated by PostgreSQL.",
        "Use a name of at most 63 bytes (UTF-8).",
    ),
    Rule(
        "truncate-cascade", "error", "robustness",
        "TRUNCATE ... CASCADE also empties every table that references these, recursively.",
        "TRUNCATE the intended tables explicitly, without CASCADE.",
    ),
    Rule(
        "psql-meta-command", "warning", "robustness",
        "A psql meta-command (backslash command) is not SQL; the harness does not run it.",
        "Remove it, or express it in SQL (\\connect cannot be expressed: use a separate database target).",
    ),
    Rule(
        "parse-error", "error", "robustness",
        "PostgreSQL's parser rejects this SQL.",
        "Fix the syntax; the error message points at the offending token.",
    ),
    Rule(
        "allow-unknown-rule", "warning", "robustness",
        "A harness:allow comment names a rule that does not exist, so it acknowledges nothing.",
        "Use a rule id from docs/lint.md.",
    ),
    # -- types
    Rule(
        "prefer-jsonb", "warning", "types",
        "json stores text and re-parses it on every access, and has no equality operator.",
        "Use jsonb.",
    ),
    Rule(
        "prefer-timestamptz", "warning", "types",
        "timestamp without time zone records no offset; values are ambiguous across time zones.",
        "Use timestamptz (timestamp with time zone).",
    ),
    Rule(
        "prefer-text-over-char", "warning", "types",
        "char(n) pads with spaces and is no faster than text.",
        "Use text or varchar(n) (with a CHECK on length if needed).",
    ),
    Rule(
        "prefer-identity", "warning", "types",
        "serial types create a loosely owned sequence with awkward permissions and dump behaviour.",
        "Use bigint GENERATED ALWAYS AS IDENTITY (or BY DEFAULT).",
    ),
    Rule(
        "prefer-bigint-pk", "warning", "types",
        "An integer/smallint primary key runs out of values (2^31) and is costly to widen later.",
        "Use bigint for primary keys.",
    ),
)


# ---------------------------------------------------------------------------- lexer


@dataclass
class _Lexed:
    """The text made parseable, plus what the lexer found in it."""

    clean: str
    comments: list[tuple[int, int]] = field(default_factory=list)  # (start, end) of each comment
    boundaries: list[int] = field(default_factory=list)  # offsets that end a statement (';' or cut)
    metas: list[tuple[int, str]] = field(default_factory=list)  # (offset, text) of psql meta-commands


_SPECIAL = re.compile(r"--|/\*|'|\"|\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$|\\|;|\(|\)")
_WORD = re.compile(r"[A-Za-z_]+")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ord(ch) >= 0x80


def _blank(text: str) -> str:
    """*text* with every character but newlines replaced by a space (offsets and lines kept)."""
    return "\n".join(" " * len(part) for part in text.split("\n"))


def _skip_block_comment(text: str, i: int) -> int:
    """End offset of the (nestable) ``/* */`` comment starting at *i*; len(text) if unterminated."""
    depth = 0
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            nxt = min((p for p in (text.find("/*", i), text.find("*/", i)) if p >= 0), default=-1)
            if nxt < 0:
                return n
            i = nxt
    return n


def _skip_trivia(text: str, i: int, end: int | None = None) -> int:
    """First offset at or after *i* that is neither whitespace nor inside a comment."""
    n = len(text) if end is None else end
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        else:
            break
    return min(i, n)


def _copy_from_stdin(segment: str) -> bool:
    """Whether *segment* is a ``COPY ... FROM STDIN`` statement (psql data follows it)."""
    start = _skip_trivia(segment, 0)
    word = _WORD.match(segment, start)
    if word is None or word.group().lower() != "copy":
        return False
    try:
        stmts = parser.parse_sql(segment)
    except Exception:  # noqa: BLE001 - any parser failure means "not a COPY we can recognise"
        return False
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.CopyStmt):
        return False
    copy = stmts[0].stmt
    return bool(copy.is_from) and copy.filename is None and not copy.is_program


def _lex(text: str) -> _Lexed:
    """Find comments and statement ends; blank psql meta-commands and COPY data blocks.

    This is the one place that reads SQL as text: a lexer that knows quotes,
    comments and dollar quoting, like psql's, so that it can tell which
    backslashes start a meta-command and where a ``COPY ... FROM stdin`` data
    block begins.  Blanked text keeps its length and newlines, so parser
    locations still map to the right line and column.
    """
    if "\x00" in text:
        text = text.replace("\x00", " ")
    out = _Lexed(clean="")
    cuts: list[tuple[int, int, str]] = []  # (start, end, replacement)
    n = len(text)
    i = 0
    depth = 0
    seg_start = 0
    while True:
        m = _SPECIAL.search(text, i)
        if m is None:
            break
        tok = m.group()
        pos = m.start()
        if tok == "--":
            nl = text.find("\n", pos)
            end = n if nl < 0 else nl
            out.comments.append((pos, end))
            i = end
        elif tok == "/*":
            end = _skip_block_comment(text, pos)
            out.comments.append((pos, end))
            i = end
        elif tok == "'":
            escaped = pos > 0 and text[pos - 1] in "eE" and (pos < 2 or not _is_ident_char(text[pos - 2]))
            j = pos + 1
            while True:
                q = text.find("'", j)
                if q < 0:
                    j = n
                    break
                if escaped:
                    # Count the backslashes right before the quote: odd means it is escaped.
                    k = q - 1
                    while k >= j and text[k] == "\\":
                        k -= 1
                    if (q - 1 - k) % 2 == 1:
                        j = q + 1
                        continue
                if q + 1 < n and text[q + 1] == "'":
                    j = q + 2
                    continue
                j = q + 1
                break
            i = j
        elif tok == '"':
            j = pos + 1
            while True:
                q = text.find('"', j)
                if q < 0:
                    j = n
                    break
                if q + 1 < n and text[q + 1] == '"':
                    j = q + 2
                    continue
                j = q + 1
                break
            i = j
        elif tok[0] == "$":
            if pos > 0 and _is_ident_char(text[pos - 1]):
                i = pos + 1  # part of an identifier such as a$b$
                continue
            close = text.find(tok, pos + len(tok))
            i = n if close < 0 else close + len(tok)
        elif tok == "(":
            depth += 1
            i = pos + 1
        elif tok == ")":
            depth = max(0, depth - 1)
            i = pos + 1
        elif tok == "\\":
            nl = text.find("\n", pos)
            end = n if nl < 0 else nl
            command = text[pos:end].rstrip()
            out.metas.append((pos, command))
            name = _WORD.match(command, 1)
            # \g and friends send the query buffer, like a semicolon.
            terminates = name is not None and name.group().lower() in {"g", "gx", "gset", "gexec", "gdesc"}
            cuts.append((pos, end, (";" + _blank(text[pos + 1:end])) if terminates else _blank(text[pos:end])))
            if terminates:
                out.boundaries.append(pos)
                seg_start = pos + 1
                depth = 0
            i = end
        else:  # ';'
            i = pos + 1
            if depth:
                continue  # e.g. CREATE RULE ... DO (stmt; stmt)
            out.boundaries.append(pos)
            segment = text[seg_start:pos]
            if cuts and cuts[-1][1] > seg_start:
                # A meta-command line inside the segment is not part of the statement.
                for start, end, repl in cuts:
                    if start >= seg_start:
                        segment = segment[: start - seg_start] + repl + segment[end - seg_start:]
            seg_start = pos + 1
            if _copy_from_stdin(segment):
                nl = text.find("\n", pos)
                if nl < 0:
                    break
                data_start = nl + 1
                j = data_start
                data_end = n
                while j < n:
                    eol = text.find("\n", j)
                    line_end = n if eol < 0 else eol
                    if text[j:line_end].rstrip("\r") == "\\.":
                        data_end = line_end
                        break
                    j = line_end + 1
                cuts.append((data_start, data_end, _blank(text[data_start:data_end])))
                i = data_end
                seg_start = data_end
    if cuts:
        pieces = []
        last = 0
        for start, end, repl in cuts:
            pieces.append(text[last:start])
            pieces.append(repl)
            last = end
        pieces.append(text[last:])
        out.clean = "".join(pieces)
    else:
        out.clean = text
    return out


# ---------------------------------------------------------------------------- AST helpers


_CHILD_SLOTS: dict[type, tuple[str, ...]] = {}


def _child_slots(cls: type) -> tuple[str, ...]:
    names = _CHILD_SLOTS.get(cls)
    if names is None:
        slots = getattr(cls, "__slots__", {})
        if isinstance(slots, dict):
            names = tuple(
                name for name, info in slots.items()
                if getattr(info, "c_type", "").endswith("*") and info.c_type != "char*"
            )
        else:
            names = ()
        _CHILD_SLOTS[cls] = names
    return names


def _walk(node: object) -> Iterator[ast.Node]:
    """Every pglast node under *node* (itself included), depth first."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.Node):
            yield cur
            for name in _child_slots(type(cur)):
                value = getattr(cur, name, None)
                if value is not None:
                    stack.append(value)
        elif isinstance(cur, (tuple, list)):
            stack.extend(cur)


def _names(items: object) -> list[str]:
    """The strings of a list of ``String`` nodes (qualified names, type names)."""
    if not isinstance(items, (tuple, list)):
        return []
    out = []
    for item in items:
        value = getattr(item, "sval", None)
        if isinstance(value, str):
            out.append(value)
    return out


def _location(node: object) -> int | None:
    loc = getattr(node, "location", None)
    return loc if isinstance(loc, int) and loc >= 0 else None


def _option_true(arg: object) -> bool:
    """Whether a ``DefElem`` argument turns an option on (no argument means on)."""
    if arg is None:
        return True
    if isinstance(arg, ast.A_Const):
        arg = arg.val
    value = getattr(arg, "boolval", getattr(arg, "ival", getattr(arg, "sval", True)))
    return str(value).lower() not in {"false", "0", "off", "no"}


def _has_concurrently(params: object) -> bool:
    for elem in params if isinstance(params, (tuple, list)) else ():
        if isinstance(elem, ast.DefElem) and (elem.defname or "").lower() == "concurrently":
            return _option_true(elem.arg)
    return False


def _const_value(node: object) -> object:
    """The Python value of an ``A_Const`` (or ``None``)."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        val = node.val
        for attr in ("sval", "ival", "fval", "boolval", "bsval"):
            if hasattr(val, attr):
                return getattr(val, attr)
    return None


_SERIAL = {"serial": "serial", "serial4": "serial", "bigserial": "bigserial", "serial8": "bigserial",
           "smallserial": "smallserial", "serial2": "smallserial"}


@dataclass(frozen=True)
class _Type:
    """A column type as written: normalised built-in name and integer modifiers."""

    name: str
    mods: tuple[int, ...] | None
    array: bool

    def show(self) -> str:
        mods = "" if not self.mods else "(" + ",".join(str(m) for m in self.mods) + ")"
        return f"{_TYPE_DISPLAY.get(self.name, self.name)}{mods}{'[]' if self.array else ''}"


_TYPE_DISPLAY = {"int2": "smallint", "int4": "integer", "int8": "bigint", "bpchar": "char", "float4": "real",
                 "float8": "double precision", "bool": "boolean", "timestamptz": "timestamptz"}


def _type_of(type_name: object) -> _Type | None:
    """The built-in type named by a ``TypeName`` node; ``None`` for a type in another schema."""
    if not isinstance(type_name, ast.TypeName):
        return None
    names = _names(type_name.names)
    if len(names) == 2 and names[0] == "pg_catalog":
        name = names[1]
    elif len(names) == 1:
        name = _SERIAL.get(names[0], names[0])
    else:
        return None
    mods: tuple[int, ...] | None = None
    if type_name.typmods:
        values = [_const_value(m) for m in type_name.typmods]
        mods = tuple(v for v in values if isinstance(v, int)) if all(isinstance(v, int) for v in values) else ()
    return _Type(name, mods, bool(type_name.arrayBounds))


_VOLATILE_FUNCTIONS = frozenset({
    "random", "random_normal",
    "gen_random_uuid", "uuidv4", "uuidv7", "gen_random_bytes",
    "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
    "clock_timestamp", "timeofday", "nextval", "txid_current", "pg_current_xact_id",
})


_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
_VOLATILITY_RANK = {"immutable": 0, "stable": 1, "volatile": 2}


def _function_key(name: str) -> tuple[str, str]:
    """``schema.name`` or ``schema.name(argument types)`` in quote_ident style -> (schema, name)."""
    quoted = False
    for i, ch in enumerate(name):
        if ch == '"':
            quoted = not quoted
        elif ch == "(" and not quoted:
            name = name[:i]
            break
    parts = _split_identifiers(name.strip())
    return ("public", parts[0]) if len(parts) == 1 else (parts[-2], parts[-1])


def _known_functions(functions: Mapping[str, str] | None) -> dict[tuple[str, str], str]:
    """Caller's function volatilities by (schema, name); of overloads, the most volatile counts."""
    out: dict[tuple[str, str], str] = {}
    for name, volatility in (functions or {}).items():
        word = _VOLATILITY.get(str(volatility).lower()[:1])
        if word is None:
            continue
        key = _function_key(name)
        if _VOLATILITY_RANK[word] >= _VOLATILITY_RANK[out.get(key, "immutable")]:
            out[key] = word
    return out


def _declared_volatility(options: object) -> str | None:
    """The IMMUTABLE / STABLE / VOLATILE option among a function's options, if given."""
    for opt in options if isinstance(options, (tuple, list)) else ():
        if isinstance(opt, ast.DefElem) and opt.defname == "volatility":
            value = getattr(opt.arg, "sval", None)
            if isinstance(value, str) and value.lower() in _VOLATILITY_RANK:
                return value.lower()
    return None


def _plpgsql_queries(tree: object) -> Iterator[tuple[int, str, bool]]:
    """(line in the body, SQL text, is a string literal for EXECUTE) of the statements in a PL/pgSQL parse tree.

    The tree is the JSON of ``pglast.parser.parse_plpgsql_json``: plain SQL
    statements are ``PLpgSQL_stmt_execsql`` nodes; ``EXECUTE`` is
    ``PLpgSQL_stmt_dynexecute`` with the expression's text.
    """
    stack: list[Any] = [tree]
    while stack:
        cur = stack.pop()
        if isinstance(cur, list):
            stack.extend(reversed(cur))
        elif isinstance(cur, dict):
            execsql = cur.get("PLpgSQL_stmt_execsql")
            dynamic = cur.get("PLpgSQL_stmt_dynexecute")
            if isinstance(execsql, dict):
                query = execsql.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
                if isinstance(query, str):
                    yield int(execsql.get("lineno", 1)), query, False
            elif isinstance(dynamic, dict):
                query = dynamic.get("query", {}).get("PLpgSQL_expr", {}).get("query")
                if isinstance(query, str):
                    yield int(dynamic.get("lineno", 1)), query, True
            else:
                stack.extend(reversed(list(cur.values())))


def _string_literal(expr: str) -> tuple[str | None, int | None]:
    """The value of *expr* if it is one string literal, and where that value starts in *expr* when verbatim.

    Only the two forms written verbatim or nearly so: ``'...'`` (with doubled
    quotes; ``E''`` strings and concatenations are not literals here) and
    dollar quoting.  PL/pgSQL evaluates them with standard_conforming_strings,
    so backslashes are plain characters.
    """
    lead = len(expr) - len(expr.lstrip())
    text = expr.strip()
    if len(text) < 2:
        return None, None
    if text[0] == "'":
        i = 1
        while True:
            q = text.find("'", i)
            if q < 0:
                return None, None
            if q + 1 < len(text) and text[q + 1] == "'":
                i = q + 2
                continue
            if q != len(text) - 1:
                return None, None  # something follows the literal
            inner = text[1:-1]
            return inner.replace("''", "'"), (lead + 1 if "''" not in inner else None)
    tag = _DOLLAR_TAG.match(text)
    if tag is None:
        return None, None
    mark = tag.group()
    close = text.find(mark, len(mark))
    if close != len(text) - len(mark):
        return None, None
    return text[len(mark):close], lead + len(mark)


def _constraints(coldef: ast.ColumnDef) -> list[ast.Constraint]:
    return [c for c in (coldef.constraints or ()) if isinstance(c, ast.Constraint)]


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _STATEMENT_SHOWN else flat[: _STATEMENT_SHOWN - 3] + "..."


CT = enums.ConstrType
AT = enums.AlterTableType
OT = enums.ObjectType
TK = enums.TransactionStmtKind
VK = enums.VariableSetKind


# ---------------------------------------------------------------------------- state


def _split_identifiers(name: str) -> list[str]:
    """``schema.table`` as written in SQL (quote_ident style) -> the raw identifiers."""
    parts: list[str] = []
    i, n = 0, len(name)
    while i <= n:
        if i < n and name[i] == '"':
            j = i + 1
            buf = []
            while j < n:
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            dot = name.find(".", i)
            end = n if dot < 0 else dot
            parts.append(name[i:end].strip().lower())
            i = end
        if i < n and name[i] == ".":
            i += 1
            continue
        break
    return parts


# A rehearsal lints every migration against the tables of its schema: the same names, hundreds of times.
@functools.lru_cache(maxsize=1 << 16)
def _qualify(name: str) -> str:
    """A table name as given by a caller (``users``, ``app.users``, ``public."Mixed"``) -> ``schema.table``.

    Snapshots write names with ``quote_ident``; unquoted parts fold to lower
    case as in SQL, so ``public."Users"`` and ``public.users`` differ.
    """
    parts = _split_identifiers(name)
    if len(parts) == 1:
        return f"public.{parts[0]}"
    return f"{parts[-2]}.{parts[-1]}"


@dataclass
class _History:
    """What earlier statements (this file or earlier files) tell about the schema."""

    existing: set[str] | None
    """Qualified tables known to exist before the current file, or None when unknown (assume all)."""
    columns: dict[str, dict[str, _Type | None]] = field(default_factory=dict)
    """Column types of tables whose definition was seen (no-database mode)."""
    not_null_checks: dict[tuple[str, str], str] = field(default_factory=dict)
    """(table, constraint) -> column, for CHECK (col IS NOT NULL) constraints not yet validated."""
    proven_not_null: set[tuple[str, str]] = field(default_factory=set)
    """(table, column) with a validated CHECK (col IS NOT NULL): SET NOT NULL does not scan."""
    functions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(schema, function) -> declared volatility, ``"immutable"``, ``"stable"`` or ``"volatile"``."""


@dataclass(frozen=True)
class _Options:
    severities: Mapping[str, str]
    allow: frozenset[str]
    allow_reason: str | None
    require_lock_timeout: bool
    in_transaction: bool


@dataclass
class _Allow:
    rules: frozenset[str]
    reason: str | None


class _Linter:
    """Lints one text: holds the per-file state the rules need."""

    def __init__(self, text: str, path: str, history: _History, options: _Options) -> None:
        self.path = path
        self.history = history
        self.options = options
        self.lexed = _lex(text)
        self.text = self.lexed.clean
        self.line_starts = [0]
        find = self.text.find
        pos = find("\n")
        while pos >= 0:
            self.line_starts.append(pos + 1)
            pos = find("\n", pos + 1)
        self.findings: list[Finding] = []
        self.finding_spans: list[tuple[int, int]] = []  # statement (start, stop) of each finding
        self.created_tables: set[str] = set()
        self.created_indexes: set[str] = set()
        self.created_schemas: set[str] = set()
        self.created_types: set[str] = set()
        self.dropped_tables: set[str] = set()
        self.search_path: list[str] = ["public"]
        self.open_begin: tuple[int, str] | None = None  # offset and text of the file's open BEGIN
        self.lock_timeout = False
        self.lock_reported = False
        # Transactions: a number per transaction the file's statements run in.
        self.txn = 0
        self.not_valid: dict[tuple[str, str], int] = {}  # (table, constraint) added NOT VALID -> its txn
        self.new_enum_values: dict[str, tuple[int, str]] = {}  # label -> (txn, enum) of ADD VALUE
        self._comment_lines: tuple[set[int], dict[int, list[str]]] | None = None
        # PL/pgSQL routines created in the file: (schema, name) -> (statement, body, body offset)
        self.routines: dict[tuple[str, str], tuple[str, str, int | None]] = {}
        # current statement
        self.stmt_start = 0
        self.stmt_stop = 0
        self.stmt_text = ""
        # Inside a DO body: node locations are relative to *base* (None: unknown, use *anchor*).
        self.in_body = False
        self.base: int | None = 0
        self.anchor: int | None = None

    # -- positions and findings

    def line_col(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        idx = bisect.bisect_right(self.line_starts, offset) - 1
        return idx + 1, offset - self.line_starts[idx] + 1

    def add(self, rule: str, message: str, node: object = None, *, offset: int | None = None,
            severity: str | None = None, statement: str | None = None, advice: str | None = None) -> None:
        where = offset
        if where is None:
            loc = _location(node)
            if loc is not None and self.base is not None:
                where = self.base + loc
        if where is None:
            where = self.stmt_start if self.anchor is None else self.anchor
        line, col = self.line_col(where)
        spec = RULES[rule]
        self.findings.append(Finding(
            rule=rule,
            severity=severity or spec.severity,
            message=message,
            advice=advice or spec.advice,
            path=self.path,
            line=line,
            column=col,
            statement=_shorten(self.stmt_text if statement is None else statement),
        ))
        self.finding_spans.append((self.stmt_start, max(self.stmt_stop, self.stmt_start + 1)))

    # -- names

    def resolve(self, rv: ast.RangeVar) -> list[str]:
        """Qualified candidates for a relation reference, in lookup order."""
        if rv.schemaname:
            return [f"{rv.schemaname}.{rv.relname}"]
        cands = [f"pg_temp.{rv.relname}"]
        cands.extend(f"{schema}.{rv.relname}" for schema in self.search_path)
        return cands

    def creation_name(self, rv: ast.RangeVar) -> str:
        if rv.schemaname:
            return f"{rv.schemaname}.{rv.relname}"
        if rv.relpersistence == "t":
            return f"pg_temp.{rv.relname}"
        schema = self.search_path[0] if self.search_path else "public"
        return f"{schema}.{rv.relname}"

    def lookup_name(self, rv: ast.RangeVar) -> str:
        """The qualified name a reference most likely means (for messages and the column model)."""
        cands = self.resolve(rv)
        for cand in cands:
            if cand in self.created_tables or (self.history.existing and cand in self.history.existing):
                return cand
        return cands[0] if rv.schemaname else cands[1] if len(cands) > 1 else cands[0]

    def existing(self, rv: object) -> bool:
        """Whether the relation existed before this file (so other sessions use it)."""
        if not isinstance(rv, ast.RangeVar) or not rv.relname:
            return False
        known = self.history.existing
        for cand in self.resolve(rv):
            if cand in self.created_tables:
                return False
            if known is not None and cand in known:
                return True
        if rv.relpersistence == "t":
            return False
        return known is None

    def show(self, rv: ast.RangeVar) -> str:
        return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else (rv.relname or "")

    def in_transaction(self) -> bool:
        return self.options.in_transaction or self.open_begin is not None

    # -- driver

    def run(self) -> list[Finding]:
        for offset, command in self.lexed.metas:
            self.stmt_start, self.stmt_stop = offset, offset + len(command)
            self.add("psql-meta-command", f"psql meta-command {command.split()[0]} is not SQL and will not run",
                     offset=offset, statement=command)
        for raw, start, end in self.parse():
            self.stmt_start = start
            self.stmt_text = self.text[start:end]
            stop = end
            nxt = _skip_trivia(self.text, end)
            if nxt < len(self.text) and self.text[nxt] == ";":
                stop = nxt + 1
            self.stmt_stop = stop
            try:
                if raw.stmt is not None:
                    if not self.in_transaction():
                        self.txn += 1  # autocommit: each statement is its own transaction
                    self.statement(raw.stmt)
                self.identifiers(start, end)
            except Exception:  # noqa: BLE001 - a rule bug must not stop the lint of a valid file
                log.warning("lint: rule failure on %s line %d; statement skipped",
                            self.path, self.line_col(start)[0], exc_info=True)
        if self.open_begin is not None:
            offset, text = self.open_begin
            self.stmt_start, self.stmt_stop = offset, offset + len(text)
            self.add("unterminated-transaction", "BEGIN without COMMIT or ROLLBACK before the end of the file",
                     offset=offset, statement=text)
        self.apply_allows()
        self.findings.sort(key=lambda f: (f.line, f.column))
        return self.findings

    def parse(self) -> list[tuple[ast.RawStmt, int, int]]:
        """Parse the clean text; on a syntax error report it and parse around it."""
        out: list[tuple[ast.RawStmt, int, int]] = []
        self._parse_region(0, len(self.text), out, depth=0)
        out.sort(key=lambda item: item[1])
        return out

    def _trim_end(self, end: int) -> int:
        """*end* moved back over trailing whitespace and comments (for "the rest of the text")."""
        starts = [c[0] for c in self.lexed.comments]
        while True:
            end = len(self.text[:end].rstrip())
            idx = bisect.bisect_left(starts, end) - 1
            if idx < 0 or self.lexed.comments[idx][1] < end:
                return end
            end = starts[idx]

    def _segment(self, offset: int, lo: int, hi: int) -> tuple[int, int]:
        """The statement segment (between statement ends) that contains *offset*, within [lo, hi)."""
        bounds = self.lexed.boundaries
        idx = bisect.bisect_left(bounds, offset)
        start = bounds[idx - 1] + 1 if idx > 0 else 0
        end = bounds[idx] + 1 if idx < len(bounds) else len(self.text)
        return max(start, lo), min(max(end, offset + 1), hi)

    def _parse_region(self, lo: int, hi: int, out: list[tuple[ast.RawStmt, int, int]], depth: int) -> None:
        while lo < hi:
            region = self.text[lo:hi]
            if not region.strip():
                return
            masked = _blank(self.text[:lo]) + region if lo else region
            try:
                stmts = parser.parse_sql(masked)
            except parser.ParseError as exc:
                message = str(exc.args[0]) if exc.args else "syntax error"
                where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
            except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
                message, where = f"cannot parse: {exc.__class__.__name__}: {exc}", None
            else:
                for raw in stmts:
                    loc = raw.stmt_location or 0
                    end = loc + raw.stmt_len if raw.stmt_len else self._trim_end(len(masked))
                    start = _skip_trivia(masked, loc, end)
                    out.append((raw, start, end))
                return
            if where is None or where < lo:
                where = lo + len(region.rstrip()) - 1 if "end of input" in message else lo
                where = max(lo, where)
            seg_lo, seg_hi = self._segment(where, lo, hi)
            if len([f for f in self.findings if f.rule == "parse-error"]) < _MAX_PARSE_ERRORS:
                self.stmt_start = _skip_trivia(self.text, seg_lo, seg_hi)
                self.stmt_stop = seg_hi
                self.add("parse-error", message, offset=where,
                         statement=self.text[self.stmt_start:seg_hi].rstrip(";"))
            if seg_lo > lo and depth < 20:
                self._parse_region(lo, seg_lo, out, depth + 1)
            lo = seg_hi if seg_hi > lo else hi

    # -- statements

    def statement(self, stmt: ast.Node) -> None:
        if self.new_enum_values and not isinstance(stmt, ast.AlterEnumStmt):
            self.enum_uses(stmt)
        # Decide on the lock before the handler updates what this file has created.
        if self.options.require_lock_timeout and not self.lock_reported and self.takes_lock(stmt):
            self.lock_reported = True
            if not self.lock_timeout:
                self.add("missing-lock-timeout",
                         "this statement takes a lock but no SET lock_timeout runs before it")
        handler = _HANDLERS.get(type(stmt))
        if handler is not None:
            handler(self, stmt)

    def takes_lock(self, stmt: ast.Node) -> bool:
        """Whether *stmt* waits for a lock that conflicts with ordinary reads or writes of existing data."""
        if isinstance(stmt, (ast.AlterTableStmt, ast.IndexStmt, ast.CreateTrigStmt, ast.CreatePolicyStmt,
                             ast.AlterPolicyStmt, ast.RuleStmt, ast.ClusterStmt)):
            rel = getattr(stmt, "relation", None) or getattr(stmt, "table", None)
            return rel is None or self.existing(rel)
        if isinstance(stmt, ast.RenameStmt):
            return stmt.relation is None or self.existing(stmt.relation)
        if isinstance(stmt, ast.TruncateStmt):
            return any(self.existing(rv) for rv in stmt.relations or ())
        if isinstance(stmt, ast.DropStmt):
            return not self._all_created(stmt)
        if isinstance(stmt, (ast.LockStmt, ast.ReindexStmt, ast.AlterEnumStmt, ast.AlterDomainStmt)):
            return True
        if isinstance(stmt, ast.VacuumStmt):
            return bool(stmt.is_vacuumcmd) and _vacuum_full(stmt)
        return False

    def _all_created(self, stmt: ast.DropStmt) -> bool:
        if stmt.removeType in (OT.OBJECT_TABLE, OT.OBJECT_MATVIEW, OT.OBJECT_FOREIGN_TABLE):
            return all(not self.existing(_rangevar(obj)) for obj in stmt.objects or ())
        if stmt.removeType == OT.OBJECT_INDEX:
            return all(self._index_created(obj) for obj in stmt.objects or ())
        return False

    def _index_created(self, obj: object) -> bool:
        names = _names(obj)
        if not names:
            return False
        if len(names) >= 2:
            return ".".join(names[-2:]) in self.created_indexes
        return names[0] in self.created_indexes

    def rerunnable(self, ok: bool, what: str, fix: str, node: object = None) -> None:
        # A migration that runs in one transaction is rolled back whole when it fails, so it never
        # re-runs half-applied; statements in a DO block usually sit behind their own guard.
        if not ok and not self.options.in_transaction and not self.in_body:
            self.add("not-rerunnable", f"{what} fails if it already ran; use {fix}", node)

    # -- enums added in this transaction

    def enum_uses(self, stmt: ast.Node) -> None:
        """Flag the first string constant in *stmt* that is an enum label added earlier in this transaction."""
        pending = {label: enum for label, (txn, enum) in self.new_enum_values.items() if txn == self.txn}
        if not pending:
            return
        for node in _walk(stmt):
            if isinstance(node, ast.A_Const) and not node.isnull:
                label = getattr(node.val, "sval", None)
                if isinstance(label, str) and label in pending:
                    # A_Const carries no location: point at the literal in the statement's text.
                    origin = self.base if self.in_body else self.stmt_start
                    pos = self.stmt_text.find("'" + label.replace("'", "''") + "'")
                    self.add("enum-value-used-in-transaction",
                             f"enum value {label!r} was added to {pending[label]} earlier in this transaction; "
                             "using it before the commit fails (unsafe use of new value)",
                             offset=origin + pos if origin is not None and pos >= 0 else None)
                    return

    # -- functions

    def function_volatility(self, names: list[str]) -> str | None:
        """The declared volatility of a user-defined function called as *names*, if the history knows it."""
        functions = self.history.functions
        if not functions:
            return None
        if len(names) >= 2:
            return functions.get((names[-2], names[-1]))
        for schema in self.search_path:
            found = functions.get((schema, names[0]))
            if found is not None:
                return found
        return None

    def volatile_call(self, expr: object) -> str | None:
        """Name of a volatile function called in *expr*: a known built-in, or one the history declares volatile."""
        for node in _walk(expr):
            if isinstance(node, ast.FuncCall):
                names = _names(node.funcname)
                if not names:
                    continue
                if names[-1].lower() in _VOLATILE_FUNCTIONS or self.function_volatility(names) == "volatile":
                    return ".".join(names)
        return None

    # -- batch directives

    def batched(self) -> bool:
        """Whether a ``-- harness:batch`` comment sits directly above the current statement."""
        if self._comment_lines is None:
            own: set[int] = set()
            batch: dict[int, list[str]] = {}
            text = self.text
            for start, end in self.lexed.comments:
                line, _ = self.line_col(start)
                last, _ = self.line_col(end)
                line_end = self.line_starts[last] - 1 if last < len(self.line_starts) else len(text)
                if not text[self.line_starts[line - 1]:start].strip() and not text[end:line_end].strip():
                    own.update(range(line, last + 1))
                    batch.setdefault(line, []).append(text[start:end].lstrip("-/* \t"))
            self._comment_lines = (own, batch)
        own, bodies = self._comment_lines
        line = self.line_col(self.stmt_start)[0] - 1
        while line in own:
            if any(b == _BATCH_MARK or b.startswith((_BATCH_MARK + " ", _BATCH_MARK + "\t"))
                   for b in bodies.get(line, ())):
                return True
            line -= 1
        return False

    # -- PL/pgSQL bodies

    def body_offset(self, body: str) -> int | None:
        """Where the current statement's routine body starts in the file (found when it is written verbatim)."""
        found = self.text.find(body, self.stmt_start, self.stmt_stop) if body else -1
        return found if found >= 0 else None

    def plpgsql(self, source: str, body: str, body_at: int | None) -> None:
        """Run the rules on the SQL statements of a PL/pgSQL body (*source* is the statement holding it).

        Positions: *body_at* is where the body starts in the file (None when
        unknown), each statement is looked up from its line in the body on.
        Findings keep the span of the current statement, so its allow comments
        apply.
        """
        try:
            tree = json.loads(parser.parse_plpgsql_json(source))
        except Exception:  # noqa: BLE001 - PostgreSQL reports a bad body when it runs it
            log.debug("lint: cannot parse the PL/pgSQL body at %s line %d", self.path,
                      self.line_col(self.stmt_start)[0], exc_info=True)
            return
        saved = (self.in_body, self.base, self.anchor, self.stmt_text)
        self.in_body = True
        try:
            for lineno, query, literal in _plpgsql_queries(tree):
                self.body_statement(body, body_at, lineno, query, literal)
        finally:
            self.in_body, self.base, self.anchor, self.stmt_text = saved

    def body_statement(self, body: str, body_at: int | None, lineno: int, query: str, literal: bool) -> None:
        """Lint one statement of a PL/pgSQL body; *literal*: *query* is the string literal EXECUTE runs."""
        at: int | None = None
        if body_at is not None:
            line_at = 0
            for _ in range(max(0, lineno - 1)):
                nxt = body.find("\n", line_at)
                if nxt < 0:
                    break
                line_at = nxt + 1
            pos = body.find(query, line_at)
            if pos < 0:
                pos = body.find(query)
            at = body_at + (pos if pos >= 0 else line_at)
            if pos < 0:
                at = _skip_trivia(self.text, at)
        sql: str | None = query
        base = at
        if literal:
            sql, skip = _string_literal(query)
            base = None if at is None or skip is None else at + skip
        if not sql:
            return
        try:
            stmts = parser.parse_sql(sql)
        except Exception:  # noqa: BLE001 - PostgreSQL reports it when the body runs
            return
        self.anchor = base if base is not None else at if at is not None else self.stmt_start
        self.base = base
        self.stmt_text = sql
        for raw in stmts:
            if raw.stmt is not None and not isinstance(raw.stmt, ast.DoStmt):
                self.statement(raw.stmt)

    # -- identifiers

    def identifiers(self, start: int, stop: int) -> None:
        """Flag identifiers over 63 bytes, from PostgreSQL's own scanner.

        The parse tree cannot tell: the scanner has already truncated them there.
        """
        region = self.text[start:stop]
        if len(region) * 4 <= _MAX_IDENTIFIER_BYTES:  # a UTF-8 character is at most 4 bytes
            return
        try:
            tokens = parser.scan(region)
        except Exception:  # noqa: BLE001 - the parser reported whatever is wrong here
            return
        seen: set[str] = set()
        for token in tokens:
            if token.name not in ("IDENT", "UIDENT") or (token.end - token.start + 1) * 4 <= _MAX_IDENTIFIER_BYTES:
                continue
            raw = region[token.start:token.end + 1]
            if raw.startswith('"'):
                name = raw[1:-1].replace('""', '"')
            elif raw[:3].upper() == 'U&"':
                name = raw[3:-1].replace('""', '"')
            else:
                name = raw.lower()
            size = len(name.encode("utf-8"))
            if size > _MAX_IDENTIFIER_BYTES and name not in seen:
                seen.add(name)
                self.add("identifier-too-long",
                         f"identifier {name[:30]}... is {size} bytes; PostgreSQL keeps only the first "
                         f"{_MAX_IDENTIFIER_BYTES}", offset=start + token.start)

    # -- allow comments

    def apply_allows(self) -> None:
        """Mark findings acknowledged by ``harness:allow`` comments or by the step's allow list."""
        text = self.text
        above: dict[int, list[_Allow]] = {}  # line -> allows in own-line comments starting there
        comment_only: set[int] = set()  # lines holding nothing but comments
        trailing: list[tuple[int, int, _Allow]] = []  # (offset, line, allow) after code on a line
        extra: list[Finding] = []
        for start, end in self.lexed.comments:
            body = text[start:end]
            directive = body.lstrip("-/* \t")
            allow = self.parse_allow(directive, start, extra) if directive.startswith(_ALLOW_MARK) else None
            line, _ = self.line_col(start)
            last_line, _ = self.line_col(end)
            line_end = self.line_starts[last_line] - 1 if last_line < len(self.line_starts) else len(text)
            if not text[self.line_starts[line - 1]:start].strip() and not text[end:line_end].strip():
                comment_only.update(range(line, last_line + 1))
                if allow is not None:
                    above.setdefault(line, []).append(allow)
            elif allow is not None:
                trailing.append((start, line, allow))
        if not above and not trailing and not self.options.allow:
            self.findings.extend(extra)
            return
        result = []
        for finding, (s_start, s_stop) in zip(self.findings, self.finding_spans):
            first, _ = self.line_col(s_start)
            last, _ = self.line_col(s_stop - 1)
            allows = [a for offset, line, a in trailing
                      if first <= line <= last and (offset >= s_start or line == first)]
            for line in range(first, last + 1):
                allows.extend(above.get(line, ()))
            line = first - 1
            while line in comment_only:
                allows.extend(above.get(line, ()))
                line -= 1
            reason = None
            for allow in allows:
                if finding.rule in allow.rules:
                    reason = allow.reason or "acknowledged in file"
                    break
            if reason is None and finding.rule in self.options.allow:
                reason = self.options.allow_reason or "allowed by the step"
            result.append(replace(finding, allowed=reason) if reason is not None else finding)
        self.findings = result + extra

    def parse_allow(self, body: str, offset: int, extra: list[Finding]) -> _Allow | None:
        """Read ``harness:allow rule-id[, rule-id] [reason]`` from a comment body."""
        rest = body[len(_ALLOW_MARK):]
        if self.text.startswith("/*", offset):
            rest = rest.rsplit("*/", 1)[0]
        rest = rest.strip()
        rules: list[str] = []
        expect_more = False
        while rest:
            word = rest.split(None, 1)[0]
            ident = word.split(",", 1)[0].rstrip(":")
            if not ident or not all(ch.isalnum() or ch in "-_" for ch in ident):
                break
            if rules and not expect_more and ident not in RULES:
                break
            rules.append(ident)
            rest = rest[len(ident):].lstrip()
            if rest.startswith(":"):
                break  # "rule: reason"
            expect_more = rest.startswith(",")
            if expect_more:
                rest = rest[1:].lstrip()
        reason = rest.strip().lstrip(":-\u2014").strip() or None
        line, col = self.line_col(offset)
        for rule in rules:
            if rule not in RULES:
                extra.append(Finding(
                    rule="allow-unknown-rule",
                    severity=RULES["allow-unknown-rule"].severity,
                    message=f"harness:allow names unknown rule {rule!r}",
                    advice=RULES["allow-unknown-rule"].advice,
                    path=self.path,
                    line=line,
                    column=col,
                    statement=_shorten(body),
                ))
        if not rules:
            return None
        return _Allow(frozenset(rules), reason)


def _rangevar(obj: object) -> ast.RangeVar | None:
    names = _names(obj)
    if not names:
        return None
    if len(names) == 1:
        return ast.RangeVar(relname=names[0], relpersistence="p")
    return ast.RangeVar(schemaname=names[-2], relname=names[-1], relpersistence="p")


def _vacuum_full(stmt: ast.VacuumStmt) -> bool:
    for opt in stmt.options or ():
        if isinstance(opt, ast.DefElem) and (opt.defname or "").lower() == "full":
            return _option_true(opt.arg)
    return False


# ---------------------------------------------------------------------------- rule handlers


def _on_index(lint: _Linter, stmt: ast.IndexStmt) -> None:
    rel = stmt.relation
    if stmt.concurrent:
        if lint.in_transaction():
            lint.add("concurrently-in-transaction", "CREATE INDEX CONCURRENTLY inside a transaction block fails")
    elif rel is not None and lint.existing(rel):
        lint.add("index-not-concurrent",
                 f"CREATE INDEX on existing table {lint.show(rel)} without CONCURRENTLY blocks writes while it builds",
                 rel)
    lint.rerunnable(bool(stmt.if_not_exists), "CREATE INDEX", "CREATE INDEX IF NOT EXISTS (with an index name)")
    if stmt.idxname and rel is not None:
        schema = rel.schemaname or (lint.search_path[0] if lint.search_path else "public")
        lint.created_indexes.add(stmt.idxname)
        lint.created_indexes.add(f"{schema}.{stmt.idxname}")


def _on_reindex(lint: _Linter, stmt: ast.ReindexStmt) -> None:
    kind = stmt.kind
    concurrent = _has_concurrently(stmt.params) or bool(getattr(stmt, "concurrent", False))
    name = getattr(kind, "name", str(kind))
    if name.endswith(("SYSTEM", "DATABASE")) and lint.in_transaction():
        lint.add("cannot-run-in-transaction", f"REINDEX {name.rsplit('_', 1)[-1]} cannot run inside a transaction block")
    if concurrent:
        if lint.in_transaction():
            lint.add("concurrently-in-transaction", "REINDEX CONCURRENTLY inside a transaction block fails")
        return
    if name.endswith("SYSTEM"):
        return  # cannot be concurrent
    rel = stmt.relation
    if name.endswith("TABLE") and rel is not None and not lint.existing(rel):
        return
    if name.endswith("INDEX") and rel is not None and (
            f"{rel.schemaname}.{rel.relname}" if rel.schemaname else rel.relname) in lint.created_indexes:
        return
    lint.add("reindex-not-concurrent", "REINDEX without CONCURRENTLY blocks writes while it rebuilds", rel)


def _on_drop(lint: _Linter, stmt: ast.DropStmt) -> None:
    kind = stmt.removeType
    objects = list(stmt.objects or ())
    label = getattr(kind, "name", str(kind)).replace("OBJECT_", "").replace("_", " ")
    lint.rerunnable(bool(stmt.missing_ok), f"DROP {label}", f"DROP {label} IF EXISTS")
    if kind == OT.OBJECT_INDEX:
        if stmt.concurrent:
            if lint.in_transaction():
                lint.add("concurrently-in-transaction", "DROP INDEX CONCURRENTLY inside a transaction block fails")
        elif not all(lint._index_created(obj) for obj in objects):
            names = ", ".join(".".join(_names(obj)) for obj in objects if not lint._index_created(obj))
            lint.add("drop-index-not-concurrent",
                     f"DROP INDEX {names} without CONCURRENTLY locks its table against reads and writes")
    elif kind == OT.OBJECT_TABLE:
        dropped = []
        for obj in objects:
            rv = _rangevar(obj)
            if rv is not None and lint.existing(rv):
                dropped.append(lint.show(rv))
            if rv is not None:
                name = lint.lookup_name(rv)
                lint.dropped_tables.add(name)
                lint.created_tables.discard(name)
                lint.history.columns.pop(name, None)
        if dropped:
            lint.add("drop-table", f"DROP TABLE {', '.join(dropped)} breaks code that still uses "
                     f"{'it' if len(dropped) == 1 else 'them'}")
    elif kind == OT.OBJECT_SCHEMA:
        schemas = [n for obj in objects for n in ([obj.sval] if isinstance(obj, ast.String) else _names(obj))]
        dropped = [n for n in schemas if n and n not in lint.created_schemas]
        if dropped:
            lint.add("drop-schema", f"DROP SCHEMA {', '.join(dropped)} removes everything in it")


def _on_create_table(lint: _Linter, stmt: ast.CreateStmt) -> None:
    rel = stmt.relation
    if rel is None:
        return
    name = lint.creation_name(rel)
    known_before = (
        stmt.if_not_exists and lint.history.existing is not None and name in lint.history.existing
    )
    lint.rerunnable(bool(stmt.if_not_exists), "CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
    columns: dict[str, _Type | None] = {}
    coldefs: dict[str, ast.ColumnDef] = {}
    for elt in stmt.tableElts or ():
        if isinstance(elt, ast.ColumnDef) and elt.colname:
            columns[elt.colname] = _type_of(elt.typeName)
            coldefs[elt.colname] = elt
            _check_types(lint, elt)
            if any(c.contype == CT.CONSTR_PRIMARY for c in _constraints(elt)):
                _check_pk_type(lint, elt.colname, columns[elt.colname], elt)
        elif isinstance(elt, ast.Constraint) and elt.contype == CT.CONSTR_PRIMARY:
            keys = _names(elt.keys)
            if len(keys) == 1 and keys[0] in coldefs:
                _check_pk_type(lint, keys[0], columns[keys[0]], elt)
    if not known_before:
        lint.created_tables.add(name)
        lint.history.columns[name] = columns


def _on_create_table_as(lint: _Linter, stmt: ast.CreateTableAsStmt) -> None:
    into = stmt.into
    if into is not None and into.rel is not None:
        lint.created_tables.add(lint.creation_name(into.rel))
    label = "CREATE MATERIALIZED VIEW" if stmt.objtype == OT.OBJECT_MATVIEW else "CREATE TABLE AS"
    lint.rerunnable(bool(stmt.if_not_exists), label, f"{label.replace(' AS', '')} IF NOT EXISTS")


def _on_select(lint: _Linter, stmt: ast.SelectStmt) -> None:
    into = stmt.intoClause
    if into is not None and into.rel is not None:
        lint.created_tables.add(lint.creation_name(into.rel))
    if lint.routines:
        _run_routines(lint, [getattr(target, "val", None) for target in stmt.targetList or ()])
    for target in stmt.targetList or ():
        call = getattr(target, "val", None)
        if not isinstance(call, ast.FuncCall):
            continue
        names = _names(call.funcname)
        if not names or names[-1].lower() != "set_config" or not call.args:
            continue
        setting = _const_value(call.args[0])
        value = _const_value(call.args[1]) if len(call.args) > 1 else None
        if isinstance(setting, str):
            _setting(lint, setting.lower(), None if value is None else str(value))


def _setting(lint: _Linter, name: str, value: str | None) -> None:
    if name == "lock_timeout":
        lint.lock_timeout = value is not None and value.strip().lower() not in {"0", "", "default"}
    elif name == "search_path":
        if value is None:
            lint.search_path = ["public"]
        else:
            parts = [p.strip().strip('"') for p in value.split(",")]
            lint.search_path = [p for p in parts if p and p != "$user"]


def _on_set(lint: _Linter, stmt: ast.VariableSetStmt) -> None:
    name = (stmt.name or "").lower()
    if stmt.kind == VK.VAR_RESET_ALL:
        lint.lock_timeout = False
        lint.search_path = ["public"]
        return
    if stmt.kind == VK.VAR_SET_VALUE:
        values = [_const_value(a) for a in stmt.args or ()]
        if name == "lock_timeout":
            _setting(lint, name, str(values[0]) if values and values[0] is not None else None)
        elif name == "search_path":
            _setting(lint, name, ",".join(str(v) for v in values if v is not None))
    elif stmt.kind in (VK.VAR_SET_DEFAULT, VK.VAR_RESET):
        _setting(lint, name, None)


def _on_transaction(lint: _Linter, stmt: ast.TransactionStmt) -> None:
    kind = stmt.kind
    if kind in (TK.TRANS_STMT_BEGIN, TK.TRANS_STMT_START):
        if lint.open_begin is not None:
            lint.add("nested-transaction", "BEGIN while the file's transaction is already open")
        elif lint.options.in_transaction and _skip_trivia(lint.text, 0, lint.stmt_start) != lint.stmt_start:
            # A BEGIN that opens the file is the usual BEGIN ... COMMIT wrapper,
            # which the harness recognises and runs as its own transaction.
            lint.add("nested-transaction",
                     "BEGIN inside the transaction the harness runs this migration in; "
                     "the file's COMMIT will end the harness's transaction early",
                     severity="warning")
        lint.open_begin = (lint.stmt_start, lint.stmt_text)
    elif kind in (TK.TRANS_STMT_COMMIT, TK.TRANS_STMT_ROLLBACK, TK.TRANS_STMT_PREPARE):
        lint.txn += 1
        if getattr(stmt, "chain", False) and lint.open_begin is not None:
            return
        if lint.open_begin is None:
            if lint.options.in_transaction:
                lint.add("commit-without-begin",
                         "COMMIT/ROLLBACK without BEGIN ends the harness's transaction for this migration")
            else:
                lint.add("commit-without-begin", "COMMIT/ROLLBACK without BEGIN does nothing", severity="warning")
        lint.open_begin = None


def _on_alter_table(lint: _Linter, stmt: ast.AlterTableStmt) -> None:
    rel = stmt.relation
    if stmt.objtype != OT.OBJECT_TABLE or rel is None:
        return
    existing = lint.existing(rel)
    table = lint.lookup_name(rel)
    shown = lint.show(rel)
    model = lint.history.columns.get(table)
    for cmd in stmt.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            continue
        sub = cmd.subtype
        if sub == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            _add_column(lint, cmd, cmd.def_, existing, shown)
            if model is not None and cmd.def_.colname:
                model[cmd.def_.colname] = _type_of(cmd.def_.typeName)
        elif sub == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            _add_constraint(lint, cmd.def_, existing, shown, table)
        elif sub == AT.AT_ValidateConstraint:
            col = lint.history.not_null_checks.pop((table, cmd.name or ""), None)
            if col is not None:
                lint.history.proven_not_null.add((table, col))
            if lint.not_valid.pop((table, cmd.name or ""), None) == lint.txn:
                lint.add("validate-in-same-transaction",
                         f"VALIDATE CONSTRAINT {cmd.name} on {shown} runs in the transaction that added it "
                         "NOT VALID: the scan runs under the lock ADD CONSTRAINT took")
        elif sub == AT.AT_SetNotNull:
            if existing and (table, cmd.name) not in lint.history.proven_not_null:
                lint.add("set-not-null", f"SET NOT NULL on {shown}.{cmd.name} scans the whole table "
                         "under an ACCESS EXCLUSIVE lock")
        elif sub == AT.AT_DropNotNull:
            if existing:
                lint.add("drop-not-null", f"DROP NOT NULL on {shown}.{cmd.name}: readers may now see NULLs")
        elif sub == AT.AT_AlterColumnType and isinstance(cmd.def_, ast.ColumnDef):
            new = _type_of(cmd.def_.typeName)
            _check_types(lint, cmd.def_)
            if existing:
                old = model.get(cmd.name or "") if model is not None else None
                _type_change(lint, cmd, shown, old, new)
            if model is not None and cmd.name:
                model[cmd.name] = new
        elif sub == AT.AT_DropColumn:
            lint.rerunnable(bool(cmd.missing_ok), "DROP COLUMN", "DROP COLUMN IF EXISTS")
            if existing:
                lint.add("drop-column", f"DROP COLUMN {shown}.{cmd.name} breaks code that still uses it")
            if model is not None:
                model.pop(cmd.name or "", None)
        elif sub == AT.AT_DropConstraint:
            lint.rerunnable(bool(cmd.missing_ok), "DROP CONSTRAINT", "DROP CONSTRAINT IF EXISTS")
        elif sub == AT.AT_DetachPartition:
            if getattr(cmd.def_, "concurrent", False) and lint.in_transaction():
                lint.add("concurrently-in-transaction",
                         "DETACH PARTITION CONCURRENTLY inside a transaction block fails")


def _add_column(lint: _Linter, cmd: ast.AlterTableCmd, col: ast.ColumnDef, existing: bool, shown: str) -> None:
    lint.rerunnable(bool(cmd.missing_ok), "ADD COLUMN", "ADD COLUMN IF NOT EXISTS", col)
    _check_types(lint, col)
    cons = _constraints(col)
    if any(c.contype == CT.CONSTR_PRIMARY for c in cons):
        _check_pk_type(lint, col.colname, _type_of(col.typeName), col)
    if not existing:
        return
    where = f"{shown}.{col.colname}"
    default = next((c for c in cons if c.contype == CT.CONSTR_DEFAULT), None)
    default_expr = default.raw_expr if default is not None else col.raw_default
    has_default = default_expr is not None and not (
        isinstance(default_expr, ast.A_Const) and default_expr.isnull)
    generated = next((c for c in cons if c.contype == CT.CONSTR_GENERATED), None)
    identity = any(c.contype == CT.CONSTR_IDENTITY for c in cons) or col.identity not in (None, "", "\x00")
    ctype = _type_of(col.typeName)
    serial = ctype is not None and ctype.name in _SERIAL.values()
    volatile = lint.volatile_call(default_expr) if default_expr is not None else None
    if volatile:
        lint.add("add-column-volatile-default",
                 f"ADD COLUMN {where} with volatile default {volatile}() rewrites the table", col)
    elif serial:
        lint.add("add-column-volatile-default",
                 f"ADD COLUMN {where} {ctype.name if ctype else 'serial'} fills every row from a sequence "
                 "and rewrites the table", col)
    elif identity:
        lint.add("add-column-volatile-default",
                 f"ADD COLUMN {where} GENERATED AS IDENTITY fills every row and rewrites the table", col)
    if generated is not None and getattr(generated, "generated_kind", "s") not in ("v",):
        lint.add("add-column-generated-stored", f"ADD COLUMN {where} GENERATED ... STORED rewrites the table",
                 generated)
    not_null = col.is_not_null or any(c.contype in (CT.CONSTR_NOTNULL, CT.CONSTR_PRIMARY) for c in cons)
    if not_null and not has_default and generated is None and not identity and not serial:
        lint.add("add-column-not-null-without-default",
                 f"ADD COLUMN {where} NOT NULL without DEFAULT fails if {shown} has rows", col)
    for con in cons:
        if con.contype in (CT.CONSTR_FOREIGN, CT.CONSTR_CHECK):
            kind = "REFERENCES" if con.contype == CT.CONSTR_FOREIGN else "CHECK"
            lint.add("constraint-missing-not-valid",
                     f"ADD COLUMN {where} {kind} validates every row of {shown} under a blocking lock", con,
                     advice="Add the column without the constraint, then ADD CONSTRAINT ... NOT VALID and "
                     "VALIDATE CONSTRAINT in a later migration.")
        if con.contype in (CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY):
            kind = "PRIMARY KEY" if con.contype == CT.CONSTR_PRIMARY else "UNIQUE"
            lint.add("unique-constraint-without-index",
                     f"ADD COLUMN {where} {kind} builds an index on {shown} under an ACCESS EXCLUSIVE lock", con)


def _is_not_null_check(expr: object) -> str | None:
    """The column of a ``col IS NOT NULL`` check expression, if that is what *expr* is."""
    if isinstance(expr, ast.NullTest) and getattr(expr.nulltesttype, "name", "") == "IS_NOT_NULL":
        if isinstance(expr.arg, ast.ColumnRef):
            names = _names(expr.arg.fields)
            if len(names) == 1:
                return names[0]
    return None


def _add_constraint(lint: _Linter, con: ast.Constraint, existing: bool, shown: str, table: str) -> None:
    kind = con.contype
    if kind == CT.CONSTR_CHECK:
        col = _is_not_null_check(con.raw_expr)
        if col is not None:
            if con.skip_validation:
                lint.history.not_null_checks[(table, con.conname or "")] = col
            else:
                lint.history.proven_not_null.add((table, col))
    if kind == CT.CONSTR_PRIMARY and not con.indexname:
        keys = _names(con.keys)
        model = lint.history.columns.get(table)
        if len(keys) == 1 and model is not None:
            _check_pk_type(lint, keys[0], model.get(keys[0]), con)
    if not existing:
        return
    if con.skip_validation and con.conname and kind in (CT.CONSTR_FOREIGN, CT.CONSTR_CHECK, CT.CONSTR_NOTNULL):
        lint.not_valid[(table, con.conname)] = lint.txn
    name = f" {con.conname}" if con.conname else ""
    if kind in (CT.CONSTR_FOREIGN, CT.CONSTR_CHECK) and not con.skip_validation:
        label = "FOREIGN KEY" if kind == CT.CONSTR_FOREIGN else "CHECK"
        lint.add("constraint-missing-not-valid",
                 f"ADD CONSTRAINT{name} {label} on {shown} without NOT VALID checks every row under a blocking lock",
                 con)
    elif kind in (CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY) and not con.indexname:
        label = "PRIMARY KEY" if kind == CT.CONSTR_PRIMARY else "UNIQUE"
        lint.add("unique-constraint-without-index",
                 f"ADD CONSTRAINT{name} {label} on {shown} builds its index under an ACCESS EXCLUSIVE lock", con)
    elif kind == CT.CONSTR_NOTNULL and not con.skip_validation:
        cols = ", ".join(_names(con.keys))
        if not all((table, c) in lint.history.proven_not_null for c in _names(con.keys)):
            lint.add("set-not-null", f"ADD CONSTRAINT{name} NOT NULL {cols} on {shown} scans the whole table",
                     con, advice="ADD CONSTRAINT ... NOT NULL ... NOT VALID, then VALIDATE CONSTRAINT later "
                     "(PostgreSQL 18+), or use the CHECK (col IS NOT NULL) NOT VALID pattern.")


_TEXTLIKE = {"text", "varchar"}


def _type_change(lint: _Linter, cmd: ast.AlterTableCmd, shown: str, old: _Type | None, new: _Type | None) -> None:
    col = cmd.def_
    assert isinstance(col, ast.ColumnDef)
    where = f"{shown}.{cmd.name}"
    using = col.raw_default is not None
    if new is None:
        lint.add("column-type-change", f"ALTER COLUMN {where} TYPE to a user-defined type rewrites the table", col)
        return
    if old is not None and not using and _rewrite_free(old, new):
        return
    if using:
        lint.add("column-type-change", f"ALTER COLUMN {where} TYPE {new.show()} USING ... rewrites the table", col)
    elif old is not None:
        lint.add("column-type-change", f"ALTER COLUMN {where} TYPE {old.show()} -> {new.show()} rewrites the table",
                 col)
    elif new.name in _TEXTLIKE and not new.mods and not new.array:
        lint.add("column-type-change",
                 f"ALTER COLUMN {where} TYPE {new.show()} may rewrite the table "
                 "(free only from varchar/text; the old type is unknown here)", col, severity="warning")
    else:
        lint.add("column-type-change", f"ALTER COLUMN {where} TYPE {new.show()} rewrites the table "
                 "(unless it only widens a varchar/numeric, which cannot be checked here)", col)


def _widens(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> bool:
    """Whether the first type modifier (length, precision) grows or stays."""
    return bool(old) and bool(new) and new[0] >= old[0]  # type: ignore[index]


def _rewrite_free(old: _Type, new: _Type) -> bool:
    """Whether changing a column from *old* to *new* is known to need no table rewrite."""
    if old.array != new.array:
        return False
    if old == new:
        return True
    if old.name in _TEXTLIKE and new.name in _TEXTLIKE:
        if new.name == "text" or not new.mods:
            return True
        return old.name == "varchar" and _widens(old.mods, new.mods)
    if old.name == "numeric" and new.name == "numeric":
        if not new.mods:
            return True
        if not old.mods:
            return False
        old_scale = old.mods[1] if len(old.mods) > 1 else 0
        new_scale = new.mods[1] if len(new.mods) > 1 else 0
        return new_scale == old_scale and _widens(old.mods, new.mods)
    if old.name == "varbit" and new.name == "varbit":
        return not new.mods or _widens(old.mods, new.mods)
    return False


def _check_types(lint: _Linter, col: ast.ColumnDef) -> None:
    ctype = _type_of(col.typeName)
    if ctype is None:
        return
    node = col.typeName if _location(col.typeName) is not None else col
    name = col.colname or "column"
    if ctype.name == "json":
        lint.add("prefer-jsonb", f"column {name} uses json", node)
    elif ctype.name == "timestamp":
        lint.add("prefer-timestamptz", f"column {name} uses timestamp without time zone", node)
    elif ctype.name == "bpchar":
        lint.add("prefer-text-over-char", f"column {name} uses {ctype.show()}", node)
    elif ctype.name in _SERIAL.values():
        lint.add("prefer-identity", f"column {name} uses {ctype.name}", node)


_SMALL_KEYS = {"int4": "integer", "int2": "smallint", "serial": "serial (integer)",
               "smallserial": "smallserial (smallint)"}


def _check_pk_type(lint: _Linter, name: str | None, ctype: _Type | None, node: object) -> None:
    if ctype is not None and ctype.name in _SMALL_KEYS and not ctype.array:
        lint.add("prefer-bigint-pk", f"primary key {name} is {_SMALL_KEYS[ctype.name]}", node)


def _on_rename(lint: _Linter, stmt: ast.RenameStmt) -> None:
    rel = stmt.relation
    if rel is None:
        return
    if stmt.renameType == OT.OBJECT_TABLE:
        old = lint.lookup_name(rel)
        new = f"{old.rsplit('.', 1)[0]}.{stmt.newname}"
        if lint.existing(rel):
            lint.add("rename-table", f"renaming table {lint.show(rel)} to {stmt.newname} breaks code using the old name")
        else:
            lint.created_tables.add(new)
        if old in lint.history.columns:
            lint.history.columns[new] = lint.history.columns.pop(old)
    elif stmt.renameType == OT.OBJECT_COLUMN and stmt.relationType in (OT.OBJECT_TABLE, OT.OBJECT_FOREIGN_TABLE):
        if lint.existing(rel):
            lint.add("rename-column",
                     f"renaming column {lint.show(rel)}.{stmt.subname} to {stmt.newname} breaks code using the old name")
        model = lint.history.columns.get(lint.lookup_name(rel))
        if model is not None and stmt.subname in model and stmt.newname:
            model[stmt.newname] = model.pop(stmt.subname)


def _on_enum(lint: _Linter, stmt: ast.AlterEnumStmt) -> None:
    name = ".".join(_names(stmt.typeName))
    if name in lint.created_types or _qualify(name) in lint.created_types:
        if not stmt.oldVal:
            lint.rerunnable(bool(stmt.skipIfNewValExists), "ALTER TYPE ... ADD VALUE", "ADD VALUE IF NOT EXISTS")
        return
    if stmt.oldVal:
        lint.add("enum-rename-value",
                 f"renaming value {stmt.oldVal!r} of enum {name} to {stmt.newVal!r} breaks code using the old label")
    else:
        lint.rerunnable(bool(stmt.skipIfNewValExists), "ALTER TYPE ... ADD VALUE", "ADD VALUE IF NOT EXISTS")
        lint.add("enum-add-value", f"new value {stmt.newVal!r} of enum {name} may reach readers that do not know it")
        if stmt.newVal:
            # A value added to a type created in the same transaction is safe to use at once.
            lint.new_enum_values[stmt.newVal] = (lint.txn, name)


def _on_create_enum(lint: _Linter, stmt: ast.Node) -> None:
    names = _names(getattr(stmt, "typeName", None))
    if names:
        name = ".".join(names)
        lint.created_types.add(name)
        lint.created_types.add(_qualify(name))


def _on_vacuum(lint: _Linter, stmt: ast.VacuumStmt) -> None:
    if not stmt.is_vacuumcmd:
        return  # ANALYZE
    if _vacuum_full(stmt):
        lint.add("vacuum-full", "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock")
    if lint.in_transaction():
        lint.add("cannot-run-in-transaction", "VACUUM cannot run inside a transaction block")


def _on_cluster(lint: _Linter, stmt: ast.ClusterStmt) -> None:
    if stmt.relation is None or lint.existing(stmt.relation):
        lint.add("cluster", "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock", stmt.relation)


def _on_truncate(lint: _Linter, stmt: ast.TruncateStmt) -> None:
    if stmt.behavior == enums.DropBehavior.DROP_CASCADE:
        names = ", ".join(lint.show(rv) for rv in stmt.relations or ())
        lint.add("truncate-cascade", f"TRUNCATE {names} CASCADE also empties every table that references them")


def _on_create_schema(lint: _Linter, stmt: ast.CreateSchemaStmt) -> None:
    lint.rerunnable(bool(stmt.if_not_exists), "CREATE SCHEMA", "CREATE SCHEMA IF NOT EXISTS")
    if stmt.schemaname:
        lint.created_schemas.add(stmt.schemaname)
    if stmt.schemaElts:
        saved = lint.search_path
        lint.search_path = [stmt.schemaname or "public"]
        try:
            for elt in stmt.schemaElts:
                lint.statement(elt)
        finally:
            lint.search_path = saved


def _not_in_transaction(what: str) -> Callable[[_Linter, ast.Node], None]:
    def handler(lint: _Linter, stmt: ast.Node) -> None:
        if lint.in_transaction():
            lint.add("cannot-run-in-transaction", f"{what} cannot run inside a transaction block")
    return handler


def _on_subscription(lint: _Linter, stmt: ast.CreateSubscriptionStmt) -> None:
    for opt in stmt.options or ():
        if isinstance(opt, ast.DefElem) and (opt.defname or "").lower() in ("create_slot", "connect"):
            if not _option_true(opt.arg):
                return
    if lint.in_transaction():
        lint.add("cannot-run-in-transaction",
                 "CREATE SUBSCRIPTION that creates a replication slot cannot run inside a transaction block")


def _replace_check(label: str) -> Callable[[_Linter, ast.Node], None]:
    def handler(lint: _Linter, stmt: ast.Node) -> None:
        lint.rerunnable(bool(getattr(stmt, "replace", False)), label, label.replace("CREATE ", "CREATE OR REPLACE "))
    return handler


def _if_not_exists(label: str) -> Callable[[_Linter, ast.Node], None]:
    def handler(lint: _Linter, stmt: ast.Node) -> None:
        lint.rerunnable(bool(getattr(stmt, "if_not_exists", False)), label, f"{label} IF NOT EXISTS")
    return handler


def _function_name(lint: _Linter, names: list[str]) -> tuple[str, str]:
    if len(names) >= 2:
        return names[-2], names[-1]
    return (lint.search_path[0] if lint.search_path else "public"), names[0]


def _on_function(lint: _Linter, stmt: ast.CreateFunctionStmt) -> None:
    label = "CREATE PROCEDURE" if stmt.is_procedure else "CREATE FUNCTION"
    lint.rerunnable(bool(stmt.replace), label, label.replace("CREATE ", "CREATE OR REPLACE "))
    names = _names(stmt.funcname)
    if not names:
        return
    key = _function_name(lint, names)
    if not stmt.is_procedure:
        # PostgreSQL's default is VOLATILE: a function is volatile unless it says otherwise.
        lint.history.functions[key] = _declared_volatility(stmt.options) or "volatile"
    language, body = "sql", ""
    for opt in stmt.options or ():
        if isinstance(opt, ast.DefElem) and opt.defname == "language":
            language = str(getattr(opt.arg, "sval", "")).lower()
        elif isinstance(opt, ast.DefElem) and opt.defname == "as" and isinstance(opt.arg, (tuple, list)):
            body = str(getattr(opt.arg[0], "sval", "")) if len(opt.arg) == 1 else ""
    if language == "plpgsql" and body and not lint.in_body:
        # Linted if the migration calls it (SELECT f(); CALL p();), when the call runs.
        lint.routines[key] = (lint.text[lint.stmt_start:lint.stmt_stop], body, lint.body_offset(body))


def _on_alter_function(lint: _Linter, stmt: ast.AlterFunctionStmt) -> None:
    volatility = _declared_volatility(stmt.actions)
    names = _names(getattr(stmt.func, "objname", None))
    if volatility and names:
        lint.history.functions[_function_name(lint, names)] = volatility


def _on_do(lint: _Linter, stmt: ast.DoStmt) -> None:
    if lint.in_body:
        return
    body, language = "", "plpgsql"
    for opt in stmt.args or ():
        if isinstance(opt, ast.DefElem):
            value = getattr(opt.arg, "sval", None)
            if opt.defname == "as" and isinstance(value, str):
                body = value
            elif opt.defname == "language" and isinstance(value, str):
                language = value.lower()
    if body and language == "plpgsql":
        lint.plpgsql(lint.text[lint.stmt_start:lint.stmt_stop], body, lint.body_offset(body))


def _run_routines(lint: _Linter, calls: Iterable[object]) -> None:
    """Lint the bodies of PL/pgSQL routines created earlier in the file that *calls* run (each once)."""
    for call in calls:
        if isinstance(call, ast.FuncCall) and lint.routines and not lint.in_body:
            names = _names(call.funcname)
            keys = [_function_name(lint, names)] if len(names) >= 2 else \
                [(schema, names[0]) for schema in lint.search_path] if names else []
            for key in keys:
                routine = lint.routines.pop(key, None)
                if routine is not None:
                    lint.plpgsql(*routine)
                    break


def _on_call(lint: _Linter, stmt: ast.CallStmt) -> None:
    _run_routines(lint, [stmt.funccall])


def _pins_id(where: object) -> bool:
    """Whether a WHERE clause pins a column named ``id`` to constants (a handful of rows)."""
    conjuncts = where.args if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR \
        else [where]
    for expr in conjuncts or ():
        if not isinstance(expr, ast.A_Expr) or expr.kind not in (enums.A_Expr_Kind.AEXPR_OP,
                                                                 enums.A_Expr_Kind.AEXPR_IN):
            continue
        if expr.kind == enums.A_Expr_Kind.AEXPR_OP and _names(expr.name) != ["="]:
            continue
        sides = [expr.lexpr, expr.rexpr]
        column = next((s for s in sides if isinstance(s, ast.ColumnRef)), None)
        other = sides[1] if column is sides[0] else sides[0]
        values = other if isinstance(other, (tuple, list)) else [other]
        if column is not None and _names(column.fields)[-1:] == ["id"] and values and all(
                isinstance(v, (ast.A_Const, ast.ParamRef)) for v in values):
            return True
    return False


def _on_data_change(lint: _Linter, stmt: ast.UpdateStmt | ast.DeleteStmt) -> None:
    rel = stmt.relation
    if lint.in_body or rel is None or not lint.existing(rel) or _pins_id(stmt.whereClause) or lint.batched():
        return
    kind = "UPDATE" if isinstance(stmt, ast.UpdateStmt) else "DELETE"
    lint.add("unbatched-data-change",
             f"{kind} of existing table {lint.show(rel)} runs as one statement over every matching row", rel)


_HANDLERS: dict[type, Callable[[_Linter, Any], None]] = {
    ast.IndexStmt: _on_index,
    ast.ReindexStmt: _on_reindex,
    ast.DropStmt: _on_drop,
    ast.CreateStmt: _on_create_table,
    ast.CreateTableAsStmt: _on_create_table_as,
    ast.SelectStmt: _on_select,
    ast.VariableSetStmt: _on_set,
    ast.TransactionStmt: _on_transaction,
    ast.AlterTableStmt: _on_alter_table,
    ast.RenameStmt: _on_rename,
    ast.AlterEnumStmt: _on_enum,
    ast.CreateEnumStmt: _on_create_enum,
    ast.VacuumStmt: _on_vacuum,
    ast.ClusterStmt: _on_cluster,
    ast.TruncateStmt: _on_truncate,
    ast.CreateSchemaStmt: _on_create_schema,
    ast.CreateSeqStmt: _if_not_exists("CREATE SEQUENCE"),
    ast.CreateExtensionStmt: _if_not_exists("CREATE EXTENSION"),
    ast.CreateFunctionStmt: _on_function,
    ast.AlterFunctionStmt: _on_alter_function,
    ast.DoStmt: _on_do,
    ast.CallStmt: _on_call,
    ast.UpdateStmt: _on_data_change,
    ast.DeleteStmt: _on_data_change,
    ast.ViewStmt: _replace_check("CREATE VIEW"),
    ast.CreateTrigStmt: _replace_check("CREATE TRIGGER"),
    ast.RuleStmt: _replace_check("CREATE RULE"),
    ast.CreatedbStmt: _not_in_transaction("CREATE DATABASE"),
    ast.DropdbStmt: _not_in_transaction("DROP DATABASE"),
    ast.AlterSystemStmt: _not_in_transaction("ALTER SYSTEM"),
    ast.CreateTableSpaceStmt: _not_in_transaction("CREATE TABLESPACE"),
    ast.DropTableSpaceStmt: _not_in_transaction("DROP TABLESPACE"),
    ast.CreateSubscriptionStmt: _on_subscription,
}

# ---------------------------------------------------------------------------- public functions


def _options(severities: Mapping[str, str] | None, allow: Collection[str], allow_reason: str | None,
             require_lock_timeout: bool, in_transaction: bool) -> _Options:
    severities = dict(severities or {})
    for rule, severity in severities.items():
        if rule not in RULES:
            raise ConfigError(f"unknown lint rule {rule!r} in severities; known rules: {', '.join(sorted(RULES))}")
        if severity not in (*SEVERITIES, "off"):
            raise ConfigError(f"lint severity for {rule!r} is {severity!r}; use 'error', 'warning' or 'off'")
    allowed = frozenset(allow)
    unknown = sorted(allowed - RULES.keys())
    if unknown:
        raise ConfigError(f"unknown lint rule(s) in allow: {', '.join(unknown)}; "
                          f"known rules: {', '.join(sorted(RULES))}")
    return _Options(severities, allowed, allow_reason, require_lock_timeout, in_transaction)


def _finish(findings: list[Finding], options: _Options) -> list[Finding]:
    out = []
    for finding in findings:
        severity = options.severities.get(finding.rule)
        if severity == "off":
            continue
        out.append(replace(finding, severity=severity) if severity else finding)
    return out


def lint_sql(
    text: str,
    path: str,
    *,
    existing_tables: Collection[str] | None = None,
    created_before: Collection[str] = (),
    severities: Mapping[str, str] | None = None,
    allow: Collection[str] = (),
    allow_reason: str | None = None,
    require_lock_timeout: bool = False,
    in_transaction: bool = True,
    functions: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Lint one migration's SQL text and return its findings, allowed ones included.

    *existing_tables* are the tables that existed before this migration, as
    qualified ``schema.table`` names in quote_ident style (a bare name means
    ``public.``); ``None`` means unknown, and then every table not created
    earlier in *text* is assumed to exist.  *created_before* names tables made by earlier migrations (they count
    as existing).  *severities* overrides a rule's severity (``"error"``,
    ``"warning"`` or ``"off"``); *allow* acknowledges rules for the whole text
    with *allow_reason*.  *in_transaction* says whether the harness runs the
    text inside a transaction.  *functions* gives the declared volatility
    (``"immutable"``, ``"stable"``, ``"volatile"``, or ``provolatile``'s
    ``i``/``s``/``v``) of user-defined functions that exist before the text
    runs, by qualified name in quote_ident style (an argument list after the
    name is ignored; of overloads the most volatile counts); functions created
    in *text* are read from it.  Never raises on SQL: syntax errors become
    ``parse-error`` findings.  Raises :class:`~harness.errors.ConfigError` for an
    unknown rule id or severity.
    """
    options = _options(severities, allow, allow_reason, require_lock_timeout, in_transaction)
    existing: set[str] | None = None
    if existing_tables is not None:
        existing = {_qualify(t) for t in existing_tables} | {_qualify(t) for t in created_before}
    history = _History(existing=existing, functions=_known_functions(functions))
    return _finish(_Linter(text, path, history, options).run(), options)


def lint_files(
    paths: Sequence[Path],
    *,
    existing_tables: Collection[str] | None = None,
    severities: Mapping[str, str] | None = None,
    allow: Collection[str] = (),
    allow_reason: str | None = None,
    require_lock_timeout: bool = False,
    in_transaction: bool | Callable[[Path], bool] = True,
    encoding: str = "utf-8",
) -> list[Finding]:
    """Lint a migration history in order, without a database.

    Tables created by earlier files count as existing for later ones, and the
    column types they declare let ``column-type-change`` recognise rewrite-free
    changes (varchar widening and the like).  *existing_tables* are the tables
    that existed before the first file (``None``: unknown, assume every table
    not created in the history exists).  *in_transaction* is a flag for all
    files or a function of the path.  Raises :class:`~harness.errors.SourceError`
    when a file cannot be read.
    """
    base = _options(severities, allow, allow_reason, require_lock_timeout, True)
    existing = None if existing_tables is None else {_qualify(t) for t in existing_tables}
    history = _History(existing=existing)
    findings: list[Finding] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding=encoding)
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read migration {path}: {exc}; check that the file exists and is "
                              f"{encoding} text") from None
        flag = in_transaction(Path(path)) if callable(in_transaction) else in_transaction
        options = replace(base, in_transaction=bool(flag))
        linter = _Linter(text, str(path), history, options)
        findings.extend(_finish(linter.run(), options))
        if history.existing is not None:
            history.existing -= linter.dropped_tables
            history.existing |= linter.created_tables
    return findings


def _gh_escape(value: str, prop: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def format_findings(findings: Iterable[Finding], fmt: str = "text") -> str:
    """Render findings as ``text`` (one per finding plus advice), ``json`` or ``github`` annotations."""
    items = list(findings)
    if fmt == "json":
        return json.dumps([asdict(f) for f in items], indent=2)
    if fmt == "github":
        lines = []
        for f in items:
            level = "notice" if f.allowed else f.severity
            message = f"{f.message} ({f.advice})"
            if f.allowed:
                message = f"allowed: {f.allowed} - {message}"
            lines.append(
                f"::{level} file={_gh_escape(f.path, True)},line={f.line},col={f.column},"
                f"title={_gh_escape(f.rule, True)}::{_gh_escape(message)}"
            )
        return "\n".join(lines)
    if fmt == "text":
        lines = []
        for f in items:
            lines.append(f"{f.path}:{f.line}:{f.column}: {f.severity} {f.rule}: {f.message}")
            lines.append(f"    {f.advice}")
            if f.allowed:
                lines.append(f"    allowed: {f.allowed}")
        return "\n".join(lines)
    raise ConfigError(f"unknown lint output format {fmt!r}; use one of: {', '.join(FORMATS)}")
