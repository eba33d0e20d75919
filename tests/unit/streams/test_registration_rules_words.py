"""The registry's answers, word for word: every refusal is read by a person (the portal shows ``detail``) or by
an operator (a rejection's message), so its text is part of the rule.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when a refusal's status,
reason or words change in streams/registration_rules.py.
"""

from __future__ import annotations

import pytest

from infra.core.errors import Reason, Rejection
from infra.domain.participants import load_participants
from streams.registration_rules import (
    DELETE_ONLY_BY,
    Channel,
    Refusal,
    answer_refusal,
    channel_of,
    check_outcome,
    intake,
)

P = load_participants()


def take(channel: Channel, operation: str, *, sender: str | None = None, account: str | None = "9000",
         known: bool = True, registered: str | None = None) -> Refusal | None:
    return intake(channel, operation, sender_bank_code=sender, account_bank_code=account, account_bank_known=known,
                  registered_bank_code=registered)


def test_a_participant_that_does_not_file_is_told_by_kind():
    for who, kind in (("dicj", "dicj"), ("registry", "registry")):
        with pytest.raises(Rejection) as refused:
            channel_of(P.get(who))
        assert refused.value.message == f"{kind} does not file registrations"
    with pytest.raises(Rejection) as refused:
        channel_of(None)
    assert (refused.value.reason, refused.value.message) == (
        Reason.UNAUTHORISED, "an unknown participant does not file registrations")


def test_channels_are_recorded_by_their_names():
    assert [c.value for c in Channel] == ["PORTAL", "ALONGSIDE_PROCEDURE", "BANK_COUNTER"]


def test_delete_refusals_word_for_word():
    assert take(Channel.ALONGSIDE_PROCEDURE, "DELETE", registered="9000") == Refusal("REFUSED", DELETE_ONLY_BY)
    assert take(Channel.PORTAL, "DELETE", registered=None) == Refusal("NOT_REGISTERED", "nothing is registered")
    assert take(Channel.BANK_COUNTER, "DELETE", sender="9001", registered="9000") == Refusal(
        "REFUSED", "a bank may delete only a registration of an account it holds; a registration is deleted only "
                   "by the person (portal) or by the bank that holds the registered account")
    # A bank deleting when nothing is registered hears that nothing is: it holds no registration to protect.
    assert take(Channel.BANK_COUNTER, "DELETE", sender="9000", registered=None) == Refusal(
        "NOT_REGISTERED", "nothing is registered")


def test_a_delete_is_decided_on_the_registration_not_on_the_account_field():
    """The account in a DELETE is not what is deleted: a bank holding the registered account deletes it even
    when the request names another bank's account, and an unknown account code does not matter."""
    assert take(Channel.BANK_COUNTER, "DELETE", sender="9000", account="9001", known=False, registered="9000") is None
    assert take(Channel.PORTAL, "DELETE", account="1234", known=False, registered="9000") is None


def test_register_refusals_word_for_word():
    assert take(Channel.BANK_COUNTER, "REGISTER", sender="9001", account="9000") == Refusal(
        "REFUSED", "a bank may register only its own accounts")
    assert take(Channel.PORTAL, "REGISTER", account="1234", known=False) == Refusal(
        "ACCOUNT_NOT_FOUND", "no participating bank has this bank code")
    # The portal and an agency name any participating bank's account.
    assert take(Channel.PORTAL, "CHANGE", account="9001") is None
    assert take(Channel.ALONGSIDE_PROCEDURE, "REGISTER", account="9001") is None


def test_a_bank_checks_ownership_before_the_bank_code_is_known():
    """Its own account at an unknown code is ACCOUNT_NOT_FOUND; another bank's code is REFUSED first."""
    assert take(Channel.BANK_COUNTER, "REGISTER", sender="9000", account="9000", known=False).status == (
        "ACCOUNT_NOT_FOUND")
    assert take(Channel.BANK_COUNTER, "REGISTER", sender="9000", account="1234", known=False).status == "REFUSED"


def test_the_check_outcomes_word_for_word():
    for failed in ("ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "NOT_HOLDER", "ACCOUNT_CLOSED"):
        assert check_outcome(failed, registered_before=True) == (
            False, failed, "the account registered before stays registered")
    assert check_outcome("GARBLED", registered_before=True) == (
        False, "REFUSED", "the bank's answer could not be read; the account registered before stays registered")
    assert check_outcome("GARBLED", registered_before=False) == (
        False, "REFUSED", "the bank's answer could not be read")
    assert check_outcome("CONFIRMED", registered_before=False) == (True, "DONE", None)


def test_answer_refusals_word_for_word():
    assert answer_refusal(asked=None, answered_by="bank-9000", outcome=None).message == (
        "no existence check with this correlation id was asked")
    assert answer_refusal(asked="bank-9000", answered_by="bank-9001", outcome=None).message == (
        "existence answer from bank-9001, but bank-9000 was asked")
    expired = answer_refusal(asked="bank-9000", answered_by="bank-9000", outcome="TIMEOUT")
    assert (expired.reason, expired.message) == (
        Reason.EXPIRED, "the existence check had expired (TIMEOUT was answered) before this answer")
    replayed = answer_refusal(asked="bank-9000", answered_by="bank-9000", outcome="NOT_HOLDER")
    assert (replayed.reason, replayed.message) == (Reason.REPLAYED, "this existence check was answered already")
