"""Foreign migration layouts: one reader per tool, auto-detection, and the quirks each tool trips over.

Every reader maps its tool's files to :class:`harness.migration.Migration`, so
assertions, lint rules and apply guards work the same whatever wrote the
folder.  The rule for a file a tool would not accept:

- when the harness cannot tell what the migration is (no ``-- migrate:up``
  marker, a diesel directory without ``up.sql``, a Sqitch change without its
  deploy script), loading fails with a :class:`~harness.errors.SourceError`
  naming the file;
- when the tool itself ignores a file (golang-migrate and dbmate skip names
  they do not recognise), the reader skips it too and says so in a finding;
- when the migration loads but the tool would fail running it (a
  ``CONCURRENTLY`` statement inside the transaction the tool opens, goose
  splitting a function body at its semicolons, a missing final semicolon),
  it is a :class:`LayoutFinding` with file and line, never an error.

:func:`layout_findings` returns those findings; ``harness lint`` shows them.
Nothing here opens a connection.  The layouts are described in
``docs/layouts.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglast import parser

from . import _alembic
from .errors import SourceError
from .migration import LayoutFinding, Migration, Statement
from .native import load_native
from .parsing import _LineIndex, _listing, _read, _read_soft, _sha256, apply_substitutions, make_migration

__all__ = [
    "LAYOUTS", "LayoutFinding", "detect_layout", "read_folder", "layout_findings", "atlas_sum_text", "FOREIGN_LAYOUTS",
    "supabase_folder",
]

log = logging.getLogger(__name__)

#: Every layout :func:`harness.sources.load_migrations` reads; ``auto`` detects one of the others.
LAYOUTS = (
    "auto", "native", "supabase", "golang-migrate", "diesel", "dbmate", "goose", "flyway", "drizzle", "sqitch",
    "prisma", "sqlx", "atlas", "node-pg-migrate", "alembic",
)

#: Layouts written by another tool (everything but native and auto).
FOREIGN_LAYOUTS = tuple(name for name in LAYOUTS if name not in ("auto", "native", "supabase"))

_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


# --------------------------------------------------------------------------
# Entry points


def read_folder(
    folder: Path,
    layout: str,
    *,
    target_major: int | None = None,
    substitutions: Sequence[Any] = (),
) -> tuple[list[Migration], list[LayoutFinding]]:
    """The migrations of *folder* in *layout* (``auto``: detected), sorted, and the layout findings."""
    if layout not in LAYOUTS:
        raise SourceError(f"unknown migrations layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    resolved = detect_layout(folder) if layout == "auto" else layout
    reading = _Reading(folder, resolved, target_major, tuple(substitutions))
    migrations = _in_tool_order(resolved, _READERS[resolved](reading))
    _refuse_duplicates(migrations, resolved)
    findings = reading.findings
    if resolved in FOREIGN_LAYOUTS:
        for migration in migrations:
            findings += _common_findings(migration, resolved)
    findings.sort(key=lambda f: (str(f.path), f.line, f.column, f.rule))
    if not migrations:
        raise SourceError(_nothing_found(folder, resolved, detected=layout == "auto"))
    # Each migration carries its own files' findings: the rehearsal reports them on its items.
    by_file: dict[Path, list[LayoutFinding]] = {}
    for finding in findings:
        by_file.setdefault(finding.path, []).append(finding)
    migrations = [
        dataclasses.replace(m, findings=tuple(by_file.get(m.path, ()))
                            + (tuple(by_file.get(m.down_path, ())) if m.down_path not in (None, m.path) else ()))
        if m.path in by_file or m.down_path in by_file else m
        for m in migrations
    ]
    log.debug("read %d %s migrations from %s (%d findings)", len(migrations), resolved, folder, len(findings))
    return migrations, findings


def layout_findings(
    directory: Path | str,
    layout: str = "auto",
    *,
    substitutions: Sequence[Any] = (),
    target_major: int | None = None,
) -> list[LayoutFinding]:
    """The quirks of a migrations folder that its own tool would trip over, with file and line.

    Raises :class:`~harness.errors.SourceError` only when the folder cannot be
    read at all (the same errors as :func:`harness.sources.load_migrations`).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise SourceError(f"migrations folder {folder} does not exist or is not a folder")
    return read_folder(folder, layout, target_major=target_major, substitutions=substitutions)[1]


_GOLANG_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.(?P<direction>up|down)\.sql")
_GOLANG_V_RE = re.compile(r"V(?P<version>[0-9]+)\.(?P<name>.+)\.(?P<direction>up|down)\.sql")
_FLYWAY_RE = re.compile(r"(?P<prefix>[VU])(?P<version>[0-9]+(?:[._][0-9]+)*)__(?P<desc>.+)\.sql|R__(?P<rdesc>.+)\.sql")
_NUMBERED_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.sql")
_GOOSE_MARK = re.compile(r"^--\s*\+goose\s+(?P<command>.*?)\s*$", re.IGNORECASE)
_DBMATE_MARK = re.compile(r"^--\s*migrate:(?P<direction>up|down)\b(?P<options>.*)$", re.IGNORECASE)


