"""STEP1/STEP2/STEP3 end to end through the running hub, registry and banks (real broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from connectors.bank_sim import register_at_counter, registration_status
from infra.crypto.envelope import peek
from infra.domain.policy import BASIS_CHANGE, BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.pgdsn import observer_dsn
from infra.platform.storage import everywhere
from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
from infra.records.provisions import ProvisionStore
from infra.tools.harness import eventually, read_topic
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import hub_pseudonyms
from tests.integration.test_connectors_support import bank_token, hold_account

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # AGENCY is entitled to it (infra/domain/procedures.toml)
_rng = random.Random(20261126)


def person() -> str:
    return generate_my_number(_rng)


def account(bank: str = "9001", number: str | None = None, kana: str = "ヤマダ タロウ") -> dict:
    return {"bank_code": bank, "branch_code": "101", "account_type": "ORDINARY",
            "account_number": number or f"{_rng.randrange(10**7):07d}", "holder_kana": kana}


def now() -> datetime:
    return datetime.now(UTC)


async def register(bus: BusClient, my_number: str, acct: dict, operation: str = "REGISTER") -> dict:
    token = await bus.token_for("portal", my_number)
    answer = await bus.request(
        "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
        body={"operation": operation, "account": acct if operation != "DELETE" else None,
              "channel": "PORTAL", "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION if operation == "REGISTER" else BASIS_CHANGE)
    assert answer.meta.type == msg.REGISTRATION_RESULT
    return answer.body


async def inquire(bus: BusClient, my_number: str, agency: str = AGENCY, timeout: float = 60) -> dict:
    token = await bus.token_for(agency, my_number)
    answer = await bus.request(
        agency, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
        body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=timeout, procedure=PROCEDURE)
    assert answer.meta.type == msg.PROVISION_RESPONSE
    return answer.body


async def test_step1_registration_then_step2_provision(bus, pg, running_platform):
    mn, acct = person(), account()
    await hold_account(running_platform.settings, pg, mn, acct)  # the bank's records: the person's account
    result = await register(bus, mn, acct)
    assert result["status"] == "DONE"
    answer = await inquire(bus, mn)
    assert answer["status"] == "REGISTERED"
    assert answer["account"]["account_number"] == acct["account_number"]
    # The registry keeps the account encrypted: no plaintext account number in its table.
    rows = await pg.fetch("SELECT account_ct FROM registry_accounts")
    assert rows and all(acct["account_number"].encode() not in bytes(r["account_ct"]) for r in rows)
    # Provision records: the inquiry and the provision, keyed by the person's portal token, chain verifies.
    portal_token = await bus.token_for("portal", mn)
    store = ProvisionStore(running_platform_pool := await asyncpg.create_pool(observer_dsn(running_platform.settings)))
    try:
        records = await store.for_person(portal_token)
        kinds = {(r.requester, r.provider, r.status.value) for r in records}
        assert (AGENCY, "registry", "REQUESTED") in kinds and (AGENCY, "registry", "PROVIDED") in kinds
        assert ("portal", "registry", "REQUESTED") in kinds  # the STEP1 registration request
        assert ("registry", "bank-9001", "REQUESTED") in kinds  # 口座実在性確認
        verdict = await store.verify_chain(portal_token)
        assert verdict.ok, verdict.problems
    finally:
        await running_platform_pool.close()


async def test_step1_unknown_account_and_wrong_name_register_nothing(bus, pg, running_platform):
    mn = person()
    assert (await register(bus, mn, account(bank="9002")))["status"] == "ACCOUNT_NOT_FOUND"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    acct = account(bank="9002", kana="ヤマダ ハナコ")
    await hold_account(running_platform.settings, pg, mn, acct)
    wrong_name = dict(acct, holder_kana="スズキ イチロウ")  # not the name the bank has for its customer
    assert (await register(bus, mn, wrong_name))["status"] == "HOLDER_MISMATCH"
    answer = await inquire(bus, mn)  # nothing stored, not even blocked: no registration unless CONFIRMED
    assert answer["status"] == "NOT_REGISTERED" and answer["account"] is None


async def test_step1_unknown_bank_code_is_refused_without_a_check(bus):
    assert (await register(bus, person(), account(bank="1234")))["status"] == "ACCOUNT_NOT_FOUND"


async def test_delete_shreds_the_data_key_and_keeps_the_chain(bus, pg, running_platform):
    mn, acct = person(), account(bank="9003")
    await hold_account(running_platform.settings, pg, mn, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"
    keys_before = await pg.fetchval("SELECT count(*) FROM registry_data_keys")
    assert (await register(bus, mn, acct, operation="DELETE"))["status"] == "DONE"
    assert await pg.fetchval("SELECT count(*) FROM registry_data_keys") == keys_before - 1  # crypto-shredded
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    portal_token = await bus.token_for("portal", mn)
    pool = await asyncpg.create_pool(observer_dsn(running_platform.settings))
    try:
        verdict = await ProvisionStore(pool).verify_chain(portal_token)
        assert verdict.ok and verdict.checked >= 4
    finally:
        await pool.close()
    # A second delete finds nothing; the shredded key does not come back.
    assert (await register(bus, mn, acct, operation="DELETE"))["status"] == "NOT_REGISTERED"
    assert await pg.fetchval("SELECT count(*) FROM registry_data_keys") == keys_before - 1


async def test_step3_bank_channel_registration(bus, pg, running_platform):
    """The bank's counter files the registration with the person's consent; the registry checks the account
    with that bank's own records, registers it, and answers the bank. Another bank's account is refused."""
    settings = running_platform.settings
    mn, acct = person(), account(bank="9004")
    await hold_account(settings, pg, mn, acct)
    given = {"given_by": "PERSON", "method": "ONLINE_BANKING", "given_at": now(), "evidence_ref": "OB-1"}
    counter = ParticipantRuntime(settings, ["bank-9004"], {}, group=f"{uuid.uuid4().hex}.bank-counter",
                                 database="banks")  # the simulated bank's counter: the simulator's system
    await counter.start(consume=False)  # the simulated bank reads its inbox; the counter only files
    try:
        token = bank_token(settings, mn, "bank-9004")
        done = await register_at_counter(counter, "bank-9004", token, "REGISTER", acct, given)
        refused = await register_at_counter(counter, "bank-9004", token, "REGISTER", account(bank="9001"), given)
        assert await eventually(lambda: registration_status(pg, "bank-9004", done), timeout=120) == "DONE"
        assert await eventually(lambda: registration_status(pg, "bank-9004", refused), timeout=120) == "REFUSED"
    finally:
        await counter.stop()
    provided = await inquire(bus, mn)
    assert provided["status"] == "REGISTERED" and provided["account"]["bank_code"] == "9004"


async def _uncommitted_claims(pg, settings) -> list[tuple[int, int]]:
    """Ingress records the hub has claimed (its transaction committed) at or past the offset its group
    committed: a hub that dies now reads them again — a redelivery, not a replay."""
    from aiokafka import TopicPartition

    from infra.platform.kafka import admin_client

    ingress = TopicNames(settings.kafka.topic_prefix).ingress
    admin = admin_client(settings)
    await admin.start()
    try:
        partitions = [TopicPartition(ingress, p) for p in range(INGRESS_PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(f"{settings.kafka.topic_prefix}.hub", partitions=partitions)
    finally:
        await admin.close()
    committed = {tp.partition: max(om.offset, 0) for tp, om in offsets.items() if om is not None}
    rows = await pg.fetch("SELECT src_partition, src_offset FROM hub_messages WHERE src_offset >= "
                          "(($1::jsonb) ->> src_partition::text)::bigint",
                          json.dumps({str(p): o for p, o in committed.items()}))
    return [(r["src_partition"], r["src_offset"]) for r in rows]


async def test_hub_worker_killed_mid_stream_loses_nothing_and_duplicates_nothing(bus, pg, running_platform):
    """The hub is SIGKILLed while inquiries stream in, at a moment when it has claimed records whose
    offsets its consumer group has not committed yet (found by freezing it with SIGSTOP and looking), so
    the restarted hub certainly reads them again.  A redelivery must be forwarded again, never refused
    as REPLAYED, and nothing may be lost or answered twice."""
    from infra.platform.stack import WORKERS
    from tests.integration.waits import dead_letters, hub_barrier, metric, metrics_url, replayed

    settings = running_platform.settings
    people = [person() for _ in range(40)]
    tokens = [await bus.token_for(AGENCY, mn) for mn in people]
    tasks: list[asyncio.Task] = []
    killed = asyncio.Event()

    async def ask(token: str) -> str:
        answer = await bus.request(
            AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
            body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=180, procedure=PROCEDURE)
        assert answer.meta.type == msg.PROVISION_RESPONSE, answer.meta.type
        return answer.meta.correlation_id

    async def stream() -> None:  # a steady stream of inquiries, until a little after the kill
        for token in tokens:
            tasks.append(asyncio.create_task(ask(token)))
            await asyncio.sleep(0.1)
            if killed.is_set() and len(tasks) >= len(tokens) // 2:
                return

    streaming = asyncio.create_task(stream())
    while sum(t.done() for t in tasks) < 3:  # the hub is answering
        assert not streaming.done(), "the stream ended before three inquiries were answered"
        await asyncio.sleep(0.05)
    hub = running_platform.stack.components["hub"]
    uncommitted: list[tuple[int, int]] = []
    for _ in range(200):  # freeze the hub; kill it only between a batch's claim and its offset commit
        os.kill(hub.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.1)  # let a commit request already on its way reach the broker
            uncommitted = await _uncommitted_claims(pg, settings)
        except BaseException:
            os.kill(hub.pid, signal.SIGCONT)  # never leave the hub frozen
            raise
        if uncommitted:
            answered_at_kill, sent_at_kill = sum(t.done() for t in tasks), len(tasks)
            os.kill(hub.pid, signal.SIGKILL)
            break
        os.kill(hub.pid, signal.SIGCONT)
        await asyncio.sleep(0.03)
    assert uncommitted, "never caught the hub between a claim and its offset commit"
    killed.set()
    running_platform.check_children()
    running_platform.start_worker(next(w for w in WORKERS if w.name == "hub"))
    await streaming
    correlations = await asyncio.gather(*tasks)

    # The kill came mid-stream: some inquiries were answered before it, not all of them.
    assert 0 < answered_at_kill < sent_at_kill
    n = len(tasks)
    assert len(set(correlations)) == n
    restarted = await metrics_url(running_platform, "hub")
    await hub_barrier(settings)  # everything on ingress so far has been through the new hub
    # No redelivery was mistaken for a replay: the hub dead-lettered nothing it had claimed before the
    # kill (nor any message of these inquiries) as REPLAYED ...
    claimed_before = [r["message_id"] for r in await pg.fetch(
        "SELECT message_id FROM hub_messages h JOIN unnest($1::int[], $2::bigint[]) AS u(p, o) "
        "ON h.src_partition = u.p AND h.src_offset = u.o", [p for p, _ in uncommitted], [o for _, o in uncommitted])]
    assert len(claimed_before) == len(uncommitted)
    dead = await dead_letters(settings)
    assert replayed(dead, claimed_before) == [], "a redelivery after the crash was refused as a replay"
    # ... and the restarted hub did read them again (a real redelivery, counted as a duplicate).
    assert await metric(restarted, "renkei_messages_duplicate_total")() >= len(uncommitted)

    # Exactly one answer per inquiry: one row each in the agency's inbox, one answer message id each on the wire.
    answers = await pg.fetch("SELECT correlation_id::text AS cid FROM client_inbox "
                             "WHERE correlation_id = ANY($1::uuid[]) AND type = $2", correlations, msg.PROVISION_RESPONSE)
    assert sorted(r["cid"] for r in answers) == sorted(correlations)
    inbox = [peek(r.value) for r in await read_topic(settings, TopicNames(settings.kafka.topic_prefix).inbox(AGENCY))]
    on_wire: dict[str, set[str]] = {}
    asked = set(correlations)
    for meta in inbox:
        if meta.correlation_id in asked and meta.type == msg.PROVISION_RESPONSE:
            on_wire.setdefault(meta.correlation_id, set()).add(meta.message_id)
    assert sorted(on_wire) == sorted(correlations) and all(len(ids) == 1 for ids in on_wire.values())
    # The inquiries' and the answers' own message ids (each leg carries an id of its own: infra.crypto.pseudonyms).
    names = hub_pseudonyms(settings)
    sent = [peek(bytes(r["envelope"])) for r in await pg.fetch(  # the agency's outbox and the registry's
        f"SELECT envelope FROM {await everywhere(pg, 'participant_outbox')} o "
        "WHERE sender = ANY($1::text[]) AND type = ANY($2::text[])",
        [AGENCY, "registry"], [msg.PROVISION_INQUIRY, msg.PROVISION_RESPONSE])]
    answered = {i for ids in on_wire.values() for i in ids}
    inquiries = [m.message_id for m in sent if m.type == msg.PROVISION_INQUIRY and m.correlation_id in asked]
    answers_sent = [m.message_id for m in sent if m.type == msg.PROVISION_RESPONSE
                    and names.leg_message_id(m.message_id, AGENCY) in answered]
    assert len(inquiries) == len(answers_sent) == n
    ours = inquiries + answers_sent
    # One provision record per leg (the inquiry, the answer), each message recorded once, under the hub's ids.
    records = await pg.fetch(
        "SELECT message_id, count(*) AS n FROM provision_records WHERE correlation_id = ANY($1::uuid[]) "
        "GROUP BY message_id", [names.conversation(c, AGENCY) for c in correlations])
    assert len(records) == 2 * n and all(r["n"] == 1 for r in records)
    assert {r["message_id"] for r in records} == {names.record_message_id(m) for m in ours}
    # The registry applied each inquiry once (it knows each by the id of the leg it got).
    effects = await pg.fetchval("SELECT count(*) FROM processed_messages WHERE consumer = 'registry' "
                                "AND message_id = ANY($1::uuid[])",
                                [names.leg_message_id(m, "registry") for m in inquiries])
    assert effects == n
    assert replayed(dead, ours) == []


async def test_provision_chain_detects_deleted_and_altered_records(bus, pg, running_platform):
    mn, acct = person(), account(bank="9000")
    await hold_account(running_platform.settings, pg, mn, acct)
    await register(bus, mn, acct)
    await inquire(bus, mn)
    portal_token = await bus.token_for("portal", mn)
    pool = await asyncpg.create_pool(observer_dsn(running_platform.settings))
    try:
        store = ProvisionStore(pool)
        assert (await store.verify_chain(portal_token)).ok
        await pg.execute("UPDATE provision_records SET requester = 'agency-nta' WHERE person_token = $1 AND seq = 2",
                         portal_token)
        altered = await store.verify_chain(portal_token)
        assert not altered.ok and any("seq 2" in p for p in altered.problems)
        await pg.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 3", portal_token)
        deleted = await store.verify_chain(portal_token)
        assert not deleted.ok and any("3" in p for p in deleted.problems)
    finally:
        await pool.close()

