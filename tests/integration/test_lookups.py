"""付番申出 and 相続時・災害時照会 end to end: hub, banks as real processes, DICJ and portal as clients.

Real broker, real PostgreSQL.  The platform runs with its own participants
file: six participating banks (9000-9005), ``bank-8999`` outside the lookup
scheme and ``bank-8998`` suspended, and short lookup settings (an inheritance
lookup gathers for ``INHERITANCE_S``, a disaster lookup for ``DISASTER_S``,
DICJ re-sends to banks that have not answered every ``REMINDER_S``).  A bank's
token for a person is taken from the token authority directly, standing for
the 符号取得 the bank did when the person opened the account; DICJ's and the
portal's go through the token-issuance exchange.  DICJ's desk starts lookups
itself here (the step an accepted application takes: applications are in
test_lookup_applications.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import TopicPartition

from connectors.bank_sim import enrol_customer, file_numbering_at_counter, open_account, set_behaviour
from connectors.dicj import DicjDesk, answer_row_id
from infra.crypto.envelope import HubForwarder, Message, Sealer, Verifier, peek
from infra.crypto.sealing import UnsealError
from infra.domain.policy import (
    BASIS_DISASTER_LOOKUP,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
)
from infra.domain.validation import generate_my_number
from infra.platform.kafka import consumer
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import observer_dsn
from infra.platform.stack import WORKERS, Platform
from infra.platform.storage import everywhere
from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
from infra.records.provisions import ProvisionStore
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import correlation_seen_by, hub_pseudonyms, isolated_platform
from tests.integration.waits import hub_barrier, metric, metrics_url, moved_on

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_rng = random.Random(5150)
BANKS = [f"{9000 + i:04d}" for i in range(6)]
INHERITANCE_S = 10  # short, for the tests that wait for a deadline
DISASTER_S = 90  # long, for the tests in which every bank answers (a loaded machine is slow)
REMINDER_S = 4

PARTICIPANTS = """
[[participant]]
id = "hub"
kind = "hub"
name = "hub"
[[participant]]
id = "registry"
kind = "registry"
name = "registry"
[[participant]]
id = "portal"
kind = "portal"
name = "portal"
[[participant]]
id = "dicj"
kind = "dicj"
name = "DICJ"
[[participant]]
id = "bank-8999"
kind = "bank"
name = "not in the lookup scheme"
bank_code = "8999"
participating = false
[[participant]]
id = "bank-8998"
kind = "bank"
name = "suspended"
bank_code = "8998"
suspended = true
[banks]
count = 6
code_start = 9000
"""


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    state: Path = tmp_path_factory.mktemp("lookups")
    (state / "participants.toml").write_text(PARTICIPANTS)
    async with isolated_platform(endpoints, database, state, participants_file=state / "participants.toml",
                                 workers=["hub", "banks"], banks=6, prefix_letter="l",
                                 lookup_deadline_inheritance_s=INHERITANCE_S, lookup_deadline_disaster_s=DISASTER_S,
                                 lookup_reminder_interval_s=REMINDER_S, numbering_deadline_s=8) as p:
        yield p


@pytest.fixture(scope="module")
async def dicj(platform: Platform) -> AsyncIterator[DicjDesk]:
    async with DicjDesk(platform.settings, group=f"{platform.settings.kafka.topic_prefix}.dicj") as desk:
        yield desk


@pytest.fixture(scope="module")
async def portal(platform: Platform) -> AsyncIterator[BusClient]:
    async with BusClient(platform.settings, ["portal"], group=f"{platform.settings.kafka.topic_prefix}.portal") as c:
        yield c


@pytest.fixture
async def pg(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(platform.settings))
    await conn.execute("DELETE FROM bank_sim_behaviour")
    yield conn
    await conn.execute("DELETE FROM bank_sim_behaviour")
    await conn.execute("DELETE FROM bank_delayed_answers")
    await conn.close()


def seen_by(platform: Platform, dicj_correlation: str, bank: str) -> uuid.UUID:
    """DICJ's lookup as ``bank`` was shown it: under a correlation id of the bank's own."""
    return correlation_seen_by(platform.settings, dicj_correlation, "dicj", bank)


def bank_token(platform: Platform, my_number: str, bank_code: str) -> str:
    return KeyStore.for_settings(platform.settings).token_authority().token_for(my_number, f"bank-{bank_code}")


def account(bank_code: str, kana: str = "サトウ ハナコ") -> dict:
    return {"bank_code": bank_code, "branch_code": f"{_rng.randrange(1, 999):03d}", "account_type": "ORDINARY",
            "account_number": f"{_rng.randrange(10**7):07d}", "holder_kana": kana}


async def customer(pg, platform: Platform, my_number: str, holdings: dict[str, int]) -> dict[str, list[dict]]:
    """Open ``holdings[code]`` accounts for the person at each bank, known to it by its own token."""
    out: dict[str, list[dict]] = {}
    for code, n in holdings.items():
        for _ in range(n):
            a = account(code)
            await open_account(pg, a)
            await enrol_customer(pg, bank_token(platform, my_number, code), a)
            out.setdefault(code, []).append(a)
    return out


async def number_via_portal(portal: BusClient, my_number: str, code: str) -> dict:
    token = await portal.token_for("portal", my_number)
    answer = await portal.request(
        "portal", type=msg.NUMBERING_REQUEST, to=f"bank-{code}", subject=token,
        body={"bank_codes": [code], "channel": "PORTAL", "receiving_bank_code": None,
              "requested_at": datetime.now(UTC)},
        data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=60)
    assert answer.meta.type == msg.NUMBERING_ACK
    return answer.body


async def numbered_person(pg, platform, portal, holdings: dict[str, int]) -> tuple[str, dict[str, list[dict]]]:
    mn = generate_my_number(_rng)
    accounts = await customer(pg, platform, mn, holdings)
    for code in accounts:
        assert (await number_via_portal(portal, mn, code))["status"] == "LINKED"
    return mn, accounts


# ---- 付番申出 -------------------------------------------------------------------------------------


async def test_numbering_via_portal_links_once_and_is_idempotent(pg, platform, portal):
    mn = generate_my_number(_rng)
    accts = await customer(pg, platform, mn, {"9000": 2})
    first = await number_via_portal(portal, mn, "9000")
    again = await number_via_portal(portal, mn, "9000")
    assert (first["status"], first["accounts_linked"]) == ("LINKED", 2)
    assert (again["status"], again["accounts_linked"]) == ("LINKED", 2)
    rows = await pg.fetch("SELECT token FROM bank_numbered_accounts WHERE bank_code = '9000' AND account_number = "
                          "ANY($1::text[])", [a["account_number"] for a in accts["9000"]])
    assert len(rows) == 2 and {r["token"] for r in rows} == {bank_token(platform, mn, "9000")}
    # Someone else claiming one of these accounts is refused, not silently re-linked.
    other = generate_my_number(_rng)
    await enrol_customer(pg, bank_token(platform, other, "9000"), accts["9000"][0])
    assert (await number_via_portal(portal, other, "9000"))["status"] == "REFUSED"
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute("INSERT INTO bank_numbered_accounts (bank_code, branch_code, account_type, account_number, "
                         "token, correlation_id, message_id) VALUES ($1, $2, $3, $4, 'x', $5, $5)",
                         "9000", accts["9000"][0]["branch_code"], "ORDINARY", accts["9000"][0]["account_number"],
                         uuid.uuid4())


async def test_numbering_at_a_bank_counter_goes_via_dicj_and_one_result_comes_back(pg, platform, dicj, portal):
    mn = generate_my_number(_rng)
    await customer(pg, platform, mn, {"9001": 1, "9002": 2})  # nothing at 9003; 7777 is no participant
    await portal.token_for("portal", mn)
    counter = ParticipantRuntime(platform.settings, ["bank-9001"], {}, group=f"{uuid.uuid4().hex}.counter",
                                 database="banks")  # the simulated bank's counter: the simulator's system
    await counter.start(consume=False)
    try:
        cid, own, linked = await file_numbering_at_counter(counter, "bank-9001", bank_token(platform, mn, "9001"),
                                                           ["9001", "9002", "9003", "7777"])
    finally:
        await counter.stop()
    assert (own, linked) == ("LINKED", 1)

    async def notified() -> bool:
        return bool(await pg.fetchval("SELECT count(*) FROM bank_numbering_results WHERE correlation_id = $1", cid))

    await eventually(notified, timeout=60, what="the numbering result at the receiving bank", interval=0.1)
    row = await pg.fetchrow("SELECT * FROM bank_numbering_results WHERE correlation_id = $1", cid)
    import json

    # ONE consolidated result, the receiving bank's own numbering in it (it went to DICJ on the bus)
    outcomes = {o["bank_code"]: (o["status"], o["accounts_linked"]) for o in json.loads(row["outcomes"])}
    assert outcomes == {"9001": ("LINKED", 1), "9002": ("LINKED", 2), "9003": ("NO_ACCOUNT", 0),
                        "7777": ("REFUSED", 0)}
    assert json.loads(row["banks_not_answered"]) == []
    assert row["token"] == bank_token(platform, mn, "9001")
    # The person is notified on the portal too, exactly once (in the portal's own correlation id).
    names = hub_pseudonyms(platform.settings)
    at_portal = names.correlation_for(names.conversation(cid, "bank-9001"), "portal")
    await eventually(lambda: pg.fetchval("SELECT count(*) = 1 FROM client_inbox WHERE correlation_id = $1 AND type = $2",
                                         uuid.UUID(at_portal), msg.NUMBERING_RESULT),
                     timeout=30, what="the portal's copy", interval=0.1)
    assert await pg.fetchval("SELECT count(*) FROM bank_numbered_accounts WHERE bank_code = '9002' AND token = $1",
                             bank_token(platform, mn, "9002")) == 2


# ---- 相続時照会 -----------------------------------------------------------------------------------


async def test_inheritance_lookup_gathers_none_late_and_missing_into_one_result(pg, platform, dicj, portal):
    mn, accts = await numbered_person(pg, platform, portal, {"9000": 2, "9001": 1, "9003": 1})
    await set_behaviour(pg, "bank-9003", answer_delay_ms=(INHERITANCE_S + 4) * 1000)  # answers after the deadline
    await set_behaviour(pg, "bank-9004", answer_delay_ms=3_600_000)  # never in time
    subject = await dicj.token_for("dicj", mn)
    started = time.monotonic()
    cid = await dicj.start_lookup("INHERITANCE", subject)
    view = await dicj.wait_result(cid, timeout=INHERITANCE_S + 30)
    assert time.monotonic() - started >= INHERITANCE_S - 0.5  # waited for the deadline, not for the slow banks
    assert view["answering_banks"] == ["9000", "9001", "9002", "9005"]
    assert view["banks_with_accounts"] == ["9000", "9001"]
    assert sorted(a["account_number"] for a in view["accounts"]) == sorted(
        a["account_number"] for c in ("9000", "9001") for a in accts[c])
    assert view["missing_banks"] == ["9003", "9004"] and view["late_banks"] == []
    # The slow bank's answer still arrives: a supplement, not lost.
    async def supplemented() -> bool:
        return (await dicj.view(cid))["late_banks"] == ["9003"]

    await eventually(supplemented, timeout=30, what="the supplement", interval=0.1)
    view = await dicj.view(cid)
    assert view["missing_banks"] == ["9004"]
    assert [a["account_number"] for a in view["supplement_accounts"]] == [accts["9003"][0]["account_number"]]
    assert await pg.fetchval("SELECT count(*) FROM dicj_lookup_results WHERE correlation_id = $1 AND NOT is_supplement",
                             uuid.UUID(cid)) == 1
    # Provision records: every bank asked, who answered, who did not in time, the consolidated result.
    pool = await asyncpg.create_pool(observer_dsn(platform.settings), min_size=1, max_size=2)
    try:
        conversation = hub_pseudonyms(platform.settings).conversation(cid, "dicj")  # records use the hub's id
        records = [r for r in await ProvisionStore(pool).for_person(await portal.token_for("portal", mn))
                   if r.correlation_id == conversation]
    finally:
        await pool.close()
    by = {(r.provider, r.status.value) for r in records}
    assert {(f"bank-{c}", "REQUESTED") for c in BANKS} <= by
    assert {(f"bank-{c}", "PROVIDED") for c in ("9000", "9001", "9002", "9005", "9003")} <= by
    assert {("bank-9003", "NO_ANSWER"), ("bank-9004", "NO_ANSWER"), ("hub", "PROVIDED")} <= by
    assert ("bank-9004", "PROVIDED") not in by


async def _answer_again_late(platform: Platform, bank: str, cid: str) -> None:
    """``bank`` answers lookup ``cid`` once more, after the result went out: a fresh message id, sealed with the
    bank's own keys, the routing fields of its first answer (a bank system re-sending its answer)."""
    from infra.platform.kafka import producer
    from infra.tools.harness import read_topic

    names = TopicNames(platform.settings.kafka.topic_prefix)
    hub = hub_pseudonyms(platform.settings)  # the bank answers in the correlation id it was shown, its own
    theirs = hub.correlation_for(hub.conversation(cid, "dicj"), bank)
    first = next(m for m in (peek(r.value) for r in await read_topic(platform.settings, names.ingress,
                                                                         partitions=INGRESS_PARTITIONS))
                 if m.correlation_id == theirs and m.sender == bank and m.type == msg.LOOKUP_ANSWER)
    store = KeyStore.for_settings(platform.settings)
    sealer = Sealer(store.keyset(bank), store.local_directory(platform.participants))
    [envelope] = sealer.seal_batch([Message(
        body={"bank_code": bank.removeprefix("bank-"), "accounts": [], "answered_at": datetime.now(UTC)},
        type=msg.LOOKUP_ANSWER, to=first.recipient, subject=first.subject, data_item=first.data_item,
        basis=first.legal_basis, correlation_id=theirs)])
    prod = producer(platform.settings)
    await prod.start()
    try:
        await prod.send_and_wait(names.ingress, envelope, key=first.subject.encode())
    finally:
        await prod.stop()


