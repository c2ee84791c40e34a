"""YAML plans → frozen dataclasses, strictly validated, with file:line in every error.

A plan pairs a migrations directory with the assertions a rehearsal makes and
the guards an apply keeps.  Plans are data: the file is parsed with
``yaml.safe_load`` semantics (a :class:`yaml.SafeLoader` subclass that also
records the line of every key and list item and rejects duplicate keys),
checked once here against one spec, and handed inward as typed, frozen
objects.  Nothing in this module opens a connection.

The spec (``_PLAN`` below) is written once, as a small tree of ``_Node``
objects; the validator walks it and :func:`plan_json_schema` renders it, so the
two cannot drift.  ``python -m harness.plan`` rewrites the committed
``harness/plan.schema.json`` from it.  The format is documented in
``docs/plans.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .bases import BASES
from .errors import PlanError
from .redact import register_dsn, register_secret
from .lint import RULES

__all__ = [
    "Check",
    "Query",
    "Compat",
    "LockPolicy",
    "StepConfig",
    "Rehearsal",
    "Guards",
    "Hook",
    "Hooks",
    "Health",
    "Backup",
    "Substitution",
    "NamedTarget",
    "Discovery",
    "Wave",
    "Fleet",
    "Plan",
    "LAYOUTS",
    "PLANNED_LAYOUTS",
    "MIRROR_TOOLS",
    "resolve_plan_path",
    "load_plan",
    "with_settings",
    "plan_json_schema",
    "SCHEMA_PATH",
]

log = logging.getLogger(__name__)

#: Migration folder layouts understood today (the same as harness.sources.LAYOUTS; a test keeps them equal).
LAYOUTS = (
    "auto", "native", "supabase", "golang-migrate", "diesel", "dbmate", "goose", "flyway", "drizzle", "sqitch",
    "prisma", "sqlx", "atlas", "node-pg-migrate", "alembic",
)
#: Tools whose history table apply can keep in step (``history: {mirror: <tool>}``), and the folder layouts
#: each one's rows fit (the same tools as harness.mirror.TOOLS; a test keeps them equal).
MIRROR_TOOLS: Mapping[str, tuple[str, ...]] = {
    "diesel": ("diesel",),
    "golang-migrate": ("golang-migrate",),
    "goose": ("goose",),
    "dbmate": ("dbmate",),
    "flyway": ("flyway",),
    "supabase": ("supabase", "native"),
    "drizzle": ("drizzle",),
    "prisma": ("prisma",),
    "sqlx": ("sqlx",),
}
#: Layouts announced but not implemented yet: named in the error so nobody hunts for a typo.
PLANNED_LAYOUTS: tuple[str, ...] = ()
#: Where the generated JSON Schema is committed.
SCHEMA_PATH = Path(__file__).with_name("plan.schema.json")

_SCHEMA_ID = "https://migration-harness.invalid/plan.schema.json"
_PLAN_SUFFIXES = (".yaml", ".yml")
# Substrings of variable names whose values are scrubbed from all output.
_SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "DSN", "URL", "CREDENTIAL")


# --------------------------------------------------------------------------
# The typed plan
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A SQL assertion: ``expect`` one value, or exactly these ``rows``, or (neither) just a truthy run."""

    name: str
    sql: str
    expect: Any = None
    rows: tuple[tuple[Any, ...], ...] | None = None
    line: int = 0


@dataclass(frozen=True)
class Query:
    """A query of the previous application version, with where it was written (``file:line``)."""

    sql: str
    origin: str


@dataclass(frozen=True)
class Compat:
    """Backward-compatibility assertion settings: old queries to keep working, breaking changes allowed."""

    enabled: bool = True
    queries: tuple[Query, ...] = ()
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockPolicy:
    """The ``locks`` assertion: how long a pre-existing table may be write-blocked, and whether it may be rewritten.

    ``budget`` is in seconds; ``allow_modes`` holds lock modes in SQL
    spelling (``ACCESS EXCLUSIVE``) exempt from the budget.
    """

    enabled: bool = True
    budget: float = 2.0
    allow_rewrite: bool = False
    allow_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepConfig:
    """The assertions for one migration (or, as ``Plan.defaults``, for every migration).

    ``migration`` is the step key as written (``"*"`` for the defaults);
    ``explicit`` names the keys the step wrote itself, the rest came from
    the defaults.
    """

    migration: str
    idempotent: bool
    rollback: bool
    backward_compatible: Compat
    lint: bool
    checks: tuple[Check, ...]
    preserve_rows: bool
    allow: tuple[str, ...]
    reason: str | None
    line: int
    explicit: frozenset[str] = frozenset()
    locks: LockPolicy = LockPolicy()
    #: ``rollback: none``: the migration is declared irreversible; its rollback item is skipped with that reason.
    irreversible: bool = False


@dataclass(frozen=True)
class Rehearsal:
    """Where rehearsals run: a provider, the wanted PostgreSQL major, a built-in base, seed files."""

    provider: str = "auto"
    postgres: int | None = None
    dsn: str | None = field(default=None, repr=False)
    seed: tuple[Path, ...] = ()
    #: A built-in base (harness.bases.BASES) loaded before the seed: what a platform creates before any migration.
    base: str | None = None
    #: Where rehearsed prefixes are cached (``None``: no cache); a loaded plan defaults to ``<root>/.harness/cache``.
    cache: Path | None = None

    @property
    def seed_bytes(self) -> int:
        """The size of the seed files (a missing one counts 0: loading it reports it)."""
        total = 0
        for path in self.seed:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total


@dataclass(frozen=True)
class Guards:
    """Safety settings of ``apply``; durations are seconds."""

    lock_timeout: float = 5.0
    statement_timeout: float = 60.0
    max_retries: int = 5
    retry_delay: float = 3.0
    retry_factor: float = 2.0
    transaction: str = "per-migration"
    lock_wait: float = 60.0
    require_receipt: bool = True


@dataclass(frozen=True)
class Hook:
    """One hook: ``kind`` is ``sql`` (a file, also resolved in ``path``), ``run`` or ``python``."""

    kind: str
    value: str
    line: int
    path: Path | None = None


@dataclass(frozen=True)
class Hooks:
    """Hooks per event of ``apply``; ``backup`` replaces the built-in backup."""

    pre_run: tuple[Hook, ...] = ()
    pre_migration: tuple[Hook, ...] = ()
    post_migration: tuple[Hook, ...] = ()
    post_run: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    backup: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Health:
    """Health checks after ``apply``: SQL checks and/or an HTTP URL, and what to do when they fail."""

    checks: tuple[Check, ...] = ()
    url: str | None = None
    timeout: float = 5.0
    retries: int = 5
    on_failure: str = "rollback"


@dataclass(frozen=True)
class Backup:
    """Backups ``apply`` takes before migrating: ``full``, ``touched`` tables only, or ``none``."""

    mode: str = "full"
    dir: Path = Path("backups")
    keep: int = 10


@dataclass(frozen=True)
class Substitution:
    """A text replacement applied to migration SQL before it is parsed: a ``literal`` string or a ``regex``.

    ``value`` is inserted as written (``${VAR}`` already interpolated; no
    regex group references).
    """

    value: str
    literal: str | None = None
    regex: str | None = None
    line: int = 0


@dataclass(frozen=True)
class NamedTarget:
    """One database of a fleet named in the plan (``targets:``)."""

    name: str
    dsn: str = field(repr=False)
    line: int = 0


@dataclass(frozen=True)
class Discovery:
    """A query that lists fleet members: ``SELECT name, dsn`` (databases) or ``SELECT nspname`` (tenant schemas)."""

    dsn: str = field(repr=False)
    sql: str
    line: int = 0


@dataclass(frozen=True)
class Wave:
    """One wave of a fleet apply: ``canary`` targets, a ``percent`` of the fleet, or the ``rest``."""

    canary: int | None = None
    percent: float | None = None
    rest: bool = False

    def describe(self) -> str:
        if self.canary is not None:
            return f"canary {self.canary}"
        if self.percent is not None:
            return f"{self.percent:g}%"
        return "rest"


@dataclass(frozen=True)
class Fleet:
    """The databases and tenant schemas a plan is applied to, and how: concurrency, waves, failure limit.

    ``stop_after_failures`` is a count of failed targets per wave, or
    (``stop_after_percent``) a percentage of the wave's targets; reaching it
    stops the later waves.
    """

    targets: tuple[NamedTarget, ...] = ()
    discover: Discovery | None = None
    schemas: Discovery | None = None
    concurrency: int = 4
    waves: tuple[Wave, ...] = (Wave(rest=True),)
    stop_after_failures: int | None = 1
    stop_after_percent: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.targets or self.discover or self.schemas)


