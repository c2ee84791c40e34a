"""Built-in bases: what a hosting platform creates in a database before a project's first migration.

A plan names one with ``rehearsal: {base: supabase}``; the rehearsal loads
its SQL (``harness/bases/<name>.sql``) into each scratch database before
the seed, so its objects are part of the state before the first migration,
never changes of a migration.  :func:`advice` turns a migration's failure on
a missing platform object or extension into what to do about it.  Nothing
here opens a connection.  See ``docs/layouts.md#supabase``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["BASES", "Base", "base", "advice"]

#: The bases shipped with the harness (the plan's ``rehearsal.base`` values).
BASES = ("supabase",)


@dataclass(frozen=True)
class Base:
    """A built-in base: its SQL file and the ``search_path`` of the sessions that run migrations on it."""

    name: str
    path: Path
    #: Set on every session the rehearsal opens on a database holding the base (the platform sets it
    #: for the role migrations run as); database settings do not follow a database copied as a template.
    search_path: tuple[str, ...] = ()

    def read(self) -> str:
        """The base's SQL."""
        return self.path.read_text(encoding="utf-8")


def base(name: str) -> Base:
    """The built-in base *name* (one of :data:`BASES`)."""
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; the built-in bases are {', '.join(BASES)}")
    path = Path(str(resources.files(__name__).joinpath(f"{name}.sql")))
    return Base(name, path, search_path=("$user", "public", "extensions"))


# What a failed statement's PostgreSQL error says is missing.
_NOT_AVAILABLE = re.compile(r'extension "(?P<name>[^"]+)" is not available')
_UNDEFINED_FUNCTION = re.compile(r"function (?:(?P<schema>\w+)\.)?(?P<name>\w+)\([^)]*\) does not exist")
# Objects of the platform: its schemas, roles and publication.
_PLATFORM_SCHEMAS = ("auth", "storage", "extensions", "realtime", "graphql_public", "vault", "net", "cron",
                     "pgsodium", "supabase_functions")
_PLATFORM_OBJECT = re.compile(
    r'(?:schema "(?:{s})"|relation "(?:{s})\.[^"]+"|(?:function|type|table|view) "?(?:{s})\.[\w"]+'
    r'|role "(?:anon|authenticated|service_role|authenticator|dashboard_user|supabase_\w+)"'
    r'|publication "supabase_realtime") does not exist'.format(s="|".join(_PLATFORM_SCHEMAS))
)
# Functions of the extensions the platform installs in its `extensions` schema.
_EXTENSION_FUNCTIONS = {
    **dict.fromkeys(("uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v3", "uuid_generate_v4",
                     "uuid_generate_v5", "uuid_nil", "uuid_ns_dns", "uuid_ns_url", "uuid_ns_oid", "uuid_ns_x500"),
                    "uuid-ossp"),
    **dict.fromkeys(("crypt", "gen_salt", "digest", "hmac", "gen_random_bytes", "pgp_sym_encrypt",
                     "pgp_sym_decrypt", "pgp_pub_encrypt", "pgp_pub_decrypt", "armor", "dearmor"), "pgcrypto"),
}
# Extensions Supabase's image ships that PostgreSQL's contrib does not have.
_PLATFORM_EXTENSIONS = frozenset({
    "pg_graphql", "pgsodium", "supabase_vault", "pg_net", "pg_cron", "pgjwt", "pg_jsonschema", "wrappers",
    "pg_hashids", "pg_stat_monitor", "pgaudit", "pg_tle", "plv8", "index_advisor", "hypopg", "pgroonga",
    "timescaledb", "postgis", "pgrouting", "http", "rum", "pg_repack", "vector",
})

_INSTALL = (
    "install it on the rehearsal server, or rehearse on a server that has it: `provider: dsn` pointing at one "
    "(for Supabase's own extensions, the database `supabase start` runs, or a container of the supabase/postgres "
    "image); `provider: docker` runs the official postgres image, which has PostgreSQL's contrib extensions only. "
    "The rehearsal never stands in for an extension"
)


def advice(error: str, *, base_name: str | None, supabase_project: bool) -> str | None:
    """What to do about a migration that failed with PostgreSQL *error*, or ``None`` when there is no advice.

    *base_name* is the plan's ``rehearsal.base``; *supabase_project* says
    the migrations folder is a Supabase project's (``layout: supabase``, or
    ``auto`` on a ``supabase/migrations`` folder).  A Supabase project
    without its base is advised to add ``base: supabase``; the base is never
    turned on for it.
    """
    missing = _NOT_AVAILABLE.search(error)
    if missing:
        name = missing["name"]
        where = " (Supabase's image has it; PostgreSQL's contrib does not)" if name in _PLATFORM_EXTENSIONS else ""
        return f"the extension {name} is not installed on the rehearsal server{where}: {_INSTALL}."
    function = _UNDEFINED_FUNCTION.search(error)
    extension = _EXTENSION_FUNCTIONS.get(function["name"]) if function else None
    platform = _PLATFORM_OBJECT.search(error)
    if base_name is None and supabase_project and (platform or extension):
        return (
            "this is a Supabase project, and its migrations use objects the Supabase platform creates before "
            "the first migration (the auth and storage schemas, the anon, authenticated and service_role roles, "
            "the extensions schema, the supabase_realtime publication). Add `base: supabase` under `rehearsal:` in "
            "the plan to load them first (docs/layouts.md#supabase)."
        )
    if extension and function and base_name is not None:
        return (f"{function['name']}() comes from the {extension} extension, which base: {base_name} installs in "
                f"the extensions schema when the rehearsal server offers it; this server does not: {_INSTALL}.")
    if base_name is not None and platform:
        return (
            f"base: {base_name} creates only part of the platform's objects (docs/layouts.md#supabase lists "
            "them), and not this one: create it in a seed file (`rehearsal.seed`), or rehearse on a Supabase "
            "database (`provider: dsn`)."
        )
    return None
