"""Lookup fan-out rules without a broker: which legs the hub sends (streams.lookups, streams.gateway)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.core.errors import Reason
from infra.crypto.envelope import Verifier
from infra.domain.participants import Kind, Participant, Participants
from infra.domain.policy import (
    BASIS_INHERITANCE_LOOKUP,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    Policy,
)
from schemas import types as msg
from streams.gateway import HubCore, Inbound
from streams.lookups import fanout_leg_allowed
from tests.unit.envelope_world import World


class LookupWorld(World):
    PARTICIPANTS = {**World.PARTICIPANTS, "dicj": "x25519"}


PARTICIPANTS = Participants([
    Participant("hub", Kind.HUB, "hub"),
    Participant("dicj", Kind.DICJ, "DICJ"),
    Participant("portal", Kind.PORTAL, "portal"),
    Participant("bank-1", Kind.BANK, "one", bank_code="0001"),
    Participant("bank-2", Kind.BANK, "two (suspended)", bank_code="0002", suspended=True),
    Participant("bank-3", Kind.BANK, "three (not in lookups)", bank_code="0003", participating=False),
])


@pytest.fixture
def world() -> LookupWorld:
    return LookupWorld()


@pytest.fixture
def core(world: LookupWorld) -> HubCore:
    return HubCore(verifier=Verifier(world.directory, clock=world.clock), forwarder=world.hub,
                   policy=Policy.load(), participants=PARTICIPANTS, tokens=world.tokens)


def _lookup(world: LookupWorld, to: list[str]) -> Inbound:
    now = datetime.fromtimestamp(world.clock(), UTC)
    envelope = world.sealer("dicj").seal_multi(
        {"receiving_bank_code": None, "requested_at": now, "deadline": now + timedelta(seconds=30)},
        type=msg.LOOKUP_INHERITANCE, to=to, subject=world.token("dicj"), data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
        basis=BASIS_INHERITANCE_LOOKUP, ttl_s=30)
    return Inbound(envelope, 0, 0)


def test_leg_rules():
    policy = Policy.load()
    one, two, three = (PARTICIPANTS.get(f"bank-{i}") for i in (1, 2, 3))
    assert fanout_leg_allowed(policy, msg.LOOKUP_INHERITANCE, one)
    assert not fanout_leg_allowed(policy, msg.LOOKUP_INHERITANCE, two)  # suspended
    assert not fanout_leg_allowed(policy, msg.LOOKUP_DISASTER, three)  # outside the lookup scheme
    assert fanout_leg_allowed(policy, msg.NUMBERING_REQUEST, three)  # numbering is not a lookup
    assert not fanout_leg_allowed(policy, msg.NUMBERING_REQUEST, two)
    policy.suspend("bank-1")  # a live suspension counts at once
    assert not fanout_leg_allowed(policy, msg.LOOKUP_INHERITANCE, one)
    assert fanout_leg_allowed(policy, msg.LOOKUP_INHERITANCE, None)  # unknown: left to the policy (refused)


def test_fanout_drops_suspended_and_non_participating_legs(world, core):
    [d] = core.decide([_lookup(world, ["bank-1", "bank-2", "bank-3"])])
    assert d.accepted
    assert [(leg.recipient, leg.subject) for leg in d.legs] == [("bank-1", world.token("bank-1"))]  # its own space
    assert [r.provider for r in d.records] == ["bank-1"]
    [(recipient, _, envelope)] = core.forward([d])
    assert recipient == "bank-1"
    opened = world.opener("bank-1").receive(envelope)
    assert opened.meta.subject == world.token("bank-1") and opened.meta.sender == "dicj"


def test_fanout_with_no_allowed_leg_is_refused(world, core):
    [d] = core.decide([_lookup(world, ["bank-2", "bank-3"])])
    assert not d.accepted and d.reason is Reason.SUSPENDED and not d.legs and not d.records


def test_unknown_recipient_still_refuses_the_whole_fanout(world, core):
    core.participants = Participants([p for p in PARTICIPANTS if p.id != "bank-1"])
    [d] = core.decide([_lookup(world, ["bank-1", "bank-3"])])
    assert not d.accepted and d.reason is Reason.UNKNOWN_PARTICIPANT


def test_numbering_fanout_from_dicj_reaches_a_non_participating_bank(world, core):
    now = datetime.fromtimestamp(world.clock(), UTC)
    envelope = world.sealer("dicj").seal_multi(
        {"bank_codes": ["0001", "0003"], "channel": "BANK", "receiving_bank_code": "0009", "requested_at": now},
        type=msg.NUMBERING_REQUEST, to=["bank-1", "bank-3"], subject=world.token("dicj"),
        data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING)
    [d] = core.decide([Inbound(envelope, 0, 1)])
    assert d.accepted and [leg.recipient for leg in d.legs] == ["bank-1", "bank-3"]
