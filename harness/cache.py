"""The rehearsed-prefix cache: go on from where an earlier green rehearsal of the same history got to.

An entry holds the rehearsal database after the first N migrations of a
history and what the engine needs to go on from there.  The database is a
``pg_dump`` archive of the first M <= N migrations (M = N for an entry
written by a cold rehearsal) to restore, and the migrations M+1..N to apply
again after it: a rehearsal that went on from an entry has its archive at
hand (a hard link: the two entries share one file) and writes no new dump
until the migrations to apply again would be too many.  What the engine
needs besides: the schema before the first migration and what each migration
changed (the schema after every one is rebuilt from them, for receipts and
``chain_rollback``), the data fingerprints at the end, the roles the cluster
had, and the verdict of every item of those migrations with the hash of the
receipt that proved it; also which downs ``chain_rollback`` ran from the
prefix's last migration down, when it passed: a rehearsal that goes on from
the same state need not run them again.

Its key hashes everything that decides that state and those verdicts: the
PostgreSQL version, the seed files, substitutions, layout, baseline, lint
settings and the harness's own code, then, chained one migration at a time,
each migration's files and its step settings.  So the key of every prefix
of a history is known before anything runs, and the longest prefix an entry
covers is found by name; a changed migration, seed or setting changes the
keys from there on.

Entries are written only from fully green rehearsals, atomically (a
temporary file renamed), readable by the owner only.  An entry that cannot
be read, or whose archive does not restore to exactly the recorded state,
is discarded with a warning and the plan is rehearsed in full: a cache
problem never costs more than a cold rehearsal, and never a verdict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .backup import choose_tools, connection_args
from .errors import HarnessError
from .migration import Migration
from .plan import Plan, StepConfig
from .postgres import Server
from .redact import scrub
from .snapshot import Snapshot

__all__ = [
    "CacheError", "CachedItem", "ChainProof", "Entry", "PrefixCache", "prefix_keys", "harness_fingerprint", "restore",
    "restore_roles",
]

log = logging.getLogger(__name__)

_FORMAT = 2
# Entries kept per plan: the newest heads (a branch, main, the branch rebased on main...).
_KEEP = 4
# Keys of a step's settings that say where it was written, not what it asks.
_PLACE_KEYS = frozenset({"line", "explicit", "migration"})
#: At most this many migrations are applied again after an entry's archive; past that, a new archive is dumped.
REPLAY_LIMIT = 8

#: One object's attributes, or ``None`` when the migration removed it.
Changes = dict[str, Mapping[str, Any] | None]


class CacheError(HarnessError):
    """A cache entry cannot be used (unreadable, or its archive does not restore)."""


@dataclass(frozen=True)
class CachedItem:
    """The verdict of one item of a cached migration, and the receipt of the rehearsal that proved it."""

    id: str
    status: str
    message: str
    receipt: str  # sha256 of the receipt file

    @property
    def reason(self) -> str:
        """What a report shows instead of running the item again."""
        return f"verified by rehearsal {self.receipt[:12]} (cached)"


@dataclass(frozen=True)
class ChainProof:
    """A ``chain_rollback`` that passed from the head of a cached prefix: which downs it ran, and its receipt."""

    ids: tuple[str, ...]
    receipt: str  # sha256 of the receipt file

    @property
    def reason(self) -> str:
        """What a report says of the downs not run again."""
        return f"verified by rehearsal {self.receipt[:12]} (cached)"


@dataclass
class Entry:
    """A cached prefix: the first ``length`` migrations of a history, rehearsed green."""

    path: Path  # the entry's JSON file; the archive is next to it
    key: str
    length: int
    server_version: str
    base: Snapshot  # the schema before the first migration (after the seed)
    changes: list[Changes]  # per migration, the objects it changed
    data: dict[str, tuple[int, str]]  # table -> (rows, hash) after the last migration
    items: dict[str, CachedItem]
    roles: list[dict[str, Any]]
    memberships: list[tuple[str, str]]
    dump_sha256: str
    #: How many migrations the archive holds; those after it, up to ``length``, are applied again on restore.
    archive_length: int = -1
    #: The plan-level ``chain_rollback`` from the last migration down, when it passed without a warning: the
    #: migrations whose downs it ran, in order, and the hash of the receipt that proved it.
    chain: ChainProof | None = None

    def __post_init__(self) -> None:
        if self.archive_length < 0:
            self.archive_length = self.length

    @property
    def dump(self) -> Path:
        """The ``pg_dump`` archive of the rehearsal database after the first ``archive_length`` migrations."""
        return self.path.with_suffix(".dump")

    @property
    def replayed(self) -> range:
        """The indexes of the migrations applied again after the archive is restored."""
        return range(self.archive_length, self.length)

    def schemas(self, every: int) -> tuple[list[Snapshot | None], Snapshot]:
        """The schema after each migration every *every* migrations (else ``None``), and the one after the last."""
        objects = dict(self.base.objects)
        kept: list[Snapshot | None] = []
        for index, changes in enumerate(self.changes):
            for key, attrs in changes.items():
                if attrs is None:
                    objects.pop(key, None)
                else:
                    objects[key] = attrs
            kept.append(Snapshot(objects=dict(objects)) if index % every == 0 else None)
        return kept, Snapshot(objects=objects)


@functools.cache
def harness_fingerprint() -> str:
    """The harness's version and a hash of its own code: rules, snapshots and verdicts come from it."""
    try:
        version = metadata.version("migration-harness")
    except metadata.PackageNotFoundError:
        version = "?"
    digest = hashlib.sha256(version.encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".json", ".sql") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """*value* as JSON-ready data, sets sorted, without the keys that only say where a step was written."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if k not in _PLACE_KEYS}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return value.name
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _sha(text: str | bytes | None) -> str | None:
    if text is None:
        return None
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=repr).encode()


def prefix_keys(
    plan: Plan, migrations: Sequence[Migration], configs: Mapping[str, StepConfig], server_version: str
) -> list[str]:
    """The cache key of every prefix of *migrations*: ``keys[i]`` covers migrations ``0..i``.

    Reads the seed files; opens no connection.
    """
    settings = {
        "format": _FORMAT,
        "harness": harness_fingerprint(),
        "server_version": server_version,
        "seed": [_sha(path.read_bytes()) for path in plan.rehearsal.seed],
        # Settings of the rehearsal that may shape its start (the major; anything added later): all but where
        # the server comes from, which the version above covers.
        "rehearsal": {
            f.name: getattr(plan.rehearsal, f.name)
            for f in dataclasses.fields(plan.rehearsal) if f.name not in ("provider", "dsn", "cache", "seed")
        },
        "substitutions": plan.substitutions,
        "layout": plan.layout,
        "baseline": plan.baseline,
        "lint_severity": dict(plan.lint_severity),
        "require_lock_timeout": plan.require_lock_timeout,
        "require_down": plan.require_down,
        "column_order": plan.column_order,
    }
    key = hashlib.sha256(_canonical(settings)).hexdigest()
    keys = []
    steps: dict[str, str] = {}  # most migrations share a few step settings: described once each
    for migration in migrations:
        config = configs[migration.id]
        # The same text for the same settings within one process: a memo key only (the hash is of _plain).
        seen = repr(dataclasses.replace(config, migration="", line=0))
        step = steps.get(seen)
        if step is None:
            step = steps[seen] = hashlib.sha256(_canonical(config)).hexdigest()
        described = {
            "id": migration.id,
            "version": migration.version,
            "file": migration.path.name,
            "checksum": migration.checksum,
            "sql": _sha(migration.sql),
            "down_file": migration.down_path.name if migration.down_path else None,
            "down_sql": _sha(migration.down_sql),
            "verify_sql": _sha(migration.verify_sql),
            "no_transaction": migration.no_transaction,
            "down_no_transaction": migration.down_no_transaction,
            "repeatable": migration.repeatable,
            "layout": migration.layout,
            "batches": migration.batches,
            "error": migration.error,
            "down_error": migration.down_error,
            "findings": migration.findings,
            "requires": migration.requires,
            "step": step,
        }
        # Strings, flags and tuples of frozen dataclasses (batches, findings), whose repr is their value.
        text = json.dumps(described, sort_keys=True, separators=(",", ":"), default=repr)
        key = hashlib.sha256(key.encode() + text.encode()).hexdigest()
        keys.append(key)
    return keys


class PrefixCache:
    """The cache directory of one plan (``<directory>/<plan name>/``)."""

    def __init__(self, directory: Path, plan_name: str) -> None:
        self.directory = Path(directory) / plan_name
        #: Why an entry was not used, for the rehearsal's report (each also logged once).
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        """Record and log a problem with the cache (the rehearsal goes on without the entry)."""
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)

    # ------------------------------------------------------------------ reading

    def latest(self) -> Entry | None:
        """The newest entry, as it describes itself: a guess at the one :meth:`find` will choose, if any."""
        try:
            path = max(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
            return self._read(path, path.stem, None)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None  # find() reads, warns and discards

    def find(self, keys: Sequence[str], known: Entry | None = None) -> Entry | None:
        """The entry of the longest prefix whose key is in *keys* (``keys[i]``: migrations ``0..i``), if any.

        *known* is an entry read already (:meth:`latest`): not read again.
        """
        try:
            present = {p.stem for p in self.directory.glob("*.json")}
        except OSError:
            return None
        for length in range(len(keys), 0, -1):
            key = keys[length - 1]
            if key not in present:
                continue
            path = self.directory / f"{key}.json"
            if known is not None and (known.path, known.length) == (path, length):
                return known
            try:
                return self._read(path, key, length)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                self.warn(f"ignoring the unreadable rehearsal cache entry {path} ({scrub(str(exc))[:200]}); "
                          "rehearsing those migrations again")
                self.discard(path)
        return None

    def _read(self, path: Path, key: str, length: int | None) -> Entry:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else '?'}, expected {_FORMAT}")
        if length is None:
            length = data["length"]
            if not isinstance(length, int):
                raise ValueError(f"length {length!r}")
        if data["key"] != key or data["length"] != length or len(data["changes"]) != length:
            raise ValueError("the entry does not describe the prefix its name says")
        archive_length = data["archive_length"]
        if not (isinstance(archive_length, int) and 0 < archive_length <= length):
            raise ValueError(f"archive of {archive_length!r} migrations for a prefix of {length}")
        changes: list[Changes] = []
        for part in data["changes"]:
            delta: Changes = dict(part["set"])
            delta.update({k: None for k in part["gone"]})
            changes.append(delta)
        items = {}
        for raw in data["items"]:
            item = CachedItem(id=raw["id"], status=raw["status"], message=raw["message"], receipt=raw["receipt"])
            if not (isinstance(item.receipt, str) and len(item.receipt) == 64):
                raise ValueError(f"item {item.id}: no receipt hash")
            items[item.id] = item
        return Entry(
            path=path,
            key=key,
            length=length,
            server_version=data["server_version"],
            base=Snapshot(objects=data["base"]),
            changes=changes,
            data={t: (int(c), str(h)) for t, c, h in data["data"]},
            items=items,
            roles=list(data["roles"]),
            memberships=[(str(r), str(m)) for r, m in data["memberships"]],
            dump_sha256=data["dump_sha256"],
            archive_length=archive_length,
            chain=_chain_proof(data["chain"]),
        )

    def discard(self, path: Path) -> None:
        """Remove an entry (its JSON file and its archive); best effort."""
        for part in (path, path.with_suffix(".dump")):
            with contextlib.suppress(OSError):
                part.unlink()

    # ------------------------------------------------------------------ writing

    def save(
        self,
        *,
        server: Server,
        dbname: str,
        key: str,
        base: Snapshot,
        changes: Sequence[Changes],
        data: Mapping[str, tuple[int, str]],
        items: Sequence[CachedItem],
        archive: Entry | None = None,
        chain: ChainProof | None = None,
    ) -> Path:
        """Write the entry for the prefix of ``len(changes)`` migrations; return its path.

        With *archive* (the entry the rehearsal went on from, whose archive
        still holds what was restored), the new entry shares that archive and
        the migrations after it are applied again on restore; otherwise
        *dbname* is dumped.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        path = self.directory / f"{key}.json"
        with _temporary(self.directory, ".dump") as dump_tmp:
            if archive is not None and _link(archive, dump_tmp):
                dump_sha, archive_length = archive.dump_sha256, archive.archive_length
            else:
                _dump(server, dbname, dump_tmp)
                dump_sha, archive_length = _file_sha256(dump_tmp), len(changes)
            roles, memberships = _roles(server, dbname)
            document = {
                "format": _FORMAT,
                "key": key,
                "length": len(changes),
                "server_version": server.version,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "base": dict(base.objects),
                "changes": [
                    {"set": {k: v for k, v in c.items() if v is not None}, "gone": sorted(k for k, v in c.items() if v is None)}
                    for c in changes
                ],
                "data": [[t, c, h] for t, (c, h) in sorted(data.items())],
                "items": [
                    {"id": i.id, "status": i.status, "message": i.message, "receipt": i.receipt} for i in items
                ],
                "roles": roles,
                "memberships": memberships,
                "dump_sha256": dump_sha,
                "archive_length": archive_length,
                "chain": {"ids": list(chain.ids), "receipt": chain.receipt} if chain is not None else None,
            }
            with _temporary(self.directory, ".json") as json_tmp:
                json_tmp.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
                # The archive first: an entry is complete once its JSON file exists.
                os.replace(dump_tmp, path.with_suffix(".dump"))
                os.replace(json_tmp, path)
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        """Keep the newest entries; remove the rest and temporary files left by a killed run."""
        try:
            entries = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            stale = [p for p in self.directory.glob(".tmp-*") if time.time() - p.stat().st_mtime > 3600]
        except OSError:
            return
        for old in [p for p in entries if p != keep][_KEEP - 1:]:
            self.discard(old)
        for tmp in stale:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def _temporary(directory: Path, suffix: str) -> Iterator[Path]:
    """A new private file in *directory*, removed unless renamed."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _chain_proof(raw: Any) -> ChainProof | None:
    if raw is None:
        return None
    proof = ChainProof(ids=tuple(str(i) for i in raw["ids"]), receipt=raw["receipt"])
    if not (proof.ids and isinstance(proof.receipt, str) and len(proof.receipt) == 64):
        raise ValueError("chain_rollback: no downs, or no receipt hash")
    return proof


def _link(archive: Entry, dest: Path) -> bool:
    """Make *dest* another name of *archive*'s archive, if it is still the one recorded; ``False`` otherwise."""
    try:
        dest.unlink()
        os.link(archive.dump, dest)
        if _file_sha256(dest) == archive.dump_sha256:
            return True
    except OSError as exc:
        log.debug("cannot share the archive %s: %s", archive.dump, exc)
    with contextlib.suppress(OSError):
        dest.unlink()
    return False


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tool(server: Server, name: str) -> Path:
    """``pg_dump``/``pg_restore`` of the server's own installation, else one new enough for it."""
    if server.bindir is not None and (server.bindir / name).is_file():
        return server.bindir / name
    try:
        return choose_tools(server.major).tool(name)
    except HarnessError as exc:
        raise CacheError(str(exc)) from None


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, errors="replace", umask=0o077,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise CacheError(f"{what} failed (exit code {proc.returncode}): {scrub(proc.stderr.strip()[-1000:])}")


