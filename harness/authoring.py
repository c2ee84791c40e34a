"""Authoring migrations: name, version and template of a new migration (``harness new``).

A migration's files come from the plan's *layout*: each layout of
:data:`harness.sources.LAYOUTS` has a :class:`Layout` here (registered in
:data:`LAYOUTS`) that reads the versions already in the folder, picks the new
one and drafts the files the way that layout's own tool would: the native
``<version>_<name>.sql`` and ``.down.sql``, golang-migrate's ``.up.sql`` /
``.down.sql``, a diesel directory, one dbmate or goose file with both
sections, Flyway's ``V``/``U`` scripts, a drizzle file plus its journal entry,
a Sqitch plan line plus its deploy, revert and verify scripts.  What is
written is what :mod:`harness.layouts` reads back.

Everything here is file-based: no database is opened.  A new version is
refused when it collides with an existing one or would sort before the
newest existing migration (a clock running behind, or a migration merged
from a branch with a later timestamp), because such a migration would run in
a different order on a database that already applied the newer ones.
"""

from __future__ import annotations

import configparser
import datetime as _dt
import getpass
import json
import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError
from .layouts import atlas_sum_text, detect_layout

__all__ = [
    "NAME_PATTERN",
    "Layout",
    "Draft",
    "NativeLayout",
    "GolangMigrateLayout",
    "DieselLayout",
    "DbmateLayout",
    "GooseLayout",
    "FlywayLayout",
    "DrizzleLayout",
    "SqitchLayout",
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

_UTC = _dt.timezone.utc
_STAMP = "%Y%m%d%H%M%S"
#: Existing versions all below this are a sequence (``1``, ``000010``), not timestamps: the next one is max + 1.
SEQUENTIAL_BELOW = 100_000


@dataclass(frozen=True)
class NewMigration:
    """A migration created on disk: its id and files.

    ``up`` and ``down`` are the files holding each direction: the same file
    for dbmate and goose (sections), and for drizzle (which has no down).
    ``files`` lists every file created, ``updated`` the existing files a line
    or entry was appended to (drizzle's journal, Sqitch's plan).
    """

    version: str
    name: str
    up: Path
    down: Path
    files: tuple[Path, ...] = ()
    updated: tuple[Path, ...] = ()

    @property
    def id(self) -> str:
        """``<version>_<name>``, as :attr:`harness.sources.Migration.id` (the version alone without a name)."""
        return f"{self.version}_{self.name}" if self.name else self.version


@dataclass(frozen=True)
class Draft:
    """What creating a migration writes: new directories and files, and new contents of existing files."""

    migration: NewMigration
    files: tuple[tuple[Path, str], ...]
    directories: tuple[Path, ...] = ()
    updates: tuple[tuple[Path, str], ...] = ()


class Layout(Protocol):
    """How one migrations-folder layout names, orders and drafts its files."""

    name: str

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        """Every migration version in *directory* with the file it was read from, in no particular order."""
        ...

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        """The version of a migration created at *moment* (UTC) in *directory*."""
        ...

    def next_version(self, version: str) -> str:
        """The version right after *version* (for a follow-up migration created at the same moment)."""
        ...

    def order(self, version: str) -> tuple[int, ...]:
        """The sort key of a version."""
        ...

    def file_names(self, version: str, name: str) -> tuple[str, str]:
        """The up and down file names of a migration (``harness generate``, which writes two plain files)."""
        ...

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        """The files of a new migration; raises :class:`ConfigError` when the layout's own bookkeeping refuses it."""
        ...


# --------------------------------------------------------------------------
# Layouts


class NativeLayout:
    """``<version>_<name>.sql`` plus ``<version>_<name>.down.sql``; versions are UTC timestamps."""

    name = "native"
    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)(?:\.down)?\.sql")
    #: Whether a folder of small sequential versions gets the next number instead of a timestamp.
    sequential = False
    #: How to run this layout's migration outside a transaction (a line of the up template).
    no_transaction_hint = ""

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        found: list[tuple[str, Path]] = []
        for entry in _entries(directory):
            match = self._FILE.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((match["version"], entry))
        return found

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        if self.sequential and directory is not None:
            existing = [version for version, _ in self.versions(directory)]
            if existing and all(self.order(v)[0] < SEQUENTIAL_BELOW for v in existing):
                # As `migrate create -seq` / `goose create -s` do: the next number, padded like the others.
                width = max(len(v) for v in existing if v.isdigit()) if any(v.isdigit() for v in existing) else 0
                return str(max(self.order(v)[0] for v in existing) + 1).zfill(width)
        return moment.astimezone(_UTC).strftime(_STAMP)

    def next_version(self, version: str) -> str:
        try:
            moment = _dt.datetime.strptime(version, _STAMP).replace(tzinfo=_UTC)
        except ValueError:
            return str(int(version.split(".")[0]) + 1).zfill(len(version) if version.isdigit() else 0)
        return self.version_at(moment + _dt.timedelta(seconds=1))

    def order(self, version: str) -> tuple[int, ...]:
        parts = tuple(int(p) for p in re.split(r"[._-]", version) if p)
        while len(parts) > 1 and parts[-1] == 0:  # Flyway's 1.0 is 1
            parts = parts[:-1]
        return parts

    def file_names(self, version: str, name: str) -> tuple[str, str]:
        return f"{version}_{name}.sql", f"{version}_{name}.down.sql"

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        up_name, down_name = self.file_names(version, name)
        migration = NewMigration(version, name, directory / up_name, directory / down_name)
        return _two_files(migration, self._up(migration, moment), self._down(migration, moment))

    def _up(self, migration: NewMigration, moment: _dt.datetime, **kwargs: Any) -> str:
        kwargs.setdefault("undo", migration.down.name)
        kwargs.setdefault("no_transaction", self.no_transaction_hint)
        return up_template(migration.id, migration.name or migration.version, moment, **kwargs)

    def _down(self, migration: NewMigration, moment: _dt.datetime, **kwargs: Any) -> str:
        return down_template(migration.id, migration.name or migration.version, moment, **kwargs)


