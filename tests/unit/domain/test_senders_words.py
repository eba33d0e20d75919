"""The receivers' sender table, refusal by refusal: each says why in ids and kinds, with its own reason.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when a branch of
infra/domain/senders.py ``refusal`` changes its reason or its words.
"""

from __future__ import annotations

from infra.core.errors import Reason
from infra.domain.participants import load_participants
from infra.domain.senders import refusal
from schemas import types as msg

P = load_participants()


def test_an_unknown_type_or_recipient_is_nobody_may_send_it():
    assert refusal("no.such.type", "agency-nta", "registry", P, hub_id="hub") == (
        Reason.SENDER_NOT_ALLOWED, "no participant may send no.such.type to registry")
    assert refusal(msg.PROVISION_INQUIRY, "agency-nta", "nobody", P, hub_id="hub") == (
        Reason.SENDER_NOT_ALLOWED, f"no participant may send {msg.PROVISION_INQUIRY} to nobody")


def test_the_hub_originates_only_its_own_answers():
    assert refusal(msg.PROVISION_INQUIRY, "hub", "registry", P, hub_id="hub") == (
        Reason.SENDER_NOT_ALLOWED,
        f"the hub does not originate {msg.PROVISION_INQUIRY}; only a participant's message forwarded by the hub may "
        "carry it")
    assert refusal(msg.LOOKUP_RESULT, "hub", "dicj", P, hub_id="hub") is None
    # the hub's id is what the caller says it is, not the string "hub"
    assert refusal(msg.LOOKUP_RESULT, "the-hub", "dicj", P, hub_id="the-hub") is None


def test_an_unregistered_sender_is_unknown():
    assert refusal(msg.PROVISION_INQUIRY, "agency-x", "registry", P, hub_id="hub") == (
        Reason.UNKNOWN_PARTICIPANT, "sender agency-x is not a registered participant")


def test_a_route_not_in_the_table_names_both_kinds():
    assert refusal(msg.PROVISION_INQUIRY, "bank-9000", "registry", P, hub_id="hub") == (
        Reason.SENDER_NOT_ALLOWED, f"sender kind bank may not send {msg.PROVISION_INQUIRY} to recipient kind registry")
    assert refusal(msg.PROVISION_INQUIRY, "agency-nta", "registry", P, hub_id="hub") is None
