"""相続時・災害時照会 as the law runs them (issue 16.10, 16.12): an applicant, DICJ's checks, an answer of banks.

Hub, simulated banks and DICJ's desk run as real processes (the ``dicj`` worker of ``renkei up``) on the
session's broker and PostgreSQL; the portal and an agency are clients in this process, and a bank's
counter system sends as the bank.  Each refusal is performed on the real stack with good traffic
interleaved and still answered:

- an heir's application whose death the resident record (the J-LIS stand-in) does not show;
- disaster applications under an unknown, an expired, and an uncovered disaster;
- routes the policy does not allow: an heir's application from the portal, a disaster application from
  an agency, a bank asking another bank, the portal asking a bank, DICJ notifying the portal of an
  inheritance lookup, a bank notifying the portal.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from connectors.bank_sim import apply_lookup_at_counter, lookup_notifications
from connectors.jlis_sim import record_death
from infra.crypto.envelope import Message
from infra.domain.disasters import Disaster, declare, today_jst
from infra.domain.policy import (
    BASIS_DISASTER_LOOKUP,
    BASIS_INHERITANCE_LOOKUP,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
)
from infra.domain.validation import generate_my_number
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import observer_dsn
from infra.platform.stack import Platform
from infra.records.provisions import ProvisionStore
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import correlation_seen_by, isolated_platform
from tests.integration.test_lookups import bank_token, customer, numbered_person
from tests.integration.waits import hub_barrier, metric, metrics_url, moved_on

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_rng = random.Random(1612)
BANKS = ["9000", "9001", "9002", "9003", "9004"]  # participating; bank-8999 takes no part in lookups
DIED_ON = date(2025, 11, 3)


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("applications"), workers=["hub", "banks", "dicj"],
                                 prefix_letter="a", lookup_deadline_inheritance_s=90,
                                 lookup_deadline_disaster_s=90) as p:
        yield p


@pytest.fixture(scope="module")
async def portal(platform: Platform) -> AsyncIterator[BusClient]:
    async with BusClient(platform.settings, ["portal", "agency-nta"],
                         group=f"{platform.settings.kafka.topic_prefix}.clients") as client:
        yield client


@pytest.fixture(scope="module")
async def counters(platform: Platform) -> AsyncIterator[ParticipantRuntime]:
    """The banks' counter systems: they send as their bank; the bank's inbox is the simulator's."""
    runtime = ParticipantRuntime(platform.settings, [f"bank-{c}" for c in BANKS] + ["dicj"], {},
                                 group=f"{uuid.uuid4().hex}.counters")
    await runtime.start(consume=False)
    yield runtime
    await runtime.stop()


@pytest.fixture
async def pg(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(platform.settings))
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def disasters(platform: Platform) -> dict[str, str]:
    """A current disaster over Ishikawa (17), one whose period ended yesterday, one over Niigata city only."""
    today = today_jst()
    conn = await asyncpg.connect(observer_dsn(platform.settings))
    try:
        for d in (Disaster("2026-NOTO-01", "能登地震", ("17",), today - timedelta(days=30), today + timedelta(days=60)),
                  Disaster("2024-OLD-01", "過去の豪雨", ("17",), today - timedelta(days=400), today - timedelta(days=1)),
                  Disaster("2026-NIIGATA-01", "新潟市の災害", ("15100",), today - timedelta(days=3),
                           today + timedelta(days=30))):
            await declare(conn, d, who="test", reason="the Cabinet Office announced it", audit_event=uuid.uuid4())
    finally:
        await conn.close()
    return {"current": "2026-NOTO-01", "expired": "2024-OLD-01", "elsewhere": "2026-NIIGATA-01"}


def dicj_token(platform: Platform, my_number: str) -> str:
    return KeyStore.for_settings(platform.settings).token_authority().token_for(my_number, "dicj")