def detect_layout(directory: Path | str) -> str:
    """The layout of a migrations folder, from its file names and markers; ``native`` when ambiguous.

    Signals: ``sqitch.plan`` (sqitch), ``meta/_journal.json`` (drizzle),
    ``migration_lock.toml`` or sub-folders with a ``migration.sql`` (prisma),
    ``atlas.sum`` (atlas), sub-folders with an ``up.sql`` (diesel),
    ``*.up.sql`` files (golang-migrate), ``V1__x.sql`` / ``R__x.sql``
    (flyway), and numbered files holding ``-- +goose Up`` (goose),
    ``-- migrate:up`` (dbmate) or ``-- Up Migration`` (node-pg-migrate), or
    starting with ``-- no-transaction`` (sqlx; other sqlx folders look like
    native or golang-migrate ones: name the layout); ``alembic.ini``, or
    ``env.py`` beside ``versions/`` (alembic).
    No signal, or signals of several layouts, give ``native``.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return "native"
    signals: list[str] = []
    if _alembic.looks_like_alembic(folder):
        signals.append("alembic")
    if (folder / "sqitch.plan").is_file():
        signals.append("sqitch")
    if (folder / "migration_lock.toml").is_file() or any(
        e.is_dir() and (e / "migration.sql").is_file() for e in _listing(folder) if not e.name.startswith(".")
    ):
        signals.append("prisma")
    if (folder / "atlas.sum").is_file():
        signals.append("atlas")
    if (folder / "meta" / "_journal.json").is_file():
        signals.append("drizzle")
    entries = [e for e in _listing(folder) if not e.name.startswith(".")]
    if any(e.is_dir() and (e / "up.sql").is_file() for e in entries):
        signals.append("diesel")
    files = [e for e in entries if e.is_file() and e.name.lower().endswith(".sql")]
    # An up file is the signal: native down files end in .down.sql too.
    if any((m := _GOLANG_RE.fullmatch(e.name) or _GOLANG_V_RE.fullmatch(e.name)) and m["direction"] == "up"
           for e in files):
        signals.append("golang-migrate")
    if any(_FLYWAY_RE.fullmatch(e.name) for e in files):
        signals.append("flyway")
    marked: set[str] = set()
    for entry in files:
        if not _NUMBERED_RE.fullmatch(entry.name) or entry.name.endswith((".up.sql", ".down.sql")):
            continue
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if _GOOSE_MARK.match(line.strip()):
                marked.add("goose")
            elif _DBMATE_MARK.match(line.strip()):
                marked.add("dbmate")
        if _PGM_MARK["up"].search(text) or _PGM_MARK["down"].search(text):
            marked.add("node-pg-migrate")
    if "atlas" in signals:
        marked.discard("node-pg-migrate")  # an Atlas folder may hold files with such comments too
    if any(_starts_with(e, b"-- no-transaction") for e in files if _SQLX_RE.fullmatch(e.name)):
        # sqlx's own directive; its .up.sql files look like golang-migrate's, its plain ones like native.
        signals = [s for s in signals if s != "golang-migrate"] + ["sqlx"]
    signals += sorted(marked)
    if len(signals) == 1:
        return signals[0]
    if len(signals) > 1:
        log.warning(
            "%s looks like several layouts (%s); reading it as native. Name the layout in the plan (layout: ...)",
            folder,
            ", ".join(signals),
        )
    return "native"


def supabase_folder(directory: Path | str) -> bool:
    """Whether a migrations folder is a Supabase project's: ``supabase/migrations``, or beside the CLI's ``config.toml``.

    Such a folder reads as ``native`` under ``layout: auto`` (the files are
    the same); the rehearsal uses this to advise ``base: supabase`` when a
    migration misses an object the platform creates.
    """
    folder = Path(directory).absolute()
    if folder.name == "migrations" and folder.parent.name == "supabase":
        return True
    config = folder.parent / "config.toml"
    if not config.is_file():
        return False
    try:
        settings = tomllib.loads(config.read_text(encoding="utf-8", errors="replace"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    # The Supabase CLI's config: a project_id and its [db] and [api] tables.
    return "project_id" in settings and isinstance(settings.get("db"), dict) and isinstance(settings.get("api"), dict)


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(prefix)) == prefix
    except OSError:
        return False


# --------------------------------------------------------------------------
# Reading


@dataclass
class _Reading:
    folder: Path
    layout: str
    target_major: int | None
    substitutions: tuple[Any, ...]
    findings: list[LayoutFinding] = field(default_factory=list)

    def add(self, path: Path, line: int, rule: str, severity: str, message: str, advice: str, column: int = 1,
            side: str = "") -> None:
        self.findings.append(LayoutFinding(path, line, column, rule, severity, message, advice, side))

    def build(self, **kwargs: Any) -> Migration:
        return make_migration(
            target_major=self.target_major, substitutions=self.substitutions, layout=self.layout, **kwargs
        )

    def down_text(self, path: Path | None, text: str | None) -> str | None:
        """*text*, with an informational finding when the down holds no SQL (the migration is irreversible)."""
        if path is None or text is None:
            return text
        if not _has_sql(apply_substitutions(text, self.substitutions)):
            self.add(
                path,
                1,
                "layout-empty-down",
                "info",
                "the down migration holds no SQL: the migration cannot be rolled back (the rehearsal's rollback "
                "item fails until the plan declares `rollback: none` for it)",
                "write the SQL that undoes the up migration, or declare `rollback: none` on the plan's step",
                side="down",
            )
        return text

    def read(self, path: Path | None) -> tuple[bytes, str | None, str | None]:
        """The bytes, text and read error of an optional file (``(b"", None, None)`` without one)."""
        if path is None:
            return b"", None, None
        return _read_soft(path)


# What each layout's reader looks for, for the message when it finds nothing.
_LOOKED_FOR = {
    "native": "<version>_<name>.sql files (with optional <version>_<name>.down.sql)",
    "supabase": "<timestamp>_<name>.sql files",
    "golang-migrate": "<version>_<name>.up.sql files (with optional .down.sql)",
    "diesel": "<version>_<name>/ folders holding an up.sql",
    "dbmate": "<version>_<name>.sql files with a '-- migrate:up' marker",
    "goose": "<version>_<name>.sql files with a '-- +goose Up' marker",
    "flyway": "V<version>__<description>.sql or R__<description>.sql files",
    "drizzle": "the .sql files that meta/_journal.json lists",
    "sqitch": "the changes sqitch.plan lists, with deploy/<change>.sql scripts",
    "prisma": "<timestamp>_<name>/ folders holding a migration.sql",
    "sqlx": "<version>_<description>.sql files (or .up.sql with optional .down.sql)",
    "atlas": "<version>_<name>.sql files (with atlas.sum)",
    "node-pg-migrate": "<timestamp>_<name>.sql files (with '-- Up Migration' and '-- Down Migration' sections)",
    "alembic": _alembic.LOOKED_FOR,
}


def _nothing_found(folder: Path, layout: str, *, detected: bool = False) -> str:
    """The message for a folder in which no migration was found: what was looked for, and what it looks like.

    With *detected* (``layout: auto``), it also names the layouts whose signs the folder lacked.
    """
    looked = _LOOKED_FOR.get(layout, "migration files")
    message = f"no migration found in {folder}: the {layout} layout looks for {looked}"
    if detected:
        others = ", ".join(name for name in _LOOKED_FOR if name not in (layout, "supabase"))
        message += f" (auto-detection found no sign of the other layouts it knows: {others})"
    foreign = _unsupported_layout(folder)
    if foreign is not None and foreign.startswith("an Alembic"):
        if layout != "alembic":
            return f"{message}. The folder looks like {foreign}: name its layout in the plan (layout: alembic)"
    elif foreign is not None:
        return f"{message}. The folder looks like {foreign}, a layout migration-harness does not read yet"
    try:
        subfolders = sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))
    except OSError:
        subfolders = []
    hint = f" (its sub-folders: {', '.join(subfolders[:5])})" if subfolders and layout != "diesel" else ""
    return (
        f"{message}{hint}. Point the plan's migrations: at the folder that holds the migration files, or name "
        "its layout (layout: ...; see docs/layouts.md)"
    )


def _unsupported_layout(folder: Path) -> str | None:
    """The name and signature of a known migration layout the harness does not read (or reads only when named:
    Alembic), when *folder* has one."""
    try:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    except OSError:
        return None
    names = {e.name for e in entries}
    if "env.py" in names or "alembic.ini" in names or ("versions" in names and (folder / "versions").is_dir()):
        return "an Alembic environment (env.py, versions/<revision>_<name>.py)"
    scripts = sorted(e.suffix for e in entries if e.is_file() and e.suffix in (".js", ".ts", ".cjs", ".mjs", ".py",
                                                                            ".rb", ".go"))
    if scripts:
        return f"migrations written in code ({', '.join(sorted(set(scripts)))} files), which cannot be rehearsed as SQL"
    return None


def _has_sql(text: str) -> bool:
    try:
        return any(t.name not in _COMMENTS for t in parser.scan(text))
    except Exception:  # noqa: BLE001 - unscannable text is not empty; parsing reports it properly
        return True


def _files(folder: Path) -> list[Path]:
    return [e for e in _listing(folder) if not e.name.startswith(".") and e.is_file()]


def _ignored(reading: _Reading, path: Path, why: str) -> None:
    reading.add(path, 1, "layout-ignored-file", "warning", f"{reading.layout} ignores this file: {why}",
                "rename it to the tool's pattern if it is a migration, or move it out of the folder")


#: Layouts whose tool applies the files in the order of their names: dbmate sorts by file name
#: (``sort.Slice(migrations, ... FileName < ...)`` in ``pkg/dbmate/db.go``), the Supabase CLI takes
#: ``fs.ReadDir``'s sorted names (``ListLocalMigrations`` in ``pkg/migration/list.go``).  Both compare
#: versions as strings, so ``001`` and ``1`` are two versions for them.
_BY_FILE_NAME = frozenset({"dbmate", "supabase"})


def _in_tool_order(layout: str, migrations: list[Migration]) -> list[Migration]:
    """*migrations* sorted as their layout's own tool applies them (``docs/layouts.md``, Order and versions)."""
    if layout in _BY_FILE_NAME:
        migrations = [dataclasses.replace(m, order_text=m.path.name) for m in migrations]
    return sorted(migrations, key=lambda m: (m.order, m.version))


