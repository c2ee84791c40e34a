"""Differential test of whole rehearsals: verdicts with incremental snapshots equal verdicts with full ones.

Hypothesis draws small migration histories (native layout, 3-8 migrations)
from building blocks with the shapes real histories have: tables with serial,
identity or uuid keys, constraints and foreign keys; columns added, dropped,
renamed, given defaults or retyped under an index or a view (the view dropped
and recreated in the same migration); indexes plain and ``CONCURRENTLY``;
unique indexes made the primary key ``USING INDEX``; renamed tables, indexes
and constraints; enums, domains, functions, triggers, policies, comments,
grants, sequences, partitions, inheritance and data migrations.  Each up gets
a down that is right or subtly wrong (a forgotten index, comment or default,
a column recreated at another position, a function given another body, rows
restored wrongly, an empty down, no down), and some ups are not idempotent.
Some histories start from a seed with rows, a table and a role.

Each history is rehearsed twice on the session server, with
``HARNESS_SNAPSHOTS=incremental`` (the default) and ``full``; every item
must get the same status (messages may differ), and the incremental run
must never have found its tracked state wrong (the warning that it went on
with full snapshots): every block is DDL the tracking follows, or rows.

The suite runs a fixed, derandomized set of examples plus the pinned
histories below; ``HARNESS_FUZZ_EXAMPLES=500`` (or ``python
bench/verdict_fuzz.py 500``) runs a larger, random one.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import Rehearsal

_EXAMPLES = int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "0") or 0)

PLAN = """\
migrations: migrations/
rehearsal: {provider: embedded%s}
defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: true, locks: %s}
chain_rollback: true
"""

# The role is cluster-wide: created once, by whichever rehearsal comes first.
SEED = """\
DO $$ BEGIN CREATE ROLE harness_fuzz_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL UNIQUE, status text NOT NULL DEFAULT 'active');
INSERT INTO accounts (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 12) g;
"""

FALLBACK = "the rehearsal's incremental snapshot differed"


# ---------------------------------------------------------------- the model of the schema the ups build


@dataclass
class Table:
    name: str
    columns: list[tuple[str, str]]  # (name, type), in order
    key: str | None = None  # primary key constraint name
    key_type: str = "integer"
    unique_index: str | None = None  # a unique index on id, no primary key yet
    indexes: dict[str, str] = field(default_factory=dict)  # index -> column
    checks: list[str] = field(default_factory=list)
    view: tuple[str, list[str]] | None = None  # a view over some of its columns
    children: list[str] = field(default_factory=list)  # tables inheriting from it
    comment: bool = False
    rls: bool = False
    kind: str = "plain"  # plain | child
    seeded: bool = False  # the seed's table: its rows need values the generator does not give


@dataclass
class Model:
    seeded: bool
    tables: list[Table] = field(default_factory=list)
    enums: dict[str, list[str]] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)  # name(x integer) -> body of SELECT
    partitioned: list[tuple[str, list[str]]] = field(default_factory=list)  # parent, attached partitions
    counter: int = 0

    def new(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def propagate(self, table: Table) -> None:
        """Inheriting tables have their parent's columns (they declare none of their own)."""
        for child in self.tables:
            if child.name in table.children:
                child.columns = list(table.columns)

    def with_columns(self, *types: str) -> list[tuple[Table, str]]:
        """(table, column) pairs whose column type is one of *types*, not the key and not used by a view."""
        return [(t, c) for t in self.tables if t.kind == "plain" for c, ty in t.columns
                if ty in types and c != "id" and not (t.view and c in t.view[1])]


@dataclass
class Mig:
    up: str
    down: str | None
    name: str


def _down(draw: st.DrawFn, correct: str, *wrong: str) -> str | None:
    """A down: right two times in three, else subtly wrong, empty or missing."""
    choice = draw(st.integers(0, 8))
    if choice < 6 or not wrong and choice < 7:
        return correct
    if choice < 7:
        return draw(st.sampled_from(wrong))
    return "" if choice == 7 else None


def _guard(idempotent: bool, condition: str, statement: str) -> str:
    """*statement*, run only when *condition* holds when idempotent (a DO block, as real histories write it)."""
    if not idempotent:
        return statement + ";"
    body = statement.replace("'", "''")
    return f"DO $$ BEGIN IF {condition} THEN EXECUTE '{body}'; END IF; END $$;"


def _has_column(table: str, column: str) -> str:
    return (f"EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' "
            f"AND table_name = '{table}' AND column_name = '{column}')")


# ---------------------------------------------------------------- building blocks: (draw, model, idempotent) -> Mig