class _ForeignLayout(NativeLayout):
    """A layout written for another tool: ``harness generate`` cannot write it yet (it writes two plain files)."""

    def file_names(self, version: str, name: str) -> tuple[str, str]:
        raise ConfigError(
            f"harness generate writes native migrations only, not the {self.name!r} layout yet; create the "
            f"migration with `harness new {name}` and write the SQL that `harness check-schema` shows is missing"
        )


class _UpDownLayout(_ForeignLayout):
    """``<version>_<name>.up.sql`` plus ``<version>_<name>.down.sql``."""

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        migration = NewMigration(
            version, name, directory / f"{version}_{name}.up.sql", directory / f"{version}_{name}.down.sql"
        )
        return _two_files(migration, self._up(migration, moment), self._down(migration, moment))


class GolangMigrateLayout(_UpDownLayout):
    """``<version>_<name>.up.sql`` plus ``.down.sql``; timestamps, or the next number in a sequential folder."""

    name = "golang-migrate"
    _FILE = re.compile(r"V?(?P<version>[0-9]+)[_.](?P<name>.+)\.up\.sql")
    sequential = True
    no_transaction_hint = "golang-migrate runs a file of one statement outside a transaction: keep it alone."


class DieselLayout(_ForeignLayout):
    """A directory ``<YYYY-MM-DD-HHMMSS>_<name>/`` holding ``up.sql`` and ``down.sql``, as diesel names them."""

    name = "diesel"
    _DIR = re.compile(r"(?P<version>[0-9][0-9-]*)_(?P<name>.+)")
    _DIESEL_STAMP = "%Y-%m-%d-%H%M%S"
    no_transaction_hint = "diesel: also put `run_in_transaction = false` in this migration's metadata.toml."

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        return [(m["version"], e) for e in _entries(directory)
                if e.is_dir() and (m := self._DIR.fullmatch(e.name)) and (e / "up.sql").is_file()]

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        return moment.astimezone(_UTC).strftime(self._DIESEL_STAMP)

    def next_version(self, version: str) -> str:
        moment = _dt.datetime.strptime(version, self._DIESEL_STAMP).replace(tzinfo=_UTC)
        return self.version_at(moment + _dt.timedelta(seconds=1))

    def order(self, version: str) -> tuple[int, ...]:
        # As diesel does: the version without dashes compared as text, which for digits is digit by digit.
        return tuple(int(digit) for digit in version.replace("-", ""))

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        folder = directory / f"{version}_{name}"
        migration = NewMigration(version, name, folder / "up.sql", folder / "down.sql")
        draft = _two_files(migration, self._up(migration, moment, undo="down.sql"), self._down(migration, moment))
        return Draft(draft.migration, draft.files, directories=(folder,))