def _dump(server: Server, dbname: str, path: Path) -> None:
    conninfo, env = connection_args(server.dsn(dbname))
    # Uncompressed: restoring is what a warm rehearsal waits for, and CI caches compress anyway.
    _run([str(_tool(server, "pg_dump")), "--format=custom", "--compress=0", "--no-password", f"--file={path}",
          f"--dbname={conninfo}"], env, "pg_dump of the rehearsal database")


_ROLES = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls
FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user ORDER BY rolname
"""
_MEMBERSHIPS = """
SELECT r.rolname, m.rolname FROM pg_catalog.pg_auth_members a
JOIN pg_catalog.pg_roles r ON r.oid = a.roleid JOIN pg_catalog.pg_roles m ON m.oid = a.member
WHERE r.rolname !~ '^pg_' AND m.rolname <> current_user ORDER BY 1, 2
"""
_ROLE_FLAGS = ("SUPERUSER", "INHERIT", "CREATEROLE", "CREATEDB", "LOGIN", "REPLICATION", "BYPASSRLS")


def _roles(server: Server, dbname: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The cluster's roles (names and flags, never passwords): the archive's grants and owners name them."""
    with server.connect(dbname) as conn:
        roles = [{"name": row[0], "flags": list(row[1:])} for row in conn.execute(_ROLES).fetchall()]
        memberships = [(r, m) for r, m in conn.execute(_MEMBERSHIPS).fetchall()]
    return roles, memberships