def _refuse_duplicates(migrations: list[Migration], layout: str) -> None:
    """Refuse two migrations that are one version for the layout's tool (golang-migrate's ``001`` and ``1``)."""
    seen: dict[object, Migration] = {}
    for migration in migrations:
        # dbmate and the Supabase CLI record the version string; the others compare versions as they order them.
        key: object = migration.version if layout in _BY_FILE_NAME else migration.order
        before = seen.setdefault(key, migration)
        if before is not migration:
            raise SourceError(
                f"{before.path} and {migration.path} have the same version ({key}); every migration needs its "
                "own version: renumber one of them"
            )


def _sections(text: str, keep: set[int]) -> str:
    """*text* with every line whose 1-based number is not in *keep* blanked (line numbers stay the file's)."""
    lines = text.splitlines(keepends=True)
    out = []
    for number, line in enumerate(lines, 1):
        if number in keep:
            out.append(line)
        else:
            ending = line[len(line.rstrip("\r\n")):]
            out.append(ending)
    return "".join(out)


# -- native / supabase ------------------------------------------------------


def _read_native(reading: _Reading) -> list[Migration]:
    # Supabase's CLI skips a file whose name does not fit, with a warning; so does the harness, with a finding.
    return load_native(
        reading.folder, target_major=reading.target_major, substitutions=reading.substitutions, layout=reading.layout,
        ignore=lambda path, why: _ignored(reading, path, why),
    )


# -- golang-migrate ---------------------------------------------------------


def _read_golang(reading: _Reading) -> list[Migration]:
    ups: dict[tuple[str, str], Path] = {}
    downs: dict[tuple[str, str], Path] = {}
    for entry in _files(reading.folder):
        match = _GOLANG_RE.fullmatch(entry.name) or _GOLANG_V_RE.fullmatch(entry.name)
        if match is None:
            if entry.name.lower().endswith(".sql"):
                _ignored(reading, entry, "the name is not <version>_<name>.up.sql or <version>_<name>.down.sql")
            continue
        key = (match["version"], match["name"])
        (ups if match["direction"] == "up" else downs)[key] = entry
    for key, orphan in downs.items():
        if key not in ups:
            raise SourceError(
                f"{orphan}: down migration without its up migration {orphan.name.replace('.down.sql', '.up.sql')}; "
                "rename it or add the up migration"
            )
    migrations = []
    for (version, name), up_path in ups.items():
        data, text, error = _read_soft(up_path)
        down_path = downs.get((version, name))
        _, down_text, down_error = reading.read(down_path)
        migrations.append(
            reading.build(
                version=version, name=name, path=up_path, text=text, checksum=_sha256(data), error=error,
                down_path=down_path, down_text=reading.down_text(down_path, down_text), down_error=down_error,
            )
        )
    return migrations


# -- diesel -----------------------------------------------------------------

_DIESEL_VERSION_RE = re.compile(r"[0-9][0-9-]*")


def _read_diesel(reading: _Reading) -> list[Migration]:
    migrations = []
    for entry in _listing(reading.folder):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        up_path = entry / "up.sql"
        if not up_path.is_file():
            raise SourceError(
                f"{entry}: a diesel migration directory needs an up.sql (diesel refuses the folder without one); "
                "add it, or move the directory out of the migrations folder"
            )
        version, _, name = entry.name.partition("_")
        if not _DIESEL_VERSION_RE.fullmatch(version):
            raise SourceError(
                f"{entry}: diesel migration directories are named <version>_<name>, where <version> is digits "
                "(dashes allowed, like 2017-09-23-182408); rename it"
            )
        no_transaction = not _diesel_runs_in_transaction(reading, entry / "metadata.toml")
        data, text, error = _read_soft(up_path)
        down_path: Path | None = entry / "down.sql"
        assert down_path is not None
        if not down_path.is_file():
            down_path = None
        _, down_text, down_error = reading.read(down_path)
        migrations.append(
            reading.build(
                version=version, name=name, path=up_path, text=text, checksum=_sha256(data), error=error,
                down_path=down_path, down_text=reading.down_text(down_path, down_text), down_error=down_error,
                no_transaction=no_transaction, down_no_transaction=no_transaction,
                # As diesel does: the version with its dashes removed, compared as text.
                order_text=version.replace("-", ""),
            )
        )
    return migrations


