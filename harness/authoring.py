"""Authoring migrations: name, version and template of a new migration (``harness new``).

A migration's file names come from the plan's *layout*.  Only the native
layout (``<version>_<name>.sql`` and ``<version>_<name>.down.sql``, version a
UTC timestamp ``YYYYMMDDHHMMSS``) exists today; another layout plugs in by
providing a :class:`Layout` (how versions are read from the folder and how a
new migration's files are named) and registering it in :data:`LAYOUTS`.

Everything here is file-based: no database is opened.  A new version is
refused when it collides with an existing one or would sort before the
newest existing migration (a clock running behind, or a migration merged
from a branch with a later timestamp), because such a migration would run in
a different order on a database that already applied the newer ones.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfigError

__all__ = [
    "NAME_PATTERN",
    "Layout",
    "NativeLayout",
    "LAYOUTS",
    "NewMigration",
    "layout_for",
    "check_name",
    "plan_versions",
    "up_template",
    "down_template",
    "create_migration",
    "write_new_files",
]

log = logging.getLogger(__name__)

#: What a migration name given to ``harness new`` / ``harness generate`` may look like.
NAME_PATTERN = re.compile(r"[a-z0-9_]+")
_MAX_NAME = 100


class Layout(Protocol):
    """How one migrations-folder layout names and orders its files."""

    name: str

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        """Every migration version in *directory* with the file it was read from, in no particular order."""
        ...

    def version_at(self, moment: _dt.datetime) -> str:
        """The version of a migration created at *moment* (UTC)."""
        ...

    def next_version(self, version: str) -> str:
        """The version right after *version* (for a follow-up migration created at the same moment)."""
        ...

    def order(self, version: str) -> int:
        """The sort key of a version."""
        ...

    def file_names(self, version: str, name: str) -> tuple[str, str]:
        """The up and down file names of a migration."""
        ...


class NativeLayout:
    """``<version>_<name>.sql`` plus ``<version>_<name>.down.sql``; versions are UTC timestamps."""

    name = "native"
    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)(?:\.down)?\.sql")
    _STAMP = "%Y%m%d%H%M%S"

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        found: list[tuple[str, Path]] = []
        if not directory.is_dir():
            return found
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            match = self._FILE.fullmatch(entry.name)
            if match:
                found.append((match["version"], entry))
        return found

    def version_at(self, moment: _dt.datetime) -> str:
        return moment.astimezone(_dt.timezone.utc).strftime(self._STAMP)

    def next_version(self, version: str) -> str:
        try:
            moment = _dt.datetime.strptime(version, self._STAMP).replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            return str(int(version) + 1).zfill(len(version))
        return self.version_at(moment + _dt.timedelta(seconds=1))

    def order(self, version: str) -> int:
        return int(version)

    def file_names(self, version: str, name: str) -> tuple[str, str]:
        return f"{version}_{name}.sql", f"{version}_{name}.down.sql"


#: Layouts that can name new migrations, by plan ``layout`` value (supabase uses the native files).
LAYOUTS: dict[str, Layout] = {"native": NativeLayout(), "supabase": NativeLayout()}


def layout_for(name: str, directory: Path | None = None) -> Layout:
    """The :class:`Layout` for a plan's ``layout`` value (``auto``: detected from *directory*).

    Raises :class:`ConfigError` for a layout that cannot name new files yet.
    """
    detected = ""
    if name == "auto":
        from .layouts import detect_layout  # reading folders is that module's job

        name = detect_layout(directory) if directory is not None else "native"
        detected = f" (detected in {directory})"
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(
            f"creating migrations in the {name!r} layout{detected} is not supported yet (supported: "
            f"{', '.join(sorted(LAYOUTS))}); create the files the way that tool does"
        ) from None


@dataclass(frozen=True)
class NewMigration:
    """A migration created on disk: its id and files."""

    version: str
    name: str
    up: Path
    down: Path

    @property
    def id(self) -> str:
        """``<version>_<name>``."""
        return f"{self.version}_{self.name}"


def check_name(name: str) -> str:
    """*name* if it is a valid migration name, else a :class:`ConfigError` saying what is allowed."""
    if not NAME_PATTERN.fullmatch(name or ""):
        suggestion = re.sub(r"[^a-z0-9_]+", "_", (name or "").lower()).strip("_")
        hint = f" (for example {suggestion!r})" if suggestion and suggestion != name else ""
        raise ConfigError(
            f"invalid migration name {name!r}: use lower-case letters, digits and underscores only{hint}"
        )
    if len(name) > _MAX_NAME:
        raise ConfigError(f"migration name {name[:20]}... is {len(name)} characters long; keep it under {_MAX_NAME}")
    return name


def plan_versions(
    directory: Path, layout: Layout, count: int = 1, *, now: _dt.datetime | None = None
) -> list[str]:
    """*count* consecutive new versions for migrations created now in *directory*.

    Raises :class:`ConfigError` when the first would collide with an
    existing version or sort before the newest existing migration.
    """
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    versions = [layout.version_at(moment)]
    while len(versions) < count:
        versions.append(layout.next_version(versions[-1]))
    existing = layout.versions(directory)
    if not existing:
        return versions
    by_order: dict[int, Path] = {}
    # Name the up file when a version has both.
    for version, path in sorted(existing, key=lambda vp: (vp[1].name.endswith(".down.sql"), vp[1].name)):
        by_order.setdefault(layout.order(version), path)
    newest = max(by_order)
    if layout.order(versions[0]) < newest:
        raise ConfigError(
            f"the new version {versions[0]} (now, UTC) sorts before the newest existing migration "
            f"{by_order[newest].name}: is this machine's clock behind, or does that file have a version from "
            "the future? A migration older than applied ones would run out of order; fix the clock or the "
            "other file's version"
        )
    for version in versions:
        clash = by_order.get(layout.order(version))
        if clash is not None:
            raise ConfigError(
                f"version {version} is already used by {clash.name}; two migrations were created in the same "
                "second: wait a second and run the command again"
            )
    return versions


def _title(name: str) -> str:
    return name.replace("_", " ")


def up_template(migration_id: str, name: str, created: _dt.datetime) -> str:
    """The text of a new up migration: a header and the idempotent patterns of docs/authoring.md, commented.

    Prose comments start with ``-- ``; the example SQL is indented by four more spaces.
    """
    stamp = created.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""\
-- {migration_id}: {_title(name)}
-- Created by `harness new` on {stamp}; undo it in {migration_id}.down.sql.
--
-- Write it so that a second run changes nothing (the rehearsal's `idempotent`
-- item checks that) and so that it does not lock busy tables (`harness lint`).
-- Patterns (docs/authoring.md), uncomment and adapt:
--
--     CREATE TABLE IF NOT EXISTS public.orders (
--         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
--         created_at timestamptz NOT NULL DEFAULT now()
--     );
--
--     ALTER TABLE public.orders ADD COLUMN IF NOT EXISTS note text;
--
-- Types have no IF NOT EXISTS: guard them with a DO block.
--     DO $$
--     BEGIN
--         IF to_regtype('public.order_status') IS NULL THEN
--             CREATE TYPE public.order_status AS ENUM ('new', 'paid');
--         END IF;
--     END
--     $$;
--     ALTER TYPE public.order_status ADD VALUE IF NOT EXISTS 'shipped';
--
-- Constraints on existing tables: NOT VALID first (no scan), VALIDATE later
-- (no write lock; ideally in the next migration). ADD CONSTRAINT has no
-- IF NOT EXISTS: guard it with a DO block like the type above.
--     ALTER TABLE public.orders ADD CONSTRAINT orders_user_fk
--         FOREIGN KEY (user_id) REFERENCES public.users (id) NOT VALID;
--     ALTER TABLE public.orders VALIDATE CONSTRAINT orders_user_fk;
--
-- Indexes on existing tables: CONCURRENTLY, in a migration of their own that
-- holds nothing else (CONCURRENTLY cannot run in a transaction):
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_id_idx ON public.orders (user_id);
--
-- The harness refuses a migration without statements: write yours below.

"""