def restore(server: Server, dbname: str, entry: Entry) -> None:
    """Create *dbname* on *server* from *entry*'s archive (and the roles it names that the cluster lacks).

    Raises :class:`CacheError` when the archive is not the one recorded or
    does not restore.
    """
    try:
        if _file_sha256(entry.dump) != entry.dump_sha256:
            raise CacheError(f"{entry.dump} is not the archive the entry recorded (its hash differs)")
    except OSError as exc:
        raise CacheError(f"cannot read {entry.dump}: {exc}") from None
    restore_roles(server, entry)
    server.create_database(dbname)
    conninfo, env = connection_args(server.dsn(dbname))
    _run([str(_tool(server, "pg_restore")), "--exit-on-error", "--single-transaction", "--no-password",
          f"--dbname={conninfo}", str(entry.dump)], env, f"pg_restore of {entry.dump}")


def restore_roles(server: Server, entry: Entry) -> None:
    """Create the roles *entry* names that the cluster lacks (an archive restored for another entry may need them)."""
    try:
        _create_roles(server, entry)
    except psycopg.Error as exc:
        raise CacheError(f"cannot create the roles the cached state names: {exc}") from None


def _create_roles(server: Server, entry: Entry) -> None:
    if not entry.roles:
        return
    with server.connect() as conn:
        existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles").fetchall()}
        created = set()
        for role in entry.roles:
            if role["name"] in existing:
                continue
            flags = [flag if on else f"NO{flag}" for flag, on in zip(_ROLE_FLAGS, role["flags"])]
            conn.execute(sql.SQL("CREATE ROLE {} " + " ".join(flags)).format(sql.Identifier(role["name"])))
            created.add(role["name"])
        for granted, member in entry.memberships:
            if member in created:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(member)))