@dataclass(frozen=True)
class Plan:
    """A validated plan.  Paths are absolute; ``sha256`` is of the plan file's bytes."""

    name: str
    path: Path
    root: Path
    sha256: str
    migrations_dir: Path
    layout: str
    target_dsn: str | None = field(repr=False)
    mode: str
    rehearsal: Rehearsal
    defaults: StepConfig
    steps: tuple[StepConfig, ...]
    guards: Guards
    health: Health
    backup: Backup
    hooks: Hooks
    #: The plan path as shown in messages (relative to the working directory at load time).
    display_path: str = ""
    #: Replacements applied, in order, to the migrations' SQL before it is parsed.
    substitutions: tuple[Substitution, ...] = ()
    #: Migrations up to and including this version (or id) count as applied: rehearsed as one ``baseline`` item.
    baseline: str | None = None
    #: The desired schema (a SQL file or a directory of .sql files) ``harness generate`` and ``check-schema`` use.
    schema: Path | None = None
    #: Rehearse a plan-level ``schema_matches`` item: the migrations must produce exactly ``schema``.
    schema_matches: bool = False
    #: Rehearse a plan-level ``chain_rollback`` item (``None``: when any step asks for rollback).
    chain_rollback: bool | None = None
    #: How column order differences after a down count: ``error`` or ``warn``.
    column_order: str = "error"
    #: A migration without a down file fails its ``rollback`` item (instead of skipping it) unless declared ``none``.
    require_down: bool = False
    #: Lint severity per rule id (``error``, ``warning`` or ``off``), overriding the rule's own.
    lint_severity: Mapping[str, str] = field(default_factory=dict)
    #: Lint: flag lock-taking statements on existing objects before ``SET lock_timeout``.
    require_lock_timeout: bool = False
    #: Apply also writes (and rollback deletes) this tool's history rows (``history.mirror``; harness.mirror).
    history_mirror: str | None = None
    #: Many databases or tenant schemas instead of one ``target`` (``targets:`` / ``fleet:``; harness.fleet).
    fleet: Fleet = field(default_factory=Fleet)

    def _matches(self, migration_id: str, version: str) -> list[StepConfig]:
        return [s for s in self.steps if s.migration in (migration_id, version)]

    def step_for(self, migration_id: str, version: str) -> StepConfig:
        """The merged assertions for one migration: its step (by id or version) over the defaults.

        The steps are merged with the defaults when the plan is loaded (a
        step's checks come after the default checks, its ``allow`` lists add
        to the defaults'), so this is a lookup; a migration without a step
        gets the defaults under its own id.
        """
        found = self._matches(migration_id, version)
        if len(found) > 1:
            raise PlanError(self._duplicate_message(migration_id, found))
        if found:
            return found[0]
        return dataclasses.replace(self.defaults, migration=migration_id, explicit=frozenset())

    def bind(self, migration_ids: Sequence[tuple[str, str]]) -> None:
        """Check that every step names one of these ``(id, version)`` migrations, and only one step does.

        Raises :class:`PlanError` listing every step that names a migration
        that does not exist (with the closest existing id) and every
        migration named by two steps.
        """
        ids = dict(migration_ids)
        by_version: dict[str, str] = {}
        for known, version in migration_ids:
            by_version.setdefault(version, known)
        where = _rel_dir(self.migrations_dir, self.root)
        problems: list[tuple[int, str]] = []
        claimed: dict[str, StepConfig] = {}
        for step in self.steps:
            mid: str | None = step.migration if step.migration in ids else by_version.get(step.migration)
            if mid is None:
                close = difflib.get_close_matches(step.migration, list(ids) + list(by_version), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else _known_ids_hint(list(ids))
                problems.append(
                    (
                        step.line,
                        f"{self.display_path}:{step.line}: step names migration {step.migration}, "
                        f"which does not exist in {where}{hint}",
                    )
                )
                continue
            if mid in claimed:
                problems.append((step.line, self._duplicate_message(mid, [claimed[mid], step])))
                continue
            claimed[mid] = step
        if problems:
            raise PlanError("\n".join(message for _, message in sorted(problems, key=lambda p: p[0])))

    def _duplicate_message(self, migration_id: str, steps: Sequence[StepConfig]) -> str:
        first, second = steps[0], steps[1]
        return (
            f"{self.display_path}:{second.line}: a second step for migration {migration_id} "
            f"(as {second.migration!r}; the first is at line {first.line} as {first.migration!r}); "
            "merge the two steps into one"
        )


def _known_ids_hint(ids: list[str]) -> str:
    if not ids:
        return " (the directory has no migrations)"
    shown = ", ".join(ids[-5:])
    return f"; the latest migrations are: {shown}"


# --------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------


class _Map(dict):  # type: ignore[type-arg]
    """A mapping from YAML that remembers its line, each key's line and each scalar value's source text."""

    line: int = 0
    key_lines: dict[Any, int]
    raw: dict[Any, str]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines = {}
        self.raw = {}


class _Seq(list):  # type: ignore[type-arg]
    """A sequence from YAML that remembers its line and each item's line."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.item_lines = []


class _Loader(yaml.SafeLoader):
    """``safe_load`` semantics, plus line numbers and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[tuple[int, str]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = _Map(node.start_mark.line + 1)
    yield data
    # Duplicates are looked for among the mapping's own keys only: a key that
    # overrides one brought in by a ``<<`` merge is the point of merging.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:
            continue  # reported below
        if first is not None:
            loader.problems.append(
                (line, f"duplicate key {key!r} (first at line {first}); YAML would silently keep only the last one")
            )
        else:
            seen[key] = line
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            loader.problems.append((line, "a mapping key must be a plain word, not a list or mapping"))
            continue
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = line
        if isinstance(value_node, yaml.ScalarNode):
            data.raw[key] = value_node.value


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Any:
    data = _Seq(node.start_mark.line + 1)
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=False))
        data.item_lines.append(child.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _yaml_scalar(text: str) -> Any:
    """Read an interpolated text as YAML would read it written in place (``"5"`` → 5, ``"yes"`` → True)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (str, int, float, bool, datetime.date)):
        return value
    return text


# --------------------------------------------------------------------------
# Interpolation
# --------------------------------------------------------------------------

_TOKEN = re.compile(r"\$(?:(?P<escape>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\{))")
_INTERPOLATION_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


def _looks_like_dsn(value: str) -> bool:
    return "://" in value or "password=" in value.lower()


# --------------------------------------------------------------------------
# Validation context
# --------------------------------------------------------------------------


class _Bad:
    """Marks a value that failed validation (the error is already recorded)."""

    def __repr__(self) -> str:
        return "<invalid>"


_BAD: Any = _Bad()


@dataclass
class _Ctx:
    display: str
    env: Mapping[str, str]
    errors: list[tuple[int, str]] = field(default_factory=list)

    def error(self, line: int, where: str, message: str) -> Any:
        prefix = f"{where}: " if where else ""
        self.errors.append((line, f"{self.display}:{line}: {prefix}{message}"))
        return _BAD

    def interpolate(self, text: str, where: str, line: int) -> tuple[str, tuple[str, ...]] | Any:
        """Replace ``${VAR}``/``${VAR:-default}`` and ``$$``; register secret values; ``_BAD`` on error."""
        if "$" not in text:
            return text, ()
        used: list[str] = []
        failed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal failed
            if match.group("escape"):
                return "$"
            if match.group("bad"):
                failed = True
                self.error(
                    line,
                    where,
                    "a ${...} reference needs a variable name of letters, digits and _ (like ${DATABASE_URL} "
                    "or ${DATABASE_URL:-default}); write $$ for a literal $",
                )
                return ""
            name = match.group("name")
            used.append(name)
            value = self.env.get(name)
            if not value and match.group("default") is not None:
                return match.group("default")
            if value is None:
                failed = True
                self.error(
                    line,
                    where,
                    f"environment variable {name} is not set; export it (export {name}=...) "
                    f"or give a default with ${{{name}:-default}}",
                )
                return ""
            if _is_secret_name(name):
                register_secret(value)
            if _looks_like_dsn(value):
                register_dsn(value)
            return value

        result = _TOKEN.sub(replace, text)
        if failed:
            return _BAD
        return result, tuple(used)


def _describe(value: Any, used: tuple[str, ...] = ()) -> str:
    """How an offending value is shown: its type and value, never the value of an interpolated variable."""
    kind = _type_name(value)
    if used:
        refs = ", ".join(f"${{{name}}}" for name in used)
        return f"{kind} from {refs}"
    if isinstance(value, (dict, list)):
        return kind
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, datetime.date):
        return "a date"
    return type(value).__name__


# --------------------------------------------------------------------------
# The spec: one tree of nodes → the validator and the JSON Schema
# --------------------------------------------------------------------------


class _Node:
    """One kind of value in the plan format."""

    expected = "a value"

    def __init__(self, description: str = "", *, def_name: str | None = None) -> None:
        self.description = description
        self.def_name = def_name

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        """The JSON Schema of this node; named nodes go to ``$defs`` once and are referenced."""
        if self.def_name:
            if self.def_name not in defs:
                defs[self.def_name] = {}  # placeholder against recursion
                defs[self.def_name] = self._described(self._schema(defs))
            return {"$ref": f"#/$defs/{self.def_name}"}
        return self._described(self._schema(defs))

    def _described(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"description": self.description, **body} if self.description else body

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        """Whether *value* has the shape of this node (used to pick a branch of a union)."""
        raise NotImplementedError

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        """Validate *value*; return the converted value, or ``_BAD`` after recording an error."""
        raise NotImplementedError


def _interp_or(body: dict[str, Any]) -> dict[str, Any]:
    """A typed value may also be written as a ``${VAR}`` string, read as YAML once interpolated."""
    return {"anyOf": [body, {"$ref": "#/$defs/interpolation"}]}


class _Typed(_Node):
    """A scalar of a fixed type; an interpolated string is read as YAML and then checked."""

    def accepts(self, value: Any) -> bool:
        return self._is(value) or (isinstance(value, str) and "$" in value)

    def _is(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        used: tuple[str, ...] = ()
        if isinstance(value, str) and "$" in value:
            done = ctx.interpolate(value, where, line)
            if done is _BAD:
                return _BAD
            text, used = done
            value = _yaml_scalar(text) if used else text
        return self._check(value, used, where, line, ctx)

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if not self._is(value):
            return ctx.error(line, where, f"expected {self.expected}, got {_describe(value, used)}")
        return value


class _Bool(_Typed):
    expected = "true or false"

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return _interp_or({"type": "boolean"})

    def _is(self, value: Any) -> bool:
        return isinstance(value, bool)


class _Int(_Typed):
    def __init__(self, description: str = "", *, minimum: int = 0) -> None:
        super().__init__(description)
        self.minimum = minimum
        self.expected = f"a whole number >= {minimum}"

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return _interp_or({"type": "integer", "minimum": self.minimum})

    def _is(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if not self._is(value) or value < self.minimum:
            return ctx.error(line, where, f"expected {self.expected}, got {_describe(value, used)}")
        return value


class _Number(_Typed):
    def __init__(self, description: str = "", *, minimum: float = 0) -> None:
        super().__init__(description)
        self.minimum = minimum
        self.expected = f"a number >= {minimum:g}"

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return _interp_or({"type": "number", "minimum": self.minimum})

    def _is(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if not self._is(value) or value < self.minimum:
            return ctx.error(line, where, f"expected {self.expected}, got {_describe(value, used)}")
        return float(value)


_DURATION_RE = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class _Duration(_Typed):
    expected = 'a duration like "250ms", "5s", "2m", "1h" or a number of seconds'

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)?$"},
                {"$ref": "#/$defs/interpolation"},
            ]
        }

    def _is(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, float, str))

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value >= 0:
                return float(value)
        elif isinstance(value, str):
            match = _DURATION_RE.fullmatch(value.strip())
            if match:
                return float(match.group("n")) * _DURATION_UNITS[match.group("unit")]
        return ctx.error(line, where, f"expected {self.expected}, got {_describe(value, used)}")


class _Major(_Typed):
    expected = 'a PostgreSQL major version like 16 or "16"'

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": 10},
                {"type": "string", "pattern": "^[0-9]+$"},
                {"$ref": "#/$defs/interpolation"},
            ]
        }

    def _is(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, str))

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 10:
            return value
        return ctx.error(line, where, f"expected {self.expected} (10 or later), got {_describe(value, used)}")


class _Literal(_Typed):
    """One of a few fixed values, of any scalar type (``rollback: true | false | none``)."""

    def __init__(self, values: Mapping[Any, Any], description: str = "") -> None:
        super().__init__(description)
        self.values = dict(values)  # as written → as stored
        shown = [json.dumps(v) if not isinstance(v, str) else v for v in self.values]
        self.expected = ", ".join(shown[:-1]) + " or " + shown[-1]

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return _interp_or({"enum": list(self.values)})

    def _is(self, value: Any) -> bool:
        return isinstance(value, (bool, str)) and value in self.values and type(value) in {type(v) for v in self.values}

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        for written, stored in self.values.items():
            if type(value) is type(written) and value == written:
                return stored
        return ctx.error(line, where, f"expected {self.expected}, got {_describe(value, used)}")


class _Scalar(_Typed):
    """An expected value in a check: a string, number, boolean or date (``nullable`` for row cells)."""

    def __init__(self, description: str = "", *, nullable: bool = False) -> None:
        super().__init__(description)
        self.nullable = nullable
        self.expected = "a single value (string, number, boolean" + (" or null)" if nullable else ")")

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        types = ["string", "number", "boolean"] + (["null"] if self.nullable else [])
        return {"type": types}

    def _is(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return isinstance(value, (str, int, float, bool, datetime.date))

    def _check(self, value: Any, used: tuple[str, ...], where: str, line: int, ctx: _Ctx) -> Any:
        if value is None and not self.nullable:
            return ctx.error(line, where, "expect: null is ambiguous; to expect one NULL value write rows: [[null]]")
        return super()._check(value, used, where, line, ctx)


class _Str(_Node):
    """A string, interpolated; optionally one of ``enum`` or matching ``pattern``."""

    expected = "a string"

    def __init__(
        self,
        description: str = "",
        *,
        enum: Sequence[str] = (),
        planned: Sequence[str] = (),
        pattern: str | None = None,
        pattern_hint: str = "",
        dsn: bool = False,
        def_name: str | None = None,
        enum_hint: str = "",
    ) -> None:
        super().__init__(description, def_name=def_name)
        self.enum = tuple(enum)
        self.enum_hint = enum_hint
        self.planned = tuple(planned)
        self.pattern = pattern
        self.pattern_hint = pattern_hint
        self.dsn = dsn

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        if self.enum:
            return _interp_or({"enum": list(self.enum)})
        if self.pattern:
            return _interp_or({"type": "string", "pattern": self.pattern})
        return {"type": "string", "minLength": 1}

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        if not isinstance(value, str):
            return ctx.error(line, where, f"expected {self._expectation()}, got {_describe(value)}")
        done = ctx.interpolate(value, where, line)
        if done is _BAD:
            return _BAD
        text, used = done
        if self.dsn and text:
            register_dsn(text)
        shown = _describe(text, used)
        if not text:
            return ctx.error(line, where, f"must not be empty (got {shown})")
        if self.enum and text not in self.enum:
            if self.enum_hint:  # a long list (lint rule ids): suggest instead of listing
                close = difflib.get_close_matches(text, self.enum, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else f" ({self.enum_hint})"
                return ctx.error(line, where, f"{shown} is not a known value{hint}")
            later = f"; {text} is planned but not supported yet" if text in self.planned and not used else ""
            return ctx.error(line, where, f"expected one of {', '.join(self.enum)}, got {shown}{later}")
        if self.pattern and not re.search(self.pattern, text):
            return ctx.error(line, where, f"expected {self.pattern_hint or self.pattern}, got {shown}")
        return text

    def _expectation(self) -> str:
        if self.enum:
            return "one of " + ", ".join(self.enum)
        return self.pattern_hint or "a string"


class _MigrationKey(_Str):
    """A migration id or version; an unquoted number is taken as written (``0001`` stays ``0001``)."""

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}]}

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and raw is not None:
            if value < 0:
                return ctx.error(line, where, f"expected a migration id or version, got {_describe(value)}")
            return raw  # YAML would read 0010 as the octal 8
        return super().check(value, where, line, ctx, raw)


class _List(_Node):
    """A list of items of one kind; ``null`` counts as empty."""

    def __init__(self, item: _Node, description: str = "") -> None:
        super().__init__(description)
        self.item = item
        self.expected = "a list"

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"type": ["array", "null"], "items": self.item.schema(defs)}

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list) or value is None

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        if value is None:
            return _Seq(line)
        if not isinstance(value, list):
            return ctx.error(line, where, f"expected a list, got {_describe(value)}")
        out = _Seq(getattr(value, "line", line))
        lines = getattr(value, "item_lines", None) or [line] * len(value)
        ok = True
        for index, (item, item_line) in enumerate(zip(value, lines)):
            checked = self.item.check(item, f"{where}[{index}]", item_line, ctx)
            if checked is _BAD:
                ok = False
                continue
            out.append(checked)
            out.item_lines.append(item_line)
        return out if ok else _BAD


class _Union(_Node):
    """One of several shapes, picked by the value's type."""

    def __init__(self, *options: _Node, description: str = "", expected: str = "") -> None:
        super().__init__(description)
        self.options = options
        self.expected = expected or " or ".join(o.expected for o in options)

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [o.schema(defs) for o in self.options]}

    def accepts(self, value: Any) -> bool:
        return any(o.accepts(value) for o in self.options)

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        for option in self.options:
            if option.accepts(value):
                return option.check(value, where, line, ctx, raw)
        return ctx.error(line, where, f"expected {self.expected}, got {_describe(value)}")


