"""Adopt another tool's migration history: read its history table, and record that state once in ours.

A database migrated by Flyway, golang-migrate, diesel, goose, dbmate, the
Supabase CLI or drizzle keeps its own history table.  This module reads those
tables (:func:`read_foreign_histories`), matches what they say is applied
with the migration files (:func:`match_history`), and copies that state into
``harness.schema_migrations`` with mode ``adopted`` (:func:`adopt`), through
:func:`harness.history.record_applied`, the one writer of our table.  Foreign
tables are only ever read.

A foreign history that golang-migrate left dirty, that records a failed
migration, that names a version no file has, or whose checksum no longer
matches the file, is a blocking problem (:func:`blocking_problems`): adopt
refuses, and apply should refuse too, until someone resolves it with the
tool that wrote it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from . import history
from .errors import GuardError
from .migration import Migration, Order
from .redact import describe_dsn
from .sources import baseline_index

__all__ = [
    "TOOLS",
    "ForeignEntry",
    "ForeignHistory",
    "Match",
    "Adoption",
    "read_foreign_histories",
    "match_history",
    "select_history",
    "plan_adoption",
    "adopt",
    "blocking_problems",
    "flyway_checksum",
    "prisma_checksum_matches",
    "sqlx_checksum",
    "sqitch_script_hash",
    "format_foreign",
]

log = logging.getLogger(__name__)

#: Tools whose history tables are read, and the layout each one's files are in.
TOOLS = {
    "flyway": "flyway",
    "golang-migrate": "golang-migrate",
    "diesel": "diesel",
    "goose": "goose",
    "dbmate": "dbmate",
    "supabase": "supabase",
    "drizzle": "drizzle",
    "prisma": "prisma",
    "sqlx": "sqlx",
    "atlas": "atlas",
    "node-pg-migrate": "node-pg-migrate",
    "alembic": "alembic",
    "sqitch": "sqitch",
}

# Which tools' histories fit a folder layout ("native" is the Supabase CLI's layout).
_TOOLS_FOR_LAYOUT = {
    "native": ("supabase",),
    "supabase": ("supabase",),
    "golang-migrate": ("golang-migrate",),
    "diesel": ("diesel",),
    "dbmate": ("dbmate",),
    "goose": ("goose",),
    "flyway": ("flyway",),
    "drizzle": ("drizzle",),
    "sqitch": ("sqitch",),
    "prisma": ("prisma",),
    "sqlx": ("sqlx",),
    "atlas": ("atlas",),
    "node-pg-migrate": ("node-pg-migrate",),
    "alembic": ("alembic",),
}

_TABLE_NAMES = ["flyway_schema_history", "schema_migrations", "__diesel_schema_migrations", "goose_db_version",
                "__drizzle_migrations", "_prisma_migrations", "_sqlx_migrations", "atlas_schema_revisions",
                "pgmigrations", "alembic_version", "changes"]


@dataclass(frozen=True)
class ForeignEntry:
    """One migration a foreign history says is applied (or failed)."""

    version: str | None  # as the tool records it; None for Flyway repeatables and drizzle (hash-based)
    name: str | None = None  # description, script or name, where the tool keeps one
    checksum: str | None = None  # Flyway's CRC32 or drizzle's sha256, where the tool keeps one
    applied_at: datetime | None = None
    success: bool = True
    project: str | None = None  # Sqitch: the project the change belongs to (one registry holds several)

    @property
    def label(self) -> str:
        """How the entry is shown: its version, else its name, else its checksum."""
        return self.version or self.name or (self.checksum or "?")[:12]

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready values."""
        return {
            "version": self.version,
            "name": self.name,
            "checksum": self.checksum,
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
            "success": self.success,
        }