class _SectionLayout(_ForeignLayout):
    """One ``<version>_<name>.sql`` file holding the up and the down section."""

    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.(?:sql|go)")
    up_mark = down_mark = ""

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        path = directory / f"{version}_{name}.sql"
        migration = NewMigration(version, name, path, path, files=(path,))
        text = (f"{self.up_mark}\n" + self._up(migration, moment, undo=f"the `{self.down_mark}` section below")
                + f"{self.down_mark}\n" + self._down(migration, moment, irreversible="leave this section empty"))
        return Draft(migration, ((path, text),))


class DbmateLayout(_SectionLayout):
    """``<version>_<name>.sql`` with ``-- migrate:up`` and ``-- migrate:down`` sections; UTC timestamps."""

    name = "dbmate"
    up_mark, down_mark = "-- migrate:up", "-- migrate:down"
    no_transaction_hint = "dbmate: also mark the section `-- migrate:up transaction:false`."


class GooseLayout(_SectionLayout):
    """``<version>_<name>.sql`` with ``-- +goose Up`` / ``-- +goose Down``; timestamps, or the next number."""

    name = "goose"
    up_mark, down_mark = "-- +goose Up", "-- +goose Down"
    sequential = True
    no_transaction_hint = "goose: also add `-- +goose NO TRANSACTION` as the file's first line."

    def _up(self, migration: NewMigration, moment: _dt.datetime, **kwargs: Any) -> str:
        # goose splits at every line ending with ';': a DO block needs StatementBegin/End around it.
        return super()._up(migration, moment, statement_block=("-- +goose StatementBegin", "-- +goose StatementEnd"),
                           **kwargs)


class FlywayLayout(_ForeignLayout):
    """``V<version>__<name>.sql`` plus the undo ``U<version>__<name>.sql``; the next integer, or a timestamp.

    A folder whose versions are all below :data:`SEQUENTIAL_BELOW` (``V1``,
    ``V1.1``, ``V2``) gets the next integer above the largest first part
    (``V3``); an empty folder, or one with timestamp versions, a UTC timestamp.
    """

    name = "flyway"
    _FILE = re.compile(r"V(?P<version>[0-9]+(?:[._][0-9]+)*)__(?P<name>.+)\.sql")
    sequential = True
    no_transaction_hint = "Flyway runs a script outside a transaction when all its statements need that."

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        if not directory.is_dir():
            return []
        return [(m["version"], p) for p in sorted(directory.rglob("V*.sql"))
                if p.is_file() and (m := self._FILE.fullmatch(p.name))
                and not any(part.startswith(".") for part in p.relative_to(directory).parts)]

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        migration = NewMigration(version, name, directory / f"V{version}__{name}.sql",
                                 directory / f"U{version}__{name}.sql")
        return _two_files(migration, self._up(migration, moment), self._down(migration, moment))


