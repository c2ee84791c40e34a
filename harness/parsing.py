"""Migration files into statements: PostgreSQL's own parser, transaction control, substitutions.

SQL is split with pglast, which embeds the PostgreSQL parser (libpg_query),
never with regular expressions: dollar-quoted bodies, ``BEGIN ATOMIC``
bodies, comments and string literals that contain semicolons are split
exactly as the server would split them.  Each :class:`~harness.migration.Statement`
records where it starts, its parse tree, and whether PostgreSQL refuses to
run it inside a transaction block.

The harness runs every migration in its own transaction, so a file either
wraps itself in exactly one top-level ``BEGIN; ... COMMIT;`` (recognised and
removed from :attr:`~harness.migration.Migration.statements`) or does not
manage transactions at all; any other transaction control is refused when
the folder is loaded.  :func:`make_migration` is how every layout reader
builds a :class:`~harness.migration.Migration` from its files' texts.

Nothing here opens a connection or executes SQL.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pglast import ast, enums, parser

from .batch import find_batches
from .errors import SourceError
from .migration import BatchSpec, Migration, Statement, _Trees

__all__ = ["parse_sql", "make_migration", "apply_substitutions", "checksum"]

_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})

# TransactionStmtKind -> Statement.control.  START TRANSACTION is reported as
# "begin" for the same reason the parser already reports END as COMMIT and
# ABORT as ROLLBACK: they are spellings of one command.
_CONTROL: dict[Any, str] = {
    enums.TransactionStmtKind.TRANS_STMT_BEGIN: "begin",
    enums.TransactionStmtKind.TRANS_STMT_START: "begin",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT: "commit",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK: "rollback",
    enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT: "savepoint",
    enums.TransactionStmtKind.TRANS_STMT_RELEASE: "release",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "rollback_to",
    enums.TransactionStmtKind.TRANS_STMT_PREPARE: "prepare",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "commit_prepared",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "rollback_prepared",
}

# The same, by the enum's name, as the parser's JSON spells it.
_CONTROL_BY_NAME = {kind.name: control for kind, control in _CONTROL.items()}

_SINGLE_TRANSACTION_RULE = (
    "the harness runs each migration in its own transaction, so a migration file must either wrap itself "
    "in exactly one BEGIN; ... COMMIT; (its first and last statements) or not manage transactions at all"
)


def checksum(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    try:
        return _sha256(Path(path).read_bytes())
    except OSError as exc:
        raise SourceError(
            f"{path}: cannot be read ({exc.strerror or exc}); check that it exists and is readable"
        ) from None


def parse_sql(text: str, path: Path | str, *, target_major: int | None = None) -> list[Statement]:
    """Split *text* into statements with PostgreSQL's parser.

    *path* is used only in error messages.  *target_major* is the major
    version of the server the SQL is meant for; it matters for commands that
    became allowed in a transaction block in some version (``ALTER TYPE ...
    ADD VALUE`` before 12).  Transaction control statements are returned
    like any other (with :attr:`Statement.control` set); deciding whether
    they are acceptable is :func:`load_migrations`'s job.

    Raises :class:`~harness.errors.SourceError` naming ``file:line:column``
    when the SQL does not parse.
    """
    lines = _LineIndex(text)
    nul = text.find("\x00")
    if nul >= 0:
        # libpg_query reads a C string: everything after a NUL would be
        # silently dropped, so refuse the file instead.
        raise SourceError(
            f"{path}:{lines.where(nul)}: the file contains a NUL character, which PostgreSQL does not accept "
            "in SQL text; remove it (is this really a SQL file?)"
        )
    try:
        raw = json.loads(parser.parse_sql_json(text)).get("stmts") or []
    except parser.ParseError as exc:
        raise SourceError(_parse_error_message(exc, text, path, lines)) from None
    if not raw:
        return []
    # The JSON gives UTF-8 byte offsets; statements are cut by character.
    displacements: Any = None if text.isascii() else parser.Displacements(text)
    size = len(text) if displacements is None else len(text.encode("utf-8"))

    def to_char(offset: int) -> int:
        return offset if displacements is None else int(displacements(offset))

    trees = _Trees(text)
    statements: list[Statement] = []
    tokens: tuple[list[Any], list[int]] | None = None
    for number, item in enumerate(raw):
        location, length = int(item.get("stmt_location", 0)), int(item.get("stmt_len", 0))
        begin: int = to_char(location)
        end: int = to_char(location + length) if length and location + length < size else len(text)
        sql = text[begin:end]
        if "--" in sql or "/*" in sql:
            # Tokens give the statement's exact extent without the comments
            # around it, whatever the PostgreSQL version puts into
            # stmt_location; without a comment, that is its text stripped.
            if tokens is None:
                found = [t for t in parser.scan(text) if t.name not in _COMMENT_TOKENS]
                tokens = found, [t.start for t in found]
            first = bisect.bisect_left(tokens[1], begin)
            last = bisect.bisect_left(tokens[1], end) - 1
            if first <= last:
                begin, end = tokens[0][first].start, tokens[0][last].end + 1
            sql = text[begin:end]
        stripped = sql.lstrip()
        begin += len(sql) - len(stripped)
        sql = stripped.rstrip()
        ((kind, tree),) = item["stmt"].items()
        line, column = lines.position(begin)
        refusal = _refused_in_transaction_tree(kind, tree, functools.partial(trees.node, number), target_major)
        control = _CONTROL_BY_NAME.get(tree.get("kind", "")) if kind == "TransactionStmt" else None
        statements.append(
            Statement(
                sql=sql, line=line, column=column, kind=kind, transactional=refusal is None, control=control,
                _trees=trees, _index=number,
            )
        )
    return statements


def make_migration(
    *,
    version: str,
    name: str,
    path: Path,
    text: str,
    checksum: str,
    target_major: int | None,
    substitutions: Sequence[Any] = (),
    down_path: Path | None = None,
    down_text: str | None = None,
    layout: str = "native",
    error: str | None = None,
    down_error: str | None = None,
    **extra: Any,
) -> Migration:
    """Build a :class:`Migration` from the texts of its up and down SQL (for the layout readers).

    Substitutions are applied to both texts before they are split; *checksum*
    is of the file as written.  A file that cannot be run (it does not parse,
    manages transactions other than with one ``BEGIN; ... COMMIT;``, has a bad
    batch directive) does not stop the folder from loading: the problem is
    kept in :attr:`Migration.error` (or ``down_error``), and only that
    migration's items fail.  *error* and *down_error* pass in a problem the
    reader found already (a file it could not read).  *extra* sets the
    layout fields of :class:`Migration` (``no_transaction``, ``repeatable``,
    ``order_parts``, ...).
    """
    statements: tuple[Statement, ...] = ()
    wrapped = False
    batches: tuple[BatchSpec, ...] = ()
    text = apply_substitutions(text, substitutions)
    if error is None:
        try:
            statements, wrapped = _file_statements(text, path, target_major)
            batches = find_batches(text, statements, path, wrapped=wrapped)
        except SourceError as exc:
            statements, wrapped, batches, error = (), False, (), str(exc)
    down_statements: tuple[Statement, ...] | None = None
    down_wrapped = False
    if down_path is not None and down_text is not None:
        down_text = apply_substitutions(down_text, substitutions)
        if down_error is None:
            try:
                down_statements, down_wrapped = _file_statements(down_text, down_path, target_major)
                find_batches(down_text, down_statements, down_path, down=True)  # refuses a directive in a down
            except SourceError as exc:
                down_statements, down_wrapped, down_error = None, False, str(exc)
    elif down_error is None:
        down_path = None
    verify = extra.pop("verify_sql", None)
    return Migration(
        version=version,
        name=name,
        path=path,
        sql=text,
        checksum=checksum,
        statements=statements,
        wrapped=wrapped,
        down_path=down_path,
        down_sql=down_text,
        down_statements=down_statements,
        down_wrapped=down_wrapped,
        verify_sql=apply_substitutions(verify, substitutions) if verify is not None else None,
        layout=layout,
        batches=batches,
        error=error,
        down_error=down_error,
        **extra,
    )


# --------------------------------------------------------------------------
# Substitutions


def apply_substitutions(text: str, substitutions: Sequence[Any]) -> str:
    """*text* with each substitution applied in order.

    A substitution is an object with ``literal``, ``regex`` and ``value``
    attributes (:class:`harness.plan.Substitution`) or a mapping with those
    keys; exactly one of ``literal`` and ``regex`` is set.  ``value`` is
    inserted as written: a regex substitution does not expand group
    references, so a value read from the environment cannot inject one.
    """
    for sub in substitutions:
        literal, regex, value = _substitution_parts(sub)
        if literal is not None:
            text = text.replace(literal, value)
        else:
            assert regex is not None
            text = _compiled(regex).sub(lambda _m, v=value: v, text)  # type: ignore[misc]
    return text


def _substitution_parts(sub: Any) -> tuple[str | None, str | None, str]:
    if isinstance(sub, Mapping):
        literal, regex, value = sub.get("literal"), sub.get("regex"), sub.get("value")
    else:
        literal, regex, value = getattr(sub, "literal", None), getattr(sub, "regex", None), getattr(sub, "value", None)
    if (literal is None) == (regex is None) or not isinstance(value, str):
        raise SourceError(
            f"substitution {sub!r} needs exactly one of literal or regex, and a value (a string); fix the plan's "
            "substitutions: list"
        )
    if literal == "" or regex == "":
        raise SourceError(f"substitution {sub!r} has an empty literal or regex, which would match everywhere")
    return literal, regex, value


@functools.lru_cache(maxsize=128)
def _compiled(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex, re.MULTILINE)
    except re.error as exc:
        raise SourceError(f"substitution regex {regex!r} does not compile: {exc}; fix it in the plan") from None


# --------------------------------------------------------------------------
# Files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise SourceError(
            f"migrations folder {folder} cannot be listed ({exc.strerror or exc}); check its permissions"
        ) from None


def _read_soft(path: Path) -> tuple[bytes, str, str | None]:
    """Like :func:`_read`, but a file that cannot be read gives ``(bytes so far, "", why)`` instead of raising.

    A migration file that cannot be read fails that migration's items; it
    does not stop the rest of the folder from loading.
    """
    try:
        data, text = _read(path)
    except SourceError as exc:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        return data, "", str(exc)
    return data, text, None


def _read(path: Path) -> tuple[bytes, str]:
    """The file's bytes and its text (UTF-8, a leading byte-order mark dropped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(
            f"{path}: cannot be read ({exc.strerror or exc}); check that it exists and is readable"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8").removeprefix("\ufeff")
        where = _LineIndex(good).where(len(good))
        raise SourceError(
            f"{path}:{where}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    # Editors on Windows like to start files with a BOM; PostgreSQL would
    # read it as part of the first word.
    return data, text.removeprefix("\ufeff")


def _file_statements(text: str, path: Path, target_major: int | None) -> tuple[tuple[Statement, ...], bool]:
    """The file's statements with any file-level BEGIN/COMMIT removed, and whether there was one.

    An empty or comment-only file gives no statements: every tool we read
    accepts one (a placeholder up is a no-op migration; an empty down marks
    the migration irreversible, which the ``rollback`` item reports).
    """
    statements = parse_sql(text, path, target_major=target_major)
    wrapped = len(statements) >= 2 and statements[0].control == "begin" and statements[-1].control == "commit"
    if wrapped:
        begin, commit = statements[0], statements[-1]
        if begin.node.options:
            raise SourceError(
                f"{path}:{begin.line}:{begin.column}: {_excerpt(begin.sql)!r} sets transaction options, but "
                f"{_SINGLE_TRANSACTION_RULE} and opens that transaction itself, so the options would be ignored; "
                "write a plain BEGIN; (set what you need with SET LOCAL inside the transaction)"
            )
        if commit.node.chain:
            raise SourceError(
                f"{path}:{commit.line}:{commit.column}: COMMIT AND CHAIN would start a second transaction; "
                f"{_SINGLE_TRANSACTION_RULE}. End the file with a plain COMMIT;"
            )
        statements = statements[1:-1]
    for index, statement in enumerate(statements):
        if statement.control is None:
            continue
        where = f"{path}:{statement.line}:{statement.column}"
        if statement.control == "begin" and index == 0 and not wrapped:
            raise SourceError(
                f"{where}: BEGIN is not closed by a COMMIT as the file's last statement; {_SINGLE_TRANSACTION_RULE}. "
                "End the file with COMMIT; or remove the BEGIN"
            )
        if statement.control == "commit" and index == len(statements) - 1 and not wrapped:
            raise SourceError(
                f"{where}: COMMIT does not close a BEGIN at the start of the file; {_SINGLE_TRANSACTION_RULE}. "
                "Start the file with BEGIN; or remove the COMMIT"
            )
        raise SourceError(
            f"{where}: {_excerpt(statement.sql)!r} is not allowed here: {_SINGLE_TRANSACTION_RULE}. Remove it, "
            "or split the file into separate migrations"
        )
    return tuple(statements), wrapped


def _excerpt(sql: str, limit: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Positions


class _LineIndex:
    """Maps a character index in a text to its 1-based line and column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0]
        at = text.find("\n")
        while at >= 0:
            self.starts.append(at + 1)
            at = text.find("\n", at + 1)

    def position(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, index)
        return line, index - self.starts[line - 1] + 1

    def where(self, index: int) -> str:
        line, column = self.position(index)
        return f"{line}:{column}"

    def line_text(self, line: int) -> str:
        start = self.starts[line - 1]
        end = self.starts[line] - 1 if line < len(self.starts) else len(self.text)
        return self.text[start:end].rstrip("\r")


def _parse_error_message(exc: parser.ParseError, text: str, path: Path | str, lines: _LineIndex) -> str:
    message = str(exc.args[0]) if exc.args else "syntax error"
    index = exc.args[1] if len(exc.args) > 1 else None
    # pglast gives a character index, or None when the error is at the end
    # of the input ("syntax error at end of input").
    if index is None or not 0 <= index <= len(text):
        index = len(text.rstrip())
    line, column = lines.position(index)
    source = lines.line_text(line)
    caret = "".join(c if c == "\t" else " " for c in source[: column - 1]) + "^"
    hint = "fix the SQL so that PostgreSQL's parser accepts it"
    if source.lstrip().startswith("\\"):
        hint = "psql meta-commands (lines starting with a backslash) are not SQL; remove them"
    return f"{path}:{line}:{column}: {message}; {hint}\n    {source}\n    {caret}"


# --------------------------------------------------------------------------
# Statements PostgreSQL refuses inside a transaction block


# Statement kinds _refused_in_transaction() decides; the common ones among
# them are decided from the parser's JSON, the others from the AST.
_REFUSABLE = frozenset({
    "IndexStmt", "DropStmt", "ReindexStmt", "VacuumStmt", "ClusterStmt", "CreatedbStmt", "DropdbStmt",
    "AlterDatabaseStmt", "AlterSystemStmt", "CreateTableSpaceStmt", "DropTableSpaceStmt", "AlterTableStmt",
    "CreateSubscriptionStmt", "DropSubscriptionStmt", "AlterSubscriptionStmt", "DiscardStmt", "TransactionStmt",
    "AlterEnumStmt",
})


_REFUSED_TRANSACTION_KINDS = {"TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED", "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED"}


def _refused_in_transaction_tree(
    kind: str, tree: Mapping[str, Any], node: Callable[[], Any], target_major: int | None
) -> str | None:
    """:func:`_refused_in_transaction` from the parser's JSON *tree*, building the AST only for rare kinds."""
    if kind not in _REFUSABLE:
        return None
    if kind == "IndexStmt":
        return "CREATE INDEX CONCURRENTLY" if tree.get("concurrent") else None
    if kind == "DropStmt":
        return "DROP INDEX CONCURRENTLY" if tree.get("concurrent") else None
    if kind == "AlterTableStmt":
        for cmd in tree.get("cmds") or ():
            cmd = cmd.get("AlterTableCmd", {})
            if cmd.get("subtype") == "AT_DetachPartition" and (cmd.get("def") or {}).get("PartitionCmd", {}).get(
                "concurrent"
            ):
                return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
        return None
    if kind == "TransactionStmt":
        return _REFUSED_TRANSACTION_KINDS.get(tree.get("kind", ""))
    if kind == "AlterEnumStmt":
        # ADD VALUE (not RENAME VALUE) became allowed in a transaction in 12.
        if "oldVal" not in tree and target_major is not None and target_major < 12:
            return "ALTER TYPE ... ADD VALUE"
        return None
    return _refused_in_transaction(node(), target_major)


def _refused_in_transaction(node: Any, target_major: int | None) -> str | None:
    """The command PostgreSQL names when it refuses *node* in a transaction block, else None.

    For the kinds :func:`_refused_in_transaction_tree` does not decide from
    the parser's JSON (CREATE/DROP INDEX, ALTER TABLE, ALTER TYPE and
    transaction statements are decided there).

    Mirrors the server's PreventInTransactionBlock() calls that can be
    decided from the statement alone.  Where the answer depends on the
    database (DROP SUBSCRIPTION of a subscription with a slot), the
    statement is treated as refused.  Not detectable here: REINDEX and
    CLUSTER of a partitioned table, which are refused too.
    """
    if isinstance(node, ast.ReindexStmt):
        if _option_true(node.params, "concurrently", default=False):
            return "REINDEX CONCURRENTLY"
        kinds: dict[Any, str] = {
            enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA: "REINDEX SCHEMA",
            enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM: "REINDEX SYSTEM",
            enums.ReindexObjectType.REINDEX_OBJECT_DATABASE: "REINDEX DATABASE",
        }
        return kinds.get(node.kind)
    if isinstance(node, ast.VacuumStmt):
        # The parser builds ANALYZE as a VacuumStmt too; ANALYZE alone is
        # allowed in a transaction block.
        return "VACUUM" if node.is_vacuumcmd else None
    if isinstance(node, ast.ClusterStmt):
        return "CLUSTER" if node.relation is None else None
    if isinstance(node, ast.CreatedbStmt):
        return "CREATE DATABASE"
    if isinstance(node, ast.DropdbStmt):
        return "DROP DATABASE"
    if isinstance(node, ast.AlterDatabaseStmt):
        names = {d.defname for d in node.options or ()}
        return "ALTER DATABASE SET TABLESPACE" if "tablespace" in names else None
    if isinstance(node, ast.AlterSystemStmt):
        return "ALTER SYSTEM"
    if isinstance(node, ast.CreateTableSpaceStmt):
        return "CREATE TABLESPACE"
    if isinstance(node, ast.DropTableSpaceStmt):
        return "DROP TABLESPACE"
    if isinstance(node, ast.CreateSubscriptionStmt):
        # connect = false implies create_slot = false.
        if not _option_true(node.options, "connect") or not _option_true(node.options, "create_slot"):
            return None
        return "CREATE SUBSCRIPTION ... WITH (create_slot = true)"
    if isinstance(node, ast.DropSubscriptionStmt):
        # Refused only when the subscription has a replication slot, which
        # only the database knows; it usually has one.
        return "DROP SUBSCRIPTION"
    if isinstance(node, ast.AlterSubscriptionStmt):
        return _alter_subscription_refusal(node)
    if isinstance(node, ast.DiscardStmt):
        return "DISCARD ALL" if node.target == enums.DiscardMode.DISCARD_ALL else None
    return None


def _alter_subscription_refusal(node: Any) -> str | None:
    kind = node.kind
    types = enums.AlterSubscriptionType
    if kind == types.ALTER_SUBSCRIPTION_REFRESH:
        return "ALTER SUBSCRIPTION ... REFRESH PUBLICATION"
    publication = {
        types.ALTER_SUBSCRIPTION_SET_PUBLICATION: "SET",
        types.ALTER_SUBSCRIPTION_ADD_PUBLICATION: "ADD",
        types.ALTER_SUBSCRIPTION_DROP_PUBLICATION: "DROP",
    }
    if kind in publication:
        # refresh defaults to true.
        if _option_true(node.options, "refresh"):
            return f"ALTER SUBSCRIPTION ... {publication[kind]} PUBLICATION ... WITH (refresh = true)"
        return None
    if kind == types.ALTER_SUBSCRIPTION_OPTIONS:
        names = {d.defname for d in node.options or ()}
        # Both change the publisher's replication slot, which cannot be
        # rolled back (failover since 17, two_phase = false since 18).
        if "failover" in names:
            return "ALTER SUBSCRIPTION ... SET (failover)"
        if "two_phase" in names and not _option_true(node.options, "two_phase"):
            return "ALTER SUBSCRIPTION ... SET (two_phase = false)"
    return None


def _option_true(options: Any, name: str, *, default: bool = True) -> bool:
    """The boolean value of option *name* in a list of DefElem, as PostgreSQL's defGetBoolean reads it.

    A value the server would reject counts as true, the cautious answer.
    """
    for elem in options or ():
        if getattr(elem, "defname", None) != name:
            continue
        arg = elem.arg
        if isinstance(arg, ast.A_Const):
            arg = arg.val
        if arg is None:
            return True
        if isinstance(arg, ast.Boolean):
            return bool(arg.boolval)
        if isinstance(arg, ast.Integer):
            return arg.ival != 0
        if isinstance(arg, ast.String):
            word = arg.sval
        elif isinstance(arg, ast.TypeName) and arg.names and len(arg.names) == 1:
            word = arg.names[0].sval  # a bare word such as off parses as a type name
        else:
            return True
        return (word or "").lower() not in ("false", "off", "0")
    return default
