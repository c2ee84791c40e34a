"""A full rehearsal of a realistic ~300-migration history vs a plain apply of all ups.

Target (adoption issue): apply + idempotent + rollback (up-down-up) +
chain_rollback on ~300 migrations in under 30 s on a 2-core machine.  The
history is generated: tables, columns, indexes (plain and concurrent),
foreign keys added NOT VALID then validated, check constraints, enums and new
enum values, functions, triggers, views, comments and data backfills, each
with its down.  Prints both times and the ratio.

    python bench/history_bench.py [--migrations 300]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from harness.plan import load_plan
from harness.postgres import start_server
from harness.rehearsal import PASSED, Rehearsal


def _migrations(count: int) -> list[tuple[str, str]]:
    """(up, down) pairs forming a consistent, idempotent history."""
    out: list[tuple[str, str]] = []
    tables: list[str] = []
    n = 0
    while len(out) < count:
        n += 1
        t = f"entity_{n}"
        parent = tables[-1] if tables else None
        tables.append(t)
        out.append((
            f"CREATE TABLE IF NOT EXISTS {t} (\n  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            f"  name text NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now()\n);\n"
            f"COMMENT ON TABLE {t} IS 'entity {n}';",
            f"DROP TABLE IF EXISTS {t};",
        ))
        out.append((
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS status text DEFAULT 'new';\n"
            f"UPDATE {t} SET status = 'new' WHERE status IS NULL;",
            f"ALTER TABLE {t} DROP COLUMN IF EXISTS status;",
        ))
        out.append((
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {t}_name_idx ON {t} (name);",
            f"DROP INDEX CONCURRENTLY IF EXISTS {t}_name_idx;",
        ))
        if parent:
            out.append((
                f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {parent}_id bigint;\n"
                f"DO $$ BEGIN\n  ALTER TABLE {t} ADD CONSTRAINT {t}_{parent}_fk FOREIGN KEY ({parent}_id)"
                f" REFERENCES {parent} (id) NOT VALID;\nEXCEPTION WHEN duplicate_object THEN NULL;\nEND $$;\n"
                f"ALTER TABLE {t} VALIDATE CONSTRAINT {t}_{parent}_fk;",
                f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {t}_{parent}_fk;\n"
                f"ALTER TABLE {t} DROP COLUMN IF EXISTS {parent}_id;",
            ))
        out.append((
            f"DO $$ BEGIN\n  CREATE TYPE {t}_kind AS ENUM ('a', 'b');\nEXCEPTION WHEN duplicate_object THEN NULL;\n"
            f"END $$;\nALTER TABLE {t} ADD COLUMN IF NOT EXISTS kind {t}_kind;",
            f"ALTER TABLE {t} DROP COLUMN IF EXISTS kind;\nDROP TYPE IF EXISTS {t}_kind;",
        ))
        out.append((
            f"CREATE OR REPLACE FUNCTION {t}_touch() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n  NEW.name := trim(NEW.name);\n  RETURN NEW;\nEND;\n$$;\n"
            f"CREATE OR REPLACE TRIGGER {t}_touch BEFORE INSERT OR UPDATE ON {t}\n"
            f"  FOR EACH ROW EXECUTE FUNCTION {t}_touch();",
            f"DROP TRIGGER IF EXISTS {t}_touch ON {t};\nDROP FUNCTION IF EXISTS {t}_touch();",
        ))
        out.append((
            f"CREATE OR REPLACE VIEW {t}_recent AS\n  SELECT id, name, status FROM {t}"
            f" WHERE created_at > now() - interval '7 days';",
            f"DROP VIEW IF EXISTS {t}_recent;",
        ))
        out.append((
            f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {t}_name_check;\n"
            f"ALTER TABLE {t} ADD CONSTRAINT {t}_name_check CHECK (length(name) < 200) NOT VALID;",
            f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {t}_name_check;",
        ))
    return out[:count]


def generate(root: Path, count: int) -> Path:
    mdir = root / "migrations"
    mdir.mkdir(parents=True)
    for i, (up, down) in enumerate(_migrations(count), 1):
        (mdir / f"{i:05d}_m{i}.sql").write_text(up + "\n")
        (mdir / f"{i:05d}_m{i}.down.sql").write_text(down + "\n")
    (root / "plans").mkdir()
    plan = root / "plans" / "history.yaml"
    plan.write_text(
        "migrations: migrations/\nrehearsal: {provider: embedded}\n"
        "defaults: {idempotent: true, rollback: true, backward_compatible: false, lint: false}\n"
    )
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migrations", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_server("embedded") as server:
        plan_path = generate(Path(tmp), args.migrations)
        files = sorted(p for p in (Path(tmp) / "migrations").glob("*.sql") if not p.name.endswith(".down.sql"))
        psql = str(server.bindir / "psql") if server.bindir else "psql"
        db = f"bench_{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        server.create_database(db)
        for f in files:  # one psql per file: CONCURRENTLY cannot share a transaction
            subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.dsn(db), "-f", str(f)],
                           check=True, capture_output=True)
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        with Rehearsal(load_plan(plan_path), server) as rehearsal:
            results = rehearsal.run_all()
        full = time.perf_counter() - t0
        bad = [(i.id, o.message) for i, o in results if o.status != PASSED]
        if bad:
            raise SystemExit(f"rehearsal not green: {bad[:3]}")
        print(f"migrations: {args.migrations}, items: {len(results)}, PostgreSQL {server.version}")
        print(f"plain apply of all ups (psql per file): {bare:.2f} s")
        print(f"full rehearsal (apply, idempotent, up-down-up, chain_rollback): {full:.2f} s  (target < 30 s)")
        print(f"ratio: {full / bare:.2f}x")


if __name__ == "__main__":
    main()