def _diesel_runs_in_transaction(reading: _Reading, path: Path) -> bool:
    if not path.is_file():
        return True
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        reading.add(path, 1, "layout-bad-metadata", "warning",
                    f"diesel silently ignores a metadata.toml it cannot read ({exc}), so the migration runs in a "
                    "transaction", "fix the TOML (run_in_transaction = false)")
        return True
    value = data.get("run_in_transaction", True)
    if not isinstance(value, bool):
        reading.add(path, 1, "layout-bad-metadata", "warning",
                    f"run_in_transaction must be true or false, got {value!r}; diesel ignores the file",
                    "write run_in_transaction = false (without quotes)")
        return True
    return value


# -- dbmate -----------------------------------------------------------------


def _read_dbmate(reading: _Reading) -> list[Migration]:
    migrations = []
    for entry in _files(reading.folder):
        match = _NUMBERED_RE.fullmatch(entry.name)
        if match is None:
            if entry.name.lower().endswith(".sql"):
                _ignored(reading, entry, "the name is not <version>_<name>.sql")
            continue
        data, text, error = _read_soft(entry)
        if error is not None:
            migrations.append(reading.build(version=match["version"], name=match["name"], path=entry, text="",
                                            checksum=_sha256(data), error=error))
            continue
        marks: list[tuple[int, str, dict[str, str]]] = []
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            mark = _DBMATE_MARK.match(line.strip())
            if mark:
                options = dict(
                    opt.split(":", 1) for opt in mark["options"].split() if ":" in opt
                )
                marks.append((number, mark["direction"].lower(), options))
        ups = [m for m in marks if m[1] == "up"]
        if not ups:
            raise SourceError(
                f"{entry}: a dbmate migration needs a '-- migrate:up' line before its SQL (dbmate refuses the file "
                "without one); add it"
            )
        ranges: dict[str, tuple[set[int], dict[str, str]]] = {}
        ordered = sorted(marks)
        for index, (number, direction, options) in enumerate(ordered):
            end = ordered[index + 1][0] if index + 1 < len(ordered) else len(lines) + 1
            ranges[direction] = (set(range(number, end)), options)
        first = ordered[0][0]
        before = _sections(text, set(range(1, first)))
        if _has_sql(before):
            reading.add(entry, _first_sql_line(before), "layout-outside-section", "error",
                        "SQL before the first '-- migrate:' marker: dbmate refuses statements outside the "
                        "migrate:up and migrate:down blocks", "move it into the -- migrate:up block")
        up_lines, up_options = ranges["up"]
        down_lines, down_options = ranges.get("down", (set(), {}))
        down_text = reading.down_text(entry, _sections(text, down_lines)) if "down" in ranges else None
        migrations.append(
            reading.build(
                version=match["version"], name=match["name"], path=entry, text=_sections(text, up_lines),
                checksum=_sha256(data), down_path=entry if "down" in ranges else None, down_text=down_text,
                no_transaction=up_options.get("transaction", "").lower() == "false",
                down_no_transaction=down_options.get("transaction", "").lower() == "false",
            )
        )
    return migrations


def _first_sql_line(text: str) -> int:
    for token in parser.scan(text):
        if token.name not in _COMMENTS:
            return _LineIndex(text).position(token.start)[0]
    return 1


# -- goose ------------------------------------------------------------------


def _read_goose(reading: _Reading) -> list[Migration]:
    migrations = []
    for entry in _files(reading.folder):
        if entry.name.endswith(".go"):
            reading.add(entry, 1, "layout-unsupported", "warning",
                        "a Go migration cannot be rehearsed; the harness skips it",
                        "write the migration in SQL if its schema change matters to the rehearsal")
            continue
        if not entry.name.lower().endswith(".sql"):
            continue
        match = _NUMBERED_RE.fullmatch(entry.name)
        if match is None:
            raise SourceError(
                f"{entry}: goose migrations are named <version>_<name>.sql (goose refuses this name); rename it"
            )
        data, text, error = _read_soft(entry)
        if error is not None:
            migrations.append(reading.build(version=match["version"], name=match["name"], path=entry, text="",
                                            checksum=_sha256(data), error=error))
            continue
        migrations.append(_goose_migration(reading, entry, match["version"], match["name"], data, text))
    return migrations


def _goose_migration(reading: _Reading, path: Path, version: str, name: str, data: bytes, text: str) -> Migration:
    lines = text.splitlines()
    direction: str | None = None
    keep: dict[str, set[int]] = {"up": set(), "down": set()}
    seen: set[str] = set()
    no_transaction = False
    blocks: list[tuple[int, int]] = []
    block_start: int | None = None
    for number, line in enumerate(lines, 1):
        mark = _GOOSE_MARK.match(line.strip())
        if mark:
            command = " ".join(mark["command"].lower().split())
            if command in ("up", "down"):
                direction = command
                seen.add(command)
            elif command == "no transaction":
                no_transaction = True
            elif command == "statementbegin":
                block_start = number
            elif command == "statementend" and block_start is not None:
                blocks.append((block_start, number))
                block_start = None
            elif command.startswith("envsub"):
                reading.add(path, number, "layout-envsub", "warning",
                            "goose replaces ${VAR} references after '-- +goose ENVSUB ON'; the harness does not",
                            "add the variables to the plan's substitutions: list")
            continue
        if direction is not None:
            keep[direction].add(number)
    if "up" not in seen:
        raise SourceError(
            f"{path}: a goose migration needs a '-- +goose Up' line before its SQL (goose refuses the file without "
            "one); add it"
        )
    up_text = _sections(text, keep["up"])
    down_text = reading.down_text(path, _sections(text, keep["down"])) if "down" in seen else None
    migration = reading.build(
        version=version, name=name, path=path, text=up_text, checksum=_sha256(data),
        down_path=path if down_text is not None else None, down_text=down_text,
        no_transaction=no_transaction, down_no_transaction=no_transaction,
    )
    _goose_splits(reading, path, lines, migration.statements, blocks)
    _goose_splits(reading, path, lines, migration.down_statements or (), blocks)
    return migration


