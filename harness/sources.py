"""Migration folders, split into statements by PostgreSQL's own parser.

:func:`load_migrations` reads a folder in any supported layout (the native
one below, or a foreign tool's: see :mod:`harness.layouts` and
``docs/layouts.md``) into the same :class:`Migration` objects, so every
assertion, lint rule and apply guard works the same whatever wrote the files.


In the native layout (also Supabase's), a migrations folder holds
``<version>_<name>.sql`` (an up migration) and,
optionally, ``<version>_<name>.down.sql`` (its down migration).
``<version>`` is digits and orders migrations as an integer (``9`` before
``10``; timestamps such as ``20261101120000`` work the same way); ``<name>``
is letters, digits, ``_`` and ``-``.  Hidden files, sub-folders and files
not ending in ``.sql`` (a README, say) are ignored.

SQL is split with pglast, which embeds the PostgreSQL parser (libpg_query),
never with regular expressions: dollar-quoted bodies, ``BEGIN ATOMIC``
bodies, comments and string literals that contain semicolons are split
exactly as the server would split them.  Each :class:`Statement` records
where it starts, its parse tree, and whether PostgreSQL refuses to run it
inside a transaction block.

The harness runs every migration in its own transaction, so a file either
wraps itself in exactly one top-level ``BEGIN; ... COMMIT;`` (recognised and
removed from :attr:`Migration.statements`) or does not manage transactions at
all; any other transaction control is refused when the folder is loaded.

Nothing here opens a connection or executes SQL.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pglast import ast, enums, parser

from .errors import SourceError

if TYPE_CHECKING:  # batched data migrations
    from .batch import BatchSpec

__all__ = [
    "LAYOUTS",
    "Statement",
    "Migration",
    "Order",
    "parse_sql",
    "load_migrations",
    "load_plan_migrations",
    "apply_substitutions",
    "baseline_index",
    "checksum",
]

#: Every layout :func:`load_migrations` reads; ``auto`` detects one of the others.
LAYOUTS = (
    "auto", "native", "supabase", "golang-migrate", "diesel", "dbmate", "goose", "flyway", "drizzle", "sqitch",
    "prisma", "sqlx", "atlas", "node-pg-migrate", "alembic",
)

log = logging.getLogger(__name__)

# File names are matched with regular expressions; SQL never is.
_UP_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)\.sql")
_DOWN_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)\.down\.sql")
_PATTERN_HELP = (
    "<version>_<name>.sql for an up migration or <version>_<name>.down.sql for its down migration, "
    "where <version> is digits and <name> is letters, digits, '_' or '-' "
    "(for example 20261101120000_add_users.sql and 20261101120000_add_users.down.sql)"
)

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


# --------------------------------------------------------------------------
# Public objects


@dataclass(frozen=True)
class LayoutFinding:
    """A quirk of one migration file that the layout's own tool would trip over (or silently ignore)."""

    path: Path
    line: int
    column: int
    rule: str  # stable id, e.g. "layout-transaction"
    severity: str  # "error": the tool would fail; "warning": it would behave unexpectedly; "info": a note
    message: str
    advice: str
    #: Which part of the migration the tool would trip over: "up", "down", or "" for the whole file.
    side: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.severity} {self.rule}: {self.message}"


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a migration file, as PostgreSQL's parser split it."""

    sql: str  # the statement's text as written, without the trailing semicolon
    line: int  # 1-based line of the statement's first character in its file
    column: int  # 1-based column, counted in characters
    kind: str  # pglast node class name, e.g. "IndexStmt"
    transactional: bool  # False when PostgreSQL refuses to run it inside a transaction block
    control: str | None  # for a TransactionStmt: "begin", "commit", "rollback", "savepoint", ...
    _trees: _Trees | None = field(default=None, compare=False, repr=False, hash=False)
    _index: int = field(default=0, compare=False, repr=False, hash=False)

    @property
    def node(self) -> Any:
        """The statement's pglast AST node (for lint rules, batches, lock checks), built on first use."""
        return self._trees.node(self._index) if self._trees is not None else None


class _Trees:
    """The pglast parse trees of one text, built when a statement's node is first asked for.

    Building Python objects for every node costs several times the parse
    itself (76 µs against 12 µs for a one-line CREATE TABLE), and a
    rehearsal without lint needs no tree at all: :func:`parse_sql` splits
    and classifies statements from the parser's JSON output instead.
    """

    __slots__ = ("_text", "_nodes")

    def __init__(self, text: str) -> None:
        self._text = text
        self._nodes: list[Any] | None = None

    def node(self, index: int) -> Any:
        if self._nodes is None:
            self._nodes = [raw.stmt for raw in parser.parse_sql(self._text)]
        return self._nodes[index]


