"""Opening: the recipient's primitive. ``Opener.open`` decrypts a :class:`VerifiedEnvelope` addressed to us.

``Opener.verify`` checks the bytes from an inbox (``Verifier.verify_delivered``, with this participant's
key for a leg's sealed origin); ``Opener.open`` takes only what that returned — raw bytes or an envelope
verified for the hub's ingress are a ``TypeError`` — and gives the body back only after the remaining
checks passed.  ``Opener.receive`` is the two in one call, what an inbox consumer does with a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.core.errors import CodecError, EnvelopeRejection, Reason
from infra.crypto import layout
from infra.crypto.keys import KeyDirectory, Keyset
from infra.crypto.legs import LegOpener
from infra.crypto.replay_guard import ReplayGuard
from infra.crypto.verify import VerifiedEnvelope, Verifier
from infra.crypto.wire import DEFAULT_MAX_BYTES, DEFAULT_SKEW_S, EnvelopeMeta, body_schema
from infra.domain import senders
from infra.domain.participants import Participants
from schemas import codec

__all__ = ["Opened", "Opener"]


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified, decrypted message. ``repr`` never shows the body."""

    meta: EnvelopeMeta
    body: dict = field(repr=False)


class Opener:
    """Opens envelopes addressed to one participant: verify everything, then decrypt.

    Order: size and decoding (OVERSIZE, MALFORMED, UNKNOWN_SCHEMA; more than
    one wrap or an audit path over 40 siblings is refused before decoding), hub
    countersignature, origin signature and key status (BAD_SIGNATURE,
    UNKNOWN_KEY, REVOKED_KEY), freshness (EXPIRED) — these are ``verify`` —, then
    addressee (WRONG_RECIPIENT), who may send this type to us (SENDER_NOT_ALLOWED,
    UNKNOWN_PARTICIPANT: ``infra.domain.senders``, judged on the verified origin
    sender), decryption (UNDECRYPTABLE), body decoding (MALFORMED,
    UNKNOWN_SCHEMA), and last the replay guard (REPLAYED), so a message that
    fails any check does not burn its id — these are ``open``.

    Envelopes must be countersigned by the hub (which binds the translated
    subject) unless the hub itself is the origin — and the hub originates only
    its own answers (token issuance, lookup results, rejection notices);
    ``require_countersignature=False`` accepts direct envelopes and checks
    their subject against the commitment.  ``participants`` gives the kinds the
    sender table is written in.
    """

    def __init__(
        self,
        keyset: Keyset,
        directory: KeyDirectory,
        replay_guard: ReplayGuard,
        *,
        participants: Participants,
        hub_id: str = "hub",
        require_countersignature: bool = True,
        clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_skew_s: int = DEFAULT_SKEW_S,
        root_cache_size: int = 4096,
    ) -> None:
        self._keyset = keyset
        self._guard = replay_guard
        self._participants = participants
        self._hub_id = hub_id
        self._require_cs = require_countersignature
        self._max_bytes = max_bytes
        self._legs = LegOpener(keyset, hub_id=hub_id)
        self._verifier = Verifier(
            directory,
            hub_id=hub_id,
            clock=clock,
            max_bytes=max_bytes,
            max_skew_s=max_skew_s,
            root_cache_size=root_cache_size,
            max_wraps=1,  # addressed to one participant: a single body, or one leg of a fan-out
        )

    def verify(self, data: bytes) -> VerifiedEnvelope:
        """Every check that needs no body key (see the class docstring); the result is what ``open`` takes."""
        return self._verifier.verify_delivered(data, legs=self._legs, require_countersignature=self._require_cs)

    def receive(self, data: bytes) -> Opened:
        """``open(verify(data))``: the bytes of an inbox record, verified, then opened."""
        return self.open(self.verify(data))

    def open(self, envelope: VerifiedEnvelope) -> Opened:
        """The body of ``envelope``, after the addressee, sender, decryption and replay checks."""
        if type(envelope) is not VerifiedEnvelope:
            raise TypeError(f"Opener.open takes a VerifiedEnvelope from Opener.verify, not {type(envelope).__name__}")
        if not envelope.delivered:
            raise TypeError("Opener.open takes an envelope verified as delivered (Opener.verify), "
                            "not one verified as it enters the hub (Verifier.verify)")
        r, origin = envelope.record, envelope.origin
        # Re-judged here: the envelope may come from a verifier that accepts direct envelopes.
        if not envelope.countersigned and self._require_cs and r["sender"] != self._hub_id:
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "envelope is not countersigned by the hub")
        me = self._keyset.participant_id
        if r["recipient"] != me:
            raise EnvelopeRejection(Reason.WRONG_RECIPIENT, "envelope is addressed to another participant")
        schema = body_schema(r["type"])
        mid, type_, sender = origin["message_id"], r["type"], r["sender"]  # the body is bound to the origin's id
        refused = senders.refusal(type_, sender, me, self._participants, hub_id=self._hub_id)
        if refused is not None:
            raise EnvelopeRejection(*refused)
        if r["wraps"]:
            w = r["wraps"][0]
            data_key = self._keyset.decrypt(
                w["recipient_key_id"], w["wrapped_key"], layout.wrap_info(mid, type_, sender, me, w["recipient_key_id"])
            )
            body = r["body"]
            try:
                plaintext = AESGCM(data_key).decrypt(
                    body[:12], body[12:], layout.DATA_AAD + layout.lp(mid) + layout.lp(type_) + layout.lp(sender)
                )
            except (InvalidTag, ValueError):
                raise EnvelopeRejection(Reason.UNDECRYPTABLE, "fan-out body does not open under its data key") from None
        else:
            plaintext = self._keyset.decrypt(
                r["recipient_key_id"], r["body"], layout.body_info(mid, type_, sender, me, r["recipient_key_id"])
            )
        try:
            body = codec.decode(plaintext, schema, max_size=self._max_bytes)
        except CodecError as exc:
            raise EnvelopeRejection(exc.reason, f"body: {exc.message}") from None
        if not self._guard.check_and_remember(r["message_id"]):  # the id we know it by: a leg's own
            raise EnvelopeRejection(Reason.REPLAYED, "message id was seen before")
        return Opened(envelope.meta, body)
