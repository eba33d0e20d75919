"""Who may send what (infra.domain.senders): the table, and every receiver refusing the rest — above all the hub itself."""

from __future__ import annotations

import itertools

import pytest

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto.envelope import HubForwarder, Sealer
from infra.domain.participants import Kind, Participant, Participants
from infra.domain.policy import Policy
from infra.domain.senders import SENDERS, refusal
from schemas import types as msg
from schemas.types import BODY_SCHEMA
from tests.unit.envelope_world import example_body, fresh_clock, world  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

HUB_ORIGINATES = {msg.TOKEN_ISSUE_RESPONSE, msg.LOOKUP_RESULT, msg.REJECTION_NOTICE}
ONE_OF = {Kind.AGENCY: "agency-a", Kind.REGISTRY: "registry", Kind.BANK: "bank-1", Kind.PORTAL: "portal",
          Kind.DICJ: "dicj", Kind.HUB: "hub"}


def refusal_of(fn, *args) -> Reason | None:
    """The reason ``fn(*args)`` is refused with, or None if it is not."""
    try:
        fn(*args)
    except EnvelopeRejection as exc:
        return exc.reason
    return None


# --- the table ----------------------------------------------------------------------------------


def test_every_message_type_has_a_rule_and_the_hub_originates_only_its_own_answers():
    assert set(SENDERS) == set(BODY_SCHEMA)
    assert {t for t, rule in SENDERS.items() if rule.from_hub} == HUB_ORIGINATES
    for type_, rule in SENDERS.items():
        assert Kind.HUB not in {s for s, _ in rule.routes}, type_  # the hub is never an origin through itself
        assert Kind.HUB not in rule.from_hub, type_


def _kinds(spec: str) -> set[Kind]:
    if spec == "*":
        return set(Kind) - {Kind.HUB}
    if not spec.startswith("kind:"):  # a rule for one participant (e.g. §4 registrations by agency-nta)
        from infra.domain.participants import load_participants

        named = load_participants().get(spec)
        assert named is not None, spec
        return {named.kind}
    return {Kind(spec[5:])}


def test_the_table_allows_exactly_what_the_built_in_policy_allows():
    """Nothing the hub forwards is refused by its receiver, and receivers take nothing the policy never allows."""
    from_policy: set[tuple[str, Kind, Kind]] = set()
    for rule in Policy.load().rules:
        for s, r in itertools.product(_kinds(rule.sender), _kinds(rule.recipient)):
            from_policy.add((rule.type, s, r))
    from_table = {(t, s, r) for t, rule in SENDERS.items() for s, r in rule.routes}
    from_table |= {(t, Kind.HUB, r) for t, rule in SENDERS.items() for r in rule.from_hub}
    assert from_table == from_policy