class DrizzleLayout(_ForeignLayout):
    """``NNNN_<name>.sql`` (the next journal index) plus its entry in ``meta/_journal.json``."""

    name = "drizzle"
    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.sql")
    no_transaction_hint = ("drizzle runs every migration in one transaction, so CONCURRENTLY cannot run in a "
                           "drizzle migration: build such an index outside drizzle.")

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        journal_path, journal = _journal(directory)
        found = [(f"{i:04d}", journal_path) for i in range(len(journal["entries"]))] if journal else []
        listed = {f"{e.get('tag')}.sql" for e in journal["entries"]} if journal else set()
        # A numbered file missing from the journal still takes its number.
        found += [(m["version"], e) for e in _entries(directory)
                  if e.is_file() and e.name not in listed and (m := self._FILE.fullmatch(e.name))]
        return found

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        journal = _journal(directory)[1] if directory is not None else None
        return f"{len(journal['entries']) if journal else 0:04d}"  # as drizzle-kit: idx = number of entries

    def next_version(self, version: str) -> str:
        return f"{int(version) + 1:04d}"

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        journal_path, journal = _journal(directory)
        if journal is None:
            journal = {"version": "7", "dialect": "postgresql", "entries": []}
        entries: list[dict[str, Any]] = journal["entries"]
        when = int(moment.timestamp() * 1000)
        latest = max(entries, key=lambda e: _int(e.get("when")), default=None)
        if latest is not None and _int(latest.get("when")) >= when:
            raise ConfigError(
                f"the new migration's time {when} (now, ms) is not after {latest.get('tag')}'s "
                f"({latest.get('when')}) in {journal_path}: drizzle skips a migration older than the last one a "
                "database applied, so it would never run there. Is this machine's clock behind? Fix the clock or "
                "that entry's `when`"
            )
        tag = f"{version}_{name}"
        # As drizzle-kit writes it (two-space JSON); keep a final newline someone added.
        ending = "\n" if journal_path.is_file() and journal_path.read_text(encoding="utf-8").endswith("\n") else ""
        last = entries[-1] if entries else {}
        entry = {"idx": len(entries), "version": str(last.get("version", journal.get("version", "7"))),
                 "when": when, "tag": tag, "breakpoints": bool(last.get("breakpoints", True))}
        journal["entries"] = [*entries, entry]
        path = directory / f"{tag}.sql"
        migration = NewMigration(version, name, path, path, files=(path,), updated=(journal_path,))
        text = "-- Custom SQL migration file, put your code below! --\n" + self._up(
            migration, moment, undo="a later migration (drizzle has no down migrations)",
            extra="drizzle-kit separates statements with a line `--> statement-breakpoint`; do the same.",
        )
        return Draft(migration, ((path, text),), directories=() if journal_path.parent.is_dir() else
                     (journal_path.parent,), updates=((journal_path, json.dumps(journal, indent=2) + ending),))


class SqitchLayout(_ForeignLayout):
    """A change line appended to ``sqitch.plan`` plus ``deploy/``, ``revert/`` and ``verify/<name>.sql``.

    The harness reads a Sqitch change with its name as version; the order is
    the plan's, so a new change always comes last.
    """

    name = "sqitch"
    no_transaction_hint = "Sqitch: also remove this script's BEGIN; and COMMIT;."

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        return [(str(i), directory / "sqitch.plan") for i, _ in enumerate(_sqitch_changes(directory))]

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        return str(len(_sqitch_changes(directory)) if directory is not None else 0)

    def next_version(self, version: str) -> str:
        return str(int(version) + 1)

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        plan_path = directory / "sqitch.plan"
        try:
            text = plan_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {plan_path} ({exc.strerror or exc}); run `sqitch init` first") from None
        changes = _sqitch_changes(directory)
        for number, change, planned in changes:
            if change == name:
                raise ConfigError(
                    f"change {name!r} is already in {plan_path} (line {number}); pick another name (to change a "
                    "deployed change, use `sqitch rework`)"
                )
        newest = max((planned for _, _, planned in changes if planned is not None), default=None)
        if newest is not None and moment.astimezone(_UTC) < newest:
            raise ConfigError(
                f"now ({_sqitch_time(moment)}) is before the newest change's planned time "
                f"({_sqitch_time(newest)}) in {plan_path}: is this machine's clock behind? Fix the clock, or that "
                "change's timestamp"
            )
        project = next((line.partition("=")[2].strip() for line in text.splitlines()
                        if line.startswith("%project=")), directory.resolve().name)
        planner, email = _sqitch_planner()
        line = f"{name} {_sqitch_time(moment)} {planner} <{email}> # {_title(name).capitalize()}.\n"
        updated = text + ("" if text.endswith("\n") or not text else "\n") + line
        deploy, revert, verify = (directory / part / f"{name}.sql" for part in ("deploy", "revert", "verify"))
        migration = NewMigration(name, "", deploy, revert, files=(deploy, revert, verify), updated=(plan_path,))
        up = (f"-- Deploy {project}:{name} to pg\n\n"
              + self._up(migration, moment, undo=f"revert/{name}.sql", below="between BEGIN; and COMMIT; below")
              + "BEGIN;\n\n-- XXX Add DDLs here.\n\nCOMMIT;\n")
        down = (f"-- Revert {project}:{name} from pg\n\n"
                + self._down(migration, moment)
                + "BEGIN;\n\n-- XXX Add DDLs here.\n\nCOMMIT;\n")
        check = f"-- Verify {project}:{name} on pg\n\nBEGIN;\n\n-- XXX Add verifications here.\n\nROLLBACK;\n"
        return Draft(
            migration, ((deploy, up), (revert, down), (verify, check)),
            directories=tuple(d for d in (deploy.parent, revert.parent, verify.parent) if not d.is_dir()),
            updates=((plan_path, updated),),
        )


