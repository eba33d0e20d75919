"""``renkei db roles``: the database layout (one role and one schema per component) as SQL, or applied.

Who may do this: whoever holds the administrator's credentials. Printing needs none (it reads the
roles' password file, creating the missing secrets there, and prints SCRAM verifiers, never a
secret); ``--apply`` connects as the user named in ``pg_dsn`` (the embedded stack's superuser
when one runs under the state folder), and PostgreSQL refuses anyone without the rights to create
roles (exit 1, with what to do).

- ``renkei db roles`` — SQL for a database administrator (``psql -f``): the roles with their
  verifiers, the schemas, the read-only ops role, and (to run after the hub's first start) the
  portal's read of the provision records. Each component's deployment then gets its one line of
  the password file (``--pg-passfile``; docs/production.md).
- ``renkei db roles --apply`` — the same, applied now, plus the grants on shared tables that
  exist by then (run it again after the components first started).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from infra.core.errors import ConfigError
from infra.core.settings import Settings

__all__ = ["register"]


def register(add: Any, common: Any) -> None:
    """Add the ``db`` command group to the ``renkei`` parser (``add(name, handler, help)``)."""
    db = add("db", cmd_db, "the PostgreSQL roles and schemas of the components (print or apply)")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    roles = actions.add_parser(
        "roles", parents=[common], help="one role and one schema per component: print the SQL, or --apply it",
        description="Print the SQL creating one PostgreSQL role and schema per component (SCRAM verifiers, "
                    "secrets kept in the roles' password file), or apply it as the administrator.")
    roles.add_argument("--apply", action="store_true",
                       help="apply now as the administrator named in --pg-dsn (the embedded stack's superuser)")


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.pgdsn import layout_for, names_user

    if args.apply:
        settings = _running_postgres(settings)
        if not names_user(settings.pg_dsn):
            raise ConfigError("--apply: name the administrator in --pg-dsn (postgresql://ADMIN@host/db; its password "
                              "from ?passfile= or a password file, not the command line)")
        return await _apply(settings, args)
    layout = layout_for(settings)
    statements = await _statements(settings, layout)
    if args.json:
        _print_json({"roles": layout.roles, "schemas": layout.schemas, "statements": statements,
                     "passfile": str(settings.resolved_pg_passfile), "applied": False})
    else:
        sys.stdout.write(_script(settings, layout, statements))
    return 0


async def _statements(settings: Settings, layout: Any) -> list[str]:
    import asyncio

    from infra.platform.pglayout import (
        HUB,
        SHARED_TABLES_OF,
        namespace_statements,
        role_statements,
        scram_verifier,
        shared_grant_statements,
    )
    from infra.platform.pgpass import ensure_secrets

    secrets, _ = await asyncio.to_thread(ensure_secrets, settings.resolved_pg_passfile, layout.roles,
                                         comment="Renkei's component roles (infra/platform/pglayout.py)")
    database = _database(settings)
    verifiers = {r: scram_verifier(secrets[r]) for r in layout.roles}
    hub = layout.schema(HUB)
    # The portal's read of the provision records, for once the hub has created them (skipped before).
    later = [f"DO $$ BEGIN IF to_regclass('\"{hub}\".{t}') IS NOT NULL THEN "
             f"{shared_grant_statements(layout, {(hub, t)})[0]}; END IF; END $$" for t in SHARED_TABLES_OF[HUB]]
    return (role_statements(layout, database, verifiers, existing=None)
            + namespace_statements(layout, database, role_defaults=not layout.schema_prefix) + later)


def _running_postgres(settings: Settings) -> Settings:
    """``settings`` with the embedded PostgreSQL running under the state folder, where none is configured
    (this command needs no broker)."""
    import dataclasses

    from infra.core.errors import StackError
    from infra.platform.embedded import read_state

    if not settings.embedded_pg:
        return settings
    running = [c for c in read_state(settings.state_dir) if c.name == "postgres" and c.alive()]
    if not running:
        raise StackError(f"no running embedded PostgreSQL under {settings.state_dir}: start it with "
                         "`renkei up --detach`, or name the database with RENKEI_PG_DSN")
    return dataclasses.replace(settings, pg_dsn=running[0].endpoint)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _database(settings: Settings) -> str:
    import urllib.parse

    name = urllib.parse.urlsplit(settings.pg_dsn).path.lstrip("/") if settings.pg_dsn else ""
    return name or "renkei"


def _script(settings: Settings, layout: Any, statements: list[str]) -> str:
    lines = ["-- Renkei's database layout: one role and one schema per component (docs/production.md).",
             f"-- Secrets: {settings.resolved_pg_passfile} (each component's deployment gets its own line).",
             "-- Run as a database administrator (psql -v ON_ERROR_STOP=1 -f roles.sql), and again after the",
             "-- hub's first start: the portal's read of the provision records needs the hub's tables.", "BEGIN;"]
    lines += [s + ";" for s in statements]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


async def _apply(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from infra.platform.pgdsn import admin_dsn, layout_for
    from infra.platform.pgprovision import grant_shared, provision

    layout = layout_for(settings)
    conn = await asyncpg.connect(admin_dsn(settings))
    try:
        done = await provision(conn, layout, settings.resolved_pg_passfile, reassert=True)
        shared = await grant_shared(conn, layout)
    finally:
        await conn.close()
    report = {"roles": layout.roles, "schemas": layout.schemas, "created": done.created,
              "shared_grants": shared, "passfile": str(settings.resolved_pg_passfile), "applied": True}
    if args.json:
        _print_json(report)
    else:
        print(f"{len(layout.roles)} roles ({len(done.created)} created now), {len(layout.schemas)} schemas, "
              f"{shared} shared-table grants; secrets in {settings.resolved_pg_passfile}")
    return 0