async def test_duplicate_answers_are_ignored(pg, platform, dicj, portal):
    mn, _ = await numbered_person(pg, platform, portal, {"9002": 1})
    await set_behaviour(pg, "bank-9002", answer_twice=True)
    try:
        before = await pg.fetchval("SELECT count(*) FROM hub_messages WHERE type = $1 AND sender = 'bank-9002' "
                                   "AND accepted", msg.LOOKUP_ANSWER)
        cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn))  # every bank, a long deadline
        view = await dicj.wait_result(cid, timeout=DISASTER_S)
    finally:
        await set_behaviour(pg, "bank-9002")  # the other tests get one answer from it
    assert view["answering_banks"] == BANKS and view["missing_banks"] == []
    assert len(view["accounts"]) == 1
    await eventually(lambda: pg.fetchval("SELECT count(*) - $2 = 2 FROM hub_messages WHERE type = $1 AND "
                                         "sender = 'bank-9002' AND accepted", msg.LOOKUP_ANSWER, before),
                     timeout=20, what="both copies at the hub", interval=0.1)
    # ... and a third, once the result is out (a copy that comes late must not pass for a late answer).
    await _answer_again_late(platform, "bank-9002", cid)
    await eventually(lambda: pg.fetchval("SELECT count(*) - $2 = 3 FROM hub_messages WHERE type = $1 AND "
                                         "sender = 'bank-9002' AND accepted", msg.LOOKUP_ANSWER, before),
                     timeout=20, what="the late copy at the hub", interval=0.1)
    # The hub decides in the claim transaction that recorded each copy: no supplement was sealed.
    assert await pg.fetchval("SELECT count(*) FROM hub_lookup_outbox WHERE correlation_id = $1", uuid.UUID(cid)) == 1
    await hub_barrier(platform.settings)  # the copies' batches are finished (their results flushed) ...
    await moved_on(dicj.runtime.polls.value, what="DICJ's inbox")  # ... and DICJ has looked twice since
    results = await pg.fetch("SELECT is_supplement FROM dicj_lookup_results WHERE correlation_id = $1", uuid.UUID(cid))
    assert [r["is_supplement"] for r in results] == [False]  # the copies made no supplement
    assert await pg.fetchval("SELECT count(*) FROM dicj_lookup_answers WHERE correlation_id = $1",
                             uuid.UUID(cid)) == len(BANKS)


