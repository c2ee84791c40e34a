"""Backups before ``apply``: ``pg_dump -Fc`` archives with a manifest, verification, retention, restore.

A backup is ``<backup dir>/<plan>-<UTC timestamp>.dump`` (custom format) and
its manifest ``<same>.json`` (plan, migrations about to be applied, server
version, size, sha256, mode, tables).  Both are created with mode 0600 in a
directory of mode 0700: the files are created exclusively with that mode
before anything is written, never chmod-ed afterwards.  A backup is verified
with ``pg_restore --list`` (the archive reads back and holds every table it
should) before the first migration runs.

Modes: ``full`` (the whole database), ``touched`` (only the existing tables
the pending migrations name, found by walking each statement's parse tree),
``none``.  The password never appears on a command line or in a log: it is
handed to ``pg_dump``/``pg_restore`` in ``PGPASSWORD``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from pglast import visitors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import history
from .errors import BackupError, ConfigError
from .migration import Migration
from .postgres import Binaries, embedded_binaries, local_binaries
from .redact import describe_dsn, register_dsn, scrub
from .runlog import create_private_file, ensure_private_dir, utc_stamp
from .snapshot import Snapshot, diff_snapshots, take_snapshot

__all__ = [
    "MODES",
    "BackupInfo",
    "RestoreResult",
    "choose_tools",
    "newest_tools",
    "connection_args",
    "touched_tables",
    "take_backup",
    "verify_backup",
    "list_backups",
    "prune_backups",
    "read_manifest",
    "manifest_path",
    "restore_backup",
    "file_sha256",
]

log = logging.getLogger(__name__)

MODES = ("full", "touched", "none")
_FORMAT = 1
# Relation kinds a touched backup dumps: tables, partitioned tables, matviews,
# sequences, views and foreign tables.
_DUMPABLE = ("r", "p", "m", "S", "v", "f")
_STEM_RE = re.compile(r"^(?P<plan>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?$")


@dataclass(frozen=True)
class BackupInfo:
    """One backup archive and what its manifest says about it."""

    path: Path
    plan: str
    created_at: str
    mode: str
    database: str  # user@host:port/db, never a password
    server_version: str
    pg_dump_version: str
    versions: tuple[str, ...]  # migrations about to be applied when it was taken
    tables: tuple[str, ...]
    size: int
    sha256: str
    verified: bool
    toc_entries: int = 0
    plan_path: str | None = None
    schema: dict[str, Any] | None = field(default=None, repr=False)  # snapshot objects (full backups)

    @property
    def manifest(self) -> Path:
        """The manifest file next to the archive."""
        return manifest_path(self.path)

    def to_dict(self, *, with_schema: bool = False) -> dict[str, Any]:
        """JSON-ready values."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["versions"] = list(self.versions)
        data["tables"] = list(self.tables)
        if not with_schema:
            data.pop("schema", None)
        return data


@dataclass
class RestoreResult:
    """What a restore did."""

    backup: Path
    database: str
    created: bool
    seconds: float
    leftovers: list[str] = field(default_factory=list)  # objects in the database that the backup does not have


def manifest_path(dump: Path) -> Path:
    """``<stem>.json`` next to ``<stem>.dump``."""
    return dump.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Tools and connection arguments


def _installations() -> list[Binaries]:
    found: list[Binaries] = []
    for b in [*local_binaries(), embedded_binaries()]:
        if b is not None and (b.bindir / "pg_dump").is_file() and (b.bindir / "pg_restore").is_file():
            found.append(b)
    return found


def newest_tools() -> Binaries:
    """The newest ``pg_restore`` available: it reads archives of every older ``pg_dump``."""
    found = _installations()
    if not found:
        raise BackupError("no pg_restore found; install the PostgreSQL client package")
    return max(found, key=lambda b: tuple(int(x) for x in b.version.split(".")))


def choose_tools(server_major: int) -> Binaries:
    """An installation whose ``pg_dump``/``pg_restore`` major is at least *server_major*.

    A ``pg_dump`` older than the server refuses to dump it; among those that
    are new enough the closest major is preferred.
    """
    candidates = _installations()
    usable = sorted((b for b in candidates if b.major >= server_major), key=lambda b: (b.major, b.source != "local"))
    if not usable:
        found = ", ".join(f"{b.version} ({b.bindir})" for b in candidates) or "none"
        raise BackupError(
            f"no pg_dump of PostgreSQL {server_major} or newer found (found: {found}); install the PostgreSQL "
            f"{server_major} client package, or set backup.mode: none in the plan to apply without a backup"
        )
    return usable[0]