@dataclass(frozen=True)
class ForeignHistory:
    """What one foreign history table says.

    ``entries`` lists applied (and failed) migrations one by one; ``up_to``
    says every migration up to that version is applied (golang-migrate's one
    row, Flyway's baseline).  ``dirty`` is golang-migrate's flag: a migration
    failed half-way.
    """

    tool: str
    table: str  # schema-qualified
    entries: tuple[ForeignEntry, ...] = ()
    up_to: str | None = None
    dirty: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The history as JSON-ready values."""
        return {
            "tool": self.tool,
            "table": self.table,
            "up_to": self.up_to,
            "dirty": self.dirty,
            "entries": [e.to_dict() for e in self.entries],
        }


# How each tool's own CLI marks a failed migration resolved.
_RESOLVE_FAILED = {
    "flyway": "remove the failed row (flyway repair)",
    "prisma": "mark it with `prisma migrate resolve --rolled-back <name>` or `--applied <name>`",
    "sqlx": "delete its row from _sqlx_migrations (sqlx refuses a partly applied migration)",
    "atlas": "resolve it with `atlas migrate set` (Atlas refuses to go on from a partly applied revision)",
}


@dataclass(frozen=True)
class Match:
    """A foreign history matched with the migration files."""

    history: ForeignHistory
    applied: tuple[Migration, ...] = ()  # files the history says are applied, in file order
    unknown: tuple[str, ...] = ()  # versions (or hashes) the history names that no file has
    changed: tuple[tuple[ForeignEntry, Migration], ...] = ()  # recorded checksum differs from the file
    failed: tuple[ForeignEntry, ...] = ()

    @property
    def problems(self) -> list[str]:
        """What blocks adoption and apply, each with what to do."""
        h = self.history
        out = []
        if h.dirty:
            out.append(
                f"{h.table} ({h.tool}) is dirty at version {h.up_to}: a migration failed half-way. Check the "
                f"database by hand, then run `migrate force <version>` to mark the state it is really in"
            )
        for entry in self.failed:
            out.append(
                f"{h.table} ({h.tool}) records migration {entry.label} as failed (started, never finished); fix "
                f"the database, then {_RESOLVE_FAILED.get(h.tool, 'remove the failed row')}"
            )
        for label in self.unknown:
            out.append(
                f"{h.table} ({h.tool}) names migration {label}, which no file in the migrations folder has; restore "
                "the file (or, for a hash-based history, the file exactly as it was applied)"
            )
        for entry, migration in self.changed:
            out.append(
                f"{migration.path}: changed since {h.tool} applied it (recorded checksum {entry.checksum}); restore "
                "the file as it was applied and put the change in a new migration"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The match as JSON-ready values."""
        return {
            **self.history.to_dict(),
            "applied": [m.id for m in self.applied],
            "unknown": list(self.unknown),
            "changed": [m.id for _, m in self.changed],
            "failed": [e.label for e in self.failed],
            "problems": self.problems,
        }


