"""The platform on a secured three-node Apache Kafka cluster, as production runs it (issue 15 item 3, issue 13 item 10).

One cluster for the module (``kafka_cluster``: three KRaft nodes, SASL_SSL with SCRAM-SHA-512, the
StandardAuthorizer with ``allow.everyone.if.no.acl.found=false``, replication 3, ``min.insync.replicas=2``) and
one platform on it (``secured_platform``): hub, registry and bank simulator each logged in as its own principal,
under a topic prefix whose ACLs ``renkei acls apply``'s code created. The clients the tests start log in as the
participant they act for (the portal as ``portal``, an agency as itself, DICJ as ``dicj``, the bank counter as the
bank simulator ``banks``), so every flow below crosses exactly the rights its participants are given.

Order matters and is the file's: refusals, flows, a broker SIGKILLed under traffic, then the whole cluster stopped
and started (last: it restarts the cluster every test before it shared).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from connectors.bank_sim import enrol_customer, open_account, register_at_counter, registration_status
from connectors.dicj import DicjDesk
from infra.core.errors import StackError
from infra.core.settings import Settings
from infra.domain.policy import (
    BASIS_NUMBERING,
    BASIS_PROVISION,
    BASIS_REGISTRATION,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.domain.validation import generate_my_number
from infra.platform.acls import AclBinding, acl_bindings
from infra.platform.kafka import admin_client, consumer, producer
from infra.platform.kafka_admin import apply_acls
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import observer_dsn
from infra.platform.stack import Platform
from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
from infra.records.provisions import ProvisionStore
from infra.tools.chaos import ChaosPlan, crash_safety
from infra.tools.chaos_broker import ClusterBroker
from infra.tools.harness import eventually, read_topic
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import ENTITLED_PROCEDURE
from tests.integration.test_connectors_support import bank_token, hold_account

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

AGENCY = "agency-city-minato"
_rng = random.Random(20261129)


def _account(bank: str) -> dict:
    return {"bank_code": bank, "branch_code": "101", "account_type": "ORDINARY",
            "account_number": f"{_rng.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}


def _now() -> datetime:
    return datetime.now(UTC)


def _client(platform: Platform, participant: str, tag: str) -> BusClient:
    """A bus client acting for ``participant`` and logged in as its principal, in a group of its own."""
    s = platform.settings
    return BusClient(s.as_principal(participant), [participant],
                     group=f"{s.kafka.topic_prefix}.{participant}.{tag}-{uuid.uuid4().hex[:6]}")


@pytest.fixture
async def pg(secured_platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(secured_platform.settings))
    yield conn
    await conn.close()


async def _register(portal: BusClient, mn: str, acct: dict) -> dict:
    token = await portal.token_for("portal", mn)
    answer = await portal.request("portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
                                  body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                        "requested_at": _now()},
                                  data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=120)
    assert answer.meta.type == msg.REGISTRATION_RESULT
    return answer.body


async def _registered_person(platform: Platform, pg: asyncpg.Connection, bank: str) -> tuple[str, dict]:
    """A person holding an account at ``bank``, registered through the portal (STEP1) as the portal's principal."""
    mn, acct = generate_my_number(_rng), _account(bank)
    await hold_account(platform.settings, pg, mn, acct)
    async with _client(platform, "portal", "step1") as portal:
        assert (await _register(portal, mn, acct))["status"] == "DONE"
    return mn, acct


async def _inquire(agency: BusClient, mn: str, agency_id: str = AGENCY) -> dict:
    token = await agency.token_for(agency_id, mn)
    procedure = ENTITLED_PROCEDURE[agency_id]  # a procedure the agency may ask under (infra/domain/procedures.toml)
    answer = await agency.request(agency_id, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
                                  body={"procedure_code": procedure, "purpose": None, "requested_at": _now()},
                                  data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=120,
                                  procedure=procedure)
    assert answer.meta.type == msg.PROVISION_RESPONSE
    return answer.body


async def _end_offsets(settings: Settings, topic: str) -> int:
    """Records in ``topic`` (one partition), read as the cluster's admin."""
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await cons.end_offsets([tp]))[tp]
    finally:
        await cons.stop()


