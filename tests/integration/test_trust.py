"""Trust boundaries on the running platform (issue 13.2, 13.7, 13.8): each attack performed, refused, good traffic served.

Hub, registry and simulated banks run as real processes on the session's broker and PostgreSQL;
the portal, the agencies and DICJ are clients in this process.  The attackers act with what
they would really hold:

- a hub keyset holder (the hub's signing and encryption keys, its token authority, and the hub's
  broker rights: it may write any inbox) asks the registry for a person's account and deletes a
  registration "as the hub";
- a bank that was asked answers a lookup for another bank, and banks that were not asked answer
  (one through the hub, one delivered by a hub keyset holder straight into DICJ's inbox);
- anyone who can write the ingress topic floods it with forged envelopes of huge wraps and audit
  paths, carrying only a participant's public key id.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from connectors.bank_sim import set_behaviour
from connectors.dicj import DicjDesk
from infra.crypto.envelope import FANOUT, HubForwarder, Message, Sealer, Verifier, peek
from infra.domain.policy import (
    BASIS_CHANGE,
    BASIS_DISASTER_LOOKUP,
    BASIS_PROVISION,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import observer_dsn
from infra.platform.stack import Platform
from infra.platform.storage import everywhere
from infra.platform.topics import TopicNames
from infra.tools.harness import eventually
from schemas import codec
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import hub_pseudonyms, isolated_platform
from tests.integration.test_connectors_support import hold_account
from tests.integration.test_flows import AGENCY, account, inquire, person, register
from tests.integration.test_lookups import bank_token, numbered_person

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("trust"), prefix_letter="s") as p:
        yield p


@pytest.fixture(scope="module")
async def bus(platform: Platform) -> AsyncIterator[BusClient]:
    ids = ["portal"] + [p.id for p in platform.participants if p.kind.value == "agency"]
    async with BusClient(platform.settings, ids, group=f"{platform.settings.kafka.topic_prefix}.clients") as client:
        yield client


@pytest.fixture(scope="module")
async def dicj(platform: Platform) -> AsyncIterator[DicjDesk]:
    # beside the platform's own DICJ worker (group <prefix>.dicj): both act on DICJ's inbox, each message once
    async with DicjDesk(platform.settings, group=f"{platform.settings.kafka.topic_prefix}.dicj-desk") as desk:
        yield desk


@pytest.fixture
async def pg(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(platform.settings))  # every component's schema, as the operator
    yield conn
    await conn.execute("DELETE FROM bank_sim_behaviour")
    await conn.close()


async def dead_letters(pg: asyncpg.Connection, participant: str, message_ids: list[str], timeout: float = 60
                       ) -> dict[str, str]:
    """The participant's dead letters for these message ids: ``{message id: reason}``, once all are there."""
    found: dict[str, str] = {}

    async def all_there() -> bool:
        for r in await pg.fetch(f"SELECT reason, envelope FROM {await everywhere(pg, 'participant_dead_letters')} d "
                                "WHERE participant = $1", participant):
            found[peek(bytes(r["envelope"])).message_id] = r["reason"]
        return set(message_ids) <= set(found)

    await eventually(all_there, timeout=timeout, what=f"{participant}'s dead letters", interval=0.1)
    return {m: found[m] for m in message_ids}


# --- 13.2: the hub's keyset cannot obtain an account or delete a registration ----------------------------


async def test_a_hub_keyset_holder_obtains_no_account_and_deletes_no_registration(platform, bus, pg):
    settings = platform.settings
    mn, acct = person(), account(bank="9001")
    await hold_account(settings, pg, mn, acct)  # the person's own account at the bank
    assert (await register(bus, mn, acct))["status"] == "DONE"

    store = KeyStore.for_settings(settings)
    hub = store.keyset("hub")
    registry_token = store.token_authority().token_for(mn, "registry")  # what the token authority can mint
    directory = bus.runtime.directory
    as_hub, countersigner, checks = Sealer(hub, directory), HubForwarder(hub, directory), Verifier(directory)

    def inquiry() -> bytes:
        return as_hub.seal({"procedure_code": "BENEFIT-001", "purpose": None, "requested_at": datetime.now(UTC)},
                           type=msg.PROVISION_INQUIRY, to="registry", subject=registry_token,
                           data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION)

    def delete() -> bytes:
        return as_hub.seal({"operation": "DELETE", "account": None, "channel": "PORTAL",
                            "requested_at": datetime.now(UTC)},
                           type=msg.REGISTRATION_REQUEST, to="registry", subject=registry_token,
                           data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_CHANGE)

    attacks = [inquiry(), countersigner.forward(checks.verify(inquiry()), registry_token),  # also "forwarded"
               delete(), countersigner.forward(checks.verify(delete()), registry_token)]
    inbox = TopicNames(settings.kafka.topic_prefix).inbox("registry")
    answers = []
    for envelope in attacks:  # straight into the registry's inbox, each followed by a real STEP2 inquiry
        await bus.runtime.producer.send_and_wait(inbox, envelope, key=registry_token.encode())
        answers.append(await inquire(bus, mn))
    assert [a["status"] for a in answers] == ["REGISTERED"] * len(attacks)
    assert all(a["account"]["account_number"] == acct["account_number"] for a in answers)

    ids = [peek(e).message_id for e in attacks]
    assert set((await dead_letters(pg, "registry", ids)).values()) == {"SENDER_NOT_ALLOWED"}
    # Nothing deleted, nothing answered to the hub.
    assert await pg.fetchval("SELECT status FROM registry_accounts WHERE token = $1", registry_token) == "REGISTERED"
    assert await pg.fetchval("SELECT count(*) FROM registry_data_keys WHERE token = $1", registry_token) == 1
    sent = [peek(bytes(r["envelope"])) for r in await pg.fetch(
        "SELECT envelope FROM participant_outbox WHERE sender = 'registry'")]
    assert not [m for m in sent if m.recipient == "hub" or m.correlation_id in ids]
    assert (await inquire(bus, mn))["status"] == "REGISTERED"


