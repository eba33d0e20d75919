"""Sealing: the sender's primitive. ``Sealer.seal`` encrypts a body to its recipient(s) and signs the envelope.

A single-recipient body is HPKE-sealed to the recipient's current key; a fan-out body is encrypted once
under a fresh data key wrapped to each recipient. Many messages share ONE Ed25519 signature over the
Merkle root of their origin leaves (``seal_batch``). The bytes signed are :mod:`infra.crypto.layout`'s.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.crypto import layout, merkle
from infra.crypto.keys import KeyDirectory, Keyset
from infra.crypto.layout import subject_commitment
from infra.crypto.wire import DEFAULT_TTL_S, FANOUT, MAX_TTL_S, body_schema, encode
from schemas import codec

__all__ = ["Message", "Sealer"]


@dataclass(frozen=True)
class Message:
    """One message to seal. ``to`` is a participant id, or a sequence of them for a fan-out."""

    body: dict = field(repr=False)
    type: str
    to: str | Sequence[str]
    subject: str
    data_item: str
    basis: str
    correlation_id: str | None = None
    ttl_s: int = DEFAULT_TTL_S
    message_id: str | None = None  # None = a fresh random id; set for a reply that must be the same when re-sealed
    procedure: str | None = None  # the public-benefit procedure it serves (signed; the hub checks entitlement)
    outcome: str | None = None  # what an answer says, for the provision record (signed; see docs/security.md)


class Sealer:
    """Seals messages from one participant: encrypts each body to its recipient(s) and signs."""

    def __init__(self, keyset: Keyset, directory: KeyDirectory, *, clock: Callable[[], float] = time.time) -> None:
        self._keyset = keyset
        self._directory = directory
        self._clock = clock

    def seal(
        self,
        body: dict,
        *,
        type: str,
        to: str,
        subject: str,
        data_item: str,
        basis: str,
        correlation_id: str | None = None,
        ttl_s: int = DEFAULT_TTL_S,
        procedure: str | None = None,
        outcome: str | None = None,
    ) -> bytes:
        """One envelope to ``to``, signed on its own."""
        if not isinstance(to, str):
            raise TypeError("seal() takes one recipient; use seal_multi() for a fan-out")
        return self.seal_batch([Message(body, type, to, subject, data_item, basis, correlation_id, ttl_s,
                                        procedure=procedure, outcome=outcome)])[0]

    def seal_multi(
        self,
        body: dict,
        *,
        type: str,
        to: Sequence[str],
        subject: str,
        data_item: str,
        basis: str,
        correlation_id: str | None = None,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> bytes:
        """One fan-out envelope: the body encrypted once, its data key wrapped for each of ``to``."""
        if isinstance(to, str):
            raise TypeError("seal_multi() takes a sequence of recipients")
        return self.seal_batch([Message(body, type, tuple(to), subject, data_item, basis, correlation_id, ttl_s)])[0]

    def seal_batch(self, messages: Sequence[Message]) -> list[bytes]:
        """Seal ``messages`` under ONE signature over the Merkle root of their digests."""
        if not messages:
            return []
        now = int(self._clock() * 1000)
        sender = self._keyset.participant_id
        key_id = self._keyset.signing_key_id
        records, leaves = [], []
        for m in messages:
            if not 0 < m.ttl_s <= MAX_TTL_S:
                raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}]")
            if not all(v is None or (isinstance(v, str) and v) for v in (m.procedure, m.outcome)):
                raise ValueError("procedure and outcome must be None or a non-empty string")
            if not isinstance(m.to, str) and (
                not m.to or len(set(m.to)) != len(m.to) or FANOUT in m.to or not all(isinstance(t, str) for t in m.to)
            ):
                raise ValueError("a fan-out needs one or more distinct recipient ids")
            mid = str(uuid.UUID(m.message_id)) if m.message_id else str(uuid.uuid4())
            cid = str(uuid.UUID(m.correlation_id)) if m.correlation_id else mid
            plaintext = codec.encode(body_schema(m.type), m.body)
            r = {
                "message_id": mid,
                "correlation_id": cid,
                "type": m.type,
                "sender": sender,
                "subject": m.subject,
                "subject_commitment": subject_commitment(mid, m.subject),
                "data_item": m.data_item,
                "legal_basis": m.basis,
                "created_at": now,
                "expires_at": now + m.ttl_s * 1000,
                "sender_key_id": key_id,
                "wrap_proof": None,
                "countersignature": None,
                "procedure": m.procedure,
                "outcome": m.outcome,
                "leg": None,
            }
            if isinstance(m.to, str):
                rk = self._directory.encryption_key(m.to)
                r["recipient"], r["recipient_key_id"], r["wraps"] = m.to, rk.key_id, []
                r["body"] = rk.seal(plaintext, layout.body_info(mid, m.type, sender, m.to, rk.key_id))
                binding = layout.single_binding(m.to, rk.key_id)
            else:
                recipients = list(m.to)
                data_key = AESGCM.generate_key(bit_length=256)
                nonce = secrets.token_bytes(12)
                aad = layout.DATA_AAD + layout.lp(mid) + layout.lp(m.type) + layout.lp(sender)
                r["body"] = nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)
                wraps = []
                for recipient in recipients:
                    rk = self._directory.encryption_key(recipient)
                    wraps.append(
                        {
                            "recipient": recipient,
                            "recipient_key_id": rk.key_id,
                            "wrapped_key": rk.seal(data_key, layout.wrap_info(mid, m.type, sender, recipient, rk.key_id)),
                        }
                    )
                r["recipient"], r["recipient_key_id"], r["wraps"] = FANOUT, "", wraps
                binding = layout.fanout_binding(len(wraps), merkle.build([layout.wrap_leaf(w) for w in wraps])[0])
            records.append(r)
            leaves.append(layout.origin_leaf(r, mid, cid, r["created_at"], r["expires_at"], binding))
        for r, signature in zip(records, layout.tree_signatures(self._keyset, layout.ORIGIN_ROOT, leaves), strict=True):
            r["signature"] = signature
        return [encode(r) for r in records]
