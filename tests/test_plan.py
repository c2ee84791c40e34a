"""Plans: loading, merging, path rules, interpolation, secrets, and every error with its file:line.

No database here: plans are data, validated before anything connects.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import EXIT_USAGE, PlanError
from harness.plan import (
    SCHEMA_PATH,
    Backup,
    Check,
    Compat,
    Guards,
    Health,
    Hook,
    LockPolicy,
    Plan,
    Query,
    Rehearsal,
    load_plan,
    plan_json_schema,
    resolve_plan_path,
)
from harness.redact import scrub, secret_values

DATA = Path(__file__).parent / "data" / "plans"
PROJECT = DATA / "project"
EXAMPLES = sorted((PROJECT / "plans").glob("*.yaml"))
DOCS = Path(__file__).parents[1] / "docs" / "plans.md"
STAGING_ENV = {"STAGING_DATABASE_URL": "postgresql://app:st4ging-pw@db.internal:5432/staging"}
MIGRATIONS = [
    ("20261101120000_add_users", "20261101120000"),
    ("20261102090000_drop_legacy_name", "20261102090000"),
]


def write_plan(root: Path, text: str, name: str = "bad.yaml") -> Path:
    """A project in *root* with an empty migrations/ and plans/<name> holding *text*."""
    (root / "migrations").mkdir(exist_ok=True)
    (root / "plans").mkdir(exist_ok=True)
    path = root / "plans" / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(root: Path, text: str, env: dict[str, str] | None = None) -> Plan:
    write_plan(root, text)
    return load_plan("bad", cwd=root, env=env or {})


# ---------------------------------------------------------------------------
# A full plan
# ---------------------------------------------------------------------------


@pytest.fixture
def staging() -> Plan:
    return load_plan("staging", cwd=PROJECT, env=STAGING_ENV)


def test_full_plan_loads_into_typed_objects(staging: Plan) -> None:
    plan = staging
    assert plan.name == "staging"
    assert plan.path == PROJECT / "plans" / "staging.yaml"
    assert plan.display_path == "plans/staging.yaml"
    assert plan.root == PROJECT
    assert len(plan.sha256) == 64
    assert plan.migrations_dir == PROJECT / "migrations"
    assert plan.layout == "native"
    assert plan.target_dsn == STAGING_ENV["STAGING_DATABASE_URL"]
    assert plan.mode == "production"
    assert plan.rehearsal == Rehearsal(
        postgres=16, seed=(PROJECT / "seeds" / "staging.sql",), cache=PROJECT / ".harness" / "cache"
    )
    assert plan.guards == Guards(statement_timeout=120.0)
    assert plan.health == Health(
        checks=(Check("users readable", "SELECT count(*) >= 0 FROM users", line=51),),
        url="https://staging.example.com/api/health",
    )
    assert plan.backup == Backup(mode="touched", dir=PROJECT / "backups" / "staging", keep=10)
    assert plan.hooks.pre_run == (Hook("run", "echo migrating staging", 64),)
    assert plan.hooks.pre_migration == (Hook("sql", "hooks/announce.sql", 66, PROJECT / "hooks" / "announce.sql"),)
    assert plan.hooks.post_run == (Hook("python", "deploy_hooks:notify", 68),)
    assert plan.hooks.backup == ()

    old_queries = (
        Query("SELECT id, email FROM users WHERE id = $1", "app/old_queries.sql:2"),
        Query("SELECT count(*)\n  FROM users\n WHERE role = $1", "app/old_queries.sql:4"),
    )
    assert plan.defaults.backward_compatible == Compat(enabled=True, queries=old_queries)
    assert plan.defaults.line == 14

    first, second = plan.steps
    assert first.migration == "20261101120000_add_users"
    assert first.line == 23
    assert first.idempotent is False
    assert first.rollback is True
    assert first.checks == (
        Check("no null emails", "SELECT count(*) FROM users WHERE email IS NULL", expect=0, line=28),
        Check("admins", "SELECT id, role FROM users ORDER BY id", rows=((1, "admin"), (2, "user")), line=29),
    )
    assert first.backward_compatible.queries == old_queries + (
        Query("SELECT id, email FROM users WHERE id = $1", "plans/staging.yaml:26"),
    )
    assert first.allow == ("index-not-concurrent",)
    assert first.reason == "users is empty when this runs"
    assert first.explicit == {"idempotent", "backward_compatible", "checks", "allow", "reason"}

    assert second.migration == "20261102090000"  # quoted: taken as written
    assert second.rollback is False  # rollback: none
    assert second.backward_compatible.allow == ("column-dropped",)
    assert second.backward_compatible.queries == old_queries


def test_plan_is_frozen_and_hides_dsns_from_repr(staging: Plan) -> None:
    with pytest.raises(AttributeError):
        staging.name = "other"  # type: ignore[misc]
    assert isinstance(staging.steps, tuple) and isinstance(staging.steps[0].checks, tuple)
    assert "st4ging-pw" not in repr(staging)


def test_minimal_plan_gets_every_default() -> None:
    plan = load_plan(PROJECT / "plans" / "minimal.yaml", cwd=PROJECT, env={})
    assert plan.name == "minimal"
    assert plan.layout == "auto"
    assert plan.substitutions == () and plan.baseline is None
    assert plan.mode == "development"
    assert plan.target_dsn is None
    assert plan.rehearsal == Rehearsal(cache=PROJECT / ".harness" / "cache")
    assert plan.guards == Guards()
    assert plan.health == Health()
    assert plan.backup == Backup(dir=PROJECT / "backups")
    assert plan.steps == ()
    d = plan.defaults
    assert (d.idempotent, d.rollback, d.lint, d.preserve_rows) == (True, True, True, True)
    assert d.backward_compatible == Compat() and d.checks == () and d.allow == () and d.reason is None


def test_sha256_is_of_the_file_bytes(staging: Plan) -> None:
    import hashlib

    assert staging.sha256 == hashlib.sha256(staging.path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# Merging: step_for and bind
# ---------------------------------------------------------------------------


def test_step_for_merges_step_over_defaults(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        defaults:
          idempotent: false
          backward_compatible: {queries: ["SELECT 1"], allow: [column-dropped]}
          checks: [{name: always, sql: SELECT true}]
          allow: [index-not-concurrent]
        steps:
          - migration: 0002_b
            idempotent: true
            lint: false
            checks: [{name: mine, sql: SELECT 2, expect: 2}]
            allow: [drop-column]
            backward_compatible: {allow: [table-dropped]}
          - migration: 0003
            backward_compatible: false
            rollback: false
        """,
    )
    b = plan.step_for("0002_b", "0002")
    assert b.migration == "0002_b" and b.line == 8
    assert (b.idempotent, b.lint, b.rollback) == (True, False, True)
    assert [c.name for c in b.checks] == ["always", "mine"]
    assert b.allow == ("index-not-concurrent", "drop-column")
    assert b.backward_compatible.allow == ("column-dropped", "table-dropped")
    assert [q.sql for q in b.backward_compatible.queries] == ["SELECT 1"]

    c = plan.step_for("0003_c", "0003")  # matched by version, written unquoted (YAML would read 0003 as 3)
    assert c.migration == "0003"
    assert c.backward_compatible == Compat(enabled=False)
    assert c.rollback is False and c.idempotent is False
    assert [x.name for x in c.checks] == ["always"]

    a = plan.step_for("0001_a", "0001")  # no step: the defaults under its own id
    assert a.migration == "0001_a" and a.explicit == frozenset()
    assert a.idempotent is False and [x.name for x in a.checks] == ["always"]

    plan.bind([("0001_a", "0001"), ("0002_b", "0002"), ("0003_c", "0003")])