def connection_args(dsn: str) -> tuple[str, dict[str, str]]:
    """A connection string without the password for the command line, and the environment with ``PGPASSWORD``."""
    register_dsn(dsn)
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = "migration-harness backup"
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None}), env


def _tool_version(path: Path) -> str:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else "?"


def _server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    row = conn.execute("SHOW server_version").fetchone()
    text = str(row[0]).split()[0] if row else "?"
    return conn.info.server_version // 10000, text


# --------------------------------------------------------------------------
# Touched tables


class _RangeVars(visitors.Visitor):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_RangeVar(self, ancestors: Any, node: Any) -> None:  # noqa: N802 - pglast's visitor API
        name = _quote(node.relname)
        self.names.add(f"{_quote(node.schemaname)}.{name}" if node.schemaname else name)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def touched_tables(conn: psycopg.Connection[Any], migrations: Sequence[Migration]) -> list[tuple[str, str, str]]:
    """``(schema, name, relkind)`` of existing relations the statements of *migrations* name.

    Names are collected from each statement's parse tree (every ``RangeVar``,
    plus the names pglast's ``referenced_relations`` finds, which covers
    ``DROP TABLE``) and resolved on the target with ``to_regclass``, so the
    target's ``search_path`` decides, as it will when the migration runs.
    Names that do not exist yet (tables a migration creates) are left out.
    """
    names: set[str] = set()
    for migration in migrations:
        for statement in migration.statements:
            walker = _RangeVars()
            try:
                walker(statement.node)
            except Exception as exc:  # noqa: BLE001 - an unusual node must not stop the backup
                log.debug("could not walk %s:%s: %s", migration.path, statement.line, exc)
            names |= walker.names
            try:
                names |= set(visitors.referenced_relations(statement.node))
            except Exception as exc:  # noqa: BLE001
                log.debug("referenced_relations failed on %s:%s: %s", migration.path, statement.line, exc)
    found: dict[str, tuple[str, str, str]] = {}
    for name in sorted(names):
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                    [name],
                ).fetchone()
        except psycopg.Error:
            row = None  # an odd name (too many dots...) cannot name an existing table
        if row and row[2] in _DUMPABLE and row[0] not in ("pg_catalog", "information_schema"):
            found[f"{row[0]}.{row[1]}"] = (row[0], row[1], row[2])
    return [found[k] for k in sorted(found)]


def _all_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
        "AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1, 2"
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


# --------------------------------------------------------------------------
# Taking and verifying a backup