def _goose_splits(
    reading: _Reading, path: Path, lines: list[str], statements: Sequence[Statement], blocks: list[tuple[int, int]]
) -> None:
    """Statements goose would cut in two: a line inside them ends with ';' and no StatementBegin/End guards them."""
    for statement in statements:
        first = statement.line
        last = first + statement.sql.count("\n")
        if any(start <= first and last <= end for start, end in blocks):
            continue
        for number in range(first, last):
            if _goose_line_ends_statement(lines[number - 1]):
                reading.add(path, number, "layout-goose-split", "error",
                            "goose splits statements at lines ending with ';', so it would cut this statement "
                            f"(which starts at line {first}) here",
                            "wrap the statement in '-- +goose StatementBegin' / '-- +goose StatementEnd'")
                break


def _goose_line_ends_statement(line: str) -> bool:
    # As goose does: the last word before a '--' comment ends with ';'.
    last = ""
    for word in line.split():
        if word.startswith("--"):
            break
        last = word
    return last.endswith(";")


# -- flyway -----------------------------------------------------------------

_FLYWAY_CALLBACKS = re.compile(r"(before|after)[A-Za-z]*(__.*)?\.sql", re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(r"\$\{[^}\n]*\}")


def _read_flyway(reading: _Reading) -> list[Migration]:
    versioned: dict[tuple[int, ...], tuple[str, str, Path]] = {}
    undos: dict[tuple[int, ...], Path] = {}
    repeatables: list[tuple[str, Path]] = []
    for entry in sorted(p for p in reading.folder.rglob("*") if p.is_file() and not _hidden(p, reading.folder)):
        if not entry.name.lower().endswith(".sql"):
            continue
        match = _FLYWAY_RE.fullmatch(entry.name)
        if match is None:
            why = "callbacks are not rehearsed" if _FLYWAY_CALLBACKS.fullmatch(entry.name) else (
                "the name is not V<version>__<description>.sql, U<version>__<description>.sql or R__<description>.sql"
            )
            _ignored(reading, entry, why)
            continue
        if match["rdesc"] is not None:
            repeatables.append((match["rdesc"], entry))
            continue
        version = match["version"].replace("_", ".")
        parts = _trim(tuple(int(p) for p in version.split(".")))
        if match["prefix"] == "U":
            undos[parts] = entry
            continue
        if parts in versioned:
            raise SourceError(
                f"{versioned[parts][2]} and {entry} have the same version ({version}); Flyway refuses two migrations "
                "with one version: renumber one of them"
            )
        versioned[parts] = (version, match["desc"], entry)
    for parts, orphan in undos.items():
        if parts not in versioned:
            raise SourceError(f"{orphan}: undo migration without its versioned migration; rename it or delete it")
    migrations = []
    for parts, (version, desc, path) in versioned.items():
        data, text, error = _read_soft(path)
        _flyway_placeholders(reading, path, text)
        undo = undos.get(parts)
        _, undo_text, down_error = reading.read(undo)
        if undo is not None and undo_text is not None:
            _flyway_placeholders(reading, undo, undo_text)
        no_transaction = not _flyway_in_transaction(path)
        migrations.append(
            reading.build(
                version=version, name=desc, path=path, text=text, checksum=_sha256(data), error=error,
                down_path=undo, down_text=reading.down_text(undo, undo_text), down_error=down_error,
                no_transaction=no_transaction,
                down_no_transaction=undo is not None and not _flyway_in_transaction(undo),
                order_parts=parts,
            )
        )
    for desc, path in repeatables:
        data, text, error = _read_soft(path)
        _flyway_placeholders(reading, path, text)
        migrations.append(
            reading.build(
                version=f"R__{desc}", name="", path=path, text=text, checksum=_sha256(data), error=error,
                repeatable=True, no_transaction=not _flyway_in_transaction(path),
            )
        )
    return migrations


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _trim(parts: tuple[int, ...]) -> tuple[int, ...]:
    while len(parts) > 1 and parts[-1] == 0:
        parts = parts[:-1]
    return parts


def _flyway_in_transaction(path: Path) -> bool:
    """False when the script's ``<name>.sql.conf`` sets ``executeInTransaction=false``."""
    conf = path.with_name(path.name + ".conf")
    if not conf.is_file():
        return True
    for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "executeInTransaction":
            return value.strip().lower() != "false"
    return True


def _flyway_placeholders(reading: _Reading, path: Path, text: str) -> None:
    done = apply_substitutions(text, reading.substitutions)
    match = _PLACEHOLDER_RE.search(done)
    if match:
        where = _LineIndex(done).where(match.start())
        raise SourceError(
            f"{path}:{where}: Flyway placeholder {match.group()} has no value; add "
            f"{{literal: {json.dumps(match.group())}, value: ...}} to the plan's substitutions: list"
        )


# -- drizzle ----------------------------------------------------------------

_TAG_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)")


