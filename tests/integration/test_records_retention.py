"""Retention (issue 16 item 7): records past the retention period are purged, what remains still verifies,
and a tamper after the purge is still detected — on the real broker and PostgreSQL.

The purge signs an anchor where each shortened chain now starts; only the records key can. Attacks are
done as the database superuser would (plain SQL).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from infra.cli import main
from infra.cli.records_cli import retention_cutoff
from infra.ops import read_range, scan_consumer
from infra.platform.keystore import KeyStore
from infra.platform.stack import settings_env
from infra.platform.topics import TopicNames
from infra.records.records_verify import RecordState, Verdict
from tests.integration.records_world import draft, records_world, token

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=8 * 366)  # past the 7-year retention
CUTOFF = retention_cutoff(7)


@pytest.fixture
async def world(settings):
    store = KeyStore.for_settings(settings)
    store.create_records_key()  # the key store `renkei records purge` signs with, as on the hub's machine
    async with records_world(settings, store.records_key()) as w:
        yield w


async def purge(world, before=CUTOFF):
    async with world.pool.acquire() as conn, conn.transaction():
        return await world.store.purge(conn, before=before)


async def old_then_new(world, old: int, new: int) -> str:
    person = token()
    await world.append([draft(person, requested_at=OLD + timedelta(hours=n)) for n in range(old)]
                       + [draft(person) for _ in range(new)])
    return person


async def test_purge_removes_old_records_and_the_rest_still_verifies(world):
    mixed, all_old, recent = await old_then_new(world, 3, 2), await old_then_new(world, 2, 0), await world.chain(2)
    # provided recently: the exchange ended within the period, so it stays (and so does what follows it)
    late = token()
    await world.append([draft(late, requested_at=OLD, provided_at=NOW - timedelta(days=30), status="PROVIDED"),
                        draft(late, requested_at=OLD)])
    await world.checkpoint()

    result = await purge(world)
    assert (result.chains, result.records, result.kept) == (2, 5, 0)
    verdict = await world.verify(mixed)
    assert verdict.verdict is Verdict.OK and verdict.problems == []
    assert sorted(verdict.states) == [4, 5] and set(verdict.states.values()) == {RecordState.CHECKPOINTED}
    assert verdict.purged_before == CUTOFF
    verdict = await world.verify(all_old)
    assert (verdict.verdict, verdict.records, verdict.purged_before) == (Verdict.OK, [], CUTOFF)
    for person in (recent, late):
        verdict = await world.verify(person)
        assert verdict.verdict is Verdict.OK and len(verdict.records) == 2 and verdict.purged_before is None

    # a purged chain goes on from its anchor: new records, a new checkpoint, still verified
    await world.append([draft(all_old)])
    assert (await world.verify(all_old)).verdict is Verdict.PENDING
    await world.checkpoint()
    verdict = await world.verify(all_old)
    assert verdict.verdict is Verdict.OK and verdict.states == {3: RecordState.CHECKPOINTED}
    assert (await purge(world)).chains == 0  # nothing more is old enough


async def test_a_tamper_after_the_purge_is_still_detected(world):
    deleted, altered, forged = [await old_then_new(world, 2, 3) for _ in range(3)]
    await world.checkpoint()
    await purge(world)

    await world.attacker.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 3", deleted)
    verdict = await world.verify(deleted)
    assert verdict.verdict is Verdict.TAMPERED and verdict.problems == ["seq 3 missing (deleted)"]

    await world.attacker.execute("UPDATE provision_records SET provider = 'bank-9000' WHERE person_token = $1 "
                                 "AND seq = 4", altered)
    verdict = await world.verify(altered)
    assert verdict.problems == ["seq 4: hash mismatch (altered)"] and verdict.states[4] is RecordState.TAMPERED

    # pretend the first remaining record was purged too: move the anchor over it (the seal does not follow)
    third = (await world.records(forged))[0]
    async with world.attacker.transaction():
        await world.attacker.execute("DELETE FROM provision_records WHERE record_id = $1", third.record_id)
        await world.attacker.execute("UPDATE provision_chain_anchors SET seq = 3, last_hash = $2 "
                                     "WHERE person_token = $1", forged, third.hash)
    verdict = await world.verify(forged)
    assert verdict.verdict is Verdict.TAMPERED
    assert verdict.problems == ["seq 1-3 removed without a signed retention anchor (deleted)"]


async def test_a_purge_done_with_sql_is_detected(world):
    """The database operator deletes the old records himself: without the records key there is no valid anchor."""
    plain, faked = await old_then_new(world, 2, 2), await old_then_new(world, 2, 2)
    await world.checkpoint()
    second = (await world.records(faked))[1]
    async with world.attacker.transaction():
        await world.attacker.execute("DELETE FROM provision_records WHERE person_token = ANY($1::text[]) "
                                     "AND requested_at < $2", [plain, faked], CUTOFF)
        await world.attacker.execute("INSERT INTO provision_chain_anchors (person_token, seq, last_hash, "
                                     "purged_before, seal) VALUES ($1, 2, $2, $3, '\\x01'::bytea)",
                                     faked, second.hash, CUTOFF)
    assert (await world.verify(plain)).problems == ["seq 1-2 missing (deleted)"]
    assert (await world.verify(faked)).problems == ["seq 1-2 removed without a signed retention anchor (deleted)"]


async def test_purge_keeps_a_chain_whose_old_records_do_not_verify(world):
    person, fine = await old_then_new(world, 3, 1), await old_then_new(world, 3, 1)
    await world.checkpoint()
    await world.attacker.execute("UPDATE provision_records SET requester = 'agency-nta' WHERE person_token = $1 "
                                 "AND seq = 2", person)
    result = await purge(world)
    assert (result.chains, result.records, result.kept) == (1, 3, 1)
    assert len(await world.records(person)) == 4  # the evidence stays
    assert (await world.verify(person)).problems == ["seq 2: hash mismatch (altered)"]
    assert (await world.verify(fine)).verdict is Verdict.OK


async def test_a_second_purge_moves_the_anchor(world):
    person = token()
    await world.append([draft(person, requested_at=OLD + timedelta(days=n)) for n in range(4)] + [draft(person)])
    await world.checkpoint()
    assert (await purge(world, before=OLD + timedelta(days=1, hours=12))).records == 2
    assert (await purge(world)).records == 2
    verdict = await world.verify(person)
    assert verdict.verdict is Verdict.OK and list(verdict.states) == [5]
    assert verdict.purged_before == CUTOFF


# --------------------------------------------------------------------------- the ops command


def renkei(capsys, settings):
    flags = ["--kafka-bootstrap", settings.kafka.bootstrap,
             "--state-dir", str(settings.state_dir), "--topic-prefix", settings.kafka.topic_prefix, "--json"]

    async def run(*argv: str) -> tuple[int, dict | None, str]:
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as env:  # PostgreSQL as a worker gets it: the environment
            for name, value in settings_env(settings).items():
                env.setenv(name, value)
            code = await asyncio.to_thread(main, ["records", "purge", *argv, *flags])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err

    return run


async def ops_events(settings) -> list[dict]:
    from aiokafka import TopicPartition

    from infra.ops import high_watermarks

    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(TopicNames(settings.kafka.topic_prefix).ops_audit, 0)
        end = (await high_watermarks(consumer, [tp]))[tp]
        return [json.loads(r.value) async for r in read_range(consumer, tp, 0, end)]
    finally:
        await consumer.stop()


async def test_the_purge_command_is_audited_and_refuses_what_the_law_keeps(world, settings, capsys):
    run = renkei(capsys, settings)
    person = await old_then_new(world, 2, 1)
    await world.checkpoint()

    too_recent = (NOW - timedelta(days=365)).date().isoformat()
    code, out, err = await run("--before", too_recent, "--reason", "yearly purge")
    assert code == 2 and out is None and "inside the 7-year retention period" in err
    code, out, err = await run()
    assert code == 2 and "--reason is required" in err
    code, out, _ = await run("--reason", "yearly purge (rehearsal)", "--dry-run")
    assert code == 0 and (out["dry_run"], out["chains"], out["records"]) == (True, 1, 2)
    assert len(await world.records(person)) == 3  # a dry run removes nothing

    code, out, _ = await run("--reason", "yearly purge")
    assert code == 0, out
    assert (out["chains"], out["records"], out["kept"], out["retention_years"]) == (1, 2, 0, 7)
    assert out["before"] == out["cutoff"] == CUTOFF.isoformat()
    assert (await world.verify(person)).verdict is Verdict.OK

    events = await ops_events(settings)
    assert [(e["what"], e["reason"], e["dry_run"], e["counts"]["records"]) for e in events] == [
        ("records-purge", "yearly purge (rehearsal)", True, 2), ("records-purge", "yearly purge", False, 2)]
    assert events[1]["id"] == out["audit"]["id"] and events[1]["who"] and events[1]["window"] == {
        "before": CUTOFF.isoformat()}


async def test_without_the_records_key_nobody_purges(world, settings, capsys, tmp_path):
    """Who may purge: whoever holds the records key (the hub's key store). Anyone else is refused before
    anything is touched."""
    import dataclasses

    person = await old_then_new(world, 2, 1)
    stranger = dataclasses.replace(settings, state_dir=tmp_path / "elsewhere")
    code, out, err = await renkei(capsys, stranger)("--reason", "cleaning up")
    assert code == 2 and "no records key" in err
    assert len(await world.records(person)) == 3
    assert await ops_events(settings) == []