async def test_dicj_files_a_polls_answers_together_and_dead_letters_only_the_unasked_one(pg, platform, dicj, portal):
    """DICJ files a poll's answers in one statement. One poll holding two asked banks' answers and, between them,
    an answer from a bank the lookup did not ask (let through by a holder of the hub's keyset, as in test_trust):
    that one is dead-lettered UNSOLICITED, alone, and both answers beside it are filed."""
    mn, _ = await numbered_person(pg, platform, portal, {"9000": 1, "9001": 1})
    for bank in ("bank-9000", "bank-9001"):  # their own answers stay away while the crafted poll is handled
        await set_behaviour(pg, bank, answer_delay_ms=600_000)
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn), designated_bank_codes=["9000", "9001"],
                                  disaster_id="2026-NOTO-01")
    store = KeyStore.for_settings(platform.settings)
    directory = dicj.runtime.directory
    hub = HubForwarder(store.keyset("hub"), directory)

    def delivered(code: str) -> bytes:
        """Bank ``code``'s answer, sealed with its own keys, countersigned as the hub delivers it to DICJ."""
        [own] = Sealer(store.keyset(f"bank-{code}"), directory).seal_batch([Message(
            body={"bank_code": code, "accounts": [], "answered_at": datetime.now(UTC)}, type=msg.LOOKUP_ANSWER,
            to="dicj", subject=bank_token(platform, mn, code), data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
            basis=BASIS_DISASTER_LOOKUP, correlation_id=cid)])
        return hub.forward(Verifier(directory).verify(own), store.token_authority().token_for(mn, "dicj"))

    poll = [delivered("9000"), delivered("9002"), delivered("9001")]
    inbox = TopicNames(platform.settings.kafka.topic_prefix).inbox("dicj")
    first = 10**12 + _rng.randrange(10**9)  # positions no real record of the inbox has
    await dicj.runtime.handle_batch([(inbox, env, 0, first + i) for i, env in enumerate(poll)])
    filed = {r["bank_code"]: str(r["message_id"]) for r in await pg.fetch(
        "SELECT bank_code, message_id FROM dicj_lookup_answers WHERE correlation_id = $1", uuid.UUID(cid))}
    assert filed == {"9000": peek(poll[0]).message_id, "9001": peek(poll[2]).message_id}
    refused = {r["src_offset"]: r["reason"] for r in await pg.fetch(
        f"SELECT src_offset, reason FROM {await everywhere(pg, 'participant_dead_letters')} d "
        "WHERE participant = 'dicj' AND src_topic = $1 AND src_offset >= $2", inbox, first)}
    assert refused == {first + 1: "UNSOLICITED"}


