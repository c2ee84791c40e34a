"""Fleets: one plan applied to many databases and tenant schemas (harness.fleet, docs/fleet.md).

Every test runs against real databases on the session server: a list of
databases, a discovered fleet, tenant schemas, broken members, canaries,
resume, shards, redaction, the status matrix, rollback and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.adopt import read_foreign_histories
from harness.apply import ApplyOptions, apply_plan
from harness.cli import main
from harness.errors import ConfigError, PlanError, Stopped
from harness.fleet import (
    Selection,
    Target,
    apply_fleet,
    fleet_status,
    fleet_targets,
    parse_shard,
    plan_waves,
    rollback_fleet,
    select_targets,
    shard_of,
)
from harness.plan import Wave, load_plan
from harness.postgres import Server

GUARDS = "guards: {lock_timeout: 2s, statement_timeout: 30s, retry_delay: 100ms, max_retries: 1, lock_wait: 20s}\n"
QUIET = "defaults: {lint: false, idempotent: false, backward_compatible: false, preserve_rows: false}\n"

UP_1 = "CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL);\n"
DOWN_1 = "DROP TABLE accounts;\n"
UP_2 = "CREATE INDEX accounts_email ON accounts (email);\n"
DOWN_2 = "DROP INDEX accounts_email;\n"


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def databases(pg_server: Server) -> Iterator[list[str]]:
    """Four fresh databases on the session server: a catalog and three members."""
    names = [f"f_{uuid.uuid4().hex[:10]}" for _ in range(4)]
    for name in names:
        pg_server.create_database(name)
    try:
        yield names
    finally:
        for name in names:
            pg_server.drop_database(name)


def project(root: Path, fleet: str, *, mode: str = "development", extra: str = "",
            migrations: dict[str, str] | None = None) -> Path:
    """A project with two migrations (and downs) and a plan whose fleet section is *fleet*; the plan's path."""
    mdir = root / "migrations"
    mdir.mkdir(parents=True, exist_ok=True)
    files = migrations if migrations is not None else {
        "0001_accounts.up.sql": UP_1, "0001_accounts.down.sql": DOWN_1,
        "0002_email.up.sql": UP_2, "0002_email.down.sql": DOWN_2,
    }
    for name, text in files.items():
        (mdir / name).write_text(text)
    (root / "plans").mkdir(exist_ok=True)
    path = root / "plans" / "fleet.yaml"
    path.write_text(
        "migrations: migrations/\n"
        f"mode: {mode}\n"
        "rehearsal: {provider: embedded}\n"
        "backup: {mode: none}\n" + QUIET + GUARDS + textwrap.dedent(fleet) + extra
    )
    return path


def listed(server: Server, names: list[str], **fleet: Any) -> str:
    """A ``targets:`` list of *names* on *server*, plus a ``fleet:`` section of *fleet*."""
    lines = ["targets:"] + [f'  - {{name: m{i}, dsn: "{server.dsn(n)}"}}' for i, n in enumerate(names, 1)]
    if fleet:
        lines.append("fleet: " + json.dumps(fleet))
    return "\n".join(lines) + "\n"


def tables(dsn: str, schema: str = "public") -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]).fetchall()
    return {r[0] for r in rows}


def versions(dsn: str, schema: str = "harness") -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", [f"{schema}.schema_migrations"]).fetchone() == (None,):
            return []
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_migrations ORDER BY version').fetchall()
    return [r[0] for r in rows]


