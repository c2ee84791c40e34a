"""The rehearsed-prefix cache: a warm rehearsal restores what a green one proved and rehearses only the rest.

Which migrations' SQL actually ran is observed from outside the rehearsal
database: every migration appends its id to a file through ``COPY ... TO
PROGRAM`` (the rehearsal role is a superuser), once per run of its up (apply,
second apply, up again after the down).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import PlanError
from harness.plan import load_plan
from harness.rehearsal import CACHED, PASSED
from harness.runner import RehearsalResult, rehearse_plan
from tests.projects import cli

PLAN = """\
migrations: migrations/
rehearsal: {provider: embedded, seed: seed.sql}
defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: true}
substitutions:
  - {literal: __GREETING__, value: hello}
"""
SEED = "CREATE TABLE customers (id int PRIMARY KEY, name text);\nINSERT INTO customers VALUES (1, 'a'), (2, 'b');\n"


@pytest.fixture
def ran() -> Iterator[Path]:
    """A file the rehearsal server may append to (it may run as another system user)."""
    directory = Path(tempfile.mkdtemp(prefix="mh-cache-test-"))
    directory.chmod(0o777)
    path = directory / "ran.log"
    path.touch()
    path.chmod(0o666)
    try:
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _logging(mid: str, ran: Path, sql: str) -> str:
    """*sql* that also appends *mid* to *ran* each time it runs."""
    return f"COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; echo {mid} >> {ran}';\n{sql}\n"


def _migrations(ran: Path, count: int) -> dict[str, str]:
    files = {
        "1_users.sql": _logging(
            "1_users", ran,
            "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, greeting text DEFAULT '__GREETING__');",
        ),
        "1_users.down.sql": "DROP TABLE IF EXISTS users;",
        "2_orders.sql": _logging(
            "2_orders", ran, "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users);"
        ),
        "2_orders.down.sql": "DROP TABLE IF EXISTS orders;",
        "3_nick.sql": _logging("3_nick", ran, "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;"),
        "3_nick.down.sql": "ALTER TABLE users DROP COLUMN IF EXISTS nick;",
        "4_vip.sql": _logging("4_vip", ran, "ALTER TABLE customers ADD COLUMN IF NOT EXISTS vip boolean DEFAULT false;"),
        "4_vip.down.sql": "ALTER TABLE customers DROP COLUMN IF EXISTS vip;",
    }
    wanted = {f"{n}_" for n in range(1, count + 1)}
    return {name: text for name, text in files.items() if name[:2] in wanted}


def _project(root: Path, ran: Path, count: int, plan: str = PLAN) -> Path:
    (root / "migrations").mkdir(parents=True, exist_ok=True)
    for old in (root / "migrations").glob("*.sql"):
        old.unlink()
    for name, text in _migrations(ran, count).items():
        (root / "migrations" / name).write_text(text)
    (root / "seed.sql").write_text(SEED)
    (root / "plans").mkdir(exist_ok=True)
    (root / "plans" / "p.yaml").write_text(plan)
    return root / "plans" / "p.yaml"


def _rehearse(plan_path: Path, ran: Path, **options: object) -> tuple[RehearsalResult, list[str]]:
    """Rehearse; return the result and the migrations whose up ran (in order, once per run)."""
    ran.write_text("")
    result = rehearse_plan(load_plan(plan_path), **options)  # type: ignore[arg-type]
    assert result.ok, [(r.id, r.message) for r in result.items if not r.outcome.ok]
    return result, ran.read_text().split()


def _statuses(result: RehearsalResult) -> dict[str, str]:
    return {r.id.split("::", 1)[1]: r.status for r in result.items}


def _cached_migrations(result: RehearsalResult) -> set[str]:
    return {r.item.migration.id for r in result.items if r.status == CACHED}


def _receipt(result: RehearsalResult) -> dict[str, object]:
    assert result.receipt is not None
    data = json.loads(result.receipt.read_text())
    del data["created_at"]
    return data


def test_a_warm_rehearsal_runs_only_the_new_migration_and_writes_the_same_receipt(tmp_path: Path, ran: Path) -> None:
    plan_path = _project(tmp_path, ran, 2)
    cold, ups = _rehearse(plan_path, ran)
    assert cold.cached == 0 and cold.skipped == 0
    assert {"1_users", "2_orders"} <= set(ups)
    assert cold.receipt is not None
    first_receipt = hashlib.sha256(cold.receipt.read_bytes()).hexdigest()
    entries = list((tmp_path / ".harness" / "cache" / "p").glob("*.json"))
    assert len(entries) == 1
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in entries[0].parent.iterdir())

    _project(tmp_path, ran, 3)  # a pull request adds one migration
    warm, ups = _rehearse(plan_path, ran)
    assert set(ups) == {"3_nick"}, "the cached migrations' SQL must not run again"
    statuses = _statuses(warm)
    assert {i for i, s in statuses.items() if s == CACHED} == {
        f"{m}::{a}" for m in ("1_users", "2_orders") for a in ("lint", "apply", "locks", "idempotent", "rollback", "backward_compatible", "preserve_rows")
    }
    for item in warm.items:
        if item.status == CACHED:
            assert item.message == f"verified by rehearsal {first_receipt[:12]} (cached)"
    assert all(statuses[f"3_nick::{a}"] == PASSED for a in ("lint", "apply", "idempotent", "rollback"))
    # The new down runs and must bring back the restored state; the downs below it ran from that state before.
    (chain,) = [r for r in warm.items if r.id == "p::chain_rollback"]
    assert chain.status == PASSED
    assert chain.message.endswith(f"the 2 below 3_nick: verified by rehearsal {first_receipt[:12]} (cached)")
    assert "cached" in warm.summary() and warm.to_dict()["cached"] == warm.cached

    # The warm receipt is the cold one: apply checks exactly what was rehearsed.
    warm_receipt = _receipt(warm)
    cold3, ups = _rehearse(plan_path, ran, cache=False)
    assert cold3.cached == 0 and {"1_users", "2_orders", "3_nick"} <= set(ups)
    assert warm_receipt == _receipt(cold3)

    # The warm run's entry shares the cold run's archive: restoring it applies 3_nick again, once.
    entries = sorted((tmp_path / ".harness" / "cache" / "p").glob("*.dump"), key=lambda p: p.stat().st_mtime)
    assert len(entries) == 2 and entries[0].samefile(entries[1])

    # Nothing new: every item of every migration is cached, and the chain from the state restored.
    again, ups = _rehearse(plan_path, ran)
    assert ups == ["3_nick"]
    assert _cached_migrations(again) == {"1_users", "2_orders", "3_nick"}
    assert _statuses(again)["chain_rollback"] == CACHED
    assert _receipt(again) == warm_receipt


def _change_old_migration(root: Path, plan: str) -> str:
    path = root / "migrations" / "2_orders.sql"
    path.write_text(path.read_text() + "COMMENT ON TABLE orders IS 'changed';\n")
    return plan


def _change_seed(root: Path, plan: str) -> str:
    (root / "seed.sql").write_text(SEED + "INSERT INTO customers VALUES (3, 'c');\n")
    return plan


def _change_substitution(root: Path, plan: str) -> str:
    return plan.replace("value: hello", "value: bonjour")


def _change_step(root: Path, plan: str) -> str:
    return plan + "steps:\n  - {migration: 2_orders, idempotent: false}\n"


@pytest.mark.parametrize(
    ("change", "still_cached"),
    [
        (_change_old_migration, {"1_users"}),
        (_change_seed, set()),
        (_change_substitution, set()),
        (_change_step, {"1_users"}),
    ],
    ids=["old-migration", "seed", "substitution", "step-setting"],
)
def test_a_change_invalidates_the_cache_from_where_it_is(
    tmp_path: Path, ran: Path, change: object, still_cached: set[str]
) -> None:
    # Entries are written at the head of green rehearsals: one after each of three pull requests.
    for count in (1, 2, 3):
        plan_path = _project(tmp_path, ran, count)
        _rehearse(plan_path, ran)
    plan_path.write_text(change(tmp_path, PLAN))  # type: ignore[operator]
    result, ups = _rehearse(plan_path, ran)
    assert _cached_migrations(result) == still_cached
    assert set(ups) == {"1_users", "2_orders", "3_nick"} - still_cached


def _truncate_entry(entry: Path) -> None:
    entry.write_text(entry.read_text()[:100])


def _corrupt_dump(entry: Path) -> None:
    dump = entry.with_suffix(".dump")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))


def _forge_dump(entry: Path) -> None:
    """A well-formed archive of another state, with its hash recorded: only the self-check can tell."""
    data = json.loads(entry.read_text())
    dump = entry.with_suffix(".dump")
    raw = dump.read_bytes().replace(b"nick", b"nack")
    dump.write_bytes(raw)
    data["dump_sha256"] = hashlib.sha256(raw).hexdigest()
    entry.write_text(json.dumps(data))


def _forge_data(entry: Path) -> None:
    data = json.loads(entry.read_text())
    data["data"] = [[t, c + 1, h] for t, c, h in data["data"]]
    entry.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [_truncate_entry, _corrupt_dump, _forge_dump, _forge_data],
                         ids=["truncated-entry", "corrupt-dump", "other-state", "other-data"])
def test_a_damaged_cache_is_ignored_with_a_warning(tmp_path: Path, ran: Path, damage: object) -> None:
    plan_path = _project(tmp_path, ran, 3)
    _rehearse(plan_path, ran)
    (entry,) = (tmp_path / ".harness" / "cache" / "p").glob("*.json")
    damage(entry)  # type: ignore[operator]
    result, ups = _rehearse(plan_path, ran)
    assert result.cached == 0 and result.skipped == 0 and result.failed == 0
    assert {"1_users", "2_orders", "3_nick"} <= set(ups)
    warnings = [w for w in result.warnings if "cache" in w]
    assert len(warnings) == 1, result.warnings
    assert "Traceback" not in warnings[0]
    # The damaged entry was replaced by this rehearsal's: the next one is warm again.
    again, ups = _rehearse(plan_path, ran)
    assert ups == [] and not [w for w in again.warnings if "cache" in w]


def test_an_entry_whose_migrations_applied_again_miss_its_state_goes_on_from_its_archive(
    tmp_path: Path, ran: Path
) -> None:
    plan_path = _project(tmp_path, ran, 2)
    _rehearse(plan_path, ran)
    _project(tmp_path, ran, 3)
    _rehearse(plan_path, ran)  # writes the entry of 3 migrations: the archive of 2, and 3_nick applied again
    directory = tmp_path / ".harness" / "cache" / "p"
    (shared,) = [p for p in directory.glob("*.json") if json.loads(p.read_text())["length"] == 3]
    assert json.loads(shared.read_text())["archive_length"] == 2
    _forge_data(shared)  # what applying 3_nick again gives is no longer what the entry recorded
    result, ups = _rehearse(plan_path, ran)
    warnings = [w for w in result.warnings if "cache" in w]
    assert len(warnings) == 1 and "data differs" in warnings[0], result.warnings
    assert _cached_migrations(result) == {"1_users", "2_orders"} and result.failed == 0
    assert "3_nick" in ups and {"1_users", "2_orders"}.isdisjoint(ups)
    # Applying again proved unreliable here: the new entry has an archive of its own.
    (fresh,) = [p for p in directory.glob("*.json") if json.loads(p.read_text())["length"] == 3]
    assert json.loads(fresh.read_text())["archive_length"] == 3
    assert fresh.with_suffix(".dump").stat().st_nlink == 1


def test_the_chain_runs_in_full_when_the_new_downs_leave_other_data(tmp_path: Path, ran: Path) -> None:
    plan_path = _project(tmp_path, ran, 2)
    _rehearse(plan_path, ran)
    # Its down leaves the row: the chain below it would start from other data than the cached one did.
    plan_path.write_text(PLAN + "steps:\n  - {migration: 3_row, rollback: false, preserve_rows: false}\n")
    (tmp_path / "migrations" / "3_row.sql").write_text("INSERT INTO customers VALUES (9, 'z') ON CONFLICT DO NOTHING;\n")
    (tmp_path / "migrations" / "3_row.down.sql").write_text("DELETE FROM customers WHERE id = 99;\n")
    result, ups = _rehearse(plan_path, ran)
    assert _cached_migrations(result) == {"1_users", "2_orders"}
    (chain,) = [r for r in result.items if r.id == "p::chain_rollback"]
    assert chain.status == PASSED and chain.message.startswith("3 downs rolled") and "cached" not in chain.message


def test_the_newest_entry_restored_ahead_of_the_keys_is_set_aside_when_another_one_fits(
    tmp_path: Path, ran: Path
) -> None:
    plan_path = _project(tmp_path, ran, 2)
    _rehearse(plan_path, ran)
    _change_seed(tmp_path, PLAN)
    _rehearse(plan_path, ran)  # the newest entry: another seed, another archive
    (tmp_path / "seed.sql").write_text(SEED)
    _project(tmp_path, ran, 3)
    result, ups = _rehearse(plan_path, ran)
    assert _cached_migrations(result) == {"1_users", "2_orders"} and set(ups) == {"3_nick"}
    assert not [w for w in result.warnings if "cache" in w], result.warnings


def test_no_cache_neither_reads_nor_writes(tmp_path: Path, ran: Path) -> None:
    plan_path = _project(tmp_path, ran, 2, PLAN.replace("seed: seed.sql}", "seed: seed.sql, cache: false}"))
    _rehearse(plan_path, ran)
    result, ups = _rehearse(plan_path, ran)
    assert result.cached == 0 and "1_users" in ups
    assert not (tmp_path / ".harness" / "cache").exists()
    elsewhere = tmp_path / "ci-cache"
    _rehearse(plan_path, ran, cache=elsewhere)
    result, ups = _rehearse(plan_path, ran, cache=elsewhere)
    assert result.cached > 0 and ups == []


def test_a_failed_rehearsal_is_not_cached(tmp_path: Path, ran: Path) -> None:
    plan_path = _project(tmp_path, ran, 2)
    (tmp_path / "migrations" / "3_bad.sql").write_text("ALTER TABLE nope ADD COLUMN x int;\n")
    result = rehearse_plan(load_plan(plan_path))
    assert result.failed and result.receipt is None
    assert not list((tmp_path / ".harness" / "cache").glob("*/*.json"))


def test_the_plugin_reports_cached_items_as_skipped_with_the_receipt(pytester: pytest.Pytester, ran: Path) -> None:
    _project(pytester.path, ran, 2)
    cold = pytester.runpytest("--migrate-plan", "p", "-p", "no:cacheprovider")
    assert cold.ret == 0
    receipt = hashlib.sha256((pytester.path / ".harness" / "receipts" / "p.json").read_bytes()).hexdigest()
    _project(pytester.path, ran, 3)
    ran.write_text("")
    warm = pytester.runpytest("--migrate-plan", "p", "-p", "no:cacheprovider", "-rs")
    assert warm.ret == 0
    warm.stdout.fnmatch_lines([f"SKIPPED [[]14[]] *: verified by rehearsal {receipt[:12]} (cached)"])
    outcomes = warm.parseoutcomes()
    assert outcomes["skipped"] == 14 and outcomes["passed"] >= 5
    assert set(ran.read_text().split()) == {"3_nick"}
    # The warm run's receipt is written (green: cached items count as proved) and cached in turn.
    assert hashlib.sha256((pytester.path / ".harness" / "receipts" / "p.json").read_bytes()).hexdigest() != receipt
    off = pytester.runpytest("--migrate-plan", "p", "-p", "no:cacheprovider", "--migrate-cache", "false")
    assert off.ret == 0 and "skipped" not in off.parseoutcomes()


def test_the_cache_setting_is_documented_in_the_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--migrate-cache=DIR*", "*harness_cache*"])


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, ".harness/cache"), ("false", None), ("ci/rehearsals", "ci/rehearsals")],
)
def test_the_cache_setting_of_a_plan(tmp_path: Path, setting: str | None, expected: str | None) -> None:
    (tmp_path / "migrations").mkdir()
    text = "migrations: migrations/\n" + (f"rehearsal: {{cache: {setting}}}\n" if setting else "")
    (tmp_path / "p.yaml").write_text(text)
    plan = load_plan(tmp_path / "p.yaml")
    assert plan.rehearsal.cache == (tmp_path / expected if expected else None)


def test_a_bad_cache_setting_is_a_plan_error(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "p.yaml").write_text("migrations: migrations/\nrehearsal: {cache: true}\n")
    with pytest.raises(PlanError, match="a directory or false"):
        load_plan(tmp_path / "p.yaml")


def test_harness_rehearse_shows_cached_items(tmp_path: Path, ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = _project(tmp_path, ran, 2)
    code, out, err = cli(["rehearse", str(plan_path)], capsys)
    assert code == 0 and "CACHED" not in out, out + err
    receipt = hashlib.sha256((tmp_path / ".harness" / "receipts" / "p.json").read_bytes()).hexdigest()
    code, out, err = cli(["rehearse", str(plan_path), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["cached"] == 15 and report["passed"] == 0  # chain_rollback too
    assert {i["status"] for i in report["items"]} == {"cached"}
    assert report["items"][0]["message"] == f"verified by rehearsal {receipt[:12]} (cached)"
    code, out, err = cli(["rehearse", str(plan_path)], capsys)
    assert code == 0 and f"CACHED 1_users::apply: verified by rehearsal {receipt[:12]} (cached)" in out
    assert "0 passed, 0 failed, 0 skipped, 15 cached" in out
    code, out, err = cli(["rehearse", str(plan_path), "--no-cache"], capsys)
    assert code == 0 and "CACHED" not in out and "15 passed" in out
