"""The hub's decision per ingress record (``streams.gateway.HubCore``): token issuance answered by the hub
itself, a bug dead-letters one record and not the batch, a refused envelope keeps what it claims for the
dead letter only, and the records say who asked whom (pure logic, no broker, no database).

Written for the mutation score (docs/testing.md, "Mutation testing").
"""

from __future__ import annotations

import pytest

from infra.core.errors import Reason
from infra.crypto.envelope import Verifier, peek
from infra.crypto.tokens import TokenAuthority, TokenIssuanceClient
from infra.domain.policy import BASIS_TOKEN_ISSUANCE, DATA_PERSON_TOKEN
from infra.records.provisions import ProvisionStatus
from schemas import codec
from streams.gateway import HubCore, Inbound, reply_id
from tests.unit.envelope_world import (
    MY_NUMBER,
    PROCEDURE,
    World,
    world,  # noqa: F401 - fixture
    world_policy,
)
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")
PROVISION = "account-registration-act/art9"


def hub_core(world: World, *, answers: bool = True, participants=None) -> HubCore:
    """The hub as streams.hub builds it: its own inbox for token issuance, its sealer for the answers."""
    tokens = TokenAuthority(bytes(32) + b"link", bytes(32) + b"master", keyset=world.keys["hub"])
    return HubCore(verifier=Verifier(world.directory, hub_id="hub", clock=world.clock), forwarder=world.hub,
                   policy=world_policy(), participants=participants or world.participants, tokens=tokens,
                   opener=world.opener("hub", require_countersignature=False) if answers else None,
                   sealer=world.sealer("hub") if answers else None)


def token_request(world: World, sender: str = "agency-a", requester: str | None = None, ref: str = "ref-1") -> bytes:
    issuer = TokenIssuanceClient(requester or sender, world.directory.encryption_key("hub"))
    body = codec.decode(issuer.request(MY_NUMBER, ref), "token_issue_request")
    return world.seal(sender=sender, to="hub", type_="token.issue.request", body=body, subject="",
                      data_item=DATA_PERSON_TOKEN, basis=BASIS_TOKEN_ISSUANCE)


def inquiry(world: World, sender: str = "agency-a") -> bytes:
    return world.seal(sender=sender, basis=PROVISION, procedure=PROCEDURE)


# --------------------------------------------------------------------------- the hub's own answers


def test_the_hub_answers_a_token_request_itself_and_forwards_nothing(world):
    core = hub_core(world)
    sent = Inbound(token_request(world), 3, 17)
    [d] = core.decide([sent])
    assert d.accepted and d.local and not d.legs and not d.records
    assert core.forward([d]) == []  # addressed to the hub: no leg goes anywhere
    answers, failed = core.answer_local([d])
    assert failed == []
    [(to, key, envelope)] = answers
    assert (to, key) == ("agency-a", world.token("agency-a"))  # the requester's own token, its Kafka key
    opened = world.opener("agency-a", require_countersignature=False).receive(envelope)
    assert opened.body["token"].decode() == world.token("agency-a") and opened.body["local_ref"] == "ref-1"
    origin = peek(sent.value)
    assert (opened.meta.type, opened.meta.sender, opened.meta.correlation_id) == (
        "token.issue.response", "hub", origin.correlation_id)
    assert (opened.meta.data_item, opened.meta.legal_basis) == (DATA_PERSON_TOKEN, BASIS_TOKEN_ISSUANCE)
    assert opened.meta.message_id == reply_id("token-answer", sent, origin.message_id)


def test_a_token_request_for_another_participant_fails_alone(world):
    core = hub_core(world)
    batch = [Inbound(token_request(world, sender="agency-b", requester="agency-a"), 0, 1),  # agency-b asks as a
             Inbound(token_request(world, sender="agency-b", ref="ref-2"), 0, 2),
             Inbound(inquiry(world), 0, 3)]
    decisions = core.decide(batch)
    assert [d.accepted for d in decisions] == [True, True, True]
    answers, failed = core.answer_local(decisions)
    [refused] = failed
    assert refused is decisions[0] and refused.reason is Reason.INVALID_FIELD and not refused.accepted
    assert [(to, key) for to, key, _ in answers] == [("agency-b", world.token("agency-b"))]
    assert len(core.forward(decisions)) == 1  # the inquiry beside them is forwarded; the failed request is not


def test_a_hub_without_its_inbox_answers_nothing_and_says_so(world):
    core = hub_core(world, answers=False)
    [d] = core.decide([Inbound(token_request(world), 0, 0)])
    answers, [failed] = core.answer_local([d])
    assert answers == [] and failed.reason is Reason.UNAUTHORISED
    assert failed.detail == "the hub does not answer token.issue.request"