class _Rule:
    """A constraint across the keys of one mapping."""

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, given: Mapping[str, Any], out: Mapping[str, Any], where: str, line: int, ctx: _Ctx) -> None:
        raise NotImplementedError


class _AtMostOne(_Rule):
    def __init__(self, *keys: str, hint: str = "") -> None:
        self.keys = keys
        self.hint = hint

    def schema(self) -> dict[str, Any]:
        pairs = [{"required": list(p)} for p in itertools.combinations(self.keys, 2)]
        return {"not": pairs[0] if len(pairs) == 1 else {"anyOf": pairs}}

    def check(self, given: Mapping[str, Any], out: Mapping[str, Any], where: str, line: int, ctx: _Ctx) -> None:
        present = [k for k in self.keys if k in given]
        if len(present) > 1:
            ctx.error(line, where, f"give at most one of {' and '.join(present)}{self.hint}")


class _ExactlyOne(_Rule):
    def __init__(self, *keys: str, hint: str = "") -> None:
        self.keys = keys
        self.hint = hint

    def schema(self) -> dict[str, Any]:
        return {"oneOf": [{"required": [k]} for k in self.keys]}

    def check(self, given: Mapping[str, Any], out: Mapping[str, Any], where: str, line: int, ctx: _Ctx) -> None:
        present = [k for k in self.keys if k in given]
        if len(present) != 1:
            got = ", ".join(present) if present else "none"
            ctx.error(line, where, f"give exactly one of {', '.join(self.keys)} (got {got}){self.hint}")


