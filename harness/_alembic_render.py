"""Render an Alembic environment's revisions as SQL, one revision at a time, with Alembic's offline mode.

Run in a subprocess by :mod:`harness._alembic`, never imported by the
harness itself: a project's ``env.py`` and revision modules run here, in the
project's Python environment and working directory, so they cannot change
the harness's process.  It imports nothing of the harness, and Alembic only
inside :func:`render`, so a missing Alembic is reported, not raised.

Usage: ``python -m harness._alembic_render --out RESULT.json [--ini alembic.ini] [--env ENV_FOLDER] --url URL``.
RESULT.json then holds either ``{"error": ..., "missing_alembic": bool}`` or
the revisions in upgrade order, each with its upgrade and downgrade SQL (or
the reason it could not be rendered, with the revision file's line).

Each revision is rendered as ``command.upgrade(config, "A:B", sql=True)``
renders a range: an ``EnvironmentContext`` with ``as_sql=True`` whose
migration function yields one ``MigrationStep`` (the step
``ScriptDirectory._upgrade_revs`` builds), and ``starting_rev`` set to the
heads the database has when every earlier revision is applied, so the
``alembic_version`` statements Alembic emits are those of a real run.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """Render the environment named by the arguments and write the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m harness._alembic_render")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ini")
    parser.add_argument("--env")
    parser.add_argument("--url", default="postgresql://")
    args = parser.parse_args(argv)
    result = render(args.ini, args.env, args.url)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def render(ini: str | None, env: str | None, url: str) -> dict[str, Any]:
    """Every revision of the environment, base to heads, with its offline upgrade and downgrade SQL."""
    try:
        import alembic
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError as exc:
        return {"error": f"{exc}", "missing_alembic": True}
    try:
        config = _config(Config, ini, env, url)
        script = ScriptDirectory.from_config(config)
        # walk_revisions() goes from the heads down to base (the order of a downgrade); reversed, every
        # revision comes after its down_revision(s) and dependencies.
        scripts = list(reversed(list(script.walk_revisions())))
    except Exception as exc:  # noqa: BLE001 - any failure here is the environment's, reported as a plan error
        return {"error": f"{type(exc).__name__}: {exc}", "missing_alembic": False}
    revisions = []
    heads: tuple[str, ...] = ()
    for revision in scripts:
        normalized = tuple(getattr(revision, "_normalized_down_revisions", None) or _tuple(revision.down_revision))
        after = tuple(sorted((set(heads) - set(normalized)) | {revision.revision}))
        upgrade = _render_step(config, script, revision, heads, upgrade=True)
        downgrade = _render_step(config, script, revision, after, upgrade=False)
        revisions.append({
            "revision": revision.revision,
            "down_revisions": list(_tuple(revision.down_revision)),
            "dependencies": list(getattr(revision, "_resolved_dependencies", None) or ()),
            "doc": revision.doc or "",
            "path": str(Path(revision.path).resolve()),
            "heads_before": list(heads),
            "upgrade": upgrade,
            "downgrade": downgrade,
        })
        heads = after
    return {"alembic": alembic.__version__, "revisions": revisions}


def _config(config_class: Any, ini: str | None, env: str | None, url: str) -> Any:
    config = config_class(ini) if ini else config_class()
    if env is not None:
        location = config.get_main_option("script_location") if ini else None
        if location is None or Path(location).resolve() != Path(env).resolve():
            # The ini file beside the folder belongs to another environment: use none.
            config = config_class()
        config.set_main_option("script_location", env)
    # Offline mode needs only a dialect; the project's own URL may name a driver that is not installed,
    # or another database.  '%' is the ini files' interpolation character.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _render_step(config: Any, script: Any, revision: Any, heads: tuple[str, ...], *, upgrade: bool) -> dict[str, Any]:
    """The SQL of one revision's upgrade (or downgrade), from the database state with *heads*."""
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationStep

    buffer = io.StringIO()
    config.output_buffer = buffer
    make = MigrationStep.upgrade_from_script if upgrade else MigrationStep.downgrade_from_script

    def steps(current: Any, context: Any) -> list[Any]:
        return [make(script.revision_map, revision)]

    version_table = "alembic_version"
    version_schema = None
    try:
        with EnvironmentContext(
            config,
            script,
            fn=steps,
            as_sql=True,
            starting_rev=heads or None,
            destination_rev=revision.revision,
        ) as environment:
            script.run_env()
            context = environment.get_context()
            version_table = context.version_table
            version_schema = context.version_table_schema
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported on this revision, with its line
        return {"sql": None, "error": _describe(exc), "line": _line_in(exc, revision.path)}
    return {"sql": buffer.getvalue(), "error": None, "line": None, "version_table": version_table,
            "version_table_schema": version_schema}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _line_in(exc: BaseException, path: str) -> int | None:
    """The line of the revision file where *exc* was raised (the innermost frame in that file)."""
    target = Path(path).resolve()
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            if Path(frame.filename).resolve() == target:
                line = frame.lineno
        except OSError:
            continue
    return line


if __name__ == "__main__":
    sys.exit(main())