class PrismaLayout(_ForeignLayout):
    """A folder ``<YYYYMMDDHHMMSS>_<name>/`` holding ``migration.sql``, as ``prisma migrate dev --create-only``."""

    name = "prisma"
    _DIR = re.compile(r"(?P<version>[^_]+)_?(?P<name>.*)")
    no_transaction_hint = "Prisma runs a file of one statement outside a transaction: keep CONCURRENTLY alone."

    def versions(self, directory: Path) -> list[tuple[str, Path]]:
        return [(m["version"], e) for e in _entries(directory)
                if e.is_dir() and (e / "migration.sql").is_file() and (m := self._DIR.fullmatch(e.name))]

    def order(self, version: str) -> tuple[int, ...]:
        # As Prisma does: folder names compared as text, which for digits is digit by digit.
        return tuple(ord(c) for c in version)

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        folder = directory / f"{version}_{name}"
        path = folder / "migration.sql"
        migration = NewMigration(version, name, path, path, files=(path,))
        text = self._up(migration, moment, undo="a later migration (Prisma has no down migrations)")
        return Draft(migration, ((path, text),), directories=(folder,))


class SqlxLayout(_UpDownLayout):
    """``<YYYYMMDDHHMMSS>_<name>.up.sql`` plus ``.down.sql``, as ``sqlx migrate add -r``."""

    name = "sqlx"
    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+?)(?:\.up|\.down)?\.sql")
    no_transaction_hint = "sqlx: make `-- no-transaction` the file's first line to run it outside a transaction."


class AtlasLayout(_ForeignLayout):
    """``<YYYYMMDDHHMMSS>_<name>.sql`` plus its line in ``atlas.sum``, which is written anew as Atlas writes it."""

    name = "atlas"
    _FILE = re.compile(r"(?P<version>[^_]+?)(?:_(?P<name>.+))?\.sql")
    no_transaction_hint = "Atlas: add `-- atlas:txmode none` as the file's first line to run it outside a transaction."

    def order(self, version: str) -> tuple[int, ...]:
        return tuple(ord(c) for c in version)  # Atlas sorts file names as text

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        path = directory / f"{version}_{name}.sql"
        migration = NewMigration(version, name, path, path, files=(path,),
                                 updated=(directory / "atlas.sum",))
        text = self._up(migration, moment, undo="a later migration (Atlas versioned migrations have no down files)")
        contents = {e.name: e.read_bytes() for e in _entries(directory) if e.is_file() and e.name.endswith(".sql")}
        contents[path.name] = text.encode("utf-8")
        return Draft(migration, ((path, text),), updates=((directory / "atlas.sum", atlas_sum_text(contents)),))


class NodePgMigrateLayout(_ForeignLayout):
    """``<milliseconds>_<name>.sql`` with ``-- Up Migration`` and ``-- Down Migration``, as ``node-pg-migrate create``."""

    name = "node-pg-migrate"
    _FILE = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.sql")
    no_transaction_hint = "node-pg-migrate: start the file with `-- no transaction` to run it outside a transaction."

    def version_at(self, moment: _dt.datetime, directory: Path | None = None) -> str:
        return str(int(moment.timestamp() * 1000))  # node-pg-migrate's default prefix: Date.now()

    def next_version(self, version: str) -> str:
        return str(int(version) + 1)

    def draft(self, directory: Path, version: str, name: str, moment: _dt.datetime) -> Draft:
        path = directory / f"{version}_{name}.sql"
        migration = NewMigration(version, name, path, path, files=(path,))
        text = ("-- Up Migration\n" + self._up(migration, moment, undo="the `-- Down Migration` section below")
                + "-- Down Migration\n" + self._down(migration, moment, irreversible="delete this section"))
        return Draft(migration, ((path, text),))