async def test_non_participating_and_suspended_banks_never_receive_the_inquiry(pg, platform, dicj, portal):
    mn, _ = await numbered_person(pg, platform, portal, {"9000": 1})
    everyone = [p.id for p in platform.participants.banks()]
    assert {"bank-8999", "bank-8998"} <= set(everyone)
    assert {b.id for b in dicj.lookup_banks()} == {f"bank-{c}" for c in BANKS}
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn), banks=everyone)
    view = await dicj.wait_result(cid, timeout=DISASTER_S)
    assert view["answering_banks"] == BANKS  # the two dropped legs were never counted as asked
    asked = {r["bank_id"] for r in await pg.fetch("SELECT bank_id FROM hub_lookup_banks WHERE correlation_id = $1",
                                                  uuid.UUID(cid))}
    assert asked == {f"bank-{c}" for c in BANKS}
    names = TopicNames(platform.settings.kafka.topic_prefix)
    cons = consumer(platform.settings, group_id=None)
    await cons.start()
    try:
        for bank in ("bank-8999", "bank-8998"):
            tp = TopicPartition(names.inbox(bank), 0)
            cons.assign([tp])
            await cons.seek_to_beginning(tp)
            got = await cons.getmany(tp, timeout_ms=1500)
            assert not got.get(tp), f"{bank} received something"
    finally:
        await cons.stop()
    assert not await pg.fetchval("SELECT count(*) FROM bank_lookups_received WHERE participant IN "
                                 "('bank-8999', 'bank-8998')")
    # A fan-out with no allowed recipient at all is refused as a whole.
    cid2 = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn), banks=["bank-8999", "bank-8998"])
    await eventually(lambda: pg.fetchval("SELECT count(*) = 1 FROM hub_messages WHERE reason = 'SUSPENDED' AND "
                                         "type = $1 AND sender = 'dicj'", msg.LOOKUP_DISASTER),
                     timeout=20, what="the refusal", interval=0.1)
    assert not await pg.fetchval("SELECT count(*) FROM hub_lookups WHERE correlation_id = $1", uuid.UUID(cid2))


