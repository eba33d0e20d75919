"""Verification: the checks every envelope passes before anything is forwarded or opened.

``Verifier.verify`` checks an envelope as its origin sent it (hub ingress); ``Verifier.verify_delivered``
checks one as it arrives in an inbox (the hub's countersignature, or a message the hub originated).
Both return a :class:`VerifiedEnvelope`, the only thing :class:`infra.crypto.forward.HubForwarder`
forwards and :class:`infra.crypto.open.Opener` opens: its constructor needs a token private to this
module, so an envelope that never went through these checks cannot be forwarded or opened by mistake
(a ``TypeError``, not a convention).  Nothing here decrypts a body.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import layout, merkle
from infra.crypto.keys import KeyDirectory, SigningPublicKey
from infra.crypto.layout import subject_commitment
from infra.crypto.legs import LegOpener
from infra.crypto.replay_guard import ReplayGuard
from infra.crypto.wire import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_WRAPS,
    DEFAULT_SKEW_S,
    FANOUT,
    MAX_TTL_S,
    EnvelopeMeta,
    body_schema,
    decode,
    is_uuid,
    meta_of,
)

__all__ = ["VerifiedEnvelope", "Verifier"]

_MINT = object()  # only this module holds it: only a Verifier creates a VerifiedEnvelope


class VerifiedEnvelope:
    """An envelope that passed every check of a :class:`Verifier`, and what those checks established.

    ``meta`` holds its routing fields (the verified sender and sender key id among them),
    ``verified_at`` the time freshness was judged at (epoch ms), ``delivered`` whether it was checked as
    it arrives in an inbox (``verify_delivered``: what ``Opener.open`` takes) or as its origin sent it
    (``verify``: what ``HubForwarder.forward`` takes).  ``record`` is the decoded envelope and
    ``origin`` the record its origin signed (for a leg forwarded under ids of its own, the leg with the
    origin's ids restored), both read-only.  It cannot be built outside this module, subclassed,
    altered through its public names, copied or pickled.
    """

    # Private slots behind read-only properties: plain stores in __init__ (an object.__setattr__ per field
    # cost ~1 µs per message on the hub's hot path), and no public name can be assigned or deleted.
    __slots__ = ("_meta", "_delivered", "_verified_at", "_record", "_origin", "_origin_leaf", "_wrap_leaves",
                 "_wrap_paths", "_wrap_index", "_origin_plaintext")

    def __init__(self, mint: object, record: dict, origin: dict, origin_leaf: bytes, wrap_leaves: list[bytes], *,
                 meta: EnvelopeMeta, delivered: bool, verified_at: int) -> None:
        if mint is not _MINT:
            raise TypeError("a VerifiedEnvelope is created only by Verifier.verify or Verifier.verify_delivered")
        self._meta = meta
        self._delivered = delivered
        self._verified_at = verified_at
        self._record = MappingProxyType(record)
        self._origin = self._record if origin is record else MappingProxyType(origin)
        self._origin_leaf = origin_leaf
        self._wrap_leaves = tuple(wrap_leaves)
        self._wrap_paths: list[list[bytes]] | None = None
        self._wrap_index: dict[str, int] | None = None
        self._origin_plaintext: bytes | None = None

    @property
    def meta(self) -> EnvelopeMeta:
        """The routing fields, the verified sender and sender key id among them."""
        return self._meta

    @property
    def delivered(self) -> bool:
        """True if checked as it arrives in an inbox (``verify_delivered``), False if as it enters the hub."""
        return self._delivered

    @property
    def verified_at(self) -> int:
        """When freshness was judged (epoch ms, the verifier's clock)."""
        return self._verified_at

    @property
    def record(self) -> MappingProxyType[str, Any]:
        """The decoded envelope, read-only."""
        return self._record

    @property
    def origin(self) -> MappingProxyType[str, Any]:
        """The record its origin signed: ``record`` itself, or for a leg the leg with the origin's ids restored."""
        return self._origin

    @property
    def origin_leaf(self) -> bytes:
        """The origin's signed leaf (what the hub's countersignature binds)."""
        return self._origin_leaf

    @property
    def wrap_leaves(self) -> tuple[bytes, ...]:
        """The leaves of a fan-out's wraps (empty for a single recipient)."""
        return self._wrap_leaves

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("VerifiedEnvelope cannot be subclassed")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a VerifiedEnvelope is not copied or pickled: verify the bytes where they are used")

    def __repr__(self) -> str:
        return f"VerifiedEnvelope({self.meta!r}, delivered={self.delivered}, verified_at={self.verified_at})"

    @property
    def countersigned(self) -> bool:
        """Whether the hub's countersignature was checked (else the hub is the origin, or it is an origin envelope)."""
        return self._record["countersignature"] is not None

    def wrap_index(self, recipient: str | None) -> int | None:
        """Where ``recipient``'s wrap sits (one dict, not a scan per leg: a fan-out to 1,000 banks)."""
        if self._wrap_index is None:
            self._wrap_index = {w["recipient"]: i for i, w in enumerate(self._record["wraps"])}
        return self._wrap_index.get(recipient) if recipient is not None else None

    def wrap_path(self, index: int) -> list[bytes]:
        """The Merkle audit path of wrap ``index`` (the tree is built once per fan-out)."""
        if self._wrap_paths is None:
            self._wrap_paths = merkle.build(list(self._wrap_leaves))[1]
        return self._wrap_paths[index]

    def origin_plaintext(self) -> bytes:
        """The origin's ids, procedure and outcome as sealed in each of its legs (built once per message)."""
        if self._origin_plaintext is None:
            r = self._origin
            self._origin_plaintext = layout.origin_plaintext(r["message_id"], r["correlation_id"], r["procedure"],
                                                             r["outcome"])
        return self._origin_plaintext


class Verifier:
    """Checks signatures, batch proofs, key status and freshness — never decrypts.

    The hub calls ``verify`` on ingress; ``Opener`` calls ``verify_delivered``.
    Verified batch roots are cached (LRU), so the Ed25519 check is paid once
    per batch; key status is still looked up for every message, so revocation
    takes effect at once.
    """

    def __init__(
        self,
        directory: KeyDirectory,
        *,
        hub_id: str = "hub",
        clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_skew_s: int = DEFAULT_SKEW_S,
        root_cache_size: int = 4096,
        max_wraps: int = DEFAULT_MAX_WRAPS,
    ) -> None:
        self._directory = directory
        self._hub_id = hub_id
        self._clock = clock
        self.max_bytes = max_bytes
        self.max_wraps = max_wraps  # the hub passes its participant count: no fan-out has more recipients
        self._skew_ms = max_skew_s * 1000
        self._roots: OrderedDict[tuple, bytes] = OrderedDict()
        self._roots_max = root_cache_size

    def verify(self, data: bytes, *, replay_guard: ReplayGuard | None = None) -> VerifiedEnvelope:
        """Verify an envelope as sent by its origin (hub ingress).

        Checks the origin signature or batch proof, the sender's and the
        recipient keys' status, freshness and the subject commitment. With
        ``replay_guard`` the message id is also checked and remembered.
        """
        r = decode(data, self.max_bytes, self.max_wraps)
        if r["countersignature"] is not None or r["leg"] is not None:
            raise EnvelopeRejection(Reason.MALFORMED,
                                    "envelope is already countersigned; only origin envelopes enter the hub")
        if r["wrap_proof"] is not None:
            raise EnvelopeRejection(Reason.MALFORMED, "a fan-out envelope entering the hub must carry every wrap")
        origin_leaf, wrap_leaves = self._check_origin(r)
        if r["subject_commitment"] != subject_commitment(r["message_id"], r["subject"]):
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment")
        created = r["created_at"]
        if r["wraps"]:
            for w in r["wraps"]:
                self._check_sealed_to(w["recipient_key_id"], w["recipient"], created)
        else:
            self._check_sealed_to(r["recipient_key_id"], r["recipient"], created)
        now = self._check_fresh(r)
        body_schema(r["type"])
        if replay_guard is not None and not replay_guard.check_and_remember(r["message_id"]):
            raise EnvelopeRejection(Reason.REPLAYED, "message id was seen before")
        return VerifiedEnvelope(_MINT, r, r, origin_leaf, wrap_leaves, meta=meta_of(r), delivered=False,
                                verified_at=now)

    def verify_delivered(self, data: bytes, *, legs: LegOpener | None = None,
                         require_countersignature: bool = True) -> VerifiedEnvelope:
        """Verify an envelope as it arrives in an inbox: countersigned by the hub, or originated by it.

        Order: size and decoding, a leg's sealed origin (``legs``: the recipient's key opens it), the
        origin signature and key status, the hub's countersignature, freshness.  Without a
        countersignature the envelope must come from the hub itself unless ``require_countersignature``
        is False, and its subject must match the signed commitment.  The addressee, who may send the
        type, and the replay guard are ``Opener.open``'s.
        """
        r = decode(data, self.max_bytes, self.max_wraps)
        origin = r
        if r["leg"] is not None:
            if legs is None:
                raise EnvelopeRejection(Reason.UNDECRYPTABLE, "a forwarded leg is verified only by its recipient")
            origin = legs.origin_of(r)
        origin_leaf, wrap_leaves = self._check_origin(origin)
        if r["countersignature"] is not None:
            self._check_countersignature(r, origin_leaf, wrap_leaves)
        elif require_countersignature and r["sender"] != self._hub_id:
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "envelope is not countersigned by the hub")
        elif r["subject_commitment"] != subject_commitment(r["message_id"], r["subject"]):
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment")
        now = self._check_fresh(r)
        meta = meta_of(r)
        if origin is not r:  # the signed procedure and outcome, as sealed in the leg
            meta = _with_origin_terms(meta, origin)
        return VerifiedEnvelope(_MINT, r, origin, origin_leaf, wrap_leaves, meta=meta, delivered=True,
                                verified_at=now)

    # -- shared checks
    def _check_sealed_to(self, key_id: str, participant: str, created: int) -> None:
        key = self._directory.recipient_key(key_id, sealed_at=created)
        if key.participant_id != participant:
            raise EnvelopeRejection(Reason.UNDECRYPTABLE, "body is sealed to a key that is not the recipient's")

    def _check_origin(self, r: dict) -> tuple[bytes, list[bytes]]:
        """Shape checks, then the origin key and signature. Returns the origin leaf and the wraps' leaves.

        Everything that costs no hashing comes first (shape, key status, key ownership): a forged
        envelope carrying only someone's public key id is refused before any digest is computed,
        and the digests that follow are bounded by the caps checked while decoding.
        """
        mid, cid = r["message_id"], r["correlation_id"]
        if not (is_uuid(mid) and is_uuid(cid)):
            raise EnvelopeRejection(Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs")
        wraps, proof = r["wraps"], r["wrap_proof"]
        if len(r["subject_commitment"]) != 32:
            raise EnvelopeRejection(Reason.MALFORMED, "subject_commitment must be 32 bytes")
        if wraps:
            if proof is None:
                if r["recipient"] != FANOUT or r["recipient_key_id"]:
                    raise EnvelopeRejection(Reason.MALFORMED, "fan-out envelope must be addressed to '*' with no key id")
                if len({w["recipient"] for w in wraps}) != len(wraps):
                    raise EnvelopeRejection(Reason.MALFORMED, "fan-out envelope lists a recipient twice")
            else:
                if len(wraps) != 1:
                    raise EnvelopeRejection(Reason.MALFORMED, "forwarded fan-out envelope must carry exactly one wrap")
                w = wraps[0]
                if r["recipient"] != w["recipient"] or r["recipient_key_id"] != w["recipient_key_id"]:
                    raise EnvelopeRejection(Reason.BAD_SIGNATURE, "recipient does not match its wrap")
        elif proof is not None or r["recipient"] == FANOUT:
            raise EnvelopeRejection(Reason.MALFORMED, "single-recipient envelope with fan-out fields")
        created = r["created_at"]
        key = self._directory.signing_key(r["sender_key_id"], signed_at=created)
        if key.participant_id != r["sender"]:
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "signing key does not belong to the sender")
        wrap_leaves: list[bytes] = []
        if wraps:
            wrap_leaves = [layout.wrap_leaf(w) for w in wraps]
            if proof is None:
                wraps_root, count = merkle.build(wrap_leaves)[0], len(wraps)
            else:
                count = proof["leaf_count"]
                wraps_root = merkle.root_from_path(wrap_leaves[0], proof["leaf_index"], count, proof["siblings"])
                if wraps_root is None:
                    raise EnvelopeRejection(Reason.BAD_SIGNATURE, "wrap proof is ill-formed")
            binding = layout.fanout_binding(count, wraps_root)
        else:
            binding = layout.single_binding(r["recipient"], r["recipient_key_id"])
        leaf = layout.origin_leaf(r, mid, cid, created, r["expires_at"], binding)
        if not self._check_tree(key, layout.ORIGIN_ROOT, leaf, r["signature"]):
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "origin signature or batch proof does not verify")
        return leaf, wrap_leaves

    def _check_countersignature(self, r: dict, origin_leaf: bytes, wrap_leaves: list[bytes]) -> None:
        cs = r["countersignature"]
        forwarded_at = cs["forwarded_at"]
        key = self._directory.signing_key(cs["key_id"], signed_at=forwarded_at)
        if key.participant_id != self._hub_id:
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "countersignature is not by the hub")
        wrap_leaf = wrap_leaves[0] if wrap_leaves else b""
        leaf = layout.hub_leaf(origin_leaf, r, wrap_leaf, forwarded_at, cs["key_id"])
        if not self._check_tree(key, layout.HUB_ROOT, leaf, cs["signature"]):
            raise EnvelopeRejection(Reason.BAD_SIGNATURE, "hub countersignature or batch proof does not verify")
        if forwarded_at > int(self._clock() * 1000) + self._skew_ms:
            raise EnvelopeRejection(Reason.EXPIRED, "forwarded in the future (clock skew beyond the allowed maximum)")

    def _check_tree(self, key: SigningPublicKey, domain: bytes, leaf: bytes, ts: dict) -> bool:
        proof = ts["proof"]
        count = proof["leaf_count"]
        root = merkle.root_from_path(leaf, proof["leaf_index"], count, proof["siblings"])
        if root is None:
            return False
        signature = ts["root_signature"]
        # Per-message signatures are cached too: every leg of a fan-out (a lookup to 1,000 banks, opened
        # by one bank process) carries the same origin root. The key's status is checked before this.
        cache_key = (domain, key.key_id, count, root)
        cached = self._roots.get(cache_key)
        if cached is not None:
            self._roots.move_to_end(cache_key)
            return cached == signature
        if not key.verify(signature, layout.root_tbs(domain, count, root)):
            return False
        self._roots[cache_key] = signature
        if len(self._roots) > self._roots_max:
            self._roots.popitem(last=False)
        return True

    def _check_fresh(self, r: dict) -> int:
        """Lifetime and clock checks; returns the time they were judged at (epoch ms)."""
        now = int(self._clock() * 1000)
        created, expires = r["created_at"], r["expires_at"]
        if expires <= created or expires - created > MAX_TTL_S * 1000:
            raise EnvelopeRejection(Reason.EXPIRED, f"lifetime must be positive and at most {MAX_TTL_S} s")
        if now >= expires:
            raise EnvelopeRejection(Reason.EXPIRED, "message has expired")
        if created > now + self._skew_ms:
            raise EnvelopeRejection(Reason.EXPIRED, "created in the future (clock skew beyond the allowed maximum)")
        return now


def _with_origin_terms(meta: EnvelopeMeta, origin: dict) -> EnvelopeMeta:
    """A leg's metadata with the procedure and outcome its origin signed (sealed in the leg, not in the clear)."""
    return replace(meta, procedure=origin["procedure"], outcome=origin["outcome"])
