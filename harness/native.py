"""The native layout (also Supabase's): ``<version>_<name>.sql`` and ``<version>_<name>.down.sql``.

A migrations folder holds ``<version>_<name>.sql`` (an up migration) and,
optionally, ``<version>_<name>.down.sql`` (its down migration).
``<version>`` is digits and orders migrations as an integer (``9`` before
``10``; timestamps such as ``20261101120000`` work the same way); ``<name>``
is letters, digits, ``_`` and ``-``.  Hidden files, sub-folders and files
not ending in ``.sql`` (a README, say) are ignored.

Nothing here opens a connection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SourceError
from .migration import Migration
from .parsing import _listing, _read_soft, _sha256, make_migration

__all__ = ["load_native"]

log = logging.getLogger(__name__)

# File names are matched with regular expressions; SQL never is.
_UP_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)\.sql")
_DOWN_RE = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)\.down\.sql")
_PATTERN_HELP = (
    "<version>_<name>.sql for an up migration or <version>_<name>.down.sql for its down migration, "
    "where <version> is digits and <name> is letters, digits, '_' or '-' "
    "(for example 20261101120000_add_users.sql and 20261101120000_add_users.down.sql)"
)


def load_native(
    folder: Path,
    *,
    target_major: int | None,
    substitutions: Sequence[Any],
    layout: str = "native",
    ignore: Callable[[Path, str], None] | None = None,
) -> list[Migration]:
    """The native (and Supabase) layout: ``<version>_<name>.sql`` and ``<version>_<name>.down.sql``.

    A ``.sql`` file whose name fits neither pattern is refused, or, with
    *ignore*, handed to it and skipped (as the Supabase CLI skips it:
    "file name must match pattern").
    """
    entries = _listing(folder)
    ups: dict[tuple[str, str], Path] = {}
    downs: dict[tuple[str, str], Path] = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().endswith(".sql"):
            continue
        if entry.is_dir() or not (entry.is_file() or entry.is_symlink()):
            continue  # sub-folders, and sockets or pipes that happen to end in .sql
        down = _DOWN_RE.fullmatch(entry.name)
        up = None if down else _UP_RE.fullmatch(entry.name)
        if down:
            downs[(down["version"], down["name"])] = entry
        elif up:
            ups[(up["version"], up["name"])] = entry
        elif ignore is not None:
            ignore(entry, f"the name does not fit the pattern {_PATTERN_HELP}")
        else:
            raise SourceError(
                f"{entry}: the file name {entry.name!r} does not fit the pattern {_PATTERN_HELP}; rename the file, "
                f"or move it out of {folder} if it is not a migration"
            )

    for key, orphan in downs.items():
        if key not in ups:
            expected = f"{key[0]}_{key[1]}.sql"
            same_version = [p.name for (v, _), p in ups.items() if int(v) == int(key[0])]
            hint = f" (the up migration with that version is {same_version[0]})" if same_version else ""
            raise SourceError(
                f"{orphan}: down migration without its up migration {expected}{hint}; rename the down file "
                "to <up file name without .sql>.down.sql, or delete it"
            )

    by_order: dict[int, Path] = {}
    for (version, _), up_path in sorted(ups.items(), key=lambda kv: kv[1].name):
        other = by_order.setdefault(int(version), up_path)
        if other is not up_path:
            raise SourceError(
                f"{other} and {up_path} have the same version number ({int(version)}); every migration needs "
                "its own version: renumber one of them"
            )

    migrations: list[Migration] = []
    # Parse in migration order so that the first error reported is the earliest migration's.
    for (version, name), up_path in sorted(ups.items(), key=lambda kv: (int(kv[0][0]), kv[0][0])):
        data, text, error = _read_soft(up_path)
        down_path = downs.get((version, name))
        down_text, down_error = (_read_soft(down_path)[1:] if down_path is not None else (None, None))
        migrations.append(
            make_migration(
                version=version,
                name=name,
                path=up_path,
                text=text,
                checksum=_sha256(data),
                down_path=down_path,
                down_text=down_text,
                target_major=target_major,
                substitutions=substitutions,
                layout=layout,
                error=error,
                down_error=down_error,
            )
        )
    migrations.sort(key=lambda m: (m.order, m.version))
    log.debug("loaded %d migrations from %s", len(migrations), folder)
    return migrations
