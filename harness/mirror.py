"""Keep another tool's history table in step with apply: the one writer of foreign history tables.

A team that adopts the harness often keeps its old tool around for a while
(its CLI for status or an emergency rollback, services that read its table).
With ``history: {mirror: <tool>}`` in the plan, apply writes that tool's
history row for every migration it records, and deletes (or marks) it for
every migration it rolls back, in the same transaction as the migration and
its row in ``harness.schema_migrations`` (see docs/layouts.md, "Keeping the
other tool in step").  Each tool's row is written the way the tool writes it
itself, with the checksum it computes, so its own status command sees exactly
what it would have done.

:mod:`harness.history` stays the one writer of ``harness.schema_migrations``;
this module is the one writer of foreign tables; :mod:`harness.adopt` only
reads them.  Each tool is a small pair of functions (record, remove) in
:data:`TOOLS`; a missing table is created as the tool creates it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .adopt import flyway_checksum, sqlx_checksum
from .errors import ConfigError, GuardError
from .migration import Migration
from .plan import MIRROR_TOOLS
from .snapshot import Snapshot

__all__ = ["TOOLS", "Mirror", "mirror_for", "table_sql"]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class _Write:
    """What a writer gets: the row's migration, the folder's migrations in file order, and the run's numbers."""

    migration: Migration
    migrations: tuple[Migration, ...]
    folder: Path
    execution_ms: int = 0
    execution_ns: int = 0


@dataclass(frozen=True)
class _Tool:
    """One tool's history table: where it is, how the tool creates it, and the writer pair."""

    table: str
    schema: str | None  # a fixed schema (drizzle, Supabase); None: where the search_path finds it, else current_schema()
    create: tuple[str, ...]  # the tool's own DDL; {table} is the qualified table, {schema} its schema
    columns: tuple[str, ...]  # what the writers need the table to have
    record: Callable[[Conn, sql.Composable, _Write], None]
    remove: Callable[[Conn, sql.Composable, _Write], None]
    owns_schema: bool = False  # the schema is the tool's own (kept out of schema comparisons with the table)
    add_columns: tuple[str, ...] = ()  # DDL the tool runs every time to bring an older table up to date
    added: tuple[str, ...] = ()  # the columns that DDL adds


def _int_version(migration: Migration) -> int:
    try:
        return int(migration.version)
    except ValueError:
        raise ConfigError(
            f"{migration.path}: version {migration.version!r} is not an integer, which this tool's history table "
            "needs (it stores versions as bigint)"
        ) from None


# -- diesel: __diesel_schema_migrations (diesel_migrations' setup_migration_table.sql) ----------------------------


def _record_diesel(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # diesel's version is the folder name's prefix without the dashes; run_on takes its default.
    conn.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s) ON CONFLICT (version) DO NOTHING").format(table),
                 [w.migration.version.replace("-", "")])


def _remove_diesel(conn: Conn, table: sql.Composable, w: _Write) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(table), [w.migration.version.replace("-", "")])


# -- golang-migrate: schema_migrations(version bigint, dirty boolean), one row (database/postgres SetVersion) --------


def _set_golang_version(conn: Conn, table: sql.Composable, version: int | None) -> None:
    # SetVersion: TRUNCATE, then one row unless the version is nil (-1) and clean.
    conn.execute(sql.SQL("TRUNCATE {}").format(table))
    if version is not None:
        conn.execute(sql.SQL("INSERT INTO {} (version, dirty) VALUES (%s, false)").format(table), [version])


def _golang_current(conn: Conn, table: sql.Composable) -> int | None:
    row = conn.execute(sql.SQL("SELECT version FROM {} ORDER BY version DESC LIMIT 1").format(table)).fetchone()
    return None if row is None or row[0] < 0 else int(row[0])


def _record_golang(conn: Conn, table: sql.Composable, w: _Write) -> None:
    version = _int_version(w.migration)
    current = _golang_current(conn, table)
    if current is not None and current > version:
        return  # one row says "everything up to it": an older migration applied late changes nothing there
    _set_golang_version(conn, table, version)