async def _read_as(settings: Settings, topic: str, group: str) -> list[bytes]:
    """Subscribe to ``topic`` in ``group`` and read what arrives within a few seconds (raises what Kafka refuses)."""
    cons = consumer(settings, topic, group_id=group)
    await cons.start()
    try:
        got: list[bytes] = []
        end = time.monotonic() + 8
        while time.monotonic() < end:
            batches = await cons.getmany(timeout_ms=500)
            got += [r.value for rs in batches.values() for r in rs]
            if got:
                break
        return got
    finally:
        await cons.stop()


async def _write_as(settings: Settings, topic: str, value: bytes) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        await asyncio.wait_for(prod.send_and_wait(topic, value, key=b"forged"), 60)
    finally:
        await prod.stop()


# ---- who may do what -------------------------------------------------------------------------------------------


async def test_acls_apply_again_changes_nothing(secured_platform):
    s = secured_platform.settings
    names = TopicNames(s.kafka.topic_prefix)
    bindings = acl_bindings(names, secured_platform.participants, simulated_banks=True)
    results = await apply_acls(s.kafka, bindings, prefix=names.prefix)
    assert {r.status for r in results} == {"exists"} and len(results) == len(set(bindings))


async def test_each_principal_is_refused_what_its_acls_do_not_grant_and_nothing_is_delivered(secured_platform, pg):
    s = secured_platform.settings
    names = TopicNames(s.kafka.topic_prefix)
    # Good traffic first: a STEP1 registration at bank 9002 puts the registry's existence check in bank-9002's inbox.
    mn, _ = await _registered_person(secured_platform, pg, "9002")
    # The rightful reader sees that inbox; another bank's principal is refused it and gets nothing.
    assert await _read_as(s.as_principal("bank-9002"), names.inbox("bank-9002"), f"{names.prefix}.bank-9002.probe")
    with pytest.raises(TopicAuthorizationFailedError):
        assert not await _read_as(s.as_principal("bank-9001"), names.inbox("bank-9002"),
                                  f"{names.prefix}.bank-9001.probe")
    # …nor may it join the hub's consumer group (and so take the hub's partitions).
    with pytest.raises(GroupAuthorizationFailedError):
        await _read_as(s.as_principal("bank-9001"), names.inbox("bank-9001"), f"{names.prefix}.hub")

    # An agency writing straight into a bank's inbox (around the hub and its policy) is refused.
    inbox_before = await _end_offsets(s, names.inbox("bank-9001"))
    with pytest.raises(TopicAuthorizationFailedError):
        await _write_as(s.as_principal(AGENCY), names.inbox("bank-9001"), b"forged by an agency")
    # Nobody but the key publisher writes the key directory: not the hub, nor any participant.
    keys_before = await _end_offsets(s, names.keys)
    assert keys_before > 0  # the key publisher did, at start
    for principal in ("hub", "registry", "portal", AGENCY, "bank-9001", "dicj", "banks"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _write_as(s.as_principal(principal), names.keys, f"forged by {principal}".encode())

    # Good traffic still flows, and nothing of the refused writes arrived anywhere.
    async with _client(secured_platform, AGENCY, "acl") as agency:
        assert (await _inquire(agency, mn))["status"] == "REGISTERED"
    assert await _end_offsets(s, names.keys) == keys_before
    assert await _end_offsets(s, names.inbox("bank-9001")) == inbox_before
    for topic in (names.keys, names.inbox("bank-9001")):
        assert not [r for r in await read_topic(s, topic) if r.value and r.value.startswith(b"forged")]


async def test_no_participant_can_grant_itself_rights(secured_platform):
    """The hub asking the cluster for Write on the key directory is refused: only the admin (a super user)
    creates ACLs, and the hub still cannot write the topic afterwards."""
    s = secured_platform.settings
    names = TopicNames(s.kafka.topic_prefix)
    grab = AclBinding("User:hub", "Write", "topic", names.keys)
    with pytest.raises(StackError, match="CLUSTER_AUTHORIZATION_FAILED"):
        await apply_acls(s.as_principal("hub").kafka, [grab], prefix=names.prefix)
    with pytest.raises(TopicAuthorizationFailedError):
        await _write_as(s.as_principal("hub"), names.keys, b"forged by the hub")


# ---- the flows, each participant as its own principal ----------------------------------------------------------


async def test_step1_step2_step3_with_each_participant_as_its_own_principal(secured_platform, pg):
    s = secured_platform.settings
    mn, acct = generate_my_number(_rng), _account("9001")
    await hold_account(s, pg, mn, acct)
    async with _client(secured_platform, "portal", "flows") as portal, \
            _client(secured_platform, AGENCY, "flows") as agency:
        assert (await _register(portal, mn, acct))["status"] == "DONE"  # STEP1, with bank 9001's existence check
        provided = await _inquire(agency, mn)  # STEP2
        assert provided["status"] == "REGISTERED" and provided["account"]["account_number"] == acct["account_number"]
        # STEP3: bank 9004's counter (the bank simulator's system, as the `banks` principal) files a new account.
        new = _account("9004")
        await hold_account(s, pg, mn, new)
        given = {"given_by": "PERSON", "method": "ONLINE_BANKING", "given_at": _now(), "evidence_ref": "OB-C"}
        counter = ParticipantRuntime(s.as_principal("banks"), ["bank-9004"], {},
                                     group=f"{s.kafka.topic_prefix}.banks.counter", database="banks")
        await counter.start(consume=False)
        try:
            filed = await register_at_counter(counter, "bank-9004", bank_token(s, mn, "bank-9004"), "REGISTER",
                                              new, given)
            assert await eventually(lambda: registration_status(pg, "bank-9004", filed), timeout=120) == "DONE"
        finally:
            await counter.stop()
        changed = await _inquire(agency, mn)
        assert changed["status"] == "REGISTERED" and changed["account"]["bank_code"] == "9004"
    # Provision records were written for every leg (the hub wrote them as its own principal).
    pool = await asyncpg.create_pool(observer_dsn(s), min_size=1, max_size=2)
    try:
        records = await ProvisionStore(pool).for_person(await _portal_token(secured_platform, mn))
    finally:
        await pool.close()
    legs = {(r.requester, r.provider, r.status.value) for r in records}
    assert {(AGENCY, "registry", "REQUESTED"), (AGENCY, "registry", "PROVIDED"),
            ("portal", "registry", "REQUESTED"), ("registry", "bank-9001", "REQUESTED")} <= legs


async def _portal_token(platform: Platform, mn: str) -> str:
    return KeyStore.for_settings(platform.settings).token_authority().token_for(mn, "portal")


async def test_numbering_and_inheritance_lookup_with_each_participant_as_its_own_principal(secured_platform, pg):
    s = secured_platform.settings
    mn = generate_my_number(_rng)
    accounts = [_account("9003"), _account("9003")]
    for a in accounts:
        await open_account(pg, a)
        await enrol_customer(pg, bank_token(s, mn, "bank-9003"), a)
    async with _client(secured_platform, "portal", "lookup") as portal, \
            DicjDesk(s.as_principal("dicj"), group=f"{s.kafka.topic_prefix}.dicj") as dicj:
        token = await portal.token_for("portal", mn)
        ack = await portal.request("portal", type=msg.NUMBERING_REQUEST, to="bank-9003", subject=token,
                                   body={"bank_codes": ["9003"], "channel": "PORTAL", "receiving_bank_code": None,
                                         "requested_at": _now()},
                                   data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=120)
        assert (ack.meta.type, ack.body["status"], ack.body["accounts_linked"]) == (msg.NUMBERING_ACK, "LINKED", 2)
        subject = await dicj.token_for("dicj", mn)
        cid = await dicj.start_lookup("INHERITANCE", subject)
        view = await dicj.wait_result(cid, timeout=240)
    banks = sorted(b.bank_code for b in secured_platform.participants.banks(participating_only=True)
                   if not b.suspended)
    assert view["answering_banks"] == banks and view["missing_banks"] == []
    assert view["banks_with_accounts"] == ["9003"]
    assert sorted(a["account_number"] for a in view["accounts"]) == sorted(a["account_number"] for a in accounts)


# ---- a broker SIGKILLed under traffic --------------------------------------------------------------------------

BROKER_KILL = ChaosPlan(traffic_s=30, hub_kills=0, registry_kills=0, bank_kills=0, broker_kills=1, hub_workers=1,
                        inquiry_rate=4, people=12, injected_bad=4, bad_envelopes=0, good_envelopes=0, banks=5)


async def test_a_broker_sigkilled_during_mixed_traffic_loses_nothing_and_duplicates_nothing(secured_platform,
                                                                                           kafka_cluster):
    """STEP1, STEP2, token issuance, numbering and lookups stream while one of the three brokers is SIGKILLed and,
    3 s later, restarted: every request is answered exactly once, every effect and provision record is there
    once, the chains verify, and every record a producer was told was written (acks=all) is there once."""
    report, _ = await crash_safety(secured_platform, BROKER_KILL, rng=random.Random(7),
                                   brokers=ClusterBroker(kafka_cluster))
    assert report.counts["brokers_killed"] == ["kafka-1"]
    assert report.counts["ledger"]["acknowledged"] > 0 and report.counts["outcomes"].get("answered"), report.counts
    failed = [name for name, ok in report.invariants.items() if not ok]
    assert not failed, (failed, [p for p in report.problems if "inquiry_answered" not in p][:10],
                        report.problems[:10], report.counts)


# ---- the whole cluster stopped and started ---------------------------------------------------------------------


async def test_the_whole_cluster_stopped_and_started_the_platform_resumes_where_it_was(secured_platform,
                                                                                     kafka_cluster, pg):
    s = secured_platform.settings
    names = TopicNames(s.kafka.topic_prefix)
    mn, acct = await _registered_person(secured_platform, pg, "9000")
    offsets_before = await eventually(lambda: _hub_caught_up(s), timeout=60)  # the hub committed all it read
    records_before = await pg.fetchval("SELECT count(*) FROM provision_records")
    dead_before = await _end_offsets(s, names.rejected)

    await kafka_cluster.stop()  # every node, a controlled shutdown; the workers keep running, reconnecting
    await kafka_cluster.start()

    # Topics, records, committed offsets and ACLs are all still there: the hub resumes at its offsets, so
    # nothing it had handled is handled again, and the person registered before is still found.
    assert await _hub_offsets(s) == offsets_before
    async with _client(secured_platform, AGENCY, "after") as agency:
        provided = await _inquire(agency, mn)
    assert provided["status"] == "REGISTERED" and provided["account"]["account_number"] == acct["account_number"]
    # The new inquiry was recorded; nothing was read twice (a second reading would be dead-lettered REPLAYED).
    assert await pg.fetchval("SELECT count(*) FROM provision_records") > records_before
    assert await _end_offsets(s, names.rejected) == dead_before
    assert all(c.alive for c in secured_platform.status()), secured_platform.status()


async def _hub_offsets(settings: Settings) -> dict[int, int]:
    """The hub group's committed offset on each ingress partition."""
    names = TopicNames(settings.kafka.topic_prefix)
    admin = admin_client(settings)
    await admin.start()
    try:
        tps = [TopicPartition(names.ingress, p) for p in range(INGRESS_PARTITIONS)]
        committed = await admin.list_consumer_group_offsets(f"{names.prefix}.hub", partitions=tps)
    finally:
        await admin.close()
    return {tp.partition: om.offset for tp, om in committed.items() if om is not None}


async def _hub_caught_up(settings: Settings) -> dict[int, int] | None:
    """The hub's committed offsets once they reach the ingress's end on every partition, else None."""
    names = TopicNames(settings.kafka.topic_prefix)
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        tps = [TopicPartition(names.ingress, p) for p in range(INGRESS_PARTITIONS)]
        ends = {tp.partition: offset for tp, offset in (await cons.end_offsets(tps)).items()}
    finally:
        await cons.stop()
    committed = await _hub_offsets(settings)
    return committed if all(committed.get(p, 0) >= end for p, end in ends.items() if end > 0) else None