@dataclass(frozen=True)
class Adoption:
    """What adopting would record, what is recorded already, and what blocks it."""

    source: Match | None
    to_record: tuple[Migration, ...] = ()
    already: tuple[Migration, ...] = ()
    problems: tuple[str, ...] = ()
    baseline: tuple[Migration, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing blocks adoption."""
        return not self.problems


# --------------------------------------------------------------------------
# Reading


def read_foreign_histories(conn: psycopg.Connection[Any]) -> list[ForeignHistory]:
    """Every foreign history table on the database, in any schema but ``harness``, read-only."""
    query = """
SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum),
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
GROUP BY n.nspname, c.relname
ORDER BY n.nspname, c.relname"""
    found: list[ForeignHistory] = []
    for schema, table, names, types in conn.execute(query, [_TABLE_NAMES, history.SCHEMA]).fetchall():
        columns = dict(zip(names, types))
        tool = _tool_of(schema, table, columns)
        if tool is None:
            continue
        qualified = sql.Identifier(schema, table)
        found.append(_READERS[tool](conn, qualified, f"{schema}.{table}", columns))
    return found


def _tool_of(schema: str, table: str, columns: dict[str, str]) -> str | None:
    if table == history.TABLE and {"checksum", "applied_by", "mode", "success"} <= set(columns):
        return None  # ours: a fleet tenant's history (harness_<tenant>.schema_migrations), not dbmate's
    if table == "flyway_schema_history" and {"installed_rank", "version", "script", "success"} <= set(columns):
        return "flyway"
    if table == "__diesel_schema_migrations" and {"version", "run_on"} <= set(columns):
        return "diesel"
    if table == "goose_db_version" and {"version_id", "is_applied"} <= set(columns):
        return "goose"
    if table == "__drizzle_migrations" and {"hash", "created_at"} <= set(columns):
        return "drizzle"
    if table == "_prisma_migrations" and {"migration_name", "checksum", "finished_at", "rolled_back_at"} <= set(columns):
        return "prisma"
    if table == "_sqlx_migrations" and {"version", "success", "checksum"} <= set(columns):
        return "sqlx"
    if table == "atlas_schema_revisions" and {"version", "applied", "total"} <= set(columns):
        return "atlas"
    if table == "pgmigrations" and {"name", "run_on"} <= set(columns):
        return "node-pg-migrate"
    # Sqitch's registry (schema "sqitch" unless configured otherwise): the changes deployed now.
    if table == "changes" and {"change_id", "script_hash", "change", "project", "committed_at"} <= set(columns):
        return "sqitch"
    if table == "alembic_version" and "version_num" in columns:
        return "alembic"
    if table == "schema_migrations" and "version" in columns:
        if "dirty" in columns and columns["version"] == "bigint":
            return "golang-migrate"
        if schema == "supabase_migrations":
            return "supabase"
        if "dirty" not in columns:
            return "dbmate"  # also Rails' table, which dbmate shares on purpose
    return None


def _read_flyway(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(
        sql.SQL(
            "SELECT version, description, type, script, checksum, installed_on, success FROM {} "
            "ORDER BY installed_rank"
        ).format(table)
    ).fetchall()
    entries: dict[tuple[str, str], ForeignEntry] = {}
    baseline: str | None = None
    for version, description, kind, script, crc, installed_on, success in rows:
        kind = (kind or "").upper()
        if kind == "SCHEMA":
            continue
        if kind == "BASELINE":
            baseline = version
            continue
        key = ("V", version) if version is not None else ("R", _basename(script))
        if kind in ("DELETE", "UNDO_SQL"):
            entries.pop(key, None)  # repaired away, or undone
            continue
        entries[key] = ForeignEntry(
            version=version,
            name=_basename(script) if version is None else description,
            checksum=None if crc is None else str(crc),
            applied_at=installed_on,
            success=bool(success),
        )
    return ForeignHistory("flyway", name, tuple(entries.values()), up_to=baseline)


def _basename(script: str | None) -> str:
    return (script or "").replace("\\", "/").rsplit("/", 1)[-1]


def _read_golang(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT version, dirty FROM {} ORDER BY version DESC").format(table)).fetchall()
    if not rows:
        return ForeignHistory("golang-migrate", name)
    version, dirty = rows[0]
    # -1 is golang-migrate's "no version" (every migration reverted, or a failed first one).
    return ForeignHistory("golang-migrate", name, up_to=str(version) if version >= 0 else None, dirty=bool(dirty))


def _read_diesel(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT version, run_on FROM {} ORDER BY version").format(table)).fetchall()
    return ForeignHistory("diesel", name, tuple(ForeignEntry(version=v, applied_at=at) for v, at in rows))


def _read_goose(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT version_id, is_applied, tstamp FROM {} ORDER BY id").format(table)).fetchall()
    latest: dict[int, tuple[bool, datetime | None]] = {}
    for version, applied, at in rows:
        if version == 0:
            continue  # the row goose writes when it creates the table
        latest.pop(version, None)  # keep the order of the latest row
        latest[version] = (bool(applied), at)
    entries = tuple(ForeignEntry(version=str(v), applied_at=at) for v, (applied, at) in latest.items() if applied)
    return ForeignHistory("goose", name, tuple(sorted(entries, key=lambda e: int(e.version or 0))))


def _read_supabase(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    name_column = sql.Identifier("name") if "name" in columns else sql.SQL("NULL")
    rows = conn.execute(sql.SQL("SELECT version, {} FROM {} ORDER BY version").format(name_column, table)).fetchall()
    return ForeignHistory("supabase", name, tuple(ForeignEntry(version=v, name=n) for v, n in rows))


def _read_dbmate(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT version::text FROM {} ORDER BY version").format(table)).fetchall()
    return ForeignHistory("dbmate", name, tuple(ForeignEntry(version=v) for (v,) in rows))


def _read_drizzle(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT hash, created_at FROM {} ORDER BY id").format(table)).fetchall()
    return ForeignHistory("drizzle", name, tuple(ForeignEntry(version=None, checksum=h) for h, _ in rows))


def _read_prisma(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    # As Prisma: a rolled-back row does not count; a row that started and never finished is a failed migration.
    rows = conn.execute(
        sql.SQL("SELECT migration_name, checksum, started_at, finished_at, rolled_back_at FROM {} "
                "ORDER BY started_at, migration_name").format(table)
    ).fetchall()
    entries = [
        ForeignEntry(version=None, name=migration, checksum=checksum, applied_at=finished or started,
                     success=finished is not None)
        for migration, checksum, started, finished, rolled_back in rows
        if rolled_back is None
    ]
    return ForeignHistory("prisma", name, tuple(entries))


def _read_sqlx(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(
        sql.SQL("SELECT version, description, encode(checksum, 'hex'), installed_on, success FROM {} "
                "ORDER BY version").format(table)
    ).fetchall()
    return ForeignHistory("sqlx", name, tuple(
        ForeignEntry(version=str(v), name=d, checksum=c, applied_at=at, success=bool(ok)) for v, d, c, at, ok in rows
    ))


def _read_atlas(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    # A revision whose statements did not all run (applied < total), or that recorded an error, is a failed one.
    error = sql.Identifier("error") if "error" in columns else sql.SQL("NULL")
    rows = conn.execute(
        sql.SQL("SELECT version, description, applied, total, executed_at, {} FROM {} ORDER BY version").format(
            error, table)
    ).fetchall()
    return ForeignHistory("atlas", name, tuple(
        ForeignEntry(version=v, name=d, applied_at=at, success=applied >= total and not err)
        for v, d, applied, total, at, err in rows
    ))


def _read_node_pg_migrate(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    rows = conn.execute(sql.SQL("SELECT name, run_on FROM {} ORDER BY run_on, id").format(table)).fetchall()
    return ForeignHistory("node-pg-migrate", name, tuple(ForeignEntry(version=None, name=n, applied_at=at)
                                                         for n, at in rows))


def _read_alembic(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    # One row per head (HeadMaintainer in alembic/runtime/migration.py): every ancestor of a head is applied.
    rows = conn.execute(sql.SQL("SELECT version_num FROM {} ORDER BY version_num").format(table)).fetchall()
    return ForeignHistory("alembic", name, tuple(ForeignEntry(version=v) for (v,) in rows))


def _read_sqitch(conn: Any, table: sql.Composable, name: str, columns: dict[str, str]) -> ForeignHistory:
    # A row per change deployed now (a revert deletes it; a failed deploy never writes one).
    rows = conn.execute(
        sql.SQL("SELECT change, script_hash, committed_at, project FROM {} ORDER BY committed_at, change_id").format(
            table)
    ).fetchall()
    return ForeignHistory("sqitch", name, tuple(
        ForeignEntry(version=None, name=change, checksum=script_hash, applied_at=at, project=project)
        for change, script_hash, at, project in rows
    ))


_READERS = {
    "sqitch": _read_sqitch,
    "alembic": _read_alembic,
    "prisma": _read_prisma,
    "sqlx": _read_sqlx,
    "atlas": _read_atlas,
    "node-pg-migrate": _read_node_pg_migrate,
    "flyway": _read_flyway,
    "golang-migrate": _read_golang,
    "diesel": _read_diesel,
    "goose": _read_goose,
    "supabase": _read_supabase,
    "dbmate": _read_dbmate,
    "drizzle": _read_drizzle,
}


# --------------------------------------------------------------------------
# Matching (no database)


def flyway_checksum(data: bytes) -> int:
    """The checksum Flyway records for a SQL file: CRC-32 over its lines without line endings, as a signed int.

    Flyway reads the file line by line (Java's ``readLine``: ``\\n``, ``\\r``
    and ``\\r\\n`` end a line), drops a byte-order mark, and feeds each line's
    UTF-8 bytes to one CRC-32, so the checksum ignores line endings.
    """
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # a final line ending does not start another line
    crc = 0
    for line in lines:
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def _version_parts(version: str) -> Order | None:
    try:
        return Order(tuple(int(p) for p in re.split(r"[._]", version)))
    except ValueError:
        return None


def match_history(foreign: ForeignHistory, migrations: Sequence[Migration]) -> Match:
    """Which *migrations* the foreign history says are applied, and what it names that does not fit the files."""
    if foreign.tool == "alembic":
        return _match_heads(foreign, migrations)
    versioned = [m for m in migrations if not m.repeatable]
    applied: list[Migration] = []
    unknown: list[str] = []
    changed: list[tuple[ForeignEntry, Migration]] = []
    failed: list[ForeignEntry] = []
    if foreign.up_to is not None:
        limit = _version_parts(foreign.up_to)
        if foreign.tool == "golang-migrate" and not any(m.order == limit for m in versioned):
            unknown.append(foreign.up_to)
        if limit is not None:
            applied += [m for m in versioned if m.order <= limit]
    project = _sqitch_project(migrations) if foreign.tool == "sqitch" else None
    for entry in foreign.entries:
        if project is not None and entry.project != project:
            continue  # another project's change in the same Sqitch registry
        if not entry.success:
            failed.append(entry)
            continue
        found = _find(foreign.tool, entry, migrations)
        if found is None:
            if foreign.tool == "flyway" and entry.version is None:
                continue  # a repeatable script that no longer exists: Flyway ignores it too
            unknown.append(entry.label)
            continue
        if foreign.tool in ("prisma", "sqlx") and entry.checksum and not _checksum_matches(foreign.tool, found,
                                                                                           entry.checksum):
            changed.append((entry, found))
            continue
        if foreign.tool == "flyway" and entry.checksum is not None:
            if str(flyway_checksum(found.path.read_bytes())) != entry.checksum:
                if found.repeatable:
                    continue  # changed since: Flyway re-applies it, so it is pending
                changed.append((entry, found))
                continue
        applied.append(found)
    chosen = {m.id for m in applied}
    return Match(
        history=foreign,
        applied=tuple(m for m in migrations if m.id in chosen),
        unknown=tuple(unknown),
        changed=tuple(changed),
        failed=tuple(failed),
    )


def _match_heads(foreign: ForeignHistory, migrations: Sequence[Migration]) -> Match:
    """Alembic's heads: each recorded head and everything it requires (:attr:`Migration.requires`) is applied."""
    by_version = {m.version: m for m in migrations}
    unknown: list[str] = []
    applied: set[str] = set()
    pending = []
    for entry in foreign.entries:
        if entry.version in by_version:
            pending.append(entry.version)
        else:
            unknown.append(entry.label)
    while pending:
        version = pending.pop()
        if version in applied or version not in by_version:
            continue
        applied.add(version)
        pending += by_version[version].requires
    return Match(history=foreign, applied=tuple(m for m in migrations if m.version in applied),
                 unknown=tuple(unknown))


