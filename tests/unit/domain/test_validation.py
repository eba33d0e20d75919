"""Domain validation: My Number check digit, bank account fields, Zengin holder kana."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from infra.core.errors import Reason, ValidationError
from infra.domain.validation import (
    HOLDER_KANA_MAX_HALFWIDTH,
    generate_my_number,
    my_number_check_digit,
    normalise_holder_kana,
    to_zengin_halfwidth,
    validate_account_number,
    validate_account_type,
    validate_bank_account,
    validate_bank_code,
    validate_branch_code,
    validate_my_number,
)

# --- My Number ---------------------------------------------------------------------

# Weights for the first 11 digits read left to right: P11..P1 -> Q11..Q1.
LEFT_TO_RIGHT_WEIGHTS = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2]


def _remainder(first11: str) -> int:
    return sum(int(d) * w for d, w in zip(first11, LEFT_TO_RIGHT_WEIGHTS)) % 11


def _reference_check_digit(first11: str) -> int:
    r = _remainder(first11)
    return 0 if r <= 1 else 11 - r


my_numbers = st.builds(generate_my_number, st.randoms(use_true_random=False))


def test_known_valid_examples():
    # Worked by hand: 1·6+2·5+3·4+4·3+5·2+6·7+7·6+8·5+9·4+0·3+1·2 = 212; 212 mod 11 = 3; 11-3 = 8.
    assert my_number_check_digit("12345678901") == 8
    assert validate_my_number("123456789018") == "123456789018"
    # remainder 0 and remainder 1 both give check digit 0
    assert my_number_check_digit("00000000000") == 0
    assert _remainder("00000000001") == 2 and my_number_check_digit("00000000001") == 9
    assert _remainder("00000000006") == 1 and my_number_check_digit("00000000006") == 0


@given(st.text(alphabet="0123456789", min_size=11, max_size=11))
def test_check_digit_matches_the_rule(first11):
    assert my_number_check_digit(first11) == _reference_check_digit(first11)


@given(my_numbers)
def test_generated_numbers_are_valid_and_round_trip(number):
    assert validate_my_number(number) == number


@given(my_numbers, st.integers(0, 11), st.integers(1, 9))
def test_single_digit_changes_are_rejected(number, position, delta):
    changed = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    if position < 11 and {_remainder(number[:11]), _remainder(changed[:11])} == {0, 1}:
        # The official rule maps remainders 0 and 1 to the same check digit,
        # so this one class of single-digit error is undetectable by design.
        validate_my_number(changed)
        return
    with pytest.raises(ValidationError) as caught:
        validate_my_number(changed)
    assert caught.value.rule == "check digit does not match"


def test_undetectable_single_digit_change_exists():
    """Documented weakness of the official check digit (r = 0 and r = 1 both give 0)."""
    assert validate_my_number("000000000000") and validate_my_number("000000000060")


@pytest.mark.parametrize(
    "bad", ["", "12345678901", "1234567890123", "12345678901a", "１２３４５６７８９０１８", " 123456789018", None, 123456789018]
)
def test_my_number_shape_is_rejected(bad):
    with pytest.raises(ValidationError) as caught:
        validate_my_number(bad)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == "my_number"


def test_generate_is_reproducible_with_a_seeded_rng():
    assert generate_my_number(random.Random(7)) == generate_my_number(random.Random(7))


# --- never echo the input ------------------------------------------------------------

personal = st.text(alphabet="0123456789ｱｲｳｴｵあいう山田ヤマダ ", min_size=5, max_size=20)
VALIDATORS = [
    validate_my_number,
    validate_bank_code,
    validate_branch_code,
    validate_account_number,
    validate_account_type,
    normalise_holder_kana,
    lambda v: validate_bank_account({"bank_code": v, "branch_code": v, "account_type": v, "account_number": v, "holder_kana": "あ" + v}),
]


@given(personal, st.sampled_from(VALIDATORS))
def test_messages_never_contain_the_input(value, validator):
    try:
        validator(value)
    except ValidationError as exc:
        for text in (str(exc), exc.message, exc.rule, exc.field, repr(exc)):
            assert value not in text
            assert value.strip() == "" or value.strip() not in text


# --- bank account fields -------------------------------------------------------------


def test_codes_are_fixed_width_ascii_digits():
    assert validate_bank_code("0001") == "0001"
    assert validate_branch_code("123") == "123"
    for bad in ("001", "00001", "０００１", "abcd", "", None, 1):
        with pytest.raises(ValidationError, match="bank_code: must be exactly 4 ASCII digits"):
            validate_bank_code(bad)
    for bad in ("12", "1234", "１２３", None):
        with pytest.raises(ValidationError, match="branch_code"):
            validate_branch_code(bad)


def test_account_number_is_zero_padded_to_seven_digits():
    assert validate_account_number("1234567") == "1234567"
    assert validate_account_number("1234") == "0001234"
    for bad in ("", "12345678", "12a4567", "１２３４５６７", None, 1234567):
        with pytest.raises(ValidationError, match="account_number"):
            validate_account_number(bad)


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("ORDINARY", "ORDINARY"), ("ordinary", "ORDINARY"), ("普通", "ORDINARY"), ("1", "ORDINARY"), (1, "ORDINARY"),
        ("CURRENT", "CURRENT"), ("当座", "CURRENT"), ("2", "CURRENT"), (2, "CURRENT"),
        ("SAVINGS", "SAVINGS"), ("貯蓄", "SAVINGS"), ("4", "SAVINGS"), (4, "SAVINGS"),
    ],
)
def test_account_type_forms(given_, expected):
    assert validate_account_type(given_) == expected


@pytest.mark.parametrize("bad", ["3", 3, "9", "定期", "", None, True])
def test_account_type_rejects_others(bad):
    with pytest.raises(ValidationError, match="account_type"):
        validate_account_type(bad)


# --- holder kana -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "canonical", "halfwidth"),
    [
        ("ﾔﾏﾀﾞ ﾀﾛｳ", "ヤマダ タロウ", "ﾔﾏﾀﾞ ﾀﾛｳ"),
        ("ヤマダ　タロウ", "ヤマダ タロウ", "ﾔﾏﾀﾞ ﾀﾛｳ"),  # ideographic space
        ("  ヤマダ   タロウ ", "ヤマダ タロウ", "ﾔﾏﾀﾞ ﾀﾛｳ"),
        ("キュウヨ イチロウ", "キユウヨ イチロウ", "ｷﾕｳﾖ ｲﾁﾛｳ"),  # small kana written large
        ("ジョー", "ジヨ-", "ｼﾞﾖ-"),  # long vowel mark recorded as a hyphen
        ("ﾊﾟｰｸ", "パ-ク", "ﾊﾟ-ｸ"),
        ("ヴィヲ", "ヴイヲ", "ｳﾞｲｦ"),
        ("ｶ)ﾔﾏﾀﾞｼｮｳﾃﾝ", "カ)ヤマダシヨウテン", "ｶ)ﾔﾏﾀﾞｼﾖｳﾃﾝ"),
        ("ＡＢＣ（ド）．／，", "ABC(ド)./,", "ABC(ﾄﾞ)./,"),
        ("abc 123", "ABC 123", "ABC 123"),
        ("「ヤマダ」", "「ヤマダ」", "｢ﾔﾏﾀﾞ｣"),
    ],
)
def test_holder_kana_normalisation(given_, canonical, halfwidth):
    assert normalise_holder_kana(given_) == canonical
    assert to_zengin_halfwidth(given_) == halfwidth


@pytest.mark.parametrize("bad", ["やまだ", "山田", "ヤマダ・タロウ", "ﾞ", "ア\tイ", "ヤマダ!", "ヷ", "ヽ", "é"])
def test_holder_kana_rejects_non_zengin_characters(bad):
    with pytest.raises(ValidationError) as caught:
        normalise_holder_kana(bad)
    assert str(caught.value) == "INVALID_FIELD: holder_kana: must be katakana (全銀 characters)"


def test_holder_kana_rejects_empty_and_too_long():
    for empty in ("", "   ", "　"):
        with pytest.raises(ValidationError, match="must not be empty"):
            normalise_holder_kana(empty)
    assert normalise_holder_kana("ア" * HOLDER_KANA_MAX_HALFWIDTH)
    with pytest.raises(ValidationError, match="half-width"):
        normalise_holder_kana("ガ" * (HOLDER_KANA_MAX_HALFWIDTH // 2 + 1))  # ｶﾞ is two


ZENGIN_HALFWIDTH = set("ｦｱｲｳｴｵｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄﾅﾆﾇﾈﾉﾊﾋﾌﾍﾎﾏﾐﾑﾒﾓﾔﾕﾖﾗﾘﾙﾚﾛﾜﾝﾞﾟ0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ ().-/,｢｣")
KANA_UNITS = [*"アイウエオカガキギクグサザシジスタダチッツテデトナハバパヒビピフブプマミムメモヤャユュヨョラリルレロワヲンヴー ｱｯｰABCxyz019()./-,　", "ｶﾞ", "ﾊﾟ"]
kana_names = st.lists(st.sampled_from(KANA_UNITS), min_size=1, max_size=20).map("".join)


@given(kana_names)
def test_holder_kana_properties(name):
    assume(name.strip(" 　"))
    canonical = normalise_holder_kana(name)
    assert normalise_holder_kana(canonical) == canonical  # idempotent
    half = to_zengin_halfwidth(name)
    assert set(half) <= ZENGIN_HALFWIDTH
    assert normalise_holder_kana(half) == canonical  # half-width and full-width agree


# --- whole account ---------------------------------------------------------------------

ACCOUNT = {"bank_code": "0001", "branch_code": "001", "account_type": "普通", "account_number": "1234", "holder_kana": "ﾔﾏﾀﾞ ﾀﾛｳ"}


def test_validate_bank_account_normalises():
    assert validate_bank_account(ACCOUNT) == {
        "bank_code": "0001",
        "branch_code": "001",
        "account_type": "ORDINARY",
        "account_number": "0001234",
        "holder_kana": "ヤマダ タロウ",
    }


def test_validate_bank_account_names_the_nested_field():
    with pytest.raises(ValidationError) as caught:
        validate_bank_account({**ACCOUNT, "branch_code": "1"}, field="account")
    assert caught.value.field == "account.branch_code"
    with pytest.raises(ValidationError, match="account.holder_kana: is required"):
        validate_bank_account({k: v for k, v in ACCOUNT.items() if k != "holder_kana"})
    with pytest.raises(ValidationError, match="exactly the fields"):
        validate_bank_account({**ACCOUNT, "note": "x"})
    with pytest.raises(ValidationError):
        validate_bank_account("0001-001-1234567")  # type: ignore[arg-type]


def test_validated_account_encodes_with_the_codec():
    from schemas import codec

    account = validate_bank_account(ACCOUNT)
    data = codec.encode("existence_check", {"account": account, "requested_at": 0})
    assert codec.decode(data, "existence_check")["account"] == account