def test_refusal_names_ids_and_kinds_only(world):
    ps = world.participants
    assert refusal(msg.PROVISION_INQUIRY, "agency-a", "registry", ps, hub_id="hub") is None
    assert refusal(msg.PROVISION_INQUIRY, "hub", "registry", ps, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    assert refusal(msg.PROVISION_INQUIRY, "bank-1", "registry", ps, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    assert refusal(msg.PROVISION_INQUIRY, "nobody", "registry", ps, hub_id="hub")[0] is Reason.UNKNOWN_PARTICIPANT
    assert refusal(msg.REJECTION_NOTICE, "hub", "agency-a", ps, hub_id="hub") is None
    assert refusal(msg.REJECTION_NOTICE, "agency-b", "agency-a", ps, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    assert refusal(msg.LOOKUP_RESULT, "hub", "bank-1", ps, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    assert refusal(msg.PROVISION_INQUIRY, "agency-a", "nobody", ps, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    # only the hub's exact id speaks for the hub: another participant declared of kind hub does not
    two_hubs = Participants([*ps, Participant("hub-2", Kind.HUB, "a second hub")])
    assert refusal(msg.REJECTION_NOTICE, "hub-2", "agency-a", two_hubs, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED
    assert refusal(msg.PROVISION_INQUIRY, "hub-2", "registry", two_hubs, hub_id="hub")[0] is Reason.SENDER_NOT_ALLOWED


# --- every receiver enforces it -------------------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(BODY_SCHEMA))
def test_each_receiver_opens_a_type_only_from_the_kinds_allowed_to_send_it(world, type_):
    """Every (sender kind, recipient kind), countersigned by the hub's key: the opener alone decides."""
    rule = SENDERS[type_]
    for sender, recipient in itertools.product(ONE_OF.values(), ONE_OF.values()):
        if sender == recipient or recipient == "hub":
            continue
        sealed = world.seal(sender=sender, to=recipient, type_=type_, body=example_body(type_),
                            subject=world.token(recipient if sender == "hub" else sender))
        envelope = sealed if sender == "hub" else world.countersign(sealed)
        got = refusal_of(world.opener(recipient).receive, envelope)
        if sender == "hub":
            allowed = world.participants.get(recipient).kind in rule.from_hub
        else:
            allowed = (world.participants.get(sender).kind, world.participants.get(recipient).kind) in rule.routes
        assert got is (None if allowed else Reason.SENDER_NOT_ALLOWED), (type_, sender, recipient, got)


# --- the hub's keyset in the wrong hands (issue 13.2) ---------------------------------------------------


def test_the_hub_keyset_cannot_ask_the_registry_or_delete_a_registration(world):
    """With the hub's keys (and its token authority), messages "as if" from the hub are refused, countersigned or not."""
    hub = world.keys["hub"]
    registry_token = world.token("registry")  # the token authority mints the registry's token
    as_hub = Sealer(hub, world.directory, clock=world.clock)
    inquiry = as_hub.seal(example_body(msg.PROVISION_INQUIRY), type=msg.PROVISION_INQUIRY, to="registry",
                          subject=registry_token, data_item="public_funds_account",
                          basis="account-registration-act/art9")
    delete = as_hub.seal({**example_body(msg.REGISTRATION_REQUEST), "operation": "DELETE", "account": None},
                         type=msg.REGISTRATION_REQUEST, to="registry", subject=registry_token,
                         data_item="public_funds_account", basis="account-registration-act/art6")
    self_countersigned = HubForwarder(hub, world.directory, clock=world.clock)
    opener = world.opener("registry")
    for envelope in (inquiry, delete):
        assert refusal_of(opener.receive, envelope) is Reason.SENDER_NOT_ALLOWED
        forwarded = self_countersigned.forward(world.ingress.verify(envelope), registry_token)  # "forwards" its own
        assert refusal_of(opener.receive, forwarded) is Reason.SENDER_NOT_ALLOWED
    # the refusals burnt nothing: an agency's inquiry through the hub still opens
    assert opener.receive(world.forward(world.seal(sender="agency-a"))).meta.sender == "agency-a"


def test_the_hubs_own_opener_opens_only_token_requests_addressed_to_the_hub(world):
    hub_opener = world.opener("hub", require_countersignature=False)
    token_request = world.seal(sender="agency-a", to="hub", type_=msg.TOKEN_ISSUE_REQUEST)
    assert hub_opener.receive(token_request).meta.type == msg.TOKEN_ISSUE_REQUEST
    # addressed to someone else: never, forwarded or direct
    to_registry = world.seal(sender="agency-a", to="registry")
    assert refusal_of(hub_opener.receive, to_registry) is Reason.WRONG_RECIPIENT
    assert refusal_of(hub_opener.receive, world.forward(to_registry)) is Reason.WRONG_RECIPIENT
    # a fan-out naming the hub among its recipients carries more than one wrap: refused before decoding
    fanout = world.sealer("dicj").seal_multi(example_body(msg.LOOKUP_INHERITANCE), type=msg.LOOKUP_INHERITANCE,
                                             to=["hub", "bank-1"], subject=world.token("dicj"),
                                             data_item="deposit_account_holdings", basis="x")
    assert refusal_of(hub_opener.receive, fanout) is Reason.OVERSIZE
    # addressed to the hub, but not a type the hub receives
    for type_ in sorted(set(BODY_SCHEMA) - {msg.TOKEN_ISSUE_REQUEST}):
        sender = "hub" if SENDERS[type_].from_hub else "agency-a"
        envelope = world.seal(sender=sender, to="hub", type_=type_, body=example_body(type_))
        assert refusal_of(hub_opener.receive, envelope) is Reason.SENDER_NOT_ALLOWED, type_
    # nor does the hub ask itself for a token
    own = world.seal(sender="hub", to="hub", type_=msg.TOKEN_ISSUE_REQUEST)
    assert refusal_of(hub_opener.receive, own) is Reason.SENDER_NOT_ALLOWED