def prisma_checksum_matches(data: bytes, recorded: str) -> bool:
    """Whether a migration.sql matches the checksum ``_prisma_migrations`` recorded, as Prisma decides it.

    Prisma (``script_matches_checksum`` in prisma-engines) accepts the
    SHA-256 of the text as it is, with CRLF turned into LF, or LF into CRLF,
    and also the hex string an old version wrote without zero-padding.
    """
    text = data.decode("utf-8", errors="replace")
    for variant in (text, text.replace("\r\n", "\n"), text.replace("\n", "\r\n")):
        digest = hashlib.sha256(variant.encode("utf-8")).digest()
        shown = digest.hex() if len(recorded) == 64 else "".join(f"{b:x}" for b in digest)
        if shown == recorded:
            return True
    return False


def sqlx_checksum(data: bytes) -> str:
    """The checksum sqlx records in ``_sqlx_migrations``: SHA-384 of the file's text, as hex."""
    return hashlib.sha384(data.decode("utf-8", errors="replace").encode("utf-8")).hexdigest()


def _checksum_matches(tool: str, migration: Migration, recorded: str) -> bool:
    try:
        data = migration.path.read_bytes()
    except OSError:
        return False
    if tool == "prisma":
        return prisma_checksum_matches(data, recorded)
    return sqlx_checksum(data) == recorded.lower()


