"""Measured safety: the locks and rewrites the rehearsal records match what PostgreSQL documents.

Table-driven over the classic migration pairs (blocking vs non-blocking
variant of the same change), first on the measuring function itself, then
end to end through the rehearsal's ``locks`` item.  Everything runs on a
real PostgreSQL.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.execute import StatementFailed
from harness.locks import (
    CONFLICTS,
    LOCK_MODES,
    WRITE_BLOCKING_MODES,
    LockReport,
    RelationLock,
    StatementLocks,
    blocks,
    judge,
    run_measured,
    server_functions_sql,
)
from harness.plan import LockPolicy, load_plan, plan_json_schema
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, Rehearsal
from harness.sources import parse_sql

# ---------------------------------------------------------------------------
# The conflict table
# ---------------------------------------------------------------------------


def test_conflict_table_is_symmetric_and_complete() -> None:
    assert set(CONFLICTS) == set(LOCK_MODES)
    for mode, conflicts in CONFLICTS.items():
        for other in conflicts:
            assert mode in CONFLICTS[other], f"{mode} conflicts with {other} but not the other way round"


@pytest.mark.parametrize(
    ("mode", "blocked"),
    [
        ("ACCESS SHARE", ()),
        ("ROW SHARE", ()),
        ("ROW EXCLUSIVE", ()),
        ("SHARE UPDATE EXCLUSIVE", ()),  # blocks other DDL and VACUUM, not reads or writes
        ("SHARE", ("writes",)),
        ("SHARE ROW EXCLUSIVE", ("writes",)),
        ("EXCLUSIVE", ("writes",)),
        ("ACCESS EXCLUSIVE", ("reads", "writes")),
    ],
)
def test_what_each_mode_blocks(mode: str, blocked: tuple[str, ...]) -> None:
    assert blocks(mode) == blocked


def test_plan_accepts_exactly_the_write_blocking_modes() -> None:
    schema = plan_json_schema()
    locks = schema["$defs"]["defaults"]["properties"]["locks"]["anyOf"][1]
    enum = locks["properties"]["allow_modes"]["items"]["anyOf"][0]["enum"]
    assert tuple(enum) == WRITE_BLOCKING_MODES == ("SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")


# ---------------------------------------------------------------------------
# Holds and the verdict, on hand-made reports
# ---------------------------------------------------------------------------


def _stmt(line: int, seconds: float, *locks: RelationLock) -> StatementLocks:
    return StatementLocks(f"m.sql:{line}", f"statement {line}", seconds, "transaction", tuple(locks))


def _lock(mode: str, *, new: bool = True, rewritten: bool = False, kind: str = "table") -> RelationLock:
    return RelationLock("public.users", kind, (mode,), (mode,) if new else (), rewritten, False)


def test_a_lock_is_held_until_commit_in_a_transaction() -> None:
    statements = (
        _stmt(1, 0.5, _lock("ACCESS EXCLUSIVE")),
        _stmt(2, 1.0, _lock("ACCESS EXCLUSIVE", new=False)),
        _stmt(3, 1.0, _lock("ACCESS EXCLUSIVE", new=False)),
    )
    [hold] = LockReport(statements, in_transaction=True).holds()
    assert (hold.relation, hold.mode, hold.seconds) == ("public.users", "ACCESS EXCLUSIVE", 2.5)
    assert hold.first.where == "m.sql:1"
    assert "until commit" in hold.describe()
    # Outside a transaction each statement releases its locks.
    holds = LockReport(statements, in_transaction=False).holds()
    assert [h.seconds for h in holds] == [0.5, 1.0, 1.0]


def test_only_write_blocking_modes_of_tables_make_holds() -> None:
    statements = (
        _stmt(1, 5.0, _lock("SHARE UPDATE EXCLUSIVE"), _lock("ACCESS EXCLUSIVE", kind="index")),
        _stmt(2, 5.0, _lock("ROW EXCLUSIVE")),
    )
    assert LockReport(statements, in_transaction=True).holds() == []


@pytest.mark.parametrize(
    ("policy", "ok", "problem", "acknowledged"),
    [
        (LockPolicy(), False, "over the budget of 2 s", ""),
        (LockPolicy(budget=10), True, "", ""),
        (LockPolicy(allow_modes=("ACCESS EXCLUSIVE",)), True, "", "mode allowed (reason: batch job)"),
        (LockPolicy(allow_modes=("SHARE",)), False, "ACCESS EXCLUSIVE (blocks reads, writes) for 3 s", ""),
    ],
    ids=["over-budget", "bigger-budget", "mode-allowed", "other-mode-allowed"],
)
def test_budget_and_allowed_modes(policy: LockPolicy, ok: bool, problem: str, acknowledged: str) -> None:
    statements = (_stmt(1, 1.0, _lock("ACCESS EXCLUSIVE")), _stmt(2, 2.0, _lock("ACCESS EXCLUSIVE", new=False)))
    report = LockReport(statements, in_transaction=True)
    verdict = judge(report, policy, reason="batch job")
    assert verdict.ok is ok
    assert problem in "\n".join(verdict.problems)
    assert acknowledged in "\n".join(verdict.acknowledged)


def test_long_reports_keep_the_statements_that_lock() -> None:
    quiet = [_stmt(line, 0.001) for line in range(1, 80)]
    busy = [_stmt(line, 0.001, _lock("ROW EXCLUSIVE")) for line in range(80, 90)]
    table = LockReport((*quiet, *busy), in_transaction=True).table(limit=20)
    assert "m.sql:80 " in table and "m.sql:1 " not in table and "more rows" not in table
    table = LockReport(tuple(busy * 3), in_transaction=True).table(limit=20)
    assert table.count("ROW EXCLUSIVE") == 20 and "... and 10 more rows" in table


def test_rewrites_fail_unless_allowed() -> None:
    report = LockReport((_stmt(1, 0.001, _lock("ACCESS EXCLUSIVE", rewritten=True)),), True)
    verdict = judge(report, LockPolicy())
    assert not verdict.ok
    assert "m.sql:1 rewrote public.users under ACCESS EXCLUSIVE (blocks reads, writes)" in verdict.problems[0]
    assert "allow_rewrite: true" in verdict.problems[0]
    allowed = judge(report, LockPolicy(allow_rewrite=True), reason="tiny table")
    assert allowed.ok and "rewrote public.users" in allowed.acknowledged[0] and "tiny table" in allowed.acknowledged[0]


# ---------------------------------------------------------------------------
# run_measured on a real server: what PostgreSQL does, case by case
# ---------------------------------------------------------------------------

SETUP = """
CREATE TABLE users (id int PRIMARY KEY, email varchar(10), n int);
CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
"""
PRE_EXISTING = ("public.users", "public.orders", "public.users_pkey", "public.orders_pkey")

# (statement, {relation: (strongest mode, rewritten, scanned)}); scanned None: not known (sampled).
CASES: dict[str, tuple[str, dict[str, tuple[str, bool, bool | None]]]] = {
    "create index: SHARE blocks writes, reads the table": (
        "CREATE INDEX users_email ON users (email)",
        {"public.users": ("SHARE", False, True)},
    ),
    "create index concurrently: SHARE UPDATE EXCLUSIVE blocks neither": (
        "CREATE INDEX CONCURRENTLY users_email ON users (email)",
        {"public.users": ("SHARE UPDATE EXCLUSIVE", False, None)},
    ),
    "int to bigint: ACCESS EXCLUSIVE and a rewrite (of its indexes too)": (
        "ALTER TABLE users ALTER COLUMN n TYPE bigint",
        {"public.users": ("ACCESS EXCLUSIVE", True, True), "public.users_pkey": ("ACCESS EXCLUSIVE", True, None)},
    ),
    "varchar(10) to varchar(20): ACCESS EXCLUSIVE, no rewrite": (
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(20)",
        {"public.users": ("ACCESS EXCLUSIVE", False, False)},
    ),
    "add column with a constant default: no rewrite (PostgreSQL 11+)": (
        "ALTER TABLE users ADD COLUMN plan text DEFAULT 'free'",
        {"public.users": ("ACCESS EXCLUSIVE", False, False)},
    ),
    "add column with a volatile default: rewrite": (
        "ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT clock_timestamp()",
        {"public.users": ("ACCESS EXCLUSIVE", True, True), "public.users_pkey": ("ACCESS EXCLUSIVE", True, None)},
    ),
    "add column with random(): rewrite": (
        "ALTER TABLE users ADD COLUMN r float8 DEFAULT random()",
        {"public.users": ("ACCESS EXCLUSIVE", True, True), "public.users_pkey": ("ACCESS EXCLUSIVE", True, None)},
    ),
    "foreign key NOT VALID: SHARE ROW EXCLUSIVE on both tables, no scan": (
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
        {
            "public.orders": ("SHARE ROW EXCLUSIVE", False, False),
            "public.users": ("SHARE ROW EXCLUSIVE", False, False),
            "public.users_pkey": ("ACCESS SHARE", False, None),
        },
    ),
    "foreign key validated: the same locks, and the referencing table is scanned": (
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id)",
        {
            "public.orders": ("SHARE ROW EXCLUSIVE", False, True),
            "public.users": ("SHARE ROW EXCLUSIVE", False, False),
            "public.users_pkey": ("ACCESS SHARE", False, None),
            "public.orders_pkey": ("ACCESS SHARE", False, None),
        },
    ),
    "set not null: ACCESS EXCLUSIVE while the table is scanned": (
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL",
        {"public.users": ("ACCESS EXCLUSIVE", False, True)},
    ),
    "a new table's own locks are not reported": (
        "CREATE TABLE audit (id int PRIMARY KEY);\nALTER TABLE audit ALTER COLUMN id TYPE bigint",
        {},
    ),
}


@pytest.fixture
def conn(pg_server: Server, db_name: str) -> Iterator[psycopg.Connection]:
    with pg_server.connect(db_name, autocommit=True) as connection:
        connection.execute(SETUP)
        yield connection


def measure(
    pg_server: Server,
    db_name: str,
    conn: psycopg.Connection,
    text: str,
    *,
    monitor: bool = True,
    named: bool = True,
    functions: bool = False,
) -> LockReport:
    """Run *text* as a migration would run: in one transaction when it can, statement by statement otherwise.

    The pre-existing relations are PRE_EXISTING by name, or (*named* false)
    the database's own, as the rehearsal measures; with *functions*, read
    through the harness schema's functions, as a tracked rehearsal does.
    """
    if functions:
        conn.execute(("CREATE SCHEMA IF NOT EXISTS harness;" + server_functions_sql()).encode())
    statements = parse_sql(text, "m.sql")
    transactional = all(s.transactional for s in statements)
    if transactional:
        conn.execute("BEGIN")
    report = run_measured(
        conn,
        statements,
        "m.sql",
        pre_existing=PRE_EXISTING if named else None,
        monitor=(lambda: pg_server.connect(db_name, autocommit=True)) if monitor else None,
        functions=functions,
    )
    if transactional:
        conn.execute("COMMIT")
    return report


@pytest.mark.parametrize(
    "named, functions", [(True, False), (False, False), (False, True)],
    ids=["by name", "the database's own", "through the harness functions"],
)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_measured_locks_match_postgresql(
    pg_server: Server, db_name: str, conn: psycopg.Connection, case: str, named: bool, functions: bool
) -> None:
    text, expected = CASES[case]
    report = measure(pg_server, db_name, conn, text, named=named, functions=functions)
    assert report.pre_existing == len(PRE_EXISTING)
    seen = {
        rel.relation: (rel.mode, rel.rewritten, rel.scanned)
        for statement in report.statements
        for rel in statement.relations
    }
    assert seen == expected, report.table()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_concurrent_index_is_sampled_outside_a_transaction(
    pg_server: Server, db_name: str, conn: psycopg.Connection
) -> None:
    report = measure(pg_server, db_name, conn, "CREATE INDEX CONCURRENTLY users_email ON users (email)")
    [statement] = report.statements
    assert statement.measured == "sampled" and not report.in_transaction
    assert report.holds() == []
    assert "(sampled)" in report.table()
    # Without a second connection nothing is claimed about its locks.
    conn.execute("DROP INDEX users_email")
    blind = measure(pg_server, db_name, conn, "CREATE INDEX CONCURRENTLY users_email ON users (email)", monitor=False)
    assert blind.statements[0].measured == "not measured" and blind.statements[0].relations == ()

    def refused() -> psycopg.Connection:
        raise psycopg.OperationalError("too many clients already")

    conn.execute("DROP INDEX users_email")
    statements = parse_sql("CREATE INDEX CONCURRENTLY users_email ON users (email)", "m.sql")
    degraded = run_measured(conn, statements, "m.sql", pre_existing=PRE_EXISTING, monitor=refused)
    assert degraded.statements[0].measured == "not measured"  # the migration ran; its locks went unmeasured


def test_lock_taken_early_is_held_by_the_later_statements(
    pg_server: Server, db_name: str, conn: psycopg.Connection
) -> None:
    report = measure(
        pg_server, db_name, conn, "ALTER TABLE users ADD COLUMN nick text;\nSELECT pg_sleep(0.05);\nSELECT 1"
    )
    first, sleep, last = report.statements
    assert [r.mode for r in first.relations] == ["ACCESS EXCLUSIVE"] and not first.relations[0].held_before
    assert sleep.relations[0].held_before and last.relations[0].held_before
    [hold] = report.holds()
    assert hold.seconds >= 0.05 and hold.first is first and hold.last is last
    assert "(held)" in report.table()


def test_statement_by_statement_migration_measures_each_in_its_own_transaction(
    pg_server: Server, db_name: str, conn: psycopg.Connection
) -> None:
    report = measure(
        pg_server,
        db_name,
        conn,
        "ALTER TABLE users ADD COLUMN nick text;\nCREATE INDEX CONCURRENTLY users_nick ON users (nick);",
    )
    alter, index = report.statements
    assert (alter.measured, [r.mode for r in alter.relations]) == ("transaction", ["ACCESS EXCLUSIVE"])
    assert (index.measured, [r.mode for r in index.relations]) == ("sampled", ["SHARE UPDATE EXCLUSIVE"])
    assert [h.seconds for h in report.holds()] == [alter.seconds]  # the lock ended with its statement


def test_failure_is_reported_and_leaves_the_connection_usable(
    pg_server: Server, db_name: str, conn: psycopg.Connection
) -> None:
    statements = parse_sql("ALTER TABLE users ADD COLUMN a int;\nALTER TABLE nope ADD COLUMN b int;", "m.sql")
    with pytest.raises(StatementFailed, match='m.sql:2:1: .*relation "nope" does not exist'):
        run_measured(conn, statements, "m.sql", pre_existing=PRE_EXISTING)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # LOCK TABLE outside a transaction fails as it would on the target: it is not wrapped to be measured.
    with pytest.raises(StatementFailed, match="LOCK TABLE can only be used in transaction blocks"):
        run_measured(conn, parse_sql("LOCK TABLE users", "m.sql"), "m.sql", pre_existing=PRE_EXISTING)


def test_with_a_seed_validating_a_foreign_key_holds_its_lock_longer(
    pg_server: Server, db_name: str, conn: psycopg.Connection
) -> None:
    conn.execute(
        "INSERT INTO users SELECT g, 'u', g FROM generate_series(1, 20000) g;"
        "INSERT INTO orders SELECT g, g, g FROM generate_series(1, 20000) g; ANALYZE"
    )
    fk = "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id)"
    not_valid = measure(pg_server, db_name, conn, fk + " NOT VALID")
    conn.execute("ALTER TABLE orders DROP CONSTRAINT orders_user_fk")
    validated = measure(pg_server, db_name, conn, fk)
    assert validated.holds()[0].seconds > not_valid.holds()[0].seconds
    assert judge(validated, LockPolicy(budget=0)).problems


# ---------------------------------------------------------------------------
# The locks item of a rehearsal
# ---------------------------------------------------------------------------

USERS = "CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, email varchar(10), n int);"
DEFAULTS = "idempotent: false, rollback: false, backward_compatible: false, lint: false"


def rehearse(
    pg_server: Server, tmp_path: Path, migrations: dict[str, str], locks: str = "", steps: str = ""
) -> dict[str, tuple[str, str]]:
    """Rehearse *migrations* with the ``locks`` defaults *locks* (none: the built-in ones) and *steps*."""
    (tmp_path / "migrations").mkdir()
    for name, text in migrations.items():
        (tmp_path / "migrations" / name).write_text(textwrap.dedent(text))
    (tmp_path / "plans").mkdir()
    path = tmp_path / "plans" / "p.yaml"
    defaults = DEFAULTS + (f", locks: {locks}" if locks else "")
    path.write_text(f"migrations: migrations/\nrehearsal: {{provider: embedded}}\ndefaults: {{{defaults}}}\n{steps}")
    with Rehearsal(load_plan(path), pg_server) as rehearsal:
        return {item.id: (outcome.status, outcome.message) for item, outcome in rehearsal.run_all()}


# (migration after 1_users, locks defaults, steps, status, fragments of the locks item's message)
REHEARSED: dict[str, tuple[str, str, str, str, list[str]]] = {
    "rewrite fails": (
        "ALTER TABLE users ALTER COLUMN n TYPE bigint;",
        "",
        "",
        FAILED,
        ["2_m locks or rewrites tables that existed before it", "2_m.sql:1 rewrote public.users, public.users_pkey",
         "ACCESS EXCLUSIVE", "allow_rewrite: true", "rewritten"],
    ),
    "rewrite acknowledged": (
        "ALTER TABLE users ALTER COLUMN n TYPE bigint;",
        "",
        "steps:\n  - migration: 2_m\n    locks: {allow_rewrite: true}\n    reason: users is tiny\n",
        PASSED,
        ["acknowledged:", "2_m.sql:1 rewrote public.users", "(reason: users is tiny)"],
    ),
    "volatile default fails": (
        "ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT clock_timestamp();",
        "",
        "",
        FAILED,
        ["rewrote public.users"],
    ),
    "constant default passes": (
        "ALTER TABLE users ADD COLUMN plan text DEFAULT 'free';",
        "true",
        "",
        PASSED,
        ["longest write-blocking lock: public.users ACCESS EXCLUSIVE (blocks reads, writes)", "(budget 2 s)",
         "no rewrite", "statement  relation"],
    ),
    "index without CONCURRENTLY is over a zero budget": (
        "CREATE INDEX users_email ON users (email);",
        "{budget: 0}",
        "",
        FAILED,
        ["public.users SHARE (blocks writes)", "over the budget of 0 ms", "allow_modes: [SHARE]"],
    ),
    "SHARE acknowledged under a zero budget": (
        "CREATE INDEX users_email ON users (email);",
        "{budget: 0, allow_modes: [SHARE]}",
        "",
        PASSED,
        ["acknowledged:", "public.users SHARE", "mode allowed"],
    ),
    "concurrent index passes a zero budget": (
        "CREATE INDEX CONCURRENTLY users_email ON users (email);",
        "{budget: 0}",
        "",
        PASSED,
        ["SHARE UPDATE EXCLUSIVE", "(sampled)", "no write-blocking lock"],
    ),
    "foreign key NOT VALID under a zero budget": (
        "CREATE TABLE orders (id int PRIMARY KEY, user_id int);\n"
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;",
        "{budget: 0}",
        "",
        FAILED,  # users is write-blocked (SHARE ROW EXCLUSIVE) however short; orders is new and not reported
        ["public.users SHARE ROW EXCLUSIVE (blocks writes)"],
    ),
    "a new table's own locks are not flagged": (
        "CREATE TABLE audit (id int PRIMARY KEY, at timestamptz);\n"
        "ALTER TABLE audit ALTER COLUMN id TYPE bigint;\n"
        "CREATE INDEX audit_at ON audit (at);",
        "{budget: 0}",
        "",
        PASSED,
        ["3 statements, no write-blocking lock on any of the 2 pre-existing tables and indexes", "no rewrite"],
    ),
}


@pytest.mark.parametrize("case", list(REHEARSED), ids=list(REHEARSED))
def test_locks_item(pg_server: Server, tmp_path: Path, case: str) -> None:
    migration, locks, steps, status, fragments = REHEARSED[case]
    results = rehearse(pg_server, tmp_path, {"1_users.sql": USERS, "2_m.sql": migration}, locks, steps)
    got, message = results["2_m::locks"]
    assert got == status, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert results["1_users::locks"][0] == PASSED  # creating a table touches nothing that existed


def test_locks_item_follows_apply_and_can_be_turned_off(pg_server: Server, tmp_path: Path) -> None:
    plan = "steps:\n  - migration: 2_m\n    locks: false\n"
    migrations = {"1_users.sql": USERS, "2_m.sql": "ALTER TABLE users ALTER COLUMN n TYPE bigint;"}
    results = rehearse(pg_server, tmp_path, migrations, steps=plan)
    assert list(results) == ["1_users::apply", "1_users::locks", "2_m::apply"]
    assert all(status == PASSED for status, _ in results.values())


def test_the_database_s_own_relations_are_the_ones_a_snapshot_lists(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        CREATE SCHEMA "Odd Name";
        CREATE TABLE "Odd Name"."Mixed Case" (id int PRIMARY KEY);
        CREATE TABLE part (id int, v text) PARTITION BY RANGE (id);
        CREATE TABLE part1 PARTITION OF part FOR VALUES FROM (0) TO (10);
        CREATE INDEX ON part (v);
        CREATE MATERIALIZED VIEW mv AS SELECT id FROM users;
        CREATE UNIQUE INDEX mv_id ON mv (id);
        CREATE VIEW v AS SELECT 1 AS one;
        CREATE SEQUENCE s;
        CREATE TEMPORARY TABLE scratch (id int PRIMARY KEY);
        CREATE SCHEMA harness;
        CREATE TABLE harness.own (id int PRIMARY KEY);
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        """
    )
    from harness.locks import _Rels, pre_existing_relations
    from harness.snapshot import take_snapshot

    expected = pre_existing_relations(take_snapshot(conn))
    with conn.transaction():
        found = {rel.name: rel.kind for rel in _Rels.of_database(conn, ("harness",)).all().values()}
    assert set(found) == expected
    assert found['"Odd Name"."Mixed Case"'] == "table" and found["public.mv_id"] == "index"
