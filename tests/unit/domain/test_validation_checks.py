"""The boundary checks, each at its edges and word for word: the field a refusal names is how a sender finds
what to fix, and the rule says what is expected without echoing the value.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when a bound of
infra/domain/validation.py moves by one or a refusal names another field or rule.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.core.errors import Reason, ValidationError
from infra.domain.validation import (
    HOLDER_KANA_MAX_HALFWIDTH,
    existence_outcome,
    generate_my_number,
    my_number_check_digit,
    normalise_holder_kana,
    to_zengin_halfwidth,
    validate_account_number,
    validate_account_type,
    validate_bank_account,
    validate_bank_code,
    validate_branch_code,
    validate_consent,
    validate_my_number,
    validate_reference,
)
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")


def refused(fn, *args, **kw) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    assert info.value.reason is Reason.INVALID_FIELD
    return info.value.field, info.value.rule


# --- My Number -------------------------------------------------------------------------------------


@pytest.mark.parametrize("first11, digit", [
    ("00000000000", 0),  # remainder 0
    ("00000000001", 9),  # P1 (the rightmost) weighs 2: r = 2 -> 11 - 2
    ("00000100000", 4),  # P6 weighs 7: r = 7 -> 4
    ("00001000000", 9),  # P7 weighs 2 (n - 5): r = 2 -> 9
    ("10000000000", 5),  # P11 weighs 6: r = 6 -> 5
    ("00000000085", 0),  # 8 * 3 + 5 * 2 = 34, remainder 1 -> 0
    ("00000000090", 6),  # 9 * 3 = 27, remainder 5 -> 6
])
def test_the_check_digit_follows_the_official_weights(first11, digit):
    assert my_number_check_digit(first11) == digit


def test_my_number_refusals_word_for_word():
    assert refused(my_number_check_digit, "1234567890") == ("my_number", "first 11 digits must be 11 ASCII digits")
    assert refused(validate_my_number, "12345678901") == ("my_number", "must be 12 ASCII digits")
    assert refused(validate_my_number, "123456789019") == ("my_number", "check digit does not match")
    assert refused(validate_my_number, "123456789019", field="person") == ("person", "check digit does not match")
    assert validate_my_number(used("123456789018")) == "123456789018"


def test_generated_numbers_are_valid_twelve_digits_and_vary():
    rng = random.Random(7)
    numbers = {generate_my_number(rng) for _ in range(50)}
    assert len(numbers) > 40
    for n in numbers:
        used(n)
        assert len(n) == 12 and validate_my_number(n) == n


# --- bank account ----------------------------------------------------------------------------------


def test_codes_have_exact_lengths_and_say_so():
    assert validate_bank_code("0001") == "0001"
    assert refused(validate_bank_code, "001") == ("bank_code", "must be exactly 4 ASCII digits")
    assert refused(validate_bank_code, "00001", field="b") == ("b", "must be exactly 4 ASCII digits")
    assert validate_branch_code("001") == "001"
    assert refused(validate_branch_code, "0001") == ("branch_code", "must be exactly 3 ASCII digits")
    assert refused(validate_branch_code, "01", field="br") == ("br", "must be exactly 3 ASCII digits")


@pytest.mark.parametrize("value, padded", [("1", "0000001"), ("1234567", "1234567")])
def test_account_numbers_of_one_to_seven_digits_are_padded(value, padded):
    assert validate_account_number(value) == padded


@pytest.mark.parametrize("value", ["", "12345678", "12a", 1234, "１２３"])
def test_other_account_numbers_are_refused(value):
    assert refused(validate_account_number, value) == ("account_number", "must be 1 to 7 ASCII digits")


def test_account_types_and_their_refusal():
    assert validate_account_type(" ordinary ") == "ORDINARY"
    assert validate_account_type(4) == "SAVINGS" and validate_account_type("当座") == "CURRENT"
    for bad in (True, 3, "3", None, "checking"):
        assert refused(validate_account_type, bad) == (
            "account_type", "must be ORDINARY, CURRENT or SAVINGS (普通/当座/貯蓄, Zengin 1/2/4)")
    assert refused(validate_account_type, "x", field="t")[0] == "t"


# --- holder kana -----------------------------------------------------------------------------------


def test_the_holder_name_limit_counts_half_width_characters_and_voiced_marks():
    assert len(to_zengin_halfwidth("ア" * HOLDER_KANA_MAX_HALFWIDTH)) == 48
    assert normalise_holder_kana("ア" * 48) == "ア" * 48
    assert refused(normalise_holder_kana, "ア" * 49) == ("holder_kana", "must be at most 48 half-width characters")
    assert normalise_holder_kana("ガ" * 24) == "ガ" * 24  # 24 x (ｶ + ﾞ) = 48
    assert refused(normalise_holder_kana, "ガ" * 24 + "A")[1] == "must be at most 48 half-width characters"


def test_holder_name_refusals_word_for_word():
    assert refused(normalise_holder_kana, None) == ("holder_kana", "must be katakana (全銀 characters)")
    assert refused(normalise_holder_kana, "   ") == ("holder_kana", "must not be empty")
    assert refused(normalise_holder_kana, "やまだ", field="n") == ("n", "must be katakana (全銀 characters)")
    assert refused(to_zengin_halfwidth, "山田", field="m") == ("m", "must be katakana (全銀 characters)")


def test_each_allowed_character_class_alone_is_accepted():
    for text in ("ヤマダ", "0123", "ABC", "(.)-/,", "「ア」"):
        assert normalise_holder_kana(text) == text
    assert normalise_holder_kana("ｶﾞｯｺｳ  abc ー") == "ガツコウ ABC -"
    assert to_zengin_halfwidth("「ヤマダ」 パン") == "｢ﾔﾏﾀﾞ｣ ﾊﾟﾝ"


# --- a whole account -------------------------------------------------------------------------------


GOOD = {"bank_code": "0001", "branch_code": "001", "account_type": "1", "account_number": "12",
        "holder_kana": "ﾔﾏﾀﾞ ﾀﾛｳ"}


def test_a_whole_account_is_normalised_field_by_field():
    assert validate_bank_account(GOOD) == {"bank_code": "0001", "branch_code": "001", "account_type": "ORDINARY",
                                           "account_number": "0000012", "holder_kana": "ヤマダ タロウ"}


def test_a_whole_account_names_the_field_at_fault():
    assert refused(validate_bank_account, None) == ("account", "must be a bank account record")
    assert refused(validate_bank_account, [], field="acct") == ("acct", "must be a bank account record")
    assert refused(validate_bank_account, {k: v for k, v in GOOD.items() if k != "branch_code"}) == (
        "account.branch_code", "is required")
    assert refused(validate_bank_account, {**GOOD, "extra": 1}) == (
        "account", "must have exactly the fields bank_code, branch_code, account_type, account_number, holder_kana")
    for name, bad in (("bank_code", "1"), ("branch_code", "1"), ("account_type", "9"), ("account_number", ""),
                      ("holder_kana", "山")):
        assert refused(validate_bank_account, {**GOOD, name: bad}, field="to")[0] == f"to.{name}"


# --- the existence answer ---------------------------------------------------------------------------


def test_existence_answer_refusals_word_for_word():
    assert refused(existence_outcome, "MAYBE", True) == (
        "result", "must be one of CONFIRMED, ACCOUNT_NOT_FOUND, HOLDER_MISMATCH, ACCOUNT_CLOSED, NOT_HOLDER")
    assert refused(existence_outcome, "MAYBE", True, field="r")[0] == "r"
    assert refused(existence_outcome, "CONFIRMED", None) == (
        "holder", "must be true or false: whether the bank's customer record for this person holds the account")
    assert refused(existence_outcome, "NOT_HOLDER", True) == ("holder", "must be false with NOT_HOLDER")
    assert existence_outcome("ACCOUNT_CLOSED", True) == "ACCOUNT_CLOSED"
    assert existence_outcome("ACCOUNT_CLOSED", False) == "NOT_HOLDER"


# --- consent ---------------------------------------------------------------------------------------


NOW = datetime(2025, 4, 1, 3, 0, tzinfo=UTC)
CONSENT = {"given_by": "PERSON", "method": "BANK_APP", "given_at": NOW, "evidence_ref": "A-1"}


def test_references_of_one_to_the_maximum_length():
    assert validate_reference("a", field="f") == "a"
    assert validate_reference("x" * 64, field="f") == "x" * 64
    assert refused(validate_reference, "x" * 65, field="f") == ("f", "must be 1 to 64 ASCII letters, digits, - or _")
    assert refused(validate_reference, "", field="f")[0] == "f"
    assert validate_reference("x" * 8, field="f", max_length=8) == "x" * 8
    assert refused(validate_reference, "x" * 9, field="f", max_length=8) == (
        "f", "must be 1 to 8 ASCII letters, digits, - or _")
    assert refused(validate_reference, 7, field="f")[0] == "f"
    assert refused(validate_reference, "a b", field="f")[0] == "f"


def test_consent_may_be_up_to_five_minutes_ahead_and_not_more():
    assert validate_consent({**CONSENT, "given_at": NOW + timedelta(minutes=5)}, now=NOW)
    assert refused(validate_consent, {**CONSENT, "given_at": NOW + timedelta(minutes=5, microseconds=1)},
                   now=NOW) == ("consent.given_at", "must not be in the future")


def test_consent_without_now_is_judged_against_the_clock():
    assert validate_consent({**CONSENT, "given_at": datetime.now(UTC)})["given_at"].tzinfo is UTC
    assert refused(validate_consent, {**CONSENT, "given_at": datetime.now(UTC) + timedelta(hours=1)})[0] == (
        "consent.given_at")


def test_consent_times_are_aware_iso_8601_and_returned_in_utc():
    jst = timezone(timedelta(hours=9))
    assert validate_consent({**CONSENT, "given_at": " 2025-04-01T11:00:00+09:00 "}, now=NOW)["given_at"] == (
        datetime(2025, 4, 1, 2, 0, tzinfo=UTC))
    assert validate_consent({**CONSENT, "given_at": NOW.astimezone(jst)}, now=NOW)["given_at"].tzinfo is UTC
    for bad in ("yesterday", "2025-04-01T11:00:00", NOW.replace(tzinfo=None), 5, None):
        assert refused(validate_consent, {**CONSENT, "given_at": bad}, now=NOW) == (
            "consent.given_at", "must be an ISO 8601 time with its UTC offset")


def test_consent_refusals_word_for_word():
    assert refused(validate_consent, None) == (
        "consent", "is required: who gave the consent, how, when, and the evidence reference")
    assert refused(validate_consent, None, field="c")[0] == "c"
    assert refused(validate_consent, {**CONSENT, "given_by": "BANK"}, now=NOW) == (
        "consent.given_by", "must be one of PERSON, LEGAL_REPRESENTATIVE")
    assert refused(validate_consent, {**CONSENT, "method": "PHONE"}, now=NOW) == (
        "consent.method", "must be one of SIGNED_FORM_AT_COUNTER, ONLINE_BANKING, BANK_APP")
    assert refused(validate_consent, {**CONSENT, "evidence_ref": "a b"}, now=NOW) == (
        "consent.evidence_ref", "must be 1 to 64 ASCII letters, digits, - or _")
    assert refused(validate_consent, {**CONSENT, "given_at": "x"}, field="k", now=NOW)[0] == "k.given_at"
    assert validate_consent(CONSENT, now=NOW) == {**CONSENT, "evidence_ref": "A-1"}
