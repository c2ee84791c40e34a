"""The local development database: a persistent PostgreSQL from the embedded binaries.

A plan without a ``target`` applies to this database.  It belongs to a
project root: its state is in ``<root>/.harness/dev-db/`` (``state.json`` and,
when the server user can reach it, the cluster itself under ``pg/``).  When
this process runs as root and the root is not reachable by the unprivileged
server user (a home directory of mode 0700, say), the cluster lives in the
harness cache instead, and ``state.json`` says where.

The server listens only on a Unix socket in a short private directory
(``<runtime dir>/mh-dev-<hash of the root>``, mode 0700), trusts local
connections, and keeps running after the command that started it exits
(``pg_ctl start``, in a session of its own).  ``harness dev-db
start|stop|status|url|destroy`` manages it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .errors import ServerError
from .postgres import (
    Binaries,
    _chown,
    _copy_cluster,
    _run_as_kwargs,
    _RunAs,
    _system_user,
    _template_cluster,
    _world_traversable,
    cache_dir,
    find_binaries,
    runtime_dir,
)

__all__ = ["DevDB", "DevStatus", "DBNAME", "ensure_dev_db"]

log = logging.getLogger(__name__)

#: The database apply uses on the development server.
DBNAME = "dev"
_PORT = "5432"
_START_TIMEOUT = 60


@dataclass(frozen=True)
class DevStatus:
    """Whether the development server of a root runs, and where it is."""

    running: bool
    initialised: bool
    dsn: str
    root: str
    data_dir: str | None
    socket_dir: str
    version: str | None
    pid: int | None
    log_file: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


class DevDB:
    """The development server of one project root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.home = self.root / ".harness" / "dev-db"
        self.key = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        self.socket_dir = runtime_dir() / f"mh-dev-{self.key}"

    # ------------------------------------------------------------------ state

    @property
    def _state_file(self) -> Path:
        return self.home / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_file.with_name(f".state-{os.getpid()}.json")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self._state_file)

    def _base(self, run_as: _RunAs | None) -> Path:
        """Where the cluster goes: under the root if the server user can reach it, else in the cache."""
        if run_as is None or _world_traversable(self.root):
            return self.home / "pg"
        return cache_dir() / "dev-db" / self.key

    @property
    def data_dir(self) -> Path | None:
        """The cluster directory, once initialised."""
        cluster = self._state().get("cluster")
        return Path(cluster) / "data" if cluster else None

    def dsn(self, dbname: str = DBNAME) -> str:
        """The connection string of the development database (no password: local trust)."""
        return make_conninfo(host=str(self.socket_dir), port=_PORT, user="postgres", dbname=dbname)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop of this root's server between processes."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ commands

    def status(self) -> DevStatus:
        """Whether the server runs (``pg_ctl status``), without changing anything."""
        state = self._state()
        data = self.data_dir
        running, pid = False, None
        initialised = bool(data and (data / "PG_VERSION").exists())
        if initialised and data is not None:
            pid = _postmaster_pid(data)
            if pid is not None:
                proc = self._pg_ctl(state, ["status", "-D", str(data)], check=False)
                running = proc.returncode == 0
                if not running:
                    pid = None
        cluster = state.get("cluster")
        return DevStatus(
            running=running,
            initialised=initialised,
            dsn=self.dsn(),
            root=str(self.root),
            data_dir=str(data) if data else None,
            socket_dir=str(self.socket_dir),
            version=state.get("version"),
            pid=pid,
            log_file=str(Path(cluster) / "server.log") if cluster else None,
        )

    def start(self) -> DevStatus:
        """Start the server (initialising it on first use); a no-op when it already runs."""
        with self._locked():
            current = self.status()
            if current.running:
                self._ensure_database()
                return current
            run_as = _system_user()
            state = self._state()
            binaries = self._binaries(state)
            if not current.initialised:
                state = self._initialise(binaries, run_as)
            assert self.data_dir is not None
            data = self.data_dir
            on_disk = (data / "PG_VERSION").read_text().strip()
            if on_disk != str(binaries.major):
                raise ServerError(
                    f"the development database in {data} was created by PostgreSQL {on_disk}, but the embedded "
                    f"binaries are PostgreSQL {binaries.version}; run `harness dev-db destroy` to start afresh"
                )
            self._prepare_socket_dir(run_as)
            log_file = Path(state["cluster"]) / "server.log"
            options = " ".join(
                shlex.quote(arg)
                for arg in ["-k", str(self.socket_dir), "-p", _PORT, "-c", "listen_addresses=",
                            "-c", "unix_socket_permissions=0700"]
            )
            proc = self._pg_ctl(
                state,
                ["start", "-D", str(data), "-l", str(log_file), "-w", "-t", str(_START_TIMEOUT), "-s", "-o", options],
                check=False,
            )
            if proc.returncode != 0:
                raise ServerError(
                    f"the development database did not start (pg_ctl exit code {proc.returncode}): "
                    f"{proc.stderr.strip() or proc.stdout.strip()}\n{_tail(log_file)}"
                )
            log.info("started the development database for %s on %s", self.root, self.socket_dir)
            self._ensure_database()
            return self.status()

    def stop(self) -> bool:
        """Stop the server (fast shutdown).  Returns whether it was running."""
        with self._locked():
            current = self.status()
            if not current.running or self.data_dir is None:
                return False
            proc = self._pg_ctl(self._state(), ["stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "-s"],
                                check=False)
            if proc.returncode != 0:
                raise ServerError(f"could not stop the development database: {proc.stderr.strip()}")
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()
            return True

    def destroy(self) -> None:
        """Stop the server and delete its data and state."""
        self.stop()
        with self._locked():
            cluster = self._state().get("cluster")
            if cluster:
                shutil.rmtree(cluster, ignore_errors=True)
            for entry in self.home.iterdir() if self.home.is_dir() else ():
                if entry.name != ".lock":
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _binaries(self, state: dict[str, Any]) -> Binaries:
        bindir = state.get("bindir")
        if bindir and (Path(bindir) / "pg_ctl").is_file():
            return Binaries(bindir=Path(bindir), version=str(state.get("version")), source="embedded")
        return find_binaries("embedded")

    def _initialise(self, binaries: Binaries, run_as: _RunAs | None) -> dict[str, Any]:
        base = self._base(run_as)
        if base.parent == self.home and run_as is not None:
            # The server user must traverse .harness/dev-db to reach its cluster.
            for d in (self.root / ".harness", self.home):
                os.chmod(d, 0o755)
        base.parent.mkdir(parents=True, exist_ok=True)
        if base.exists():
            shutil.rmtree(base)  # a half-initialised cluster from an interrupted start
        os.mkdir(base, 0o700)
        _chown(base, run_as)
        template = _template_cluster(binaries, run_as)
        _copy_cluster(template, base / "data")
        state = {
            "cluster": str(base),
            "bindir": str(binaries.bindir),
            "version": binaries.version,
            "dbname": DBNAME,
            "root": str(self.root),
        }
        self._write_state(state)
        log.info("initialised a development database for %s in %s", self.root, base)
        return state

    def _prepare_socket_dir(self, run_as: _RunAs | None) -> None:
        uid = run_as.uid if run_as else os.getuid()
        try:
            os.mkdir(self.socket_dir, 0o700)
        except FileExistsError:
            st = os.lstat(self.socket_dir)
            if not os.path.isdir(self.socket_dir) or os.path.islink(self.socket_dir) or st.st_uid not in (uid, os.getuid()):
                raise ServerError(
                    f"{self.socket_dir} exists but does not belong to the server user; remove it and start again"
                ) from None
            return
        _chown(self.socket_dir, run_as)

    def _pg_ctl(self, state: dict[str, Any], args: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        binaries = self._binaries(state)
        run_as = _system_user()
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            [str(binaries.tool("pg_ctl")), *args],
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            cwd="/",
            check=check,
            start_new_session=True,  # the server outlives this process and ignores its terminal's Ctrl-C
            **_run_as_kwargs(run_as),
        )

    def _ensure_database(self) -> None:
        try:
            with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DBNAME]).fetchone():
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))
        except psycopg.OperationalError as exc:
            raise ServerError(f"the development database does not answer on {self.socket_dir}: {exc}") from None


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def ensure_dev_db(root: Path) -> str:
    """Start the development database of *root* if needed; return its connection string."""
    return DevDB(root).start().dsn
