"""Domain validation: My Numbers and bank accounts, checked once at the boundary.

Pure functions. Each returns the normalised value or raises
:class:`~infra.core.errors.ValidationError` naming the field and the rule — never
the value, which may be personal data.

Normalisation decisions:

* ``bank_code`` (金融機関コード) and ``branch_code`` (支店コード) are fixed-width
  identifiers: exactly 4 / 3 ASCII digits, never padded (a short code is a
  typing error, not a shorter code).
* ``account_number`` (口座番号) is 7 ASCII digits; 1 to 6 digits are
  zero-padded on the left, as the Zengin formats right-align account numbers.
* ``account_type`` (預金種目) is stored as ``ORDINARY`` / ``CURRENT`` /
  ``SAVINGS``; 普通 / 当座 / 貯蓄 and the Zengin codes 1 / 2 / 4 are accepted.
* ``holder_kana`` (口座名義) is stored as *full-width katakana*, everything
  else ASCII — that is, the NFKC form of the Zengin character set — and
  converted to half-width kana by :func:`to_zengin_halfwidth` for file formats.
  See :func:`normalise_holder_kana` for the exact character set.
* A bank's existence answer (口座実在性確認) is a result *and* the holder
  check: :func:`existence_outcome` refuses an answer without the holder flag
  and never lets CONFIRMED through for an account the person does not hold.
* The person's consent to a registration filed at a bank
  (:func:`validate_consent`): who, how, when (an aware time, not in the
  future) and the bank's evidence reference.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.core.errors import ValidationError

__all__ = [
    "CONSENT_GIVERS",
    "CONSENT_METHODS",
    "EXISTENCE_RESULTS",
    "HOLDER_KANA_MAX_HALFWIDTH",
    "generate_my_number",
    "my_number_check_digit",
    "normalise_holder_kana",
    "existence_outcome",
    "to_zengin_halfwidth",
    "validate_account_number",
    "validate_account_type",
    "validate_bank_account",
    "validate_bank_code",
    "validate_branch_code",
    "validate_consent",
    "validate_my_number",
    "validate_reference",
]

_ASCII_DIGITS = frozenset("0123456789")


def _is_ascii_digits(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _ASCII_DIGITS


# --- My Number (個人番号) ----------------------------------------------------


def my_number_check_digit(first11: str) -> int:
    """Check digit (検査用数字) of a My Number from its first 11 digits.

    Official rule (番号法施行令 §8 / 総務省令): number the 11 digits P1..P11
    from the right, weight Qn = n + 1 for n ≤ 6 and n − 5 for n ≥ 7,
    r = Σ Pn·Qn mod 11; the check digit is 0 if r ≤ 1, else 11 − r.
    """
    if not _is_ascii_digits(first11, 11):
        raise ValidationError("my_number", "first 11 digits must be 11 ASCII digits")
    total = 0
    for n, digit in enumerate(reversed(first11), start=1):
        weight = n + 1 if n <= 6 else n - 5
        total += int(digit) * weight
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def validate_my_number(value: str, *, field: str = "my_number") -> str:
    """Return ``value`` if it is 12 ASCII digits with a correct check digit."""
    if not _is_ascii_digits(value, 12):
        raise ValidationError(field, "must be 12 ASCII digits")
    if my_number_check_digit(value[:11]) != int(value[11]):
        raise ValidationError(field, "check digit does not match")
    return value


def generate_my_number(rng: random.Random) -> str:
    """A random, check-digit-valid My Number for tests and demos (never a real person's)."""
    first11 = "".join(rng.choice("0123456789") for _ in range(11))
    return first11 + str(my_number_check_digit(first11))


# --- bank account (口座) -----------------------------------------------------


def validate_bank_code(value: str, *, field: str = "bank_code") -> str:
    """金融機関コード: exactly 4 ASCII digits."""
    if not _is_ascii_digits(value, 4):
        raise ValidationError(field, "must be exactly 4 ASCII digits")
    return value


def validate_branch_code(value: str, *, field: str = "branch_code") -> str:
    """支店コード: exactly 3 ASCII digits."""
    if not _is_ascii_digits(value, 3):
        raise ValidationError(field, "must be exactly 3 ASCII digits")
    return value


def validate_account_number(value: str, *, field: str = "account_number") -> str:
    """口座番号: 1 to 7 ASCII digits, returned zero-padded to 7."""
    if not isinstance(value, str) or not 1 <= len(value) <= 7 or not set(value) <= _ASCII_DIGITS:
        raise ValidationError(field, "must be 1 to 7 ASCII digits")
    return value.rjust(7, "0")


_ACCOUNT_TYPES: dict[str, str] = {
    "ORDINARY": "ORDINARY",
    "CURRENT": "CURRENT",
    "SAVINGS": "SAVINGS",
    "普通": "ORDINARY",
    "当座": "CURRENT",
    "貯蓄": "SAVINGS",
    "1": "ORDINARY",  # Zengin 預金種目 codes
    "2": "CURRENT",
    "4": "SAVINGS",
}


def validate_account_type(value: str | int, *, field: str = "account_type") -> str:
    """預金種目 → ``ORDINARY`` / ``CURRENT`` / ``SAVINGS``.

    Accepts those (any case), 普通 / 当座 / 貯蓄, and Zengin codes 1 / 2 / 4
    (as str or int).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        normalised = _ACCOUNT_TYPES.get(value.strip().upper())
        if normalised is not None:
            return normalised
    raise ValidationError(field, "must be ORDINARY, CURRENT or SAVINGS (普通/当座/貯蓄, Zengin 1/2/4)")


# --- holder name in kana (口座名義) ------------------------------------------

HOLDER_KANA_MAX_HALFWIDTH = 48
"""Longest holder name accepted, counted in half-width characters (ﾞ ﾟ count as one)."""

# Zengin has no small kana: they are written large (キュウ → キユウ).
_SMALL_TO_LARGE = str.maketrans("ァィゥェォッャュョヮヵヶ", "アイウエオツヤユヨワカケ")
# Obsolete kana with no half-width form.
_OBSOLETE = str.maketrans("ヰヱ", "イエ")
# Long vowel marks and dash look-alikes: Zengin has none, banks record a hyphen.
_DASHES = str.maketrans({c: "-" for c in "ー‐‑–—−﹣"})
_PUNCTUATION = frozenset("().-/,「」 ")
_ASCII_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _halfwidth_table() -> dict[str, str]:
    """Full-width katakana (incl. voiced) → half-width Zengin spelling."""
    table: dict[str, str] = {}
    for code in range(0xFF66, 0xFF9E):  # ｦ .. ﾝ (half-width katakana letters)
        half = chr(code)
        full = unicodedata.normalize("NFKC", half)
        if full in "ァィゥェォッャュョ" or half == "ｰ":
            continue  # small kana and the prolonged mark are not Zengin characters
        table[full] = half
    for base_full, base_half in list(table.items()):
        for mark, half_mark in (("\u3099", "ﾞ"), ("\u309a", "ﾟ")):
            composed = unicodedata.normalize("NFC", base_full + mark)
            if len(composed) == 1 and composed not in "ヷヺ":  # not Zengin spellings
                table[composed] = base_half + half_mark
    table["「"] = "｢"
    table["」"] = "｣"
    return table


_TO_HALFWIDTH = _halfwidth_table()
_FULLWIDTH_KANA = frozenset(k for k in _TO_HALFWIDTH if k not in "「」")

_KANA_RULE = "must be katakana (全銀 characters)"


def normalise_holder_kana(value: str, *, field: str = "holder_kana") -> str:
    """Canonical holder name: full-width katakana, ASCII for everything else.

    Steps: NFKC (half-width kana → full-width, full-width ASCII → ASCII,
    ideographic space → space); small kana → large; ヰ ヱ → イ エ; the long
    vowel mark ー and dash look-alikes → ``-``; a-z → A-Z; runs of spaces
    collapsed and the ends trimmed.

    Allowed afterwards, exactly: full-width katakana ア..ン, ヲ, ヴ and the
    voiced/semi-voiced forms (ガ, パ, ...); ASCII digits 0-9; ASCII A-Z; space;
    and ``( ) . - / ,`` and 「 」. Hiragana, kanji, ・ and anything else are
    rejected. At most :data:`HOLDER_KANA_MAX_HALFWIDTH` characters once in
    half-width form.
    """
    if not isinstance(value, str):
        raise ValidationError(field, _KANA_RULE)
    text = unicodedata.normalize("NFKC", value)
    text = text.translate(_SMALL_TO_LARGE).translate(_OBSOLETE).translate(_DASHES)
    text = " ".join(part for part in text.upper().split(" ") if part)
    if not text:
        raise ValidationError(field, "must not be empty")
    for char in text:
        if not (
            char in _FULLWIDTH_KANA
            or char in _ASCII_DIGITS
            or char in _ASCII_UPPER
            or char in _PUNCTUATION
        ):
            raise ValidationError(field, _KANA_RULE)
    if len(_halfwidth(text)) > HOLDER_KANA_MAX_HALFWIDTH:
        raise ValidationError(
            field, f"must be at most {HOLDER_KANA_MAX_HALFWIDTH} half-width characters"
        )
    return text


def to_zengin_halfwidth(value: str, *, field: str = "holder_kana") -> str:
    """Holder name in the Zengin file formats' half-width kana (ﾔﾏﾀﾞ ﾀﾛｳ)."""
    return _halfwidth(normalise_holder_kana(value, field=field))


def _halfwidth(canonical: str) -> str:
    return "".join(_TO_HALFWIDTH.get(char, char) for char in canonical)


# --- whole account -----------------------------------------------------------

_ACCOUNT_FIELDS = ("bank_code", "branch_code", "account_type", "account_number", "holder_kana")


def validate_bank_account(record: Mapping[str, Any], *, field: str = "account") -> dict[str, str]:
    """Validate and normalise a ``renkei.BankAccount`` record; returns a new dict."""
    if not isinstance(record, Mapping):
        raise ValidationError(field, "must be a bank account record")
    missing = [name for name in _ACCOUNT_FIELDS if name not in record]
    if missing:
        raise ValidationError(f"{field}.{missing[0]}", "is required")
    if len(record) != len(_ACCOUNT_FIELDS):
        raise ValidationError(field, f"must have exactly the fields {', '.join(_ACCOUNT_FIELDS)}")
    return {
        "bank_code": validate_bank_code(record["bank_code"], field=f"{field}.bank_code"),
        "branch_code": validate_branch_code(record["branch_code"], field=f"{field}.branch_code"),
        "account_type": validate_account_type(record["account_type"], field=f"{field}.account_type"),
        "account_number": validate_account_number(
            record["account_number"], field=f"{field}.account_number"
        ),
        "holder_kana": normalise_holder_kana(record["holder_kana"], field=f"{field}.holder_kana"),
    }


# --- a bank's existence answer (口座実在性確認) --------------------------------

EXISTENCE_RESULTS = ("CONFIRMED", "ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "ACCOUNT_CLOSED", "NOT_HOLDER")
"""What a bank may answer (``renkei.ExistenceResult`` v2 without its UNKNOWN)."""


def existence_outcome(result: Any, holder: Any, *, field: str = "result") -> str:
    """The existence result to send on, from a bank channel's ``result`` and its ``holder`` flag.

    ``holder`` says whether the bank's customer record for the person (the check's token) holds
    the account; it is required (a bank that does not check the holder cannot confirm).  An
    account the person does not hold is NOT_HOLDER whatever else the bank says, except that no
    such account stays ACCOUNT_NOT_FOUND; NOT_HOLDER with ``holder`` true is contradictory.
    """
    if result not in EXISTENCE_RESULTS:
        raise ValidationError(field, f"must be one of {', '.join(EXISTENCE_RESULTS)}")
    if not isinstance(holder, bool):
        raise ValidationError("holder", "must be true or false: whether the bank's customer record for this "
                                        "person holds the account")
    if result == "NOT_HOLDER" and holder:
        raise ValidationError("holder", "must be false with NOT_HOLDER")
    if not holder and result != "ACCOUNT_NOT_FOUND":
        return "NOT_HOLDER"
    return result


# --- the person's consent to a registration filed at a bank --------------------------------

CONSENT_GIVERS = ("PERSON", "LEGAL_REPRESENTATIVE")
CONSENT_METHODS = ("SIGNED_FORM_AT_COUNTER", "ONLINE_BANKING", "BANK_APP")
_REF_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
CONSENT_CLOCK_SKEW = timedelta(minutes=5)


def validate_reference(value: Any, *, field: str, max_length: int = 64) -> str:
    """An opaque ASCII reference (1 to ``max_length`` letters, digits, ``-``, ``_``), never personal data."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not set(value) <= _REF_CHARS:
        raise ValidationError(field, f"must be 1 to {max_length} ASCII letters, digits, - or _")
    return value


def _aware_time(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(field, "must be an ISO 8601 time with its UTC offset") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(field, "must be an ISO 8601 time with its UTC offset")
    return value.astimezone(UTC)


def validate_consent(record: Any, *, field: str = "consent", now: datetime | None = None) -> dict[str, Any]:
    """Validate a ``renkei.RegistrationConsent``: who gave it, how, when, the bank's evidence reference.

    ``given_at`` is an aware ``datetime`` or an ISO 8601 string with an offset, not later than
    ``now`` (plus five minutes of clock skew); returned in UTC.
    """
    if not isinstance(record, Mapping):
        raise ValidationError(field, "is required: who gave the consent, how, when, and the evidence reference")
    given_by, method = record.get("given_by"), record.get("method")
    if given_by not in CONSENT_GIVERS:
        raise ValidationError(f"{field}.given_by", f"must be one of {', '.join(CONSENT_GIVERS)}")
    if method not in CONSENT_METHODS:
        raise ValidationError(f"{field}.method", f"must be one of {', '.join(CONSENT_METHODS)}")
    given_at = _aware_time(record.get("given_at"), f"{field}.given_at")
    if given_at > (now or datetime.now(UTC)) + CONSENT_CLOCK_SKEW:
        raise ValidationError(f"{field}.given_at", "must not be in the future")
    return {"given_by": given_by, "method": method, "given_at": given_at,
            "evidence_ref": validate_reference(record.get("evidence_ref"), field=f"{field}.evidence_ref")}