def create_table(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    name = m.new("t")
    key = draw(st.sampled_from(["serial", "identity", "uuid", "none"]))
    key_sql = {
        "serial": "id serial PRIMARY KEY",
        "identity": "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "uuid": "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        "none": "id integer NOT NULL",
    }[key]
    cols = [key_sql, "name text NOT NULL DEFAULT ''", f"amount integer CONSTRAINT {name}_amount_check CHECK (amount >= 0)"]
    columns = [("id", {"serial": "integer", "identity": "bigint", "uuid": "uuid", "none": "integer"}[key]),
               ("name", "text"), ("amount", "integer")]
    refs = [t for t in m.tables if t.key and t.key_type == "integer" and t.kind == "plain"]
    if m.seeded and draw(st.booleans()):
        cols.append("account_id integer REFERENCES accounts (id) ON DELETE CASCADE")
        columns.append(("account_id", "integer"))
    elif refs and draw(st.booleans()):
        cols.append(f"parent_id integer REFERENCES {draw(st.sampled_from(refs)).name} (id)")
        columns.append(("parent_id", "integer"))
    exists = "IF NOT EXISTS " if idem else ""
    up = f"CREATE TABLE {exists}{name} (\n    " + ",\n    ".join(cols) + "\n);\n"
    if draw(st.booleans()):
        ids = "id, " if key == "none" else ""
        values = "g, " if key == "none" else ""
        up += (f"INSERT INTO {name} ({ids}name, amount) SELECT {values}'row ' || g, g FROM generate_series(1, 3) g"
               + (f" WHERE NOT EXISTS (SELECT 1 FROM {name})" if idem else "") + ";\n")
    m.tables.append(Table(name, columns, key=f"{name}_pkey" if key != "none" else None,
                          key_type=columns[0][1], checks=[f"{name}_amount_check"]))
    drop = f"DROP TABLE IF EXISTS {name}" + (" CASCADE;" if draw(st.booleans()) else ";")
    return Mig(up, _down(draw, drop), f"create_{name}")


def add_column(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain"]))
    column = m.new("c")
    typ, default = draw(st.sampled_from([
        ("text", ""), ("integer", ""), ("integer", " NOT NULL DEFAULT 0"), ("text", " DEFAULT 'n/a'"),
        ("boolean", " NOT NULL DEFAULT false"), ("numeric(10,2)", ""), ("jsonb", " DEFAULT '{}'"),
    ] + [(e, "") for e in m.enums]))
    exists = "IF NOT EXISTS " if idem else ""
    up = f"ALTER TABLE {table.name} ADD COLUMN {exists}{column} {typ}{default};"
    table.columns.append((column, typ))
    m.propagate(table)
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} DROP COLUMN IF EXISTS {column};"), f"add_{column}")


def set_default(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table, column = draw(st.sampled_from(m.with_columns("text", "integer")))
    typ = dict(table.columns)[column]
    value = "'none'" if typ == "text" else "7"
    up = f"ALTER TABLE {table.name} ALTER COLUMN {column} SET DEFAULT {value};"
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} ALTER COLUMN {column} DROP DEFAULT;", "SELECT 1;"),
               f"default_{column}")


def drop_column(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    candidates = [(t, c) for t, c in m.with_columns("text", "integer", "boolean", "jsonb")
                  if c not in t.indexes.values() and c not in ("name", "amount")]
    table, column = draw(st.sampled_from(candidates))
    typ = dict(table.columns)[column]
    table.columns = [(c, ty) for c, ty in table.columns if c != column]
    m.propagate(table)
    exists = "IF EXISTS " if idem else ""
    up = f"ALTER TABLE {table.name} DROP COLUMN {exists}{column};"
    # The column comes back last: another position, and its rows lost.
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {column} {typ};"),
               f"drop_{column}")


def rename_column(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table, column = draw(st.sampled_from(m.with_columns("text", "integer", "boolean")))
    new = m.new(f"{column}_r")
    if column in ("name", "amount"):
        return Mig("SELECT 1;", None, "noop")
    up = _guard(idem, _has_column(table.name, column), f"ALTER TABLE {table.name} RENAME COLUMN {column} TO {new}")
    table.columns = [(new if c == column else c, ty) for c, ty in table.columns]
    table.indexes = {i: (new if c == column else c) for i, c in table.indexes.items()}
    m.propagate(table)
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} RENAME COLUMN {new} TO {column};"), f"rename_{column}")


