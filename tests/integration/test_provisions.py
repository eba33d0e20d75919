"""Provision records on the real PostgreSQL: append, idempotency, head seals, chain verification, tampering.

``verify_chain`` is the database-only check; tampering by whoever runs the database is detected against
the published checkpoints (tests/integration/test_records_checkpoints.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import uuid
from datetime import datetime, timezone

import pytest

from infra.crypto.records_keys import RecordsKey, Seal
from infra.platform.storage import claim, create_pool, migrate_idempotency
from infra.records.provisions import (
    GENESIS_HASH,
    HEAD_DOMAIN,
    ProvisionStatus,
    ProvisionStore,
    RecordDraft,
    bucket_of,
    canonical_bytes,
    chain_hash,
    from_avro,
    head_statement,
    to_avro,
)
from schemas import codec

pytestmark = pytest.mark.integration


def token() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")


def draft(person: str, *, provider: str = "registry", message_id: uuid.UUID | None = None, **over) -> RecordDraft:
    fields = dict(
        message_id=message_id or uuid.uuid4(), correlation_id=uuid.uuid4(), person_token=person,
        requester="agency-nta", provider=provider, data_item="public_funds_account",
        legal_basis="account-registration-act/art9", requested_at=datetime.now(timezone.utc),
    )
    fields.update(over)
    return RecordDraft(**fields)


@pytest.fixture
async def pool(pg_dsn):
    pool = await create_pool(pg_dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()


KEY = RecordsKey.generate()


@pytest.fixture
async def store(pool) -> ProvisionStore:
    store = ProvisionStore(pool, KEY)
    assert await store.migrate() == [1, 2, 3]
    assert await store.migrate() == []
    return store


async def append(pool, store, drafts):
    async with pool.acquire() as conn:
        async with conn.transaction():
            return await store.append(conn, drafts)


async def test_append_chains_records_and_reappend_is_idempotent(pool, store):
    person = token()
    drafts = [draft(person) for _ in range(3)]
    written = await append(pool, store, drafts)
    assert [r.seq for r in written] == [1, 2, 3]
    assert written[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in written[1:]] == [r.hash for r in written[:-1]]
    # redelivery: the same drafts (plus one new one) write only the new one
    extra = draft(person, status=ProvisionStatus.PROVIDED, provided_at=datetime.now(timezone.utc))
    again = await append(pool, store, drafts + [extra])
    assert [(r.seq, r.message_id) for r in again] == [(4, extra.message_id)]
    assert await append(pool, store, drafts) == []
    stored = await store.for_person(person)
    assert stored == written + again
    verdict = await store.verify_chain(person)
    assert (verdict.ok, verdict.checked, verdict.problems) == (True, 4, [])


async def test_fan_out_makes_one_record_per_provider(pool, store):
    person = token()
    mid = uuid.uuid4()
    banks = [f"bank-{9000 + n}" for n in range(5)]
    drafts = [draft(person, message_id=mid, requester="dicj", provider=b) for b in banks]
    written = await append(pool, store, drafts + drafts[:2])  # duplicates inside one batch too
    assert [r.provider for r in written] == banks
    assert await append(pool, store, drafts) == []
    assert (await store.verify_chain(person)).ok


async def test_by_message_ids_finds_written_records(pool, store):
    person = token()
    mid = uuid.uuid4()
    written = await append(pool, store, [draft(person, message_id=mid, provider=f"bank-{n}") for n in range(3)]
                           + [draft(person)])
    async with pool.acquire() as conn:
        found = await store.by_message_ids(conn, [mid, str(mid), uuid.uuid4()])
    assert found == written[:3]
    assert await store.by_message_ids(pool, []) == []


async def test_one_batch_many_people_each_gets_its_own_chain(pool, store):
    people = [token() for _ in range(4)]
    drafts = [draft(p) for _ in range(3) for p in people]
    written = await append(pool, store, drafts)
    for p in people:
        mine = [r for r in written if r.person_token == p]
        assert [r.seq for r in mine] == [1, 2, 3]
        assert (await store.verify_chain(p)).ok


async def test_append_outside_a_transaction_is_refused(pool, store):
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await store.append(conn, [draft(token())])


async def test_append_without_the_records_key_writes_nothing(pool, store):
    """Heads are sealed as they move: a writer without the records key records nothing (so forwards nothing)."""
    person = token()
    with pytest.raises(RuntimeError, match="records key"):
        await append(pool, ProvisionStore(pool), [draft(person)])
    assert await store.for_person(person) == []


async def test_every_moved_head_is_sealed_by_the_records_key(pool, store):
    people = [token() for _ in range(3)]
    await append(pool, store, [draft(p) for p in people for _ in range(2)])
    rows = {r["person_token"]: r for r in await pool.fetch(
        "SELECT person_token, seq, last_hash, seal, bucket FROM provision_chain_heads "
        "WHERE person_token = ANY($1::text[])", people)}
    keys, stranger = KEY.public(), RecordsKey.generate().public()
    seals = [Seal.from_bytes(rows[p]["seal"]) for p in people]
    assert len({s.signature for s in seals}) == 1 and [s.size for s in seals] == [3, 3, 3]  # one signature a batch
    for p, seal in zip(people, seals):
        row = rows[p]
        assert row["seq"] == 2 and row["bucket"] == bucket_of(p)  # the SQL bucket column agrees with Python
        assert keys.check(HEAD_DOMAIN, head_statement(p, 2, bytes(row["last_hash"])), seal)
        assert not keys.check(HEAD_DOMAIN, head_statement(p, 1, bytes(row["last_hash"])), seal)  # another head
        assert not stranger.check(HEAD_DOMAIN, head_statement(p, 2, bytes(row["last_hash"])), seal)
    other = people[1]
    assert not keys.check(HEAD_DOMAIN, head_statement(people[0], 2, bytes(rows[other]["last_hash"])), seals[1])


async def test_rolled_back_append_leaves_no_record_and_no_claim(pool, store):
    """The hub's unit of work: claim + append in one transaction; a failure undoes both."""
    await migrate_idempotency(pool)
    person = token()
    d = draft(person)

    class ForwardFailed(Exception):
        pass

    async with pool.acquire() as conn:
        with pytest.raises(ForwardFailed):
            async with conn.transaction():
                assert await claim(conn, "hub", [d.message_id]) == {d.message_id}
                assert len(await store.append(conn, [d])) == 1
                raise ForwardFailed
        assert await store.for_person(person) == []
        async with conn.transaction():
            assert await claim(conn, "hub", [d.message_id]) == {d.message_id}
            assert [r.seq for r in await store.append(conn, [d])] == [1]
    assert (await store.verify_chain(person)).ok