def _remove_golang(conn: Conn, table: sql.Composable, w: _Write) -> None:
    version = _int_version(w.migration)
    if _golang_current(conn, table) != version:
        return  # not the version the row names: golang-migrate's down steps from the current one only
    versioned = [m for m in w.migrations if not m.repeatable]
    index = next((i for i, m in enumerate(versioned) if m.version == w.migration.version), 0)
    # As `migrate down 1`: the version before it in file order, or nil (an empty table) before the first.
    _set_golang_version(conn, table, _int_version(versioned[index - 1]) if index > 0 else None)


# -- goose: goose_db_version (internal/dialect/dialectquery/postgres.go) ------------------------------------------


def _record_goose(conn: Conn, table: sql.Composable, w: _Write) -> None:
    version = _int_version(w.migration)
    conn.execute(
        sql.SQL("INSERT INTO {0} (version_id, is_applied) SELECT %s, true "
                "WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE version_id = %s AND is_applied)").format(table),
        [version, version],
    )


def _remove_goose(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # goose v3 deletes the version's rows on down (DeleteVersion); older versions inserted is_applied = false.
    conn.execute(sql.SQL("DELETE FROM {} WHERE version_id = %s").format(table), [_int_version(w.migration)])


# -- dbmate: schema_migrations(version varchar(128) primary key) (pkg/driver/postgres) ------------------------------


def _record_dbmate(conn: Conn, table: sql.Composable, w: _Write) -> None:
    conn.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s) ON CONFLICT (version) DO NOTHING").format(table),
                 [w.migration.version])


def _remove_dbmate(conn: Conn, table: sql.Composable, w: _Write) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(table), [w.migration.version])


# -- Flyway: flyway_schema_history (createMetaDataTable.sql for PostgreSQL) ---------------------------------------


def _flyway_description(path: Path) -> str:
    # V1_1__add_users.sql -> "add users": Flyway shows the part after "__" with underscores as spaces.
    stem = path.name[: -len(".sql")] if path.name.lower().endswith(".sql") else path.name
    return stem.split("__", 1)[-1].replace("_", " ")


def _flyway_script(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def _insert_flyway(conn: Conn, table: sql.Composable, version: str | None, path: Path, kind: str, w: _Write) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {0} (installed_rank, version, description, type, script, checksum, installed_by, "
            "execution_time, success) "
            "SELECT coalesce(max(installed_rank), 0) + 1, %s, %s, %s, %s, %s, current_user, %s, true FROM {0}"
        ).format(table),
        [version, _flyway_description(path), kind, _flyway_script(path, w.folder),
         flyway_checksum(path.read_bytes()), w.execution_ms],
    )


def _record_flyway(conn: Conn, table: sql.Composable, w: _Write) -> None:
    m = w.migration
    if not m.repeatable:
        latest = conn.execute(
            sql.SQL("SELECT type, success FROM {} WHERE version = %s ORDER BY installed_rank DESC LIMIT 1").format(
                table), [m.version]
        ).fetchone()
        if latest is not None and latest[1] and str(latest[0]).upper() not in ("UNDO_SQL", "DELETE"):
            return  # recorded already (adopted, or recorded as the baseline)
    # A repeatable gets a row each time it runs, as Flyway records it.
    _insert_flyway(conn, table, None if m.repeatable else m.version, m.path, "SQL", w)


