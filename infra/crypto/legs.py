"""Unlinkable legs: a forwarded copy under ids of its own, the origin's ids sealed to its recipient.

The hub may forward a leg under a message id and correlation id of its own (``LegIds``, chosen by
``streams.gateway`` from hub-only keys), so no id on the recipient's inbox equals one on the ingress
topic.  The origin's ids, procedure and outcome — which the origin signature covers and the recipient
needs to verify it and to open the body — travel in ``leg``: sealed with AES-256-GCM under a leg key
the hub HPKE-seals to the recipient's key once per key and hour (one public-key operation per
recipient, not per leg).  ``LegSealer`` is the hub's side (:mod:`infra.crypto.forward`), ``LegOpener``
the recipient's (:mod:`infra.crypto.verify` calls it before any signature check).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import layout
from infra.crypto.keys import KeyDirectory, Keyset
from infra.crypto.wire import is_uuid

__all__ = ["LEG_KEY_LIFETIME_S", "LegIds", "LegOpener", "LegSealer"]

LEG_KEY_LIFETIME_S = 3600  # how long the hub seals legs to one recipient key under the same leg key
_LEG_KEYS_CACHED = 256  # leg keys an opener keeps open: one per hub worker, recipient key and hour


@dataclass(frozen=True, slots=True)
class LegIds:
    """The ids a forwarded leg carries instead of the origin's (chosen by the hub: ``infra.crypto.pseudonyms``)."""

    message_id: str
    correlation_id: str


class LegSealer:
    """The hub's side: gives a forwarded record the leg's own ids and seals the origin's to its recipient."""

    def __init__(self, hub_keyset: Keyset, directory: KeyDirectory) -> None:
        self._keyset = hub_keyset
        self._directory = directory
        # (recipient, key id) -> (sealed at, leg key, its HPKE ciphertext to that key)
        self._leg_keys: dict[tuple[str, str], tuple[float, AESGCM, bytes]] = {}

    def seal(self, r: dict, origin_plaintext: bytes, leg: LegIds, now: float) -> None:
        """Give ``r`` the leg's own ids and seal the origin's ids, procedure and outcome to its recipient."""
        if not (is_uuid(leg.message_id) and is_uuid(leg.correlation_id)):
            raise ValueError("leg ids must be canonical lowercase UUIDs")
        r["message_id"], r["correlation_id"] = leg.message_id, leg.correlation_id
        r["procedure"] = r["outcome"] = None
        aead, sealed_key = self._leg_key(r["recipient"], r["recipient_key_id"], now)
        nonce = secrets.token_bytes(12)
        r["leg"] = {"leg_key": sealed_key,
                    "sealed_origin": nonce + aead.encrypt(nonce, origin_plaintext, layout.leg_aad(r))}

    def _leg_key(self, recipient: str, key_id: str, now: float) -> tuple[AESGCM, bytes]:
        """The leg key for one recipient key: HPKE-sealed once, reused for ``LEG_KEY_LIFETIME_S``.

        One public-key operation per recipient key and hour instead of one per leg (a lookup to
        1,000 banks would otherwise pay 1,000 HPKE seals).  The sealed key is the same on every leg
        to that key, which joins nothing a reader of that one inbox could not join already.
        """
        cached = self._leg_keys.get((recipient, key_id))
        if cached is not None and now - cached[0] < LEG_KEY_LIFETIME_S:
            return cached[1], cached[2]
        raw = AESGCM.generate_key(bit_length=256)
        sealed_at = int(now * 1000)
        public = self._directory.recipient_key(key_id, sealed_at=sealed_at)
        if public.participant_id != recipient:
            raise ValueError("the recipient key does not belong to the recipient")
        sealed = public.seal(raw, layout.leg_key_info(self._keyset.participant_id, recipient, key_id))
        aead = AESGCM(raw)
        self._leg_keys[(recipient, key_id)] = (now, aead, sealed)
        return aead, sealed


class LegOpener:
    """The recipient's side: the envelope as its origin signed it, from a leg addressed to ``keyset``'s owner."""

    def __init__(self, keyset: Keyset, *, hub_id: str = "hub") -> None:
        self._keyset = keyset
        self._hub_id = hub_id
        self._leg_keys: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()

    def origin_of(self, r: dict) -> dict:
        """The origin's record from a forwarded leg ``r``.

        The leg key is HPKE-sealed to our key and opened once (cached); anyone could seal one to us,
        so nothing here is trusted until the origin signature AND the hub's countersignature (which
        binds the leg's ids and sealed bytes) verify over what it yields.
        """
        if r["countersignature"] is None:
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "a forwarded leg must carry the hub's countersignature")
        if not (is_uuid(r["message_id"]) and is_uuid(r["correlation_id"])):
            raise EnvelopeRejection(Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs")
        if r["procedure"] is not None or r["outcome"] is not None:  # only sealed in the leg, never beside it
            raise EnvelopeRejection(Reason.MALFORMED,
                                    "a forwarded leg carries its procedure and outcome sealed, not in the clear")
        me = self._keyset.participant_id
        if r["recipient"] != me:  # the leg is sealed to its recipient: say so rather than UNDECRYPTABLE
            raise EnvelopeRejection(Reason.WRONG_RECIPIENT, "envelope is addressed to another participant")
        leg = r["leg"]
        cache_key = (r["recipient_key_id"], leg["leg_key"])
        aead = self._leg_keys.get(cache_key)
        if aead is None:
            raw = self._keyset.decrypt(r["recipient_key_id"], leg["leg_key"],
                                       layout.leg_key_info(self._hub_id, me, r["recipient_key_id"]))
            if len(raw) != 32:
                raise EnvelopeRejection(Reason.UNDECRYPTABLE, "the leg key is not a 32-byte key")
            aead = AESGCM(raw)
            self._leg_keys[cache_key] = aead
            if len(self._leg_keys) > _LEG_KEYS_CACHED:
                self._leg_keys.popitem(last=False)
        else:
            self._leg_keys.move_to_end(cache_key)
        sealed = leg["sealed_origin"]
        try:
            mid, cid, procedure, outcome = layout.origin_from_plaintext(
                aead.decrypt(sealed[:12], sealed[12:], layout.leg_aad(r)))
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise EnvelopeRejection(Reason.UNDECRYPTABLE,
                                    "the leg's sealed origin does not open under its leg key") from None
        return {**r, "message_id": mid, "correlation_id": cid, "procedure": procedure, "outcome": outcome}
