"""The Alembic layout: each revision's upgrade and downgrade, rendered to SQL by Alembic's own offline mode.

Alembic revisions are Python; the harness rehearses SQL.  Alembic's offline
mode (``alembic upgrade A:B --sql``) runs the same revision code and writes
SQL instead of executing it, so the SQL rehearsed is the SQL Alembic would
run.  :mod:`harness._alembic_render` does the rendering in a subprocess (the
project's ``env.py`` and revisions never run in the harness's process); this
module finds the environment, runs that subprocess, and turns each revision
into a :class:`~harness.migration.Migration`:

- ``version`` is the revision id, ``name`` the slug of its message (as
  Alembic slugs file names), ``order_parts`` its position in an upgrade
  order of the revision graph (base to heads, each revision after its
  ``down_revision`` and ``depends_on``), ``requires`` those revisions;
- ``path`` (and ``down_path``) is the rendered SQL, written to
  ``.harness/alembic/<revision file>.upgrade.sql`` (``.downgrade.sql``)
  beside ``alembic.ini``, so every ``file:line`` a message shows can be
  opened; its first lines name the revision's ``.py`` file;
- ``checksum`` is the sha256 of the revision's ``.py`` file;
- what the harness does itself is left out of the SQL: the
  ``alembic_version`` statements (the harness keeps its own history) and the
  ``BEGIN``/``COMMIT`` Alembic wraps a revision in (kept when it is the one
  wrapper of the file, which :func:`~harness.parsing.make_migration`
  accepts; an ``autocommit_block()`` leaves several, and the revision then
  runs outside a transaction, ``no_transaction``);
- a revision Alembic cannot render offline keeps its place with
  ``error`` (or ``down_error``) naming the ``.py`` file, line and Alembic's
  message, and that side's path is the ``.py`` file: only its items fail.

Nothing here opens a database connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SourceError
from .migration import Migration, Statement
from .parsing import _LineIndex, parse_sql

__all__ = ["looks_like_alembic", "read_alembic", "LOOKED_FOR", "RENDER_URL"]

log = logging.getLogger(__name__)

#: What the layout looks for, for the message when it finds nothing.
LOOKED_FOR = "the revisions (versions/<revision>_<slug>.py) of the Alembic environment that alembic.ini or env.py defines"

#: The URL offline mode renders for: a dialect only, nothing connects to it.
RENDER_URL = "postgresql://"

#: How long rendering may take before it is considered stuck (an env.py waiting for a database, say).
RENDER_TIMEOUT = 600.0

_INSTALL_HINT = (
    "install Alembic in the environment the harness runs in (pip install 'migration-harness[alembic]', or "
    "pip install alembic together with the project's own requirements)"
)

# Alembic's slug of a message (ScriptDirectory._rev_path: "_".join(_slug_re.findall(message)).lower()).
_SLUG_RE = re.compile(r"\w+")


def looks_like_alembic(folder: Path) -> bool:
    """True when *folder* holds ``alembic.ini``, or an ``env.py`` beside a ``versions/`` folder."""
    return (folder / "alembic.ini").is_file() or ((folder / "env.py").is_file() and (folder / "versions").is_dir())


@dataclass(frozen=True)
class _Environment:
    ini: Path | None  # the alembic.ini used (None: a configuration without a file)
    env: Path | None  # the environment folder named by the plan (None: the ini's script_location)
    root: Path  # where .harness/alembic/ goes, and the working directory Alembic runs in


def _locate(folder: Path) -> _Environment:
    folder = folder.resolve()
    if (folder / "alembic.ini").is_file():
        return _Environment(folder / "alembic.ini", None, folder)
    # An environment folder: its alembic.ini is usually one level up (`alembic init migrations`).
    for parent in (folder.parent, folder.parent.parent):
        if (parent / "alembic.ini").is_file():
            return _Environment(parent / "alembic.ini", folder, parent)
    return _Environment(None, folder, folder)


_CACHE: dict[Path, tuple[tuple[Any, ...], dict[str, Any]]] = {}


def _fingerprint(environment: _Environment) -> tuple[Any, ...]:
    """What the rendering depends on that a load can see: the ini file and every .py file of the environment."""
    paths: list[Path] = [environment.ini] if environment.ini else []
    base = environment.env or environment.root
    paths += sorted(p for p in base.rglob("*.py") if ".harness" not in p.parts and "__pycache__" not in p.parts)
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _render(environment: _Environment) -> dict[str, Any]:
    """The result of :mod:`harness._alembic_render` for *environment*; raises :class:`SourceError` for the whole."""
    key = environment.env or environment.root
    fingerprint = _fingerprint(environment)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    with tempfile.TemporaryDirectory(prefix="harness-alembic-") as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "harness._alembic_render", "--out", str(out), "--url", RENDER_URL]
        if environment.ini is not None:
            command += ["--ini", str(environment.ini)]
        if environment.env is not None:
            command += ["--env", str(environment.env)]
        # The harness must stay importable from the project's working directory.
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log.debug("rendering Alembic revisions: %s (in %s)", command, environment.root)
        try:
            done = subprocess.run(command, cwd=environment.root, env=env, capture_output=True, text=True,
                                  timeout=RENDER_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"{_where(environment)}: rendering the Alembic revisions offline did not finish in "
                f"{RENDER_TIMEOUT:.0f} s; check that env.py does not connect to a database in offline mode "
                "(context.is_offline_mode())"
            ) from None
        if done.returncode != 0 or not out.is_file():
            raise SourceError(
                f"{_where(environment)}: rendering the Alembic revisions failed (exit {done.returncode}): "
                f"{_tail(done.stderr)}"
            )
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    if result.get("missing_alembic"):
        raise SourceError(
            f"{_where(environment)} is an Alembic environment, but Alembic cannot be imported by {sys.executable} "
            f"({result['error']}): the alembic layout renders revisions with the project's own Alembic; "
            f"{_INSTALL_HINT}"
        )
    if result.get("error"):
        raise SourceError(
            f"{_where(environment)}: Alembic cannot read the environment: {result['error'].rstrip('.')}; check alembic.ini's "
            "script_location and that `alembic history` works"
        )
    _CACHE[key] = (fingerprint, result)
    return result


def _where(environment: _Environment) -> str:
    return str(environment.ini or environment.env or environment.root)


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept) or "no message"


def read_alembic(
    folder: Path,
    build: Callable[..., Migration],
    down_text: Callable[[Path | None, str | None], str | None],
) -> list[Migration]:
    """The revisions of the Alembic environment at *folder* as migrations, in upgrade order.

    *build* is the layout reader's :func:`~harness.parsing.make_migration`
    (with the plan's target major and substitutions); *down_text* notes an
    empty downgrade (the revision is irreversible).
    """
    environment = _locate(folder)
    result = _render(environment)
    cache = environment.root / ".harness" / "alembic"
    migrations = []
    for position, revision in enumerate(result.get("revisions", []), 1):
        migrations.append(_migration(environment, cache, position, revision, build, down_text))
    return migrations


def _migration(
    environment: _Environment,
    cache: Path,
    position: int,
    revision: dict[str, Any],
    build: Callable[..., Migration],
    down_text: Callable[[Path | None, str | None], str | None],
) -> Migration:
    rev: str = revision["revision"]
    source = Path(revision["path"])
    try:
        checksum = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        checksum = ""
    doc = revision.get("doc") or ""
    stem = source.stem if rev in source.stem else f"{rev}_{source.stem}"
    shown = _shown(source, environment.root)
    texts: dict[str, str] = {}
    errors: dict[str, str | None] = {}
    no_transaction: dict[str, bool] = {}
    paths: dict[str, Path] = {}
    for side in ("upgrade", "downgrade"):
        rendered = revision[side]
        paths[side] = cache / f"{stem}.{side}.sql"
        header = _header(rev, doc, shown, side, revision)
        if rendered.get("error") is not None:
            # Nothing was rendered: the error (and the lint finding built from it) points into the revision file.
            errors[side] = _render_error(source, rendered, rev, side, revision)
            _remove(paths[side])
            paths[side] = source
            texts[side] = ""
            no_transaction[side] = False
            continue
        body, no_transaction[side] = _clean(rendered["sql"], rendered.get("version_table") or "alembic_version",
                                            rendered.get("version_table_schema"), paths[side])
        if no_transaction[side]:
            header += ("-- An autocommit_block() ends Alembic's transaction: the harness runs this revision outside "
                       "a transaction.\n\n")
        texts[side] = header + body
        errors[side] = None
    for side, text in texts.items():
        if errors[side] is None:
            _write(paths[side], text)
    return build(
        version=rev,
        name="_".join(_SLUG_RE.findall(doc)).lower(),
        path=paths["upgrade"],
        text=texts["upgrade"],
        checksum=checksum,
        down_path=paths["downgrade"],
        down_text=down_text(paths["downgrade"], texts["downgrade"]) if errors["downgrade"] is None else "",
        error=errors["upgrade"],
        down_error=errors["downgrade"],
        order_parts=(position,),
        no_transaction=no_transaction["upgrade"],
        down_no_transaction=no_transaction["downgrade"],
        requires=tuple(revision.get("down_revisions", ())) + tuple(revision.get("dependencies", ())),
    )


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _command(rev: str, side: str, revision: dict[str, Any]) -> str:
    """The Alembic command line that renders the same SQL (for a merge, Alembic's CLI takes one start only)."""
    if side == "upgrade":
        return f"alembic upgrade {','.join(revision.get('heads_before') or ()) or 'base'}:{rev} --sql"
    return f"alembic downgrade {rev}:{','.join(revision.get('down_revisions') or ()) or 'base'} --sql"


def _header(rev: str, doc: str, shown: str, side: str, revision: dict[str, Any]) -> str:
    return (
        f"-- Alembic revision {rev} ({doc or 'no message'}): {side}() of {shown}, rendered by Alembic's offline mode\n"
        f"-- (as {_command(rev, side, revision)}). Left out: the alembic_version statements (the harness keeps its "
        "own history).\n"
        "-- Written by migration-harness on every load: edit the revision, not this file.\n\n"
    )


def _render_error(source: Path, rendered: dict[str, Any], rev: str, side: str, revision: dict[str, Any]) -> str:
    line = rendered.get("line") or 1
    return (
        f"{source}:{line}:1: Alembic cannot render {side}() of revision {rev} offline "
        f"(`{_command(rev, side, revision)}`): {rendered['error']}. The harness rehearses the SQL Alembic's offline "
        f"mode writes, so {side}() must run without a database connection: write the change with op.* operations "
        "or op.execute(), and skip code that reads rows when `op.get_context().as_sql` is true"
    )


def _clean(sql: str, version_table: str, version_schema: str | None, path: Path) -> tuple[str, bool]:
    """*sql* without the version table's statements and Alembic's transaction wrapper; and whether it then runs
    outside a transaction (an ``autocommit_block()`` split the revision's transaction)."""
    try:
        statements = parse_sql(sql, path)
    except SourceError:
        return sql, False  # make_migration reports the parse error, with its line
    drop = [s for s in statements if _is_version_statement(s, version_table, version_schema)]
    kept = [s for s in statements if s not in drop]
    controls = [s for s in kept if s.control is not None]
    body = [s for s in kept if s.control is None]
    no_transaction = False
    if not body or all(s.control in ("begin", "commit") for s in controls):
        single_wrapper = (len(controls) == 2 and kept[0].control == "begin" and kept[-1].control == "commit")
        if controls and not single_wrapper:
            drop += controls
            # Alembic commits before an autocommit_block() and begins again after it.
            no_transaction = bool(body)
        elif not body:
            drop += controls  # BEGIN; COMMIT; around nothing: an empty migration
    return _without(sql, drop), no_transaction


def _is_version_statement(statement: Statement, table: str, schema: str | None) -> bool:
    if statement.kind not in ("CreateStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"):
        return False
    relation = getattr(statement.node, "relation", None)
    if relation is None:
        return False
    return bool(relation.relname == table and (relation.schemaname or None) == (schema or None))


def _without(sql: str, statements: list[Statement]) -> str:
    """*sql* with *statements* (and their semicolons) cut out, runs of blank lines collapsed."""
    if not statements:
        return sql
    lines = _LineIndex(sql)
    spans = []
    for statement in statements:
        start = lines.starts[statement.line - 1] + statement.column - 1
        end = start + len(statement.sql)
        rest = sql[end:]
        stripped = rest.lstrip(" \t\r\n")
        if stripped.startswith(";"):
            end += len(rest) - len(stripped) + 1
        spans.append((start, end))
    out = []
    at = 0
    for start, end in sorted(spans):
        out.append(sql[at:start])
        at = end
    out.append(sql[at:])
    return re.sub(r"\n[ \t]*(?:\n[ \t]*){2,}", "\n\n", "".join(out)).strip("\n") + "\n"


def _remove(path: Path) -> None:
    """Remove a rendered file that no longer matches its revision (best effort)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot remove %s: %s", path, exc)


def _write(path: Path, text: str) -> None:
    """Write *text* to *path* atomically (several processes may load one folder at once); best effort."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the rendered SQL of an Alembic revision to %s (%s); messages name it anyway",
                    path, exc)