async def test_not_disclosed_records_are_hidden_by_default(pool, store):
    person = token()
    await append(pool, store, [draft(person), draft(person, not_disclosed=True), draft(person)])
    assert [r.seq for r in await store.for_person(person)] == [1, 3]
    everything = await store.for_person(person, include_not_disclosed=True)
    assert [(r.seq, r.not_disclosed) for r in everything] == [(1, False), (2, True), (3, False)]
    assert (await store.verify_chain(person)).ok  # hidden records still chain


async def chain_of(pool, store, n: int) -> str:
    person = token()
    await append(pool, store, [draft(person) for _ in range(n)])
    return person


async def test_deleting_a_middle_record_is_detected(pool, store):
    person = await chain_of(pool, store, 5)
    await pool.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 3", person)
    verdict = await store.verify_chain(person)
    assert not verdict.ok
    assert verdict.checked == 4
    assert verdict.problems == ["seq 3 missing (deleted)"]


async def test_deleting_the_last_record_is_detected(pool, store):
    person = await chain_of(pool, store, 5)
    await pool.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 5", person)
    verdict = await store.verify_chain(person)
    assert verdict.problems == ["head says seq 5, last record is 4 (tail deleted)"]


async def test_altering_a_field_is_detected(pool, store):
    person = await chain_of(pool, store, 5)
    await pool.execute(
        "UPDATE provision_records SET requester = 'agency-city-minato' WHERE person_token = $1 AND seq = 2", person)
    verdict = await store.verify_chain(person)
    assert verdict.problems == ["seq 2: hash mismatch (altered)"]


