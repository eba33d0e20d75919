"""The default-deny policy's own checks (``infra.domain.policy``): a rules file that cannot be trusted is refused
whole, the most specific rule wins, a procedure is named only where a rule asks for one, and suspensions
follow the key directory live (pure logic).

Written for the mutation score (docs/testing.md, "Mutation testing").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.domain.participants import Kind, Participant
from infra.domain.policy import Policy, PolicyDecision, Rule
from infra.domain.procedures import Procedure, Procedures

AGENCY = Participant("agency-x", Kind.AGENCY, "X")
OTHER_AGENCY = Participant("agency-y", Kind.AGENCY, "Y")
REGISTRY = Participant("registry", Kind.REGISTRY, "Registry")
BANK = Participant("bank-1", Kind.BANK, "Bank", bank_code="0001")
TEXT = dict(name_ja="試験給付", name_en="Test benefit", legal_basis="試験法 第1条", purpose_ja="試験のため",
            purpose_en="for the tests")
CATALOGUE = Procedures([Procedure("x-benefit", agencies=frozenset({"agency-x"}), **TEXT)])


def rule(id: str = "r", sender: str = "kind:agency", recipient: str = "kind:registry",  # noqa: A002
         type: str = "provision.inquiry", **over) -> Rule:  # noqa: A002
    fields = dict(data_item="public_funds_account", bases=("b",), records=True) | over
    return Rule(id, sender, recipient, type, **fields)


def denial(policy: Policy, *args) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as caught:
        policy.authorise(*args)
    return caught.value


GOOD = {"id": '"r"', "sender": '"*"', "recipient": '"*"', "type": '"lookup.answer"', "data_item": '"x"',
        "bases": '["b"]', "records": "true"}


def rules_file(tmp_path: Path, **fields: str | None) -> Path:
    """A one-rule policy file: GOOD with ``fields`` changed (None leaves a field out)."""
    body = {**GOOD, **fields}
    path = tmp_path / "policy.toml"
    path.write_text("[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v is not None))
    return path


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("key", ["id", "sender", "recipient", "type", "data_item"])
@pytest.mark.parametrize("value", ['""', "5", None])
def test_each_name_of_a_rule_must_be_a_non_empty_string(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"^policy rule .+: {key} must be a non-empty string$"):
        Policy.load(rules_file(tmp_path, **{key: value}))


@pytest.mark.parametrize("bases", ['"b"', "[]", '["b", ""]', '["b", 3]', None])
def test_bases_must_be_a_non_empty_list_of_names(tmp_path, bases):
    with pytest.raises(ConfigError, match="^policy rule 'r': bases must be a non-empty list of strings$"):
        Policy.load(rules_file(tmp_path, bases=bases))


@pytest.mark.parametrize(("field", "value", "complaint"), [
    ("records", '"yes"', "records must be true or false"),
    ("records", "1", "records must be true or false"),
    ("not_disclosed", '"no"', "not_disclosed must be true or false"),
    ("sender_role", '"agency"', "sender_role must be 'requester' or 'provider'"),
    ("procedure", '"x-benefit"', "procedure must be true or false"),
])
def test_flags_must_be_what_they_say(tmp_path, field, value, complaint):
    with pytest.raises(ConfigError, match=f"^policy rule 'r': {complaint}"):
        Policy.load(rules_file(tmp_path, **{field: value}))


def test_a_rule_s_flags_are_read_and_default_to_the_narrow_side(tmp_path):
    [plain] = Policy.load(rules_file(tmp_path)).rules
    assert plain == Rule("r", "*", "*", "lookup.answer", "x", ("b",), True, not_disclosed=False,
                           sender_role="requester", procedure=False)
    [full] = Policy.load(rules_file(tmp_path, records="false", not_disclosed="true", sender_role='"provider"',
                                      procedure="true", bases='["b", "c"]')).rules
    assert full == Rule("r", "*", "*", "lookup.answer", "x", ("b", "c"), False, not_disclosed=True,
                          sender_role="provider", procedure=True)


@pytest.mark.parametrize("spec", ["bank 1", "bänk-1", "bank/1", "kind:", "kind:banks", "**"])
def test_a_sender_or_recipient_must_be_an_id_a_kind_or_any(spec):
    for side in ("sender", "recipient"):
        with pytest.raises(ConfigError, match=f"^policy rule 'r': {side} "):
            Policy([rule(**{side: spec})], CATALOGUE)
    with pytest.raises(ConfigError, match="^policy rule 'r': recipient "):  # checked after a sender of '*' too
        Policy([rule(sender="*", recipient=spec)], CATALOGUE)


def test_an_unknown_kind_is_answered_with_the_kinds_there_are():
    kinds = ", ".join(f"kind:{k.value}" for k in Kind)
    with pytest.raises(ConfigError) as caught:
        Policy([rule(sender="kind:banks")], CATALOGUE)
    assert str(caught.value) == f"policy rule 'r': sender 'kind:banks' is not one of {kinds}"


def test_ids_kinds_and_any_are_accepted_on_both_sides():
    specs = ["*", "bank-1", "agency_x-2", *(f"kind:{k.value}" for k in Kind)]
    policy = Policy([rule(id=f"r{n}", sender=s, recipient=s) for n, s in enumerate(specs)], CATALOGUE)
    assert len(policy.rules) == len(specs)


def test_a_rule_that_lists_a_basis_twice_or_reuses_an_id_is_refused():
    with pytest.raises(ConfigError, match="^policy rule 'r': bases lists a basis twice$"):
        Policy([rule(bases=("b", "c", "b"))], CATALOGUE)
    with pytest.raises(ConfigError, match="duplicate rule id 'r'"):
        Policy([rule(), rule(recipient="kind:bank")], CATALOGUE)
    with pytest.raises(ConfigError, match="rules 'r' and 's' overlap"):
        Policy([rule(bases=("a", "b")), rule(id="s", bases=("b", "c"))], CATALOGUE)


# --------------------------------------------------------------------------- the decision


def test_the_most_specific_sender_and_recipient_win():
    policy = Policy([rule("any-any", "*", "*", records=False),
                       rule("kind-any", "kind:agency", "*", records=False, not_disclosed=True),
                       rule("id-any", "agency-x", "*", records=True),
                       rule("kind-kind", "kind:agency", "kind:registry", records=True, not_disclosed=True),
                       rule("id-id", "agency-x", "registry", records=False)], CATALOGUE)
    args = ("provision.inquiry", "public_funds_account", "b")
    assert policy.authorise(AGENCY, REGISTRY, *args).rule_id == "id-id"
    assert policy.authorise(AGENCY, BANK, *args).rule_id == "id-any"
    assert policy.authorise(OTHER_AGENCY, REGISTRY, *args).rule_id == "kind-kind"
    assert policy.authorise(OTHER_AGENCY, BANK, *args).rule_id == "kind-any"
    assert policy.authorise(REGISTRY, BANK, *args).rule_id == "any-any"
    decision = policy.authorise(OTHER_AGENCY, BANK, *args)
    assert (decision.records, decision.not_disclosed, decision.sender_role, decision.procedure) == (
        False, True, "requester", None)


def test_a_refusal_names_the_combination_and_only_metadata():
    policy = Policy([rule()], CATALOGUE)
    refused = denial(policy, AGENCY, BANK, "provision.inquiry", "public_funds_account", "b")
    assert refused.reason is Reason.UNAUTHORISED
    assert refused.message == ("no rule allows provision.inquiry from agency-x to bank-1 for data item "
                               "'public_funds_account' under basis 'b'")


def test_a_procedure_only_where_the_rule_asks_for_one():
    policy = Policy([rule("plain", records=True), rule("step2", type="provision.response", sender="kind:registry",
                                                         recipient="kind:agency", procedure=True,
                                                         sender_role="provider", not_disclosed=True)], CATALOGUE)
    carried = denial(policy, AGENCY, REGISTRY, "provision.inquiry", "public_funds_account", "b", "x-benefit")
    assert carried.reason is Reason.PROCEDURE_NOT_ALLOWED
    assert carried.message == ("provision.inquiry under rule plain names no procedure; this message may not "
                               "carry one")
    decision = policy.authorise(REGISTRY, AGENCY, "provision.response", "public_funds_account", "b", "x-benefit")
    assert decision == PolicyDecision("step2", True, True, "provider", CATALOGUE.check("x-benefit", AGENCY))
    # the provider's answer is checked against the agency it goes to, the requester
    assert denial(policy, REGISTRY, OTHER_AGENCY, "provision.response", "public_funds_account", "b",
                  "x-benefit").reason is Reason.PROCEDURE_NOT_ALLOWED
    assert denial(policy, REGISTRY, AGENCY, "provision.response", "public_funds_account", "b").reason is (
        Reason.UNKNOWN_PROCEDURE)


def test_an_entitlement_once_allowed_is_the_same_answer_and_a_refusal_is_never_remembered():
    policy = Policy([rule("step2", procedure=True)], CATALOGUE)
    args = ("provision.inquiry", "public_funds_account", "b")
    first = policy.authorise(AGENCY, REGISTRY, *args, "x-benefit")
    assert policy.authorise(AGENCY, REGISTRY, *args, "x-benefit") == first
    assert first.procedure.code == "x-benefit" and first.rule_id == "step2"
    for _ in range(2):  # asked twice: refused both times, not served from the cache of allowed ones
        assert denial(policy, OTHER_AGENCY, REGISTRY, *args, "x-benefit").reason is Reason.PROCEDURE_NOT_ALLOWED
        assert denial(policy, AGENCY, REGISTRY, *args, "no-such").reason is Reason.UNKNOWN_PROCEDURE


# --------------------------------------------------------------------------- suspensions


class Directory:
    """What ``Policy.follow`` reads of a key directory: its live suspensions and the signer switch."""

    def __init__(self) -> None:
        self.suspensions: dict[str, bool] = {}
        self.refuse_suspended_signers = True


def test_suspensions_follow_the_key_directory_live_and_this_process_overrides_them():
    policy, directory = Policy([rule()], CATALOGUE), Directory()
    args = ("provision.inquiry", "public_funds_account", "b")
    policy.follow(directory)
    assert directory.refuse_suspended_signers is False  # the policy refuses them itself, after verifying
    directory.suspensions["agency-x"] = True  # published after follow: applies to the next message
    refused = denial(policy, AGENCY, REGISTRY, *args)
    assert (refused.reason, refused.message) == (Reason.SUSPENDED, "sender agency-x is suspended")
    policy.resume("agency-x")
    assert policy.authorise(AGENCY, REGISTRY, *args).rule_id == "r"
    directory.suspensions["registry"] = True
    refused = denial(policy, AGENCY, REGISTRY, *args)
    assert (refused.reason, refused.message) == (Reason.SUSPENDED, "recipient registry is suspended")
    directory.suspensions["registry"] = False
    assert policy.authorise(AGENCY, REGISTRY, *args)
    filed = Participant("agency-z", Kind.AGENCY, "Z", suspended=True)  # the participants file says suspended
    assert policy.is_suspended(filed)
    directory.suspensions["agency-z"] = False  # a published resume overrides the file
    assert not policy.is_suspended(filed)
    policy.suspend("agency-z")
    assert policy.is_suspended(filed)


def test_an_unknown_participant_is_named_by_side():
    policy = Policy([rule()], CATALOGUE)
    args = ("provision.inquiry", "public_funds_account", "b")
    assert denial(policy, None, REGISTRY, *args).message == "sender is not a registered participant"
    assert denial(policy, AGENCY, None, *args).message == "recipient is not a registered participant"


# --------------------------------------------------------------------------- the files


def test_a_policy_file_without_rules_denies_everything(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("# no [[rule]] yet\n")
    policy = Policy.load(path)
    assert policy.rules == ()
    assert denial(policy, AGENCY, REGISTRY, "provision.inquiry", "public_funds_account", "b").reason is (
        Reason.UNAUTHORISED)


def test_the_policy_reads_the_procedures_file_it_is_given(tmp_path):
    catalogue = tmp_path / "procedures.toml"
    catalogue.write_text('[[procedure]]\ncode = "local-benefit"\nname_ja = "地域給付"\nname_en = "Local benefit"\n'
                         'legal_basis = "条例"\npurpose_ja = "給付のため"\npurpose_en = "to pay it"\n'
                         'agencies = ["agency-x"]\n')
    rules = rules_file(tmp_path, type='"provision.inquiry"', procedure="true")
    policy = Policy.load(rules, procedures=catalogue)
    decision = policy.authorise(AGENCY, REGISTRY, "provision.inquiry", "x", "b", "local-benefit")
    assert decision.procedure.code == "local-benefit"
    assert Policy.load(rules).procedures.for_agency(AGENCY) == []  # the shipped catalogue does not list it


def test_a_rule_that_is_not_a_table_or_has_unknown_keys_is_named(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('rule = ["allow everything"]\n')
    with pytest.raises(ConfigError, match=r"^policy: every \[\[rule\]\] must be a table$"):
        Policy.load(path)
    with pytest.raises(ConfigError, match="^policy rule 'r': unknown keys allow, basis$"):
        Policy.load(rules_file(tmp_path, basis='"b"', allow="true"))


def test_a_missing_or_broken_policy_file_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="^policy file not found: "):
        Policy.load(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[rule]\n")
    with pytest.raises(ConfigError, match="^policy file .* is not valid TOML"):
        Policy.load(broken)