def _remove_flyway(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # Flyway Teams' `undo` appends an UNDO_SQL row for the U script; the history keeps the SQL row before it.
    m = w.migration
    if m.down_path is None or m.repeatable:
        return
    _insert_flyway(conn, table, m.version, m.down_path, "UNDO_SQL", w)


# -- Supabase CLI: supabase_migrations.schema_migrations (pkg/migration/history.go) ---------------------------------


def _supabase_statements(migration: Migration) -> list[str]:
    """The statements as the CLI stores them (parser.SplitAndTrim): the text from one semicolon to the next,
    leading comments included, without the semicolon, trimmed."""
    text = migration.sql
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    out: list[str] = []
    cut = 0
    for statement in migration.statements:
        begin = starts[statement.line - 1] + statement.column - 1 if statement.line <= len(starts) else -1
        if text[begin:begin + len(statement.sql)] != statement.sql:
            out.append(statement.sql.strip())  # not where the parser said (never seen): the statement alone
            continue
        end = text.find(";", begin + len(statement.sql))
        end = len(text) if end < 0 else end + 1
        token = text[cut:end].rstrip(";").strip()
        cut = end
        if token:
            out.append(token)
    rest = text[cut:].rstrip(";").strip()
    if rest:
        out.append(rest)  # the CLI keeps a last token without a semicolon (a trailing comment) too
    return out


def _record_supabase(conn: Conn, table: sql.Composable, w: _Write) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (version, name, statements) VALUES (%s, %s, %s) "
                "ON CONFLICT (version) DO NOTHING").format(table),
        [w.migration.version, w.migration.name, _supabase_statements(w.migration)],
    )


def _remove_supabase(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # What `supabase migration repair --status reverted` does.
    conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(table), [w.migration.version])


# -- drizzle: drizzle.__drizzle_migrations (drizzle-orm pg-core dialect migrate()) -------------------------------


