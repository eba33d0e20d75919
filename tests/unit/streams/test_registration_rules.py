"""Whose account it is: the registry's registration rules, the bank's existence answer, the consent (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.bank_sim import existence_result
from infra.core.errors import Reason, Rejection, ValidationError
from infra.domain.participants import load_participants
from infra.domain.validation import existence_outcome, validate_consent
from streams.registration_rules import (
    DELETE_ONLY_BY,
    Channel,
    answer_refusal,
    channel_of,
    check_outcome,
    intake,
)

P = load_participants()
BANK_A, BANK_B = P.get("bank-9000"), P.get("bank-9001")


def take(channel: Channel, operation: str, *, sender: str | None = None, account: str | None = "9000",
         known: bool = True, registered: str | None = None):
    return intake(channel, operation, sender_bank_code=sender, account_bank_code=account, account_bank_known=known,
                  registered_bank_code=registered)


# --- who files, and what each may do -------------------------------------------------------------


def test_only_the_portal_an_agency_or_a_bank_files_registrations():
    assert channel_of(P.get("portal")) is Channel.PORTAL
    assert channel_of(P.get("agency-nta")) is Channel.ALONGSIDE_PROCEDURE
    assert channel_of(BANK_A) is Channel.BANK_COUNTER
    for other in ("dicj", "hub", "registry"):
        with pytest.raises(Rejection) as refused:
            channel_of(P.get(other))
        assert refused.value.reason is Reason.UNAUTHORISED
    with pytest.raises(Rejection):
        channel_of(None)


def test_register_and_change_go_to_the_check_from_every_channel():
    for channel in Channel:
        sender = "9000" if channel is Channel.BANK_COUNTER else None
        for operation in ("REGISTER", "CHANGE"):
            assert take(channel, operation, sender=sender) is None


def test_a_bank_registers_only_its_own_accounts():
    refusal = take(Channel.BANK_COUNTER, "REGISTER", sender="9001", account="9000")
    assert refusal is not None and refusal.status == "REFUSED" and "only its own accounts" in refusal.detail
    assert take(Channel.BANK_COUNTER, "CHANGE", sender="9001", account="9000").status == "REFUSED"


def test_an_unknown_bank_code_is_account_not_found_without_a_check():
    assert take(Channel.PORTAL, "REGISTER", account="1234", known=False).status == "ACCOUNT_NOT_FOUND"


def test_delete_only_by_the_person_or_the_bank_that_holds_the_registered_account():
    assert take(Channel.PORTAL, "DELETE", account=None, registered="9000") is None
    assert take(Channel.BANK_COUNTER, "DELETE", sender="9000", account=None, registered="9000") is None
    other_bank = take(Channel.BANK_COUNTER, "DELETE", sender="9001", account=None, registered="9000")
    assert other_bank.status == "REFUSED" and DELETE_ONLY_BY in other_bank.detail
    agency = take(Channel.ALONGSIDE_PROCEDURE, "DELETE", account=None, registered="9000")
    assert agency.status == "REFUSED" and agency.detail == DELETE_ONLY_BY
    assert take(Channel.PORTAL, "DELETE", account=None, registered=None).status == "NOT_REGISTERED"
    # an agency is refused even when nothing is registered: it may not learn that either
    assert take(Channel.ALONGSIDE_PROCEDURE, "DELETE", account=None, registered=None).status == "REFUSED"


# --- what the bank's answer does ------------------------------------------------------------------


def test_only_confirmed_registers_and_a_failed_change_keeps_the_account():
    assert check_outcome("CONFIRMED", registered_before=True) == (True, "DONE", None)
    for failed in ("ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "NOT_HOLDER", "ACCOUNT_CLOSED"):
        store, status, detail = check_outcome(failed, registered_before=True)
        assert (store, status) == (False, failed) and "stays registered" in detail
        assert check_outcome(failed, registered_before=False) == (False, failed, None)
    assert check_outcome("UNKNOWN", registered_before=False)[:2] == (False, "REFUSED")


def test_an_answer_counts_only_from_the_bank_that_was_asked_for_an_open_check():
    assert answer_refusal(asked="bank-9000", answered_by="bank-9000", outcome=None) is None
    other = answer_refusal(asked="bank-9000", answered_by="bank-9001", outcome=None)
    assert other.reason is Reason.UNSOLICITED and "bank-9001" in other.message and "bank-9000" in other.message
    assert answer_refusal(asked=None, answered_by="bank-9000", outcome=None).reason is Reason.UNSOLICITED
    assert answer_refusal(asked="bank-9000", answered_by="bank-9000", outcome="TIMEOUT").reason is Reason.EXPIRED
    assert answer_refusal(asked="bank-9000", answered_by="bank-9000", outcome="CONFIRMED").reason is Reason.REPLAYED
    # another bank is refused as such even for a closed check
    assert answer_refusal(asked="bank-9000", answered_by="bank-9001", outcome="TIMEOUT").reason is Reason.UNSOLICITED


# --- the bank's existence answer from its own records ----------------------------------------------


def test_the_simulated_bank_answers_from_whose_account_it_is():
    def answer(**kw):
        return existence_result(**{"found": True, "closed": False, "held": True, "name_matches": True, **kw})

    assert answer() == "CONFIRMED"
    assert answer(found=False, held=False) == "ACCOUNT_NOT_FOUND"
    assert answer(held=False) == "NOT_HOLDER"  # B typed A's account and A's name exactly: still not B's
    assert answer(held=False, closed=True) == "NOT_HOLDER"  # a stranger learns nothing of the account's state
    assert answer(closed=True) == "ACCOUNT_CLOSED"
    assert answer(name_matches=False) == "HOLDER_MISMATCH"


def test_a_channel_answer_must_carry_the_holder_check():
    assert existence_outcome("CONFIRMED", True) == "CONFIRMED"
    assert existence_outcome("CONFIRMED", False) == "NOT_HOLDER"
    assert existence_outcome("HOLDER_MISMATCH", False) == "NOT_HOLDER"
    assert existence_outcome("ACCOUNT_NOT_FOUND", False) == "ACCOUNT_NOT_FOUND"
    assert existence_outcome("NOT_HOLDER", False) == "NOT_HOLDER"
    for result, holder in (("CONFIRMED", None), ("CONFIRMED", "yes"), ("CONFIRMED", 1), ("NOT_HOLDER", True),
                           ("MAYBE", True), (None, True)):
        with pytest.raises(ValidationError):
            existence_outcome(result, holder)


# --- the person's consent ---------------------------------------------------------------------------


def test_consent_says_who_how_when_and_the_evidence():
    now = datetime(2025, 4, 1, 3, 0, tzinfo=UTC)
    ok = validate_consent({"given_by": "PERSON", "method": "ONLINE_BANKING", "given_at": "2025-04-01T11:00:00+09:00",
                           "evidence_ref": "OB-12345"}, now=now)
    assert ok == {"given_by": "PERSON", "method": "ONLINE_BANKING", "given_at": datetime(2025, 4, 1, 2, 0, tzinfo=UTC),
                  "evidence_ref": "OB-12345"}
    base = {"given_by": "LEGAL_REPRESENTATIVE", "method": "SIGNED_FORM_AT_COUNTER", "given_at": now,
            "evidence_ref": "F-1"}
    assert validate_consent(base, now=now)["given_by"] == "LEGAL_REPRESENTATIVE"
    assert validate_consent({**base, "given_at": now + timedelta(minutes=4)}, now=now)  # clock skew
    bad = {"given_by": "UNKNOWN", "method": "UNKNOWN", "given_at": now.replace(tzinfo=None),
           "evidence_ref": "山田の申込書"}
    for field in bad:
        with pytest.raises(ValidationError) as refused:
            validate_consent({**base, field: bad[field]}, now=now)
        assert refused.value.field == f"consent.{field}"
    with pytest.raises(ValidationError) as refused:
        validate_consent({**base, "given_at": now + timedelta(hours=1)}, now=now)
    assert "future" in refused.value.message
    with pytest.raises(ValidationError):
        validate_consent(None)