def sqitch_script_hash(data: bytes) -> str:
    """The ``script_hash`` Sqitch records for a change: SHA-1 of its deploy script's bytes."""
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - Sqitch's own identifier, not a security measure


def _find(tool: str, entry: ForeignEntry, migrations: Sequence[Migration]) -> Migration | None:
    if tool == "sqitch":
        return _find_sqitch(entry, migrations)
    for m in migrations:
        if tool == "prisma":
            if m.path.parent.name == entry.name:
                return m
        elif tool == "node-pg-migrate":
            if m.path.stem == entry.name:
                return m
        elif tool == "drizzle":
            if m.checksum == entry.checksum:
                return m
        elif tool == "flyway":
            if entry.version is None:
                if m.repeatable and m.path.name == entry.name:
                    return m
            elif not m.repeatable and m.order == _version_parts(entry.version):
                return m
        elif tool == "diesel":
            if m.version.replace("-", "") == entry.version:
                return m
        elif entry.version is not None and (
            m.version == entry.version
            or (m.version.isdigit() and entry.version.isdigit() and int(m.version) == int(entry.version))
        ):
            return m
    return None


def _sqitch_project(migrations: Sequence[Migration]) -> str | None:
    """The ``%project=`` of the sqitch.plan the migrations were read from (deploy scripts live in deploy/)."""
    for migration in migrations[:1]:
        try:
            text = (migration.path.parent.parent / "sqitch.plan").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("%project="):
                return line.removeprefix("%project=").strip()
    return None