class _KeyDependsOn(_Rule):
    """``key`` is required when ``other`` is one of ``needs``, and refused when it is one of ``refuses``."""

    def __init__(self, key: str, other: str, *, needs: Sequence[str], refuses: Sequence[str], default: str) -> None:
        self.key, self.other, self.default = key, other, default
        self.needs, self.refuses = tuple(needs), tuple(refuses)

    def schema(self) -> dict[str, Any]:
        def when(values: tuple[str, ...]) -> dict[str, Any]:
            return {"properties": {self.other: {"enum": list(values)}}, "required": [self.other]}

        return {
            "allOf": [
                {"if": when(self.needs), "then": {"required": [self.key]}},
                {"if": when(self.refuses), "then": {"not": {"required": [self.key]}}},
            ]
        }

    def check(self, given: Mapping[str, Any], out: Mapping[str, Any], where: str, line: int, ctx: _Ctx) -> None:
        if self.other in given and self.other not in out:
            return  # the other key is invalid and already reported
        other = out.get(self.other, self.default)
        if other in self.needs and self.key not in given:
            ctx.error(line, where, f"{self.other}: {other} needs {self.key}: (the server to use)")
        elif other in self.refuses and self.key in given:
            ctx.error(
                given.key_lines.get(self.key, line) if isinstance(given, _Map) else line,
                where,
                f"{self.key} is not used with {self.other}: {other}; "
                f"set {self.other}: {' or '.join(self.needs)} to use it, or remove {self.key}",
            )


class _Obj(_Node):
    """A mapping with known keys; unknown keys are errors with a suggestion; ``null`` counts as empty."""

    expected = "a mapping"

    def __init__(
        self,
        fields: Mapping[str, _Node],
        description: str = "",
        *,
        required: Sequence[str] = (),
        rules: Sequence[_Rule] = (),
        nullable: bool = True,
        def_name: str | None = None,
        example: str = "",
    ) -> None:
        super().__init__(description, def_name=def_name)
        self.fields = dict(fields)
        self.required = tuple(required)
        self.rules = tuple(rules)
        self.nullable = nullable
        self.example = example

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ["object", "null"] if self.nullable else "object",
            "properties": {k: v.schema(defs) for k, v in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            body["required"] = list(self.required)
        if self.rules:
            body["allOf"] = [r.schema() for r in self.rules]
        return body

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) or (value is None and self.nullable)

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        if value is None and self.nullable:
            return _Map(line)
        if not isinstance(value, dict):
            example = f" like {self.example}" if self.example else ""
            return ctx.error(line, where, f"expected a mapping{example}, got {_describe(value)}")
        out = _Map(getattr(value, "line", line))
        key_lines: dict[Any, int] = getattr(value, "key_lines", {})
        raws: dict[Any, str] = getattr(value, "raw", {})
        ok = True
        for key, item in value.items():
            key_line = key_lines.get(key, out.line)
            if not isinstance(key, str):
                ctx.error(key_line, where, f"keys must be words, got {_describe(key)} (quote it, or check for a typo)")
                ok = False
                continue
            node = self.fields.get(key)
            if node is None:
                ctx.error(key_line, where, f"unknown key {key!r}{_suggest(key, list(self.fields))}")
                ok = False
                continue
            checked = node.check(item, f"{where}.{key}" if where else key, key_line, ctx, raws.get(key))
            if checked is _BAD:
                ok = False
                continue
            out[key] = checked
            out.key_lines[key] = key_line
        for key in self.required:
            if key not in value:
                about = self.fields[key].description.rstrip(".")
                about = f" ({about[:1].lower()}{about[1:]})" if about else ""
                ctx.error(out.line, where, f"missing required key {key!r}{about}")
                ok = False
        for rule in self.rules:
            before = len(ctx.errors)
            rule.check(value, out, where, out.line, ctx)
            ok = ok and len(ctx.errors) == before
        return out if ok else _BAD


def _suggest(key: str, allowed: list[str]) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower().replace("-", "_")
    if snake != key and snake in allowed:
        return f"; did you mean {snake}? (plan keys are snake_case)"
    close = difflib.get_close_matches(key.lower(), allowed, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; known keys here: {', '.join(allowed)}"


# -- the format ------------------------------------------------------------

class _Interpolation(_Str):
    """A string holding a ``${VAR}`` reference (only rendered in the schema, as ``$defs/interpolation``)."""

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"type": "string", "pattern": _INTERPOLATION_PATTERN}


_INTERPOLATION = _Interpolation(
    "A ${VAR} or ${VAR:-default} reference, replaced from the environment before the value is checked.",
    def_name="interpolation",
)


class _SubstitutionText(_Str):
    """Text of a substitution: ``literal`` and ``regex`` are verbatim (``${name}`` is what they look for), ``value`` is interpolated and may be empty."""

    def __init__(self, description: str, *, interpolate: bool, allow_empty: bool = False, regex: bool = False) -> None:
        super().__init__(description)
        self.interpolate = interpolate
        self.allow_empty = allow_empty
        self.regex = regex

    def _schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"type": "string"} if self.allow_empty else {"type": "string", "minLength": 1}

    def check(self, value: Any, where: str, line: int, ctx: _Ctx, raw: str | None = None) -> Any:
        if not isinstance(value, str):
            return ctx.error(line, where, f"expected a string (quote it), got {_describe(value)}")
        text = value
        if self.interpolate:
            done = ctx.interpolate(value, where, line)
            if done is _BAD:
                return _BAD
            text = done[0]
        if not text and not self.allow_empty:
            return ctx.error(line, where, "must not be empty (it would match everywhere)")
        if self.regex:
            try:
                re.compile(text, re.MULTILINE)
            except re.error as exc:
                return ctx.error(line, where, f"the regular expression {text!r} does not compile: {exc}")
        return text


_SUBSTITUTION = _Obj(
    {
        "literal": _SubstitutionText("Text replaced wherever it occurs (verbatim: ${...} is not interpolated).",
                                     interpolate=False),
        "regex": _SubstitutionText("A Python regular expression (multi-line mode) whose matches are replaced.",
                                   interpolate=False, regex=True),
        "value": _SubstitutionText("The replacement, inserted as written; ${VAR} is interpolated.",
                                   interpolate=True, allow_empty=True),
    },
    "One replacement in the migrations' SQL: exactly one of literal and regex, and a value.",
    required=("value",),
    rules=(_ExactlyOne("literal", "regex"),),
    nullable=False,
    def_name="substitution",
    example='{literal: "${schema}", value: app}',
)

