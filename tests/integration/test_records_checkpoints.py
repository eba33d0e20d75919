"""Provision records against whoever runs the database (issue 13 item 4), on the real broker and PostgreSQL.

Each attack is done as the database superuser would do it — plain SQL against the tables, re-hashing
with the public algorithm where the attacker wants a consistent chain — after the hub made and
published a checkpoint.  Each test keeps a bystander whose records are written before and after the
attack and still verify: good traffic goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from infra.crypto.records_keys import RecordsKey
from infra.records.checkpoint_builder import CheckpointRefused
from infra.records.checkpoint_log import CheckpointLog
from infra.records.checkpoints import open_checkpoint, sign_checkpoint
from infra.records.provisions import GENESIS_HASH, bucket_of
from infra.records.records_verify import RecordState, Verdict
from tests.integration.records_world import draft, overwrite, records_world, rehash_from, token

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(settings):
    async with records_world(settings) as w:
        yield w


async def bystander_ok(world, person: str) -> None:
    """Good traffic: one more record for the bystander, checkpointed, and the whole chain verifies."""
    await world.append([draft(person)])
    result = await world.checkpoint()
    assert result.checkpoint is not None
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.OK, verdict.problems
    assert set(verdict.states.values()) == {RecordState.CHECKPOINTED}


async def test_records_are_pending_until_a_checkpoint_covers_them(world):
    person = await world.chain(3)
    verdict = await world.verify(person)
    assert (verdict.verdict, verdict.checkpoint, verdict.problems) == (Verdict.PENDING, None, [])
    assert set(verdict.states.values()) == {RecordState.PENDING}

    result = await world.checkpoint()
    assert (result.checkpoint.number, result.heads, result.left_out) == (1, 1, {})
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.OK and verdict.checkpoint.number == 1 and verdict.checkpoint.published
    assert set(verdict.states.values()) == {RecordState.CHECKPOINTED}

    await world.append([draft(person), draft(person)])
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.PENDING and verdict.pending == 2 and verdict.problems == []
    assert [verdict.states[s] for s in range(1, 6)] == [RecordState.CHECKPOINTED] * 3 + [RecordState.PENDING] * 2
    second = (await world.checkpoint()).checkpoint
    assert second.number == 2 and second.previous == result.checkpoint.digest and second.records == 5
    assert (await world.verify(person)).verdict is Verdict.OK


async def test_the_issue_13_attack_is_detected(world):
    """An agency's two records deleted, the rest renumbered and re-hashed, the head moved: the database-only check
    says OK (the attack that worked), the checkpoint says TAMPERED."""
    person, bystander = token(), await world.chain(2)
    await world.append([draft(person, requester=r) for r in
                        ("agency-city-minato", "agency-nta", "portal", "agency-nta", "agency-mhlw")])
    await world.checkpoint()
    kept = [r for r in await world.records(person) if r.requester != "agency-nta"]
    await overwrite(world.attacker, person, rehash_from(kept))

    assert (await world.store.verify_chain(person)).ok  # fooled: every hash and the head agree
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED
    assert "seq 4-5 missing: checkpoint #1 covers them (deleted)" in verdict.problems
    assert "the chain head is not signed by the records key (moved head)" in verdict.problems
    assert not any(r.requester == "agency-nta" for r in verdict.records)
    await bystander_ok(world, bystander)


async def test_deleting_a_checkpointed_record_is_detected(world):
    person, bystander = await world.chain(5), await world.chain(1)
    await world.checkpoint()
    await world.attacker.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 3", person)
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED and verdict.problems == ["seq 3 missing (deleted)"]
    # the person sees where (between their 2nd and 4th record); what precedes the gap can no longer be proven
    assert verdict.states == {1: RecordState.UNVERIFIED, 2: RecordState.UNVERIFIED, 4: RecordState.CHECKPOINTED,
                              5: RecordState.CHECKPOINTED}
    await bystander_ok(world, bystander)


async def test_rewriting_a_checkpointed_record_is_detected(world):
    person, bystander = await world.chain(4), await world.chain(1)
    await world.checkpoint()
    records = await world.records(person)
    records[1] = dataclasses.replace(records[1], provider="bank-9000")
    await overwrite(world.attacker, person, rehash_from(records, start=2))
    assert (await world.store.verify_chain(person)).ok  # consistent by itself
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED
    assert verdict.problems == ["the records up to seq 4 are not the ones checkpoint #1 covers (rewritten)",
                                "the chain head is not signed by the records key (moved head)"]
    assert RecordState.CHECKPOINTED not in verdict.states.values()
    await bystander_ok(world, bystander)


async def test_altering_a_record_in_place_is_detected_and_located(world):
    person, bystander = await world.chain(3), await world.chain(1)
    await world.checkpoint()
    await world.attacker.execute("UPDATE provision_records SET not_disclosed = true WHERE person_token = $1 "
                                 "AND seq = 2", person)  # hide it from the person
    verdict = await world.verify(person)
    assert verdict.problems == ["seq 2: hash mismatch (altered)"]
    assert verdict.states == {1: RecordState.UNVERIFIED, 2: RecordState.TAMPERED, 3: RecordState.CHECKPOINTED}
    await bystander_ok(world, bystander)


@pytest.mark.parametrize("move_head", [False, True], ids=["head-kept", "head-moved"])
async def test_truncating_checkpointed_records_is_detected(world, move_head):
    person, bystander = await world.chain(5), await world.chain(1)
    await world.checkpoint()
    await overwrite(world.attacker, person, (await world.records(person))[:3], move_head=move_head)
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED
    assert "seq 4-5 missing: checkpoint #1 covers them (deleted)" in verdict.problems
    if move_head:
        assert "the chain head is not signed by the records key (moved head)" in verdict.problems
    await bystander_ok(world, bystander)


async def test_a_moved_head_is_detected(world):
    person, bystander = await world.chain(4), await world.chain(1)
    await world.checkpoint()
    second = (await world.records(person))[1]
    await world.attacker.execute("UPDATE provision_chain_heads SET seq = 2, last_hash = $2 WHERE person_token = $1",
                                 person, second.hash)
    verdict = await world.verify(person)
    assert verdict.problems == [
        "the chain head is not signed by the records key (moved head)",
        "the chain head is at seq 2, before checkpoint #1 (seq 4) (moved head)"]
    assert set(verdict.states.values()) == {RecordState.CHECKPOINTED}  # the records are fine; the head is not
    await bystander_ok(world, bystander)


async def test_a_rewrite_of_records_not_yet_checkpointed_is_detected(world):
    person = await world.chain(2)
    await world.checkpoint()
    await world.append([draft(person), draft(person)])  # pending, protected by the signed head only
    records = await world.records(person)
    await overwrite(world.attacker, person, rehash_from(records[:3], start=3))  # the 4th removed, the head moved
    verdict = await world.verify(person)
    assert verdict.problems == ["the chain head is not signed by the records key (moved head)"]
    assert verdict.states == {1: RecordState.CHECKPOINTED, 2: RecordState.CHECKPOINTED, 3: RecordState.UNVERIFIED}


async def test_deleting_a_whole_chain_is_detected(world):
    person, bystander = await world.chain(3), await world.chain(1)
    await world.checkpoint()
    async with world.attacker.transaction():
        await world.attacker.execute("DELETE FROM provision_records WHERE person_token = $1", person)
        await world.attacker.execute("DELETE FROM provision_chain_heads WHERE person_token = $1", person)
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED and verdict.records == []
    assert verdict.problems == ["the database no longer proves checkpoint #1: checkpointed heads were altered, "
                                "moved or deleted"]
    if bucket_of(bystander) != bucket_of(person):
        await bystander_ok(world, bystander)


async def test_rewriting_the_stored_bucket_roots_too_is_detected(world):
    person, bystander = await world.chain(3), await world.chain(1)
    await world.checkpoint()
    await world.attacker.execute("DELETE FROM provision_records WHERE person_token = $1", person)
    await world.attacker.execute("DELETE FROM provision_chain_heads WHERE person_token = $1", person)
    # recompute the bucket root over what is left, as the builder would: still not the signed root
    from infra.records.checkpoints import bucket_root

    bucket = bucket_of(person)
    rows = await world.attacker.fetch("SELECT person_token, cp_seq, cp_hash FROM provision_chain_heads "
                                      "WHERE bucket = $1", bucket)
    await world.attacker.execute("UPDATE provision_checkpoint_buckets SET root = $2 WHERE bucket = $1", bucket,
                                 bucket_root(bucket, [(r[0], r[1], bytes(r[2])) for r in rows]))
    assert (await world.verify(person)).verdict is Verdict.TAMPERED
    assert (await world.verify(bystander)).verdict is Verdict.TAMPERED  # everyone: the proof no longer holds
    with pytest.raises(CheckpointRefused, match="do not reproduce checkpoint #1"):
        await world.builder.build()  # and no checkpoint is ever made over it


async def test_a_database_rolled_back_to_an_earlier_checkpoint_is_detected(world):
    person = await world.chain(2)
    await world.checkpoint()
    tables = ("provision_records", "provision_chain_heads", "provision_chain_anchors", "provision_checkpoints",
              "provision_checkpoint_buckets")
    for t in tables:  # the operator keeps a copy (a backup) ...
        await world.attacker.execute(f"CREATE TABLE backup_{t} AS SELECT * FROM {t}")
    await world.append([draft(person)])
    await world.checkpoint()
    assert (await world.verify(person)).verdict is Verdict.OK
    async with world.attacker.transaction():  # ... and restores it: the third record and checkpoint #2 are gone
        for t in tables:
            columns = "person_token, seq, last_hash, seal, cp_seq, cp_hash" if t == "provision_chain_heads" else "*"
            await world.attacker.execute(f"DELETE FROM {t}")
            await world.attacker.execute(f"INSERT INTO {t} SELECT {columns} FROM backup_{t}")
    assert (await world.store.verify_chain(person)).ok
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.TAMPERED
    assert verdict.problems == ["the database holds checkpoint #1 but #2 is published (the database was rolled back)"]
    with pytest.raises(CheckpointRefused, match="rolled back"):
        await world.builder.build()


async def test_deleting_the_checkpoint_state_is_detected(world):
    person = await world.chain(2)
    await world.checkpoint()
    await world.attacker.execute("DELETE FROM provision_checkpoints")
    verdict = await world.verify(person)
    assert verdict.problems == ["checkpoint #1 is published but the database holds no checkpoint (checkpoint "
                                "state deleted)"]
    with pytest.raises(CheckpointRefused, match="holds none"):
        await world.builder.build()  # no fresh start that would take unsealed heads


async def test_junk_forgeries_and_replays_on_the_checkpoint_topic_change_nothing(world):
    """A writer on the checkpoint topic: junk, a checkpoint signed by another key with a higher number, and an
    older genuine checkpoint replayed after the latest. None of them is taken."""
    person = await world.chain(1)
    first = (await world.checkpoint()).checkpoint
    await world.append([draft(person)])
    second = (await world.checkpoint()).checkpoint
    forged = sign_checkpoint(RecordsKey.generate(), number=99, issued_at=second.issued_at, root=bytes(32),
                             chains=0, records=0, previous=second.digest)
    for value in (b"junk", forged.signed, first.signed):
        await world.producer.send_and_wait(world.topic, value, key=b"99")
    await world.append([draft(person)])  # good traffic goes on
    third = (await world.checkpoint()).checkpoint
    assert third.number == 3

    log = CheckpointLog(world.settings, world.key.public())
    try:
        latest = await log.latest()
    finally:
        await log.close()
    assert (latest.number, latest.body, log.skipped) == (3, third.body, 2)
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.OK and verdict.checkpoint.number == 3


async def test_the_builder_never_checkpoints_a_tampering_it_can_see(world):
    victim, bystander = await world.chain(1), await world.chain(1)
    await world.checkpoint()
    await world.append([draft(victim), draft(bystander)])
    await world.attacker.execute("UPDATE provision_records SET requester = 'agency-nta' WHERE person_token = $1 "
                                 "AND seq = 2", victim)  # before the next checkpoint
    result = await world.checkpoint()
    assert (result.checkpoint.number, result.heads, result.left_out) == (2, 1, {"chain_broken": 1})
    verdict = await world.verify(victim)
    assert verdict.verdict is Verdict.TAMPERED and verdict.problems == ["seq 2: hash mismatch (altered)"]
    assert verdict.states == {1: RecordState.CHECKPOINTED, 2: RecordState.TAMPERED}
    assert (await world.verify(bystander)).verdict is Verdict.OK


async def test_only_the_first_checkpoint_takes_heads_without_a_seal(world):
    """Heads written before the records key existed are taken (whole chain verified) into checkpoint #1 and
    sealed; after it, a head whose seal was removed is left out."""
    legacy = await world.chain(2)
    await world.attacker.execute("UPDATE provision_chain_heads SET seal = NULL WHERE person_token = $1", legacy)
    result = await world.checkpoint()
    assert (result.heads, result.left_out) == (1, {})
    assert (await world.verify(legacy)).verdict is Verdict.OK  # sealed now

    later = await world.chain(1)
    await world.attacker.execute("UPDATE provision_chain_heads SET seal = NULL WHERE person_token = $1", later)
    await world.append([draft(legacy)])
    result = await world.checkpoint()
    assert (result.heads, result.left_out) == (1, {"unsealed": 1})
    assert (await world.verify(later)).problems == ["the chain head is not signed by the records key (moved head)"]


async def test_checkpoints_carry_no_token_and_nothing_per_person(world):
    people = [await world.chain(2) for _ in range(5)]
    checkpoint = (await world.checkpoint()).checkpoint
    assert (checkpoint.chains, checkpoint.records) == (5, 10)
    from aiokafka import TopicPartition

    from infra.ops import read_range, scan_consumer

    consumer = scan_consumer(world.settings)
    await consumer.start()
    try:
        tp = TopicPartition(world.topic, 0)
        values = [r.value async for r in read_range(consumer, tp, 0, 1)]
    finally:
        await consumer.stop()
    assert values == [checkpoint.signed]
    opened = open_checkpoint(values[0], world.key.public())
    assert opened.previous == GENESIS_HASH
    for person in people:
        assert person.encode() not in values[0]
        for record in await world.records(person):
            assert record.hash not in values[0] and record.record_id.bytes not in values[0]


async def test_concurrent_builders_make_one_checkpoint_at_a_time(world):
    people = [await world.chain(1) for _ in range(4)]
    results = await asyncio.gather(*(world.builder.build() for _ in range(3)))
    made = [r for r in results if r is not None]
    assert len(made) >= 1 and sorted(r.checkpoint.number for r in made) == list(range(1, len(made) + 1))
    await world.builder.publish(world.producer, world.topic)
    for person in people:
        assert (await world.verify(person)).verdict is Verdict.OK


async def test_checkpoints_made_while_records_are_appended(world):
    """The hub appends while its checkpoint task builds: no deadlock, no lost head, everything verifies."""
    people = [token() for _ in range(12)]

    async def appender(n: int) -> None:
        for i in range(8):
            chosen = people[n::2] if i % 2 else people[::-1]  # overlapping persons, in varying order
            await world.append([draft(p) for p in chosen])

    async def builder(stop: asyncio.Event) -> int:
        made = 0
        while not stop.is_set():
            result = await world.builder.build()
            made += result is not None and result.checkpoint is not None
            await world.builder.publish(world.producer, world.topic)
        return made

    stop = asyncio.Event()
    building = asyncio.ensure_future(builder(stop))
    await asyncio.gather(*(appender(n) for n in range(4)))
    stop.set()
    assert await building >= 1
    await world.builder.build()  # whatever the last round did not cover (None if it covered everything)
    await world.builder.publish(world.producer, world.topic)
    for person in people:
        verdict = await world.verify(person)
        assert verdict.verdict is Verdict.OK, verdict.problems
