"""The Alembic layout: revisions rendered by Alembic's own offline mode, rehearsed, and alembic_version adopted.

The environment is written here from scratch, as ``alembic init`` and
``alembic revision`` lay it out: ``alembic.ini``, an ``env.py`` with an
offline branch, ``script.py.mako``, and revisions with a branch, a merge, an
``autocommit_block()``, an irreversible downgrade and a data migration that
needs a connection (so it cannot be rendered offline).
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from pathlib import Path

import psycopg
import pytest

from harness.adopt import match_history, plan_adoption, read_foreign_histories
from harness.authoring import layout_for
from harness.cli import main
from harness.errors import ConfigError, SourceError
from harness.layouts import detect_layout, layout_findings
from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, SKIPPED, Rehearsal
from harness.sources import load_migrations

alembic = pytest.importorskip("alembic", reason="the alembic layout is tested with Alembic installed (the test extra)")

INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url = driver://user:pass@localhost/dbname
"""

ENV = '''\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                     poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


def revision(rev: str, down: str | tuple[str, ...] | None, message: str, upgrade: str, downgrade: str) -> str:
    return (
        f'"""{message}\n\nRevision ID: {rev}\nRevises: {down}\n"""\n'
        "from alembic import op\nimport sqlalchemy as sa\n\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n{textwrap.indent(textwrap.dedent(upgrade).strip(), '    ')}\n\n\n"
        f"def downgrade():\n{textwrap.indent(textwrap.dedent(downgrade).strip(), '    ')}\n"
    )


REVISIONS = {
    "a1f0c0de0001_create_users.py": revision("a1f0c0de0001", None, "create users", """
        op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.Text))
    """, """
        op.drop_table("users")
    """),
    # Irreversible: the downgrade is `pass`, so the column stays behind.
    "b2f0c0de0002_add_name.py": revision("b2f0c0de0002", "a1f0c0de0001", "add name", """
        op.add_column("users", sa.Column("name", sa.Text))
    """, """
        pass
    """),
    # A second branch from a1: the index is built concurrently, outside Alembic's transaction.
    "c3f0c0de0003_email_index.py": revision("c3f0c0de0003", "a1f0c0de0001", "email index", """
        op.add_column("users", sa.Column("nick", sa.Text))
        with op.get_context().autocommit_block():
            op.create_index("users_email", "users", ["email"], postgresql_concurrently=True)
    """, """
        with op.get_context().autocommit_block():
            op.drop_index("users_email", table_name="users", postgresql_concurrently=True)
        op.drop_column("users", "nick")
    """),
    "d4f0c0de0004_merge.py": revision("d4f0c0de0004", ("b2f0c0de0002", "c3f0c0de0003"), "merge, add audit", """
        op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    """, """
        op.drop_table("audit")
    """),
    # A data migration that reads rows: offline mode has no connection to read from.
    "e5f0c0de0005_backfill_names.py": revision("e5f0c0de0005", "d4f0c0de0004", "backfill names", """
        rows = op.get_bind().execute(sa.text("SELECT id FROM users")).fetchall()
        for (user_id,) in rows:
            op.execute(sa.text("UPDATE users SET name = email WHERE id = :id").bindparams(id=user_id))
    """, """
        pass
    """),
}

A1, B2, C3, D4, E5 = "a1f0c0de0001", "b2f0c0de0002", "c3f0c0de0003", "d4f0c0de0004", "e5f0c0de0005"
#: The line of the backfill revision that needs a connection.
FETCH_LINE = next(n for n, line in enumerate(REVISIONS["e5f0c0de0005_backfill_names.py"].splitlines(), 1)
                  if "fetchall" in line)


def environment(root: Path, revisions: dict[str, str] | None = None) -> Path:
    """An Alembic project at *root*: alembic.ini and migrations/ (env.py, script.py.mako, versions/)."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(INI)
    (root / "migrations" / "env.py").write_text(ENV)
    (root / "migrations" / "script.py.mako").write_text(MAKO)
    for name, text in (REVISIONS if revisions is None else revisions).items():
        (root / "migrations" / "versions" / name).write_text(text)
    return root


def rehearse(server: Server, folder: Path, tmp_path: Path) -> dict[str, tuple[str, str]]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"migrations: {folder}\nlayout: alembic\nrehearsal: {{provider: embedded}}\n"
        "defaults: {idempotent: false, rollback: true, backward_compatible: true, lint: true}\n"
    )
    with Rehearsal(load_plan(plan), server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


def test_an_alembic_environment_is_detected_and_read_in_revision_order(tmp_path: Path) -> None:
    root = environment(tmp_path / "project")
    assert detect_layout(root) == "alembic"  # alembic.ini
    assert detect_layout(root / "migrations") == "alembic"  # env.py beside versions/
    migrations = load_migrations(root)
    versions = [m.version for m in migrations]
    assert sorted(versions) == sorted([A1, B2, C3, D4, E5])
    # Base to heads: every revision after its down_revision(s); the merge after both branches.
    assert versions[0] == A1 and versions[-2:] == [D4, E5]
    assert [m.order for m in migrations] == [1, 2, 3, 4, 5]
    by = {m.version: m for m in migrations}
    assert by[D4].requires == (B2, C3) and by[A1].requires == ()
    assert by[B2].id == f"{B2}_add_name" and by[D4].name == "merge_add_audit" and by[D4].layout == "alembic"
    source = root / "migrations" / "versions" / "a1f0c0de0001_create_users.py"
    assert by[A1].checksum == hashlib.sha256(source.read_bytes()).hexdigest()
    # Statements are those of the rendered SQL, kept where messages point: its header names the revision file.
    assert by[A1].path == root / ".harness" / "alembic" / "a1f0c0de0001_create_users.upgrade.sql"
    assert by[A1].path.read_text() == by[A1].sql
    assert "migrations/versions/a1f0c0de0001_create_users.py" in by[A1].sql.splitlines()[0]
    assert [s.kind for s in by[A1].statements] == ["CreateStmt"] and by[A1].wrapped  # Alembic's BEGIN/COMMIT
    assert by[A1].down_path is not None and by[A1].down_path.name == "a1f0c0de0001_create_users.downgrade.sql"
    assert [s.sql for s in by[A1].down_statements or ()] == ["DROP TABLE users"]
    # The harness keeps its own history: none of Alembic's version table statements are left.
    for m in migrations:
        for text in (m.sql, m.down_sql or ""):
            assert not re.search(r"^(CREATE TABLE|INSERT INTO|UPDATE|DELETE FROM) alembic_version", text, re.M)
    # autocommit_block(): Alembic commits around the block, so the revision runs outside a transaction.
    assert by[C3].no_transaction and not by[C3].transactional and by[C3].error is None
    assert [s.sql for s in by[C3].statements] == [
        "ALTER TABLE users ADD COLUMN nick TEXT", "CREATE INDEX CONCURRENTLY users_email ON users (email)"]
    assert by[B2].down_empty and not by[B2].reversible
    # The revision that cannot render offline: only it carries the error, with its file, line and Alembic's message.
    broken = by[E5]
    assert broken.error is not None and broken.statements == ()
    assert broken.path == root / "migrations" / "versions" / "e5f0c0de0005_backfill_names.py"  # nothing rendered
    assert broken.error.startswith(f"{root / 'migrations' / 'versions' / 'e5f0c0de0005_backfill_names.py'}:{FETCH_LINE}:1: ")
    assert "AttributeError" in broken.error and "fetchall" in broken.error
    assert broken.down_error is None and broken.down_empty
    assert sum(m.error is not None for m in migrations) == 1
    # The environment folder itself reads the same revisions, with alembic.ini found one level up.
    assert [m.version for m in load_migrations(root / "migrations", layout="alembic")] == versions


def test_findings_note_irreversible_revisions_and_concurrently_inside_alembics_transaction(tmp_path: Path) -> None:
    revisions = {
        **REVISIONS,
        "f6f0c0de0006_index_in_transaction.py": revision("f6f0c0de0006", "e5f0c0de0005", "index in transaction", """
            op.create_index("users_name", "users", ["name"], postgresql_concurrently=True)
        """, """
            op.drop_index("users_name", table_name="users")
        """),
    }
    root = environment(tmp_path / "project", revisions)
    found = {(f.path.name, f.rule, f.severity) for f in layout_findings(root)}
    assert ("b2f0c0de0002_add_name.downgrade.sql", "layout-empty-down", "info") in found
    assert ("f6f0c0de0006_index_in_transaction.upgrade.sql", "layout-transaction", "error") in found
    assert ("c3f0c0de0003_email_index.upgrade.sql", "layout-transaction", "error") not in found
    (finding,) = [f for f in layout_findings(root) if f.rule == "layout-transaction"]
    assert "Alembic runs the revision in a transaction" in finding.message and "autocommit_block" in finding.advice


def test_alembic_revisions_are_rehearsed_like_any_migration(pg_server: Server, tmp_path: Path) -> None:
    root = environment(tmp_path / "project")
    results = rehearse(pg_server, root, tmp_path)
    for rev in (A1, C3, D4):
        migration = next(k.split("::")[0] for k in results if k.startswith(rev))
        assert results[f"{migration}::apply"][0] == PASSED, results[f"{migration}::apply"]
        assert results[f"{migration}::rollback"][0] == PASSED, results[f"{migration}::rollback"]
    # `downgrade(): pass` cannot undo the up: the rollback fails with what stays behind.
    status, message = results[f"{B2}_add_name::rollback"]
    assert status == FAILED and "name" in message
    # Only the revision Alembic cannot render fails, on its own items, with Alembic's message.
    status, message = results[f"{E5}_backfill_names::apply"]
    assert status == FAILED and "Alembic cannot render upgrade() of revision e5f0c0de0005 offline" in message
    assert f"e5f0c0de0005_backfill_names.py:{FETCH_LINE}:" in message
    assert not any(status == FAILED for key, (status, _) in results.items() if key.startswith((A1, C3, D4)))


def test_alembic_version_is_adopted_through_the_revision_graph(tmp_path: Path, db_dsn: str) -> None:
    """Alembic itself migrates a real database; adopt reads its heads and takes every ancestor as applied."""
    from alembic import command
    from alembic.config import Config

    root = environment(tmp_path / "project", {k: v for k, v in REVISIONS.items() if not k.startswith("e5")})
    migrations = load_migrations(root)
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", _sqlalchemy_url(db_dsn))
    command.upgrade(config, B2)  # one branch only: c3 is not applied
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        (foreign,) = read_foreign_histories(conn)
        assert foreign.tool == "alembic" and [e.version for e in foreign.entries] == [B2]
        match = match_history(foreign, migrations)
        assert [m.version for m in match.applied] == [A1, B2] and match.problems == []
    command.upgrade(config, C3)  # both branches: two heads, two rows
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        (foreign,) = read_foreign_histories(conn)
        assert sorted(e.version for e in foreign.entries) == [B2, C3]
        assert {m.version for m in match_history(foreign, migrations).applied} == {A1, B2, C3}
    command.upgrade(config, "heads")  # merged: one row, every revision applied
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        (foreign,) = read_foreign_histories(conn)
        assert [e.version for e in foreign.entries] == [D4]
        assert [m.version for m in match_history(foreign, migrations).applied] == [m.version for m in migrations]
        adoption = plan_adoption(conn, migrations, layout="alembic")
        assert adoption.ok and len(adoption.to_record) == 4
        # A head no revision file has blocks adoption.
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        adoption = plan_adoption(conn, migrations, layout="alembic")
        assert any("ffffffffffff" in p and "no file" in p for p in adoption.problems)


def _sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) of a libpq DSN, escaped for the ini file's interpolation."""
    from sqlalchemy.engine import URL

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    query = {key: str(info[key]) for key in ("host", "port") if info.get(key)}
    url = URL.create("postgresql+psycopg", username=info.get("user"), password=info.get("password"),
                     database=str(info["dbname"]), query=query)
    return url.render_as_string(hide_password=False).replace("%", "%%")


def test_without_alembic_the_plan_fails_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow = tmp_path / "shadow" / "alembic"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named alembic (shadowed by the test)')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    root = environment(tmp_path / "project")
    with pytest.raises(SourceError) as info:
        load_migrations(root)
    assert info.value.exit_code == 2
    assert "Alembic cannot be imported" in str(info.value) and "migration-harness[alembic]" in str(info.value)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"migrations: {root}\nlayout: alembic\n")
    assert main(["rehearse", str(plan)]) == 2
    assert "pip install" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"env.py": "", "versions/abc_init.py": ""}, "Could not determine revision id from filename abc_init.py"),
        ({"alembic.ini": "[alembic]\n"}, "No 'script_location' key found"),
    ],
    ids=["revision-without-id", "ini-without-script-location"],
)
def test_an_environment_alembic_cannot_read_is_a_plan_error(tmp_path: Path, files: dict[str, str], fragment: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert detect_layout(tmp_path) == "alembic"
    with pytest.raises(SourceError) as info:
        load_migrations(tmp_path)
    assert info.value.exit_code == 2
    assert "Alembic cannot read the environment" in str(info.value) and fragment in str(info.value)


def test_an_environment_without_revisions_says_what_it_looked_for(tmp_path: Path) -> None:
    root = environment(tmp_path / "project", {})
    with pytest.raises(SourceError, match="no migration found in .*the alembic layout looks for the revisions"):
        load_migrations(root)
    # Read with another layout, the folder is named for what it is.
    with pytest.raises(SourceError, match=r"looks like an Alembic environment .*layout: alembic"):
        load_migrations(root / "migrations", layout="native")
    (root / "migrations" / "versions").rmdir()  # an env.py alone: named all the same
    with pytest.raises(SourceError, match=r"looks like an Alembic environment .*layout: alembic"):
        load_migrations(root / "migrations")


def test_rendered_sql_follows_the_revision_file(tmp_path: Path) -> None:
    root = environment(tmp_path / "project", {k: v for k, v in REVISIONS.items() if k.startswith("a1")})
    (first,) = load_migrations(root)
    path = root / "migrations" / "versions" / "a1f0c0de0001_create_users.py"
    path.write_text(path.read_text().replace('sa.Column("email", sa.Text)', 'sa.Column("email", sa.Text),\n'
                                             '                    sa.Column("phone", sa.Text)'))
    (second,) = load_migrations(root)
    assert "phone" in second.statements[0].sql and "phone" not in first.statements[0].sql
    assert second.checksum != first.checksum and "phone" in second.path.read_text()


def test_harness_new_leaves_alembic_revisions_to_alembic() -> None:
    with pytest.raises(ConfigError, match="creating migrations in the 'alembic' layout is not supported"):
        layout_for("alembic")