def _find_sqitch(entry: ForeignEntry, migrations: Sequence[Migration]) -> Migration | None:
    """The deploy script a registry row names: by its script hash (a reworked change has one per version),
    else, for a registry of an old Sqitch without hashes, the latest script of that change name."""
    named = [m for m in migrations if m.version.split("@", 1)[0] == entry.name]
    if entry.checksum:
        for m in named:
            try:
                if sqitch_script_hash(m.path.read_bytes()) == entry.checksum:
                    return m
            except OSError:
                continue
        return None
    return next((m for m in named if "@" not in m.version), named[-1] if named else None)


def select_history(
    histories: Sequence[ForeignHistory], layout: str | None
) -> tuple[ForeignHistory | None, list[str]]:
    """The foreign history to adopt for a folder *layout*, or ``None``; and problems choosing one."""
    fitting = list(histories)
    if layout and layout != "auto":
        fitting = [h for h in histories if h.tool in _TOOLS_FOR_LAYOUT.get(layout, ())]
    if len(fitting) > 1:
        names = ", ".join(f"{h.table} ({h.tool})" for h in fitting)
        return None, [
            f"several foreign history tables could be adopted: {names}; name the layout in the plan (layout: ...) "
            "so the harness knows which tool wrote the migrations"
        ]
    return (fitting[0] if fitting else None), []