# --- 13.7: an answer counts for its verified sender, and only if that bank was asked ---------------------------


async def test_a_lookup_answer_counts_only_for_the_bank_that_sent_it_and_only_if_it_was_asked(platform, bus, dicj,
                                                                                             pg):
    settings = platform.settings
    mn, accounts = await numbered_person(pg, platform, bus, {"9000": 1, "9001": 1, "9002": 1, "9003": 1})
    await set_behaviour(pg, "bank-9001", answer_delay_ms=4000)  # its real answer comes after the forgery
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                  designated_bank_codes=["9000", "9001"], disaster_id="2026-TEST-13")
    names = hub_pseudonyms(settings)  # each bank sees the lookup under a correlation id of its own

    def seen_by(bank: str) -> str:
        return names.correlation_for(names.conversation(cid, "dicj"), bank)

    await eventually(lambda: pg.fetchval("SELECT count(*) = 2 FROM bank_lookups_received WHERE correlation_id = "
                                         "ANY($1::uuid[])", [uuid.UUID(seen_by(b)) for b in ("bank-9000", "bank-9001")]),
                     timeout=30, what="both banks to get the lookup", interval=0.1)
    fake = {"bank_code": "9001", "branch_code": "999", "account_type": "ORDINARY", "account_number": "7654321",
            "holder_kana": "サギ タロウ"}

    def answer(bank: str, claimed_code: str, correlation_id: str) -> Message:
        return Message(body={"bank_code": claimed_code, "accounts": [fake], "answered_at": datetime.now(UTC)},
                       type=msg.LOOKUP_ANSWER, to="dicj", subject=bank_token(platform, mn, bank[5:]),
                       data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=BASIS_DISASTER_LOOKUP,
                       correlation_id=correlation_id)

    # 1. bank-9000 (asked) answers "as 9001"; 2. bank-9002 (not asked) answers through the hub.
    banks = ParticipantRuntime(settings, ["bank-9000", "bank-9002"], {}, group=f"{uuid.uuid4().hex}.forger")
    await banks.start(consume=False)
    try:
        [as_other] = await banks.send("bank-9000", [answer("bank-9000", "9001", seen_by("bank-9000"))])
        # not asked, it knows no correlation of this lookup: it tries DICJ's (say it leaked)
        [unasked] = await banks.send("bank-9002", [answer("bank-9002", "9002", cid)])
    finally:
        await banks.stop()
    # 3. bank-9003 (not asked) with a hub keyset holder who countersigns it straight into DICJ's inbox.
    store = KeyStore.for_settings(settings)
    directory = bus.runtime.directory
    own = Sealer(store.keyset("bank-9003"), directory).seal_batch([answer("bank-9003", "9003", cid)])[0]
    smuggled = HubForwarder(store.keyset("hub"), directory).forward(Verifier(directory).verify(own),
                                                                    store.token_authority().token_for(mn, "dicj"))
    await bus.runtime.producer.send_and_wait(TopicNames(settings.kafka.topic_prefix).inbox("dicj"), smuggled)

    view = await dicj.wait_result(cid, timeout=60)
    assert view["answering_banks"] == ["9000", "9001"] and view["missing_banks"] == []
    got = sorted(a["account_number"] for a in view["accounts"])
    assert got == sorted(accounts[c][0]["account_number"] for c in ("9000", "9001"))
    assert fake["account_number"] not in got
    filed = {r["bank_code"]: r["message_id"] for r in await pg.fetch(
        "SELECT bank_code, message_id FROM dicj_lookup_answers WHERE correlation_id = $1", uuid.UUID(cid))}
    # DICJ knows each answer by the id of the leg the hub forwarded
    as_other_leg = names.leg_message_id(as_other, "dicj")
    assert set(filed) == {"9000", "9001"} and str(filed["9001"]) != as_other_leg
    # DICJ refused the forgery and the smuggled answer; the hub refused the unasked bank's answer.
    assert await dead_letters(pg, "dicj", [as_other_leg, peek(smuggled).message_id]) == {
        as_other_leg: "SENDER_NOT_ALLOWED", peek(smuggled).message_id: "UNSOLICITED"}
    await eventually(lambda: pg.fetchval("SELECT reason = 'UNSOLICITED' AND NOT accepted FROM hub_messages "
                                         "WHERE message_id = $1", uuid.UUID(unasked)),
                     timeout=30, what="the hub's refusal", interval=0.1)
    assert not await pg.fetchval("SELECT count(*) FROM dicj_lookup_answers WHERE message_id = $1",
                                 uuid.UUID(names.leg_message_id(unasked, "dicj")))
    assert not await pg.fetchval("SELECT count(*) FROM provision_records WHERE message_id = $1",
                                 names.record_message_id(unasked))


