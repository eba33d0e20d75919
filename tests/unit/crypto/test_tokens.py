"""Tokens (符号): deterministic per participant, unlinkable across participants, translatable only by the authority."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.core.errors import EnvelopeRejection, Reason, ValidationError
from infra.crypto.keys import KeyDirectory, Keyset, RootAuthority
from infra.crypto.tokens import TOKEN_LEN, TokenAuthority, TokenIssuanceClient
from infra.domain.validation import my_number_check_digit
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

LINK_KEY = bytes(range(32))
MASTER = bytes(range(32, 64))
AUTHORITY = TokenAuthority(LINK_KEY, MASTER)

participants = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
my_numbers = st.text(alphabet="0123456789", min_size=11, max_size=11).map(lambda s: s + str(my_number_check_digit(s)))

# Every test here fails if a My Number it used appears in an exception message or a log record.
pytestmark = pytest.mark.usefixtures("no_personal_data")


@given(my_numbers, participants)
def test_token_is_deterministic_per_participant_and_well_formed(my_number, participant):
    used(my_number)
    token = AUTHORITY.token_for(my_number, participant)
    assert token == AUTHORITY.token_for(my_number, participant)
    assert len(token) == TOKEN_LEN and "=" not in token
    assert my_number not in token
    base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@given(my_numbers, participants, participants)
def test_tokens_differ_across_participants(my_number, p, q):
    used(my_number)
    if p != q:
        assert AUTHORITY.token_for(my_number, p) != AUTHORITY.token_for(my_number, q)


@given(my_numbers, my_numbers, participants)
def test_tokens_differ_across_people(a, b, p):
    used(a), used(b)
    if a != b:
        assert AUTHORITY.token_for(a, p) != AUTHORITY.token_for(b, p)


@given(my_numbers, participants, participants, participants)
def test_translation_round_trips(my_number, p, q, r):
    used(my_number)
    token_p = AUTHORITY.token_for(my_number, p)
    token_q = AUTHORITY.translate(token_p, p, q)
    assert token_q == AUTHORITY.token_for(my_number, q)
    assert AUTHORITY.translate(token_q, q, p) == token_p
    assert AUTHORITY.translate(AUTHORITY.translate(token_p, p, r), r, q) == token_q


@given(my_numbers, participants, st.lists(participants, max_size=5))
def test_translate_many_equals_one_translation_per_target(my_number, p, targets):
    used(my_number)
    token_p = AUTHORITY.token_for(my_number, p)
    assert AUTHORITY.translate_many(token_p, p, targets) == [AUTHORITY.token_for(my_number, t) for t in targets]


@settings(max_examples=30)
@given(st.lists(my_numbers, min_size=20, max_size=20, unique=True))
def test_tokens_look_unlinkable(numbers):
    """No common prefix or suffix across people or across participants; bytes look uniform."""
    for n in numbers:
        used(n)
    for tokens in (
        [AUTHORITY.token_for(n, "agency-a") for n in numbers],  # many people, one participant
        [AUTHORITY.token_for(numbers[0], f"bank-{i:04d}") for i in range(20)],  # one person, many participants
    ):
        assert len({t[:3] for t in tokens}) >= 15
        assert len({t[-3:] for t in tokens}) >= 15
        raw = b"".join(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)) for t in tokens)
        assert len(set(raw)) > 200  # 960 bytes cover most byte values


def test_foreign_or_bad_token_is_invalid_field():
    token = AUTHORITY.token_for(used("123456789018"), "agency-a")
    for bad, from_p in [
        (token, "agency-b"),  # a real token, but not agency-b's
        (token[:-1] + ("A" if token[-1] != "A" else "B"), "agency-a"),  # tampered
        ("", "agency-a"),
        ("!" * TOKEN_LEN, "agency-a"),
        (token + "AA", "agency-a"),
        (123, "agency-a"),
    ]:
        with pytest.raises(ValidationError) as info:
            AUTHORITY.translate(bad, from_p, "registry")
        assert info.value.reason is Reason.INVALID_FIELD and info.value.field == "token"


def test_participant_cannot_derive_another_participants_token():
    """A participant holds its token and its own keys, never K_P: nothing it has translates."""
    my_number = used("123456789018")
    token_a = AUTHORITY.token_for(my_number, "agency-a")
    token_b = AUTHORITY.token_for(my_number, "agency-b")
    # Any secret it can hold (its own keys, a guess) is not the hub's master: nothing translates.
    impostor = TokenAuthority(os.urandom(32), os.urandom(32))
    with pytest.raises(ValidationError):
        impostor.translate(token_a, "agency-a", "agency-b")
    assert impostor.token_for(my_number, "agency-b") != token_b
    # Same master but a different link key (K_link is also hub-only) gives other tokens too.
    assert TokenAuthority(os.urandom(32), MASTER).token_for(my_number, "agency-b") != token_b


def test_my_number_is_validated_and_never_echoed():
    for bad in ["12345678901", "123456789019", "１２３４５６７８９０１８", "abcdefghijkl"]:
        with pytest.raises(ValidationError) as info:
            AUTHORITY.token_for(bad, "agency-a")
        assert bad not in str(info.value)


def test_repr_hides_secrets():
    assert LINK_KEY.hex() not in repr(AUTHORITY) and "secrets hidden" in repr(AUTHORITY)


def test_derived_keys_are_cached():
    authority = TokenAuthority(LINK_KEY, MASTER)
    authority.token_for(used("123456789018"), "agency-a")
    authority.token_for(used("123456789018"), "agency-a")
    assert authority._siv.cache_info().hits >= 1


# --- issuance ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuance():
    root = RootAuthority.generate()
    authority_keys = Keyset.generate("hub")
    directory = KeyDirectory.verify_and_load(root.snapshot(authority_keys.public_entries()), root.public_key)
    authority = TokenAuthority(LINK_KEY, MASTER, keyset=authority_keys)
    return authority, directory.encryption_key("hub")


def test_issuance_returns_the_requesters_token(issuance):
    authority, key = issuance
    my_number = used("123456789018")
    request = TokenIssuanceClient("agency-a", key).request(my_number, local_ref="case-42")
    assert my_number.encode() not in request
    assert authority.issue(request, "agency-a") == AUTHORITY.token_for(my_number, "agency-a")


def test_issuance_request_cannot_be_replayed_by_another_participant(issuance):
    authority, key = issuance
    request = TokenIssuanceClient("agency-a", key).request(used("123456789018"))
    with pytest.raises(ValidationError):  # claimed requester differs from the authenticated sender
        authority.issue(request, "agency-b")
    # Rewriting the claimed requester does not help: the requester is bound as HPKE info.
    from schemas import codec

    record = codec.decode(request, "token_issue_request")
    record["requester"] = "agency-b"
    with pytest.raises(EnvelopeRejection) as info:
        authority.issue(codec.encode("token_issue_request", record), "agency-b")
    assert info.value.reason is Reason.UNDECRYPTABLE


def test_issuance_validates_before_sealing(issuance):
    _, key = issuance
    with pytest.raises(ValidationError):
        TokenIssuanceClient("agency-a", key).request("123456789019")


def test_leak_guard_sees_exception_messages(no_personal_data):
    """Positive control: the guard really records what exceptions say."""
    with pytest.raises(ValidationError):
        AUTHORITY.translate("x", "agency-a", "agency-b")
    assert any("token" in text for text in no_personal_data)
