"""The envelope's signed metadata on the running stack (issue 16 items 6-7, issue 13 item 6).

Hub, registry and banks run as real processes on the real broker and PostgreSQL:

- only public-benefit procedures, only to entitled agencies: an inquiry under a procedure the agency is
  not entitled to, under an unknown one and under none is refused with its own reason code
  (PROCEDURE_NOT_ALLOWED, UNKNOWN_PROCEDURE), dead-lettered with a signed rejection notice, and the
  registry never sees it (no provision of the account, no provision record) — while entitled inquiries
  interleaved with them are answered;
- provision records say what happened: NOT_REGISTERED and BLOCKED answers are recorded as such, each
  record names its procedure, and the portal's records view shows the procedure's name and purpose;
- one person's tokens cannot be linked through ids: after a STEP2 round trip, no message id,
  correlation id or key joins what the ingress topic, the registry's inbox, the agency's inbox and the
  audit topic hold of it; and the ops tools show no token material.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import TopicPartition

from connectors.portal import records_view
from infra.crypto.envelope import Message, peek
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.ops import partitions_of
from infra.ops.dlq import list_dead_letters
from infra.ops.inspection import inspect_topic
from infra.platform.kafka import consumer
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import records_dsn
from infra.platform.topics import TopicNames
from infra.records.provisions import ProvisionStatus
from infra.records.records_verify import RecordsVerifier
from schemas import codec
from schemas import types as msg
from tests.integration.platform_fixtures import hub_pseudonyms
from tests.integration.test_connectors_support import hold_account
from tests.integration.test_flows import AGENCY, PROCEDURE, account, person, register
from tests.integration.test_hub_rejections import dead_letters

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NTA = "agency-nta"  # entitled to income-tax-refund only


def inquiry(token: str, procedure: str | None, *, message_id: str | None = None) -> Message:
    return Message(body={"procedure_code": procedure or "none", "purpose": None, "requested_at": datetime.now(UTC)},
                   type=msg.PROVISION_INQUIRY, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                   basis=BASIS_PROVISION, correlation_id=str(uuid.uuid4()), procedure=procedure,
                   message_id=message_id or str(uuid.uuid4()))


async def registered_person(bus, pg, settings, **kw) -> tuple[str, dict]:
    mn, acct = person(), account(**kw)
    await hold_account(settings, pg, mn, acct)  # the bank's records: the person's own account
    assert (await register(bus, mn, acct))["status"] == "DONE"
    return mn, acct


async def read_topic(settings, topic: str) -> list:
    """Every record of a topic, every partition, from the beginning to its high watermark."""
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(cons, topic)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        out = []
        for tp in tps:
            high = None
            while high is None or await cons.position(tp) < high:
                out += (await cons.getmany(tp, timeout_ms=1000)).get(tp, [])
                high = cons.highwater(tp)
        return out
    finally:
        await cons.stop()


# --- 16.6: only public-benefit procedures, only to entitled agencies ------------------------------------------


async def test_unentitled_unknown_and_missing_procedures_are_refused_and_nothing_is_provided(bus, pg,
                                                                                          running_platform):
    settings = running_platform.settings
    mn, acct = await registered_person(bus, pg, running_platform.settings)
    token = await bus.token_for(AGENCY, mn)
    bad = {"PROCEDURE_NOT_ALLOWED": inquiry(token, "income-tax-refund"),  # the tax agency's, not the city's
           "UNKNOWN_PROCEDURE": inquiry(token, "benefit-payment"),  # not in the catalogue
           "UNKNOWN_PROCEDURE/none": inquiry(token, None)}  # an old client that names none
    answers, good = {}, []
    for reason, message in bad.items():  # each refused one followed by an entitled one
        answers[reason] = asyncio.create_task(bus.runtime.request(AGENCY, message, timeout=90))
        good.append(asyncio.create_task(bus.runtime.request(AGENCY, inquiry(token, PROCEDURE), timeout=90)))
    for task in good:
        answer = (await task)
        assert answer.meta.type == msg.PROVISION_RESPONSE and answer.body["status"] == "REGISTERED"
        assert answer.body["account"]["account_number"] == acct["account_number"]
    for reason, task in answers.items():
        notice = await task
        assert notice.meta.type == msg.REJECTION_NOTICE and notice.meta.sender == "hub"
        assert notice.body["reason_code"] == reason.split("/")[0]
    ids = {reason: m.message_id for reason, m in bad.items()}
    letters = await dead_letters(settings, set(ids.values()))
    assert {r: letters[m]["renkei.reason"] for r, m in ids.items()} == {
        "PROCEDURE_NOT_ALLOWED": "PROCEDURE_NOT_ALLOWED", "UNKNOWN_PROCEDURE": "UNKNOWN_PROCEDURE",
        "UNKNOWN_PROCEDURE/none": "UNKNOWN_PROCEDURE"}
    # No provision happened: the registry never got them (no claim of their legs), no record names them.
    names = hub_pseudonyms(settings)
    assert not await pg.fetchval(
        "SELECT count(*) FROM processed_messages WHERE consumer = 'registry' AND message_id = ANY($1::uuid[])",
        [uuid.UUID(names.leg_message_id(m, "registry")) for m in ids.values()])
    assert not await pg.fetchval("SELECT count(*) FROM provision_records WHERE message_id = ANY($1::uuid[])",
                                 [names.record_message_id(m) for m in ids.values()])
    # The person's records: only the entitled exchanges, each naming its procedure.
    portal = await bus.token_for("portal", mn)
    step2 = await pg.fetch("SELECT status, procedure FROM provision_records WHERE person_token = $1 "
                           "AND requester = $2", portal, AGENCY)
    assert sorted((r["status"], r["procedure"]) for r in step2) == sorted(
        [("REQUESTED", PROCEDURE)] * len(good) + [("PROVIDED", PROCEDURE)] * len(good))


async def test_an_entitled_agency_of_another_kind_of_benefit_is_answered(bus, pg, running_platform):
    mn, acct = await registered_person(bus, pg, running_platform.settings)
    token = await bus.token_for(NTA, mn)
    answer = await bus.runtime.request(NTA, inquiry(token, "income-tax-refund"), timeout=90)
    assert answer.body["status"] == "REGISTERED" and answer.meta.procedure == "income-tax-refund"
    refused = await bus.runtime.request(NTA, inquiry(token, PROCEDURE), timeout=90)  # the city's benefit
    assert refused.meta.type == msg.REJECTION_NOTICE and refused.body["reason_code"] == "PROCEDURE_NOT_ALLOWED"


# --- 16.7: records say what happened -----------------------------------------------------------------------


async def test_not_registered_and_blocked_are_recorded_as_such_with_their_procedure(bus, pg, running_platform):
    settings = running_platform.settings
    nobody = person()
    blocked = person()
    # An account stored BLOCKED (a failed holder check did that before the registry stopped storing failed
    # checks at all): the registry answers BLOCKED and provides nothing.
    store = KeyStore.for_settings(settings)
    await pg.execute("INSERT INTO registry_accounts (token, status, account_ct, channel) VALUES ($1, 'BLOCKED', "
                     "'\\x00'::bytea, 'PORTAL')", store.token_authority().token_for(blocked, "registry"))
    for mn, expected in ((nobody, "NOT_REGISTERED"), (blocked, "BLOCKED")):
        answer = await bus.runtime.request(AGENCY, inquiry(await bus.token_for(AGENCY, mn), PROCEDURE), timeout=90)
        assert answer.body["status"] == expected and answer.meta.outcome == expected
        portal = await bus.token_for("portal", mn)
        rows = await pg.fetch("SELECT status, procedure, provided_at FROM provision_records WHERE person_token = $1 "
                              "AND requester = $2 ORDER BY seq", portal, AGENCY)
        assert [(r["status"], r["procedure"]) for r in rows] == [("REQUESTED", PROCEDURE), (expected, PROCEDURE)]
        assert all(r["provided_at"] is None for r in rows)  # nothing was provided
        assert ProvisionStatus.PROVIDED.value not in {r["status"] for r in rows}
        # The portal's records view names the procedure and its purpose, and verifies the chain.
        pool = await asyncpg.create_pool(records_dsn(settings), min_size=1, max_size=2)  # the portal's read-only view
        try:
            async with RecordsVerifier.for_settings(settings, pool) as verifier:
                view = await records_view(verifier, portal)
        finally:
            await pool.close()
        assert view["chain_ok"], view["problems"]
        mine = [r for r in view["records"] if r["requester"] == AGENCY]
        assert [r["status"] for r in mine] == ["REQUESTED", expected]
        assert all(r["procedure"]["code"] == PROCEDURE and r["procedure"]["name_ja"] == "児童手当の支給"
                   and "児童手当" in r["procedure"]["purpose_ja"] for r in mine)


# --- 13.6: no id, correlation id or key joins the topics ---------------------------------------------------


async def test_ingress_inboxes_and_audit_share_no_id_correlation_or_key(bus, pg, running_platform):
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    hub = hub_pseudonyms(settings)  # the test plays the auditor who may map ids; nobody else can
    mn, _ = await registered_person(bus, pg, running_platform.settings, bank="9003")
    tokens = {p: await bus.token_for(p, mn) for p in (AGENCY, "portal")}
    sent = inquiry(tokens[AGENCY], PROCEDURE)
    answer = await bus.runtime.request(AGENCY, sent, timeout=90)
    assert answer.body["status"] == "REGISTERED"
    assert answer.meta.correlation_id == sent.correlation_id  # the agency still matches its answer

    await asyncio.sleep(1.0)  # the audit records are produced with the forwards; give the broker a moment
    ingress = [(r, peek(r.value)) for r in await read_topic(settings, names.ingress)]
    registry_inbox = [(r, peek(r.value)) for r in await read_topic(settings, names.inbox("registry"))]
    agency_inbox = [(r, peek(r.value)) for r in await read_topic(settings, names.inbox(AGENCY))]
    audit = await read_topic(settings, names.audit)

    [asked] = [(r, m) for r, m in ingress if m.message_id == sent.message_id]
    [leg] = [(r, m) for r, m in registry_inbox if m.message_id == hub.leg_message_id(sent.message_id, "registry")]
    [answered] = [(r, m) for r, m in ingress if m.type == msg.PROVISION_RESPONSE
                  and hub.leg_message_id(m.message_id, AGENCY) == answer.meta.message_id]
    [back] = [(r, m) for r, m in agency_inbox if m.message_id == answer.meta.message_id]
    ours = {hub.record_message_id(asked[1].message_id), hub.record_message_id(answered[1].message_id)}
    records = [(r, codec.decode(r.value, "provision_record")) for r in audit]
    records = [(r, d) for r, d in records if d["message_id"] in ours]
    assert len(records) == 2  # the inquiry's and the provision's

    def envelope_values(pair) -> set[str]:
        record, meta = pair
        return {meta.message_id, meta.correlation_id, record.key.decode()}

    agency_side = envelope_values(asked) | envelope_values(back)  # what the agency sent and got
    registry_side = envelope_values(leg) | envelope_values(answered)  # what the registry got and sent
    audit_side = set()
    for r, d in records:
        audit_side |= {r.key.decode(), str(d["record_id"]), str(d["message_id"]), str(d["correlation_id"]),
                       d["person"], bytes(d["person_token"]).decode()} - {""}
    assert agency_side.isdisjoint(registry_side), agency_side & registry_side
    assert audit_side.isdisjoint(agency_side | registry_side)
    # The forward did re-key the person: the agency's token keys its side, not the registry's.
    assert asked[0].key.decode() == tokens[AGENCY] and leg[0].key.decode() != tokens[AGENCY]
    # The audit topic holds no token of the person, keyed or inside the record.
    for r, d in records:
        assert r.key.decode() == d["person"] and bytes(d["person_token"]) == b""
        for token in (tokens[AGENCY], tokens["portal"], leg[0].key.decode()):
            assert token.encode() not in r.value and token.encode() not in r.key
    # The procedure reaches the registry sealed, not in the clear on its inbox.
    assert asked[1].procedure == PROCEDURE and leg[1].procedure is None
    assert answered[1].outcome == "REGISTERED" and back[1].outcome is None


async def test_ops_tools_show_no_token_material(bus, pg, running_platform):
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    mn, _ = await registered_person(bus, pg, running_platform.settings, bank="9004")
    token = await bus.token_for(AGENCY, mn)
    assert (await bus.runtime.request(AGENCY, inquiry(token, PROCEDURE), timeout=90)).body["status"] == "REGISTERED"
    refused = await bus.runtime.request(AGENCY, inquiry(token, "income-tax-refund"), timeout=90)
    assert refused.body["reason_code"] == "PROCEDURE_NOT_ALLOWED"  # a dead letter keyed by the agency's token
    registry_keys = {r.key.decode() for r in await read_topic(settings, names.inbox("registry")) if r.key}
    tokens = {token, await bus.token_for("portal", mn)} | registry_keys
    outputs = [await inspect_topic(settings, topic, limit=10_000)
               for topic in (names.ingress, names.inbox("registry"), names.inbox(AGENCY), names.audit,
                             names.rejected)]
    outputs.append(await list_dead_letters(settings, limit=10_000))
    text = json.dumps(outputs, default=str, ensure_ascii=False)
    assert text.count('"subject": "present"') > 0
    for t in tokens:
        assert t[:6] not in text, "an ops tool printed token material"