def test_locks_merge_over_the_defaults(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        defaults:
          locks: {budget: 500ms, allow_modes: [SHARE]}
        steps:
          - migration: '1'
            locks: {budget: 30s, allow_rewrite: true, allow_modes: [ACCESS EXCLUSIVE]}
            reason: archived table
          - migration: '2'
            locks: false
          - migration: '3'
            locks: true
        """,
    )
    assert plan.defaults.locks == LockPolicy(budget=0.5, allow_modes=("SHARE",))
    one, two, three = (plan.step_for(f"{v}_x", v).locks for v in ("1", "2", "3"))
    assert one == LockPolicy(budget=30.0, allow_rewrite=True, allow_modes=("SHARE", "ACCESS EXCLUSIVE"))
    assert two == LockPolicy(enabled=False, budget=0.5, allow_modes=("SHARE",))
    assert three == plan.defaults.locks
    assert plan.step_for("4_x", "4").locks == plan.defaults.locks


def test_locks_are_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_text(tmp_path, "migrations: migrations/\n").defaults.locks == LockPolicy()
    assert LockPolicy() == LockPolicy(enabled=True, budget=2.0, allow_rewrite=False, allow_modes=())
    off = load_text(tmp_path, "migrations: migrations/\ndefaults: {locks: false}\n")
    assert off.defaults.locks.enabled is False


def test_bind_reports_every_problem_with_suggestions(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        steps:
          - migration: 0002_add_user
          - migration: 0001_a
          - migration: "0001"
          - migration: 0009_gone
        """,
    )
    with pytest.raises(PlanError) as info:
        plan.bind([("0001_a", "0001"), ("0002_add_users", "0002")])
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "plans/bad.yaml:3: step names migration 0002_add_user, which does not exist in migrations/ "
        "(did you mean 0002_add_users?)"
    )
    assert lines[1].startswith("plans/bad.yaml:5: a second step for migration 0001_a")
    assert "first is at line 4" in lines[1]
    assert lines[2].startswith("plans/bad.yaml:6: step names migration 0009_gone, which does not exist")
    assert info.value.exit_code == EXIT_USAGE
    with pytest.raises(PlanError, match="a second step for migration 0001_a"):
        plan.step_for("0001_a", "0001")


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def test_root_is_parent_of_a_plans_directory(tmp_path: Path) -> None:
    write_plan(tmp_path, "migrations: migrations/\nrehearsal: {seed: [seeds/a.sql]}\n", name="p.yaml")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "a.sql").write_text("SELECT 1;\n")
    plan = load_plan("p", cwd=tmp_path, env={})
    assert plan.root == tmp_path
    assert plan.migrations_dir == tmp_path / "migrations"
    assert plan.rehearsal.seed == (tmp_path / "seeds" / "a.sql",)


