"""Classify a schema diff into changes that break the previous application version.

During a rolling deploy the old application keeps reading and writing while
(and after) the migration runs.  A change is *breaking* when that old code
can fail against the new schema: something it uses disappears or is renamed,
a column changes type in a way old values or old clients do not survive, or
an insert that omits a column stops working.  Each finding has a stable
``code`` for allow-lists and a one-line message that says what to do
instead (expand/contract).

Safe on purpose: new tables, new nullable columns or columns with a default,
new indexes, new enum values, and widening a column (``smallint`` →
``integer`` → ``bigint``, ``varchar(n)`` → ``varchar(m > n)`` or ``text``,
more ``numeric`` precision): old writers still fit and old readers still
understand the values (the table may be rewritten, which is a lock problem
for the lint rules, not a compatibility one).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .snapshot import Change, Snapshot, diff_snapshots

__all__ = ["CODES", "Breaking", "breaking_changes"]

log = logging.getLogger(__name__)

#: Every code :func:`breaking_changes` can report.
CODES = (
    "schema-dropped",
    "table-dropped",
    "table-renamed",
    "column-dropped",
    "column-renamed",
    "column-type-changed",
    "column-type-narrowed",
    "not-null-without-default",
    "default-dropped",
    "view-dropped",
    "enum-value-removed",
    "function-dropped",
)

_EXPAND_CONTRACT = "Expand/contract: add the new column, backfill, switch readers and writers, drop the old one later."


@dataclass(frozen=True)
class Breaking:
    """One change that can break the previous application version."""

    code: str
    object: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def breaking_changes(
    before: Snapshot, after: Snapshot, changes: Sequence[Change] | None = None
) -> list[Breaking]:
    """The changes from *before* to *after* that break old readers or writers.

    *changes* is the diff of the two snapshots when the caller already has
    it.  The order is the diff's order; dependants of a dropped object are
    not reported again (the columns of a dropped table, the tables of a
    dropped schema).
    """
    if changes is None:
        changes = diff_snapshots(before, after)
    return _Classifier(before, after, changes).run()


def _schema_of(name: str) -> str:
    """The schema part of a qualified name (names are quote_ident-ed)."""
    if name.startswith('"'):
        end = 1
        while True:
            end = name.index('"', end)
            if name[end + 1 : end + 2] == '"':
                end += 2
                continue
            return name[: end + 1]
    return name.split(".", 1)[0]


def _table_of(column: str) -> str:
    """``public.users`` for ``public.users.email`` (names are quote_ident-ed)."""
    schema = _schema_of(column)
    rest = column[len(schema) + 1 :]
    return f"{schema}.{_schema_of(rest)}"


def redefined_tables(changes: Sequence[Change], tables: Iterable[str]) -> set[str]:
    """The tables of *tables* whose rows read differently after *changes*, though no row was written.

    A row's data is compared as JSON, which names its columns and spells
    enum labels and composite attributes: a changed table or column changes
    its table's rows; a changed enum, composite, domain or range type may
    change any table's.
    """
    found: set[str] = set()
    for change in changes:
        if change.object_type in ("enum", "composite", "domain", "range"):
            return set(tables)
        if change.object_type == "table":
            found.add(change.object)
        elif change.object_type == "column":
            found.add(_table_of(change.object))
    return found & set(tables)


class _Classifier:
    def __init__(self, before: Snapshot, after: Snapshot, changes: Sequence[Change]) -> None:
        self.before = before
        self.after = after
        self.changes = changes
        self.found: list[Breaking] = []
        self.seen: set[tuple[str, str]] = set()
        self.by_kind: dict[tuple[str, str], list[Change]] = {}
        for change in changes:
            self.by_kind.setdefault((change.kind, change.object_type), []).append(change)

    def add(self, code: str, obj: str, message: str) -> None:
        # One finding per code and object, even when several attributes of
        # the object changed together (e.g. default and identity dropped).
        if (code, obj) not in self.seen:
            self.seen.add((code, obj))
            self.found.append(Breaking(code, obj, message))

    def run(self) -> list[Breaking]:
        dropped_schemas = {c.object for c in self.by_kind.get(("removed", "schema"), [])}
        renamed_tables = self._renamed_tables(dropped_schemas)
        renamed_columns = self._renamed_columns()
        renamed_from = set(renamed_columns)
        renamed_to = set(renamed_columns.values())

        for change in self.changes:
            kind, otype, name = change.kind, change.object_type, change.object
            if otype == "schema" and kind == "removed":
                self.add(
                    "schema-dropped",
                    name,
                    f"schema {name} was dropped with everything in it; the previous version still uses it. "
                    "Stop using it in the application first and drop it in a later release.",
                )
            elif otype in ("table", "view", "materialized_view", "function", "procedure") and kind == "removed":
                if _schema_of(name) in dropped_schemas:
                    continue
                if otype == "table":
                    if name in renamed_tables:
                        new = renamed_tables[name]
                        self.add(
                            "table-renamed",
                            name,
                            f"table {name} looks renamed to {new} (same columns); the previous version still "
                            f"uses the old name. Keep the old name working (e.g. a view {name} over {new}) "
                            "until the previous version is gone.",
                        )
                    else:
                        self.add(
                            "table-dropped",
                            name,
                            f"table {name} was dropped; the previous version still reads or writes it. "
                            "Stop using it in the application first and drop it in a later release.",
                        )
                elif otype in ("view", "materialized_view"):
                    label = otype.replace("_", " ")
                    self.add(
                        "view-dropped",
                        name,
                        f"{label} {name} was dropped; the previous version still queries it. "
                        "Stop using it in the application first and drop it in a later release.",
                    )
                elif _called_by_application(change):
                    self.add(
                        "function-dropped",
                        name,
                        f"{otype} {name} no longer exists; callers in the previous version fail. "
                        "Keep the old signature (e.g. as a wrapper over the new one) until they are gone.",
                    )
            elif otype == "column":
                self._column(change, renamed_from, renamed_to, renamed_columns)
            elif otype == "enum" and kind == "changed" and change.attribute == "values":
                lost = [v for v in (change.before or []) if v not in (change.after or [])]
                if lost:
                    shown = ", ".join(repr(v) for v in lost)
                    self.add(
                        "enum-value-removed",
                        name,
                        f"enum {name} lost value(s) {shown}; the previous version may still write or read "
                        "them. Stop using the values first and remove them in a later release.",
                    )
        return self.found

    # -- tables ------------------------------------------------------------

    def _columns_signature(self, snap: Snapshot, table: str) -> tuple[tuple[str, Any], ...]:
        return tuple((col, (snap.get("column", f"{table}.{col}") or {}).get("type")) for col in snap.columns(table))

    def _renamed_tables(self, dropped_schemas: set[str]) -> dict[str, str]:
        """Removed table → added table with exactly the same columns (names and types, in order)."""
        added: dict[tuple[tuple[str, Any], ...], list[str]] = {}
        for change in self.by_kind.get(("added", "table"), []):
            sig = self._columns_signature(self.after, change.object)
            added.setdefault(sig, []).append(change.object)
        pairs: dict[str, str] = {}
        for change in self.by_kind.get(("removed", "table"), []):
            if _schema_of(change.object) in dropped_schemas:
                continue  # reported as the schema's drop
            sig = self._columns_signature(self.before, change.object)
            candidates = added.get(sig)
            if sig and candidates:
                pairs[change.object] = candidates.pop(0)
        return pairs

    # -- columns -----------------------------------------------------------

    def _renamed_columns(self) -> dict[str, str]:
        """Removed column → added column of the same table, type and position.

        A rename keeps the column's place; a drop plus an add puts the new
        column at the end, so the position tells the two apart.
        """
        removed: dict[str, list[Change]] = {}
        for change in self.by_kind.get(("removed", "column"), []):
            removed.setdefault(_table_of(change.object), []).append(change)
        added: dict[str, list[Change]] = {}
        for change in self.by_kind.get(("added", "column"), []):
            added.setdefault(_table_of(change.object), []).append(change)
        pairs: dict[str, str] = {}
        for table, gone in removed.items():
            key = f"table {table}"
            if table not in added or key not in self.after.objects or key not in self.before.objects:
                continue
            old_order = self.before.columns(table)
            new_order = self.after.columns(table)
            for old in gone:
                old_name = old.object[len(table) + 1 :]
                pos = old_order.index(old_name) if old_name in old_order else -1
                for new in added[table]:
                    new_name = new.object[len(table) + 1 :]
                    if new.object in pairs.values():
                        continue
                    same_type = (old.before or {}).get("type") == (new.after or {}).get("type")
                    same_place = pos >= 0 and _position(new_order, new_name, old_order, old_name)
                    if same_type and same_place:
                        pairs[old.object] = new.object
                        break
        return pairs

    def _column(
        self, change: Change, renamed_from: set[str], renamed_to: set[str], renamed: Mapping[str, str]
    ) -> None:
        name = change.object
        table = _table_of(name)
        if change.kind == "removed":
            if f"table {table}" not in self.after.objects:
                return  # the table itself went (reported as dropped or renamed)
            if name in renamed_from:
                self.add(
                    "column-renamed",
                    name,
                    f"column {name} looks renamed to {renamed[name]}; the previous version still uses the "
                    f"old name. {_EXPAND_CONTRACT}",
                )
            else:
                self.add(
                    "column-dropped",
                    name,
                    f"column {name} was dropped; the previous version still selects or inserts it. "
                    "Stop using it in the application first and drop it in a later release.",
                )
        elif change.kind == "added":
            if f"table {table}" not in self.before.objects or name in renamed_to:
                return  # a new table, or the new name of a renamed column
            attrs = change.after or {}
            if not attrs.get("nullable", True) and not _has_default(attrs):
                self.add(
                    "not-null-without-default",
                    name,
                    f"column {name} was added NOT NULL without a default; inserts from the previous version "
                    "do not set it and fail. Add it nullable (or with a default), backfill, and set NOT NULL "
                    "once every writer sets it.",
                )
        elif change.kind == "changed":
            after = self.after.get("column", name) or {}
            before = self.before.get("column", name) or {}
            if change.attribute == "type":
                verdict = _type_change(str(change.before), str(change.after))
                if verdict == "narrowed":
                    self.add(
                        "column-type-narrowed",
                        name,
                        f"column {name} narrowed from {change.before} to {change.after}; values the previous "
                        f"version writes may no longer fit. {_EXPAND_CONTRACT}",
                    )
                elif verdict == "changed":
                    self.add(
                        "column-type-changed",
                        name,
                        f"column {name} changed type from {change.before} to {change.after}; the previous "
                        f"version reads and writes the old type. {_EXPAND_CONTRACT}",
                    )
            elif change.attribute == "nullable" and change.before and not change.after:
                if not _has_default(after):
                    self.add(
                        "not-null-without-default",
                        name,
                        f"column {name} was set NOT NULL and has no default; inserts from the previous version "
                        "that omit it fail. Add a default first, or set NOT NULL only once every writer sets it.",
                    )
            elif change.attribute in ("default", "identity", "generated", "expression"):
                if _has_default(before) and not _has_default(after) and not after.get("nullable", True):
                    was = before.get("default") or before.get("identity") or before.get("expression")
                    self.add(
                        "default-dropped",
                        name,
                        f"column {name} lost its default ({was}) but is NOT NULL; inserts from the previous "
                        "version that omit it fail. Keep the default until every writer sets the column.",
                    )


def _called_by_application(change: Change) -> bool:
    """Trigger functions are called by the server, not by the application."""
    return (change.before or {}).get("result") not in ("trigger", "event_trigger")


def _position(new_order: list[str], new_name: str, old_order: list[str], old_name: str) -> bool:
    """Whether *new_name* sits where *old_name* was, among the columns both sides share."""
    common = (set(old_order) & set(new_order)) | {old_name, new_name}
    old_seq = [c for c in old_order if c in common]
    new_seq = [old_name if c == new_name else c for c in new_order if c in common]
    return old_seq == new_seq


def _has_default(attrs: Mapping[str, Any]) -> bool:
    """Whether an insert that omits the column still gets a value."""
    return bool(attrs.get("default") is not None or attrs.get("identity") or attrs.get("generated"))


# -- types -----------------------------------------------------------------

_INTEGERS = {"smallint": 2, "integer": 4, "bigint": 8}
_FLOATS = {"real": 4, "double precision": 8}
_SIZED = re.compile(r"^(character varying|bit varying|character|numeric)(?:\((\d+)(?:,(\d+))?\))?$")


def _type_change(old: str, new: str) -> str:
    """``"widened"`` (safe), ``"narrowed"`` or ``"changed"`` for a column type change."""
    if old == new:
        return "widened"
    if old.endswith("[]") and new.endswith("[]"):
        return _type_change(old[:-2], new[:-2])
    if old in _INTEGERS and new in _INTEGERS:
        return "widened" if _INTEGERS[new] > _INTEGERS[old] else "narrowed"
    if old in _FLOATS and new in _FLOATS:
        return "widened" if _FLOATS[new] > _FLOATS[old] else "narrowed"
    mo, mn = _SIZED.match(old), _SIZED.match(new)
    if old == "text":
        if mn and mn.group(1) == "character varying":
            return "widened" if mn.group(2) is None else "narrowed"
        return "changed"
    if not mo:
        return "changed"
    base, size = mo.group(1), mo.group(2)
    if new == "text":
        return "widened" if base == "character varying" else "changed"
    if not mn or mn.group(1) != base:
        return "changed"
    new_size = mn.group(2)
    if base == "numeric":
        return _numeric_change(mo.group(2), mo.group(3), mn.group(2), mn.group(3))
    if base == "character":
        return "changed"  # char(n) pads to n: another length changes the values
    if new_size is None:
        return "widened"
    if size is None:
        return "narrowed"
    return "widened" if int(new_size) >= int(size) else "narrowed"


def _numeric_change(p0: str | None, s0: str | None, p1: str | None, s1: str | None) -> str:
    if p1 is None:
        return "widened"
    if p0 is None:
        return "narrowed"
    old_int, old_scale = int(p0) - int(s0 or 0), int(s0 or 0)
    new_int, new_scale = int(p1) - int(s1 or 0), int(s1 or 0)
    if new_int >= old_int and new_scale >= old_scale:
        return "widened"
    return "narrowed"