def _read_drizzle(reading: _Reading) -> list[Migration]:
    journal_path = reading.folder / "meta" / "_journal.json"
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        entries = journal["entries"]
        tags = [str(e["tag"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"{journal_path}: cannot read drizzle's journal ({exc}); it needs an entries list of {{tag: ...}} "
            "(drizzle-kit generate writes it)"
        ) from None
    migrations = []
    for position, tag in enumerate(tags):
        path = reading.folder / f"{tag}.sql"
        if not path.is_file():
            raise SourceError(
                f"{journal_path}: entry {tag!r} has no file {path.name} (drizzle fails on it too); restore the file "
                "or run drizzle-kit drop"
            )
        match = _TAG_RE.fullmatch(tag)
        version, name = (match["version"], match["name"]) if match else (str(position), tag)
        data, text, error = _read_soft(path)
        migrations.append(
            reading.build(
                version=version, name=name, path=path, text=text, checksum=_sha256(data), error=error,
                order_parts=(position,),
            )
        )
    known = {f"{tag}.sql" for tag in tags}
    for entry in _files(reading.folder):
        if entry.name.lower().endswith(".sql") and entry.name not in known:
            _ignored(reading, entry, "it is not listed in meta/_journal.json")
    return migrations


# -- sqitch -----------------------------------------------------------------

_SQITCH_CHANGE_RE = re.compile(
    r"[+-]?(?P<name>[^\s\[@#%:\\]+)(?:\s+\[(?P<deps>[^\]]*)\])?\s+(?P<planned>[0-9]{4}-[0-9]{2}-[0-9]{2}T\S+)(?:\s.*)?"
)
_SQITCH_TAG_RE = re.compile(r"@(?P<tag>[^\s@#]+)\s.*")


def _read_sqitch(reading: _Reading) -> list[Migration]:
    plan_path = reading.folder / "sqitch.plan"
    _, text = _read(plan_path)
    changes: list[tuple[str, int, list[str]]] = []  # (name, plan line, tags planned after it)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):
            continue
        tag = _SQITCH_TAG_RE.fullmatch(line)
        if tag:
            for _, _, tags in changes:
                tags.append("@" + tag["tag"])
            continue
        change = _SQITCH_CHANGE_RE.fullmatch(line)
        if change is None:
            raise SourceError(
                f"{plan_path}:{number}: cannot read this line of the Sqitch plan; expected "
                "'<change> [dependencies] <timestamp> <planner> <email> # note' or '@<tag> ...'"
            )
        changes.append((change["name"], number, []))
    migrations = []
    for index, (name, number, tags) in enumerate(changes):
        script = _sqitch_script(reading.folder, changes, index)
        deploy = reading.folder / "deploy" / f"{script}.sql"
        if not deploy.is_file():
            raise SourceError(
                f"{plan_path}:{number}: change {name!r} has no deploy script deploy/{script}.sql; restore it"
            )
        revert = reading.folder / "revert" / f"{script}.sql"
        verify = reading.folder / "verify" / f"{script}.sql"
        data, deploy_text, error = _read_soft(deploy)
        revert_path = revert if revert.is_file() else None
        _, down_text, down_error = reading.read(revert_path)
        verify_text = _read(verify)[1] if verify.is_file() else None
        migrations.append(
            reading.build(
                version=script, name="", path=deploy, text=deploy_text, checksum=_sha256(data), error=error,
                down_path=revert_path, down_text=reading.down_text(revert_path, down_text), down_error=down_error,
                verify_sql=verify_text if verify_text is not None and _has_sql(verify_text) else None,
                verify_path=verify if verify_text is not None else None,
                order_parts=(index,),
            )
        )
    return migrations


def _sqitch_script(folder: Path, changes: list[tuple[str, int, list[str]]], index: int) -> str:
    """The script name of change *index*: its name, or ``name@tag`` for a version that was reworked later.

    As Sqitch does, the tag is the first tag between this change and its
    rework whose deploy script exists.
    """
    name, _, tags = changes[index]
    later = [i for i in range(index + 1, len(changes)) if changes[i][0] == name]
    if not later:
        return name
    between = [t for t in tags if t not in changes[later[0]][2]]
    for tag in between:
        if (folder / "deploy" / f"{name}{tag}.sql").is_file():
            return f"{name}{tag}"
    return f"{name}{between[0]}" if between else name


# -- prisma -----------------------------------------------------------------


def _read_prisma(reading: _Reading) -> list[Migration]:
    """Prisma Migrate: every sub-folder is a migration, applied in the order of the folder names.

    As prisma-engines' ``list_migrations`` does: every directory, sorted by
    name; its ``migration.sql`` is sent as one simple query (``simple_query``
    in the Postgres flavour's ``apply_migration_script``), so PostgreSQL runs
    a file of several statements as one implicit transaction.  There are no
    down files.
    """
    lock = reading.folder / "migration_lock.toml"
    if lock.is_file():
        provider = _prisma_provider(lock)
        if provider is not None and provider not in ("postgresql", "postgres"):
            raise SourceError(
                f"{lock}: provider = {provider!r}: these Prisma migrations are written for another database, not "
                "PostgreSQL; point the plan at a PostgreSQL migration history"
            )
    migrations = []
    for entry in _listing(reading.folder):
        if not entry.is_dir():
            continue
        path = entry / "migration.sql"
        version, _, name = entry.name.partition("_")
        if not path.is_file():
            # Prisma fails on the folder too (P3015: the migration file could not be found).
            migrations.append(reading.build(
                version=version, name=name, path=path, text="", checksum="", order_text=entry.name,
                error=f"{path}: the migration folder {entry.name} has no migration.sql (Prisma fails on it with "
                      "P3015); restore the file, or remove the empty folder",
            ))
            continue
        data, text, error = _read_soft(path)
        migrations.append(reading.build(
            version=version, name=name, path=path, text=text, checksum=_sha256(data), error=error,
            order_text=entry.name,
        ))
    return migrations


def _prisma_provider(lock: Path) -> str | None:
    """The provider migration_lock.toml names, read as Prisma reads it (the first line starting with provider)."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("provider"):
            return line.removeprefix("provider").strip().lstrip("=").strip().strip('"')
    return None


# -- sqlx -------------------------------------------------------------------

_SQLX_RE = re.compile(r"(?P<version>[^_]+)_(?P<description>.+?)(?P<kind>\.up|\.down)?\.sql")


def _read_sqlx(reading: _Reading) -> list[Migration]:
    """sqlx: ``<version>_<description>.sql`` (or ``.up.sql`` and ``.down.sql``), version an integer > 0.

    As sqlx-core's ``resolve_blocking`` does: files whose name does not split
    into a version and a ``.sql`` description are skipped; a version that is
    no integer is an error; migrations sort by version.  A file whose text
    starts with ``-- no-transaction`` runs outside a transaction.
    """
    ups: dict[int, tuple[str, str, Path]] = {}
    downs: dict[int, Path] = {}
    for entry in _files(reading.folder):
        match = _SQLX_RE.fullmatch(entry.name)
        if match is None:
            if entry.name.lower().endswith(".sql"):
                _ignored(reading, entry, "the name is not <version>_<description>.sql")
            continue
        try:
            number = int(match["version"])
        except ValueError:
            raise SourceError(
                f"{entry}: sqlx refuses a migration whose version {match['version']!r} is not an integer; rename "
                "it to <version>_<description>.sql"
            ) from None
        if match["kind"] == ".down":
            downs[number] = entry
        elif number in ups:
            raise SourceError(
                f"{ups[number][2]} and {entry} have the same version ({number}); every migration needs its own "
                "version: renumber one of them"
            )
        else:
            ups[number] = (match["version"], match["description"], entry)
    for number, orphan in downs.items():
        if number not in ups:
            raise SourceError(f"{orphan}: down migration without its up migration; rename it or add the up migration")
    migrations = []
    for number, (version, description, path) in ups.items():
        data, text, error = _read_soft(path)
        down_path = downs.get(number)
        _, down_text, down_error = reading.read(down_path)
        migrations.append(reading.build(
            version=version, name=description, path=path, text=text, checksum=_sha256(data), error=error,
            down_path=down_path, down_text=reading.down_text(down_path, down_text), down_error=down_error,
            no_transaction=text.startswith("-- no-transaction"),
            down_no_transaction=(down_text or "").startswith("-- no-transaction"),
            order_parts=(number,),
        ))
    return migrations


# -- atlas ------------------------------------------------------------------

_ATLAS_TXMODE = re.compile(r"^--\s*atlas:txmode\s+(?P<mode>\S+)", re.MULTILINE)


def _read_atlas(reading: _Reading) -> list[Migration]:
    """Atlas versioned migrations: every ``*.sql`` file, in the order of the file names, checked against atlas.sum.

    As Atlas's ``LocalDir.Files`` does: ``*.sql`` sorted by name, the version
    is the name up to the first ``_``.  Each file runs in a transaction of
    its own unless it says ``-- atlas:txmode none``.  A folder whose files do
    not match ``atlas.sum`` is what Atlas reports as a checksum error: an
    error finding on the first file that differs (Atlas runs nothing then).
    """
    files = [e for e in _files(reading.folder) if e.name.endswith(".sql")]
    migrations = []
    contents: list[tuple[str, bytes]] = []
    for path in files:
        data, text, error = _read_soft(path)
        contents.append((path.name, data))
        version, _, name = path.name[: -len(".sql")].partition("_")
        mode = _ATLAS_TXMODE.search(text)
        migrations.append(reading.build(
            version=version, name=name, path=path, text=text, checksum=_sha256(data), error=error,
            no_transaction=bool(mode and mode["mode"].lower() == "none"), order_text=path.name,
        ))
    _check_atlas_sum(reading, contents)
    return migrations


def _atlas_hashes(contents: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """Atlas's per-file hashes (``NewHashFile``): one running SHA-256 over each name and its bytes, base64."""
    running = hashlib.sha256()
    out = []
    for name, data in contents:
        running.update(name.encode())
        if re.search(rb"^--\s*atlas:sum\s+ignore\b", data, re.MULTILINE):
            continue
        running.update(data)
        out.append((name, base64.b64encode(running.copy().digest()).decode()))
    return out


def _atlas_total(hashes: Sequence[tuple[str, str]]) -> str:
    """The sum on atlas.sum's first line (``HashFile.Sum``): SHA-256 over every name and hash, base64."""
    total = hashlib.sha256()
    for name, digest in hashes:
        total.update(name.encode())
        total.update(digest.encode())
    return base64.b64encode(total.digest()).decode()


def atlas_sum_text(contents: Mapping[str, bytes]) -> str:
    """The text of ``atlas.sum`` for files *contents* (name → bytes), as ``atlas migrate hash`` writes it."""
    hashes = _atlas_hashes(sorted(contents.items()))
    return f"h1:{_atlas_total(hashes)}\n" + "".join(f"{name} h1:{digest}\n" for name, digest in hashes)


def _check_atlas_sum(reading: _Reading, contents: Sequence[tuple[str, bytes]]) -> None:
    sum_path = reading.folder / "atlas.sum"
    advice = "run `atlas migrate hash` after checking that the change is intended (Atlas refuses the folder until then)"
    if not sum_path.is_file():
        if contents:
            reading.add(sum_path, 1, "layout-atlas-sum", "error",
                        "atlas.sum is missing: Atlas refuses a migration folder without its sum file", advice)
        return
    lines = sum_path.read_text(encoding="utf-8", errors="replace").splitlines()
    recorded: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, digest = line.partition("h1:")
        if sep:
            recorded[name.strip()] = digest.strip()
    actual = _atlas_hashes(contents)
    if lines and lines[0].removeprefix("h1:") == _atlas_total(actual) and recorded == dict(actual):
        return
    for name, digest in actual:
        if recorded.get(name) != digest:
            reading.add(reading.folder / name, 1, "layout-atlas-sum", "error",
                        "checksum mismatch: the file differs from what atlas.sum records (added or edited after "
                        "`atlas migrate hash`)", advice)
            return
    reading.add(sum_path, 1, "layout-atlas-sum", "error",
                "checksum mismatch: atlas.sum lists files the folder does not have, or its first line is wrong", advice)


# -- node-pg-migrate --------------------------------------------------------

# As node-pg-migrate's sqlMigration.ts: the markers anywhere at a line start, the no-transaction comment at the start.
_PGM_MARK = {
    "up": re.compile(r"^\s*--[\s-]*up\s+migration", re.IGNORECASE | re.MULTILINE),
    "down": re.compile(r"^\s*--[\s-]*down\s+migration", re.IGNORECASE | re.MULTILINE),
}
_PGM_NO_TRANSACTION = re.compile(r"^\s*--[\s-]*no\s*transaction", re.IGNORECASE)


def _read_node_pg_migrate(reading: _Reading) -> list[Migration]:
    """node-pg-migrate SQL migrations: ``-- Up Migration`` and ``-- Down Migration`` sections of one file.

    As its legacy SQL loader (the default for ``.sql``) does: the up SQL runs
    from the up marker to the down marker (the whole file without an up
    marker); without a down marker the migration has no down; a file that
    starts with ``-- no transaction`` runs outside a transaction.  Files sort
    by name (``localeCompare``); the name without ``.sql`` is what the
    ``pgmigrations`` table records.
    """
    migrations = []
    for entry in _files(reading.folder):
        if entry.suffix in (".js", ".ts", ".cjs", ".mjs"):
            reading.add(entry, 1, "layout-unsupported", "warning",
                        "a JavaScript migration cannot be rehearsed; the harness skips it",
                        "write the migration in SQL if its schema change matters to the rehearsal")
            continue
        if entry.suffix != ".sql":
            continue
        version, _, name = entry.name[: -len(".sql")].partition("_")
        data, text, error = _read_soft(entry)
        up_at, down_at = (_line_of(text, _PGM_MARK[d].search(text)) for d in ("up", "down"))
        total = text.count("\n") + 1
        up_start = up_at or 1
        up_end = down_at - 1 if down_at and down_at > up_start else total
        up_lines = set(range(up_start, up_end + 1))
        down_text = None
        if down_at:
            down_end = up_at - 1 if up_at and up_at > down_at else total
            down_text = _sections(text, set(range(down_at, down_end + 1)))
        no_transaction = bool(_PGM_NO_TRANSACTION.match(text))
        migrations.append(reading.build(
            version=version, name=name, path=entry, text=_sections(text, up_lines), checksum=_sha256(data),
            error=error, down_path=entry if down_text is not None else None,
            down_text=reading.down_text(entry, down_text) if down_text is not None else None,
            no_transaction=no_transaction, down_no_transaction=no_transaction, order_text=entry.name,
        ))
    return migrations


def _line_of(text: str, match: re.Match[str] | None) -> int | None:
    """The 1-based line of a marker match (the match may start with the blank lines before the marker)."""
    if match is None:
        return None
    start = match.start() + (len(match.group()) - len(match.group().lstrip()))
    return text.count("\n", 0, start) + 1


def _read_alembic(reading: _Reading) -> list[Migration]:
    """Alembic: each revision's upgrade and downgrade as Alembic's offline mode renders them (:mod:`harness._alembic`)."""
    return _alembic.read_alembic(reading.folder, reading.build, reading.down_text)


_READERS = {
    "alembic": _read_alembic,
    "prisma": _read_prisma,
    "sqlx": _read_sqlx,
    "atlas": _read_atlas,
    "node-pg-migrate": _read_node_pg_migrate,
    "native": _read_native,
    "supabase": _read_native,
    "golang-migrate": _read_golang,
    "diesel": _read_diesel,
    "dbmate": _read_dbmate,
    "goose": _read_goose,
    "flyway": _read_flyway,
    "drizzle": _read_drizzle,
    "sqitch": _read_sqitch,
}


# --------------------------------------------------------------------------
# Quirks every foreign layout is checked for


def _common_findings(migration: Migration, layout: str) -> list[LayoutFinding]:
    findings: list[LayoutFinding] = []
    sides: list[tuple[str, Path, str, tuple[Statement, ...], bool, bool]] = []
    if migration.statements:
        sides.append(("up", migration.path, migration.sql, migration.statements, migration.wrapped,
                      migration.no_transaction))
    if migration.down_path is not None and migration.down_sql is not None and migration.down_statements:
        sides.append(("down", migration.down_path, migration.down_sql, migration.down_statements,
                      migration.down_wrapped, migration.down_no_transaction))
    for side, path, text, statements, wrapped, no_transaction in sides:
        # Only goose splits files itself and refuses a last statement without one; the others send the file whole.
        missing = _missing_semicolon(text) if layout == "goose" else None
        if missing is not None:
            findings.append(LayoutFinding(path, missing[0], missing[1], "layout-missing-semicolon", "error",
                                          "the last statement does not end with a semicolon: goose refuses a "
                                          "statement without its semicolon (\"unfinished SQL query\")",
                                          "end the statement with ';'", side))
        reason = _tool_transaction(layout, statements, wrapped, no_transaction)
        if reason is None:
            continue
        for statement in statements:
            if statement.transactional:
                continue
            findings.append(LayoutFinding(
                path, statement.line, statement.column, "layout-transaction", "error",
                f"{_excerpt(statement.sql)!r} cannot run inside a transaction block, and {reason}",
                _TRANSACTION_ADVICE.get(layout, "move the statement into a migration of its own"), side,
            ))
    return findings


_TRANSACTION_ADVICE = {
    "golang-migrate": "move the statement into a migration of its own, with no other statement and no BEGIN/COMMIT",
    "diesel": "put run_in_transaction = false in the migration's metadata.toml (and keep it a migration of its own)",
    "dbmate": "mark the section '-- migrate:up transaction:false'",
    "goose": "add '-- +goose NO TRANSACTION' to the file",
    "flyway": "set executeInTransaction=false in <script>.sql.conf, or move the statement into a migration of its own",
    "drizzle": "drizzle cannot run it: apply this statement outside drizzle (by hand or in a custom migration runner)",
    "sqitch": "remove the script's BEGIN; and COMMIT;",
    "prisma": "move the statement into a migration of its own, with no other statement",
    "sqlx": "start the file with the line -- no-transaction (and keep the statement in a migration of its own)",
    "atlas": "add '-- atlas:txmode none' at the top of the file",
    "node-pg-migrate": "start the file with '-- no transaction' (and keep the statement in a migration of its own)",
    "alembic": "run the operation inside `with op.get_context().autocommit_block():` in the revision",
}


def _tool_transaction(layout: str, statements: Sequence[Statement], wrapped: bool, no_transaction: bool) -> str | None:
    """Why the layout's tool would run these statements inside a transaction block, or None when it would not."""
    if layout == "alembic" and wrapped:
        return "Alembic runs the revision in a transaction (env.py's begin_transaction()) outside an autocommit_block()"
    if wrapped:
        return "the file's own BEGIN; ... COMMIT; runs it in one"
    if layout in ("golang-migrate", "prisma") or (layout in ("sqlx", "node-pg-migrate") and no_transaction):
        if len(statements) > 1:
            return f"{layout} sends the whole file as one query, which PostgreSQL runs as one implicit transaction"
        return None
    if layout == "flyway":
        if not no_transaction and any(s.transactional for s in statements):
            return "Flyway refuses a migration that mixes it with transactional statements"
        return None
    if layout == "drizzle":
        return "drizzle runs every pending migration inside one transaction"
    if no_transaction:
        return None
    return {
        "diesel": "diesel runs each migration in a transaction unless its metadata.toml says run_in_transaction = false",
        "dbmate": "dbmate runs each migration in a transaction unless the section says transaction:false",
        "goose": "goose runs each migration in a transaction unless the file says -- +goose NO TRANSACTION",
        "sqlx": "sqlx runs each migration in a transaction unless its first line is -- no-transaction",
        "atlas": "Atlas runs each file in a transaction unless it says -- atlas:txmode none",
        "node-pg-migrate": "node-pg-migrate runs each migration in a transaction unless the file starts with "
                           "-- no transaction",
    }.get(layout)


def _missing_semicolon(text: str) -> tuple[int, int] | None:
    """Line and column just after the last statement, when no semicolon ends it."""
    try:
        tokens = [t for t in parser.scan(text) if t.name not in _COMMENTS]
    except Exception:  # noqa: BLE001 - the text parsed already; a scanner failure is not worth a crash
        return None
    if not tokens or tokens[-1].name == "ASCII_59":
        return None
    line, column = _LineIndex(text).position(tokens[-1].end)
    return line, column + 1


def _excerpt(sql: str, limit: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
