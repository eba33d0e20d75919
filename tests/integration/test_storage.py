"""Storage on the real PostgreSQL: migrations and the idempotency / replay guard."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from infra.platform.storage import (
    applied_versions,
    claim,
    claim_each,
    create_pool,
    forget_before,
    migrate,
    migrate_idempotency,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(pg_dsn):
    pool = await create_pool(pg_dsn, min_size=1, max_size=6)
    await migrate_idempotency(pool)
    yield pool
    await pool.close()


async def test_claim_twice_returns_nothing_the_second_time(pool):
    ids = [uuid.uuid4() for _ in range(5)]
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await claim(conn, "hub", ids) == set(ids)
        async with conn.transaction():
            assert await claim(conn, "hub", ids) == set()
            # a partly new batch claims only the new ids; strings are accepted too
            fresh = uuid.uuid4()
            assert await claim(conn, "hub", [str(ids[0]), str(fresh), fresh]) == {fresh}


async def test_claims_are_per_consumer(pool):
    mid = uuid.uuid4()
    async with pool.acquire() as conn:
        assert await claim(conn, "hub", [mid]) == {mid}
        assert await claim(conn, "registry", [mid]) == {mid}
        assert await claim(conn, "hub", []) == set()


async def test_claims_of_several_consumers_in_one_statement_are_each_consumers_own(pool):
    """The bank simulator claims a poll for its 1,000 identities at once: one bank's claim is not another's."""
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        assert await claim(conn, "bank-9000", [a]) == {a}  # claimed earlier, one consumer at a time
        got = await claim_each(conn, [("bank-9000", a), ("bank-9001", a), ("bank-9001", str(b)), ("bank-9001", b),
                                      ("bank-9002", c)])
        assert got == {("bank-9001", a), ("bank-9001", b), ("bank-9002", c)}
        assert await claim_each(conn, [("bank-9001", a), ("bank-9002", c)]) == set()
        assert await claim_each(conn, []) == set()
        assert await claim(conn, "bank-9000", [b]) == {b}


async def test_a_rolled_back_transaction_does_not_claim(pool):
    mid = uuid.uuid4()

    class EffectFailed(Exception):
        pass

    async with pool.acquire() as conn:
        with pytest.raises(EffectFailed):
            async with conn.transaction():
                assert await claim(conn, "hub", [mid]) == {mid}
                raise EffectFailed
        async with conn.transaction():
            assert await claim(conn, "hub", [mid]) == {mid}


async def test_concurrent_claims_take_each_id_exactly_once(pool):
    ids = [uuid.uuid4() for _ in range(200)]

    async def worker(batch: list[uuid.UUID]) -> set[uuid.UUID]:
        async with pool.acquire() as conn:
            async with conn.transaction():
                won = await claim(conn, "hub", batch)
                await asyncio.sleep(0.05)  # hold the rows while the other worker tries
                return won

    # overlapping batches in opposite orders: sorting inside claim prevents deadlocks
    results = await asyncio.gather(worker(ids), worker(ids[::-1]), worker(ids[50:150]), worker(ids[::3]))
    union = set().union(*results)
    assert union == set(ids)
    assert sum(len(r) for r in results) == len(ids)


async def test_forget_before_drops_old_claims(pool):
    old, new = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        await claim(conn, "hub", [old, new])
        await conn.execute("UPDATE processed_messages SET processed_at = now() - interval '2 days' WHERE message_id = $1", old)
        assert await forget_before(conn, datetime.now(timezone.utc) - timedelta(days=1)) == 1
        assert await claim(conn, "hub", [old, new]) == {old}


MIGRATIONS = [
    "CREATE TABLE widgets (id int PRIMARY KEY)",
    "ALTER TABLE widgets ADD COLUMN name text",
    "INSERT INTO widgets VALUES (1, 'one')",
]


async def test_migrations_apply_once_and_in_order(pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await applied_versions(conn, "widgets") == []
        assert await migrate(conn, "widgets", MIGRATIONS[:2]) == [1, 2]
        assert await migrate(conn, "widgets", MIGRATIONS[:2]) == []
        assert await migrate(conn, "widgets", MIGRATIONS) == [3]
        assert await migrate(conn, "widgets", MIGRATIONS) == []
        assert await applied_versions(conn, "widgets") == [1, 2, 3]
        assert await conn.fetchval("SELECT count(*) FROM widgets") == 1
        # an older worker with fewer migrations leaves the newer ones alone
        assert await migrate(conn, "widgets", MIGRATIONS[:1]) == []
    finally:
        await conn.close()


async def test_a_failing_migration_applies_nothing(pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, "broken", ["CREATE TABLE gadgets (id int)", "THIS IS NOT SQL"])
        assert await applied_versions(conn, "broken") == []
        assert await conn.fetchval("SELECT to_regclass('gadgets')") is None
    finally:
        await conn.close()


async def test_concurrent_migrations_do_not_race(pg_dsn):
    pool = await create_pool(pg_dsn, min_size=1, max_size=8)
    try:
        slow = ["CREATE TABLE races (id int); SELECT pg_sleep(0.1)", "INSERT INTO races VALUES (1)"]
        results = await asyncio.gather(*(migrate(pool, "races", slow) for _ in range(8)))
        assert sorted(results, key=len) == [[]] * 7 + [[1, 2]]
        assert await pool.fetchval("SELECT count(*) FROM races") == 1
        # components are independent
        results = await asyncio.gather(migrate(pool, "a", ["CREATE TABLE ta (id int)"]),
                                       migrate(pool, "b", ["CREATE TABLE tb (id int)"]))
        assert results == [[1], [1]]
    finally:
        await pool.close()