async def test_hub_worker_killed_mid_gather_emits_the_result_exactly_once(pg, platform, dicj, portal):
    mn, _ = await numbered_person(pg, platform, portal, {"9001": 1})
    await set_behaviour(pg, "bank-9005", answer_delay_ms=2500)  # still gathering when the hub dies
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn))  # every bank, a long deadline
    await eventually(lambda: pg.fetchval("SELECT count(*) >= 3 FROM hub_lookup_banks WHERE correlation_id = $1 AND "
                                         "answered_at IS NOT NULL", uuid.UUID(cid)),
                     timeout=30, what="some answers", interval=0.1)
    os.kill(platform.stack.components["hub"].pid, signal.SIGKILL)
    platform.check_children()
    await asyncio.sleep(0.5)
    platform.start_worker(next(w for w in WORKERS if w.name == "hub"))
    view = await dicj.wait_result(cid, timeout=90)
    assert view["answering_banks"] == BANKS and view["missing_banks"] == []
    # A second emission would come from the restarted hub re-reading the answers: wait until it has been
    # through everything on ingress (flushes included), then until DICJ has polled its inbox twice more.
    await hub_barrier(platform.settings)
    await moved_on(dicj.runtime.polls.value, what="DICJ's inbox")
    assert await pg.fetchval("SELECT count(*) FROM hub_lookup_outbox WHERE correlation_id = $1",
                             uuid.UUID(cid)) == 1
    assert await pg.fetchval("SELECT count(*) FROM dicj_lookup_results WHERE correlation_id = $1",
                             uuid.UUID(cid)) == 1
    # On the wire too: one lookup.result envelope for this correlation in DICJ's inbox.
    tp = TopicPartition(TopicNames(platform.settings.kafka.topic_prefix).inbox("dicj"), 0)
    cons = consumer(platform.settings, group_id=None)
    await cons.start()
    try:
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        high, results = None, 0
        while high is None or await cons.position(tp) < high:
            batch = await cons.getmany(tp, timeout_ms=1000)
            for rec in batch.get(tp, []):
                meta = peek(rec.value)
                results += meta.correlation_id == cid and meta.type == msg.LOOKUP_RESULT
            high = cons.highwater(tp)
    finally:
        await cons.stop()
    assert results == 1


# ---- 災害時照会 -----------------------------------------------------------------------------------


async def test_disaster_lookup_goes_only_to_the_designated_banks(pg, platform, dicj, portal):
    mn, accts = await numbered_person(pg, platform, portal, {"9000": 1, "9004": 1})
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                  designated_bank_codes=["9000", "9002"], disaster_id="2026-NOTO-01")
    # No fallback read before the timeout: the desk's consumer must wake the wait when the result is filed.
    view = await dicj.wait_result(cid, timeout=DISASTER_S, poll_s=3600)
    assert view["answering_banks"] == ["9000", "9002"] and view["missing_banks"] == []
    assert [a["account_number"] for a in view["accounts"]] == [accts["9000"][0]["account_number"]]
    names = hub_pseudonyms(platform.settings)  # each bank got the lookup under a correlation id of its own
    seen = {uuid.UUID(names.correlation_for(names.conversation(cid, "dicj"), b)): b
            for b in [p.id for p in platform.participants.banks()]}
    received = {r["participant"] for r in await pg.fetch(
        "SELECT participant, correlation_id FROM bank_lookups_received WHERE correlation_id = ANY($1::uuid[])",
        list(seen)) if seen[r["correlation_id"]] == r["participant"]}
    assert received == {"bank-9000", "bank-9002"}


# ---- deadlines that fit banks' cycles ------------------------------------------------------------


