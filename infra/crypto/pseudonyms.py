"""Hub-only pseudonyms: identifiers that join nothing across participants, the broker or the audit topic.

Forwarding used to keep the origin's message id and correlation id, so the
ingress topic, each recipient's inbox and the provision records joined on
them, and with them one person's tokens of several participants.  The hub now
gives every forwarded leg ids of its own, keyed by a secret only the hub holds
(derived from the token authority's master secret, so every hub worker agrees):

- **leg message id** = the first 16 bytes of ``HMAC(K, "leg" | origin message
  id | recipient)``: one per leg, the same when a crashed batch is forwarded
  again (so the recipient's claim still drops the copy);
- **correlation spaces**: each participant P sees a conversation under its own
  correlation id ``E_P(conversation)``, with ``E_P`` AES-256 on the 16-byte
  UUID under a key derived for P (a keyed permutation, so the hub maps both
  ways without a table).  A message from A with correlation ``c`` belongs to
  conversation ``D_A(c)``; its leg to B carries ``E_B(D_A(c))``; B's answer
  with that correlation reaches A as ``c`` again — the requester still matches
  its reply, and a participant can only address conversations it was shown;
- **record ids**: a provision record names its message and conversation by
  ``HMAC(K, "record" | message id)`` and the conversation itself, neither of
  which is ever on the wire;
- **the person**: provision records are published on the audit topic keyed by
  ``HMAC(K, "person" | portal token)``, a pseudonym no participant can compute
  (the portal holds the token, not the key).

None of these is a secret from the hub's operator (who translates tokens
anyway); they only keep participants, broker readers and ops tools from
joining what the hub keeps apart.  docs/security.md, "Unlinkable legs", says
what remains linkable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from functools import lru_cache
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from infra.crypto.envelope import LegIds
from infra.crypto.tokens import TokenAuthority

__all__ = ["HubPseudonyms", "SECRET_LABEL"]

SECRET_LABEL: Final = "pseudonyms"
"""The label ``TokenAuthority.hub_secret`` derives the hub's pseudonym key under."""


class HubPseudonyms:
    """The hub's keyed ids (see the module docstring). Pure; one per hub worker."""

    def __init__(self, secret: bytes, *, cache_size: int = 4096) -> None:
        if len(secret) < 32:
            raise ValueError("the pseudonym secret must be at least 32 bytes")
        # Keyed HMAC states, copied per call: hmac.digest() looks the digest up by name on every call (OpenSSL 3's
        # fetch), ~40 % of a short HMAC's cost; a copy of a keyed state skips that and the key schedule.
        self._leg = hmac.new(_subkey(secret, b"leg"), digestmod=hashlib.sha256)
        self._record = hmac.new(_subkey(secret, b"record"), digestmod=hashlib.sha256)
        self._person = hmac.new(_subkey(secret, b"person"), digestmod=hashlib.sha256)
        correlation = _subkey(secret, b"correlation")

        # One AES-ECB context each way per participant, kept open: ECB maps each 16-byte block on its own,
        # so one context serves every call (creating one per call would cost more than the rest of a leg).
        def contexts(participant: str) -> tuple[object, object]:
            cipher = Cipher(algorithms.AES(_subkey(correlation, participant.encode())), modes.ECB())
            return cipher.encryptor(), cipher.decryptor()

        self._contexts = lru_cache(maxsize=cache_size)(contexts)

    @classmethod
    def of(cls, tokens: TokenAuthority) -> HubPseudonyms:
        """The hub's pseudonyms, keyed from the token authority's master secret (so every hub worker agrees)."""
        return cls(tokens.hub_secret(SECRET_LABEL))

    def __repr__(self) -> str:
        return "HubPseudonyms(<secret hidden>)"

    # -- legs and conversations
    def legs(self, message_id: str, correlation_id: str, sender: str, recipients: list[str]) -> list[LegIds]:
        """The ids of ``sender``'s message as forwarded to each of ``recipients``."""
        conversation = self._contexts(sender)[1].update(_uuid_bytes(correlation_id))
        return [LegIds(self.leg_message_id(message_id, recipient),
                       _uuid_str(self._contexts(recipient)[0].update(conversation))) for recipient in recipients]

    def leg_message_id(self, message_id: str, recipient: str) -> str:
        """The message id of the leg of ``message_id`` to ``recipient``."""
        return _uuid_str(_mac(self._leg, f"{message_id}|{recipient}".encode())[:16])

    def conversation(self, correlation_id: str, participant: str) -> uuid.UUID:
        """The hub-internal conversation of ``participant``'s correlation id (never on the wire)."""
        return uuid.UUID(bytes=self._contexts(participant)[1].update(_uuid_bytes(correlation_id)))

    def correlation_for(self, conversation: uuid.UUID, participant: str) -> str:
        """``participant``'s correlation id for a conversation."""
        return _uuid_str(self._contexts(participant)[0].update(conversation.bytes))

    # -- provision records
    def record_message_id(self, message_id: str | uuid.UUID) -> uuid.UUID:
        """The id a provision record gives the message it is about (one message, one id; never on the wire)."""
        return uuid.UUID(bytes=_mac(self._record, str(message_id).encode())[:16])

    def person(self, portal_token: str) -> str:
        """The person's pseudonym on the audit topic: base64url, 43 characters."""
        digest = _mac(self._person, portal_token.encode("ascii"))
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _mac(keyed: hmac.HMAC, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``keyed``'s key (the keyed state itself is left as it was)."""
    state = keyed.copy()
    state.update(data)
    return state.digest()


def _subkey(secret: bytes, label: bytes) -> bytes:
    return hmac.digest(secret, b"renkei pseudonyms v1|" + label, "sha256")


def _uuid_bytes(value: str) -> bytes:
    """A canonical UUID string's 16 bytes (the envelope checked its form), without building a ``uuid.UUID``."""
    return bytes.fromhex(value.replace("-", ""))


def _uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
