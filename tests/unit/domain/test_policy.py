"""The default-deny policy: the shipped rule set allows exactly the DESIGN §6 flows."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.domain import policy as policy_rules
from infra.domain.participants import Kind, Participant, load_participants
from infra.domain.procedures import Procedures
from schemas.types import MESSAGE_TYPES

PARTICIPANTS = load_participants()
CATALOGUE = Procedures.load()
STEP2 = {"provision.inquiry", "provision.response"}  # rules with procedure = true: the agency's entitlement
ALL_KINDS = tuple(Kind)

REG, CHG, BANK_IN, PROV = policy_rules.BASIS_REGISTRATION, policy_rules.BASIS_CHANGE, policy_rules.BASIS_BANK_INTAKE, policy_rules.BASIS_PROVISION
ALONG = policy_rules.BASIS_ALONGSIDE_PROCEDURE
NUM, INH, DIS = policy_rules.BASIS_NUMBERING, policy_rules.BASIS_INHERITANCE_LOOKUP, policy_rules.BASIS_DISASTER_LOOKUP
ACCOUNT, NUMBERING, HOLDINGS = policy_rules.DATA_PUBLIC_FUNDS_ACCOUNT, policy_rules.DATA_DEPOSIT_ACCOUNT_NUMBERING, policy_rules.DATA_DEPOSIT_ACCOUNT_HOLDINGS
K = Kind

# Written out by hand from DESIGN §6 (independently of policy.toml):
# (sender kinds, recipient kinds, type, data item, bases, records)
FLOWS: list[tuple[tuple[Kind, ...], tuple[Kind, ...], str, str, tuple[str, ...], bool]] = [
    ((K.PORTAL,), (K.REGISTRY,), "registration.request", ACCOUNT, (REG, CHG), True),
    ((K.REGISTRY,), (K.BANK,), "existence.check", ACCOUNT, (REG, ALONG, CHG, BANK_IN), True),
    ((K.BANK,), (K.REGISTRY,), "existence.answer", ACCOUNT, (REG, ALONG, CHG, BANK_IN), True),
    ((K.REGISTRY,), (K.PORTAL,), "registration.result", ACCOUNT, (REG, CHG), False),
    ((K.AGENCY,), (K.REGISTRY,), "provision.inquiry", ACCOUNT, (PROV,), True),
    ((K.REGISTRY,), (K.AGENCY,), "provision.response", ACCOUNT, (PROV,), True),
    ((K.BANK,), (K.REGISTRY,), "registration.request", ACCOUNT, (BANK_IN,), True),
    ((K.REGISTRY,), (K.BANK,), "registration.result", ACCOUNT, (BANK_IN,), False),
    ((K.REGISTRY,), (K.AGENCY,), "registration.result", ACCOUNT, (ALONG,), False),
    ((K.PORTAL,), (K.BANK, K.DICJ), "numbering.request", NUMBERING, (NUM,), True),
    ((K.BANK,), (K.DICJ,), "numbering.request", NUMBERING, (NUM,), True),
    ((K.DICJ,), (K.BANK,), "numbering.request", NUMBERING, (NUM,), True),
    ((K.BANK,), (K.PORTAL, K.BANK, K.DICJ), "numbering.ack", NUMBERING, (NUM,), False),
    ((K.DICJ,), (K.PORTAL, K.BANK), "numbering.result", NUMBERING, (NUM,), False),
    ((K.DICJ,), (K.BANK,), "lookup.inheritance", HOLDINGS, (INH,), True),
    ((K.DICJ,), (K.BANK,), "lookup.disaster", HOLDINGS, (DIS,), True),
    ((K.BANK,), (K.DICJ,), "lookup.answer", HOLDINGS, (INH, DIS), True),
    ((K.HUB,), (K.DICJ,), "lookup.result", HOLDINGS, (INH, DIS), False),
    # an heir applies only at a bank; a depositor in a declared disaster at a bank or on the portal;
    # DICJ answers the channel that applied (the portal only for a disaster)
    ((K.BANK,), (K.DICJ,), "lookup.application.inheritance", HOLDINGS, (INH,), True),
    ((K.BANK, K.PORTAL), (K.DICJ,), "lookup.application.disaster", HOLDINGS, (DIS,), True),
    ((K.DICJ,), (K.BANK,), "lookup.notification", HOLDINGS, (INH, DIS), True),
    ((K.DICJ,), (K.PORTAL,), "lookup.notification", HOLDINGS, (DIS,), True),
    (ALL_KINDS, (K.HUB,), "token.issue.request", policy_rules.DATA_PERSON_TOKEN, (policy_rules.BASIS_TOKEN_ISSUANCE,), False),
    ((K.HUB,), ALL_KINDS, "token.issue.response", policy_rules.DATA_PERSON_TOKEN, (policy_rules.BASIS_TOKEN_ISSUANCE,), False),
    ((K.HUB,), ALL_KINDS, "rejection.notice", policy_rules.DATA_NONE, (policy_rules.BASIS_NETWORK_OPERATION,), False),
    ((K.REGISTRY,), (K.PORTAL,), "person.notice", policy_rules.DATA_PERSON_NOTICE, (REG, ALONG, CHG, BANK_IN, PROV), False),
    ((K.DICJ,), (K.PORTAL,), "person.notice", policy_rules.DATA_PERSON_NOTICE, (INH, DIS), False),
]

ALLOWED: dict[tuple[Kind, Kind, str, str, str], bool] = {
    (s, r, t, item, basis): records
    for senders, recipients, t, item, bases, records in FLOWS
    for s in senders for r in recipients for basis in bases
}


@pytest.fixture(scope="module")
def policy() -> policy_rules.Policy:
    return policy_rules.Policy.load()


def one(kind: Kind, n: int = 0) -> Participant:
    return PARTICIPANTS.of_kind(kind)[n]


def procedure_for(type_: str, sender: Participant, recipient: Participant) -> str | None:
    """A procedure the STEP2 agency of this message is entitled to (None for every other type)."""
    if type_ not in STEP2:
        return None
    agency = sender if sender.kind is K.AGENCY else recipient
    entitled = CATALOGUE.for_agency(agency)
    return entitled[0].code if entitled else None


def denied(policy: policy_rules.Policy, *args) -> Reason:
    with pytest.raises(PolicyDenied) as caught:
        policy.authorise(*args)
    return caught.value.reason


@pytest.mark.parametrize("combo", sorted(ALLOWED, key=str), ids=lambda c: f"{c[0].value}->{c[1].value}:{c[2]}:{c[4]}")
def test_every_flow_is_allowed_with_its_records_flag(policy, combo):
    s, r, t, item, basis = combo
    sender, recipient = one(s), one(r, 1 if s is r is Kind.BANK else 0)
    decision = policy.authorise(sender, recipient, t, item, basis, procedure_for(t, sender, recipient))
    assert decision.records is ALLOWED[combo]
    assert decision.not_disclosed is False


def test_shipped_rules_use_only_documented_items_and_bases(policy):
    for rule in policy.rules:
        assert rule.data_item in policy_rules.DATA_ITEMS, rule.id
        assert set(rule.bases) <= policy_rules.BASES, rule.id


def test_inquiries_and_provisions_record_and_say_who_provided(policy):
    inquiry = policy.authorise(one(K.AGENCY), one(K.REGISTRY), "provision.inquiry", ACCOUNT, PROV, "child-allowance")
    response = policy.authorise(one(K.REGISTRY), one(K.AGENCY), "provision.response", ACCOUNT, PROV,
                                "child-allowance")
    assert (inquiry.records, inquiry.sender_role) == (True, "requester")
    assert (response.records, response.sender_role) == (True, "provider")
    assert inquiry.rule_id == "step2.provision-inquiry"


@pytest.mark.parametrize("combo", sorted(ALLOWED, key=str), ids=lambda c: f"{c[0].value}->{c[1].value}:{c[2]}:{c[4]}")
def test_swapped_direction_is_unauthorised(policy, combo):
    s, r, t, item, basis = combo
    if (r, s, t, item, basis) in ALLOWED:
        pytest.skip("the flow is legitimately symmetric")
    assert denied(policy, one(r), one(s, 1 if s is r else 0), t, item, basis) is Reason.UNAUTHORISED


def test_wrong_basis_or_data_item_is_unauthorised(policy):
    agency, registry = one(K.AGENCY), one(K.REGISTRY)
    assert denied(policy, agency, registry, "provision.inquiry", ACCOUNT, REG) is Reason.UNAUTHORISED
    assert denied(policy, agency, registry, "provision.inquiry", ACCOUNT, "口座登録法第9条") is Reason.UNAUTHORISED
    assert denied(policy, agency, registry, "provision.inquiry", HOLDINGS, PROV) is Reason.UNAUTHORISED
    # a disaster basis does not open an inheritance lookup
    assert denied(policy, one(K.DICJ), one(K.BANK), "lookup.inheritance", HOLDINGS, DIS) is Reason.UNAUTHORISED
    # bank-channel basis is not valid from the portal, portal bases not valid from a bank
    assert denied(policy, one(K.PORTAL), registry, "registration.request", ACCOUNT, BANK_IN) is Reason.UNAUTHORISED
    assert denied(policy, one(K.BANK), registry, "registration.request", ACCOUNT, REG) is Reason.UNAUTHORISED
    # an agency may not read the registry's registration flow
    assert denied(policy, agency, registry, "registration.request", ACCOUNT, REG) is Reason.UNAUTHORISED


def test_registration_alongside_a_procedure_only_from_the_entitled_agencies(policy):
    """口座登録法 §4: the tax agency (tax return) and the pension ministry (pension claim) may file a
    registration for the person; any other agency, and any other basis, is refused."""
    registry = one(K.REGISTRY)
    for entitled in ("agency-nta", "agency-mhlw"):
        decision = policy.authorise(PARTICIPANTS.get(entitled), registry, "registration.request", ACCOUNT, ALONG)
        assert decision.records is True and decision.rule_id.startswith("alongside.")
        assert denied(policy, PARTICIPANTS.get(entitled), registry, "registration.request", ACCOUNT, REG) \
            is Reason.UNAUTHORISED
    assert denied(policy, PARTICIPANTS.get("agency-city-minato"), registry, "registration.request", ACCOUNT,
                  ALONG) is Reason.UNAUTHORISED
    assert denied(policy, one(K.DICJ), registry, "registration.request", ACCOUNT, BANK_IN) is Reason.UNAUTHORISED


def test_unknown_participant(policy):
    registry = one(K.REGISTRY)
    assert denied(policy, None, registry, "provision.inquiry", ACCOUNT, PROV) is Reason.UNKNOWN_PARTICIPANT
    assert denied(policy, one(K.AGENCY), None, "provision.inquiry", ACCOUNT, PROV) is Reason.UNKNOWN_PARTICIPANT


def test_suspension_is_immediate_and_checked_before_rules():
    policy = policy_rules.Policy.load()
    agency, registry = one(K.AGENCY), one(K.REGISTRY)
    args = ("provision.inquiry", ACCOUNT, PROV, "child-allowance")
    policy.suspend(agency.id)
    assert denied(policy, agency, registry, *args) is Reason.SUSPENDED
    # before rules: even a combination no rule allows reports SUSPENDED
    assert denied(policy, agency, registry, "lookup.result", ACCOUNT, PROV) is Reason.SUSPENDED
    policy.resume(agency.id)
    assert policy.authorise(agency, registry, *args).records
    policy.suspend(registry.id)
    assert denied(policy, agency, registry, *args) is Reason.SUSPENDED
    assert denied(policy, one(K.PORTAL), registry, "registration.request", ACCOUNT, REG) is Reason.SUSPENDED


def test_suspended_in_the_participants_file_until_resumed():
    policy = policy_rules.Policy.load()
    bank = Participant("bank-x", Kind.BANK, "X", bank_code="0001", suspended=True)
    args = (one(K.REGISTRY), bank, "existence.check", ACCOUNT, REG)
    assert denied(policy, *args) is Reason.SUSPENDED
    policy.resume(bank.id)
    assert policy.authorise(*args).records


def test_participant_id_rule_is_more_specific_than_kind(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[[rule]]\nid = "any-bank"\nsender = "kind:dicj"\nrecipient = "kind:bank"\ntype = "lookup.disaster"\n'
        'data_item = "x"\nbases = ["b"]\nrecords = true\n'
        '[[rule]]\nid = "one-bank"\nsender = "dicj"\nrecipient = "bank-9001"\ntype = "lookup.disaster"\n'
        'data_item = "x"\nbases = ["b"]\nrecords = true\nnot_disclosed = true\n'
    )
    policy = policy_rules.Policy.load(path)
    dicj = PARTICIPANTS.get("dicj")
    special = policy.authorise(dicj, PARTICIPANTS.get("bank-9001"), "lookup.disaster", "x", "b")
    ordinary = policy.authorise(dicj, PARTICIPANTS.get("bank-9002"), "lookup.disaster", "x", "b")
    assert (special.rule_id, special.not_disclosed) == ("one-bank", True)
    assert (ordinary.rule_id, ordinary.not_disclosed) == ("any-bank", False)


@pytest.mark.parametrize("body, complaint", [
    ('id = "r"\nsender = "kind:bank"\nrecipient = "*"\ntype = "no.such"\ndata_item = "x"\nbases = ["b"]\nrecords = true', "unknown message type"),
    ('id = "r"\nsender = "kind:banker"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\nbases = ["b"]\nrecords = true', "kind:"),
    ('id = "r"\nsender = "*"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\nbases = []\nrecords = true', "bases"),
    ('id = "r"\nsender = "*"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\nbases = ["b"]', "records"),
    ('id = "r"\nsender = "*"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\nbases = ["b"]\nrecords = true\nbasis = "b"', "unknown keys"),
])
def test_bad_rules_files_are_config_errors(tmp_path: Path, body, complaint):
    path = tmp_path / "p.toml"
    path.write_text("[[rule]]\n" + body + "\n")
    with pytest.raises(ConfigError, match=complaint):
        policy_rules.Policy.load(path)


def test_overlapping_rules_are_refused(tmp_path: Path):
    rule = '[[rule]]\nid = "{}"\nsender = "*"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\nbases = ["b"]\nrecords = true\n'
    path = tmp_path / "p.toml"
    path.write_text(rule.format("a") + rule.format("b"))
    with pytest.raises(ConfigError, match="overlap"):
        policy_rules.Policy.load(path)


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        policy_rules.Policy.load(tmp_path / "nope.toml")


EVERYONE = list(PARTICIPANTS)
TYPES = sorted(MESSAGE_TYPES)
ITEMS = sorted(policy_rules.DATA_ITEMS)
BASES = sorted(policy_rules.BASES)


@settings(max_examples=1500, deadline=None)
@given(
    sender=st.sampled_from(EVERYONE),
    recipient=st.sampled_from(EVERYONE),
    type_=st.one_of(st.sampled_from(TYPES), st.text(max_size=12)),
    item=st.one_of(st.sampled_from(ITEMS), st.text(max_size=12)),
    basis=st.one_of(st.sampled_from(BASES), st.text(max_size=12)),
)
def test_random_combinations_outside_the_rule_set_are_denied(sender, recipient, type_, item, basis):
    policy = _SHARED
    key = (sender.kind, recipient.kind, type_, item, basis)
    if key in ALLOWED:
        procedure = procedure_for(type_, sender, recipient)
        assert policy.authorise(sender, recipient, type_, item, basis, procedure).records is ALLOWED[key]
    else:
        with pytest.raises(PolicyDenied) as caught:
            policy.authorise(sender, recipient, type_, item, basis)
        assert caught.value.reason is Reason.UNAUTHORISED


_SHARED = policy_rules.Policy.load()