def execute(dsn: str, text: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------
# The plan


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ("targets:\n  - {name: a, dsn: 'dbname=x'}\n  - {name: a, dsn: 'dbname=y'}\n", "the name 'a' is used twice"),
        ("target: {dsn: 'dbname=x'}\ntargets:\n  - {name: a, dsn: 'dbname=x'}\n", "either target"),
        ("targets:\n  - {name: a}\n", "missing required key 'dsn'"),
        ("fleet: {concurrency: 2}\n", "a fleet needs members"),
        ("targets:\n  - {name: a, dsn: 'dbname=x'}\nfleet: {waves: [{rest: true}, {canary: 1}]}\n", "must be the last wave"),
        ("targets:\n  - {name: a, dsn: 'dbname=x'}\nfleet: {waves: [{canary: 1, percent: 5}]}\n", "canary"),
        ("targets:\n  - {name: a, dsn: 'dbname=x'}\nfleet: {stop_after_failures: lots}\n", "a count of failures, or a percentage"),
        ("targets:\n  - {name: a, dsn: 'dbname=x'}\nfleet: {concurrency: 0}\n", "concurrency"),
        ("targets:\n  - {name: 'a b', dsn: 'dbname=x'}\n", "a name of letters"),
    ],
)
def test_bad_fleet_plans_name_the_line(tmp_path: Path, fleet: str, message: str) -> None:
    path = project(tmp_path, fleet)
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert message in str(caught.value)
    assert "fleet.yaml:" in str(caught.value)


def test_fleet_plan_is_typed(tmp_path: Path) -> None:
    path = project(tmp_path, """\
        targets:
          - {name: eu-1, dsn: "dbname=eu1"}
        fleet:
          schemas: {dsn: "dbname=app", sql: "SELECT nspname FROM pg_namespace"}
          concurrency: 8
          waves: [{canary: 1}, {percent: 10}, {rest: true}]
          stop_after_failures: 5%
        """)
    fleet = load_plan(path).fleet
    assert fleet.configured
    assert [t.name for t in fleet.targets] == ["eu-1"]
    assert fleet.schemas is not None and fleet.schemas.sql.startswith("SELECT nspname")
    assert fleet.concurrency == 8
    assert fleet.waves == (Wave(canary=1), Wave(percent=10), Wave(rest=True))
    assert (fleet.stop_after_failures, fleet.stop_after_percent) == (None, 5.0)


# --------------------------------------------------------------------------
# Selection and waves (no database)


def _targets(n: int) -> list[Target]:
    return [Target(f"t{i:03d}", f"dbname=t{i}") for i in range(n)]


@settings(max_examples=50, deadline=None)
@given(names=st.sets(st.text("abcdefghij-_0123456789", min_size=1, max_size=12), max_size=60),
       count=st.integers(min_value=1, max_value=9))
def test_shards_cover_every_member_exactly_once(names: set[str], count: int) -> None:
    targets = [Target(n, "dbname=x") for n in sorted(names)]
    shards = [select_targets(targets, Selection(shard=(i, count))) for i in range(1, count + 1)]
    chosen = [t.name for shard in shards for t in shard]
    assert sorted(chosen) == sorted(names)
    # Stable: a member's shard depends on its name alone, not on the rest of the fleet.
    for shard_number, shard in enumerate(shards, 1):
        for t in shard:
            assert shard_of(t.name, count) == shard_number
            assert select_targets([t], Selection(shard=(shard_number, count))) == [t]


@pytest.mark.parametrize("text", ["0/3", "4/3", "x/2", "1", "1/0", ""])
def test_bad_shards_are_usage_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="expected i/n"):
        parse_shard(text)


def test_only_and_exclude_take_names_and_patterns() -> None:
    targets = [Target(n, "dbname=x") for n in ("eu-1", "eu-2", "us-1", "us-2")]
    assert [t.name for t in select_targets(targets, Selection(only=("eu-*",)))] == ["eu-1", "eu-2"]
    assert [t.name for t in select_targets(targets, Selection(only=("eu-*", "us-2"), exclude=("eu-2",)))] == [
        "eu-1", "us-2"]
    with pytest.raises(ConfigError, match="no fleet member matches 'ap-1'"):
        select_targets(targets, Selection(only=("ap-1",)))


def test_waves_take_canaries_then_percentages_then_the_rest() -> None:
    targets = _targets(40)
    waves, left = plan_waves(targets, [Wave(canary=1), Wave(percent=10), Wave(rest=True)])
    assert [len(w) for w in waves] == [1, 4, 35]
    assert [t for w in waves for t in w] == targets and not left
    waves, left = plan_waves(targets, [Wave(canary=2), Wave(percent=0.1)])
    assert [len(w) for w in waves] == [2, 1] and len(left) == 37