def blocking_problems(
    conn: psycopg.Connection[Any], migrations: Sequence[Migration], *, layout: str | None = None
) -> list[str]:
    """What in a foreign history blocks apply until resolved: dirty, failed, unknown or changed migrations.

    *layout* (the folder's, as loaded) picks the tool whose history matters;
    without it every foreign history on the database is checked.
    """
    problems: list[str] = []
    histories = read_foreign_histories(conn)
    if layout and layout != "auto":
        histories = [h for h in histories if h.tool in _TOOLS_FOR_LAYOUT.get(layout, ())]
    for foreign in histories:
        problems += match_history(foreign, migrations).problems
    return problems


def plan_adoption(
    conn: psycopg.Connection[Any],
    migrations: Sequence[Migration],
    *,
    layout: str | None = None,
    baseline: str | None = None,
) -> Adoption:
    """What :func:`adopt` would record: the foreign history's applied migrations and the baseline, minus ours."""
    layout = layout or (migrations[0].layout if migrations else None)
    chosen, problems = select_history(read_foreign_histories(conn), layout)
    match = match_history(chosen, migrations) if chosen is not None else None
    if match is not None:
        problems += match.problems
    base = tuple(migrations[: baseline_index(migrations, baseline) + 1])
    wanted = {m.id for m in base} | {m.id for m in (match.applied if match else ())}
    recorded = {row.version for row in history.read_applied(conn)}
    ordered = [m for m in migrations if m.id in wanted]
    return Adoption(
        source=match,
        to_record=tuple(m for m in ordered if m.version not in recorded),
        already=tuple(m for m in ordered if m.version in recorded),
        problems=tuple(problems),
        baseline=base,
    )


def adopt(
    dsn: str,
    migrations: Sequence[Migration],
    *,
    layout: str | None = None,
    baseline: str | None = None,
    dry_run: bool = False,
    lock_timeout: float = 60.0,
) -> Adoption:
    """Record in ``harness.schema_migrations`` (mode ``adopted``) what the foreign history says is applied.

    Holds the run lock, so no apply runs meanwhile; records everything in one
    transaction; records nothing that is already recorded, so a second adopt
    is a no-op.  With *dry_run* nothing is written.  Raises
    :class:`~harness.errors.GuardError` listing the problems when the foreign
    history is dirty, records a failure, names versions with no file or
    checksums that no longer match.
    """
    where = describe_dsn(dsn)
    with history.run_lock(dsn, timeout=lock_timeout), psycopg.connect(dsn, autocommit=True) as conn:
        adoption = plan_adoption(conn, migrations, layout=layout, baseline=baseline)
        if adoption.problems:
            raise GuardError(
                f"cannot adopt the migration history of {where}:\n  - " + "\n  - ".join(adoption.problems)
            )
        if dry_run or not adoption.to_record:
            return adoption
        history.ensure_table(conn)
        with conn.transaction():
            for migration in adoption.to_record:
                history.record_applied(conn, migration, execution_ms=0, mode="adopted")
    log.info("adopted %d migrations on %s", len(adoption.to_record), where)
    return adoption


# --------------------------------------------------------------------------
# Reports


def format_foreign(matches: Sequence[Match], recorded: Collection[str] = ()) -> str:
    """A section per foreign history for ``harness status``: what it says is applied, and its problems.

    *recorded* holds the ids of the migrations ``harness.schema_migrations``
    has: when it has every one a history lists, that history is adopted
    already and ``harness adopt`` is not advised.
    """
    out: list[str] = []
    pending = False
    for match in matches:
        adopted = all(m.id in recorded for m in match.applied)
        pending = pending or not adopted or bool(match.problems)
        h = match.history
        head = f"Foreign history {h.table} ({h.tool}): {len(match.applied)} applied"
        if h.up_to is not None:
            head += f" (up to version {h.up_to}{', DIRTY' if h.dirty else ''})"
        out.append(head)
        for m in match.applied:
            out.append(f"  {m.id}")
        for problem in match.problems:
            out.append(f"  PROBLEM: {problem}")
        if adopted and not match.problems:
            out.append("  adopted: harness.schema_migrations records every migration it lists")
        out.append("")
    if out and pending:
        out.append("Run `harness adopt PLAN` to record the foreign history in harness.schema_migrations.")
    return "\n".join(out).rstrip("\n")