async def test_an_answer_after_the_inquiry_envelope_expired_is_still_on_time(pg, platform, dicj, portal):
    """The lookup's deadline is its own setting, not the inquiry envelope's lifetime: a bank answering after the
    inquiry expired (the next morning, in life) is counted, on time, not as a late supplement."""
    assert dicj.inquiry_ttl_s("DISASTER") == REMINDER_S < DISASTER_S
    mn, accts = await numbered_person(pg, platform, portal, {"9003": 1})
    await set_behaviour(pg, "bank-9003", answer_delay_ms=(REMINDER_S + 4) * 1000)
    started = time.monotonic()
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                  designated_bank_codes=["9000", "9003"], disaster_id="2026-TEST-11")
    view = await dicj.wait_result(cid, timeout=DISASTER_S)
    assert time.monotonic() - started >= REMINDER_S + 3  # the slow bank's answer came after the envelope's lifetime
    assert view["answering_banks"] == ["9000", "9003"] and view["missing_banks"] == [] and view["late_banks"] == []
    assert [a["account_number"] for a in view["accounts"]] == [accts["9003"][0]["account_number"]]
    row = await pg.fetchrow("SELECT created_at, deadline FROM hub_lookups WHERE correlation_id = $1", uuid.UUID(cid))
    assert abs((row["deadline"] - row["created_at"]).total_seconds() - DISASTER_S) < 1  # the kind's setting
    answered = await pg.fetchrow("SELECT answered_at, late FROM hub_lookup_banks WHERE correlation_id = $1 AND "
                                 "bank_id = 'bank-9003'", uuid.UUID(cid))
    assert not answered["late"] and (answered["answered_at"] - row["created_at"]).total_seconds() > REMINDER_S
    # the bank's pending answer was not doubled by the reminder it got meanwhile
    assert await pg.fetchval("SELECT count(*) FROM dicj_lookup_answers WHERE correlation_id = $1", uuid.UUID(cid)) == 2


async def test_a_bank_that_missed_the_inquiry_answers_the_reminder_and_counts(pg, platform, dicj, portal):
    mn, accts = await numbered_person(pg, platform, portal, {"9001": 1, "9004": 2})
    await set_behaviour(pg, "bank-9004", ignore_inquiries=1)  # its batch drops the first inquiry
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn))  # every bank
    view = await dicj.wait_result(cid, timeout=DISASTER_S)
    assert view["answering_banks"] == BANKS and view["missing_banks"] == [] and view["late_banks"] == []
    assert view["banks_with_accounts"] == ["9001", "9004"] and len(view["accounts"]) == 3
    got = await pg.fetch("SELECT reminder, answered FROM bank_lookups_received WHERE participant = 'bank-9004' "
                         "AND correlation_id = $1 ORDER BY reminder", seen_by(platform, cid, "bank-9004"))
    assert [(r["reminder"], r["answered"]) for r in got][:2] == [(0, False), (1, True)]
    reminded = await pg.fetch("SELECT round, bank_id FROM dicj_lookup_reminders WHERE correlation_id = $1",
                              uuid.UUID(cid))
    assert ("bank-9004" in {r["bank_id"] for r in reminded if r["round"] == 1})
    # the hub kept the first inquiry's banks and deadline: a reminder opens nothing
    assert await pg.fetchval("SELECT count(*) FROM hub_lookup_banks WHERE correlation_id = $1",
                             uuid.UUID(cid)) == len(BANKS)
    assert await pg.fetchval("SELECT count(*) FROM hub_lookups WHERE correlation_id = $1", uuid.UUID(cid)) == 1
    # after the result: no more reminders, however often (and by however many desks) the sweep runs
    rounds = await pg.fetchval("SELECT reminders FROM dicj_lookups WHERE correlation_id = $1", uuid.UUID(cid))
    assert await pg.fetchval("SELECT next_reminder_at FROM dicj_lookups WHERE correlation_id = $1",
                             uuid.UUID(cid)) is None
    assert await asyncio.gather(*(dicj.send_reminders() for _ in range(3))) == [0, 0, 0]  # nothing due, ever
    assert await pg.fetchval("SELECT reminders FROM dicj_lookups WHERE correlation_id = $1", uuid.UUID(cid)) == rounds