def test_root_is_the_plan_directory_otherwise(tmp_path: Path) -> None:
    conf = tmp_path / "deploy"
    (conf / "migrations").mkdir(parents=True)
    (conf / "p.yaml").write_text("migrations: migrations\n")
    plan = load_plan("deploy/p.yaml", cwd=tmp_path, env={})
    assert plan.root == conf
    assert plan.migrations_dir == conf / "migrations"
    assert plan.display_path == "deploy/p.yaml"


def test_root_key_is_relative_to_the_plan_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "db" / "migrations").mkdir(parents=True)
    plans = project / "config" / "plans"
    plans.mkdir(parents=True)
    (plans / "p.yaml").write_text("root: ../../db\nmigrations: migrations/\nbackup: {dir: /var/backups/x}\n")
    plan = load_plan(plans / "p.yaml", cwd=tmp_path, env={})
    assert plan.root == project / "db"
    assert plan.migrations_dir == project / "db" / "migrations"
    assert plan.backup.dir == Path("/var/backups/x")  # absolute paths stay as they are


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    write_plan(tmp_path, "migrations: migrations/\nroot: ../nowhere\n")
    with pytest.raises(PlanError) as info:
        load_plan("bad", cwd=tmp_path, env={})
    assert str(info.value).startswith("plans/bad.yaml:2: root: directory ")
    assert "does not exist" in str(info.value)


def test_resolve_plan_path(tmp_path: Path) -> None:
    write_plan(tmp_path, "migrations: migrations/\n", name="staging.yaml")
    write_plan(tmp_path, "migrations: migrations/\n", name="prod.yml")
    assert resolve_plan_path("staging", cwd=tmp_path) == tmp_path / "plans" / "staging.yaml"
    assert resolve_plan_path("prod", cwd=tmp_path) == tmp_path / "plans" / "prod.yml"
    assert resolve_plan_path("plans/prod.yml", cwd=tmp_path) == tmp_path / "plans" / "prod.yml"
    assert resolve_plan_path(tmp_path / "plans" / "staging.yaml") == tmp_path / "plans" / "staging.yaml"


@pytest.mark.parametrize(
    ("setup", "arg", "message"),
    [
        ("both", "stagin", r"^no plan named 'stagin' \(plans/stagin.yaml\) \(did you mean staging\?\); "
         r"plans that exist: prod, staging$"),
        ("both", "nightly", r"^no plan named 'nightly' \(plans/nightly.yaml\); plans that exist: prod, staging$"),
        ("none", "staging", r"^no plan named 'staging': there is no plans/ directory in .*; create plans/staging.yaml"),
        ("empty", "staging", r"^no plan named 'staging': plans/ has no .yaml plans"),
        ("both", "plans/missing.yaml", r"^plan file plans/missing.yaml does not exist; plans there: prod, staging$"),
        ("both", "plans/", r"^plan file plans is a directory, not a plan file"),
        ("both", "staging.yaml", r"^plan file staging.yaml does not exist \(did you mean plans/staging.yaml\?\)$"),
        ("dup", "staging", r"^plan 'staging' is ambiguous: both plans/staging.yaml and plans/staging.yml exist"),
    ],
)
def test_resolve_plan_path_errors(tmp_path: Path, setup: str, arg: str, message: str) -> None:
    if setup in ("both", "dup"):
        write_plan(tmp_path, "migrations: migrations/\n", name="staging.yaml")
        write_plan(tmp_path, "migrations: migrations/\n", name="prod.yml")
    if setup == "dup":
        write_plan(tmp_path, "migrations: migrations/\n", name="staging.yml")
    if setup == "empty":
        (tmp_path / "plans").mkdir()
    with pytest.raises(PlanError) as info:
        resolve_plan_path(arg, cwd=tmp_path)
    assert re.search(message, str(info.value)), str(info.value)
    assert info.value.exit_code == EXIT_USAGE


