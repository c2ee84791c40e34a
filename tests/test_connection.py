"""Connection failures on real servers: configuration problems fail at once (exit 2), transient ones are retried (exit 1).

Each case runs ``harness apply`` against a real server (the session server,
or one started here whose pg_hba.conf asks for a password) and checks the
exit code, the message, that no password and no traceback is shown, and how
many tries the run log records.  Retries use the plan's small
``retry_delay``; the tries are counted in the log, not timed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from harness.errors import ConnectionRefusedByConfig, TargetUnreachable
from harness.postgres import BinaryServer, Server, start_server
from tests.projects import cli, write_project

SECRET = "Sup3r-S3cret-pw"
GUARDS = "guards: {retry_delay: 10ms, retry_factor: 1, max_retries: 2, lock_wait: 5s}\n"
MIGRATIONS = {"1_a.sql": "CREATE TABLE a (id int);"}


@pytest.fixture(scope="module")
def scram_server() -> Iterator[Server]:
    """A server of its own whose pg_hba.conf asks every role but ``postgres`` for a scram-sha-256 password.

    The session server trusts every local connection, so a wrong password
    cannot fail there.  The file is world-readable: the server may run as an
    unprivileged user.
    """
    provider = os.environ.get("HARNESS_TEST_PROVIDER", "embedded")
    if provider not in ("embedded", "local", "auto"):
        pytest.skip(f"needs a server started from binaries (hba_file), not provider {provider!r}")
    directory = Path(tempfile.mkdtemp(prefix="mh-hba-"))
    directory.chmod(0o755)
    hba = directory / "pg_hba.conf"
    hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
    hba.chmod(0o644)
    server = start_server(provider, settings={"hba_file": str(hba)})
    try:
        assert isinstance(server, BinaryServer)
        with server.connect() as conn:
            conn.execute(f"CREATE ROLE alice LOGIN PASSWORD '{SECRET}'")
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _apply(tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
           ) -> tuple[int, str, list[dict[str, Any]]]:
    """``harness apply`` of a one-migration plan to *dsn*; (exit code, all output, run-log events)."""
    plan = write_project(tmp_path, MIGRATIONS, guards=GUARDS)
    monkeypatch.setenv("TARGET_URL", dsn)
    code, out, err = cli(["apply", str(plan), "--yes"], capsys)
    logs = sorted((tmp_path / "logs").glob("p-*.jsonl"))
    events = [json.loads(line) for path in logs for line in path.read_text().splitlines()]
    return code, out + err, events


def _retries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "retry" and e["what"] == "connect"]


def _clean(text: str) -> None:
    assert SECRET not in text and "S3cret" not in text
    assert "Traceback" not in text and "internal error" not in text


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        (f"host=/tmp password={SECRET} port", 'missing "=" after "port"'),
        (f"host=/tmp port=5432 password=Sup3r S3cret-pw dbname=x", 'missing "=" after "…"'),
        (f"postgresql://app:{SECRET}@localhost:notaport/app", "port 'notaport', which is not a number"),
    ],
    ids=["keyword", "password-with-space", "uri-port"],
)
def test_malformed_dsn_is_a_usage_error(
    dsn: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text, events = _apply(tmp_path, dsn, capsys, monkeypatch)
    assert code == 2, text
    assert "connection string" in text and fragment in text
    _clean(text)
    assert not _retries(events)


def test_invalid_option_is_not_retried(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text, events = _apply(tmp_path, f"{db_dsn} password={SECRET} sslmode=bogus", capsys, monkeypatch)
    assert code == 2, text
    assert 'invalid sslmode value: "bogus"' in text and "Not retried" in text
    _clean(text)
    assert not _retries(events)
    (error,) = [e for e in events if e["event"] == "error"]
    assert error["error_type"] == "ConnectionRefusedByConfig"


def test_wrong_password_is_not_retried(
    scram_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scram_server.create_database("app")
    with scram_server.connect() as conn:
        conn.execute("ALTER DATABASE app OWNER TO alice")
    try:
        dsn = make_conninfo(scram_server.dsn("app"), user="alice", password=SECRET + "-wrong")
        code, text, events = _apply(tmp_path, dsn, capsys, monkeypatch)
        assert code == 2, text
        assert 'password authentication failed for user "alice"' in text and "Not retried" in text
        assert "check the user, password and database name" in text
        _clean(text)
        assert not _retries(events)
        # The right password gets through the same server: the refusal was the password's.
        good = make_conninfo(scram_server.dsn("app"), user="alice", password=SECRET)
        shutil.rmtree(tmp_path / "logs")
        code, text, events = _apply(tmp_path, good, capsys, monkeypatch)
        assert code == 0, text
        _clean(text)
    finally:
        scram_server.drop_database("app")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"dbname": "no_such_db"}, 'database "no_such_db" does not exist'),
     ({"user": "no_such_role"}, 'role "no_such_role" does not exist')],
    ids=["database", "role"],
)
def test_unknown_database_or_role_is_not_retried(
    change: dict[str, str], fragment: str, pg_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, text, events = _apply(tmp_path, make_conninfo(pg_server.dsn(), **change), capsys, monkeypatch)
    assert code == 2, text
    assert fragment in text and "Not retried" in text
    _clean(text)
    assert not _retries(events)


def test_nothing_listening_is_retried_then_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = tmp_path / "sock"
    nowhere.mkdir()
    dsn = make_conninfo(host=str(nowhere), port="5999", user="app", password=SECRET, dbname="app")
    code, text, events = _apply(tmp_path, dsn, capsys, monkeypatch)
    assert code == 1, text
    assert "after 3 tries" in text and "No such file or directory" in text
    assert "check that it is running and reachable" in text
    _clean(text)
    assert [e["attempt"] for e in _retries(events)] == [1, 2]  # max_retries: 2
    (error,) = [e for e in events if e["event"] == "error"]
    assert error["error_type"] == "TargetUnreachable"


def test_error_classes_carry_their_payload() -> None:
    refused = ConnectionRefusedByConfig("m", where="u@h:5432/db", reason="r", attempts=1)
    unreachable = TargetUnreachable("m", where="u@h:5432/db", reason="r", attempts=4)
    assert (refused.exit_code, unreachable.exit_code) == (2, 1)
    assert (refused.where, refused.reason, unreachable.attempts) == ("u@h:5432/db", "r", 4)