async def test_reminders_go_once_per_round_to_the_missing_banks_only(pg, platform, dicj, portal):
    mn, _ = await numbered_person(pg, platform, portal, {"9002": 1})
    await set_behaviour(pg, "bank-9005", ignore_inquiries=100)  # never answers
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                  designated_bank_codes=["9002", "9005"], disaster_id="2026-TEST-11")
    await eventually(lambda: pg.fetchval("SELECT count(*) = 1 FROM dicj_lookup_answers WHERE correlation_id = $1",
                                         uuid.UUID(cid)), timeout=DISASTER_S, what="the answering bank", interval=0.1)
    # many sweeps at once, from this desk and its loop: each due round is claimed once
    await pg.execute("UPDATE dicj_lookups SET next_reminder_at = now() WHERE correlation_id = $1", uuid.UUID(cid))
    await asyncio.gather(*(dicj.send_reminders() for _ in range(4)))
    await eventually(lambda: pg.fetchval("SELECT count(*) >= 2 FROM bank_lookups_received WHERE participant = "
                                         "'bank-9005' AND correlation_id = $1", seen_by(platform, cid, "bank-9005")),
                     timeout=30, what="a reminder", interval=0.1)
    received = await pg.fetch("SELECT reminder FROM bank_lookups_received WHERE participant = 'bank-9005' AND "
                              "correlation_id = $1", seen_by(platform, cid, "bank-9005"))
    rounds = await pg.fetchval("SELECT reminders FROM dicj_lookups WHERE correlation_id = $1", uuid.UUID(cid))
    assert sorted(r["reminder"] for r in received) == list(range(len(received)))  # every round once, in order
    assert len(received) - 1 <= rounds
    reminded = await pg.fetch("SELECT DISTINCT bank_id FROM dicj_lookup_reminders WHERE correlation_id = $1",
                              uuid.UUID(cid))
    assert {r["bank_id"] for r in reminded} == {"bank-9005"}  # the bank that answered is never reminded
    assert not await pg.fetchval("SELECT count(*) FROM bank_lookups_received WHERE participant = 'bank-9002' AND "
                                 "correlation_id = $1 AND reminder > 0", seen_by(platform, cid, "bank-9002"))


# ---- a bank whose real channel is connected ---------------------------------------------------------


async def test_the_simulator_never_answers_a_lookup_for_a_bank_whose_channel_is_leased(pg, platform, dicj, portal):
    """Issue 16.9: a connector's lease named only the types its channel carried (existence checks, registration
    results); the simulator kept answering lookups for that bank.  Now it parks every message for a leased bank,
    and hands them back only once the lease is gone."""
    mn, accts = await numbered_person(pg, platform, portal, {"9005": 1})
    await pg.execute(  # a connector of bank-9005 holding the lease with the types an older channel carried
        "INSERT INTO bank_channel_leases (bank_id, channel, holder, types, expires_at) VALUES ('bank-9005', "
        "'bank-files', 'test-holder', $1, now() + interval '1 hour') ON CONFLICT (bank_id) DO UPDATE SET "
        "holder = EXCLUDED.holder, types = EXCLUDED.types, expires_at = EXCLUDED.expires_at, released_at = NULL",
        [msg.EXISTENCE_CHECK, msg.REGISTRATION_RESULT, msg.REJECTION_NOTICE])
    try:
        cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                      designated_bank_codes=["9000", "9005"], disaster_id="2026-TEST-09")
        await eventually(lambda: pg.fetchval("SELECT count(*) >= 1 FROM bank_parked_messages WHERE bank_id = "
                                             "'bank-9005' AND type = $1", msg.LOOKUP_DISASTER),
                         timeout=30, what="the parked inquiry", interval=0.1)
        await eventually(lambda: pg.fetchval("SELECT count(*) = 1 FROM dicj_lookup_answers WHERE correlation_id = $1",
                                             uuid.UUID(cid)), timeout=30, what="the other bank's answer", interval=0.1)
        # the simulator goes over parked messages every second: two passes, and it left this one
        await moved_on(metric(await metrics_url(platform, "banks"), "renkei_bank_drain_passes_total"),
                       what="the simulator's drain of parked messages")
        assert not await pg.fetchval("SELECT count(*) FROM bank_lookups_received WHERE participant = 'bank-9005' "
                                     "AND correlation_id = $1", seen_by(platform, cid, "bank-9005"))
        assert await pg.fetchval("SELECT count(*) FROM dicj_lookup_answers WHERE correlation_id = $1 AND "
                                 "bank_code = '9005'", uuid.UUID(cid)) == 0
    finally:
        await pg.execute("UPDATE bank_channel_leases SET expires_at = now(), released_at = now() "
                         "WHERE bank_id = 'bank-9005'")
    # released: the simulator takes the bank back, and the parked inquiry is answered (once)
    view = await dicj.wait_result(cid, timeout=DISASTER_S)
    assert view["answering_banks"] == ["9000", "9005"]
    assert [a["account_number"] for a in view["accounts"]] == [accts["9005"][0]["account_number"]]


# ---- personal data at rest (issue 13 item 12) ---------------------------------------------------