_CHECK = _Obj(
    {
        "name": _Str("Shown in reports; defaults to the start of the SQL."),
        "sql": _Str("The SQL query to run."),
        "expect": _Scalar("The one value the query must return (one row, one column)."),
        "rows": _List(_List(_Scalar(nullable=True)), "Exactly the rows the query must return, in order."),
    },
    "A SQL check. With neither expect nor rows the query must run without error and, "
    "if it returns a single value, that value must be true.",
    required=("sql",),
    rules=(_AtMostOne("expect", "rows", hint="; to expect NULL write rows: [[null]]"),),
    nullable=False,
    def_name="check",
    example="{name: ..., sql: ..., expect: ...}",
)

_ALLOW = _List(_Str(), "Codes acknowledged (not failures).")
_LINT_RULES = tuple(sorted(RULES))
_LINT = _Obj(
    {
        "severity": _Obj(
            # YAML reads a bare `off` as false: accept both.
            {rule: _Literal({"error": "error", "warning": "warning", "off": "off", False: "off"}, RULES[rule].summary)
             for rule in _LINT_RULES},
            "Severity per lint rule id: error, warning or off (see docs/lint.md).",
        ),
        "require_lock_timeout": _Bool(
            "Flag a migration that takes a lock on an existing object before SET lock_timeout."
        ),
    },
    "Lint settings for the whole plan.",
)

_COMPAT = _Obj(
    {
        "queries": _List(_Str(), "Queries of the previous application version; $1-style parameters allowed."),
        "queries_file": _Str("A SQL file of such queries, one statement each (relative to the root)."),
        "allow": _List(_Str(), "Breaking-change codes acknowledged, e.g. column-dropped."),
    },
    nullable=False,
)

# The modes of PostgreSQL's conflict table that block writes (harness.locks.WRITE_BLOCKING_MODES; a test
# keeps the two equal).
_WRITE_BLOCKING_MODES = ("SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")

_LOCKS = _Obj(
    {
        "budget": _Duration("How long a pre-existing table may be held in a write-blocking lock mode."),
        "allow_rewrite": _Bool("Acknowledge rewrites of pre-existing tables and indexes."),
        "allow_modes": _List(
            _Str(enum=_WRITE_BLOCKING_MODES), "Write-blocking lock modes acknowledged (exempt from the budget)."
        ),
    },
    nullable=False,
)

_STEP_FIELDS: dict[str, _Node] = {
    "idempotent": _Bool("Applying the migration twice must succeed and change nothing the second time."),
    "rollback": _Literal(
        {True: True, False: False, "none": "none"},
        "Rehearse the down migration (up, down, up): true; none declares the migration irreversible (its rollback "
        "item is skipped with that reason, and the atomic item proves a failed up leaves nothing); false turns "
        "both off.",
    ),
    "backward_compatible": _Union(
        _Bool(),
        _COMPAT,
        description="The previous application version must keep working: true, false, or a mapping.",
        expected="true, false or a mapping with queries, queries_file, allow",
    ),
    "lint": _Bool("Run the static lint rules on the migration."),
    "checks": _List(_CHECK, "SQL checks run after the migration."),
    "preserve_rows": _Bool("Row counts of pre-existing tables must not change (needs seed data)."),
    "allow": _List(_Str(enum=_LINT_RULES, enum_hint="rule ids are listed in docs/lint.md"), "Lint rule ids acknowledged."),
    "reason": _Str("Why the acknowledged findings are fine; printed with them."),
    "locks": _Union(
        _Bool(),
        _LOCKS,
        description="Measure the locks and rewrites of pre-existing tables during the rehearsal: true, false, "
        "or a mapping.",
        expected="true, false or a mapping with budget, allow_rewrite, allow_modes",
    ),
}

_DEFAULTS = _Obj(_STEP_FIELDS, "Assertion defaults for every migration.", def_name="defaults")

_STEP = _Obj(
    {
        "migration": _MigrationKey('The migration, as "<version>_<name>" or just "<version>".'),
        **_STEP_FIELDS,
    },
    "Overrides and additions for one migration.",
    required=("migration",),
    nullable=False,
    def_name="step",
    example="{migration: 20261101120000_add_users, ...}",
)

_HOOK = _Obj(
    {
        "sql": _Str("A SQL file run on the target (relative to the root)."),
        "run": _Str("A shell command."),
        "python": _Str(
            "A Python callable.",
            pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
            pattern_hint='"module:function" like "mypkg.hooks:notify"',
        ),
    },
    "One hook: exactly one of sql, run, python.",
    rules=(_ExactlyOne("sql", "run", "python"),),
    nullable=False,
    def_name="hook",
    example="{sql: hooks/x.sql}",
)
_HOOK_EVENTS = ("pre_run", "pre_migration", "post_migration", "post_run", "on_failure", "backup")

_PATH_OR_PATHS = _Union(_Str(), _List(_Str()), expected="a path or a list of paths")