def test_reply_ids_are_stable_per_record_and_differ_for_anything_else():
    base = reply_id("token-answer", Inbound(b"", 1, 7), "m-1")
    assert base == reply_id("token-answer", Inbound(b"other bytes", 1, 7), "m-1")  # a redelivery: same id
    others = {reply_id("rejection", Inbound(b"", 1, 7), "m-1"), reply_id("token-answer", Inbound(b"", 2, 7), "m-1"),
              reply_id("token-answer", Inbound(b"", 1, 8), "m-1"), reply_id("token-answer", Inbound(b"", 1, 7), "m-2")}
    assert base not in others and len(others) == 4


# --------------------------------------------------------------------------- refusals and failures


class FailingFor:
    """Participants whose look-up of one id fails with a bug (an exception that is not a rejection)."""

    def __init__(self, participants, broken: str) -> None:
        self.participants, self.broken = participants, broken

    def get(self, pid: str):
        if pid == self.broken:
            raise KeyError("bug")
        return self.participants.get(pid)


def test_a_bug_on_one_record_dead_letters_it_and_the_batch_goes_on(world, caplog):
    core = hub_core(world, participants=FailingFor(world.participants, "agency-b"))
    broken, fine = core.decide([Inbound(inquiry(world, "agency-b"), 4, 40), Inbound(inquiry(world), 4, 41)])
    assert (broken.reason, broken.detail) == (Reason.INTERNAL_ERROR, "unexpected KeyError in the hub")
    assert not broken.legs and not broken.records and broken.meta is not None
    assert fine.accepted and [leg.recipient for leg in fine.legs] == ["registry"] and fine.records
    assert "partition 4 offset 40" in caplog.text


def test_a_refused_envelope_keeps_what_it_claims_for_the_dead_letter_only(world):
    core = hub_core(world)
    sealed = bytearray(inquiry(world))
    sealed[-5] ^= 1  # a bit of the signatures flipped: the origin signature no longer verifies
    [forged] = core.decide([Inbound(bytes(sealed), 0, 0)])
    assert forged.reason is Reason.BAD_SIGNATURE and forged.meta is None
    assert forged.unverified is not None and forged.unverified.sender == "agency-a"
    [junk] = core.decide([Inbound(b"\x00not an envelope", 0, 1)])
    assert junk.reason is Reason.MALFORMED and junk.meta is None and junk.unverified is None
    [honest] = core.decide([Inbound(inquiry(world), 0, 2)])
    assert honest.accepted and honest.unverified is None  # an accepted one has its verified meta only


# --------------------------------------------------------------------------- the records


def test_an_inquiry_records_the_sender_as_requester_and_nothing_provided(world):
    core = hub_core(world)
    sent = Inbound(inquiry(world), 0, 0)
    [d] = core.decide([sent])
    [record] = d.records
    origin = peek(sent.value)
    assert (record.requester, record.provider, record.status, record.provided_at) == (
        "agency-a", "registry", ProvisionStatus.REQUESTED, None)
    assert (record.data_item, record.legal_basis, record.not_disclosed) == ("public_funds_account", PROVISION, False)
    assert record.requested_at == origin.created_at
    assert record.person_token == core.tokens.translate(origin.subject, "agency-a", "portal")
    assert record.person == core.pseudonyms.person(record.person_token)


def test_an_answer_is_provided_when_it_says_so_and_its_record_names_the_provider(world):
    core = hub_core(world)
    answer = world.seal(sender="registry", to="agency-a", type_="provision.response", basis=PROVISION,
                        procedure=PROCEDURE, outcome="REGISTERED")
    [d] = core.decide([Inbound(answer, 0, 0)])
    [record] = d.records
    created = peek(answer).created_at
    assert (record.requester, record.provider, record.status) == ("agency-a", "registry", ProvisionStatus.PROVIDED)
    assert record.provided_at == record.requested_at == created


# --------------------------------------------------------------------------- the words of each refusal


def test_each_refusal_says_what_to_do_in_words_a_sender_can_act_on(world):
    """The detail goes into the dead letter and the rejection notice: the sender reads it there."""
    from infra.domain.ratelimit import SenderRateLimiter
    from tests.unit.envelope_world import Clock

    limited = HubCore(verifier=world.ingress, forwarder=world.hub, policy=world_policy(),
                      participants=world.participants, tokens=world.tokens,
                      limiter=SenderRateLimiter(0.5, 1, clock=Clock(0.0)))
    first, second = limited.decide([Inbound(inquiry(world), 0, 0), Inbound(inquiry(world), 0, 1)])
    assert first.accepted and second.reason is Reason.RATE_LIMITED
    assert second.detail == "more than 0.5 messages per second from this sender; send it again later"
    core = hub_core(world)
    [stated] = core.decide([Inbound(world.seal(basis=PROVISION, procedure=PROCEDURE, outcome="REGISTERED"), 0, 2)])
    assert (stated.reason, stated.detail) == (Reason.INVALID_FIELD, "outcome: provision.inquiry carries no outcome")
    for outcome in (None, "MAYBE"):
        [silent] = core.decide([Inbound(world.seal(sender="registry", to="agency-a", type_="provision.response",
                                                   basis=PROVISION, procedure=PROCEDURE, outcome=outcome), 0, 3)])
        assert (silent.reason, silent.detail) == (
            Reason.INVALID_FIELD,
            "outcome: provision.response must state one of REGISTERED, NOT_REGISTERED, BLOCKED in its signed envelope")