# ---------------------------------------------------------------------------
# Interpolation and secrets
# ---------------------------------------------------------------------------


def test_interpolation_defaults_and_escapes(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: ${MIGRATIONS_DIR:-migrations}
        mode: ${MODE}
        rehearsal: {postgres: "${PG_MAJOR:-16}"}
        guards: {max_retries: "${RETRIES}", lock_timeout: "${LOCK:-250ms}", require_receipt: "${RECEIPT:-no}"}
        defaults:
          checks:
            - {name: "costs $$5", sql: "SELECT $$1 = $$$$x$$$$ AND $1 IS NULL", expect: "${EXPECTED}"}
        """,
        env={"MODE": "production", "RETRIES": "7", "EXPECTED": "3", "MIGRATIONS_DIR": ""},
    )
    assert plan.migrations_dir == tmp_path / "migrations"  # empty counts as unset for :-
    assert plan.mode == "production"
    assert plan.rehearsal.postgres == 16
    assert plan.guards.max_retries == 7  # an interpolated value is read as YAML would read it in place
    assert plan.guards.lock_timeout == 0.25
    assert plan.guards.require_receipt is False
    check = plan.defaults.checks[0]
    assert check.name == "costs $5"
    assert check.sql == "SELECT $1 = $$x$$ AND $1 IS NULL"  # a lone $ (parameters) is left alone
    assert check.expect == 3


def test_rehearsal_dsn_goes_with_provider_dsn_or_auto(tmp_path: Path) -> None:
    plan = load_text(tmp_path, "migrations: migrations/\nrehearsal: {dsn: 'postgresql://ci@ci-db/postgres'}\n")
    assert (plan.rehearsal.provider, plan.rehearsal.dsn) == ("auto", "postgresql://ci@ci-db/postgres")
    plan = load_text(tmp_path, "migrations: migrations/\nrehearsal: {provider: dsn, dsn: 'host=ci-db'}\n")
    assert (plan.rehearsal.provider, plan.rehearsal.dsn) == ("dsn", "host=ci-db")


def test_secrets_are_registered_for_scrubbing(tmp_path: Path) -> None:
    env = {
        "DB_PASS": "pl4in-pass-word",  # not a secret by name, but the password of a DSN
        "REHEARSAL_URL": "postgresql://ci:url-pass-xyz@ci-db/postgres",  # a secret by name (URL)
        "SLACK_TOKEN": "xoxb-token-value",  # a secret by name (TOKEN)
        "DEPLOY_CONN": "postgresql://deploy:conn-pw-123@db/app",  # not by name: a DSN, its password is
        "DEPLOYER": "alice-the-deployer",  # not a secret
    }
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        target: {dsn: "host=db user=app password=${DB_PASS} dbname=app"}
        rehearsal: {provider: dsn, dsn: "${REHEARSAL_URL}"}
        hooks:
          post_run:
            - run: "notify --token ${SLACK_TOKEN} --who ${DEPLOYER} --db ${DEPLOY_CONN}"
        """,
        env=env,
    )
    registered = secret_values()
    for secret in ("pl4in-pass-word", env["REHEARSAL_URL"], "url-pass-xyz", "xoxb-token-value", "conn-pw-123"):
        assert secret in registered
    assert "alice-the-deployer" not in registered
    text = f"{plan.target_dsn} | {plan.rehearsal.dsn} | {plan.hooks.post_run[0].value}"
    cleaned = scrub(text)
    for secret in ("pl4in-pass-word", "url-pass-xyz", "xoxb-token-value", "conn-pw-123"):
        assert secret not in cleaned
    assert "--token *** --who alice-the-deployer" in cleaned


def test_defaults_written_in_the_plan_are_not_secrets(tmp_path: Path) -> None:
    load_text(tmp_path, "migrations: migrations/\nhealth: {url: '${HEALTH_URL:-https://plain.example/health}'}\n")
    assert "https://plain.example/health" not in secret_values()


