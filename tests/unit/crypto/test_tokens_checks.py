"""Each check of the token authority, one at a time: a token has one spelling, the secrets have a floor,
issuance names what it refuses, and two tokens are the same person only when the authority says so.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when the check it
names is removed or weakened in infra/crypto/tokens.py.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from infra.core.errors import Reason, ValidationError
from infra.crypto.keys import KeyDirectory, Keyset, RootAuthority
from infra.crypto.tokens import TokenAuthority, TokenIssuanceClient, issuance_info
from schemas import codec
from schemas.codec import CodecError
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

LINK_KEY = bytes(range(32))
MASTER = bytes(range(32, 64))
AUTHORITY = TokenAuthority(LINK_KEY, MASTER)
PERSON = "123456789018"
OTHER_PERSON = "234567890121"

pytestmark = pytest.mark.usefixtures("no_personal_data")


def _token_with(chars: str) -> tuple[str, str]:
    """A (token, participant) whose token contains one of ``chars`` (tokens are pseudo-random)."""
    for i in range(500):
        participant = f"agency-{i}"
        token = AUTHORITY.token_for(used(PERSON), participant)
        if any(c in token for c in chars):
            return token, participant
    raise AssertionError("no token with those characters in 500 participants")


def test_a_token_has_one_spelling_the_standard_alphabet_is_refused():
    """'+' and '/' decode like '-' and '_' in a lenient decoder: the re-encoding check refuses them."""
    token, participant = _token_with("-_")
    spelled_otherwise = token.replace("-", "+").replace("_", "/")
    assert spelled_otherwise != token
    with pytest.raises(ValidationError) as info:
        AUTHORITY.translate(spelled_otherwise, participant, "registry")
    assert info.value.field == "token"
    assert AUTHORITY.translate(token, participant, "registry") == AUTHORITY.token_for(PERSON, "registry")


def test_a_bad_token_says_which_field_and_why_without_the_value():
    with pytest.raises(ValidationError, match=r"^INVALID_FIELD: token: not a token of the named participant$") as info:
        AUTHORITY.translate("x" * 64, "agency-a", "registry")
    assert info.value.rule == "not a token of the named participant"


@pytest.mark.parametrize("link_key, master", [(bytes(31), bytes(32)), (bytes(32), bytes(31))])
def test_each_secret_alone_must_be_at_least_32_bytes(link_key, master):
    with pytest.raises(ValueError, match=r"^link_key and master_secret must each be at least 32 bytes$"):
        TokenAuthority(link_key, master)


def test_secrets_of_exactly_32_bytes_are_enough():
    assert TokenAuthority(bytes(32), bytes(32)).token_for(used(PERSON), "agency-a")


def test_repr_is_fixed_text():
    assert repr(AUTHORITY) == "TokenAuthority(<secrets hidden>)"


def test_an_empty_participant_has_no_token_space():
    with pytest.raises(ValidationError) as info:
        AUTHORITY.token_for(used(PERSON), "")
    assert info.value.reason is Reason.INVALID_FIELD
    assert (info.value.field, info.value.rule) == ("participant_id", "must not be empty")


def test_same_person_across_participants_and_not_across_people():
    a = AUTHORITY.token_for(used(PERSON), "agency-a")
    b = AUTHORITY.token_for(PERSON, "bank-b")
    other = AUTHORITY.token_for(used(OTHER_PERSON), "bank-b")
    assert AUTHORITY.same_person(a, "agency-a", b, "bank-b") is True
    assert AUTHORITY.same_person(b, "bank-b", a, "agency-a") is True
    assert AUTHORITY.same_person(a, "agency-a", other, "bank-b") is False


@pytest.mark.parametrize("swap", ["first", "second"])
def test_same_person_checks_each_token_against_its_own_participant(swap):
    a = AUTHORITY.token_for(used(PERSON), "agency-a")
    b = AUTHORITY.token_for(PERSON, "bank-b")
    # Either token named with the other participant is not a token of that participant.
    args = ("bank-b", "bank-b") if swap == "first" else ("agency-a", "agency-a")
    with pytest.raises(ValidationError) as info:
        AUTHORITY.same_person(a, args[0], b, args[1])
    assert info.value.field == "token"


def test_issuance_info_is_length_prefixed_big_endian():
    info = issuance_info("agency-a", "ref", "kid")
    assert info == b"renkei token-issue v1|" + b"\x00\x08agency-a" + b"\x00\x03ref" + b"\x00\x03kid"


# --- issuance --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuance():
    root = RootAuthority.generate()
    authority_keys = Keyset.generate("hub")
    directory = KeyDirectory.verify_and_load(root.snapshot(authority_keys.public_entries()), root.public_key)
    return TokenAuthority(LINK_KEY, MASTER, keyset=authority_keys), directory.encryption_key("hub")


def test_issuance_without_a_keyset_is_refused_by_name(issuance):
    _, key = issuance
    request = TokenIssuanceClient("agency-a", key).request(used(PERSON))
    with pytest.raises(ValueError, match=r"^this TokenAuthority has no encryption keyset for issuance$"):
        AUTHORITY.issue(request, "agency-a")


def test_issuance_names_the_requester_field_when_the_sender_differs(issuance):
    authority, key = issuance
    request = TokenIssuanceClient("agency-a", key).request(used(PERSON))
    with pytest.raises(ValidationError) as info:
        authority.issue(request, "agency-b")
    assert (info.value.field, info.value.rule) == ("requester", "does not match the authenticated sender")


def test_issuance_reads_only_a_token_request(issuance):
    """A record of another type is refused as such, not read as if it were a request."""
    authority, _ = issuance
    other = codec.encode("token_issue_response", {"token": b"\x02" * 32, "local_ref": "r", "issued_at": datetime.now(UTC)})
    with pytest.raises(CodecError) as info:
        authority.issue(other, "agency-a")
    assert info.value.reason is Reason.UNKNOWN_SCHEMA


def test_issuance_refuses_a_sealed_value_that_is_not_ascii(issuance):
    authority, key = issuance
    info = issuance_info("agency-a", "ref-1", key.key_id)
    record = {
        "sealed_my_number": key.seal("１２３４５６７８９０１８".encode(), info),
        "authority_key_id": key.key_id,
        "requester": "agency-a",
        "local_ref": "ref-1",
        "requested_at": datetime.now(UTC),
    }
    with pytest.raises(ValidationError) as err:
        authority.issue(codec.encode("token_issue_request", record), "agency-a")
    assert (err.value.field, err.value.rule) == ("my_number", "must be 12 ASCII digits")


def test_an_impostor_authority_with_one_right_secret_links_nobody():
    """Both secrets matter: the right link key with another master gives unrelated tokens."""
    assert TokenAuthority(LINK_KEY, os.urandom(32)).token_for(used(PERSON), "agency-a") != AUTHORITY.token_for(
        PERSON, "agency-a")


def test_hub_secret_is_32_bytes_per_label_from_the_master_only():
    secret = AUTHORITY.hub_secret("pseudonyms")
    assert len(secret) == 32
    assert secret == TokenAuthority(bytes(32), MASTER).hub_secret("pseudonyms")  # the link key plays no part
    assert secret != AUTHORITY.hub_secret("other")
    assert secret != TokenAuthority(LINK_KEY, bytes(32)).hub_secret("pseudonyms")
    # Pinned: every hub worker derives the same secret (HKDF-SHA256, no salt, the v1 label prefix).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"renkei hub secret v1|pseudonyms").derive(MASTER)
    assert secret == expected


def test_hub_secret_needs_a_label():
    with pytest.raises(ValueError, match=r"^label must not be empty$"):
        AUTHORITY.hub_secret("")
