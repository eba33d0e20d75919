"""The hub's decisions on the signed metadata: procedures (agency × procedure), outcomes in records, leg ids."""

from __future__ import annotations

import uuid

import pytest

from infra.core.errors import Reason
from infra.crypto.envelope import peek
from infra.records.provisions import ProvisionStatus
from streams.gateway import HubCore, Inbound
from tests.unit.envelope_world import (
    OTHER_PROCEDURE,
    PROCEDURE,
    World,
    world,  # noqa: F401 - fixture
    world_policy,
)
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")
PROVISION = "account-registration-act/art9"


@pytest.fixture
def core(world: World) -> HubCore:
    return HubCore(verifier=world.ingress, forwarder=world.hub, policy=world_policy(),
                   participants=world.participants, tokens=world.tokens)


def inquiry(world: World, sender: str = "agency-a", **kw) -> Inbound:
    return Inbound(world.seal(sender=sender, basis=PROVISION, **kw), 0, 0)


def answer(world: World, correlation_id: str, outcome: str | None, to: str = "agency-a", **kw) -> Inbound:
    kw.setdefault("procedure", PROCEDURE)
    return Inbound(world.seal(sender="registry", to=to, type_="provision.response", basis=PROVISION,
                              correlation_id=correlation_id, outcome=outcome, **kw), 0, 1)


def test_an_entitled_inquiry_is_forwarded_under_ids_of_its_own(world, core):
    sent = inquiry(world, procedure=PROCEDURE)
    origin = peek(sent.value)
    [d] = core.decide([sent])
    assert d.accepted and [leg.recipient for leg in d.legs] == ["registry"]
    ids = d.legs[0].ids
    assert {ids.message_id, ids.correlation_id}.isdisjoint({origin.message_id, origin.correlation_id})
    [(recipient, _, envelope)] = core.forward([d])
    opened = world.opener(recipient).receive(envelope)
    assert (opened.meta.message_id, opened.meta.correlation_id) == (ids.message_id, ids.correlation_id)
    assert opened.meta.procedure == PROCEDURE
    [record] = d.records
    assert record.procedure == PROCEDURE and record.status is ProvisionStatus.REQUESTED
    assert {str(record.message_id), str(record.correlation_id)}.isdisjoint(
        {origin.message_id, origin.correlation_id, ids.message_id, ids.correlation_id})
    assert record.person == core.pseudonyms.person(record.person_token) != record.person_token


@pytest.mark.parametrize("procedure, reason", [
    (None, Reason.UNKNOWN_PROCEDURE),
    ("no-such-benefit", Reason.UNKNOWN_PROCEDURE),
    (OTHER_PROCEDURE, Reason.PROCEDURE_NOT_ALLOWED),  # agency-b's, not agency-a's
])
def test_a_refused_procedure_forwards_nothing_and_records_nothing(world, core, procedure, reason):
    [d] = core.decide([inquiry(world, procedure=procedure)])
    assert d.reason is reason and not d.legs and not d.records and core.forward([d]) == []
    [ok] = core.decide([inquiry(world, sender="agency-b", procedure=OTHER_PROCEDURE)])
    assert ok.accepted  # good traffic beside it


@pytest.mark.parametrize("outcome, status, provided", [
    ("REGISTERED", ProvisionStatus.PROVIDED, True),
    ("NOT_REGISTERED", ProvisionStatus.NOT_REGISTERED, False),
    ("BLOCKED", ProvisionStatus.BLOCKED, False),
])
def test_the_answers_record_says_what_happened_and_the_reply_finds_its_requester(world, core, outcome, status,
                                                                                  provided):
    sent = inquiry(world, procedure=PROCEDURE)
    [asked] = core.decide([sent])
    [(_, _, leg)] = core.forward([asked])
    shown = world.opener("registry").receive(leg).meta  # the registry answers in the correlation it was shown
    [d] = core.decide([answer(world, shown.correlation_id, outcome)])
    assert d.accepted
    [(recipient, _, back)] = core.forward([d])
    opened = world.opener(recipient).receive(back)
    assert recipient == "agency-a" and opened.meta.correlation_id == peek(sent.value).correlation_id
    assert opened.meta.outcome == outcome
    [record] = d.records
    assert (record.status, record.provided_at is not None, record.procedure) == (status, provided, PROCEDURE)
    assert (record.requester, record.provider) == ("agency-a", "registry")
    # inquiry and answer records belong to one conversation, under hub-only ids
    assert record.correlation_id == asked.records[0].correlation_id
    assert record.message_id != asked.records[0].message_id


@pytest.mark.parametrize("outcome", [None, "MAYBE"])
def test_an_answer_that_does_not_say_what_happened_is_refused(world, core, outcome):
    [d] = core.decide([answer(world, str(uuid.uuid4()), outcome)])
    assert d.reason is Reason.INVALID_FIELD and not d.records and "outcome" in d.detail


def test_only_answers_carry_an_outcome(world, core):
    [d] = core.decide([inquiry(world, procedure=PROCEDURE, outcome="REGISTERED")])
    assert d.reason is Reason.INVALID_FIELD


def test_an_answer_is_checked_against_the_agency_it_goes_to(world, core):
    [d] = core.decide([answer(world, str(uuid.uuid4()), "REGISTERED", to="agency-a", procedure=OTHER_PROCEDURE)])
    assert d.reason is Reason.PROCEDURE_NOT_ALLOWED