#: Layouts that can name new migrations, by plan ``layout`` value (supabase uses the native files).
LAYOUTS: dict[str, Layout] = {
    "native": NativeLayout(),
    "supabase": NativeLayout(),
    "golang-migrate": GolangMigrateLayout(),
    "diesel": DieselLayout(),
    "dbmate": DbmateLayout(),
    "goose": GooseLayout(),
    "flyway": FlywayLayout(),
    "drizzle": DrizzleLayout(),
    "sqitch": SqitchLayout(),
    "prisma": PrismaLayout(),
    "sqlx": SqlxLayout(),
    "atlas": AtlasLayout(),
    "node-pg-migrate": NodePgMigrateLayout(),
}


def _entries(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [e for e in sorted(directory.iterdir()) if not e.name.startswith(".")]


def _two_files(migration: NewMigration, up: str, down: str) -> Draft:
    files = ((migration.up, up), (migration.down, down))
    return Draft(NewMigration(migration.version, migration.name, migration.up, migration.down,
                              files=(migration.up, migration.down)), files)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _journal(directory: Path) -> tuple[Path, dict[str, Any] | None]:
    path = directory / "meta" / "_journal.json"
    if not path.is_file():
        return path, None
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read drizzle's journal ({exc}); fix it before adding a migration") from None
    if not isinstance(journal, dict) or not isinstance(journal.get("entries"), list):
        raise ConfigError(f"{path}: drizzle's journal needs an entries list; fix it before adding a migration")
    return path, journal


_SQITCH_CHANGE = re.compile(r"[+-]?(?P<name>[^\s\[@#%:\\]+)(?:\s+\[[^\]]*\])?\s+(?P<planned>[0-9]{4}-\S+)(?:\s.*)?")


def _sqitch_changes(directory: Path) -> list[tuple[int, str, _dt.datetime | None]]:
    """Plan line, name and planned time of every change of ``sqitch.plan`` (tags and pragmas skipped)."""
    try:
        text = (directory / "sqitch.plan").read_text(encoding="utf-8")
    except OSError:
        return []
    changes = []
    for number, raw in enumerate(text.splitlines(), 1):
        match = _SQITCH_CHANGE.fullmatch(raw.strip())
        if match and not raw.strip().startswith(("#", "%", "@")):
            try:
                planned: _dt.datetime | None = _dt.datetime.fromisoformat(match["planned"].replace("Z", "+00:00"))
            except ValueError:
                planned = None
            changes.append((number, match["name"], planned))
    return changes


def _sqitch_time(moment: _dt.datetime) -> str:
    return moment.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sqitch_planner() -> tuple[str, str]:
    """The planner's name and email, looked up as Sqitch does: environment, user config, then the system."""
    name = os.environ.get("SQITCH_USER_NAME") or os.environ.get("SQITCH_FULLNAME")
    email = os.environ.get("SQITCH_USER_EMAIL") or os.environ.get("SQITCH_EMAIL")
    if not (name and email):
        config = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            config.read(Path(os.environ.get("SQITCH_USER_CONFIG") or Path.home() / ".sqitch" / "sqitch.conf"),
                        encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            pass
        name = name or config.get("user", "name", fallback=None)
        email = email or config.get("user", "email", fallback=None)
    user = getpass.getuser()
    return (name or user).strip(), (email or f"{user}@{socket.gethostname()}").strip("<> ")


def layout_for(name: str, directory: Path | None = None) -> Layout:
    """The :class:`Layout` for a plan's ``layout`` value (``auto``: detected from *directory*).

    Raises :class:`ConfigError` for a layout that cannot name new files.
    """
    detected = ""
    if name == "auto":
        name = detect_layout(directory) if directory is not None else "native"
        detected = f" (detected in {directory})"
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(
            f"creating migrations in the {name!r} layout{detected} is not supported (supported: "
            f"{', '.join(sorted(LAYOUTS))}); create the files the way that tool does"
        ) from None


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
    versions = [layout.version_at(moment, directory)]
    while len(versions) < count:
        versions.append(layout.next_version(versions[-1]))
    existing = layout.versions(directory)
    if not existing:
        return versions
    by_order: dict[tuple[int, ...], Path] = {}
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


def up_template(
    migration_id: str,
    name: str,
    created: _dt.datetime,
    *,
    undo: str | None = None,
    no_transaction: str = "",
    statement_block: tuple[str, str] | None = None,
    below: str = "below",
    extra: str = "",
) -> str:
    """The text of a new up migration: a header and the idempotent patterns of docs/authoring.md, commented.

    Prose comments start with ``-- ``; the example SQL is indented by four more spaces.  *undo* says where
    the down migration is (default ``<id>.down.sql``), *no_transaction* how the layout runs a migration
    outside a transaction, *statement_block* the markers a DO block needs (goose), *extra* a layout note.
    """
    stamp = created.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    begin, end = (f"--     {statement_block[0]}\n", f"--     {statement_block[1]}\n") if statement_block else ("", "")
    no_tx = f"-- {no_transaction}\n" if no_transaction else ""
    note = f"-- {extra}\n--\n" if extra else ""
    return f"""\
-- {migration_id}: {_title(name)}
-- Created by `harness new` on {stamp}; undo it in {undo or migration_id + ".down.sql"}.
--
{note}-- Write it so that a second run changes nothing (the rehearsal's `idempotent`
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
{begin}--     DO $$
--     BEGIN
--         IF to_regtype('public.order_status') IS NULL THEN
--             CREATE TYPE public.order_status AS ENUM ('new', 'paid');
--         END IF;
--     END
--     $$;
{end}--     ALTER TYPE public.order_status ADD VALUE IF NOT EXISTS 'shipped';
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
{no_tx}--
-- Without statements the migration is a no-op: write yours {below}.

"""


def down_template(
    migration_id: str, name: str, created: _dt.datetime, *, irreversible: str = "delete this file"
) -> str:
    """The text of a new down migration: how to undo, commented (*irreversible*: what to do when it cannot)."""
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
-- If the migration cannot be undone, {irreversible} and declare
-- `rollback: none` for its step in the plan.

"""


def create_migration(
    directory: Path,
    name: str,
    *,
    layout: Layout | None = None,
    now: _dt.datetime | None = None,
) -> NewMigration:
    """Create the files of a new migration named *name* in *directory*, in *layout* (default: detected).

    Raises :class:`ConfigError` for an invalid name, a missing folder, a
    version that collides with or sorts before an existing migration, or a
    name or time the layout's own bookkeeping (Sqitch plan, drizzle journal)
    refuses.  Nothing is written then.
    """
    check_name(name)
    layout = layout or layout_for("auto", directory)
    if not directory.is_dir():
        raise ConfigError(
            f"migrations folder {directory} does not exist; create it first or pass the plan that names it"
        )
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    (version,) = plan_versions(directory, layout, 1, now=moment)
    draft = layout.draft(directory, version, name, moment)
    _write(draft)
    migration = draft.migration
    log.info("created %s%s", ", ".join(str(p) for p in migration.files),
             "; updated " + ", ".join(str(p) for p in migration.updated) if migration.updated else "")
    return migration


def _write(draft: Draft) -> None:
    """Create the draft's directories and files, then replace the updated files; undo it all on failure."""
    made: list[Path] = []
    try:
        for folder in draft.directories:
            try:
                folder.mkdir(parents=True)
            except FileExistsError:
                raise ConfigError(f"{folder} already exists; not overwriting it") from None
            made.append(folder)
        write_new_files(draft.files)
        try:
            for path, text in draft.updates:
                # Written aside and renamed, so the tool never reads a half-written plan or journal.
                aside = path.with_name(f".{path.name}.harness-new")
                aside.write_text(text, encoding="utf-8")
                os.replace(aside, path)
        except BaseException:
            for path, _ in draft.files:
                path.unlink(missing_ok=True)
            for path, _ in draft.updates:
                path.with_name(f".{path.name}.harness-new").unlink(missing_ok=True)
            raise
    except BaseException:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                log.warning("could not remove %s after a failed `harness new`", folder)
        raise


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