_PLAN = _Obj(
    {
        "name": _Str(
            "The plan name (defaults to the file stem); used in receipt file names.",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            pattern_hint="a name of letters, digits, '.', '_' and '-'",
        ),
        "root": _Str("The project root, relative to the plan file's directory."),
        "migrations": _Str("The migrations directory, relative to the root."),
        "layout": _Str("The migrations folder layout; auto detects it.", enum=LAYOUTS, planned=PLANNED_LAYOUTS),
        "substitutions": _List(
            _SUBSTITUTION,
            "Replacements applied, in order, to the migrations' SQL before it is parsed; checksums stay those of "
            "the files as written.",
        ),
        "baseline": _MigrationKey(
            "Migrations up to and including this version or id count as applied: rehearsed as one baseline item, "
            "out of scope for assertions."
        ),
        "schema": _Str(
            "The desired schema: a SQL file, or a directory of .sql files read in name order (relative to the "
            "root). harness generate writes migrations towards it; check-schema compares the migrations with it."
        ),
        "schema_matches": _Bool(
            "Rehearse a plan-level schema_matches item: the migrations must produce exactly the desired schema "
            "(needs schema)."
        ),
        "lint": _LINT,
        "chain_rollback": _Bool(
            "Rehearse a plan-level chain_rollback item: every down from head back to the base (or baseline), each "
            "compared with the state it must restore. Default: on when any step has rollback."
        ),
        "column_order": _Str(
            "How a column order difference after a down counts (it is visible to SELECT * and COPY): error or warn.",
            enum=("error", "warn"),
        ),
        "require_down": _Bool(
            "Every migration needs a down file: one without fails its rollback item instead of skipping it "
            "(a step with rollback: none is exempt). Default: false."
        ),
        "target": _Obj(
            {"dsn": _Str("Connection string of the database apply migrates.", dsn=True)},
            "The database apply migrates; absent: a local development database managed by the harness.",
            required=("dsn",),
        ),
        "targets": _List(
            _Obj(
                {
                    "name": _Str(
                        "The target's name in progress, logs, status and --only/--exclude.",
                        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                        pattern_hint="a name of letters, digits, '.', '_', ':' and '-'",
                    ),
                    "dsn": _Str("Connection string of this database.", dsn=True),
                },
                "One database of the fleet.",
                required=("name", "dsn"),
                nullable=False,
            ),
            "A fleet: the databases apply migrates, each with its own history (instead of target).",
        ),
        "fleet": _Obj(
            {
                "discover": _Obj(
                    {
                        "dsn": _Str("The catalog database the query runs on.", dsn=True),
                        "sql": _Str("A query returning (name, dsn) rows: one target per row."),
                    },
                    "Targets discovered by a query at the start of each run.",
                    required=("dsn", "sql"),
                ),
                "schemas": _Obj(
                    {
                        "dsn": _Str("The database holding the tenant schemas.", dsn=True),
                        "sql": _Str("A query returning one schema name per row: one tenant per schema."),
                    },
                    "Schema per tenant: each schema gets the migrations with search_path set to it and its own "
                    "history.",
                    required=("dsn", "sql"),
                ),
                "concurrency": _Int("How many targets are migrated at once.", minimum=1),
                "waves": _List(
                    _Obj(
                        {
                            "canary": _Int("This many targets, first.", minimum=1),
                            "percent": _Number("This percentage of the fleet (rounded up).", minimum=0),
                            "rest": _Bool("Every target not in an earlier wave."),
                        },
                        "One wave.",
                        rules=(_ExactlyOne("canary", "percent", "rest"),),
                        nullable=False,
                    ),
                    "Waves run in order; a wave starts when the one before has finished within its failure limit. "
                    "Default: one wave of every target.",
                ),
                "stop_after_failures": _Union(
                    _Int(minimum=1),
                    _Str(pattern=r"^[0-9]+(\.[0-9]+)?%$", pattern_hint="a count of failures, or a percentage like 10%"),
                    description=(
                        "Failed targets in one wave (a count, or a percentage of the wave like 10%) that stop the "
                        "later waves. Default: 1."
                    ),
                    expected="a count or a percentage",
                ),
            },
            "How a fleet is found and migrated.",
        ),
        "mode": _Str("development or production.", enum=("development", "production")),
        "rehearsal": _Obj(
            {
                "provider": _Str(
                    "Where rehearsal servers come from.", enum=("auto", "local", "embedded", "docker", "dsn")
                ),
                "postgres": _Major("The wanted PostgreSQL major version."),
                "dsn": _Str("The server to rehearse on (provider dsn, or auto).", dsn=True),
                "seed": _PATH_OR_PATHS,
                "base": _Str(
                    "A built-in base loaded before the seed and the first migration: the objects a platform "
                    "creates before any migration (supabase: auth, storage, roles, extensions schema, realtime "
                    "publication).",
                    enum=BASES,
                ),
                "cache": _Union(
                    _Str(), _Literal({False: False}),
                    description=(
                        "Directory of the rehearsed-prefix cache (relative to the plan's root), or false to rehearse "
                        "every migration every time. Default: .harness/cache."
                    ),
                    expected="a directory or false",
                ),
            },
            "How rehearsals run.",
            rules=(
                _KeyDependsOn(
                    "dsn", "provider", needs=("dsn",), refuses=("local", "embedded", "docker"), default="auto"
                ),
            ),
        ),
        "defaults": _DEFAULTS,
        "steps": _List(_STEP, "Per-migration overrides, keyed by migration id or version."),
        "guards": _Obj(
            {
                "lock_timeout": _Duration("PostgreSQL lock_timeout for migration statements."),
                "statement_timeout": _Duration("PostgreSQL statement_timeout for migration statements."),
                "max_retries": _Int("Retries of a migration that hit the lock timeout."),
                "retry_delay": _Duration("Wait before the first retry."),
                "retry_factor": _Number("Each retry waits this many times longer.", minimum=1),
                "transaction": _Str("Transaction scope.", enum=("per-migration", "single")),
                "lock_wait": _Duration("How long to wait for the run lock."),
                "require_receipt": _Bool("Production: refuse to apply without a green rehearsal receipt."),
            },
            "Safety settings of apply.",
        ),
        "health": _Obj(
            {
                "checks": _List(_CHECK, "SQL checks run on the target after apply."),
                "url": _Str(
                    "An HTTP(S) URL that must answer 2xx.", pattern=r"^https?://", pattern_hint="an http(s) URL"
                ),
                "timeout": _Duration("Timeout of each health attempt."),
                "retries": _Int("Attempts after the first failure."),
                "on_failure": _Str("What apply does when health fails.", enum=("rollback", "stop")),
            },
            "Health checks after apply.",
        ),
        "backup": _Obj(
            {
                "mode": _Str("full, touched (tables the migrations touch) or none.", enum=("full", "touched", "none")),
                "dir": _Str("Where backups go (relative to the root)."),
                "keep": _Int("How many backups to keep.", minimum=1),
            },
            "Backups before apply.",
        ),
        "hooks": _Obj(
            {event: _List(_HOOK) for event in _HOOK_EVENTS},
            "Hooks of apply; backup replaces the built-in backup.",
        ),
        "history": _Obj(
            {
                "mirror": _Str(
                    "Keep this tool's history table in step: apply writes its row for each migration (and a "
                    "rollback deletes it) in the migration's transaction, as the tool itself would.",
                    enum=tuple(MIRROR_TOOLS),
                ),
            },
            "The migration history apply keeps besides harness.schema_migrations.",
        ),
    },
    "A migration-harness plan.",
    required=("migrations",),
    nullable=False,
    example="migrations: migrations/",
)


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the plan format, derived from the same spec as the validator."""
    defs: dict[str, Any] = {}
    body = _PLAN.schema(defs)
    _INTERPOLATION.schema(defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _SCHEMA_ID,
        "title": "migration-harness plan",
        **body,
        "$defs": dict(sorted(defs.items())),
    }


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _display(path: Path, cwd: Path) -> str:
    """*path* relative to *cwd* when it is inside it, else absolute."""
    try:
        return path.relative_to(cwd).as_posix()
    except ValueError:
        return str(path)


def _rel_dir(path: Path, root: Path) -> str:
    try:
        text = path.relative_to(root).as_posix()
    except ValueError:
        text = str(path)
    return text.rstrip("/") + "/"


def _plans_in(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted({p.stem for p in directory.iterdir() if p.suffix in _PLAN_SUFFIXES and p.is_file()})


def resolve_plan_path(name_or_path: str | Path, *, cwd: Path | None = None) -> Path:
    """The plan file for a name (``staging`` → ``<cwd>/plans/staging.yaml`` or ``.yml``) or a path.

    A :class:`~pathlib.Path`, or a string with a directory separator or a
    ``.yaml``/``.yml`` suffix, is a path (relative to *cwd*); anything else is
    a name.  A plan that does not exist is a :class:`PlanError` listing the
    plans that do.
    """
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or os.sep in text or text.endswith(_PLAN_SUFFIXES)
    if not text.strip():
        raise PlanError("no plan given; pass a plan name (plans/NAME.yaml) or a path to a plan file")
    if is_path:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else cwd / path
        if path.is_file():
            return path
        what = "is a directory, not a plan file" if path.is_dir() else "does not exist"
        existing = _plans_in(path.parent)
        listing = f"; plans there: {', '.join(existing)}" if existing else ""
        in_plans = cwd / "plans" / text
        if not Path(text).is_absolute() and in_plans.is_file():
            listing += f" (did you mean {_display(in_plans, cwd)}?)"
        raise PlanError(f"plan file {_display(path, cwd)} {what}{listing}")
    plans_dir = cwd / "plans"
    found = [plans_dir / f"{text}{suffix}" for suffix in _PLAN_SUFFIXES if (plans_dir / f"{text}{suffix}").is_file()]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise PlanError(
            f"plan {text!r} is ambiguous: both {_display(found[0], cwd)} and {_display(found[1], cwd)} exist; "
            "remove one or pass the file path"
        )
    existing = _plans_in(plans_dir)
    if not plans_dir.is_dir():
        raise PlanError(
            f"no plan named {text!r}: there is no plans/ directory in {cwd}; "
            f"create plans/{text}.yaml or pass the path of a plan file"
        )
    if not existing:
        raise PlanError(f"no plan named {text!r}: plans/ has no .yaml plans; create plans/{text}.yaml")
    close = difflib.get_close_matches(text, existing, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise PlanError(f"no plan named {text!r} (plans/{text}.yaml){hint}; plans that exist: {', '.join(existing)}")


def load_plan(
    name_or_path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Plan:
    """Read, interpolate and validate a plan; every problem found is reported in one :class:`PlanError`.

    *env* is where ``${VAR}`` references are looked up (default: the process
    environment); *cwd* is where plan names and relative paths given here are
    resolved, and what paths in messages are shown relative to.
    """
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    path = resolve_plan_path(name_or_path, cwd=cwd).absolute()
    display = _display(path, cwd.absolute())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{display}: cannot read the plan: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PlanError(f"{display}:{line}: the plan is not UTF-8 text ({exc.reason}); save it as UTF-8") from None

    ctx = _Ctx(display, os.environ if env is None else env)
    document = _parse(text, ctx)
    validated = _PLAN.check(document, "", getattr(document, "line", 1), ctx)
    _check_unique_steps(document, ctx)
    _raise_if(ctx)

    sha = hashlib.sha256(data).hexdigest()
    plan = _build(validated, path=path, display=display, cwd=cwd.absolute(), sha=sha, ctx=ctx)
    _raise_if(ctx)
    log.debug("loaded plan %s (%d steps) from %s", plan.name, len(plan.steps), display)
    return plan


#: What :func:`with_settings` may change on a loaded plan, by section: how apply behaves, never what was
#: rehearsed (a receipt written for the plan file still matches the plan with them).
_SETTINGS = {
    "guards": tuple(f.name for f in dataclasses.fields(Guards)),
    "health": ("url", "timeout", "retries", "on_failure"),
    "backup": ("mode", "keep"),
}


def with_settings(plan: Plan, settings: Mapping[str, Mapping[str, Any]], *, source: str = "settings") -> Plan:
    """*plan* with apply settings replaced, each value validated as if the plan file held it.

    *settings* maps a section (``guards``, ``health``, ``backup``) to keys
    and values as a plan file writes them: ``{"guards": {"retry_delay":
    "2s", "max_retries": 5}, "health": {"on_failure": "stop"}}``.  Every bad
    value or unknown key is reported in one :class:`PlanError` (exit 2),
    each line as ``<source>: guards.retry_delay: expected ...``.  The plan
    is frozen: a new one is returned, with the same ``sha256``.
    """
    ctx = _Ctx(source, {})
    changes: dict[str, Any] = {}
    for section, values in settings.items():
        allowed = _SETTINGS.get(section)
        if allowed is None:
            ctx.error(0, section, f"not a setting that can be changed here; only {', '.join(_SETTINGS)} can")
            continue
        unknown = [key for key in values if key not in allowed]
        for key in unknown:
            ctx.error(0, f"{section}.{key}", f"not a setting that can be changed here; {section} has {', '.join(allowed)}")
        node = _PLAN.fields[section]
        checked = node.check({k: v for k, v in values.items() if k not in unknown}, section, 0, ctx)
        if checked is not _BAD and not unknown:
            changes[section] = dataclasses.replace(getattr(plan, section), **checked)
    if ctx.errors:
        prefix = f"{source}:0: "
        raise PlanError("\n".join(f"{source}: {text.removeprefix(prefix)}" for _, text in ctx.errors))
    return dataclasses.replace(plan, **changes) if changes else plan


def _raise_if(ctx: _Ctx) -> None:
    if ctx.errors:
        ordered = sorted(dict.fromkeys(ctx.errors), key=lambda e: e[0])
        raise PlanError("\n".join(message for _, message in ordered))


def _parse(text: str, ctx: _Ctx) -> Any:
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        context_mark = getattr(exc, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            problem += f" ({context} at line {context_mark.line + 1})"
        where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1"
        raise PlanError(f"{ctx.display}:{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    for line, message in loader.problems:
        ctx.error(line, "", message)
    if document is None:
        raise PlanError(
            f"{ctx.display}:1: the plan is empty; a plan needs at least `migrations: <directory>` "
            "(see docs/plans.md)"
        )
    if not isinstance(document, dict):
        line = getattr(document, "line", 1)
        raise PlanError(
            f"{ctx.display}:{line}: a plan must be a mapping of keys like `migrations: migrations/`, "
            f"got {_describe(document)}"
        )
    return document


def _check_unique_steps(document: Mapping[Any, Any], ctx: _Ctx) -> None:
    """Two steps with the same key (on the document as written, so it is reported next to other errors)."""
    steps = document.get("steps")
    if not isinstance(steps, list):
        return
    first: dict[str, int] = {}
    for step, line in zip(steps, getattr(steps, "item_lines", ())):
        if not isinstance(step, dict):
            continue
        key = step.get("migration")
        if isinstance(key, int) and not isinstance(key, bool):
            key = getattr(step, "raw", {}).get("migration", str(key))
        if not isinstance(key, str):
            continue
        if key in first:
            ctx.error(line, "", f"a second step for migration {key} (the first is at line {first[key]}); merge them")
        else:
            first[key] = line


# -- building the dataclasses (paths and files are checked here) ------------


@dataclass
class _Builder:
    doc: _Map
    path: Path
    root: Path
    display: str
    cwd: Path
    ctx: _Ctx

    def resolve(self, text: str) -> Path:
        p = Path(text).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.root / p))

    def existing(self, text: str, line: int, where: str, *, directory: bool = False) -> Path:
        p = self.resolve(text)
        ok = p.is_dir() if directory else p.is_file()
        if not ok:
            kind = "directory" if directory else "file"
            other = " (it is a file)" if directory and p.is_file() else " (it is a directory)" if p.is_dir() else ""
            self.ctx.error(
                line,
                where,
                f"{kind} {_display(p, self.cwd)} does not exist{other}; paths in a plan are relative to "
                f"its root, here {self.root}",
            )
        return p

    def check(self, m: _Map, line: int) -> Check:
        sql: str = m["sql"]
        name = m.get("name") or _short(sql)
        rows = m.get("rows")
        return Check(
            name=name,
            sql=sql,
            expect=m.get("expect"),
            rows=tuple(tuple(r) for r in rows) if rows is not None else None,
            line=line,
        )

    def checks(self, seq: _Seq | None) -> tuple[Check, ...]:
        if not seq:
            return ()
        return tuple(self.check(m, line) for m, line in zip(seq, seq.item_lines))

    def compat(self, m: _Map, where: str) -> tuple[tuple[Query, ...], tuple[str, ...]]:
        queries: list[Query] = []
        seq: _Seq = m.get("queries", _Seq())
        queries += [Query(sql, f"{self.display}:{line}") for sql, line in zip(seq, seq.item_lines)]
        if "queries_file" in m:
            line = m.key_lines["queries_file"]
            p = self.existing(m["queries_file"], line, f"{where}.queries_file")
            if p.is_file():
                queries += self.read_queries(p, line, f"{where}.queries_file")
        return tuple(queries), tuple(m.get("allow", ()))

    def read_queries(self, p: Path, line: int, where: str) -> list[Query]:
        from pglast import split  # deferred: only plans with a queries file need the parser
        from pglast.parser import ParseError

        shown = _display(p, self.cwd)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.ctx.error(line, where, f"cannot read {shown}: {exc}")
            return []
        try:
            slices = list(split(text, with_parser=True, only_slices=True))
        except ParseError as exc:
            at = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
            self.ctx.error(line, where, f"{shown}:{text[:at].count(chr(10)) + 1}: cannot parse: {exc.args[0]}")
            return []
        return [Query(text[s], f"{shown}:{text[: s.start].count(chr(10)) + 1}") for s in slices]

    def step(self, m: _Map, base: StepConfig, migration: str, line: int, where: str) -> StepConfig:
        replaced = ("idempotent", "rollback", "lint", "preserve_rows", "reason")
        values: dict[str, Any] = {k: m[k] for k in replaced if k in m}
        if "rollback" in values:
            values["irreversible"] = values["rollback"] == "none"
            values["rollback"] = values["rollback"] is True
        compat = base.backward_compatible
        if "backward_compatible" in m:
            given = m["backward_compatible"]
            if given is False:
                compat = Compat(enabled=False)
            elif given is True:
                compat = dataclasses.replace(base.backward_compatible, enabled=True)
            else:
                queries, allow = self.compat(given, f"{where}.backward_compatible")
                compat = Compat(
                    enabled=True,
                    queries=base.backward_compatible.queries + queries,
                    allow=_unique(base.backward_compatible.allow + allow),
                )
        if "locks" in m:
            values["locks"] = _lock_policy(m["locks"], base.locks)
        return dataclasses.replace(
            base,
            migration=migration,
            backward_compatible=compat,
            checks=base.checks + self.checks(m.get("checks")),
            allow=_unique(base.allow + tuple(m.get("allow", ()))),
            line=line,
            explicit=frozenset(k for k in m if k != "migration"),
            **values,
        )

    def hooks(self, m: _Map) -> Hooks:
        out: dict[str, tuple[Hook, ...]] = {}
        for event in _HOOK_EVENTS:
            seq: _Seq = m.get(event, _Seq())
            hooks = []
            for index, (hook, line) in enumerate(zip(seq, seq.item_lines)):
                kind = next(k for k in ("sql", "run", "python") if k in hook)
                path = None
                if kind == "sql":
                    path = self.existing(hook["sql"], line, f"hooks.{event}[{index}].sql")
                hooks.append(Hook(kind=kind, value=hook[kind], line=line, path=path))
            out[event] = tuple(hooks)
        return Hooks(**out)


def _short(sql: str) -> str:
    first = " ".join(sql.split())
    return first if len(first) <= 60 else first[:57] + "..."


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _lock_policy(given: bool | _Map, base: LockPolicy) -> LockPolicy:
    """``locks:`` over the defaults' policy: false turns it off, true keeps the defaults, a mapping overrides."""
    if given is False:
        return dataclasses.replace(base, enabled=False)
    if given is True:
        return dataclasses.replace(base, enabled=True)
    return LockPolicy(
        enabled=True,
        budget=given.get("budget", base.budget),
        allow_rewrite=given.get("allow_rewrite", base.allow_rewrite),
        allow_modes=_unique(base.allow_modes + tuple(given.get("allow_modes", ()))),
    )


