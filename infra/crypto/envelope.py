"""The envelope: the only way Renkei code sends or reads a message.

This module only gathers the public names of the primitives, one concern per module (as Tink splits them):

* :mod:`infra.crypto.wire` — the format's limits, the fast codec, ``EnvelopeMeta`` and ``peek``;
* :mod:`infra.crypto.layout` — the signed layout and domain separation (every byte a signature binds);
* :mod:`infra.crypto.seal` — ``Sealer`` and ``Message``: encrypt to the recipient(s), sign;
* :mod:`infra.crypto.verify` — ``Verifier`` and ``VerifiedEnvelope``, which only a verifier creates;
* :mod:`infra.crypto.open` — ``Opener`` and ``Opened``: open only a ``VerifiedEnvelope`` addressed to us;
* :mod:`infra.crypto.forward` — ``HubForwarder``: countersign only a ``VerifiedEnvelope``;
* :mod:`infra.crypto.legs` — ``LegIds`` and both sides of a leg's sealed origin;
* :mod:`infra.crypto.replay_guard` — ``ReplayGuard`` and ``MemoryReplayGuard``.

Senders ``Sealer.seal`` a body dict; recipients ``Opener.verify`` the bytes from their inbox and
``Opener.open`` the ``VerifiedEnvelope`` that returns (``Opener.receive`` does both), getting the body
back only after every check passed. The hub, which can never decrypt a body, ``Verifier.verify``s what
arrives on ingress and ``HubForwarder`` re-addresses that ``VerifiedEnvelope`` with the translated
subject token and its countersignature. Bytes or an unverified envelope given to ``open`` or
``forward`` are a ``TypeError``. Nothing here lets a caller pick a key, a nonce or a check to skip.

Signed data (see docs/security.md for the full layout):

* origin leaf = ``H(0x00 | ORIGIN | message_id | correlation_id | type | sender |
  recipient binding | subject_commitment | data_item | legal_basis | created_at |
  expires_at | sender_key_id | SHA-256(body))``; recipient binding is the
  recipient and its key id, or for a fan-out the Merkle root of the wraps.
  ``subject_commitment = SHA-256(SUBJECT | message_id | subject)``: the hub
  checks it on ingress, then replaces the subject with the recipient's token;
  the origin signature stays valid and the sender's token never reaches the
  recipient.
* An envelope that names a procedure or an outcome (envelope schema v2) signs
  ``H(0x00 | ORIGIN v2 | the same fields | procedure | outcome)`` instead; one
  that names neither is written as schema v1 with the v1 leaf, byte for byte as
  before, so old senders and old recipients keep working.
* hub leaf = ``H(0x00 | HUB | origin leaf | subject | recipient |
  recipient_key_id | wrap leaf | forwarded_at | hub key id)``; for a leg with
  ids of its own (below), ``H(0x00 | HUB v2 | the same | leg message id |
  leg correlation id | SHA-256(leg key) | SHA-256(sealed origin))``.
* Each leaf sits in a Merkle tree (``infra.crypto.merkle``) whose root is signed
  with Ed25519 over ``domain | leaf count | root``; one message is a tree of one.
  Verifiers cache verified roots, so a batch costs one signature check.

Unlinkable legs (a leg forwarded under ids of its own, the origin's sealed in it): :mod:`infra.crypto.legs`.
"""

from __future__ import annotations

from infra.crypto.forward import HubForwarder
from infra.crypto.legs import LEG_KEY_LIFETIME_S, LegIds
from infra.crypto.open import Opened, Opener
from infra.crypto.replay_guard import MemoryReplayGuard, ReplayGuard
from infra.crypto.seal import Message, Sealer
from infra.crypto.verify import VerifiedEnvelope, Verifier
from infra.crypto.wire import DEFAULT_MAX_BYTES, DEFAULT_SKEW_S, DEFAULT_TTL_S, FANOUT, MAX_TTL_S, EnvelopeMeta, peek

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SKEW_S",
    "DEFAULT_TTL_S",
    "FANOUT",
    "LEG_KEY_LIFETIME_S",
    "MAX_TTL_S",
    "EnvelopeMeta",
    "HubForwarder",
    "LegIds",
    "MemoryReplayGuard",
    "Message",
    "Opened",
    "Opener",
    "ReplayGuard",
    "Sealer",
    "VerifiedEnvelope",
    "Verifier",
    "peek",
]
