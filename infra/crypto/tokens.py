"""Tokens (符号, 情報提供用個人識別符号): how a person is known on the bus without a My Number.

The token authority (inside the hub) holds two secrets and nothing else:

* ``link_key`` — ``link_id = HMAC-SHA256(link_key, my_number)``, a stable
  internal identifier of the person that never leaves the authority.  It is
  the derivation of the person's FIRST My Number: after a number change
  (番号変更) the new number resolves to the same id (:mod:`infra.domain.identity`),
  so every token stays what it was;
* ``master_secret`` — per participant P, ``K_P = HKDF-SHA256(master_secret,
  info="renkei token v1|" + P, 64 bytes)`` is an AES-256-SIV key and
  ``token_P = base64url(AES-SIV(K_P, link_id, associated_data=[P]))``.

AES-SIV is deterministic, so a participant's token for a person is stable
(it can key Kafka partitions and local ID mappings), yet tokens of two
participants are unrelated ciphertexts under independent keys: linking them
needs ``master_secret``. Translation ``token_A -> token_B`` decrypts under
``K_A`` and re-encrypts under ``K_B``, inside the authority.

Participants obtain tokens through :class:`TokenIssuanceClient`: the My Number
is sealed with HPKE to the authority's encryption key, with the requester and
its request reference bound as HPKE ``info``, so a captured request cannot be
replayed by another participant to learn *its* token for the same person.

Every bad token (not base64url, wrong length, not a token of the named
participant) is refused with ``ValidationError`` (reason ``INVALID_FIELD``,
field ``token``): callers need one reason, and which check failed would only
help an attacker probe. No message ever contains a My Number or a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infra.core.errors import ValidationError
from infra.domain.validation import validate_my_number

if TYPE_CHECKING:
    from infra.crypto.keys import EncryptionPublicKey, Keyset

TOKEN_INFO_PREFIX = b"renkei token v1|"
ISSUANCE_INFO_PREFIX = b"renkei token-issue v1|"
HUB_SECRET_INFO_PREFIX = b"renkei hub secret v1|"  # never a prefix of TOKEN_INFO_PREFIX: the keys stay apart
_LINK_ID_LEN = 32
_TOKEN_RAW_LEN = 16 + _LINK_ID_LEN  # SIV tag + ciphertext
TOKEN_LEN = 64  # base64url, unpadded, of 48 bytes


def _bad_token() -> ValidationError:
    return ValidationError("token", "not a token of the named participant")


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d_token(token: str) -> bytes:
    if not isinstance(token, str) or len(token) != TOKEN_LEN or not token.isascii():
        raise _bad_token()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _bad_token() from None
    # Reject non-canonical encodings so one token has exactly one spelling.
    if len(raw) != _TOKEN_RAW_LEN or _b64e(raw) != token:
        raise _bad_token()
    return raw


def issuance_info(requester: str, local_ref: str, authority_key_id: str) -> bytes:
    """HPKE info for a token request: binds who asks, for which reference, to which key."""
    parts = (requester, local_ref, authority_key_id)
    return ISSUANCE_INFO_PREFIX + b"".join(len(p.encode()).to_bytes(2, "big") + p.encode() for p in parts)


class TokenAuthority:
    """Issues and translates tokens. Runs only inside the hub; holds ``K_link`` and the master secret."""

    def __init__(
        self,
        link_key: bytes,
        master_secret: bytes,
        *,
        keyset: Keyset | None = None,
        cache_size: int = 4096,
    ) -> None:
        if len(link_key) < 32 or len(master_secret) < 32:
            raise ValueError("link_key and master_secret must each be at least 32 bytes")
        self._link_key = bytes(link_key)
        self._master = bytes(master_secret)
        self._keyset = keyset
        # 番号変更 (infra.domain.identity.NumberChanges.resolve): the person id of a number that replaced another, None
        # for a number never changed; raises for a replaced one. Unset: every number is its person's first.
        self.resolver: Callable[[str], bytes | None] | None = None
        # Derived keys are cached per participant: HKDF + AESSIV setup per call would dominate.
        self._siv = lru_cache(maxsize=cache_size)(self._derive)

    def __repr__(self) -> str:
        return "TokenAuthority(<secrets hidden>)"

    def _derive(self, participant_id: str) -> AESSIV:
        if not participant_id:
            raise ValidationError("participant_id", "must not be empty")
        key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=TOKEN_INFO_PREFIX + participant_id.encode()
        ).derive(self._master)
        return AESSIV(key)

    def hub_secret(self, label: str) -> bytes:
        """A 32-byte secret for another of the hub's own purposes (e.g. ``infra.crypto.pseudonyms``), derived from the
        master secret under ``label``: independent of every token key, identical in every hub worker."""
        if not label:
            raise ValueError("label must not be empty")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=HUB_SECRET_INFO_PREFIX + label.encode()).derive(self._master)

    def link_id(self, my_number: str) -> bytes:
        """The person's internal link id. Never leaves the authority."""
        my_number = validate_my_number(my_number)
        return hmac.new(self._link_key, my_number.encode("ascii"), hashlib.sha256).digest()

    def token_for(self, my_number: str, participant_id: str) -> str:
        """The person's token in ``participant_id``'s token space (the number's own derivation: tools and tests;
        issuance goes through :meth:`person_id`, which follows number changes)."""
        return self._token_from_link(self.link_id(my_number), participant_id)

    def person_id(self, my_number: str) -> bytes:
        """The person's stable id: the link id of their first My Number, through every change since (the
        ``resolver``). A replaced number raises the resolver's refusal."""
        linked = self.resolver(my_number) if self.resolver is not None else None
        return linked if linked is not None else self.link_id(my_number)

    def _token_from_link(self, link_id: bytes, participant_id: str) -> str:
        return _b64e(self._siv(participant_id).encrypt(link_id, [participant_id.encode()]))

    def _link_from_token(self, token: str, participant_id: str) -> bytes:
        raw = _b64d_token(token)
        try:
            link = self._siv(participant_id).decrypt(raw, [participant_id.encode()])
        except InvalidTag:
            raise _bad_token() from None
        if len(link) != _LINK_ID_LEN:  # pragma: no cover - impossible with a valid tag
            raise _bad_token()
        return link

    def translate(self, token: str, from_participant: str, to_participant: str) -> str:
        """``from_participant``'s token for a person -> ``to_participant``'s token for the same person.

        Raises ``ValidationError`` (INVALID_FIELD, field ``token``) if ``token`` is
        not a token of ``from_participant``.
        """
        return self._token_from_link(self._link_from_token(token, from_participant), to_participant)

    def translate_many(self, token: str, from_participant: str, to_participants: list[str]) -> list[str]:
        """:meth:`translate` to several participants with one decryption (a fan-out's legs, the portal's record key)."""
        link = self._link_from_token(token, from_participant)
        return [self._token_from_link(link, to) for to in to_participants]

    def same_person(self, token_a: str, participant_a: str, token_b: str, participant_b: str) -> bool:
        """Whether two tokens of two participants denote one person (hub-internal check)."""
        return hmac.compare_digest(
            self._link_from_token(token_a, participant_a), self._link_from_token(token_b, participant_b)
        )

    def issue(self, request: bytes, requester: str) -> str:
        """Answer a :class:`TokenIssuanceClient` request: the requester's token for the sealed person.

        ``requester`` is the authenticated sender (the envelope's verified sender),
        not the value claimed inside the request: a request sealed by another
        participant does not decrypt.
        """
        if self._keyset is None:
            raise ValueError("this TokenAuthority has no encryption keyset for issuance")
        from schemas import codec

        record = codec.decode(request, "token_issue_request")
        if record["requester"] != requester:
            raise ValidationError("requester", "does not match the authenticated sender")
        info = issuance_info(requester, record["local_ref"], record["authority_key_id"])
        plain = self._keyset.decrypt(record["authority_key_id"], record["sealed_my_number"], info)
        try:
            my_number = plain.decode("ascii")
        except UnicodeDecodeError:
            raise ValidationError("my_number", "must be 12 ASCII digits") from None
        return self._token_from_link(self.person_id(my_number), requester)


@dataclass(frozen=True)
class TokenIssuanceClient:
    """A participant's side of token issuance: seals a My Number to the token authority.

    ``authority_key`` is the authority's active encryption key from the key
    directory (``directory.encryption_key(authority_id)``).
    """

    requester: str
    authority_key: EncryptionPublicKey

    def request(self, my_number: str, local_ref: str | None = None, *, now: datetime | None = None) -> bytes:
        """A ``token_issue_request`` record (Avro) carrying the My Number sealed with HPKE."""
        from schemas import codec

        my_number = validate_my_number(my_number)
        local_ref = local_ref or secrets.token_hex(16)
        info = issuance_info(self.requester, local_ref, self.authority_key.key_id)
        sealed = self.authority_key.seal(my_number.encode("ascii"), info)
        return codec.encode(
            "token_issue_request",
            {
                "sealed_my_number": sealed,
                "authority_key_id": self.authority_key.key_id,
                "requester": self.requester,
                "local_ref": local_ref,
                "requested_at": now or datetime.now(UTC),
            },
        )
