"""Applying the database layout (:mod:`infra.platform.pglayout`) to a server, as its administrator.

- :func:`provision` — the component roles (secrets from the roles' password file, generated
  where missing; the server gets SCRAM verifiers only) and the namespace's schemas. Idempotent,
  serialised by an advisory lock; ``renkei up``, the test harness and ``renkei db roles --apply``
  run it.
- :func:`grant_shared` — the cross-component rights on tables their owners have created by now
  (the portal's read of the provision records, the bank connectors' handover rows).
- :func:`drop_namespace` — a test namespace's schemas, after the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from infra.core.errors import StackError
from infra.core.settings import Settings
from infra.domain.participants import Participants
from infra.platform.pglayout import (
    SHARED_TABLES_OF,
    DbLayout,
    drop_statements,
    namespace_statements,
    role_statements,
    scram_verifier,
    shared_grant_steps,
)
from infra.platform.pgpass import ensure_secrets

__all__ = ["Provisioned", "drop_database_namespace", "drop_namespace", "grant_shared", "grant_shared_when_ready",
           "provision", "provision_database"]

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('renkei.provision', 0))"


@dataclass(frozen=True)
class Provisioned:
    """What :func:`provision` did: roles created now, roles whose secret was (re)set, schemas ensured."""

    created: list[str]
    secrets_set: list[str]
    schemas: list[str]


async def _run(conn: asyncpg.Connection, statements: list[str]) -> None:
    """``statements`` in one transaction and one round trip (none takes parameters)."""
    async with conn.transaction():
        await conn.execute(";\n".join([_LOCK, *statements]))


async def provision(conn: asyncpg.Connection, layout: DbLayout, passfile: Path, *,
                    reassert: bool = False) -> Provisioned:
    """Create the missing roles and the namespace's schemas; (re)set secrets where needed.

    A role gets its secret (as a SCRAM verifier) when it is created, when the password file had no
    secret for it, and — with ``reassert`` (``renkei up``) — every time, so the file is the truth.
    """
    database = await conn.fetchval("SELECT current_database()")
    existing = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])",
                                                       layout.roles)}
    secrets, fresh = await asyncio.to_thread(ensure_secrets, passfile, layout.roles,
                                             comment="Renkei's component roles (infra/platform/pglayout.py)")
    to_set = [r for r in layout.roles if reassert or r in fresh or r not in existing]
    verifiers = await asyncio.to_thread(lambda: {r: scram_verifier(secrets[r]) for r in to_set})
    statements = role_statements(layout, database, verifiers, existing, reassert=reassert)
    statements += namespace_statements(layout, database, role_defaults=not layout.schema_prefix)
    try:
        await _run(conn, statements)
    except asyncpg.InsufficientPrivilegeError as exc:
        user = await conn.fetchval("SELECT current_user")
        raise StackError(f"PostgreSQL user {user} cannot create Renkei's roles and schemas ({exc.args[0]}): "
                         "connect as an administrator, or have one apply `renkei db roles` "
                         "(docs/production.md)") from None
    return Provisioned(created=[r for r in layout.roles if r not in existing], secrets_set=to_set,
                       schemas=layout.schemas)


async def _relations(conn: asyncpg.Connection, schemas: list[str]) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'S')", schemas)
    return {(r["nspname"], r["relname"]) for r in rows}


async def grant_shared(conn: asyncpg.Connection, layout: DbLayout) -> int:
    """Grant the cross-component rights on the tables that exist now; returns how many statements ran.

    One transaction per table (:class:`~infra.platform.pglayout.GrantStep`), never one for all: a
    transaction that locks the tables one by one while the workers run would hold the first while
    waiting for the last, and a worker's statement locking them in the other order deadlocks with it
    (the bank simulator's start-up clean-up did, at 1,000 banks). Holding one table at a time, the
    grants wait for a worker's transaction at most, and nothing waits for them in return.
    """
    steps = shared_grant_steps(layout, await _relations(conn, layout.schemas))
    for step in steps:
        await _run(conn, list(step.statements))
    return sum(len(step.statements) for step in steps)


async def grant_shared_when_ready(settings: Settings, owners: Iterable[str], *, timeout: float = 60.0,
                                  participants: Participants | None = None) -> None:
    """Wait until the ``owners`` components (e.g. the hub, the bank simulator) have created their shared
    tables, then :func:`grant_shared`. A worker's consumer group can be ready before its migrations
    ran (the hub migrates in a faust task), hence the wait."""
    from infra.platform.pgdsn import admin_dsn, layout_for

    layout = layout_for(settings, participants)
    expected = {(layout.schema(o), t) for o in owners if o in layout.components for t in SHARED_TABLES_OF.get(o, ())}
    conn = await asyncpg.connect(admin_dsn(settings))
    try:
        deadline = time.monotonic() + timeout
        while missing := expected - await _relations(conn, layout.schemas):
            if time.monotonic() > deadline:
                raise StackError("the components did not create their tables within "
                                 f"{timeout:.0f} s: {', '.join(sorted('.'.join(m) for m in missing))}")
            await asyncio.sleep(0.2)
        await grant_shared(conn, layout)
    finally:
        await conn.close()


async def drop_namespace(conn: asyncpg.Connection, layout: DbLayout) -> None:
    """Drop the namespace's schemas and everything in them (the roles stay)."""
    await _run(conn, drop_statements(layout))


async def drop_database_namespace(settings: Settings) -> None:
    """:func:`drop_namespace` of ``settings``' namespace, through its administrator's DSN (after a test)."""
    from infra.platform.pgdsn import admin_dsn, layout_for

    conn = await asyncpg.connect(admin_dsn(settings))
    try:
        await drop_namespace(conn, layout_for(settings))
    finally:
        await conn.close()


async def provision_database(settings: Settings, *, reassert: bool = False,
                             participants: Participants | None = None) -> Provisioned:
    """:func:`provision` through the administrator's DSN of ``settings`` (the roles' password file:
    ``settings.resolved_pg_passfile``)."""
    from infra.platform.pgdsn import admin_dsn, layout_for

    conn = await asyncpg.connect(admin_dsn(settings))
    try:
        return await provision(conn, layout_for(settings, participants), settings.resolved_pg_passfile,
                               reassert=reassert)
    finally:
        await conn.close()