def heir(ref: str, *, died_on: date = DIED_ON) -> dict:
    return {"application_ref": ref, "relationship": "CHILD", "date_of_death": died_on,
            "evidence": [{"kind": "DEATH_CERTIFICATE", "reference": f"DC-{ref}"},
                         {"kind": "FAMILY_REGISTER", "reference": f"FR-{ref}"}]}


async def notified(pg, bank: str, cid: str, timeout: float = 60) -> dict:
    """The first notification DICJ sent the bank's counter about application ``cid``."""
    await eventually(lambda: pg.fetchval("SELECT count(*) > 0 FROM bank_lookup_notifications WHERE participant = $1 "
                                         "AND correlation_id = $2", bank, uuid.UUID(cid)),
                     timeout=timeout, what="DICJ's notification", interval=0.1)
    return (await lookup_notifications(pg, bank, cid))[0]


async def settled(platform: Platform, *then: Any) -> None:
    """All sent so far went through the hub and DICJ's desk and on: the hub, DICJ (two polls, two relay passes),
    the hub again, then two more passes of each recipient in ``then`` (readers of its pass counter)."""
    dicj = await metrics_url(platform, "dicj")
    await hub_barrier(platform.settings)
    await moved_on(metric(dicj, "renkei_consumer_polls_total"), what="DICJ's desk")
    await moved_on(metric(dicj, "renkei_outbox_relay_passes_total"), what="DICJ's outbox relay")
    await hub_barrier(platform.settings)
    for read in then:
        await moved_on(read, what="the recipient")


async def asked_banks(pg, platform: Platform, lookup: uuid.UUID) -> set[str]:
    """The banks that received DICJ's lookup (each under the correlation id it was shown, its own)."""
    banks = [b.id for b in platform.participants.banks()]
    seen = {correlation_seen_by(platform.settings, lookup, "dicj", b): b for b in banks}
    return {r["participant"] for r in await pg.fetch(
        "SELECT participant, correlation_id FROM bank_lookups_received WHERE correlation_id = ANY($1::uuid[])",
        list(seen)) if seen[r["correlation_id"]] == r["participant"]}


async def lookup_of(pg, ref: str) -> uuid.UUID | None:
    return await pg.fetchval("SELECT lookup_correlation FROM dicj_applications WHERE application_ref = $1", ref)


# ---- 相続時照会 -----------------------------------------------------------------------------------


async def test_an_heir_applies_at_a_bank_and_is_told_which_banks_hold_accounts(pg, platform, portal, counters):
    mn, accounts = await numbered_person(pg, platform, portal, {"9000": 2, "9002": 1})
    await record_death(pg, dicj_token(platform, mn), DIED_ON)  # on the (simulated) resident record
    cid = await apply_lookup_at_counter(counters, "bank-9001", bank_token(platform, mn, "9001"), "INHERITANCE",
                                        heir("HEIR-0001"))
    note = await notified(pg, "bank-9001", cid)
    assert (note["status"], note["reason"], note["kind"], note["application_ref"]) == (
        "ANSWERED", None, "INHERITANCE", "HEIR-0001")
    assert note["banks_with_accounts"] == ["9000", "9002"]  # which banks: the law's answer
    assert note["banks_not_answered"] == [] and note["banks_not_asked"] == []
    raw = json.dumps(await pg.fetch("SELECT * FROM bank_lookup_notifications WHERE correlation_id = $1",
                                    uuid.UUID(cid)), default=str)
    assert not any(a["account_number"] in raw for held in accounts.values() for a in held)  # never the accounts
    # every participating bank was asked (the applying bank too), and nothing else
    lookup = await lookup_of(pg, "HEIR-0001")
    assert await asked_banks(pg, platform, lookup) == {f"bank-{c}" for c in BANKS}
    # the deceased's provision records: the bank's application to DICJ, DICJ's answer to the bank
    pool = await asyncpg.create_pool(observer_dsn(platform.settings), min_size=1, max_size=2)
    try:
        records = await ProvisionStore(pool).for_person(
            KeyStore.for_settings(platform.settings).token_authority().token_for(mn, "portal"))
    finally:
        await pool.close()
    by = {(r.requester, r.provider, r.status.value) for r in records}
    assert ("bank-9001", "dicj", "REQUESTED") in by and ("bank-9001", "dicj", "PROVIDED") in by