def _drizzle_when(migration: Migration) -> int:
    """The journal's ``when`` of the migration's entry: what drizzle records as ``created_at``."""
    journal = migration.path.parent / "meta" / "_journal.json"
    try:
        entries = json.loads(journal.read_text(encoding="utf-8"))["entries"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{journal}: cannot read drizzle's journal ({exc})") from None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("tag") == migration.path.stem:
            return int(entry["when"])
    raise ConfigError(f"{journal}: no entry with tag {migration.path.stem!r}; drizzle could not record it either")


def _record_drizzle(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # drizzle's hash is the sha256 hex of the file's text: the migration's checksum (of the bytes as written).
    conn.execute(
        sql.SQL("INSERT INTO {0} (hash, created_at) SELECT %s, %s "
                "WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE hash = %s)").format(table),
        [w.migration.checksum, _drizzle_when(w.migration), w.migration.checksum],
    )


def _remove_drizzle(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # drizzle has no down; its migrator runs every journal entry newer than the last row's created_at,
    # so deleting the row is what makes drizzle see the migration as pending again.
    conn.execute(sql.SQL("DELETE FROM {} WHERE hash = %s").format(table), [w.migration.checksum])


# -- Prisma: _prisma_migrations (prisma-engines, sql-migration-connector) -----------------------------------------


def _record_prisma(conn: Conn, table: sql.Composable, w: _Write) -> None:
    name = w.migration.path.parent.name
    conn.execute(
        sql.SQL(
            "INSERT INTO {0} (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, "
            "applied_steps_count) "
            "SELECT %s, %s, clock_timestamp(), %s, NULL, NULL, now(), 1 "
            "WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE migration_name = %s AND finished_at IS NOT NULL "
            "AND rolled_back_at IS NULL)"
        ).format(table),
        [str(uuid.uuid4()), w.migration.checksum, name, name],
    )


def _remove_prisma(conn: Conn, table: sql.Composable, w: _Write) -> None:
    # Prisma has no down.  `prisma migrate resolve --rolled-back` sets rolled_back_at, and Prisma ignores such
    # rows (deploy applies the migration again, with a new row): the same, keeping the row as the record.
    conn.execute(
        sql.SQL("UPDATE {} SET rolled_back_at = now() WHERE migration_name = %s AND rolled_back_at IS NULL").format(
            table), [w.migration.path.parent.name]
    )


# -- sqlx: _sqlx_migrations (sqlx-postgres migrate.rs) ------------------------------------------------------------


def _record_sqlx(conn: Conn, table: sql.Composable, w: _Write) -> None:
    m = w.migration
    conn.execute(
        sql.SQL("INSERT INTO {} (version, description, success, checksum, execution_time) "
                "VALUES (%s, %s, true, %s, %s) ON CONFLICT (version) DO NOTHING").format(table),
        # sqlx's description is the file name's part after the version, underscores as spaces.
        [_int_version(m), m.name.replace("_", " "), bytes.fromhex(sqlx_checksum(m.path.read_bytes())),
         w.execution_ns],
    )


def _remove_sqlx(conn: Conn, table: sql.Composable, w: _Write) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(table), [_int_version(w.migration)])


#: Each tool whose history apply can keep in step: its table, its DDL, and its writer pair.
TOOLS: dict[str, _Tool] = {
    "diesel": _Tool(
        "__diesel_schema_migrations", None,
        ("CREATE TABLE IF NOT EXISTS {table} (\n"
         "       version VARCHAR(50) PRIMARY KEY NOT NULL,\n"
         "       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n)",),
        ("version", "run_on"), _record_diesel, _remove_diesel,
    ),
    "golang-migrate": _Tool(
        "schema_migrations", None,
        ("CREATE TABLE IF NOT EXISTS {table} (version bigint not null primary key, dirty boolean not null)",),
        ("version", "dirty"), _record_golang, _remove_golang,
    ),
    "goose": _Tool(
        "goose_db_version", None,
        ("CREATE TABLE {table} (\n"
         "\t\tid integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,\n"
         "\t\tversion_id bigint NOT NULL,\n"
         "\t\tis_applied boolean NOT NULL,\n"
         "\t\ttstamp timestamp NOT NULL DEFAULT now()\n\t)",
         # goose records version 0 when it creates the table.
         "INSERT INTO {table} (version_id, is_applied) VALUES (0, true)"),
        ("version_id", "is_applied", "tstamp"), _record_goose, _remove_goose,
    ),
    "dbmate": _Tool(
        "schema_migrations", None,
        ("create table if not exists {table} (version varchar(128) primary key)",),
        ("version",), _record_dbmate, _remove_dbmate,
    ),
    "flyway": _Tool(
        "flyway_schema_history", None,
        ('CREATE TABLE {table} (\n'
         '    "installed_rank" INT NOT NULL,\n'
         '    "version" VARCHAR(50),\n'
         '    "description" VARCHAR(200) NOT NULL,\n'
         '    "type" VARCHAR(20) NOT NULL,\n'
         '    "script" VARCHAR(1000) NOT NULL,\n'
         '    "checksum" INTEGER,\n'
         '    "installed_by" VARCHAR(100) NOT NULL,\n'
         '    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),\n'
         '    "execution_time" INTEGER NOT NULL,\n'
         '    "success" BOOLEAN NOT NULL\n)',
         'ALTER TABLE {table} ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY ("installed_rank")',
         'CREATE INDEX "flyway_schema_history_s_idx" ON {table} ("success")'),
        ("installed_rank", "version", "description", "type", "script", "checksum", "installed_by", "execution_time",
         "success"),
        _record_flyway, _remove_flyway,
    ),
    "supabase": _Tool(
        "schema_migrations", "supabase_migrations",
        ("CREATE SCHEMA IF NOT EXISTS {schema}",
         "CREATE TABLE IF NOT EXISTS {table} (version text NOT NULL PRIMARY KEY)"),
        ("version",), _record_supabase, _remove_supabase, owns_schema=True,
        add_columns=("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS statements text[]",
                     "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS name text"),
        added=("statements", "name"),
    ),
    "drizzle": _Tool(
        "__drizzle_migrations", "drizzle",
        ("CREATE SCHEMA IF NOT EXISTS {schema}",
         "CREATE TABLE IF NOT EXISTS {table} (\n"
         "\t\t\tid SERIAL PRIMARY KEY,\n\t\t\thash text NOT NULL,\n\t\t\tcreated_at bigint\n\t\t)"),
        ("id", "hash", "created_at"), _record_drizzle, _remove_drizzle, owns_schema=True,
    ),
    "prisma": _Tool(
        "_prisma_migrations", None,
        ('CREATE TABLE {table} (\n'
         '    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,\n'
         '    "checksum"              VARCHAR(64) NOT NULL,\n'
         '    "finished_at"           TIMESTAMPTZ,\n'
         '    "migration_name"        VARCHAR(255) NOT NULL,\n'
         '    "logs"                  TEXT,\n'
         '    "rolled_back_at"        TIMESTAMPTZ,\n'
         '    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),\n'
         '    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0\n)',),
        ("id", "checksum", "finished_at", "migration_name", "logs", "rolled_back_at", "started_at",
         "applied_steps_count"),
        _record_prisma, _remove_prisma,
    ),
    "sqlx": _Tool(
        "_sqlx_migrations", None,
        ("CREATE TABLE IF NOT EXISTS {table} (\n"
         "    version BIGINT PRIMARY KEY,\n"
         "    description TEXT NOT NULL,\n"
         "    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),\n"
         "    success BOOLEAN NOT NULL,\n"
         "    checksum BYTEA NOT NULL,\n"
         "    execution_time BIGINT NOT NULL\n)",),
        ("version", "description", "installed_on", "success", "checksum", "execution_time"),
        _record_sqlx, _remove_sqlx,
    ),
}


def table_sql(tool: str, schema: str) -> list[sql.Composed]:
    """The statements *tool* runs to create its history table in *schema* (its own schema for drizzle and Supabase)."""
    spec = TOOLS[tool]
    schema = spec.schema or schema
    names = {"table": sql.Identifier(schema, spec.table), "schema": sql.Identifier(schema)}
    return [sql.SQL(text).format(**names) for text in spec.create]


@dataclass(frozen=True)
class Mirror:
    """Writes one tool's history rows for a plan's migrations (the plan's ``history: {mirror: <tool>}``).

    *migrations* are the folder's migrations in file order (golang-migrate's
    rollback goes back to the one before); *folder* is the migrations folder
    (Flyway's ``script`` column is relative to it).  Every method runs in the
    caller's transaction and opens none of its own.
    """

    tool: str
    migrations: tuple[Migration, ...]
    folder: Path

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise ConfigError(f"unknown history mirror {self.tool!r}; expected one of {', '.join(TOOLS)}")

    @property
    def spec(self) -> _Tool:
        """The tool's table and writers."""
        return TOOLS[self.tool]

    def layout_problem(self) -> str | None:
        """Why the folder's layout does not fit the tool (its rows name the tool's own files), or ``None``."""
        layout = self.migrations[0].layout if self.migrations else None
        fits = MIRROR_TOOLS[self.tool]
        if layout is None or layout in fits:
            return None
        return (f"history.mirror is {self.tool}, but the migrations folder has the {layout} layout; {self.tool} "
                f"records migrations of the {' or '.join(fits)} layout only: name the tool whose files these are")

    def locate(self, conn: Conn) -> tuple[str, bool]:
        """The schema of the tool's table, and whether the table exists there.

        A fixed schema (drizzle, Supabase), else the table the ``search_path``
        finds (where the tool itself finds it), else ``current_schema()``,
        where the tool would create it.
        """
        spec = self.spec
        if spec.schema is not None:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                               [sql.Identifier(spec.schema, spec.table).as_string(conn)]).fetchone()
            return spec.schema, bool(row and row[0])
        row = conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)", [sql.Identifier(spec.table).as_string(conn)]
        ).fetchone()
        if row is not None:
            return str(row[0]), True
        row = conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise GuardError(f"cannot create {spec.table} for {self.tool}: the search_path names no schema that "
                             "exists; set search_path (or create the schema) and run apply again")
        return str(row[0]), False

    def _columns(self, conn: Conn, schema: str) -> set[str]:
        rows = conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped", [sql.Identifier(schema, self.spec.table).as_string(conn)]
        ).fetchall()
        return {r[0] for r in rows}

    def problems(self, conn: Conn) -> list[str]:
        """Why apply could not keep the tool's table in step: a wrong layout, or a table of that name that is not the tool's."""
        problem = self.layout_problem()
        if problem:
            return [problem]
        schema, exists = self.locate(conn)
        if not exists:
            return []
        missing = set(self.spec.columns) - self._columns(conn, schema)
        if missing:
            return [f"{schema}.{self.spec.table} is not {self.tool}'s history table (it has no column "
                    f"{', '.join(sorted(missing))}); history.mirror cannot write it: name the right tool, or move "
                    "that table out of the search_path"]
        return []

    def _table(self, conn: Conn) -> sql.Identifier:
        """The qualified table, created (or brought up to date) as the tool does it when it is missing."""
        spec = self.spec
        schema, exists = self.locate(conn)
        names = {"table": sql.Identifier(schema, spec.table), "schema": sql.Identifier(schema)}
        if not exists:
            for statement in table_sql(self.tool, schema):
                conn.execute(statement)
            log.info("created %s.%s as %s creates it", schema, spec.table, self.tool)
        if spec.added and not set(spec.added) <= self._columns(conn, schema):
            # As the Supabase CLI brings an older table up to date before writing.
            for text in spec.add_columns:
                conn.execute(sql.SQL(text).format(**names))
        return sql.Identifier(schema, spec.table)

    def record(self, conn: Conn, migration: Migration, *, execution_ms: int = 0,
               execution_ns: int | None = None) -> None:
        """Write the tool's row for *migration*, just applied (or recorded as the baseline)."""
        ns = execution_ns if execution_ns is not None else execution_ms * 1_000_000
        self.spec.record(conn, self._table(conn), _Write(migration, self.migrations, self.folder, execution_ms, ns))
        log.debug("%s history: recorded %s", self.tool, migration.id)

    def remove(self, conn: Conn, migration: Migration, *, execution_ms: int = 0) -> None:
        """Delete (or mark, as the tool does) the tool's row for *migration*, just rolled back."""
        self.spec.remove(conn, self._table(conn),
                         _Write(migration, self.migrations, self.folder, execution_ms, execution_ms * 1_000_000))
        log.debug("%s history: removed %s", self.tool, migration.id)

    def schema_keys(self, conn: Conn) -> tuple[frozenset[str], tuple[str, ...]]:
        """Snapshot keys of the tool's table (and its indexes, sequences, own schema), and key prefixes.

        A rehearsal never creates the foreign table, so apply leaves it out
        when it compares the target's schema with the rehearsed one.
        """
        spec = self.spec
        schema, exists = self.locate(conn)
        if not exists:
            return frozenset(), ()
        qualified = sql.Identifier(schema, spec.table).as_string(conn)
        rows = conn.execute(
            """
SELECT 'table ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%(t)s)
UNION ALL
SELECT 'index ' || quote_ident(n.nspname) || '.' || quote_ident(ic.relname) FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE i.indrelid = to_regclass(%(t)s)
UNION ALL
SELECT 'sequence ' || quote_ident(n.nspname) || '.' || quote_ident(s.relname) FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%(t)s)
  AND d.deptype IN ('a', 'i')
UNION ALL
SELECT 'schema ' || quote_ident(%(s)s) WHERE %(own)s""",
            {"t": qualified, "s": schema, "own": spec.owns_schema},
        ).fetchall()
        keys = frozenset(r[0] for r in rows)
        table_key = next((k for k in keys if k.startswith("table ")), None)
        name = table_key[len("table "):] if table_key else f"{schema}.{spec.table}"
        return keys, (f"column {name}.", f"constraint {name}.")

    def without_table(self, conn: Conn, snapshot: Snapshot) -> Snapshot:
        """*snapshot* without the tool's table and what belongs to it (see :meth:`schema_keys`)."""
        keys, prefixes = self.schema_keys(conn)
        if not keys:
            return snapshot
        return Snapshot(objects={k: v for k, v in snapshot.objects.items()
                                 if k not in keys and not k.startswith(prefixes)})


def mirror_for(tool: str | None, migrations: Sequence[Migration], folder: Path) -> Mirror | None:
    """The plan's mirror (``history.mirror``), or ``None`` when the plan keeps no other tool's history."""
    return Mirror(tool, tuple(migrations), folder) if tool else None

