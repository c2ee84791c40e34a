"""``rehearsal: {base: supabase}``: Supabase histories rehearse on a plain PostgreSQL.

A history shaped like real ``supabase/migrations`` folders (a profiles table
referencing ``auth.users``, RLS policies calling ``auth.uid()``, a security
definer trigger on ``auth.users``, a storage bucket and its policies, a
table added to the ``supabase_realtime`` publication, grants to the API
roles, ``uuid_generate_v4()`` defaults) fails on its first migration without
the base, with advice naming it, and passes with it.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness import bases
from harness.errors import PlanError
from harness.layouts import supabase_folder
from harness.plan import load_plan
from harness.postgres import Server, start_server
from harness.rehearsal import FAILED, PASSED, SKIPPED, Rehearsal
from harness.snapshot import diff_snapshots
from harness.sources import parse_sql

PROFILES = "20240101000000_profiles"
HISTORY = {
    f"{PROFILES}.sql": """\
        create table public.profiles (
          id uuid not null references auth.users (id) on delete cascade primary key,
          username text unique,
          avatar_url text,
          updated_at timestamptz default now()
        );
        alter table public.profiles enable row level security;
        create policy "Profiles are viewable by everyone" on public.profiles for select using (true);
        create policy "Users update their own profile" on public.profiles
          for update using ((select auth.uid()) = id);
        grant select on public.profiles to anon, authenticated;
        grant update on public.profiles to authenticated;
        """,
    f"{PROFILES}.down.sql": "drop table public.profiles;\n",
    "20240101000100_handle_new_user.sql": """\
        create function public.handle_new_user()
        returns trigger
        language plpgsql
        security definer set search_path = ''
        as $$
        begin
          insert into public.profiles (id, username) values (new.id, new.raw_user_meta_data ->> 'username');
          return new;
        end;
        $$;
        create trigger on_auth_user_created
          after insert on auth.users
          for each row execute procedure public.handle_new_user();
        """,
    "20240101000100_handle_new_user.down.sql": """\
        drop trigger on_auth_user_created on auth.users;
        drop function public.handle_new_user();
        """,
    "20240101000200_avatars.sql": """\
        insert into storage.buckets (id, name, public) values ('avatars', 'avatars', true);
        create policy "Avatars are public" on storage.objects for select using (bucket_id = 'avatars');
        create policy "Users upload their own avatar" on storage.objects for insert
          with check (bucket_id = 'avatars' and (storage.foldername(name))[1] = (select auth.uid())::text);
        """,
    "20240101000200_avatars.down.sql": """\
        drop policy "Users upload their own avatar" on storage.objects;
        drop policy "Avatars are public" on storage.objects;
        delete from storage.buckets where id = 'avatars';
        """,
    "20240101000300_messages.sql": """\
        create extension if not exists "uuid-ossp" with schema extensions;
        create table public.messages (
          id uuid primary key default uuid_generate_v4(),
          profile_id uuid not null references public.profiles (id) on delete cascade,
          body text not null,
          inserted_at timestamptz not null default timezone('utc', now())
        );
        alter table public.messages enable row level security;
        create policy "Signed-in users read messages" on public.messages for select to authenticated using (true);
        grant select, insert on public.messages to anon, authenticated;
        alter publication supabase_realtime add table public.messages;
        """,
    "20240101000300_messages.down.sql": """\
        alter publication supabase_realtime drop table public.messages;
        drop table public.messages;
        """,
}

CHECKS = """\
steps:
  - migration: 20240101000300_messages
    checks:
      - {name: uuid default, sql: "SELECT pg_get_expr(adbin, adrelid) = 'uuid_generate_v4()' FROM pg_attrdef WHERE adrelid = 'public.messages'::regclass"}
      - {name: realtime, sql: "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime' AND tablename = 'messages'", expect: 1}