async def test_a_death_the_resident_record_does_not_show_is_refused_and_no_bank_is_asked(pg, platform, portal,
                                                                                       counters):
    alive, _ = await numbered_person(pg, platform, portal, {"9003": 1})
    wrong_day, _ = await numbered_person(pg, platform, portal, {"9003": 1})
    dead, _ = await numbered_person(pg, platform, portal, {"9004": 1})
    await record_death(pg, dicj_token(platform, wrong_day), DIED_ON - timedelta(days=1))
    await record_death(pg, dicj_token(platform, dead), DIED_ON)
    lookups_before = await pg.fetchval("SELECT count(*) FROM hub_lookups")
    refused = [await apply_lookup_at_counter(counters, "bank-9000", bank_token(platform, mn, "9000"),
                                             "INHERITANCE", heir(ref))
               for mn, ref in ((alive, "HEIR-ALIVE"), (wrong_day, "HEIR-WRONG-DAY"))]
    good = await apply_lookup_at_counter(counters, "bank-9000", bank_token(platform, dead, "9000"), "INHERITANCE",
                                         heir("HEIR-GOOD"))
    for cid in refused:
        note = await notified(pg, "bank-9000", cid)
        assert (note["status"], note["reason"]) == ("REFUSED", "DEATH_NOT_CONFIRMED")
        assert note["banks_with_accounts"] == []
    assert (await notified(pg, "bank-9000", good))["banks_with_accounts"] == ["9004"]  # interleaved, answered
    assert await lookup_of(pg, "HEIR-ALIVE") is None and await lookup_of(pg, "HEIR-WRONG-DAY") is None
    assert await pg.fetchval("SELECT count(*) FROM hub_lookups") == lookups_before + 1  # the good one only


async def test_an_application_resent_is_asked_once(pg, platform, portal, counters):
    mn, _ = await numbered_person(pg, platform, portal, {"9001": 1})
    await record_death(pg, dicj_token(platform, mn), DIED_ON)
    body = {**heir("HEIR-TWICE"), "applied_at": datetime.now(UTC)}
    message = Message(body=body, type=msg.LOOKUP_APPLICATION_INHERITANCE, to="dicj",
                      subject=bank_token(platform, mn, "9002"), data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
                      basis=BASIS_INHERITANCE_LOOKUP, correlation_id=str(uuid.uuid4()))
    await counters.send("bank-9002", [message])
    await counters.send("bank-9002", [message])  # a new message id, the same application (correlation)
    note = await notified(pg, "bank-9002", message.correlation_id)
    assert note["banks_with_accounts"] == ["9001"]
    await settled(platform, metric(await metrics_url(platform, "banks"), "renkei_consumer_polls_total"))
    assert await pg.fetchval("SELECT count(*) FROM dicj_applications WHERE application_ref = 'HEIR-TWICE'") == 1
    assert len(await lookup_notifications(pg, "bank-9002", message.correlation_id)) == 1


# ---- 災害時照会 -----------------------------------------------------------------------------------


def disaster(ref: str, disaster_id: str, banks: list[str], area: str = "17204") -> dict:
    return {"application_ref": ref, "disaster_id": disaster_id, "area_code": area, "designated_bank_codes": banks}


async def apply_on_portal(portal: BusClient, my_number: str, application: dict) -> dict:
    answer = await portal.request(
        "portal", type=msg.LOOKUP_APPLICATION_DISASTER, to="dicj", subject=await portal.token_for("portal", my_number),
        body={**application, "applied_at": datetime.now(UTC)}, data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
        basis=BASIS_DISASTER_LOOKUP, timeout=90)
    assert answer.meta.type == msg.LOOKUP_NOTIFICATION, answer.meta.type
    return answer.body