def retype_column(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """Widen an integer column that an index or a view uses; the view is dropped and recreated around it."""
    pairs = [(t, c) for t in m.tables if t.kind == "plain" for c, ty in t.columns
             if ty == "integer" and c not in ("id", "parent_id", "account_id")
             and (c in t.indexes.values() or (t.view and c in t.view[1]))]
    table, column = draw(st.sampled_from(pairs))
    parts_up, parts_down = [], []
    if table.view:
        view, cols = table.view
        kind = "MATERIALIZED VIEW" if view.startswith("mv_") else "VIEW"
        parts_up.append(f"DROP {kind} IF EXISTS {view};")
        parts_down.append(f"DROP {kind} IF EXISTS {view};")
    parts_up.append(f"ALTER TABLE {table.name} ALTER COLUMN {column} TYPE bigint;")
    parts_down.append(f"ALTER TABLE {table.name} ALTER COLUMN {column} TYPE integer;")
    wrong = [f"ALTER TABLE {table.name} ALTER COLUMN {column} TYPE numeric;"]
    if table.view:
        create = _create_view(view, cols, table.name)
        parts_up.append(create)
        wrong = ["\n".join(parts_down)]  # forgets the view
        parts_down.append(create)
    table.columns = [(c, "bigint" if c == column else ty) for c, ty in table.columns]
    m.propagate(table)
    return Mig("\n".join(parts_up), _down(draw, "\n".join(parts_down), *wrong), f"retype_{column}")


def create_view(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and not t.view]))
    cols = ["id"] + draw(st.lists(st.sampled_from([c for c, _ in table.columns if c != "id"]), min_size=1,
                                  max_size=2, unique=True))
    materialized = draw(st.booleans())
    view = f"{'mv' if materialized else 'v'}_{table.name}"
    table.view = (view, cols)
    up = _create_view(view, cols, table.name)
    kind = "MATERIALIZED VIEW" if materialized else "VIEW"
    return Mig(up, _down(draw, f"DROP {kind} IF EXISTS {view};"), f"view_{table.name}")


def _create_view(view: str, cols: list[str], table: str) -> str:
    if view.startswith("mv_"):
        return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} AS SELECT {', '.join(cols)} FROM {table};\n"
                f"REFRESH MATERIALIZED VIEW {view};")
    return f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(cols)} FROM {table};"


def create_index(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table, column = draw(st.sampled_from(m.with_columns("text", "integer", "bigint", "boolean")))
    index = m.new(f"{table.name}_{column}_idx")
    concurrently = draw(st.booleans())
    exists = "IF NOT EXISTS " if idem else ""
    how = "CONCURRENTLY " if concurrently else ""
    up = f"CREATE INDEX {how}{exists}{index} ON {table.name} ({column});"
    table.indexes[index] = column
    return Mig(up, _down(draw, f"DROP INDEX {how}IF EXISTS {index};"), f"index_{column}")


def drop_index(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table, index = draw(st.sampled_from([(t, i) for t in m.tables for i in t.indexes]))
    column = table.indexes.pop(index)
    exists = "IF EXISTS " if idem else ""
    up = f"DROP INDEX {exists}{index};"
    return Mig(up, _down(draw, f"CREATE INDEX IF NOT EXISTS {index} ON {table.name} ({column});",
                         f"CREATE INDEX IF NOT EXISTS {index} ON {table.name} ({column}) WHERE {column} IS NOT NULL;"),
               f"drop_{index}")


def unique_index(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.key is None and t.unique_index is None
                                  and t.kind == "plain"]))
    index = f"{table.name}_id_key"
    table.unique_index = index
    exists = "IF NOT EXISTS " if idem else ""
    return Mig(f"CREATE UNIQUE INDEX {exists}{index} ON {table.name} (id);",
               _down(draw, f"DROP INDEX IF EXISTS {index};"), f"unique_{table.name}")