"""


def supabase_project(tmp_path: Path, plan: str, history: dict[str, str] = HISTORY, *, config: bool = True) -> Path:
    """A Supabase CLI project (``supabase/migrations``, ``supabase/config.toml``) and a plan for it."""
    folder = tmp_path / "supabase" / "migrations"
    folder.mkdir(parents=True)
    for name, text in history.items():
        (folder / name).write_text(textwrap.dedent(text))
    if config:
        (tmp_path / "supabase" / "config.toml").write_text('project_id = "demo"\n[api]\nport = 54321\n[db]\nport = 54322\n')
    path = tmp_path / "plans" / "p.yaml"
    path.parent.mkdir()
    path.write_text("migrations: supabase/migrations/\n" + textwrap.dedent(plan))
    return path


def rehearse(server: Server, plan_path: Path) -> dict[str, tuple[str, str]]:
    with Rehearsal(load_plan(plan_path), server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


def _has_contrib(server: Server) -> bool:
    with server.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name IN ('uuid-ossp', 'pgcrypto')"
        ).fetchone()
    return row is not None and row[0] == 2


@pytest.fixture(scope="module")
def contrib_server(pg_server: Server) -> Iterator[Server]:
    """A server offering uuid-ossp and pgcrypto, as the platform does: the session's, or local binaries."""
    if _has_contrib(pg_server):
        yield pg_server
        return
    try:
        server = start_server("local")
    except Exception as exc:  # noqa: BLE001 - any reason there is no such server skips, with it
        pytest.skip(f"no PostgreSQL with the uuid-ossp and pgcrypto extensions here: {exc}")
    try:
        if not _has_contrib(server):
            pytest.skip(f"the local PostgreSQL ({server.version}) has no uuid-ossp and pgcrypto (postgresql-contrib)")
        yield server
    finally:
        server.stop()


def test_without_the_base_the_first_migration_fails_with_advice(pg_server: Server, tmp_path: Path) -> None:
    results = rehearse(pg_server, supabase_project(tmp_path, "defaults: {idempotent: false, lint: false}\n"))
    status, message = results[f"{PROFILES}::apply"]
    assert status == FAILED
    assert 'schema "auth" does not exist' in message
    assert "advice: this is a Supabase project" in message and "`base: supabase`" in message
    later = [status for item, (status, _) in results.items() if not item.startswith(PROFILES)]
    assert later and set(later) == {SKIPPED}


@pytest.mark.parametrize(
    ("layout", "config", "advised"),
    [
        ("auto", False, True),        # a supabase/migrations folder
        ("supabase", False, True),    # named in the plan
        ("native", True, False),      # named native: no Supabase advice
    ],
)
def test_the_advice_follows_the_layout(
    pg_server: Server, tmp_path: Path, layout: str, config: bool, advised: bool
) -> None:
    history = {f"{PROFILES}.sql": HISTORY[f"{PROFILES}.sql"]}
    plan = supabase_project(tmp_path, f"layout: {layout}\ndefaults: {{lint: false}}\n", history, config=config)
    status, message = rehearse(pg_server, plan)[f"{PROFILES}::apply"]
    assert status == FAILED
    assert ("base: supabase" in message) is advised


def test_supabase_folders_are_recognised(tmp_path: Path) -> None:
    assert supabase_folder(tmp_path / "supabase" / "migrations")
    elsewhere = tmp_path / "db" / "migrations"
    elsewhere.mkdir(parents=True)
    assert not supabase_folder(elsewhere)
    (tmp_path / "db" / "config.toml").write_text('project_id = "x"\n[api]\nenabled = true\n[db]\nport = 54322\n')
    assert supabase_folder(elsewhere)
    (tmp_path / "db" / "config.toml").write_text("[tool]\nname = 'not supabase'\n")
    assert not supabase_folder(elsewhere)


def test_with_the_base_every_item_passes(contrib_server: Server, tmp_path: Path) -> None:
    plan = supabase_project(
        tmp_path, "rehearsal: {base: supabase}\ndefaults: {idempotent: false, rollback: true}\n" + CHECKS
    )
    results = rehearse(contrib_server, plan)
    assert any(item.endswith("::rollback") for item in results)
    failed = {item: message for item, (status, message) in results.items() if status != PASSED}
    assert failed == {}


def test_the_base_loads_twice_on_one_server(pg_server: Server, tmp_path: Path) -> None:
    history = {name: text for name, text in HISTORY.items() if "messages" not in name}
    plan = supabase_project(tmp_path, "rehearsal: {base: supabase}\ndefaults: {idempotent: false, lint: false}\n",
                            history)
    for _ in range(2):  # the second time, the roles exist
        results = rehearse(pg_server, plan)
        assert {status for status, _ in results.values()} == {PASSED}, results
    with pg_server.connect() as conn:
        roles = {r[0]: r[1] for r in conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
            (["anon", "authenticated", "service_role", "authenticator"],),
        )}
    assert roles == {"anon": False, "authenticated": False, "service_role": False, "authenticator": False}