@functools.total_ordering
class Order:
    """Where a migration sits in its folder's sequence: a total order over every layout's versions.

    Versioned migrations compare either by the numeric parts of their version
    (``9`` < ``10``; Flyway's ``1`` < ``1.1`` < ``2.0.3``; trailing zero parts
    are dropped, so ``1.0`` equals ``1``, as Flyway compares them) or, for the
    tools that compare versions as strings, by *text* (diesel's version
    without dashes, so ``20170923182408`` < ``202511190914440000`` <
    ``20251119091444``; dbmate's and the Supabase CLI's file name), code point
    by code point as Rust and Go compare strings.  One folder uses one kind;
    across kinds, text orders come first.  Repeatable migrations (Flyway's
    ``R__``) come after every versioned one, by name.  A one-part numeric
    order also compares with a plain ``int``, which is what
    :attr:`Migration.order` was before other layouts existed (``order == 1``).
    """

    __slots__ = ("parts", "text", "repeatable", "tiebreak")

    def __init__(
        self, parts: Sequence[int] = (), *, text: str = "", repeatable: bool = False, tiebreak: str = ""
    ) -> None:
        trimmed = tuple(int(p) for p in parts)
        while len(trimmed) > 1 and trimmed[-1] == 0:
            trimmed = trimmed[:-1]
        self.parts: tuple[int, ...] = trimmed
        self.text = text
        self.repeatable = repeatable
        self.tiebreak = tiebreak

    @property
    def key(self) -> tuple[int, tuple[int, ...], str, str]:
        """The order as a plain sortable tuple."""
        return (1 if self.repeatable else 0, self.parts, self.text, self.tiebreak)

    def _other(self, other: object) -> Order | None:
        if isinstance(other, Order):
            return other
        if isinstance(other, int) and not isinstance(other, bool):
            return Order((other,))
        return None

    def __eq__(self, other: object) -> bool:
        theirs = self._other(other)
        if theirs is None:
            return NotImplemented
        return self.key == theirs.key

    def __lt__(self, other: object) -> bool:
        theirs = self._other(other)
        if theirs is None:
            return NotImplemented
        return self.key < theirs.key

    def __hash__(self) -> int:
        if not self.repeatable and not self.text and len(self.parts) == 1:
            return hash(self.parts[0])  # equal to the int it equals
        return hash(self.key)

    def __int__(self) -> int:
        if self.repeatable or self.text or len(self.parts) != 1:
            raise TypeError(f"order {self} is not a single number")
        return self.parts[0]

    def __str__(self) -> str:
        if self.repeatable:
            return f"repeatable {self.tiebreak}"
        if self.text:
            return self.text
        return ".".join(str(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"Order({self})"


@dataclass(frozen=True)
class Migration:
    """One migration: its up file, optional down file, and their statements.

    Every layout maps to this one model.  Files that hold both directions
    (dbmate, goose) have ``path == down_path``; their ``sql`` and
    ``down_sql`` keep the other section's lines blank, so statement lines
    are the file's lines.
    """

    version: str  # as written in the file name, e.g. "20261101120000" or "0001" (Flyway: "1.1")
    name: str  # e.g. "add_users" ("" when the version alone names it: Sqitch changes, Flyway R__ scripts)
    path: Path  # the up file
    sql: str  # the up file's text (substitutions applied)
    checksum: str  # sha256 hex digest of the up file's bytes, as written
    statements: tuple[Statement, ...]  # the up statements, file-level BEGIN/COMMIT removed
    wrapped: bool  # the up file wraps itself in a top-level BEGIN; ... COMMIT;
    down_path: Path | None = None
    down_sql: str | None = None
    down_statements: tuple[Statement, ...] | None = None  # wrapper removed likewise
    down_wrapped: bool = False
    #: The layout declares that the up migration runs outside a transaction
    #: (diesel ``run_in_transaction = false``, dbmate ``transaction:false``,
    #: goose ``NO TRANSACTION``, Flyway ``executeInTransaction=false``).
    no_transaction: bool = False
    #: The same for the down migration.
    down_no_transaction: bool = False
    #: A Flyway ``R__`` script: re-applied whenever its checksum changes, after the versioned ones.
    repeatable: bool = False
    #: A Sqitch verify script: must run without error after the migration.
    verify_sql: str | None = None
    verify_path: Path | None = None
    #: The layout the migration was read from ("native", "flyway", ...).
    layout: str = "native"
    #: The numeric parts the version sorts by; ``None``: the version as one integer.
    order_parts: tuple[int, ...] | None = None
    #: The text the version sorts by, for tools that compare versions as strings (wins over ``order_parts``).
    order_text: str | None = None
    #: Statements marked ``-- harness:batch`` (:mod:`harness.batch`): run in key-range batches.
    batches: tuple[BatchSpec, ...] = ()
    #: Why the up file cannot be run (unreadable, not UTF-8, does not parse, bad transaction control or
    #: batch directive), with file and line; ``statements`` is then empty.  Only this migration's items fail.
    error: str | None = None
    #: The same for the down file; ``down_statements`` is then ``None``.
    down_error: str | None = None
    #: Quirks of this migration's files that its layout's own tool would trip over (:mod:`harness.layouts`).
    findings: tuple[LayoutFinding, ...] = ()
    #: Versions that must be applied before this one, where the layout records them (Alembic's
    #: ``down_revision`` and ``depends_on``); adopting a head adopts everything it requires.
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The migration's identity, ``<version>_<name>`` (the version alone when there is no name)."""
        return f"{self.version}_{self.name}" if self.name else self.version

    @property
    def order(self) -> Order:
        """Where the migration sorts among its folder's migrations (compares with an int in the native layout)."""
        if self.repeatable:
            return Order(repeatable=True, tiebreak=self.version)
        if self.order_text is not None:
            return Order(text=self.order_text)
        return Order(self.order_parts if self.order_parts is not None else (int(self.version),))

    @property
    def transactional(self) -> bool:
        """True when the up migration may run inside a transaction block.

        False when the layout declares it runs outside one, when a
        statement cannot run inside one, or when a statement is batched.
        """
        # A batched statement commits batch by batch, so its migration runs outside one transaction.
        return not self.no_transaction and not self.batches and all(s.transactional for s in self.statements)

    @property
    def has_down(self) -> bool:
        """True when the migration has a down file (or section), even an empty or broken one."""
        return self.down_path is not None

    @property
    def down_empty(self) -> bool:
        """True when the down file (or section) holds no SQL: the usual way to mark a migration irreversible."""
        return self.down_path is not None and self.down_error is None and not self.down_statements

    @property
    def reversible(self) -> bool:
        """True when a down with SQL exists and can be run (not empty, not broken)."""
        return self.down_error is None and bool(self.down_statements)

    @property
    def down_transactional(self) -> bool:
        """True when the down migration may run inside a transaction block (True without a down)."""
        if self.down_statements is None:
            return True
        return not self.down_no_transaction and all(s.transactional for s in self.down_statements)


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


def load_migrations(
    directory: Path | str,
    *,
    target_major: int | None = None,
    layout: str = "auto",
    substitutions: Sequence[Any] = (),
) -> list[Migration]:
    """Read every migration in *directory*, sorted by :attr:`Migration.order`.

    *layout* names the folder's layout (one of :data:`LAYOUTS`); ``auto``
    detects it and picks ``native`` when nothing else fits or several
    layouts do (see :func:`harness.layouts.detect_layout`).
    *substitutions* are applied in order to the SQL text before it is parsed
    (checksums stay those of the files as written): each is a
    :class:`harness.plan.Substitution`, or a mapping with ``literal`` or
    ``regex`` and ``value``.

    Raises :class:`~harness.errors.SourceError` (exit code 2) for a missing
    folder, a ``.sql`` file whose name fits no pattern, a down file without
    its up file, two files with the same version, a file that is not UTF-8,
    is empty or holds only comments, does not parse, or manages transactions
    other than with one file-level ``BEGIN; ... COMMIT;``.  Quirks a layout's
    own tool would trip over are not errors: :func:`harness.layouts.layout_findings`
    reports them.
    """
    from . import layouts  # cycle: layouts imports this module (its readers build Migrations)

    folder = _check_folder(Path(directory))
    migrations, findings = layouts.read_folder(folder, layout, target_major=target_major, substitutions=substitutions)
    for finding in findings:
        # A skipped file belongs to no migration, so no item reports it: say it louder.
        log.log(logging.WARNING if finding.rule == "layout-ignored-file" else logging.INFO, "%s", finding)
    return migrations


def load_plan_migrations(plan: Any, *, target_major: int | None = None) -> list[Migration]:
    """The migrations of a :class:`harness.plan.Plan`: its folder, layout and substitutions."""
    major = target_major if target_major is not None else plan.rehearsal.postgres
    return load_migrations(
        plan.migrations_dir,
        target_major=major,
        layout=getattr(plan, "layout", "auto"),
        substitutions=getattr(plan, "substitutions", ()),
    )


def baseline_index(migrations: Sequence[Migration], baseline: str | None) -> int:
    """Index of the last migration a plan's ``baseline`` covers (``-1`` without a baseline).

    *baseline* names a migration by version or id; every migration that
    sorts at or before it is covered.  Raises :class:`SourceError` when no
    migration has that version or id.
    """
    if baseline is None:
        return -1
    named = [m for m in migrations if baseline in (m.version, m.id)]
    if not named:
        known = ", ".join(m.id for m in migrations[-5:]) or "none"
        raise SourceError(
            f"baseline {baseline!r} names no migration (by version or id); the latest migrations are: {known}. "
            "Set baseline: to the version of the last migration the databases already have"
        )
    order = named[0].order
    return max(i for i, m in enumerate(migrations) if m.order <= order)


def _check_folder(folder: Path) -> Path:
    if not folder.exists():
        raise SourceError(
            f"migrations folder {folder} does not exist; create it, or point the harness at the folder "
            "that holds your migration files"
        )
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder; point the harness at the folder that holds the migration files")
    return folder


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise SourceError(
            f"migrations folder {folder} cannot be listed ({exc.strerror or exc}); check its permissions"
        ) from None


def _load_native(
    folder: Path,
    *,
    target_major: int | None,
    substitutions: Sequence[Any],
    layout: str = "native",
    ignore: Callable[[Path, str], None] | None = None,
) -> list[Migration]:
    """The native (and Supabase) layout: ``<version>_<name>.sql`` and ``<version>_<name>.down.sql``.

    A ``.sql`` file whose name fits neither pattern is refused, or, with
    *ignore*, handed to it and skipped (as the Supabase CLI skips it:
    "file name must match pattern").
    """
    entries = _listing(folder)
    ups: dict[tuple[str, str], Path] = {}
    downs: dict[tuple[str, str], Path] = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().endswith(".sql"):
            continue
        if entry.is_dir() or not (entry.is_file() or entry.is_symlink()):
            continue  # sub-folders, and sockets or pipes that happen to end in .sql
        down = _DOWN_RE.fullmatch(entry.name)
        up = None if down else _UP_RE.fullmatch(entry.name)
        if down:
            downs[(down["version"], down["name"])] = entry
        elif up:
            ups[(up["version"], up["name"])] = entry
        elif ignore is not None:
            ignore(entry, f"the name does not fit the pattern {_PATTERN_HELP}")
        else:
            raise SourceError(
                f"{entry}: the file name {entry.name!r} does not fit the pattern {_PATTERN_HELP}; rename the file, "
                f"or move it out of {folder} if it is not a migration"
            )

    for key, orphan in downs.items():
        if key not in ups:
            expected = f"{key[0]}_{key[1]}.sql"
            same_version = [p.name for (v, _), p in ups.items() if int(v) == int(key[0])]
            hint = f" (the up migration with that version is {same_version[0]})" if same_version else ""
            raise SourceError(
                f"{orphan}: down migration without its up migration {expected}{hint}; rename the down file "
                "to <up file name without .sql>.down.sql, or delete it"
            )

    by_order: dict[int, Path] = {}
    for (version, _), up_path in sorted(ups.items(), key=lambda kv: kv[1].name):
        other = by_order.setdefault(int(version), up_path)
        if other is not up_path:
            raise SourceError(
                f"{other} and {up_path} have the same version number ({int(version)}); every migration needs "
                "its own version: renumber one of them"
            )

    migrations: list[Migration] = []
    # Parse in migration order so that the first error reported is the earliest migration's.
    for (version, name), up_path in sorted(ups.items(), key=lambda kv: (int(kv[0][0]), kv[0][0])):
        data, text, error = _read_soft(up_path)
        down_path = downs.get((version, name))
        down_text, down_error = (_read_soft(down_path)[1:] if down_path is not None else (None, None))
        migrations.append(
            make_migration(
                version=version,
                name=name,
                path=up_path,
                text=text,
                checksum=_sha256(data),
                down_path=down_path,
                down_text=down_text,
                target_major=target_major,
                substitutions=substitutions,
                layout=layout,
                error=error,
                down_error=down_error,
            )
        )
    migrations.sort(key=lambda m: (m.order, m.version))
    log.debug("loaded %d migrations from %s", len(migrations), folder)
    return migrations


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
    from .batch import find_batches  # cycle: batch -> execute -> sources (execute runs Statements)

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
