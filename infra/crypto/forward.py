"""Forwarding: the hub's primitive. ``HubForwarder`` re-addresses a :class:`VerifiedEnvelope` and countersigns it.

The hub never holds a body key.  ``forward`` takes what ``Verifier.verify`` returned on ingress — raw
bytes, a ``peek``ed ``EnvelopeMeta`` or an envelope verified as delivered are a ``TypeError`` —, the
subject token translated into the recipient's token space, for a fan-out the one recipient this copy
is for, and optionally the leg's own ids (:class:`infra.crypto.legs.LegIds`): the origin's ids,
procedure and outcome are then sealed to the recipient in the leg.  Many legs share ONE
countersignature over the Merkle root of their hub leaves (``forward_batch``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from infra.crypto import layout
from infra.crypto.keys import KeyDirectory, Keyset
from infra.crypto.legs import LegIds, LegSealer
from infra.crypto.verify import VerifiedEnvelope
from infra.crypto.wire import encode

__all__ = ["HubForwarder"]

ForwardItem = (tuple[VerifiedEnvelope, str] | tuple[VerifiedEnvelope, str, str | None]
               | tuple[VerifiedEnvelope, str, str | None, LegIds | None])


class HubForwarder:
    """The hub's side: re-address verified envelopes with the translated subject and countersign them."""

    def __init__(self, hub_keyset: Keyset, directory: KeyDirectory, *, clock: Callable[[], float] = time.time) -> None:
        self._keyset = hub_keyset
        self._clock = clock
        self._legs = LegSealer(hub_keyset, directory)  # the directory gives the recipients' keys to seal legs to

    def forward(self, envelope: VerifiedEnvelope, new_subject: str, *, recipient: str | None = None,
                leg: LegIds | None = None) -> bytes:
        """One forwarded envelope, countersigned on its own."""
        return self.forward_batch([(envelope, new_subject, recipient, leg)])[0]

    def forward_batch(self, items: Sequence[ForwardItem]) -> list[bytes]:
        """Forward many envelopes under ONE countersignature over the Merkle root of their hub digests."""
        if not items:
            return []
        forwarded_at = int(self._clock() * 1000)
        key_id = self._keyset.signing_key_id
        records, leaves = [], []
        for item in items:
            verified, new_subject = item[0], item[1]
            recipient = item[2] if len(item) > 2 else None
            leg = item[3] if len(item) > 3 else None
            if type(verified) is not VerifiedEnvelope:
                raise TypeError("HubForwarder forwards a VerifiedEnvelope from Verifier.verify, "
                                f"not {type(verified).__name__}")
            if verified.delivered:
                raise TypeError("HubForwarder forwards an envelope verified as it enters the hub (Verifier.verify), "
                                "not one verified as delivered")
            src = verified.record
            r = src.copy()  # the underlying dict's copy: dict(proxy) walks the mapping protocol, ~2 µs slower
            r["subject"] = new_subject
            wrap_leaf = b""
            if src["wraps"]:
                index = verified.wrap_index(recipient)
                if index is None:
                    raise ValueError("forward() of a fan-out needs recipient= one of its wrap recipients")
                w = src["wraps"][index]
                r["recipient"], r["recipient_key_id"], r["wraps"] = w["recipient"], w["recipient_key_id"], [w]
                r["wrap_proof"] = {
                    "leaf_index": index,
                    "leaf_count": len(src["wraps"]),
                    "siblings": verified.wrap_path(index),
                }
                wrap_leaf = verified.wrap_leaves[index]
            elif recipient is not None and recipient != src["recipient"]:
                raise ValueError("recipient= differs from the envelope's recipient")
            if leg is not None:
                self._legs.seal(r, verified.origin_plaintext(), leg, self._clock())
            r["countersignature"] = {"key_id": key_id, "forwarded_at": forwarded_at, "signature": None}
            records.append(r)
            leaves.append(layout.hub_leaf(verified.origin_leaf, r, wrap_leaf, forwarded_at, key_id))
        for r, signature in zip(records, layout.tree_signatures(self._keyset, layout.HUB_ROOT, leaves), strict=True):
            r["countersignature"]["signature"] = signature
        return [encode(r) for r in records]