async def test_a_depositor_in_a_declared_disaster_applies_on_the_portal_or_at_a_bank(pg, platform, portal, counters,
                                                                                    disasters):
    mn, _ = await numbered_person(pg, platform, portal, {"9000": 1, "9004": 1})
    note = await apply_on_portal(portal, mn, disaster("PORTAL-D-1", disasters["current"], ["9000", "9003", "7777"]))
    assert (note["status"], note["lookup_kind"]) == ("ANSWERED", "DISASTER")
    assert note["banks_with_accounts"] == ["9000"]  # 9004 holds one too, but was not designated
    assert note["banks_not_asked"] == ["7777"] and note["banks_not_answered"] == []
    lookup = await lookup_of(pg, "PORTAL-D-1")
    assert await asked_banks(pg, platform, lookup) == {"bank-9000", "bank-9003"}  # only the designated banks
    # at a bank's counter: answered to that bank
    cid = await apply_lookup_at_counter(counters, "bank-9002", bank_token(platform, mn, "9002"), "DISASTER",
                                        disaster("BANK-D-1", disasters["current"], ["9004"], area="17"))
    note = await notified(pg, "bank-9002", cid)
    assert (note["status"], note["banks_with_accounts"]) == ("ANSWERED", ["9004"])


async def test_disaster_applications_under_no_declared_disaster_are_refused(pg, platform, portal, counters,
                                                                           disasters):
    mn, _ = await numbered_person(pg, platform, portal, {"9001": 1})
    lookups_before = await pg.fetchval("SELECT count(*) FROM hub_lookups")
    cases = [("D-UNKNOWN", "2026-NOWHERE-99", "17204", "UNKNOWN_DISASTER"),
             ("D-EXPIRED", disasters["expired"], "17204", "DISASTER_EXPIRED"),
             ("D-ELSEWHERE", disasters["elsewhere"], "15202", "OUTSIDE_DISASTER_AREA")]
    for ref, disaster_id, area, reason in cases:
        note = await apply_on_portal(portal, mn, disaster(ref, disaster_id, ["9001"], area))
        assert (note["status"], note["reason"], note["banks_with_accounts"]) == ("REFUSED", reason, []), ref
        good = await apply_on_portal(portal, mn, disaster(f"{ref}-GOOD", disasters["current"], ["9001"]))
        assert good["banks_with_accounts"] == ["9001"]  # interleaved, answered
    cid = await apply_lookup_at_counter(counters, "bank-9001", bank_token(platform, mn, "9001"), "DISASTER",
                                        disaster("D-BANK-UNKNOWN", "2026-NOWHERE-99", ["9001"]))
    assert ((await notified(pg, "bank-9001", cid))["reason"]) == "UNKNOWN_DISASTER"
    assert await pg.fetchval("SELECT count(*) FROM hub_lookups") == lookups_before + len(cases)  # the good ones


# ---- the routes the policy allows, and no other --------------------------------------------------