def test_a_rule_that_withholds_its_records_marks_them_not_disclosed(world):
    """不開示: the rule's flag reaches the record, or the person would be shown what the law withholds."""
    import dataclasses

    from infra.domain.policy import Policy

    shipped = world_policy()
    withheld = Policy([dataclasses.replace(r, not_disclosed=True) for r in shipped.rules], shipped.procedures)
    core = HubCore(verifier=world.ingress, forwarder=world.hub, policy=withheld, participants=world.participants,
                   tokens=world.tokens)
    [d] = core.decide([Inbound(inquiry(world), 0, 0)])
    assert d.accepted and [r.not_disclosed for r in d.records] == [True]
    [ordinary] = hub_core(world).decide([Inbound(inquiry(world), 0, 1)])
    assert [r.not_disclosed for r in ordinary.records] == [False]


def test_what_is_addressed_to_the_hub_is_judged_by_the_policy_like_anything_else(world):
    """Who may ask the hub: only a token request, under its data item and basis; the rest is refused at ingress."""
    core = hub_core(world)
    issuer = TokenIssuanceClient("agency-a", world.directory.encryption_key("hub"))
    body = codec.decode(issuer.request(MY_NUMBER, "ref-9"), "token_issue_request")
    wrong_item = world.seal(to="hub", type_="token.issue.request", body=body, subject="", data_item="public_funds_account",
                            basis=BASIS_TOKEN_ISSUANCE)
    wrong_basis = world.seal(to="hub", type_="token.issue.request", body=body, subject="", data_item=DATA_PERSON_TOKEN,
                             basis=PROVISION)
    decisions = core.decide([Inbound(wrong_item, 0, 0), Inbound(wrong_basis, 0, 1), Inbound(token_request(world), 0, 2)])
    assert [d.accepted for d in decisions] == [False, False, True]
    assert all(not d.local and d.reason is not None for d in decisions[:2]) and decisions[2].local
    answers, failed = core.answer_local(decisions)
    assert failed == [] and [(to, key) for to, key, _ in answers] == [("agency-a", world.token("agency-a"))]


def test_a_fanout_skips_a_refused_leg_wherever_it_stands_and_says_why_when_none_is_left():
    from datetime import UTC, datetime, timedelta

    from infra.domain.policy import BASIS_INHERITANCE_LOOKUP, DATA_DEPOSIT_ACCOUNT_HOLDINGS, Policy
    from schemas.types import LOOKUP_INHERITANCE
    from tests.unit.streams.test_lookups import PARTICIPANTS, LookupWorld

    lookup_world = LookupWorld()
    core = HubCore(verifier=Verifier(lookup_world.directory, clock=lookup_world.clock), forwarder=lookup_world.hub,
                   policy=Policy.load(), participants=PARTICIPANTS, tokens=lookup_world.tokens)

    def lookup(to: list[str]) -> Inbound:
        now = datetime.fromtimestamp(lookup_world.clock(), UTC)
        return Inbound(lookup_world.sealer("dicj").seal_multi(
            {"receiving_bank_code": None, "requested_at": now, "deadline": now + timedelta(seconds=30)},
            type=LOOKUP_INHERITANCE, to=to, subject=lookup_world.token("dicj"), data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
            basis=BASIS_INHERITANCE_LOOKUP, ttl_s=30), 0, 0)

    [d] = core.decide([lookup(["bank-2", "bank-3", "bank-1"])])  # the allowed leg last
    assert d.accepted and [leg.recipient for leg in d.legs] == ["bank-1"]
    [none] = core.decide([lookup(["bank-2", "bank-3"])])
    assert (none.reason, none.detail) == (
        Reason.SUSPENDED, "no recipient of this fan-out may receive it (suspended or not participating)")


def test_each_message_gets_leg_ids_of_its_own_within_one_conversation(world):
    core = hub_core(world)
    cid = "00000000-0000-4000-8000-00000000c0de"
    first, second = core.decide([Inbound(world.seal(basis=PROVISION, procedure=PROCEDURE, correlation_id=cid), 0, 0),
                                 Inbound(world.seal(basis=PROVISION, procedure=PROCEDURE, correlation_id=cid), 0, 1)])
    assert first.legs[0].ids.correlation_id == second.legs[0].ids.correlation_id
    assert first.legs[0].ids.message_id != second.legs[0].ids.message_id


def test_a_bug_is_logged_in_words_with_where_it_happened(world, caplog):
    core = hub_core(world, participants=FailingFor(world.participants, "agency-b"))
    core.decide([Inbound(inquiry(world, "agency-b"), 4, 40)])
    assert [r.getMessage() for r in caplog.records if r.name == "renkei.hub"] == [
        "unexpected error deciding an ingress record at partition 4 offset 40"]
