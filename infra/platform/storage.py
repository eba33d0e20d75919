"""PostgreSQL plumbing: the connection pool, the migration runner and the replay guard.

- :func:`create_pool` — an asyncpg pool with bounded size and a command timeout.
- :func:`migrate` — numbered SQL migrations applied once per component, in one
  transaction, serialised by an advisory lock so concurrent workers don't race.
- :func:`claim` — the idempotency / replay guard (DESIGN §7): inserts message
  ids into ``processed_messages`` and returns the ones that were new. Call it in
  the same transaction as the effect, so a redelivered message finds its id
  already claimed exactly when its effect is already committed.
- :func:`everywhere`, :func:`count_everywhere` — for whoever observes several
  components' schemas at once (chaos, benchmarks, tests): one table name in each
  of them, as one relation.

Each component works in its own schema as its own role (``infra.platform.pglayout``); the
connection's search path says where. A migration recorded in a later schema of
the path counts as applied: that is how a bank's channel connector uses the
simulator's claims, outbox and lease tables instead of creating its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

__all__ = [
    "IDEMPOTENCY_MIGRATIONS",
    "applied_versions",
    "claim",
    "count_everywhere",
    "create_pool",
    "everywhere",
    "forget_before",
    "migrate",
    "migrate_idempotency",
]

Executor = asyncpg.Pool | asyncpg.Connection

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS renkei_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""

IDEMPOTENCY_MIGRATIONS: list[str] = [
    """
    CREATE TABLE processed_messages (
        consumer     text        NOT NULL,
        message_id   uuid        NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, message_id)
    );
    CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);
    """,
]


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float = 30.0,
    **kw: Any,
) -> asyncpg.Pool:
    """An asyncpg pool; extra keyword arguments go to :func:`asyncpg.create_pool`."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout, **kw
    )


async def migrate(pool_or_conn: Executor, component: str, migrations: Sequence[str]) -> list[int]:
    """Apply ``migrations`` (version = index + 1) not yet applied for ``component``.

    All pending migrations run in one transaction, under a transaction-scoped
    advisory lock keyed by the current schema, so two workers starting together
    apply each migration once. Returns the versions applied now. Versions the
    database has beyond ``migrations`` (a newer worker migrated first) are left alone.
    """
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _migrate(conn, component, migrations)
    return await _migrate(pool_or_conn, component, migrations)


async def _migrate(conn: asyncpg.Connection, component: str, migrations: Sequence[str]) -> list[int]:
    async with conn.transaction():
        # One lock per schema: it also covers creating renkei_migrations itself.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('renkei_migrations:' || current_schema(), 0))"
        )
        await conn.execute(MIGRATIONS_TABLE)
        done = set(await _versions(conn, component))
        applied: list[int] = []
        for version, sql in enumerate(migrations, start=1):
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO renkei_migrations (component, version) VALUES ($1, $2)", component, version
            )
            applied.append(version)
        return applied


_RECORDS_ON_PATH = """
SELECT n.nspname FROM unnest(current_schemas(false)) WITH ORDINALITY AS p(nspname, pos)
JOIN pg_namespace n ON n.nspname = p.nspname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $1 AND c.relkind IN ('r', 'p')
WHERE has_table_privilege(c.oid, 'SELECT')
ORDER BY p.pos
"""


async def _schemas_with(conn: Executor, table: str) -> list[str]:
    """The schemas on the search path that have ``table`` and let us read it, in path order."""
    return [r["nspname"] for r in await conn.fetch(_RECORDS_ON_PATH, table)]


async def _versions(conn: Executor, component: str) -> list[int]:
    """Versions of ``component`` recorded in any schema of the search path."""
    found: set[int] = set()
    for schema in await _schemas_with(conn, "renkei_migrations"):
        found.update(r["version"] for r in await conn.fetch(
            f'SELECT version FROM "{schema}".renkei_migrations WHERE component = $1', component))
    return sorted(found)


async def applied_versions(pool_or_conn: Executor, component: str) -> list[int]:
    """Versions of ``component`` recorded as applied (empty before the first migration), in any schema
    of the search path."""
    return await _versions(pool_or_conn, component)


async def everywhere(pool_or_conn: Executor, table: str) -> str:
    """A FROM item: ``table`` of every schema of the search path that has it, as one relation (``UNION ALL``;
    each component migrated the same columns). For observers: e.g. every component's dead letters."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", table):
        raise ValueError(f"not a table name: {table!r}")
    schemas = await _schemas_with(pool_or_conn, table)
    if not schemas:
        return f'"{table}"'  # none: PostgreSQL says the relation does not exist
    return "(" + " UNION ALL ".join(f'SELECT * FROM "{schema}"."{table}"' for schema in schemas) + ")"


async def count_everywhere(pool_or_conn: Executor, table: str, where: str = "TRUE", *args: Any) -> int:
    """Rows of ``table`` matching ``where`` (SQL with ``$n`` for ``args``), over every schema of the search path
    that has it (:func:`everywhere`): e.g. messages still unsent in every component's outbox."""
    return await pool_or_conn.fetchval(f"SELECT count(*) FROM {await everywhere(pool_or_conn, table)} t WHERE {where}",
                                       *args)


async def migrate_idempotency(pool_or_conn: Executor) -> list[int]:
    """Create ``processed_messages`` (component ``idempotency``)."""
    return await migrate(pool_or_conn, "idempotency", IDEMPOTENCY_MIGRATIONS)


_CLAIM = """
INSERT INTO processed_messages (consumer, message_id)
SELECT c, id FROM unnest($1::text[], $2::uuid[]) AS t(c, id)
ON CONFLICT DO NOTHING
RETURNING consumer, message_id
"""


async def claim(
    conn: asyncpg.Connection, consumer: str, message_ids: Iterable[uuid.UUID | str]
) -> set[uuid.UUID]:
    """Claim ``message_ids`` for ``consumer``; return the ids that were not claimed before.

    Run it inside the transaction that performs the effect: if that transaction
    rolls back, the claim does too. Ids are de-duplicated and sorted first, so
    two workers claiming overlapping batches lock index entries in the same
    order (no deadlock); the later one waits, then sees the ids as taken.
    """
    return {mid for _, mid in await claim_each(conn, [(consumer, i) for i in message_ids])}


async def claim_each(
    conn: asyncpg.Connection, claims: Iterable[tuple[str, uuid.UUID | str]]
) -> set[tuple[str, uuid.UUID]]:
    """:func:`claim` for several consumers in one statement: ``(consumer, message id)`` pairs; returns the
    pairs not claimed before. A process serving many identities (the bank simulator's 1,000 banks) claims
    a poll's messages in one round trip, not one per identity; sorted the same way, so no deadlock."""
    pairs = sorted({(c, i if isinstance(i, uuid.UUID) else uuid.UUID(i)) for c, i in claims})
    if not pairs:
        return set()
    rows = await conn.fetch(_CLAIM, [c for c, _ in pairs], [i for _, i in pairs])
    return {(r["consumer"], uuid.UUID(bytes=r["message_id"].bytes)) for r in rows}


async def forget_before(pool_or_conn: Executor, before: datetime) -> int:
    """Delete claims older than ``before``; returns how many.

    Only safe for ids whose messages can no longer be accepted (older than the
    longest envelope lifetime: the envelope check refuses them as EXPIRED).
    """
    status = await pool_or_conn.execute("DELETE FROM processed_messages WHERE processed_at < $1", before)
    return int(status.split()[-1])