async def test_routes_the_policy_does_not_allow_are_refused_with_good_traffic_answered(pg, platform, portal,
                                                                                      counters, disasters):
    mn, _ = await numbered_person(pg, platform, portal, {"9003": 1})
    token = {p: KeyStore.for_settings(platform.settings).token_authority().token_for(mn, p)
             for p in ("portal", "agency-nta", "bank-9000", "dicj")}
    now = datetime.now(UTC)
    inquiry = {"designated_bank_codes": ["9001"], "disaster_id": disasters["current"], "requested_at": now,
               "deadline": now + timedelta(days=1), "reminder": 0}
    notification = {"application_ref": "X", "lookup_kind": "INHERITANCE", "status": "ANSWERED", "reason": None,
                    "banks_with_accounts": ["9003"], "banks_not_answered": [], "banks_not_asked": [],
                    "is_supplement": False, "notified_at": now}
    attacks = [  # (sender, type, to, body, basis)
        ("portal", msg.LOOKUP_APPLICATION_INHERITANCE, "dicj", {**heir("PORTAL-HEIR"), "applied_at": now},
         BASIS_INHERITANCE_LOOKUP),  # an heir applies only at a bank
        ("agency-nta", msg.LOOKUP_APPLICATION_DISASTER, "dicj",
         {**disaster("AGENCY-D", disasters["current"], ["9003"]), "applied_at": now}, BASIS_DISASTER_LOOKUP),
        ("bank-9000", msg.LOOKUP_DISASTER, "bank-9001", inquiry, BASIS_DISASTER_LOOKUP),  # a bank asking a bank
        ("portal", msg.LOOKUP_DISASTER, "bank-9001", inquiry, BASIS_DISASTER_LOOKUP),  # the portal asking a bank
        ("dicj", msg.LOOKUP_NOTIFICATION, "portal", notification, BASIS_INHERITANCE_LOOKUP),  # heirs: banks only
        ("bank-9000", msg.LOOKUP_NOTIFICATION, "portal", {**notification, "lookup_kind": "DISASTER"},
         BASIS_DISASTER_LOOKUP),  # only DICJ notifies
    ]
    sent: list[tuple[str, str]] = []
    for sender, type_, to, body, basis in attacks:
        message = Message(body=body, type=type_, to=to, subject=token[sender], data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
                          basis=basis, correlation_id=str(uuid.uuid4()))
        runtime = counters if sender in counters.identities else portal.runtime
        [mid] = await runtime.send(sender, [message])
        sent.append((mid, f"{sender} {type_} → {to}"))
        good = await apply_on_portal(portal, mn, disaster(f"GOOD-{len(sent)}", disasters["current"], ["9003"]))
        assert good["banks_with_accounts"] == ["9003"]  # interleaved, answered

    async def refused() -> bool:
        return await pg.fetchval("SELECT count(*) FROM hub_messages WHERE message_id = ANY($1::uuid[]) AND "
                                 "NOT accepted", [uuid.UUID(m) for m, _ in sent]) == len(sent)

    await eventually(refused, timeout=60, what="the hub's refusals", interval=0.1)
    reasons = {r["message_id"]: r["reason"] for r in await pg.fetch(
        "SELECT message_id, reason FROM hub_messages WHERE message_id = ANY($1::uuid[])", [uuid.UUID(m) for m, _ in sent])}
    assert {what: reasons[uuid.UUID(m)] for m, what in sent} == {what: "UNAUTHORISED" for _, what in sent}
    assert await lookup_of(pg, "PORTAL-HEIR") is None and await lookup_of(pg, "AGENCY-D") is None


# ---- 付番申出 via the portal to several banks: one consolidated result ------------------------------


async def test_numbering_on_the_portal_for_several_banks_comes_back_as_one_result(pg, platform, portal):
    mn = generate_my_number(_rng)
    await customer(pg, platform, mn, {"9000": 2, "9002": 1})
    answer = await portal.request(
        "portal", type=msg.NUMBERING_REQUEST, to="dicj", subject=await portal.token_for("portal", mn),
        body={"bank_codes": ["9000", "9002", "9004"], "channel": "PORTAL", "receiving_bank_code": None,
              "requested_at": datetime.now(UTC)},
        data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=90)
    assert answer.meta.type == msg.NUMBERING_RESULT
    outcomes = {o["bank_code"]: (o["status"], o["accounts_linked"]) for o in answer.body["outcomes"]}
    assert outcomes == {"9000": ("LINKED", 2), "9002": ("LINKED", 1), "9004": ("NO_ACCOUNT", 0)}
    assert answer.body["banks_not_answered"] == []
    await settled(platform, portal.runtime.polls.value)  # a second result, if any, would have arrived by now
    assert await pg.fetchval("SELECT count(*) FROM client_inbox WHERE correlation_id = $1 AND type = $2",
                             uuid.UUID(answer.meta.correlation_id), msg.NUMBERING_RESULT) == 1
    assert await pg.fetchval("SELECT count(*) FROM bank_numbered_accounts WHERE token = ANY($1::text[])",
                             [bank_token(platform, mn, c) for c in ("9000", "9002")]) == 3