def take_backup(
    *,
    plan_name: str,
    directory: Path,
    dsn: str,
    conn: psycopg.Connection[Any],
    pending: Sequence[Migration],
    mode: str = "full",
    lock_wait: float = 60.0,
    plan_path: Path | None = None,
    schema: dict[str, Any] | None = None,
    schemas: Sequence[str] = (),
) -> BackupInfo:
    """Dump the target into a new archive in *directory*, verify it, write its manifest.

    *schemas* limits the dump to those schemas (a fleet's tenant schema and its history).

    Raises :class:`BackupError` (and removes the partial files) when
    ``pg_dump`` fails or the archive does not verify.
    """
    if mode not in ("full", "touched"):
        raise ConfigError(f"unknown backup mode {mode!r}; use full, touched or none")
    major, server_version = _server_version(conn)
    tools = choose_tools(major)
    pg_dump = tools.tool("pg_dump")
    if mode == "full":
        tables = _all_tables(conn)
    else:
        tables = touched_tables(conn, pending)
    if schemas:
        tables = [t for t in tables if t[0] in schemas]
    ensure_private_dir(directory)
    stem = f"{plan_name}-{utc_stamp()}"
    path = create_private_file(directory, stem, ".dump")
    conninfo, env = connection_args(dsn)
    args = [str(pg_dump), "--format=custom", "--no-password", f"--lock-wait-timeout={max(int(lock_wait * 1000), 1)}",
            f"--file={path}"]
    if mode == "touched":
        if tables:
            for schema_name, name, relkind in tables:
                pattern = f"{_quote(schema_name)}.{_quote(name)}"
                if relkind == "p" and tools.major >= 16:
                    args.append(f"--table-and-children={pattern}")
                else:
                    args.append(f"--table={pattern}")
        else:
            # Nothing that exists is touched: keep the schema, so the archive still says what was there.
            args.append("--schema-only")
    elif schemas:
        args.extend(f"--schema={_quote(name)}" for name in schemas)
    args.append(f"--dbname={conninfo}")
    log.debug("running %s", scrub(" ".join(args)))
    proc = subprocess.run(args, env=env, capture_output=True, text=True, errors="replace", umask=0o077,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        _discard(path)
        raise BackupError(
            f"pg_dump {tools.version} of {describe_dsn(dsn)} failed (exit code {proc.returncode}):\n    "
            + scrub(proc.stderr.strip()[-2000:] or "(no output)")
            + "\nNothing was changed. Fix the cause (disk space, permissions, a lock held on a table) and run again."
        )
    expected = [f"{s}.{n}" for s, n, k in tables if mode == "full" or k in ("r", "p", "m")]
    try:
        entries = verify_backup(path, tools, expected_tables=expected)
    except BackupError:
        _discard(path)
        raise
    info = BackupInfo(
        path=path,
        plan=plan_name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mode=mode,
        database=describe_dsn(dsn),
        server_version=server_version,
        pg_dump_version=tools.version,
        versions=tuple(m.id for m in pending),
        tables=tuple(f"{s}.{n}" for s, n, _ in tables),
        size=path.stat().st_size,
        sha256=file_sha256(path),
        verified=True,
        toc_entries=entries,
        plan_path=str(plan_path) if plan_path else None,
        schema=schema if mode == "full" else None,
    )
    _write_manifest(info)
    return info


def _discard(path: Path) -> None:
    for p in (path, manifest_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", p, exc)


def _write_manifest(info: BackupInfo) -> None:
    data = {"format": _FORMAT, **info.to_dict(with_schema=True), "path": info.path.name}
    target = info.manifest
    tmp = create_private_file(target.parent, f".{target.stem}", ".json.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        _discard(tmp)
        raise


def verify_backup(path: Path, tools: Binaries | None = None, *, expected_tables: Iterable[str] = ()) -> int:
    """Read the archive's table of contents with ``pg_restore --list``; return its number of entries.

    Raises :class:`BackupError` when the archive cannot be read or lacks a
    table in *expected_tables* (``schema.name``).
    """
    tools = tools or newest_tools()
    proc = subprocess.run(
        [str(tools.tool("pg_restore")), "--list", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise BackupError(
            f"the backup {path} does not verify: pg_restore --list failed: {scrub(proc.stderr.strip()[-1000:])}. "
            "Nothing was changed."
        )
    entries = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith(";")]
    if not entries:
        raise BackupError(f"the backup {path} does not verify: its table of contents is empty. Nothing was changed.")
    listed = set()
    for line in entries:
        # "215; 1259 16385 TABLE public users postgres"
        parts = line.split(";", 1)[-1].split()
        if len(parts) >= 5 and parts[2] == "TABLE":
            listed.add(f"{parts[3]}.{parts[4]}")
    missing = [t for t in expected_tables if t not in listed and " " not in t]
    if missing:
        raise BackupError(
            f"the backup {path} does not verify: it lacks table(s) {', '.join(missing)}. Nothing was changed."
        )
    return len(entries)


# --------------------------------------------------------------------------
# Listing and retention


def read_manifest(dump: Path) -> BackupInfo | None:
    """The backup described by the manifest next to *dump*; ``None`` without a manifest."""
    path = manifest_path(dump)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: unreadable backup manifest ({exc})") from None
    return BackupInfo(
        path=dump,
        plan=data.get("plan", "?"),
        created_at=data.get("created_at", "?"),
        mode=data.get("mode", "?"),
        database=data.get("database", "?"),
        server_version=data.get("server_version", "?"),
        pg_dump_version=data.get("pg_dump_version", "?"),
        versions=tuple(data.get("versions", ())),
        tables=tuple(data.get("tables", ())),
        size=int(data.get("size", 0)),
        sha256=data.get("sha256", ""),
        verified=bool(data.get("verified", False)),
        toc_entries=int(data.get("toc_entries", 0)),
        plan_path=data.get("plan_path"),
        schema=data.get("schema"),
    )


def list_backups(directory: Path, plan_name: str | None = None) -> list[BackupInfo]:
    """Backups in *directory* (of *plan_name* only, when given), newest first.

    An archive without a manifest is listed as unverified with what its file
    name says.
    """
    if not directory.is_dir():
        return []
    found: list[BackupInfo] = []
    for dump in directory.glob("*.dump"):
        match = _STEM_RE.match(dump.stem)
        info = read_manifest(dump)
        if info is None:
            if not match:
                continue
            stat = dump.stat()
            info = BackupInfo(
                path=dump, plan=match["plan"],
                created_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds"),
                mode="?", database="?", server_version="?", pg_dump_version="?", versions=(), tables=(),
                size=stat.st_size, sha256="", verified=False,
            )
        if plan_name is None or info.plan == plan_name:
            found.append(info)
    found.sort(key=_order, reverse=True)
    return found


def _order(info: BackupInfo) -> tuple[str, str, int]:
    """Oldest first: creation time, then the file name's stamp and collision number (``-N``)."""
    match = _STEM_RE.match(info.path.stem)
    if not match:
        return (info.created_at, "", 0)
    suffix = info.path.stem[match.end("stamp"):].lstrip("-")
    return (info.created_at, match["stamp"], int(suffix) if suffix.isdigit() else 0)


def prune_backups(directory: Path, plan_name: str, keep: int) -> list[Path]:
    """Remove all but the newest *keep* backups of *plan_name*; return the archives removed."""
    backups = list_backups(directory, plan_name)
    removed: list[Path] = []
    for info in backups[max(keep, 1):]:
        _discard(info.path)
        removed.append(info.path)
    return removed


# --------------------------------------------------------------------------
# Restore


def restore_backup(path: Path, dsn: str, *, into: str | None = None, lock_wait: float = 60.0) -> RestoreResult:
    """Restore the archive *path* into the database of *dsn*, or into a new database *into* on that server.

    Into the target: ``pg_restore --clean --if-exists --single-transaction``
    (all or nothing), under the migration run lock.  Into a new database: the
    database is created first and dropped again if the restore fails.
    """
    register_dsn(dsn)
    if not path.is_file():
        raise ConfigError(f"backup {path} does not exist; `harness backups` lists the backups there are")
    info = read_manifest(path)
    if info is not None and info.sha256:
        actual = file_sha256(path)
        if actual != info.sha256:
            raise BackupError(
                f"backup {path} is damaged: its sha256 {actual[:16]}... differs from the manifest's "
                f"{info.sha256[:16]}...; use another backup"
            )
    t0 = time.perf_counter()
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            major, _ = _server_version(conn)
            if into:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [into]).fetchone()
                if exists:
                    raise ConfigError(
                        f"database {into!r} already exists; pick a new name for --into, or restore into the target"
                    )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(into)))
    except psycopg.Error as exc:
        raise BackupError(f"cannot prepare the restore on {describe_dsn(dsn)}: {scrub(str(exc).strip())}") from None
    dump_major = int(float(info.pg_dump_version)) if info and info.pg_dump_version not in ("?", "") else 0
    tools = choose_tools(max(major, dump_major))
    target = make_conninfo(dsn, dbname=into) if into else dsn
    conninfo, env = connection_args(target)
    args = [str(tools.tool("pg_restore")), "--no-password", "--single-transaction", "--exit-on-error"]
    if not into:
        args += ["--clean", "--if-exists"]
    args += [f"--dbname={conninfo}", str(path)]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)

    if into:
        proc = run()
    else:
        with history.run_lock(dsn, timeout=lock_wait) as holder:
            # Fenced as apply is: an apply run that lost its lock session may still be writing; wait for it.
            history.take_fence(holder, history.lock_session(holder), timeout=lock_wait, where=describe_dsn(dsn))
            proc = run()
    if proc.returncode != 0:
        if into:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(into)))
            except psycopg.Error as exc:
                log.warning("could not drop %s after the failed restore: %s", into, scrub(str(exc)))
        hint = (
            " Objects created after the backup may depend on what the restore has to drop: run the down "
            "migrations first, or restore --into a new database and compare."
            if not into and "depend" in proc.stderr
            else ""
        )
        raise BackupError(
            f"pg_restore of {path} into {describe_dsn(target)} failed (exit code {proc.returncode}); it ran in one "
            f"transaction, so nothing was changed:\n    {scrub(proc.stderr.strip()[-2000:])}{hint}"
        )
    leftovers: list[str] = []
    if info is not None and info.mode == "full" and info.schema is not None:
        with psycopg.connect(target, autocommit=True, connect_timeout=10) as conn:
            now = take_snapshot(conn)
        changes = diff_snapshots(Snapshot(objects=info.schema), now)
        leftovers = [c.describe() for c in changes]
    return RestoreResult(
        backup=path,
        database=describe_dsn(target),
        created=bool(into),
        seconds=round(time.perf_counter() - t0, 3),
        leftovers=leftovers,
    )