_BASE_STEP = StepConfig(
    migration="*",
    idempotent=True,
    rollback=True,
    backward_compatible=Compat(),
    lint=True,
    checks=(),
    preserve_rows=True,
    allow=(),
    reason=None,
    line=0,
)


def _root_of(doc: _Map, path: Path, ctx: _Ctx, cwd: Path) -> Path:
    if "root" in doc:
        root = Path(os.path.normpath(path.parent / Path(doc["root"]).expanduser()))
        if not root.is_dir():
            ctx.error(
                doc.key_lines["root"],
                "root",
                f"directory {_display(root, cwd)} does not exist (root is relative to the plan file's directory)",
            )
        return root
    return path.parent.parent if path.parent.name == "plans" else path.parent


def _desired_schema(doc: _Map, b: _Builder) -> Path | None:
    """The ``schema:`` path (a file or a directory); ``schema_matches`` needs one."""
    if "schema" not in doc:
        if doc.get("schema_matches"):
            b.ctx.error(doc.key_lines["schema_matches"], "schema_matches",
                        "needs `schema:` (the desired schema the migrations must produce)")
        return None
    path = b.resolve(doc["schema"])
    if not path.exists():
        b.ctx.error(doc.key_lines["schema"], "schema",
                    f"{_display(path, b.cwd)} does not exist (a SQL file or a directory of .sql files); paths in a "
                    f"plan are relative to its root, here {b.root}")
    return path