async def test_hiding_a_record_by_flipping_not_disclosed_is_detected(pool, store):
    person = await chain_of(pool, store, 3)
    await pool.execute(
        "UPDATE provision_records SET not_disclosed = true WHERE person_token = $1 AND seq = 1", person)
    assert (await store.verify_chain(person)).problems == ["seq 1: hash mismatch (altered)"]


async def test_altering_and_rehashing_a_record_breaks_the_link(pool, store):
    person = await chain_of(pool, store, 3)
    victim = (await store.for_person(person))[1]
    forged = dataclasses.replace(victim, data_item="deposit_account_holdings")
    forged_hash = chain_hash(forged.prev_hash, canonical_bytes(forged))
    await pool.execute("UPDATE provision_records SET data_item = $2, hash = $3 WHERE record_id = $1",
                       victim.record_id, forged.data_item, forged_hash)
    assert (await store.verify_chain(person)).problems == ["seq 3: prev_hash does not match seq 2 (chain broken)"]


async def test_concurrent_appenders_for_one_person_keep_one_valid_chain(pool, store):
    person = token()
    others = [token() for _ in range(3)]

    async def worker(n: int) -> int:
        total = 0
        for _ in range(10):
            # each batch also touches other people, in varying order: no deadlock
            batch = [draft(person)] + [draft(o) for o in (others if n % 2 else others[::-1])]
            total += len(await append(pool, store, batch))
        return total

    written = await asyncio.gather(*(worker(n) for n in range(6)))
    assert sum(written) == 6 * 10 * 4
    verdict = await store.verify_chain(person)
    assert (verdict.ok, verdict.checked) == (True, 60)
    for o in others:
        assert (await store.verify_chain(o)).checked == 60


async def test_concurrent_redelivery_of_the_same_drafts_writes_once(pool, store):
    person = token()
    drafts = [draft(person) for _ in range(20)]
    results = await asyncio.gather(*(append(pool, store, drafts) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 20]
    assert (await store.verify_chain(person)).checked == 20


async def test_records_round_trip_through_the_avro_codec(pool, store):
    person = token()
    [record] = await append(pool, store, [draft(person, status="NOT_REGISTERED")])  # a v1 record
    decoded = codec.decode(codec.encode("provision_record", to_avro(record)), "provision_record")
    assert decoded["person_token"] == b"" and decoded["status"] == "NOT_REGISTERED"  # published without the token
    assert dataclasses.replace(from_avro(decoded), person_token=person) == record


async def test_v2_records_with_procedure_and_outcome_are_stored_and_published_without_a_token(pool, store):
    person, pseudonym = token(), token()
    v2 = {"person": pseudonym, "procedure": "income-tax-refund"}
    written = await append(pool, store, [dataclasses.replace(draft(person), **v2),
                                         dataclasses.replace(draft(person, status="BLOCKED"), **v2)])
    assert [r.version for r in written] == [2, 2]
    assert await store.for_person(person) == written  # the new columns round-trip through PostgreSQL
    verdict = await store.verify_chain(person)
    assert verdict.ok and verdict.checked == 2
    for record in written:
        published = codec.decode(codec.encode("provision_record", to_avro(record)), "provision_record")
        assert published["person_token"] == b"" and published["person"] == pseudonym
        assert chain_hash(record.prev_hash, canonical_bytes(from_avro(published))) == record.hash
    # Tampering with the new columns is caught like any other field.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE provision_records SET procedure = 'child-allowance' WHERE record_id = $1",
                           written[0].record_id)
    assert "seq 1: hash mismatch (altered)" in (await store.verify_chain(person)).problems


@pytest.mark.parametrize("people", [500, 50, 1])
async def test_a_batch_of_500_extends_every_chain_in_one_append(pool, store, people):
    """Its speed is measured by ``python -m benchmarks.provisions_bench``, not asserted here."""
    persons = [token() for _ in range(people)]
    drafts = [draft(persons[n % people]) for n in range(500)]
    await append(pool, store, [draft(p) for p in persons])  # existing heads, as in steady state
    written = await append(pool, store, drafts)
    assert len(written) == 500
    for p in persons:
        verdict = await store.verify_chain(p)
        assert verdict.ok and verdict.checked == 1 + 500 // people