# --------------------------------------------------------------------------
# Applying a fleet


def test_a_listed_fleet_is_applied_and_a_second_run_skips_members_at_head(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:]
    path = project(tmp_path, listed(pg_server, members, concurrency=2))
    code, out, err = cli(["apply", str(path)], capsys)
    assert code == 0, out + err
    for name in members:
        assert versions(pg_server.dsn(name)) == ["0001", "0002"]
    assert "fleet: 3 applied" in out
    fleet_logs = list((tmp_path / "logs").glob("fleet-fleet-*.jsonl"))
    assert len(fleet_logs) == 1
    events = [json.loads(line) for line in fleet_logs[0].read_text().splitlines()]
    applied = {(e["member"], e["migration"]) for e in events if e["event"] == "migration"}
    assert applied == {(f"m{i}", v) for i in (1, 2, 3) for v in ("0001_accounts", "0002_email")}
    # Each member keeps its own run log, named after it.
    assert {p.name.split("-")[0] for p in (tmp_path / "logs").glob("fleet.m*.jsonl")} == {"fleet.m1", "fleet.m2",
                                                                                          "fleet.m3"}

    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [m["state"] for m in result["members"]] == ["at head"] * 3
    assert result["ok"] is True


def test_a_broken_member_fails_alone_and_a_later_run_resumes_it(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:]
    broken = pg_server.dsn(members[1])
    execute(broken, "CREATE TABLE accounts (id int)")  # the first migration cannot run here
    path = project(tmp_path, listed(pg_server, members, concurrency=3, stop_after_failures=3))
    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    states = {m["name"]: m["state"] for m in result["members"]}
    assert states == {"m1": "applied", "m2": "failed", "m3": "applied"}
    failed = next(m for m in result["members"] if m["name"] == "m2")
    assert "accounts" in failed["error"] and failed["pending"] == ["0001_accounts", "0002_email"]
    assert versions(broken) == [] and tables(broken) == {"accounts"}
    assert versions(pg_server.dsn(members[0])) == versions(pg_server.dsn(members[2])) == ["0001", "0002"]

    execute(broken, "DROP TABLE accounts")
    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 0, err
    assert {m["name"]: m["state"] for m in json.loads(out)["members"]} == {
        "m1": "at head", "m2": "applied", "m3": "at head"}


def test_a_failing_canary_stops_the_later_waves(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:]
    execute(pg_server.dsn(members[0]), "CREATE TABLE accounts (id int)")
    path = project(tmp_path, listed(pg_server, members, waves=[{"canary": 1}, {"rest": True}]))
    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    assert [(m["name"], m["wave"], m["state"]) for m in result["members"]] == [
        ("m1", 1, "failed"), ("m2", 2, "not started"), ("m3", 2, "not started")]
    assert "wave 1 reached its failure limit" in result["stopped"]
    assert versions(pg_server.dsn(members[1])) == [] == versions(pg_server.dsn(members[2]))


def test_members_run_concurrently_up_to_the_limit(tmp_path: Path, pg_server: Server, databases: list[str]) -> None:
    members = databases  # four
    migrations = {"0001_wait.sql": "SELECT pg_sleep(0.4);\nCREATE TABLE done (id int);\n"}
    path = project(tmp_path, listed(pg_server, members, concurrency=2), migrations=migrations)
    result = apply_fleet(load_plan(path))
    assert result.ok, result.to_dict()
    events = [json.loads(line) for line in Path(result.log_path or "").read_text().splitlines()]
    running = peak = 0
    for e in events:
        if e["event"] == "member_start":
            running += 1
            peak = max(peak, running)
        elif e["event"] == "member_end":
            running -= 1
    assert peak == 2  # never more than the limit; more than one at once