def _build(doc: _Map, *, path: Path, display: str, cwd: Path, sha: str, ctx: _Ctx) -> Plan:
    root = _root_of(doc, path, ctx, cwd)
    _raise_if(ctx)  # a bad root would make every relative path below look missing
    b = _Builder(doc, path, root, display, cwd, ctx)

    migrations_dir = b.existing(doc["migrations"], doc.key_lines["migrations"], "migrations", directory=True)

    r: _Map = doc.get("rehearsal", _Map())
    seeds = r.get("seed", ())
    if isinstance(seeds, str):
        seeds = _Seq(r.key_lines["seed"])
        seeds.append(r["seed"])
        seeds.item_lines.append(r.key_lines["seed"])
    rehearsal = Rehearsal(
        provider=r.get("provider", "auto"),
        postgres=r.get("postgres"),
        dsn=r.get("dsn"),
        base=r.get("base"),
        seed=tuple(
            b.existing(s, line, f"rehearsal.seed[{i}]" if len(seeds) > 1 else "rehearsal.seed")
            for i, (s, line) in enumerate(zip(seeds, getattr(seeds, "item_lines", ())))
        ),
        cache=None if r.get("cache") is False else b.resolve(r.get("cache", ".harness/cache")),
    )

    d: _Map = doc.get("defaults", _Map())
    defaults = b.step(d, _BASE_STEP, "*", doc.key_lines.get("defaults", 0), "defaults")
    steps_seq: _Seq = doc.get("steps", _Seq())
    steps = tuple(
        b.step(m, defaults, m["migration"], line, f"steps[{i}]")
        for i, (m, line) in enumerate(zip(steps_seq, steps_seq.item_lines))
    )

    g: _Map = doc.get("guards", _Map())
    h: _Map = doc.get("health", _Map())
    k: _Map = doc.get("backup", _Map())
    target: _Map | None = doc.get("target") or None
    return Plan(
        name=doc.get("name", path.stem),
        path=path,
        root=root,
        sha256=sha,
        migrations_dir=migrations_dir,
        layout=doc.get("layout", "auto"),
        target_dsn=target["dsn"] if target else None,
        mode=doc.get("mode", "development"),
        rehearsal=rehearsal,
        defaults=defaults,
        steps=steps,
        guards=Guards(**g),
        health=Health(
            checks=b.checks(h.get("checks")),
            url=h.get("url"),
            timeout=h.get("timeout", Health.timeout),
            retries=h.get("retries", Health.retries),
            on_failure=h.get("on_failure", Health.on_failure),
        ),
        backup=Backup(mode=k.get("mode", "full"), dir=b.resolve(k.get("dir", "backups")), keep=k.get("keep", 10)),
        hooks=b.hooks(doc.get("hooks", _Map())),
        substitutions=tuple(
            Substitution(value=m["value"], literal=m.get("literal"), regex=m.get("regex"), line=line)
            for m, line in zip(doc.get("substitutions", _Seq()), getattr(doc.get("substitutions"), "item_lines", ()))
        ),
        baseline=doc.get("baseline"),
        schema=_desired_schema(doc, b),
        schema_matches=bool(doc.get("schema_matches", False)),
        chain_rollback=doc.get("chain_rollback"),
        column_order=doc.get("column_order", "error"),
        require_down=bool(doc.get("require_down", False)),
        lint_severity=dict(doc.get("lint", {}).get("severity", {})),
        require_lock_timeout=bool(doc.get("lint", {}).get("require_lock_timeout", False)),
        history_mirror=_history_mirror(doc, ctx),
        fleet=_fleet(doc, ctx),
        display_path=display,
    )


def _fleet(doc: _Map, ctx: _Ctx) -> Fleet:
    """``targets:`` and ``fleet:``; errors for a fleet without members, duplicate names, or ``target`` besides."""
    listed: _Seq = doc.get("targets") or _Seq()
    f: _Map = doc.get("fleet") or _Map()
    targets = tuple(
        NamedTarget(name=t["name"], dsn=t["dsn"], line=line) for t, line in zip(listed, listed.item_lines)
    )
    seen: dict[str, int] = {}
    for t in targets:
        if t.name in seen:
            ctx.error(t.line, "targets", f"the name {t.name!r} is used twice (lines {seen[t.name]} and {t.line}); "
                      "every target needs its own name")
        seen[t.name] = t.line
    if targets and doc.get("target"):
        ctx.error(doc.key_lines.get("targets", 0), "targets",
                  "a plan has either target (one database) or targets (a fleet), not both")

    def query(key: str) -> Discovery | None:
        q: _Map | None = f.get(key) or None
        return Discovery(dsn=q["dsn"], sql=q["sql"], line=f.key_lines.get(key, 0)) if q else None

    discover, schemas = query("discover"), query("schemas")
    if f and not (targets or discover or schemas):
        ctx.error(doc.key_lines.get("fleet", 0), "fleet",
                  "a fleet needs members: a targets list, fleet.discover or fleet.schemas")
    if (discover or schemas) and doc.get("target"):
        ctx.error(doc.key_lines.get("fleet", 0), "fleet",
                  "a plan has either target (one database) or a fleet (targets, fleet.discover, fleet.schemas)")
    waves: _Seq = f.get("waves") or _Seq()
    parsed = tuple(Wave(canary=w.get("canary"), percent=w.get("percent"), rest=bool(w.get("rest", False)))
                   for w in waves)
    for i, w in enumerate(parsed[:-1]):
        if w.rest:
            ctx.error(waves.item_lines[i], f"fleet.waves[{i}]", "rest: true takes every target left, so it must be "
                      "the last wave")
    limit = f.get("stop_after_failures", 1)
    return Fleet(
        targets=targets,
        discover=discover,
        schemas=schemas,
        concurrency=f.get("concurrency", Fleet.concurrency),
        waves=parsed or Fleet.waves,
        stop_after_failures=limit if isinstance(limit, int) else None,
        stop_after_percent=float(limit[:-1]) if isinstance(limit, str) else None,
    )


def _history_mirror(doc: _Map, ctx: _Ctx) -> str | None:
    """``history.mirror``; an error when the plan names a layout whose files that tool does not write."""
    h: _Map = doc.get("history") or _Map()
    tool = h.get("mirror")
    if tool is None:
        return None
    layout = doc.get("layout", "auto")
    if layout != "auto" and layout not in MIRROR_TOOLS[tool]:
        fits = " or ".join(MIRROR_TOOLS[tool])
        ctx.error(h.key_lines.get("mirror", 0), "history.mirror",
                  f"{tool} records migrations of the {fits} layout only, but the plan's layout is {layout}; name "
                  f"the tool whose files these are (or set layout: {MIRROR_TOOLS[tool][0]})")
    return str(tool)


# --------------------------------------------------------------------------
# ``python -m harness.plan``: regenerate the committed schema
# --------------------------------------------------------------------------


def _schema_text() -> str:
    return json.dumps(plan_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _main(argv: Sequence[str] | None = None, write: Callable[[str], Any] = sys.stdout.write) -> int:
    """Write ``harness/plan.schema.json`` (or, with ``--stdout``, print the schema)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--stdout" in args:
        write(_schema_text())
    else:
        SCHEMA_PATH.write_text(_schema_text(), encoding="utf-8")
        write(f"wrote {SCHEMA_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
