"""Benchmark the static linter over a generated migration history.

Writes 300 realistic migration files (tables, indexes, constraints, functions
with dollar-quoted bodies, DO blocks, enums, views, data updates) into a temporary
directory, lints them in order with :func:`harness.lint.lint_files` (the
no-database mode), and prints files per second and seconds per 100 files.

    python bench/lint_bench.py [--files 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness.lint import lint_files


def _table(i: int) -> str:
    return f"""-- migration {i}: create table t{i}
SET lock_timeout = '2s';

CREATE TABLE IF NOT EXISTS app.t{i} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL,
    name varchar(120) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    amount numeric(12,2),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);

COMMENT ON TABLE app.t{i} IS 'Generated table {i}; used by the benchmark';
CREATE INDEX IF NOT EXISTS t{i}_account_idx ON app.t{i} (account_id, created_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS t{i}_name_key ON app.t{i} (lower(name)) WHERE status <> 'deleted';
"""


def _function(i: int) -> str:
    return f"""-- migration {i}: trigger function
CREATE OR REPLACE FUNCTION app.touch_{i}() RETURNS trigger
    LANGUAGE plpgsql
    AS $fn$
DECLARE
    v_now timestamptz := clock_timestamp();  -- ';' inside the body must not split it
BEGIN
    IF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
        RAISE NOTICE 'touch %; %', TG_TABLE_NAME, v_now;
    END IF;
    NEW.updated_at := v_now;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS t{i}_touch ON app.t{i - 1};
CREATE TRIGGER t{i}_touch BEFORE UPDATE ON app.t{i - 1}
    FOR EACH ROW EXECUTE FUNCTION app.touch_{i}();
"""


def _constraints(i: int) -> str:
    return f"""-- migration {i}: constraints, NOT VALID then VALIDATE (in one transaction: flagged)
SET lock_timeout = '2s';
ALTER TABLE app.t{i - 2} ADD CONSTRAINT t{i - 2}_amount_positive CHECK (amount >= 0) NOT VALID;
ALTER TABLE app.t{i - 2} VALIDATE CONSTRAINT t{i - 2}_amount_positive;
ALTER TABLE app.t{i - 2}
    ADD CONSTRAINT t{i - 2}_parent_fk FOREIGN KEY (account_id) REFERENCES app.t{i - 3} (id) NOT VALID;
ALTER TABLE app.t{i - 2} ADD COLUMN IF NOT EXISTS note text;
ALTER TABLE app.t{i - 2} ALTER COLUMN name TYPE varchar(200);
"""


def _enum(i: int) -> str:
    return f"""-- migration {i}: enum and view
CREATE TYPE app.state_{i} AS ENUM ('new', 'active', 'closed');
ALTER TYPE app.state_{i} ADD VALUE IF NOT EXISTS 'archived' AFTER 'closed';
CREATE OR REPLACE VIEW app.v_{i} AS
    SELECT t.id, t.name, count(*) FILTER (WHERE t.status = 'active') OVER (PARTITION BY t.account_id) AS active
      FROM app.t{i - 4} AS t
     WHERE t.created_at > now() - interval '30 days'
     ORDER BY t.id;
"""


def _data(i: int) -> str:
    rows = ",\n".join(f"    ({n}, 'name {n}''s', 'new', '{{\"k\": {n}}}')" for n in range(20))
    return f"""-- migration {i}: data
INSERT INTO app.t{i - 5} (account_id, name, status, payload) VALUES
{rows}
ON CONFLICT DO NOTHING;

UPDATE app.t{i - 5} SET status = 'active'
 WHERE id IN (SELECT id FROM app.t{i - 5} WHERE status = 'new' ORDER BY id LIMIT 1000);

WITH moved AS (
    DELETE FROM app.t{i - 5} WHERE status = 'deleted' RETURNING *
)
INSERT INTO app.t{i - 6} (account_id, name, status) SELECT account_id, name, status FROM moved;
"""


def _risky(i: int) -> str:
    return f"""-- migration {i}: the kind of thing the linter is for
CREATE INDEX t{i - 6}_status_idx ON app.t{i - 6} (status);
ALTER TABLE app.t{i - 6} ADD COLUMN token uuid DEFAULT gen_random_uuid();
ALTER TABLE app.t{i - 6} ALTER COLUMN amount SET NOT NULL;  -- harness:allow set-not-null backfilled in {i - 1}
ALTER TABLE app.t{i - 6} RENAME COLUMN note TO remark;
"""


def _do_block(i: int) -> str:
    return f"""-- migration {i}: guarded DDL in a DO block (its statements are linted too)
DO $do$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 't{i - 7}_account_fk') THEN
        ALTER TABLE app.t{i - 7}
            ADD CONSTRAINT t{i - 7}_account_fk FOREIGN KEY (account_id) REFERENCES app.t{i - 8} (id) NOT VALID;
    END IF;
    SELECT count(*) INTO n FROM app.t{i - 7};
    IF n < 1000 THEN
        EXECUTE 'CREATE INDEX IF NOT EXISTS t{i - 7}_updated_idx ON app.t{i - 7} (updated_at)';
    END IF;
EXCEPTION WHEN duplicate_object THEN
    RAISE NOTICE 'already there; %', SQLERRM;
END
$do$;
"""


_KINDS = [_table, _table, _function, _constraints, _enum, _data, _risky, _do_block]


def write_history(folder: Path, count: int, seed: int = 7) -> list[Path]:
    """Write *count* migration files into *folder* and return them in order."""
    rng = random.Random(seed)
    paths = []
    preamble = (folder / "0000_schema.sql")
    preamble.write_text("CREATE SCHEMA IF NOT EXISTS app;\n"
                        + "".join(_table(i) for i in range(8)))
    for i in range(count):
        kind = _KINDS[0] if i < 8 else rng.choice(_KINDS)
        text = kind(i + 8)  # t0..t7 come from the preamble; a later t{n} exists if migration n made it
        path = folder / f"{i + 1:04d}_{kind.__name__.strip('_')}_{i}.sql"
        path.write_text(text)
        paths.append(path)
    return [preamble, *paths][:count]


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lint-bench-") as tmp:
        paths = write_history(Path(tmp), args.files)
        size = sum(p.stat().st_size for p in paths)
        best = float("inf")
        findings = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            findings = lint_files(paths)
            best = min(best, time.perf_counter() - start)
    by_rule = Counter(f.rule for f in findings)
    print(f"files: {len(paths)}  ({size / 1024:.0f} KiB of SQL)")
    print(f"findings: {len(findings)}  " + ", ".join(f"{r}={n}" for r, n in by_rule.most_common()))
    print(f"best of {args.repeat}: {best:.3f} s  ->  {len(paths) / best:.0f} files/s, "
          f"{best / len(paths) * 100:.3f} s per 100 files")


if __name__ == "__main__":
    main()