def test_a_discovered_fleet_never_shows_its_passwords(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    catalog, *members = databases
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    # The session server trusts local connections, so a password in the DSN is accepted and unused.
    execute(pg_server.dsn(catalog), "CREATE TABLE tenants (name text, dsn text, active bool)")
    with psycopg.connect(pg_server.dsn(catalog), autocommit=True) as conn:
        for i, name in enumerate(members):
            dsn = f"{pg_server.dsn(name)} password={secret}"
            conn.execute("INSERT INTO tenants VALUES (%s, %s, %s)", [f"tenant-{i}", dsn, i != 2])
    fleet = f"""\
        fleet:
          discover: {{dsn: "{pg_server.dsn(catalog)}", sql: "SELECT name, dsn FROM tenants WHERE active ORDER BY name"}}
        """
    path = project(tmp_path, fleet)
    assert [t.name for t in fleet_targets(load_plan(path))] == ["tenant-0", "tenant-1"]
    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 0, err
    code2, out2, err2 = cli(["status", str(path)], capsys)
    assert code2 == 0
    everything = out + err + out2 + err2 + "".join(p.read_text() for p in (tmp_path / "logs").glob("*.jsonl"))
    assert secret not in everything
    assert "tenant-0" in out2 and "at head" in out2
    assert versions(pg_server.dsn(members[2])) == []  # inactive: not discovered


def test_a_bad_discovery_query_is_a_usage_error(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"""\
        fleet:
          discover: {{dsn: "{pg_server.dsn(databases[0])}", sql: "SELECT name, dsn FROM no_such_table"}}
        """
    path = project(tmp_path, fleet)
    code, out, err = cli(["apply", str(path)], capsys)
    assert code == 2
    assert "fleet.discover" in err and "no_such_table" in err and "fleet.yaml:" in err


# --------------------------------------------------------------------------
# Schema per tenant


def schema_fleet(pg_server: Server, database: str, pattern: str = "tenant_%") -> str:
    return f"""\
        fleet:
          schemas: {{dsn: "{pg_server.dsn(database)}", sql: "SELECT nspname FROM pg_namespace WHERE nspname LIKE '{pattern}' ORDER BY 1"}}
          concurrency: 3
        """


def test_tenant_schemas_each_get_the_migrations_and_their_own_history(
    tmp_path: Path, pg_server: Server, db_dsn: str, db_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for tenant in ("tenant_a", "tenant_b", "tenant_c"):
        execute(db_dsn, f"CREATE SCHEMA {tenant}")
    execute(db_dsn, "CREATE TABLE tenant_b.accounts (id int)")  # a pre-broken tenant
    path = project(tmp_path, schema_fleet(pg_server, db_name))
    code, out, err = cli(["apply", str(path), "--json"], capsys)
    assert code == 1
    states = {m["name"]: m["state"] for m in json.loads(out)["members"]}
    assert states == {"tenant_a": "applied", "tenant_b": "failed", "tenant_c": "applied"}
    assert tables(db_dsn, "tenant_a") == {"accounts"} == tables(db_dsn, "tenant_c")
    assert tables(db_dsn, "public") == set()  # unqualified names landed in each tenant's schema
    assert versions(db_dsn, "harness_tenant_a") == ["0001", "0002"]
    assert versions(db_dsn, "harness_tenant_b") == []
    assert versions(db_dsn, "harness") == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert read_foreign_histories(conn) == []  # a tenant's history is ours, not another tool's

    code, out, err = cli(["status", str(path), "--json"], capsys)
    assert code == 1
    rows = {r["name"]: (r["state"], r["applied"]) for r in json.loads(out)["members"]}
    assert rows == {"tenant_a": ("at head", 2), "tenant_b": ("pending", 0), "tenant_c": ("at head", 2)}

    execute(db_dsn, "DROP TABLE tenant_b.accounts")
    code, out, err = cli(["apply", str(path)], capsys)
    assert code == 0, out + err
    assert versions(db_dsn, "harness_tenant_b") == ["0001", "0002"]


def test_production_tenants_share_one_rehearsal_and_drift_is_caught(
    tmp_path: Path, pg_server: Server, db_dsn: str, db_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for tenant in ("tenant_a", "tenant_b", "tenant_c", "tenant_d"):
        execute(db_dsn, f"CREATE SCHEMA {tenant}")
    execute(db_dsn, "CREATE TABLE tenant_d.stray (id int)")  # drift: not made by any migration
    path = project(tmp_path, schema_fleet(pg_server, db_name), mode="production")
    code, out, err = cli(["apply", str(path), "--yes"], capsys)
    assert code == 1 and "no green rehearsal receipt" in err  # checked once, before any member

    code, out, err = cli(["rehearse", str(path)], capsys)
    assert code == 0, out + err
    result = apply_fleet(load_plan(path), ApplyOptions(yes=True))
    states = {m.name: m.state for m in result.members}
    assert states == {"tenant_a": "applied", "tenant_b": "applied", "tenant_c": "applied", "tenant_d": "failed"}
    drifted = next(m for m in result.members if m.name == "tenant_d")
    assert "drift" in (drifted.error or "") and "stray" in (drifted.error or "")
    assert result.rehearsals == 1  # every tenant before its first migration: one rehearsal for all
    assert tables(db_dsn, "tenant_a") == {"accounts"}

    execute(db_dsn, "CREATE INDEX stray_index ON tenant_b.accounts (id)")
    rows = {r.name: (r.state, r.detail) for r in fleet_status(load_plan(path))}
    assert rows["tenant_a"] == ("at head", "") and rows["tenant_c"] == ("at head", "")
    assert rows["tenant_b"][0] == "drifted" and "stray_index" in rows["tenant_b"][1]
    assert rows["tenant_d"][0] == "pending"


def test_tenant_schema_names_that_need_quoting(tmp_path: Path, pg_server: Server, db_dsn: str, db_name: str) -> None:
    for tenant in ("Tenant One", "tenant-two"):
        execute(db_dsn, f'CREATE SCHEMA "{tenant}"')
    path = project(tmp_path, schema_fleet(pg_server, db_name, "%en%t%"), mode="production")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(["rehearse", str(path)]) == 0
    result = apply_fleet(load_plan(path), ApplyOptions(yes=True))
    assert result.ok, result.to_dict()
    assert tables(db_dsn, "Tenant One") == {"accounts"} == tables(db_dsn, "tenant-two")


# --------------------------------------------------------------------------
# Rollback, stopping


def test_rollback_across_the_fleet(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:]
    path = project(tmp_path, listed(pg_server, members))
    assert cli(["apply", str(path)], capsys)[0] == 0
    code, out, err = cli(["rollback", str(path), "--to", "0001", "--only", "m1", "m3"], capsys)
    assert code == 0, out + err
    assert versions(pg_server.dsn(members[0])) == ["0001"] == versions(pg_server.dsn(members[2]))
    assert versions(pg_server.dsn(members[1])) == ["0001", "0002"]
    code, out, err = cli(["status", str(path), "--json"], capsys)
    assert code == 1
    assert {r["name"]: r["state"] for r in json.loads(out)["members"]} == {
        "m1": "pending", "m2": "at head", "m3": "pending"}


def test_a_run_asked_to_stop_stops_between_migrations(tmp_path: Path, pg_server: Server, db_dsn: str) -> None:
    path = project(tmp_path, f'target: {{dsn: "{db_dsn}"}}\n')
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped) as caught:
        apply_plan(load_plan(path), ApplyOptions(yes=True, stop=stop), out=None)
    assert "stopped before 0001_accounts" in str(caught.value)
    assert versions(db_dsn) == []


def test_ctrl_c_lets_running_members_finish_their_migration_and_starts_no_other(
    tmp_path: Path, pg_server: Server, databases: list[str]
) -> None:
    migrations = {
        "0001_slow.sql": "SELECT pg_sleep(1.5);\nCREATE TABLE first (id int);\n",
        "0002_next.sql": "CREATE TABLE second (id int);\n",
    }
    path = project(tmp_path, listed(pg_server, databases[1:], concurrency=1), migrations=migrations)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "apply", str(path), "--json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        started = False
        while time.monotonic() < deadline and not started:
            with psycopg.connect(pg_server.dsn(databases[1]), autocommit=True) as conn:
                started = bool(conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1.5)%'").fetchone()[0])
            time.sleep(0.05)
        assert started, "the first member never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    result = json.loads(out)
    assert [m["state"] for m in result["members"]] == ["stopped", "not started", "not started"]
    assert result["stopped"] == "interrupted (Ctrl-C)"
    first = pg_server.dsn(databases[1])
    assert versions(first) == ["0001"] and tables(first) == {"first"}  # its migration finished; no other began
    assert versions(pg_server.dsn(databases[2])) == []


def test_fleet_flags_on_a_single_target_plan_are_refused(
    tmp_path: Path, db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project(tmp_path, f'target: {{dsn: "{db_dsn}"}}\n')
    code, out, err = cli(["apply", str(path), "--only", "x"], capsys)
    assert code == 2 and "select members of a fleet" in err
    assert versions(db_dsn) == []


def test_status_of_a_fleet_names_unreachable_members(
    tmp_path: Path, pg_server: Server, databases: list[str]
) -> None:
    members = databases[1:2]
    fleet = listed(pg_server, members) + '  - {name: gone, dsn: "host=127.0.0.1 port=1 dbname=x connect_timeout=1"}\n'
    path = project(tmp_path, fleet)
    rows = {r.name: r.state for r in fleet_status(load_plan(path))}
    assert rows == {"m1": "pending", "gone": "unreachable"}


def test_a_dry_run_changes_no_member_and_says_what_each_would_run(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:3]
    path = project(tmp_path, listed(pg_server, members))
    assert cli(["apply", str(path), "--only", "m1"], capsys)[0] == 0
    code, out, err = cli(["apply", str(path), "--dry-run", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert {m["name"]: m["state"] for m in result["members"]} == {"m1": "at head", "m2": "would apply"}
    steps = "\n".join(result["steps"])
    assert "== m2" in steps and "CREATE TABLE accounts" in steps
    assert versions(pg_server.dsn(members[1])) == []


def test_an_unreachable_member_fails_alone(tmp_path: Path, pg_server: Server, databases: list[str]) -> None:
    fleet = listed(pg_server, databases[1:2]) + '  - {name: gone, dsn: "host=127.0.0.1 port=1 dbname=x connect_timeout=1"}\n'
    path = project(tmp_path, fleet + "fleet: {stop_after_failures: 2}\n")
    result = apply_fleet(load_plan(path))
    assert not result.ok
    states = {m.name: m.state for m in result.members}
    assert states == {"m1": "applied", "gone": "failed"}
    gone = next(m for m in result.members if m.name == "gone")
    assert "cannot connect" in (gone.error or "")


def test_each_member_keeps_its_own_backups(
    tmp_path: Path, pg_server: Server, databases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    members = databases[1:3]
    path = project(tmp_path, listed(pg_server, members), mode="production")
    text = path.read_text().replace("backup: {mode: none}", "backup: {mode: full, keep: 1}")
    path.write_text(text)
    assert cli(["rehearse", str(path)], capsys)[0] == 0
    code, out, err = cli(["apply", str(path)], capsys)  # production, no --yes, no terminal to ask
    assert code == 2 and "needs confirmation" in err
    assert versions(pg_server.dsn(members[0])) == []
    assert cli(["apply", str(path), "--yes", "--only", "m1"], capsys)[0] == 0
    assert cli(["apply", str(path), "--yes"], capsys)[0] == 0
    dumps = sorted(p.name.split("-")[0] for p in (tmp_path / "backups").glob("*.dump"))
    # keep: 1 counts per member: m2's backup did not remove m1's.
    assert dumps == ["fleet.m1", "fleet.m2"]

    # The status matrix compares each member's schema with the receipt's.
    execute(pg_server.dsn(members[1]), "ALTER TABLE accounts ADD COLUMN nickname text")
    code, out, err = cli(["status", str(path), "--json"], capsys)
    assert code == 1
    rows = {r["name"]: (r["state"], r["detail"]) for r in json.loads(out)["members"]}
    assert rows["m1"] == ("at head", "")
    assert rows["m2"][0] == "drifted" and "nickname" in rows["m2"][1]