def primary_key_using_index(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.unique_index]))
    index, key = table.unique_index, f"{table.name}_pkey"
    assert index is not None
    table.unique_index, table.key = None, key
    condition = f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = '{key}')"
    up = _guard(idem, condition, f"ALTER TABLE {table.name} ADD CONSTRAINT {key} PRIMARY KEY USING INDEX {index}")
    down = f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {key};\nCREATE UNIQUE INDEX {index} ON {table.name} (id);"
    # The wrong down forgets that dropping the key drops the index it took over.
    return Mig(up, _down(draw, down, f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {key};"), f"pk_{table.name}")


def rename_object(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    choices = ["table"] + (["index"] if any(t.indexes for t in m.tables) else [])
    choices += ["constraint"] if any(t.key or t.checks for t in m.tables if t.kind == "plain") else []
    what = draw(st.sampled_from(choices))
    if what == "table":
        table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain"]))
        old, new = table.name, m.new(f"{table.name}_r")
        table.name = new
        return Mig(f"ALTER TABLE IF EXISTS {old} RENAME TO {new};" if idem else f"ALTER TABLE {old} RENAME TO {new};",
                   _down(draw, f"ALTER TABLE IF EXISTS {new} RENAME TO {old};"), f"rename_{old}")
    if what == "index":
        table, old = draw(st.sampled_from([(t, i) for t in m.tables for i in t.indexes]))
        new = m.new("ix")
        table.indexes[new] = table.indexes.pop(old)
        exists = "IF EXISTS " if idem else ""
        return Mig(f"ALTER INDEX {exists}{old} RENAME TO {new};", _down(draw, f"ALTER INDEX IF EXISTS {new} RENAME TO {old};"),
                   f"rename_{old}")
    table, old = draw(st.sampled_from([(t, c) for t in m.tables if t.kind == "plain"
                                       for c in ([t.key] if t.key else []) + t.checks]))
    new = m.new("k")
    if old == table.key:
        table.key = new
    else:
        table.checks = [new if c == old else c for c in table.checks]
    condition = f"EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = '{old}')"
    up = _guard(idem, condition, f"ALTER TABLE {table.name} RENAME CONSTRAINT {old} TO {new}")
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} RENAME CONSTRAINT {new} TO {old};"), f"rename_{old}")


def create_enum(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    name = m.new("mood")
    m.enums[name] = ["happy", "sad"]
    create = f"CREATE TYPE {name} AS ENUM ('happy', 'sad')"
    up = (f"DO $$ BEGIN {create}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;" if idem else create + ";")
    return Mig(up, _down(draw, f"DROP TYPE IF EXISTS {name};"), f"enum_{name}")


def add_enum_value(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    name = draw(st.sampled_from(sorted(m.enums)))
    value = m.new("v")
    m.enums[name].append(value)
    exists = "IF NOT EXISTS " if idem else ""
    # A value cannot be taken back out: no down, an empty one, or one that renames it away.
    down = draw(st.sampled_from([None, "", f"ALTER TYPE {name} RENAME VALUE '{value}' TO 'old_{value}';"]))
    return Mig(f"ALTER TYPE {name} ADD VALUE {exists}'{value}';", down, f"enum_{value}")


def create_domain(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    name = m.new("positive")
    create = f"CREATE DOMAIN {name} AS integer CHECK (VALUE > 0)"
    up = (f"DO $$ BEGIN {create}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;" if idem else create + ";")
    tables = [t for t in m.tables if t.kind == "plain"]
    if tables and draw(st.booleans()):
        table, column = draw(st.sampled_from(tables)), m.new("p")
        up += f"\nALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {column} {name};"
        table.columns.append((column, name))
        down = f"ALTER TABLE {table.name} DROP COLUMN IF EXISTS {column};\nDROP DOMAIN IF EXISTS {name};"
        return Mig(up, _down(draw, down, f"DROP DOMAIN IF EXISTS {name} CASCADE;"), f"domain_{name}")
    return Mig(up, _down(draw, f"DROP DOMAIN IF EXISTS {name};"), f"domain_{name}")


BODIES = ("SELECT x + 1", "SELECT x * 2", "SELECT coalesce(x, 0)")


def function(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A new function, or a new body for one (the down restores the old body, sometimes reformatted)."""
    plpgsql = draw(st.booleans())

    def text(name: str, body: str, spaced: bool = False) -> str:
        if plpgsql:
            inner = f"BEGIN\n    RETURN ({body.removeprefix('SELECT ')});\nEND" if not spaced else \
                f"BEGIN RETURN ({body.removeprefix('SELECT ')}); END"
            return f"CREATE OR REPLACE FUNCTION {name}(x integer) RETURNS integer LANGUAGE plpgsql AS $$\n{inner}\n$$;"
        body = body.replace(" ", "  ") if spaced else body
        return f"CREATE OR REPLACE FUNCTION {name}(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ {body} $$;"

    if m.functions and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(m.functions)))
        old, new = m.functions[name], draw(st.sampled_from(BODIES))
        m.functions[name] = new
        other = next(b for b in BODIES if b not in (old, new))
        return Mig(text(name, new), _down(draw, text(name, old), text(name, old, spaced=True), text(name, other)),
                   f"replace_{name}")
    name = m.new("f")
    m.functions[name] = draw(st.sampled_from(BODIES))
    up = text(name, m.functions[name])
    if not idem:
        up = up.replace("CREATE OR REPLACE", "CREATE")
    return Mig(up, _down(draw, f"DROP FUNCTION IF EXISTS {name}(integer);"), f"function_{name}")


def trigger(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and ("name", "text") in t.columns]))
    fn, trg = m.new("lower_name_"), m.new("trg")
    up = (f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
          f"BEGIN\n    NEW.name := lower(NEW.name);\n    RETURN NEW;\nEND\n$$;\n")
    if idem:
        up += f"DROP TRIGGER IF EXISTS {trg} ON {table.name};\n"
    up += f"CREATE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {table.name} FOR EACH ROW EXECUTE FUNCTION {fn}();"
    down = f"DROP TRIGGER IF EXISTS {trg} ON {table.name};\nDROP FUNCTION IF EXISTS {fn}();"
    return Mig(up, _down(draw, down, f"DROP TRIGGER IF EXISTS {trg} ON {table.name};"), f"trigger_{table.name}")


def policy(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and not t.rls]))
    table.rls = True
    name = m.new("p_")
    up = f"ALTER TABLE {table.name} ENABLE ROW LEVEL SECURITY;\n"
    if idem:
        up += f"DROP POLICY IF EXISTS {name} ON {table.name};\n"
    up += f"CREATE POLICY {name} ON {table.name} FOR SELECT USING (id IS NOT NULL);"
    down = f"DROP POLICY IF EXISTS {name} ON {table.name};\nALTER TABLE {table.name} DISABLE ROW LEVEL SECURITY;"
    return Mig(up, _down(draw, down, f"DROP POLICY IF EXISTS {name} ON {table.name};"), f"policy_{table.name}")


def comment(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from(m.tables))
    column = draw(st.sampled_from([None] + [c for c, _ in table.columns]))
    target = f"TABLE {table.name}" if column is None else f"COLUMN {table.name}.{column}"
    return Mig(f"COMMENT ON {target} IS 'documented by the fuzzer';",
               _down(draw, f"COMMENT ON {target} IS NULL;", "SELECT 1;"), f"comment_{table.name}")


def grant(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from(m.tables))
    role = "harness_fuzz_reader" if m.seeded else "PUBLIC"
    up = f"GRANT SELECT, INSERT ON {table.name} TO {role};"
    return Mig(up, _down(draw, f"REVOKE SELECT, INSERT ON {table.name} FROM {role};",
                         f"REVOKE INSERT ON {table.name} FROM {role};"), f"grant_{table.name}")


def sequence(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table, column = draw(st.sampled_from(m.with_columns("integer")))
    seq = m.new("seq")
    exists = "IF NOT EXISTS " if idem else ""
    up = (f"CREATE SEQUENCE {exists}{seq} START 100 OWNED BY {table.name}.{column};\n"
          f"ALTER TABLE {table.name} ALTER COLUMN {column} SET DEFAULT nextval('{seq}');")
    down = f"ALTER TABLE {table.name} ALTER COLUMN {column} DROP DEFAULT;\nDROP SEQUENCE IF EXISTS {seq};"
    # The wrong down leaves the default: dropping the sequence then fails.
    return Mig(up, _down(draw, down, f"DROP SEQUENCE IF EXISTS {seq};"), f"sequence_{seq}")


def partitions(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A partitioned table with a partition and rows, a new partition, or one detached."""
    what = draw(st.sampled_from(["create"] + (["attach", "detach"] if m.partitioned else [])))
    exists = "IF NOT EXISTS " if idem else ""
    if what == "create":
        parent = m.new("events")
        m.partitioned.append((parent, [f"{parent}_2024"]))
        up = (f"CREATE TABLE {exists}{parent} (id bigint NOT NULL, at date NOT NULL, payload text) PARTITION BY RANGE (at);\n"
              f"CREATE TABLE {exists}{parent}_2024 PARTITION OF {parent} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n"
              f"INSERT INTO {parent} SELECT g, date '2024-01-01' + g, 'p' FROM generate_series(1, 4) g"
              + (f" WHERE NOT EXISTS (SELECT 1 FROM {parent});" if idem else ";"))
        return Mig(up, _down(draw, f"DROP TABLE IF EXISTS {parent};", f"DROP TABLE IF EXISTS {parent}_2024;"),
                   f"partitioned_{parent}")
    parent, parts = draw(st.sampled_from(m.partitioned))
    if what == "attach" or not parts:
        year = 2025 + len(parts)
        part = f"{parent}_{year}"
        parts.append(part)
        up = f"CREATE TABLE {exists}{part} PARTITION OF {parent} FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01');"
        return Mig(up, _down(draw, f"DROP TABLE IF EXISTS {part};", f"ALTER TABLE {parent} DETACH PARTITION {part};"),
                   f"partition_{part}")
    part = parts.pop(0)
    bounds = f"FROM ('{part[-4:]}-01-01') TO ('{int(part[-4:]) + 1}-01-01')"
    up = f"ALTER TABLE {parent} DETACH PARTITION {part};"
    return Mig(up, _down(draw, f"ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES {bounds};"), f"detach_{part}")


def inherit(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain"]))
    child = m.new(f"{table.name}_archive")
    table.children.append(child)
    m.tables.append(Table(child, list(table.columns), kind="child"))
    exists = "IF NOT EXISTS " if idem else ""
    up = f"CREATE TABLE {exists}{child} () INHERITS ({table.name});"
    return Mig(up, _down(draw, f"DROP TABLE IF EXISTS {child};", f"ALTER TABLE {child} NO INHERIT {table.name};"),
               f"inherit_{table.name}")


def data(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """Rows written by a migration, and a down that restores them (or not quite)."""
    table, column = draw(st.sampled_from(m.with_columns("text")))
    if table.seeded or draw(st.booleans()):
        up = f"UPDATE {table.name} SET {column} = {column} || '!' WHERE {column} NOT LIKE '%!';"
        return Mig(up, _down(draw, f"UPDATE {table.name} SET {column} = left({column}, -1) WHERE {column} LIKE '%!';",
                             f"UPDATE {table.name} SET {column} = rtrim({column}, '!');",
                             f"UPDATE {table.name} SET {column} = upper({column});"), f"update_{table.name}")
    key = dict(table.columns)["id"]
    if key == "integer" and table.key is None and table.unique_index is None:
        return Mig(f"INSERT INTO {table.name} (id, {column}) VALUES (1000, 'added');",
                   _down(draw, f"DELETE FROM {table.name} WHERE id = 1000;", f"DELETE FROM {table.name};"),
                   f"insert_{table.name}")
    if idem:
        up = f"INSERT INTO {table.name} ({column}) SELECT 'added' WHERE NOT EXISTS (SELECT 1 FROM {table.name} WHERE {column} = 'added');"
    else:
        up = f"INSERT INTO {table.name} ({column}) VALUES ('added');"
    return Mig(up, _down(draw, f"DELETE FROM {table.name} WHERE {column} = 'added';", f"DELETE FROM {table.name};"),
               f"insert_{table.name}")


def add_check(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A CHECK constraint added NOT VALID and validated (inherited by tables that inherit this one)."""
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and ("amount", "integer") in t.columns]))
    name = m.new(f"{table.name}_amount_max")
    table.checks.append(name)
    condition = f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = '{name}')"
    up = (_guard(idem, condition, f"ALTER TABLE {table.name} ADD CONSTRAINT {name} CHECK (amount < 1000000) NOT VALID")
          + f"\nALTER TABLE {table.name} VALIDATE CONSTRAINT {name};")
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {name};"), f"check_{name}")


def not_null(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """Backfill a column, then make it NOT NULL: the down cannot give the NULLs back."""
    table, column = draw(st.sampled_from(m.with_columns("text", "integer")))
    value = "''" if dict(table.columns)[column] == "text" else "0"
    up = (f"UPDATE {table.name} SET {column} = {value} WHERE {column} IS NULL;\n"
          f"ALTER TABLE {table.name} ALTER COLUMN {column} SET NOT NULL;")
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} ALTER COLUMN {column} DROP NOT NULL;"), f"not_null_{column}")


def unique_constraint(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A UNIQUE constraint (its index named after it): renaming the constraint renames the index."""
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and ("id", "integer") in t.columns
                                  and t.key is None and t.unique_index is None] or
                                 [t for t in m.tables if t.kind == "plain"]))
    name = m.new(f"{table.name}_uq")
    columns = "id, name" if ("name", "text") in table.columns else "id"
    table.checks.append(name)  # renamed like a CHECK constraint
    condition = f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = '{name}')"
    up = _guard(idem, condition, f"ALTER TABLE {table.name} ADD CONSTRAINT {name} UNIQUE ({columns})")
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {name};"), f"unique_{name}")


def rename_routine(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A function renamed (a column default calls it), or a policy, trigger or sequence."""
    name = draw(st.sampled_from(sorted(m.functions)))
    new = m.new(f"{name}_r")
    m.functions[new] = m.functions.pop(name)
    up = f"ALTER FUNCTION {name}(integer) RENAME TO {new};"
    tables = m.with_columns("integer")
    if tables and draw(st.booleans()):
        table, column = draw(st.sampled_from(tables))
        up = f"ALTER TABLE {table.name} ALTER COLUMN {column} SET DEFAULT {name}(1);\n" + up
        down = (f"ALTER FUNCTION {new}(integer) RENAME TO {name};\n"
                f"ALTER TABLE {table.name} ALTER COLUMN {column} DROP DEFAULT;")
        return Mig(up, _down(draw, down, f"ALTER FUNCTION {new}(integer) RENAME TO {name};"), f"rename_{name}")
    return Mig(up, _down(draw, f"ALTER FUNCTION {new}(integer) RENAME TO {name};"), f"rename_{name}")


def identity(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    table = draw(st.sampled_from([t for t in m.tables if t.kind == "plain" and ("id", "bigint") in t.columns]))
    up = (f"ALTER TABLE {table.name} ALTER COLUMN id SET GENERATED BY DEFAULT;\n"
          f"ALTER TABLE {table.name} ALTER COLUMN id RESTART WITH 1000;")
    return Mig(up, _down(draw, f"ALTER TABLE {table.name} ALTER COLUMN id SET GENERATED ALWAYS;", "SELECT 1;"),
               f"identity_{table.name}")


def partition_objects(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """An index or a row trigger on a partitioned table: each partition gets its own, attached to it."""
    parent, _parts = draw(st.sampled_from(m.partitioned))
    if draw(st.booleans()):
        index = m.new(f"{parent}_at_idx")
        exists = "IF NOT EXISTS " if idem else ""
        up = f"CREATE INDEX {exists}{index} ON {parent} (at);"
        if draw(st.booleans()):
            renamed = m.new("pix")
            up += f"\nALTER INDEX {index} RENAME TO {renamed};"
            index = renamed
        return Mig(up, _down(draw, f"DROP INDEX IF EXISTS {index};"), f"index_{parent}")
    fn, trg = m.new("stamp_"), m.new("ptrg")
    up = (f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
          f"BEGIN\n    NEW.payload := coalesce(NEW.payload, 'p');\n    RETURN NEW;\nEND\n$$;\n"
          f"CREATE TRIGGER {trg} BEFORE INSERT ON {parent} FOR EACH ROW EXECUTE FUNCTION {fn}();")
    down = f"DROP TRIGGER IF EXISTS {trg} ON {parent};\nDROP FUNCTION IF EXISTS {fn}();"
    if draw(st.booleans()):
        renamed = m.new("ptrg_r")
        up += f"\nALTER TRIGGER {trg} ON {parent} RENAME TO {renamed};"
        down = down.replace(trg, renamed)
    return Mig(up, _down(draw, down, f"DROP FUNCTION IF EXISTS {fn}() CASCADE;"), f"trigger_{parent}")


def schema(draw: st.DrawFn, m: Model, idem: bool) -> Mig:
    """A schema of its own (the tracking then reads everything in full)."""
    name = m.new("app")
    up = f"CREATE SCHEMA IF NOT EXISTS {name};\nCREATE TABLE IF NOT EXISTS {name}.settings (key text PRIMARY KEY, value text);"
    return Mig(up, _down(draw, f"DROP SCHEMA IF EXISTS {name} CASCADE;", f"DROP TABLE IF EXISTS {name}.settings;"),
               f"schema_{name}")


def _applicable(m: Model) -> list[Callable[[st.DrawFn, Model, bool], Mig]]:
    plain = [t for t in m.tables if t.kind == "plain"]
    blocks: list[Callable[[st.DrawFn, Model, bool], Mig]] = [create_table, create_enum, create_domain, function,
                                                              partitions, schema]
    if plain:
        blocks += [add_column, rename_object, policy, inherit, comment, grant]
    if any(t.view is None for t in plain):
        blocks.append(create_view)
    if not any(not t.rls for t in plain):
        blocks = [b for b in blocks if b is not policy]
    if m.with_columns("text", "integer"):
        blocks += [set_default, rename_column]
    if m.with_columns("text", "integer", "bigint", "boolean"):
        blocks.append(create_index)
    if m.with_columns("integer"):
        blocks.append(sequence)
    if m.with_columns("text"):
        blocks.append(data)
    if any(c not in t.indexes.values() and c not in ("name", "amount")
           for t, c in m.with_columns("text", "integer", "boolean", "jsonb")):
        blocks.append(drop_column)
    if any(ty == "integer" and c not in ("id", "parent_id", "account_id")
           and (c in t.indexes.values() or (t.view and c in t.view[1]))
           for t in plain for c, ty in t.columns):
        blocks.append(retype_column)
    if any(t.indexes for t in m.tables):
        blocks.append(drop_index)
    if any(t.key is None and t.unique_index is None for t in plain):
        blocks.append(unique_index)
    if any(t.unique_index for t in m.tables):
        blocks.append(primary_key_using_index)
    if m.enums:
        blocks.append(add_enum_value)
    if any(("amount", "integer") in t.columns for t in plain):
        blocks.append(add_check)
    if plain:
        blocks.append(unique_constraint)
    if m.with_columns("text", "integer"):
        blocks.append(not_null)
    if m.functions:
        blocks.append(rename_routine)
    if any(("id", "bigint") in t.columns for t in plain):
        blocks.append(identity)
    if m.partitioned:
        blocks.append(partition_objects)
    if any(("name", "text") in t.columns for t in plain):
        blocks.append(trigger)
    return blocks


@st.composite
def histories(draw: st.DrawFn) -> tuple[bool, bool, dict[str, str]]:
    """(seeded, locks, files of a native migrations folder)."""
    seeded, locks = draw(st.booleans()), draw(st.booleans())
    m = Model(seeded)
    if seeded:
        m.tables.append(Table("accounts", [("id", "integer"), ("email", "text"), ("status", "text")],
                              key="accounts_pkey", seeded=True))
    files: dict[str, str] = {}
    for number in range(1, draw(st.integers(3, 8)) + 1):
        blocks = _applicable(m)
        block = draw(st.sampled_from(blocks))
        idem = draw(st.integers(0, 3)) > 0
        mig = block(draw, m, idem)
        stem = f"{number}_{mig.name}"
        files[f"{stem}.sql"] = mig.up + "\n"
        if mig.down is not None:
            files[f"{stem}.down.sql"] = mig.down + ("\n" if mig.down else "")
    return seeded, locks, files


# ---------------------------------------------------------------- rehearsing


def make_project(root: Path, seeded: bool, locks: bool, files: dict[str, str]) -> Path:
    folder = root / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    if seeded:
        (root / "seed.sql").write_text(SEED)
    path = root / "plan.yaml"
    path.write_text(PLAN % (", seed: seed.sql" if seeded else "", "true" if locks else "false"))
    return path


def verdicts(pg_server: Server, path: Path) -> dict[str, tuple[str, str]]:
    with Rehearsal(load_plan(path), pg_server) as rehearsal:
        return {item.id: (outcome.status, outcome.message) for item, outcome in rehearsal.run_all()}


def compare(pg_server: Server, root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
            seeded: bool, locks: bool, files: dict[str, str]) -> None:
    path = make_project(root, seeded, locks, files)
    caplog.clear()
    with caplog.at_level("WARNING", logger="harness"):
        monkeypatch.setenv("HARNESS_SNAPSHOTS", "incremental")
        incremental = verdicts(pg_server, path)
        fallbacks = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    monkeypatch.setenv("HARNESS_SNAPSHOTS", "full")
    full = verdicts(pg_server, path)
    history = "\n".join(f"-- {name}\n{text}" for name, text in files.items())
    differ = {k: (incremental.get(k), full.get(k)) for k in incremental.keys() | full.keys()
              if (incremental.get(k) or ("",))[0] != (full.get(k) or ("",))[0]}
    assert not differ, f"statuses differ (incremental, full):\n{differ}\nhistory (seeded={seeded}, locks={locks}):\n{history}"
    assert not fallbacks, f"the tracking was wrong:\n{fallbacks[0]}\nhistory (seeded={seeded}):\n{history}"


@settings(
    max_examples=_EXAMPLES or 30,
    derandomize=not _EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(history=histories())
def test_incremental_verdicts_equal_full_verdicts(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    history: tuple[bool, bool, dict[str, str]],
) -> None:
    seeded, locks, files = history
    compare(pg_server, tmp_path, monkeypatch, caplog, seeded, locks, files)


# ---------------------------------------------------------------- histories the generator found, pinned

# Renaming a CHECK constraint of a parent renames the one its inheriting
# table holds; the command reports the parent's constraint only.
RENAMED_INHERITED_CHECK = (True, True, {
    "1_default_email.sql": "ALTER TABLE accounts ALTER COLUMN email SET DEFAULT 'none';\n",
    "1_default_email.down.sql": "ALTER TABLE accounts ALTER COLUMN email DROP DEFAULT;\n",
    "2_function_f1.sql": "CREATE FUNCTION f1(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT x * 2 $$;\n",
    "2_function_f1.down.sql": "DROP FUNCTION IF EXISTS f1(integer);\n",
    "3_rename_accounts.sql": "ALTER TABLE IF EXISTS accounts RENAME TO accounts_r2;\n",
    "3_rename_accounts.down.sql": "ALTER TABLE IF EXISTS accounts_r2 RENAME TO accounts;\n",
    "4_create_t3.sql": "CREATE TABLE t3 (\n    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    name text NOT NULL DEFAULT '',\n    amount integer CONSTRAINT t3_amount_check CHECK (amount >= 0),\n"
    "    parent_id integer REFERENCES accounts_r2 (id)\n);\n"
    "INSERT INTO t3 (name, amount) SELECT 'row ' || g, g FROM generate_series(1, 3) g;\n",
    "4_create_t3.down.sql": "DROP TABLE IF EXISTS t3;\n",
    "5_inherit_t3.sql": "CREATE TABLE t3_archive4 () INHERITS (t3);\n",
    "5_inherit_t3.down.sql": "DROP TABLE IF EXISTS t3_archive4;\n",
    "6_rename_t3_amount_check.sql": "ALTER TABLE t3 RENAME CONSTRAINT t3_amount_check TO k5;\n",
    "6_rename_t3_amount_check.down.sql": "ALTER TABLE t3 RENAME CONSTRAINT k5 TO t3_amount_check;\n",
    "7_domain_positive6.sql": "DO $$ BEGIN CREATE DOMAIN positive6 AS integer CHECK (VALUE > 0); "
    "EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n",
    "7_domain_positive6.down.sql": "DROP DOMAIN IF EXISTS positive6;\n",
})
# The same, shrunk: a partition's CHECK constraint renamed with its parent's, under a grandchild too.
RENAMED_INHERITED_CHECK_SMALL = (False, False, {
    "1_t.sql": "CREATE TABLE t (id int, amount int CONSTRAINT t_amount_check CHECK (amount >= 0));\n"
    "CREATE TABLE t_child () INHERITS (t);\nCREATE TABLE t_grandchild () INHERITS (t_child);\n",
    "1_t.down.sql": "DROP TABLE t CASCADE;\n",
    "2_rename.sql": "ALTER TABLE t RENAME CONSTRAINT t_amount_check TO t_positive;\n",
    "2_rename.down.sql": "ALTER TABLE t RENAME CONSTRAINT t_positive TO t_amount_check;\n",
    "3_noop.sql": "CREATE TABLE IF NOT EXISTS u (id int);\n",
    "3_noop.down.sql": "DROP TABLE IF EXISTS u;\n",
})


@pytest.mark.parametrize("history", [RENAMED_INHERITED_CHECK, RENAMED_INHERITED_CHECK_SMALL],
                         ids=["renamed inherited check", "renamed inherited check, small"])
def test_pinned_histories(
    pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    history: tuple[bool, bool, dict[str, str]],
) -> None:
    compare(pg_server, tmp_path, monkeypatch, caplog, *history)