async def test_dicj_keeps_answers_sealed_at_rest_and_an_answer_moved_to_another_person_does_not_open(
        pg, platform, dicj, portal):
    """The banks' answers (the person's accounts) are stored sealed under DICJ's data key, bound to the lookup
    and the bank; the database operator who moves one person's answer into another's lookup gets nothing."""
    mn, accts = await numbered_person(pg, platform, portal, {"9000": 1, "9001": 1})
    mn2, accts2 = await numbered_person(pg, platform, portal, {"9000": 1})
    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn),
                                  designated_bank_codes=["9000", "9001"], disaster_id="2026-NOTO-01")
    cid2 = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", mn2),
                                   designated_bank_codes=["9000"], disaster_id="2026-NOTO-01")
    view, view2 = await dicj.wait_result(cid, timeout=DISASTER_S), await dicj.wait_result(cid2, timeout=DISASTER_S)
    assert sorted(a["account_number"] for a in view["accounts"]) == sorted(
        accts[c][0]["account_number"] for c in ("9000", "9001"))  # the flow still delivers
    assert [a["account_number"] for a in view2["accounts"]] == [accts2["9000"][0]["account_number"]]

    stored = await dicj.pool.fetch(
        "SELECT bank_code, account_count, accounts, accounts_ct, row_to_json(a)::text AS whole "
        "FROM dicj_lookup_answers a WHERE correlation_id = ANY($1::uuid[])", [uuid.UUID(cid), uuid.UUID(cid2)])
    assert len(stored) == 3 and all(r["accounts"] is None and r["account_count"] == 1 for r in stored)
    secrets_of_people = [mn, mn2, "サトウ", *(a["account_number"] for a in (*accts["9000"], *accts["9001"],
                                                                           *accts2["9000"]))]
    for r in stored:
        for s in secrets_of_people:
            assert s not in r["whole"] and s.encode() not in r["accounts_ct"]

    # The insider copies person 2's answer from bank 9000 over person 1's: it does not open there.
    await dicj.pool.execute(
        "UPDATE dicj_lookup_answers SET accounts_ct = (SELECT accounts_ct FROM dicj_lookup_answers "
        "WHERE correlation_id = $2 AND bank_code = '9000') WHERE correlation_id = $1 AND bank_code = '9000'",
        uuid.UUID(cid), uuid.UUID(cid2))
    with pytest.raises(UnsealError):
        await dicj.view(cid)
    assert (await dicj.view(cid2))["accounts"] == view2["accounts"]  # the other person's lookup is untouched


async def test_dicj_answers_stored_in_plain_before_are_sealed_at_start(dicj):
    cid = str(uuid.uuid4())
    plain = [{"bank_code": "9005", "branch_code": "001", "account_type": "ORDINARY", "account_number": "7654321",
              "holder_kana": "スズキ イチロウ"}]
    async with dicj.pool.acquire() as conn:  # a row as the table held it before sealing (the migration kept it)
        await conn.execute("INSERT INTO dicj_lookup_answers (correlation_id, bank_code, message_id, accounts, "
                           "account_count) VALUES ($1, '9005', $2, $3::jsonb, 1)", uuid.UUID(cid), uuid.uuid4(),
                           json.dumps(plain))
    assert await dicj.seal_legacy_answers() >= 1
    row = await dicj.pool.fetchrow("SELECT accounts, accounts_ct FROM dicj_lookup_answers WHERE correlation_id = $1",
                                   uuid.UUID(cid))
    assert row["accounts"] is None and b"7654321" not in row["accounts_ct"]
    assert dicj.sealer.open("dicj", answer_row_id(cid, "9005"), "", row["accounts_ct"]) == plain


async def test_a_disaster_lookup_with_all_its_legs_is_one_trace(pg, platform, dicj, portal):
    """W3C trace context (infra.core.tracing) on the real broker: DICJ's inquiry, the hub's leg to each designated
    bank, each bank's answer and the consolidated result (sealed later, from the hub's lookup state) carry
    one trace id, each hop a span of its own."""
    from infra.core.errors import EnvelopeRejection
    from infra.core.tracing import HEADER, TraceContext
    from infra.tools.harness import read_topic

    cid = await dicj.start_lookup("DISASTER", await dicj.token_for("dicj", generate_my_number(_rng)),
                                  designated_bank_codes=["9000", "9002"], disaster_id="2026-NOTO-01")
    await dicj.wait_result(cid, timeout=DISASTER_S)
    names = TopicNames(platform.settings.kafka.topic_prefix)
    wanted = {("dicj", msg.LOOKUP_DISASTER, cid), ("hub", msg.LOOKUP_RESULT, cid)}
    for bank in ("bank-9000", "bank-9002"):
        wanted |= {("hub", msg.LOOKUP_DISASTER, str(seen_by(platform, cid, bank))),
                   (bank, msg.LOOKUP_ANSWER, str(seen_by(platform, cid, bank)))}
    traces: dict[tuple[str, str, str, str], TraceContext | None] = {}
    for topic, partitions in [(names.ingress, INGRESS_PARTITIONS), (names.inbox("bank-9000"), 1),
                              (names.inbox("bank-9002"), 1), (names.inbox("dicj"), 1)]:
        for r in await read_topic(platform.settings, topic, partitions):
            try:
                meta = peek(r.value)
            except EnvelopeRejection:  # another test's barrier markers on the ingress
                continue
            sender = "hub" if topic != names.ingress else meta.sender
            if (sender, meta.type, meta.correlation_id) in wanted:
                traces[(topic, sender, meta.type, meta.correlation_id)] = TraceContext.parse(
                    dict(r.headers or ()).get(HEADER))
    # the inquiry, its two legs, two answers on the ingress and on DICJ's side of the hub, the result
    assert len(traces) == 6, sorted(traces)
    assert None not in traces.values()
    assert len({t.trace_id for t in traces.values()}) == 1
    assert len({t.span_id for t in traces.values()}) == 6