# --- 13.8: forged envelopes with huge wraps and audit paths do not stall the hub ----------------------------


def forged_flood(template: bytes, n: int, wraps: int) -> dict[uuid.UUID, bytes]:
    """``n`` forged fan-outs: an agency's real key id and routing, ``wraps`` empty wraps, a 30,000-sibling path."""
    r = codec.decode(template, "envelope")
    out = {}
    for _ in range(n):
        mid = uuid.uuid4()
        r["message_id"] = r["correlation_id"] = mid
        r["recipient"], r["recipient_key_id"] = FANOUT, ""
        r["wraps"] = [{"recipient": "", "recipient_key_id": "", "wrapped_key": b""}] * wraps
        r["signature"] = {"proof": {"leaf_index": 0, "leaf_count": 2, "siblings": [b""] * 30_000},
                          "root_signature": bytes(64)}
        out[mid] = codec.encode("envelope", r)
    return out


async def timed_inquiry(bus: BusClient, my_number: str) -> float:
    started = time.monotonic()
    assert (await inquire(bus, my_number))["status"] == "REGISTERED"
    return time.monotonic() - started


async def test_forged_huge_envelopes_are_refused_fast_and_do_not_delay_step2(platform, bus, pg):
    settings = platform.settings
    mn, acct = person(), account(bank="9002")
    await hold_account(settings, pg, mn, acct)  # the person's own account at the bank
    assert (await register(bus, mn, acct))["status"] == "DONE"
    token = await bus.token_for(AGENCY, mn)
    baseline = statistics.median([await timed_inquiry(bus, mn) for _ in range(5)])

    store = KeyStore.for_settings(settings)
    template = Sealer(store.keyset(AGENCY), bus.runtime.directory).seal(
        {"procedure_code": "X", "purpose": None, "requested_at": datetime.now(UTC)}, type=msg.PROVISION_INQUIRY,
        to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION)
    flood = forged_flood(template, 20, wraps=60_000)
    assert all(200_000 < len(e) < 1_000_000 for e in flood.values())
    ingress = TopicNames(settings.kafka.topic_prefix).ingress
    producer = bus.runtime.producer
    # The flood goes first, in the inquiry's own partition (same key), so the hub must get through it.
    sent = await asyncio.gather(*[await producer.send(ingress, e, key=token.encode()) for e in flood.values()])
    attacked = await timed_inquiry(bus, mn)
    # Generous: the broker still carries ~6 MB in and out; before the caps this took ~20 s here.
    assert attacked < 5 * baseline + 1.0, (attacked, baseline)
    # Each one dead-lettered, refused before it was decoded: never verified, so never claimed by the hub.
    letters = await dead_letters_at(settings, {(m.partition, m.offset) for m in sent})
    assert set(letters.values()) == {"OVERSIZE"}
    assert not await pg.fetchval("SELECT count(*) FROM hub_messages WHERE message_id = ANY($1::uuid[])", list(flood))


async def dead_letters_at(settings, positions: set[tuple[int, int]], timeout: float = 60) -> dict[tuple[int, int], str]:
    """Reasons of the dead letters of these ingress records, by their source (partition, offset)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(TopicNames(settings.kafka.topic_prefix).rejected,
                                bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    found: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + timeout
    try:
        while not positions <= set(found) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    h = {k: v.decode() for k, v in r.headers}
                    source = (int(h["renkei.src.partition"]), int(h["renkei.src.offset"]))
                    if source in positions:
                        found[source] = h["renkei.reason"]
    finally:
        await consumer.stop()
    assert positions <= set(found), "some forged envelopes were not dead-lettered"
    return found