def down_template(migration_id: str, name: str, created: _dt.datetime) -> str:
    """The text of a new down migration: how to undo, commented."""
    return f"""\
-- {migration_id}.down: undo {migration_id} ({_title(name)})
-- The rehearsal checks that up -> down -> up restores the schema exactly.
-- Undo in reverse order, with IF EXISTS so a half-applied up can be undone too:
--
--     DROP INDEX CONCURRENTLY IF EXISTS public.orders_user_id_idx;   -- no-transaction migrations only
--     ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS orders_user_fk;
--     ALTER TABLE public.orders DROP COLUMN IF EXISTS note;
--     DROP TABLE IF EXISTS public.orders;
--     DROP TYPE IF EXISTS public.order_status;
--
-- If the migration cannot be undone, delete this file and declare
-- `rollback: none` for its step in the plan.

"""


def create_migration(
    directory: Path,
    name: str,
    *,
    layout: Layout | None = None,
    now: _dt.datetime | None = None,
) -> NewMigration:
    """Create the up and down files of a new migration named *name* in *directory*.

    Raises :class:`ConfigError` for an invalid name, a missing folder, or a
    version that collides with or sorts before an existing migration.
    """
    check_name(name)
    layout = layout or layout_for("auto", directory)
    if not directory.is_dir():
        raise ConfigError(
            f"migrations folder {directory} does not exist; create it first or pass the plan that names it"
        )
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    (version,) = plan_versions(directory, layout, 1, now=moment)
    up_name, down_name = layout.file_names(version, name)
    migration = NewMigration(version, name, directory / up_name, directory / down_name)
    write_new_files(
        [(migration.up, up_template(migration.id, name, moment)),
         (migration.down, down_template(migration.id, name, moment))]
    )
    log.info("created %s and %s", migration.up, migration.down)
    return migration


def write_new_files(files: Sequence[tuple[Path, str]]) -> None:
    """Write files that must not exist yet; on any failure remove the ones already written."""
    written: list[Path] = []
    try:
        for path, text in files:
            with path.open("x", encoding="utf-8") as handle:
                handle.write(text)
            written.append(path)
    except FileExistsError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise ConfigError(f"{exc.filename} already exists; not overwriting it") from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
