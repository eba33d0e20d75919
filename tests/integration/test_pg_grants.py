"""The shared grants run while the workers do (issue 18): no deadlock with the bank simulator's start-up.

``renkei up`` (and the bench's platforms) grant the bank connectors their rows of the simulator's handover
tables once the simulator has created them — so while the simulator already works. Its start-up clean-up
(``connectors.bank_sim.drain_parked``) deletes parked rows whose message is claimed or dead-lettered: one
statement that locks ``bank_parked_messages`` first, then ``processed_messages`` and
``participant_dead_letters``. The grants once ran in one transaction that locked the tables in the other
order, and the two deadlocked (the 1,000-bank platform of ``renkei bench`` did, every run). Here the same
interleaving runs on the real embedded PostgreSQL, the simulator's statement split at the point where it
holds its first lock, and both sides finish.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from connectors.bank_sim import HANDOVER_MIGRATIONS
from infra.platform.pgdsn import admin_dsn, component_dsn, layout_for
from infra.platform.pglayout import BANKS, HANDOVER_TABLES, ident
from infra.platform.pgprovision import grant_shared
from infra.platform.storage import migrate, migrate_idempotency
from infra.tools.harness import eventually
from streams.participant import RUNTIME_MIGRATIONS

pytestmark = pytest.mark.integration


async def _waiting_on(observer: asyncpg.Connection, pid: int, table: str, timeout: float = 60.0) -> None:
    """Until backend ``pid`` waits for a lock on ``table`` (``pg_locks``: not granted)."""
    await eventually(lambda: observer.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.pid = $1 AND NOT l.granted AND c.relname = $2)", pid, table),
        timeout=timeout, interval=0.05, what=f"the grants to wait for {table}")


async def test_the_grants_finish_while_the_simulators_clean_up_holds_its_first_lock(settings):
    layout = layout_for(settings)
    assert len(layout.banks) >= 2
    sim = await asyncpg.connect(component_dsn(settings, BANKS))  # the simulator's own role and schema
    admin = await asyncpg.connect(admin_dsn(settings))
    observer = await asyncpg.connect(admin_dsn(settings))
    try:
        await migrate_idempotency(sim)  # the tables the simulator creates as it starts
        await migrate(sim, "participant-runtime", RUNTIME_MIGRATIONS)
        await migrate(sim, "bank-handover", HANDOVER_MIGRATIONS)
        bank = layout.banks[0]

        async with sim.transaction():
            # The clean-up's first lock: its DELETE's target (ROW EXCLUSIVE on the parked messages).
            await sim.execute("DELETE FROM bank_parked_messages WHERE bank_id = $1 AND false", bank)
            grants = asyncio.create_task(grant_shared(admin, layout))
            await _waiting_on(observer, admin.get_server_pid(), "bank_parked_messages")
            # Its next locks, the claims and the dead letters it checks against: a grant transaction still
            # holding those (the one transaction for every table) would deadlock here, and PostgreSQL would
            # abort one side after deadlock_timeout.
            done = await asyncio.wait_for(sim.fetchval(
                "SELECT count(*) FROM processed_messages c, participant_dead_letters d "
                "WHERE c.consumer = $1 OR d.participant = $1", bank), 30)
            assert done == 0
            assert not grants.done()  # still waiting for the simulator's transaction, as it should
        ran = await asyncio.wait_for(grants, 60)

        policies = {(r["tablename"], r["policyname"]) for r in await observer.fetch(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = $1", layout.schema(BANKS))}
        for table in HANDOVER_TABLES:  # every table got its row security, the last one too
            assert {(table, "ops_read")} | {(table, f"handover_{ident(b)}") for b in layout.banks} <= policies
        assert ran == await grant_shared(admin, layout)  # idempotent: the same statements again, no error
    finally:
        for conn in (sim, admin, observer):
            await conn.close()