def test_the_base_is_not_a_change_of_the_first_migration(pg_server: Server, tmp_path: Path) -> None:
    history = {name: text for name, text in HISTORY.items() if name.startswith(PROFILES)}
    plan = load_plan(supabase_project(tmp_path, "rehearsal: {base: supabase}\n", history))
    with Rehearsal(plan, pg_server) as rehearsal:
        before = rehearsal.schema_after(-1)
        after = rehearsal.schema_after(0)
    assert any("auth.users" in key for key in before.objects)
    assert any("storage.objects" in key for key in before.objects)
    changed = {change.object for change in diff_snapshots(before, after)}
    assert changed and all("public.profiles" in name for name in changed), changed


def test_a_missing_extension_is_reported_not_faked(pg_server: Server, tmp_path: Path) -> None:
    history = {
        "20240101000000_graphql.sql": "create extension if not exists pg_graphql with schema extensions;\n",
    }
    plan = supabase_project(tmp_path, "rehearsal: {base: supabase}\ndefaults: {lint: false}\n", history)
    status, message = rehearse(pg_server, plan)["20240101000000_graphql::apply"]
    assert status == FAILED
    assert 'extension "pg_graphql" is not available' in message
    assert "advice: the extension pg_graphql is not installed on the rehearsal server" in message
    assert "provider: dsn" in message and "never stands in" in message


def test_uuid_ossp_missing_on_the_server_is_explained(pg_server: Server, tmp_path: Path) -> None:
    with pg_server.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp'").fetchone():
            pytest.skip("the session's server has uuid-ossp: the base installs it")
    history = {"20240101000000_t.sql": "create table t (id uuid primary key default uuid_generate_v4());\n"}
    plan = supabase_project(tmp_path, "rehearsal: {base: supabase}\ndefaults: {lint: false}\n", history)
    status, message = rehearse(pg_server, plan)["20240101000000_t::apply"]
    assert status == FAILED
    assert "uuid_generate_v4() comes from the uuid-ossp extension" in message


def test_an_object_the_base_lacks_is_named_as_such(pg_server: Server, tmp_path: Path) -> None:
    history = {"20240101000000_mfa.sql": "create index on auth.mfa_factors (user_id);\n"}
    plan = supabase_project(tmp_path, "rehearsal: {base: supabase}\ndefaults: {lint: false}\n", history)
    status, message = rehearse(pg_server, plan)["20240101000000_mfa::apply"]
    assert status == FAILED
    assert "base: supabase creates only part of the platform's objects" in message


def test_the_auth_and_storage_functions(pg_server: Server, db_name: str) -> None:
    base = bases.base("supabase")
    user = uuid.uuid4()
    with pg_server.connect(db_name) as conn:
        for statement in parse_sql(base.read(), base.path):
            conn.execute(statement.sql)  # type: ignore[call-overload]
        assert conn.execute("SELECT auth.uid(), auth.role(), auth.jwt()").fetchone() == (None, None, None)
        conn.execute("SELECT set_config('request.jwt.claims', %s, false)",
                     (f'{{"sub": "{user}", "role": "authenticated", "email": "a@example.com"}}',))
        assert conn.execute("SELECT auth.uid(), auth.role(), auth.email(), auth.jwt() ->> 'role'").fetchone() == (
            user, "authenticated", "a@example.com", "authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', '', false)")
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (str(user),))
        assert conn.execute("SELECT auth.uid()").fetchone() == (user,)
        assert conn.execute(
            "SELECT storage.foldername('a/b/c.png'), storage.filename('a/b/c.png'), storage.extension('a/b/c.png')"
        ).fetchone() == (["a", "b"], "c.png", "png")
        conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'a@example.com')", (user,))
        assert conn.execute("SELECT is_anonymous, confirmed_at FROM auth.users").fetchone() == (False, None)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'a@example.com')", (uuid.uuid4(),))


def test_the_plan_accepts_only_known_bases(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    plan = tmp_path / "p.yaml"
    plan.write_text("migrations: migrations/\nrehearsal: {base: supabase}\n")
    assert load_plan(plan).rehearsal.base == "supabase"
    plan.write_text("migrations: migrations/\n")
    assert load_plan(plan).rehearsal.base is None
    plan.write_text("migrations: migrations/\nrehearsal: {base: firebase}\n")
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert "rehearsal.base" in str(info.value) and "supabase" in str(info.value)
