"""The catalogue of public-benefit procedures and the policy's agency × procedure check (default-deny)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.domain import policy as policy_rules
from infra.domain.participants import Kind, Participant, load_participants
from infra.domain.procedures import Procedures

PARTICIPANTS = load_participants()
CATALOGUE = Procedures.load()
MINATO, NTA, MHLW = (PARTICIPANTS.get(a) for a in ("agency-city-minato", "agency-nta", "agency-mhlw"))
REGISTRY = PARTICIPANTS.get("registry")
ACCOUNT, PROV = policy_rules.DATA_PUBLIC_FUNDS_ACCOUNT, policy_rules.BASIS_PROVISION


def refused(fn, *args) -> Reason:
    with pytest.raises(PolicyDenied) as caught:
        fn(*args)
    return caught.value.reason


def test_the_shipped_catalogue_is_complete_and_each_agency_has_its_own_procedures():
    assert len(CATALOGUE) >= 8
    for p in CATALOGUE:
        assert p.name_ja and p.name_en and p.legal_basis and p.purpose_ja and p.purpose_en
        assert p.code.isascii() and p.code == p.code.lower()
    assert [p.code for p in CATALOGUE.for_agency(NTA)] == ["income-tax-refund"]
    assert {p.code for p in CATALOGUE.for_agency(MHLW)} == {"national-pension", "employment-insurance"}
    assert "child-allowance" in {p.code for p in CATALOGUE.for_agency(MINATO)}
    assert CATALOGUE.get("disaster-recovery-support").agencies == frozenset()  # listed, usable by nobody


def test_check_gives_each_refusal_its_own_code():
    assert CATALOGUE.check("income-tax-refund", NTA).code == "income-tax-refund"
    assert refused(CATALOGUE.check, "income-tax-refund", MINATO) is Reason.PROCEDURE_NOT_ALLOWED
    assert refused(CATALOGUE.check, "disaster-recovery-support", MINATO) is Reason.PROCEDURE_NOT_ALLOWED
    assert refused(CATALOGUE.check, "benefit-payment", NTA) is Reason.UNKNOWN_PROCEDURE
    assert refused(CATALOGUE.check, None, NTA) is Reason.UNKNOWN_PROCEDURE


def test_an_unlisted_code_is_not_echoed_in_the_refusal():
    with pytest.raises(PolicyDenied) as caught:
        CATALOGUE.check("<script>", NTA)
    assert "<script>" not in str(caught.value)


def test_kind_agency_entitles_every_agency_and_nothing_else(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text('[[procedure]]\ncode = "any"\nname_ja = "a"\nname_en = "a"\nlegal_basis = "l"\n'
                    'purpose_ja = "p"\npurpose_en = "p"\nagencies = ["kind:agency"]\n')
    catalogue = Procedures.load(path)
    assert catalogue.check("any", MHLW).code == "any"
    bank = Participant("bank-x", Kind.BANK, "X", bank_code="0001")
    assert refused(catalogue.check, "any", bank) is Reason.PROCEDURE_NOT_ALLOWED


@pytest.mark.parametrize("body, complaint", [
    ('code = "Child"', "code must be"),
    ('code = "a b"', "code must be"),
    ('code = "x"\nname_ja = ""', "name_ja"),
    ('code = "x"\nname_ja = "n"\nname_en = "n"\nlegal_basis = "l"\npurpose_ja = "p"\npurpose_en = "p"\n'
     'agencies = ["kind:bank"]', "neither"),
    ('code = "x"\nname_ja = "n"\nname_en = "n"\nlegal_basis = "l"\npurpose_ja = "p"\npurpose_en = "p"\n'
     'agencies = "agency-nta"', "list"),
    ('code = "x"\nname_ja = "n"\nname_en = "n"\nlegal_basis = "l"\npurpose_ja = "p"\npurpose_en = "p"\n'
     'purpose = "p"', "unknown keys"),
])
def test_bad_catalogues_are_config_errors(tmp_path: Path, body, complaint):
    path = tmp_path / "p.toml"
    path.write_text("[[procedure]]\n" + body + "\n")
    with pytest.raises(ConfigError, match=complaint):
        Procedures.load(path)


def test_duplicate_codes_are_refused(tmp_path: Path):
    one = ('[[procedure]]\ncode = "x"\nname_ja = "n"\nname_en = "n"\nlegal_basis = "l"\npurpose_ja = "p"\n'
           'purpose_en = "p"\n')
    path = tmp_path / "p.toml"
    path.write_text(one + one)
    with pytest.raises(ConfigError, match="duplicate"):
        Procedures.load(path)


# --- in the policy --------------------------------------------------------------------------------

POLICY = policy_rules.Policy.load()


def test_an_inquiry_needs_an_entitled_procedure():
    decision = POLICY.authorise(NTA, REGISTRY, "provision.inquiry", ACCOUNT, PROV, "income-tax-refund")
    assert decision.rule_id == "step2.provision-inquiry" and decision.procedure.code == "income-tax-refund"
    assert refused(POLICY.authorise, NTA, REGISTRY, "provision.inquiry", ACCOUNT, PROV,
                   "child-allowance") is Reason.PROCEDURE_NOT_ALLOWED
    assert refused(POLICY.authorise, NTA, REGISTRY, "provision.inquiry", ACCOUNT, PROV,
                   "no-such-benefit") is Reason.UNKNOWN_PROCEDURE
    assert refused(POLICY.authorise, NTA, REGISTRY, "provision.inquiry", ACCOUNT, PROV) is Reason.UNKNOWN_PROCEDURE


def test_the_answer_is_checked_against_the_agency_it_goes_to():
    ok = POLICY.authorise(REGISTRY, NTA, "provision.response", ACCOUNT, PROV, "income-tax-refund")
    assert ok.sender_role == "provider" and ok.procedure.code == "income-tax-refund"
    assert refused(POLICY.authorise, REGISTRY, MINATO, "provision.response", ACCOUNT, PROV,
                   "income-tax-refund") is Reason.PROCEDURE_NOT_ALLOWED


def test_rules_order_before_procedures_and_procedures_only_where_a_rule_asks():
    # No rule: UNAUTHORISED, whatever procedure is named.
    assert refused(POLICY.authorise, NTA, REGISTRY, "provision.inquiry", policy_rules.DATA_DEPOSIT_ACCOUNT_HOLDINGS, PROV,
                   "income-tax-refund") is Reason.UNAUTHORISED
    # A message whose rule takes no procedure may not carry one.
    portal = PARTICIPANTS.get("portal")
    assert POLICY.authorise(portal, REGISTRY, "registration.request", ACCOUNT, policy_rules.BASIS_REGISTRATION).procedure is None
    assert refused(POLICY.authorise, portal, REGISTRY, "registration.request", ACCOUNT, policy_rules.BASIS_REGISTRATION,
                   "child-allowance") is Reason.PROCEDURE_NOT_ALLOWED
    # Suspension still comes first.
    policy = policy_rules.Policy.load()
    policy.suspend(NTA.id)
    assert refused(policy.authorise, NTA, REGISTRY, "provision.inquiry", ACCOUNT, PROV,
                   "no-such-benefit") is Reason.SUSPENDED


def test_a_rule_procedure_flag_must_be_a_bool(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text('[[rule]]\nid = "r"\nsender = "*"\nrecipient = "*"\ntype = "lookup.answer"\ndata_item = "x"\n'
                    'bases = ["b"]\nrecords = true\nprocedure = "yes"\n')
    with pytest.raises(ConfigError, match="procedure must be"):
        policy_rules.Policy.load(path)