@pytest.mark.parametrize(
    ("text", "line", "where"),
    [
        ("migrations: migrations/\nguards:\n  max_retries: ${RETRY_SECRET}\n", 3, "guards.max_retries"),
        ("migrations: migrations/\nmode: ${MODE_TOKEN}\n", 2, "mode"),
        ("migrations: migrations/\nhealth: {url: '${HEALTH_KEY}'}\n", 2, "health.url"),
    ],
)
def test_errors_name_the_variable_never_its_value(tmp_path: Path, text: str, line: int, where: str) -> None:
    value = "hunter2-very-secret"
    env = {"RETRY_SECRET": value, "MODE_TOKEN": value, "HEALTH_KEY": value}
    with pytest.raises(PlanError) as info:
        load_text(tmp_path, text, env=env)
    message = str(info.value)
    assert message.startswith(f"plans/bad.yaml:{line}: {where}: expected ")
    assert "from ${" in message
    assert value not in message


# ---------------------------------------------------------------------------
# Bad input: every error names file:line (exit code 2)
# ---------------------------------------------------------------------------

# (id, plan text, line, fragments of the message after "plans/bad.yaml:<line>: ", in the schema too?)
BAD: list[tuple[str, str, str, list[str], bool]] = [
    ("malformed-yaml", "migrations: migrations/\nmode: 'production\n", "3:1",
     ["invalid YAML: found unexpected end of stream", "quoted scalar at line 2"], False),
    ("malformed-flow", "migrations: migrations/\nguards:\n  lock_timeout: [5s\n  x: 1\n", "4:4",
     ["invalid YAML: expected ',' or ']'"], False),
    ("two-documents", "migrations: a\n---\nmode: production\n", "2:1", ["expected a single document"], False),
    ("empty-file", "", "1", ["the plan is empty", "migrations:"], False),
    ("only-comments", "# nothing yet\n", "1", ["the plan is empty"], False),
    ("list-at-top", "- migrations: migrations/\n", "1", ["a plan must be a mapping", "got a list"], True),
    ("scalar-at-top", "migrations\n", "1", ["a plan must be a mapping", "got a string 'migrations'"], True),
    ("missing-migrations", "mode: production\n", "1", ["missing required key 'migrations'"], True),
    ("unknown-top-key", "migrations: migrations/\nrehersal:\n  provider: auto\n", "2",
     ["unknown key 'rehersal'; did you mean rehearsal?"], True),
    ("unknown-nested-key", "migrations: migrations/\nhealth:\n  timeout: 5s\n  retires: 3\n", "4",
     ["health: unknown key 'retires'; did you mean retries?"], True),
    ("unknown-key-no-match", "migrations: migrations/\nbackup:\n  zzz: 1\n", "3",
     ["backup: unknown key 'zzz'; known keys here: mode, dir, keep"], True),
    ("camel-case-guard", "migrations: migrations/\nguards:\n  maxRetries: 3\n", "3",
     ["guards: unknown key 'maxRetries'; did you mean max_retries? (plan keys are snake_case)"], True),
    ("camel-case-step", "migrations: migrations/\nsteps:\n  - migration: '1'\n    preserveRows: false\n", "4",
     ["steps[0]: unknown key 'preserveRows'; did you mean preserve_rows?"], True),
    ("non-string-key", "migrations: migrations/\n1: x\n", "2", ["keys must be words, got an integer 1"], True),
    ("wrong-type-bool", "migrations: migrations/\ndefaults:\n  idempotent: maybe\n", "3",
     ["defaults.idempotent: expected true or false, got a string 'maybe'"], True),
    ("wrong-type-int", "migrations: migrations/\nguards:\n  max_retries: \"5\"\n", "3",
     ["guards.max_retries: expected a whole number >= 0, got a string '5'"], True),
    ("negative-int", "migrations: migrations/\nhealth: {retries: -1}\n", "2",
     ["health.retries: expected a whole number >= 0, got an integer -1"], True),
    ("wrong-type-list", "migrations: migrations/\nsteps:\n  migration: x\n", "2",
     ["steps: expected a list, got a mapping"], True),
    ("wrong-type-string", "migrations: [a, b]\n", "1", ["migrations: expected a string, got a list"], True),
    ("wrong-type-mapping", "migrations: migrations/\nguards: strict\n", "2",
     ["guards: expected a mapping, got a string 'strict'"], True),
    ("empty-string", "migrations: ''\n", "1", ["migrations: must not be empty"], True),
    ("bad-mode", "migrations: migrations/\nmode: prod\n", "2",
     ["mode: expected one of development, production, got a string 'prod'"], True),
    ("bad-provider", "migrations: migrations/\nrehearsal:\n  provider: podman\n", "3",
     ["rehearsal.provider: expected one of auto, local, embedded, docker, dsn, got a string 'podman'"], True),
    ("bad-rollback", "migrations: migrations/\ndefaults: {rollback: never}\n", "2",
     ["defaults.rollback: expected true, false or none, got a string 'never'"], True),
    ("bad-layout", "migrations: migrations/\nlayout: flyaway\n", "2",
     ["layout: expected one of auto, native, supabase, golang-migrate, diesel, dbmate, goose, flyway, drizzle, "
      "sqitch, prisma, sqlx, atlas, node-pg-migrate, alembic, got a string 'flyaway'"], True),
    ("bad-mirror", "migrations: migrations/\nhistory: {mirror: liquibase}\n", "2",
     ["history.mirror: expected one of diesel, golang-migrate, goose, dbmate, flyway, supabase, drizzle, prisma, "
      "sqlx, got a string 'liquibase'"], True),
    ("mirror-other-layout", "migrations: migrations/\nlayout: dbmate\nhistory:\n  mirror: goose\n", "4",
     ["history.mirror: goose records migrations of the goose layout only, but the plan's layout is dbmate"], False),
    ("substitution-both", "migrations: migrations/\nsubstitutions:\n  - {literal: a, regex: b, value: c}\n", "3",
     ["substitutions[0]: give exactly one of literal, regex (got literal, regex)"], True),
    ("substitution-no-value", "migrations: migrations/\nsubstitutions:\n  - {literal: a}\n", "3",
     ["substitutions[0]: missing required key 'value'"], True),
    ("substitution-bad-regex", "migrations: migrations/\nsubstitutions:\n  - {regex: '(', value: x}\n", "3",
     ["substitutions[0].regex: the regular expression '(' does not compile"], False),
    ("bad-transaction", "migrations: migrations/\nguards: {transaction: per_migration}\n", "2",
     ["guards.transaction: expected one of per-migration, single"], True),
    ("bad-duration", "migrations: migrations/\nguards:\n  lock_timeout: 5 seconds\n", "3",
     ["guards.lock_timeout: expected a duration like \"250ms\", \"5s\", \"2m\", \"1h\" or a number of seconds",
      "got a string '5 seconds'"], True),
    ("negative-duration", "migrations: migrations/\nguards:\n  retry_delay: -3\n", "3",
     ["guards.retry_delay: expected a duration", "got an integer -3"], True),
    ("boolean-duration", "migrations: migrations/\nhealth:\n  timeout: true\n", "3",
     ["health.timeout: expected a duration", "got a boolean True"], True),
    ("bad-factor", "migrations: migrations/\nguards:\n  retry_factor: 0.5\n", "3",
     ["guards.retry_factor: expected a number >= 1, got a number 0.5"], True),
    ("bad-major", "migrations: migrations/\nrehearsal: {postgres: '16.2'}\n", "2",
     ["rehearsal.postgres: expected a PostgreSQL major version like 16 or \"16\" (10 or later), got a string '16.2'"],
     True),
    ("check-without-sql", "migrations: migrations/\ndefaults:\n  checks:\n    - {name: x, expect: 1}\n", "4",
     ["defaults.checks[0]: missing required key 'sql'"], True),
    ("check-expect-and-rows", "migrations: migrations/\ndefaults:\n  checks:\n    - name: x\n      sql: SELECT 1\n"
     "      expect: 1\n      rows: [[1]]\n", "4",
     ["defaults.checks[0]: give at most one of expect and rows; to expect NULL write rows: [[null]]"], True),
    ("check-expect-null", "migrations: migrations/\nhealth:\n  checks:\n    - sql: SELECT NULL\n      expect:\n", "5",
     ["health.checks[0].expect: expect: null is ambiguous; to expect one NULL value write rows: [[null]]"], True),
    ("check-not-mapping", "migrations: migrations/\ndefaults:\n  checks:\n    - SELECT 1\n", "4",
     ["defaults.checks[0]: expected a mapping like {name: ..., sql: ..., expect: ...}, got a string 'SELECT 1'"],
     True),
    ("check-rows-not-rows", "migrations: migrations/\ndefaults:\n  checks:\n    - {sql: SELECT 1, rows: [1, 2]}\n", "4",
     ["defaults.checks[0].rows[0]: expected a list, got an integer 1"], True),
    ("compat-bad", "migrations: migrations/\ndefaults:\n  backward_compatible: yes please\n", "3",
     ["defaults.backward_compatible: expected true, false or a mapping with queries, queries_file, allow"], True),
    ("locks-bad", "migrations: migrations/\ndefaults:\n  locks: sometimes\n", "3",
     ["defaults.locks: expected true, false or a mapping with budget, allow_rewrite, allow_modes, "
      "got a string 'sometimes'"], True),
    ("locks-bad-mode", "migrations: migrations/\nsteps:\n  - migration: '1'\n    locks: {allow_modes: [ACCESS_EXCLUSIVE]}\n",
     "4", ["steps[0].locks.allow_modes[0]: expected one of SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS EXCLUSIVE, "
           "got a string 'ACCESS_EXCLUSIVE'"], True),
    ("locks-bad-budget", "migrations: migrations/\ndefaults:\n  locks: {budget: forever}\n", "3",
     ["defaults.locks.budget: expected a duration like"], True),
    ("locks-unknown-key", "migrations: migrations/\ndefaults:\n  locks: {allow_rewrites: true}\n", "3",
     ["defaults.locks: unknown key 'allow_rewrites'; did you mean allow_rewrite?"], True),
    ("hook-two-kinds", "migrations: migrations/\nhooks:\n  pre_run:\n    - {sql: a.sql, run: echo}\n", "4",
     ["hooks.pre_run[0]: give exactly one of sql, run, python (got sql, run)"], True),
    ("hook-bad-python", "migrations: migrations/\nhooks:\n  post_run:\n    - python: mymodule.notify\n", "4",
     ["hooks.post_run[0].python: expected \"module:function\" like \"mypkg.hooks:notify\""], True),
    ("provider-dsn-without-dsn", "migrations: migrations/\nrehearsal:\n  provider: dsn\n", "3",
     ["rehearsal: provider: dsn needs dsn:"], True),
    ("dsn-with-provider-docker", "migrations: migrations/\nrehearsal:\n  provider: docker\n  dsn: postgresql://x/y\n",
     "4", ["rehearsal: dsn is not used with provider: docker; set provider: dsn to use it, or remove dsn"], True),
    ("bad-url", "migrations: migrations/\nhealth: {url: example.com/health}\n", "2",
     ["health.url: expected an http(s) URL, got a string 'example.com/health'"], True),
    ("bad-name", "name: staging/eu\nmigrations: migrations/\n", "1",
     ["name: expected a name of letters, digits, '.', '_' and '-'"], True),
    ("keep-zero", "migrations: migrations/\nbackup: {keep: 0}\n", "2",
     ["backup.keep: expected a whole number >= 1, got an integer 0"], True),
    ("duplicate-key", "migrations: migrations/\nmode: production\nrehearsal: {}\nmode: development\n", "4",
     ["duplicate key 'mode' (first at line 2); YAML would silently keep only the last one"], False),
    ("duplicate-nested-key", "migrations: migrations/\nguards:\n  lock_timeout: 1s\n  lock_timeout: 2s\n", "4",
     ["duplicate key 'lock_timeout' (first at line 3)"], False),
    ("duplicate-step", "migrations: migrations/\nsteps:\n  - migration: 0001_a\n  - {migration: 0002_b}\n"
     "  - migration: 0001_a\n    lint: false\n", "5",
     ["a second step for migration 0001_a (the first is at line 3); merge them"], False),
    ("missing-variable", "migrations: migrations/\ntarget:\n  dsn: \"${STAGING_DATABASE_URL}\"\n", "3",
     ["target.dsn: environment variable STAGING_DATABASE_URL is not set; export it "
      "(export STAGING_DATABASE_URL=...) or give a default with ${STAGING_DATABASE_URL:-default}"], False),
    ("bad-reference", "migrations: migrations/\nhealth: {url: 'https://${1HOST}/x'}\n", "2",
     ["health.url: a ${...} reference needs a variable name", "write $$ for a literal $"], False),
    ("missing-migrations-dir", "migrations: db/migrations\n", "1",
     ["migrations: directory db/migrations does not exist; paths in a plan are relative to its root, here /"], False),
    ("missing-seed", "migrations: migrations/\nrehearsal:\n  seed:\n    - seeds/a.sql\n    - seeds/b.sql\n", "4",
     ["rehearsal.seed[0]: file seeds/a.sql does not exist"], False),
    ("missing-hook-file", "migrations: migrations/\nhooks:\n  on_failure:\n    - sql: hooks/page.sql\n", "4",
     ["hooks.on_failure[0].sql: file hooks/page.sql does not exist"], False),
    ("missing-queries-file", "migrations: migrations/\ndefaults:\n  backward_compatible:\n"
     "    queries_file: app/q.sql\n", "4",
     ["defaults.backward_compatible.queries_file: file app/q.sql does not exist"], False),
]


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [pytest.param(text, line, fragments, id=case) for case, text, line, fragments, _ in BAD],
)
def test_bad_plan(tmp_path: Path, text: str, line: str, fragments: list[str]) -> None:
    write_plan(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plan("bad", cwd=tmp_path, env={})
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    prefix = f"plans/bad.yaml:{line}: "
    assert message.startswith(prefix), message
    first = message.splitlines()[0]
    for fragment in fragments:
        assert fragment in first, first


def test_step_naming_a_missing_migration(tmp_path: Path) -> None:
    plan = load_text(tmp_path, "migrations: migrations/\nsteps:\n  - migration: 20261101120000_add_user\n")
    with pytest.raises(PlanError) as info:
        plan.bind([("20261101120000_add_users", "20261101120000")])
    assert str(info.value) == (
        "plans/bad.yaml:3: step names migration 20261101120000_add_user, which does not exist in migrations/ "
        "(did you mean 20261101120000_add_users?)"
    )
    assert info.value.exit_code == EXIT_USAGE


def test_unparsable_queries_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text("SELECT 1;\n\nSELEC id FROM users;\n")
    with pytest.raises(PlanError) as info:
        load_text(tmp_path, "migrations: migrations/\ndefaults:\n  backward_compatible: {queries_file: q.sql}\n")
    assert str(info.value).startswith(
        "plans/bad.yaml:3: defaults.backward_compatible.queries_file: q.sql:3: cannot parse: syntax error"
    )


def test_all_errors_are_reported_together_in_line_order(tmp_path: Path) -> None:
    text = """\
    migrations: migrations/
    mode: prod
    guards:
      maxRetries: 3
      lock_timeout: soon
    migrations: other/
    steps:
      - {migration: x, rollback: maybe}
      - {migration: x}
    """
    with pytest.raises(PlanError) as info:
        load_text(tmp_path, text)
    lines = str(info.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "4", "5", "6", "8", "9"]
    assert "a second step for migration x (the first is at line 8)" in lines[-1]
    assert all(line.startswith("plans/bad.yaml:") for line in lines)


def test_anchors_and_aliases_work(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        defaults:
          checks: [&always {name: always, sql: SELECT true}]
        health:
          checks: [*always]
        """,
    )
    assert plan.health.checks[0].name == "always"
    assert plan.defaults.checks[0].sql == "SELECT true"


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    plan = load_text(
        tmp_path,
        """\
        migrations: migrations/
        defaults: &base {idempotent: false, lint: false}
        steps:
          - <<: *base
            migration: "1"
            lint: true
        """,
    )
    step = plan.steps[0]
    assert (step.idempotent, step.lint) == (False, True)


def test_safe_load_semantics_refuse_python_tags(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"^plans/bad.yaml:2:\d+: invalid YAML"):
        load_text(tmp_path, "migrations: migrations/\nname: !!python/object/apply:os.system ['true']\n")


# ---------------------------------------------------------------------------
# The JSON Schema
# ---------------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert committed == plan_json_schema(), "harness/plan.schema.json is stale: run `python -m harness.plan`"


def test_schema_is_draft_2020_12() -> None:
    schema = plan_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["migrations"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "name", "root", "migrations", "layout", "substitutions", "baseline", "target", "mode", "rehearsal",
        "defaults", "steps", "guards", "health", "backup", "hooks", "schema", "schema_matches", "chain_rollback", "column_order", "require_down", "lint",
        "history", "targets", "fleet",
    }


def _validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed; the schema is checked by hand")
    schema = plan_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_the_schema(path: Path) -> None:
    validator = _validator()
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
    assert errors == []


@pytest.mark.parametrize(
    "text",
    [pytest.param(text, id=case) for case, text, _, _, in_schema in BAD if in_schema],
)
def test_schema_rejects_what_the_validator_rejects(text: str) -> None:
    validator = _validator()
    assert not validator.is_valid(yaml.safe_load(text))


def test_docs_show_the_example_plan_verbatim() -> None:
    example = (PROJECT / "plans" / "staging.yaml").read_text(encoding="utf-8")
    assert example in DOCS.read_text(encoding="utf-8"), "docs/plans.md must embed the example plan verbatim"


def test_docs_mention_every_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    schema = plan_json_schema()
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    missing = sorted(k for k in keys if f"`{k}`" not in docs)
    assert missing == []


def test_lint_settings_and_unknown_rule_ids(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "migrations: migrations/\n"
        "lint:\n  severity: {prefer-jsonb: error, drop-column: off}\n  require_lock_timeout: true\n"
    )
    loaded = load_plan(plan)
    assert loaded.lint_severity == {"prefer-jsonb": "error", "drop-column": "off"}
    assert loaded.require_lock_timeout is True
    plan.write_text("migrations: migrations/\ndefaults:\n  allow: [index-not-concurent]\n")
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert "p.yaml:3" in str(info.value) and "did you mean index-not-concurrent?" in str(info.value)
    plan.write_text("migrations: migrations/\nlint: {severity: {prefer-jsonb: fatal}}\n")
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert "lint.severity.prefer-jsonb: expected error, warning, off or false" in str(info.value)
