"""The envelope: the only way Renkei code sends or reads a message.

Why this file is long: its split into seal / verify / open / forward modules and a ``VerifiedEnvelope`` only
the verifier can create is planned (issue 17) and waits for this module's mutation testing; the signed layout
is already :mod:`infra.crypto.layout`.

Senders ``Sealer.seal`` a body dict; recipients ``Opener.open`` bytes and get
the body back only after every check passed. The hub, which can never decrypt
a body, ``Verifier.verify``s what arrives on ingress and ``HubForwarder``
re-addresses it with the translated subject token and its countersignature.
Nothing here lets a caller pick a key, a nonce or a check to skip.

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

Unlinkable legs: the hub may forward a leg under a message id and correlation
id of its own (``LegIds``, chosen by ``streams.gateway`` from hub-only keys), so
no id on the recipient's inbox equals one on the ingress topic.  The origin's
ids, procedure and outcome — which the origin signature covers and the
recipient needs to verify it and to open the body — travel in ``leg``: sealed
with AES-256-GCM under a leg key the hub HPKE-seals to the recipient's key once
per key and hour (one public-key operation per recipient, not per leg).
"""

from __future__ import annotations

import io
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import fastavro
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.core.errors import CodecError, EnvelopeRejection, Reason
from infra.crypto import layout, merkle
from infra.crypto.keys import KeyDirectory, Keyset, SigningPublicKey
from infra.crypto.layout import subject_commitment
from infra.domain import senders
from infra.domain.participants import Participants
from schemas import codec
from schemas.bounds import ArrayCaps
from schemas.catalogue import SINGLE_OBJECT_MARKER, catalogue
from schemas.types import BODY_SCHEMA

__all__ = [
    "FANOUT",
    "LEG_KEY_LIFETIME_S",
    "EnvelopeMeta",
    "HubForwarder",
    "LegIds",
    "MemoryReplayGuard",
    "Message",
    "Opened",
    "Opener",
    "ReplayGuard",
    "Sealer",
    "Verifier",
    "peek",
]

FANOUT = "*"  # the recipient of a fan-out envelope as sent to the hub
DEFAULT_MAX_BYTES = 1_048_576
DEFAULT_TTL_S = 300
MAX_TTL_S = 86_400  # bounds how long a replay guard must remember a message id
DEFAULT_SKEW_S = 30
# Wraps one envelope may carry when the caller does not know the participants: one per bank at
# most, and bank codes (金融機関コード) have four digits.  The hub passes its participant count.
DEFAULT_MAX_WRAPS = 10_000
SCHEMA = "envelope"

LEG_KEY_LIFETIME_S = 3600  # how long the hub seals legs to one recipient key under the same leg key
_LEG_KEYS_CACHED = 256  # leg keys an opener keeps open: one per hub worker, recipient key and hour
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _reject(reason: Reason, message: str) -> EnvelopeRejection:
    return EnvelopeRejection(reason, message)


def _body_schema(type_: str) -> str:
    name = BODY_SCHEMA.get(type_)
    if name is None:
        raise _reject(Reason.UNKNOWN_SCHEMA, "message type is not in the catalogue (schemas.types)")
    return name


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class EnvelopeMeta:
    """The routing fields of an envelope (never the body). Safe to log: the subject is truncated in repr."""

    message_id: str
    correlation_id: str
    type: str
    sender: str
    recipient: str
    subject: str
    data_item: str
    legal_basis: str
    created_at: datetime
    expires_at: datetime
    sender_key_id: str
    recipient_key_id: str
    recipients: tuple[str, ...] = ()  # fan-out: every recipient with a wrap
    hub_key_id: str | None = None  # set once countersigned by the hub
    procedure: str | None = None  # the public-benefit procedure the origin signed (infra.domain.procedures)
    outcome: str | None = None  # what the origin's answer says (provision.response), signed by it
    _handle: Any = field(default=None, repr=False, compare=False)  # verified envelope, for forwarding

    @property
    def fanout(self) -> bool:
        return bool(self.recipients)

    def __repr__(self) -> str:
        # No token material at all: even a prefix would let log readers follow one person.
        subject = "<token>" if self.subject else ""
        extra = f", recipients={len(self.recipients)}" if self.recipients else ""
        hub = f", hub_key_id={self.hub_key_id!r}" if self.hub_key_id else ""
        procedure = f", procedure={self.procedure!r}" if self.procedure else ""
        return (
            f"EnvelopeMeta(message_id={self.message_id!r}, correlation_id={self.correlation_id!r}, "
            f"type={self.type!r}, sender={self.sender!r}, recipient={self.recipient!r}, subject={subject!r}, "
            f"data_item={self.data_item!r}, legal_basis={self.legal_basis!r}{procedure}, "
            f"created_at={self.created_at.isoformat()}, expires_at={self.expires_at.isoformat()}{extra}{hub})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified, decrypted message. ``repr`` never shows the body."""

    meta: EnvelopeMeta
    body: dict = field(repr=False)


class _Handle:
    """What ``Verifier.verify`` learned, kept so forwarding need not redo it."""

    __slots__ = ("record", "origin_leaf", "wrap_leaves", "_wrap_paths", "_wrap_index", "_origin_plaintext")

    def __init__(self, record: dict, origin_leaf: bytes, wrap_leaves: list[bytes]) -> None:
        self.record = record
        self.origin_leaf = origin_leaf
        self.wrap_leaves = wrap_leaves
        self._wrap_paths: list[list[bytes]] | None = None
        self._wrap_index: dict[str, int] | None = None
        self._origin_plaintext: bytes | None = None

    def wrap_path(self, index: int) -> list[bytes]:
        if self._wrap_paths is None:
            self._wrap_paths = merkle.build(self.wrap_leaves)[1]
        return self._wrap_paths[index]

    def wrap_index(self, recipient: str | None) -> int | None:
        """Where ``recipient``'s wrap sits (one dict, not a scan per leg: a fan-out to 1,000 banks)."""
        if self._wrap_index is None:
            self._wrap_index = {w["recipient"]: i for i, w in enumerate(self.record["wraps"])}
        return self._wrap_index.get(recipient) if recipient is not None else None

    def origin_plaintext(self) -> bytes:
        """The origin's ids, procedure and outcome as sealed in each of its legs (built once per message)."""
        if self._origin_plaintext is None:
            r = self.record
            self._origin_plaintext = layout.origin_plaintext(r["message_id"], r["correlation_id"], r["procedure"],
                                                       r["outcome"])
        return self._origin_plaintext


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


_V2_FIELDS = ("procedure", "outcome", "leg")  # what envelope v2 adds; None in every v1 record


class _EnvelopeCodec:
    """The hot path for envelope v1 and v2: same bytes as ``codec``, no logical-type objects.

    Timestamps stay epoch milliseconds and UUIDs strings (the signed digests
    need exactly those), and the record is not re-validated: only this module
    builds envelope records.  A record that uses none of v2's fields is written
    as v1 (what every sender wrote before v2: byte-identical, readable by old
    recipients); decoded records always carry v2's fields (None when absent).
    Other envelope versions go through ``codec``.
    """

    def __init__(self) -> None:
        v1, v2 = catalogue().by_name[SCHEMA][1], catalogue().by_name[SCHEMA][2]
        self.header_v1 = SINGLE_OBJECT_MARKER + v1.fingerprint
        self.header = SINGLE_OBJECT_MARKER + v2.fingerprint
        self.schema_v1 = fastavro.parse_schema(_strip_logical_types(v1.source), named_schemas={})
        self.schema = fastavro.parse_schema(_strip_logical_types(v2.source), named_schemas={})
        self._caps: dict[tuple[bytes, int], ArrayCaps] = {}

    def check_caps(self, data: bytes, fingerprint: bytes, max_wraps: int) -> None:
        """Refuse too many wraps or Merkle siblings before fastavro builds them (decoding cost grows with them)."""
        caps = self._caps.get((fingerprint, max_wraps))
        if caps is None:
            version = catalogue().by_fingerprint.get(fingerprint)
            if version is None or version.name != SCHEMA:
                return  # not an envelope: the decoder refuses it (UNKNOWN_SCHEMA) without decoding
            caps = ArrayCaps(version.source, {"wraps": max_wraps, "siblings": merkle.MAX_PATH})
            if len(self._caps) < 64:
                self._caps[(fingerprint, max_wraps)] = caps
        try:
            found = caps.check(data, len(self.header))
        except CodecError:
            raise _reject(Reason.MALFORMED, "envelope: body is not a valid envelope record") from None
        if found is None:
            return
        if found.field == "wraps":
            raise _reject(Reason.OVERSIZE, f"envelope carries more than {found.cap} wraps (one per recipient)")
        raise _reject(Reason.MALFORMED, f"envelope: a Merkle audit path is longer than {found.cap} siblings")

    def encode(self, record: dict) -> bytes:
        # Name the union branch (fastavro tuple notation): otherwise it validates every branch, ~15 µs.
        cs, wp, leg = record["countersignature"], record["wrap_proof"], record.get("leg")
        if cs is not None or wp is not None or leg is not None:
            record = dict(record)
            if cs is not None:
                record["countersignature"] = ("renkei.HubCountersignature", cs)
            if wp is not None:
                record["wrap_proof"] = ("renkei.MerkleProof", wp)
            if leg is not None:
                record["leg"] = ("renkei.ForwardedLeg", leg)
        v2 = leg is not None or record.get("procedure") is not None or record.get("outcome") is not None
        buffer = io.BytesIO()
        buffer.write(self.header if v2 else self.header_v1)
        fastavro.schemaless_writer(buffer, self.schema if v2 else self.schema_v1, record)
        return buffer.getvalue()

    def decode(self, data: bytes, max_bytes: int, max_wraps: int = DEFAULT_MAX_WRAPS) -> dict:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _reject(Reason.MALFORMED, "envelope must be bytes")
        data = bytes(data)
        if len(data) > max_bytes:
            raise _reject(Reason.OVERSIZE, f"envelope is {len(data)} bytes, maximum is {max_bytes}")
        if data[:2] == SINGLE_OBJECT_MARKER:
            self.check_caps(data, data[2:10], max_wraps)
        header = data[:10]
        if header == self.header:
            schema = self.schema
        elif header == self.header_v1:
            schema = self.schema_v1
        else:
            return self._decode_other_version(data, max_bytes)
        buffer = io.BytesIO(data)
        buffer.seek(10)
        try:
            record = fastavro.schemaless_reader(buffer, schema, None)
        except Exception:  # hostile bytes raise many types; some carry the data, so never chain
            raise _reject(Reason.MALFORMED, "envelope: body is not a valid envelope record") from None
        if buffer.tell() != len(data):
            raise _reject(Reason.MALFORMED, "envelope: trailing bytes after the record")
        if schema is self.schema_v1:
            record.update(dict.fromkeys(_V2_FIELDS))
        return record

    @staticmethod
    def _decode_other_version(data: bytes, max_bytes: int) -> dict:
        try:
            r = codec.decode(data, SCHEMA, max_size=max_bytes)
        except CodecError as exc:
            raise _reject(exc.reason, f"envelope: {exc.message}") from None
        r["message_id"], r["correlation_id"] = str(r["message_id"]), str(r["correlation_id"])
        r["created_at"], r["expires_at"] = layout.ms(r["created_at"]), layout.ms(r["expires_at"])
        if r["countersignature"] is not None:
            r["countersignature"]["forwarded_at"] = layout.ms(r["countersignature"]["forwarded_at"])
        return r


_ENVELOPES: _EnvelopeCodec | None = None


def _envelopes() -> _EnvelopeCodec:
    global _ENVELOPES
    if _ENVELOPES is None:
        _ENVELOPES = _EnvelopeCodec()
    return _ENVELOPES


def _decode(data: bytes, max_bytes: int, max_wraps: int = DEFAULT_MAX_WRAPS) -> dict:
    return _envelopes().decode(data, max_bytes, max_wraps)


def _encode(record: dict) -> bytes:
    return _envelopes().encode(record)


def _dt(ms: int) -> datetime:
    return layout.EPOCH + timedelta(milliseconds=ms)


def _meta(r: dict, handle: _Handle | None = None) -> EnvelopeMeta:
    countersignature = r["countersignature"]
    return EnvelopeMeta(
        message_id=r["message_id"],
        correlation_id=r["correlation_id"],
        type=r["type"],
        sender=r["sender"],
        recipient=r["recipient"],
        subject=r["subject"],
        data_item=r["data_item"],
        legal_basis=r["legal_basis"],
        created_at=_dt(r["created_at"]),
        expires_at=_dt(r["expires_at"]),
        sender_key_id=r["sender_key_id"],
        recipient_key_id=r["recipient_key_id"],
        recipients=tuple(w["recipient"] for w in r["wraps"]) if r["recipient"] == FANOUT else (),
        hub_key_id=countersignature["key_id"] if countersignature else None,
        procedure=r["procedure"],
        outcome=r["outcome"],
        _handle=handle,
    )


def peek(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> EnvelopeMeta:
    """Decode the routing fields WITHOUT verifying anything (ops inspection; needs no keys)."""
    return _meta(_decode(data, max_bytes))


# --------------------------------------------------------------------------- replay guard


class ReplayGuard(Protocol):
    def check_and_remember(self, message_id: str) -> bool:
        """True if ``message_id`` is new (and now remembered); False if seen before."""
        ...


class MemoryReplayGuard:
    """In-process replay guard: the last ``max_entries`` message ids (LRU).

    Size it for the message rate times MAX_TTL_S; an id evicted earlier than
    its message expires could be replayed. The hub uses a PostgreSQL guard.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries

    def check_and_remember(self, message_id: str) -> bool:
        if message_id in self._seen:
            self._seen.move_to_end(message_id)
            return False
        self._seen[message_id] = None
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


# --------------------------------------------------------------------------- sealing


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
            plaintext = codec.encode(_body_schema(m.type), m.body)
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
        return [_encode(r) for r in records]


# --------------------------------------------------------------------------- verification


class Verifier:
    """Checks signatures, batch proofs, key status and freshness — never decrypts.

    The hub calls ``verify`` on ingress; ``Opener`` builds on the same checks.
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

    # -- public
    def verify(self, data: bytes, *, replay_guard: ReplayGuard | None = None) -> EnvelopeMeta:
        """Verify an envelope as sent by its origin (hub ingress). Returns its metadata.

        Checks the origin signature or batch proof, the sender's and the
        recipient keys' status, freshness and the subject commitment. With
        ``replay_guard`` the message id is also checked and remembered.
        """
        r = _decode(data, self.max_bytes, self.max_wraps)
        if r["countersignature"] is not None or r["leg"] is not None:
            raise _reject(Reason.MALFORMED, "envelope is already countersigned; only origin envelopes enter the hub")
        if r["wrap_proof"] is not None:
            raise _reject(Reason.MALFORMED, "a fan-out envelope entering the hub must carry every wrap")
        handle = self._check_origin(r)
        if r["subject_commitment"] != subject_commitment(r["message_id"], r["subject"]):
            raise _reject(Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment")
        created = r["created_at"]
        if r["wraps"]:
            for w in r["wraps"]:
                self._check_sealed_to(w["recipient_key_id"], w["recipient"], created)
        else:
            self._check_sealed_to(r["recipient_key_id"], r["recipient"], created)
        self._check_fresh(r)
        _body_schema(r["type"])
        if replay_guard is not None and not replay_guard.check_and_remember(r["message_id"]):
            raise _reject(Reason.REPLAYED, "message id was seen before")
        return _meta(r, handle)

    # -- shared checks
    def _check_sealed_to(self, key_id: str, participant: str, created: int) -> None:
        key = self._directory.recipient_key(key_id, sealed_at=created)
        if key.participant_id != participant:
            raise _reject(Reason.UNDECRYPTABLE, "body is sealed to a key that is not the recipient's")

    def _check_origin(self, r: dict) -> _Handle:
        """Shape checks, then the origin key and signature. Returns the handle for forwarding.

        Everything that costs no hashing comes first (shape, key status, key ownership): a forged
        envelope carrying only someone's public key id is refused before any digest is computed,
        and the digests that follow are bounded by the caps checked while decoding.
        """
        mid, cid = r["message_id"], r["correlation_id"]
        if not (_UUID.fullmatch(mid) and _UUID.fullmatch(cid)):
            raise _reject(Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs")
        wraps, proof = r["wraps"], r["wrap_proof"]
        if len(r["subject_commitment"]) != 32:
            raise _reject(Reason.MALFORMED, "subject_commitment must be 32 bytes")
        if wraps:
            if proof is None:
                if r["recipient"] != FANOUT or r["recipient_key_id"]:
                    raise _reject(Reason.MALFORMED, "fan-out envelope must be addressed to '*' with no key id")
                if len({w["recipient"] for w in wraps}) != len(wraps):
                    raise _reject(Reason.MALFORMED, "fan-out envelope lists a recipient twice")
            else:
                if len(wraps) != 1:
                    raise _reject(Reason.MALFORMED, "forwarded fan-out envelope must carry exactly one wrap")
                w = wraps[0]
                if r["recipient"] != w["recipient"] or r["recipient_key_id"] != w["recipient_key_id"]:
                    raise _reject(Reason.BAD_SIGNATURE, "recipient does not match its wrap")
        elif proof is not None or r["recipient"] == FANOUT:
            raise _reject(Reason.MALFORMED, "single-recipient envelope with fan-out fields")
        created = r["created_at"]
        key = self._directory.signing_key(r["sender_key_id"], signed_at=created)
        if key.participant_id != r["sender"]:
            raise _reject(Reason.BAD_SIGNATURE, "signing key does not belong to the sender")
        wrap_leaves: list[bytes] = []
        if wraps:
            wrap_leaves = [layout.wrap_leaf(w) for w in wraps]
            if proof is None:
                wraps_root, count = merkle.build(wrap_leaves)[0], len(wraps)
            else:
                count = proof["leaf_count"]
                wraps_root = merkle.root_from_path(wrap_leaves[0], proof["leaf_index"], count, proof["siblings"])
                if wraps_root is None:
                    raise _reject(Reason.BAD_SIGNATURE, "wrap proof is ill-formed")
            binding = layout.fanout_binding(count, wraps_root)
        else:
            binding = layout.single_binding(r["recipient"], r["recipient_key_id"])
        leaf = layout.origin_leaf(r, mid, cid, created, r["expires_at"], binding)
        if not self._check_tree(key, layout.ORIGIN_ROOT, leaf, r["signature"]):
            raise _reject(Reason.BAD_SIGNATURE, "origin signature or batch proof does not verify")
        return _Handle(r, leaf, wrap_leaves)

    def _check_countersignature(self, r: dict, handle: _Handle) -> None:
        cs = r["countersignature"]
        forwarded_at = cs["forwarded_at"]
        key = self._directory.signing_key(cs["key_id"], signed_at=forwarded_at)
        if key.participant_id != self._hub_id:
            raise _reject(Reason.BAD_SIGNATURE, "countersignature is not by the hub")
        wrap_leaf = handle.wrap_leaves[0] if handle.wrap_leaves else b""
        leaf = layout.hub_leaf(handle.origin_leaf, r, wrap_leaf, forwarded_at, cs["key_id"])
        if not self._check_tree(key, layout.HUB_ROOT, leaf, cs["signature"]):
            raise _reject(Reason.BAD_SIGNATURE, "hub countersignature or batch proof does not verify")
        if forwarded_at > int(self._clock() * 1000) + self._skew_ms:
            raise _reject(Reason.EXPIRED, "forwarded in the future (clock skew beyond the allowed maximum)")

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

    def _check_fresh(self, r: dict) -> None:
        now = int(self._clock() * 1000)
        created, expires = r["created_at"], r["expires_at"]
        if expires <= created or expires - created > MAX_TTL_S * 1000:
            raise _reject(Reason.EXPIRED, f"lifetime must be positive and at most {MAX_TTL_S} s")
        if now >= expires:
            raise _reject(Reason.EXPIRED, "message has expired")
        if created > now + self._skew_ms:
            raise _reject(Reason.EXPIRED, "created in the future (clock skew beyond the allowed maximum)")


class Opener:
    """Opens envelopes addressed to one participant: verify everything, then decrypt.

    Order: size and decoding (OVERSIZE, MALFORMED, UNKNOWN_SCHEMA; more than
    one wrap or an audit path over 40 siblings is refused before decoding), hub
    countersignature, origin signature and key status (BAD_SIGNATURE,
    UNKNOWN_KEY, REVOKED_KEY), freshness (EXPIRED), addressee
    (WRONG_RECIPIENT), who may send this type to us (SENDER_NOT_ALLOWED,
    UNKNOWN_PARTICIPANT: ``infra.domain.senders``, judged on the verified origin
    sender), decryption (UNDECRYPTABLE), body decoding (MALFORMED,
    UNKNOWN_SCHEMA), and last the replay guard (REPLAYED), so a message that
    fails any check does not burn its id.

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
        self._leg_keys: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
        self._hub_id = hub_id
        self._require_cs = require_countersignature
        self._verifier = Verifier(
            directory,
            hub_id=hub_id,
            clock=clock,
            max_bytes=max_bytes,
            max_skew_s=max_skew_s,
            root_cache_size=root_cache_size,
            max_wraps=1,  # addressed to one participant: a single body, or one leg of a fan-out
        )

    def open(self, data: bytes) -> Opened:
        v = self._verifier
        r = _decode(data, v.max_bytes, v.max_wraps)
        origin = self._origin_of_leg(r) if r["leg"] is not None else r
        handle = v._check_origin(origin)
        if r["countersignature"] is not None:
            v._check_countersignature(r, handle)
        elif self._require_cs and r["sender"] != self._hub_id:
            raise _reject(Reason.BAD_SIGNATURE, "envelope is not countersigned by the hub")
        elif r["subject_commitment"] != subject_commitment(r["message_id"], r["subject"]):
            raise _reject(Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment")
        v._check_fresh(r)
        me = self._keyset.participant_id
        if r["recipient"] != me:
            raise _reject(Reason.WRONG_RECIPIENT, "envelope is addressed to another participant")
        schema = _body_schema(r["type"])
        mid, type_, sender = origin["message_id"], r["type"], r["sender"]  # the body is bound to the origin's id
        refused = senders.refusal(type_, sender, me, self._participants, hub_id=self._hub_id)
        if refused is not None:
            raise _reject(*refused)
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
                raise _reject(Reason.UNDECRYPTABLE, "fan-out body does not open under its data key") from None
        else:
            plaintext = self._keyset.decrypt(
                r["recipient_key_id"], r["body"], layout.body_info(mid, type_, sender, me, r["recipient_key_id"])
            )
        try:
            body = codec.decode(plaintext, schema, max_size=v.max_bytes)
        except CodecError as exc:
            raise _reject(exc.reason, f"body: {exc.message}") from None
        if not self._guard.check_and_remember(r["message_id"]):  # the id we know it by: a leg's own
            raise _reject(Reason.REPLAYED, "message id was seen before")
        meta = _meta(r)
        if origin is not r:  # the signed procedure and outcome, as sealed in the leg
            meta = replace(meta, procedure=origin["procedure"], outcome=origin["outcome"])
        return Opened(meta, body)

    def _origin_of_leg(self, r: dict) -> dict:
        """The envelope as its origin signed it, from a leg the hub forwarded under ids of its own.

        The leg key is HPKE-sealed to our key and opened once (cached); anyone could seal one to us,
        so nothing here is trusted until the origin signature AND the hub's countersignature (which
        binds the leg's ids and sealed bytes) verify over what it yields.
        """
        if r["countersignature"] is None:
            raise _reject(Reason.BAD_SIGNATURE, "a forwarded leg must carry the hub's countersignature")
        if not (_UUID.fullmatch(r["message_id"]) and _UUID.fullmatch(r["correlation_id"])):
            raise _reject(Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs")
        if r["procedure"] is not None or r["outcome"] is not None:  # only sealed in the leg, never beside it
            raise _reject(Reason.MALFORMED, "a forwarded leg carries its procedure and outcome sealed, not in the clear")
        me = self._keyset.participant_id
        if r["recipient"] != me:  # the leg is sealed to its recipient: say so rather than UNDECRYPTABLE
            raise _reject(Reason.WRONG_RECIPIENT, "envelope is addressed to another participant")
        leg = r["leg"]
        cache_key = (r["recipient_key_id"], leg["leg_key"])
        aead = self._leg_keys.get(cache_key)
        if aead is None:
            raw = self._keyset.decrypt(r["recipient_key_id"], leg["leg_key"],
                                       layout.leg_key_info(self._hub_id, me, r["recipient_key_id"]))
            if len(raw) != 32:
                raise _reject(Reason.UNDECRYPTABLE, "the leg key is not a 32-byte key")
            aead = AESGCM(raw)
            self._leg_keys[cache_key] = aead
            if len(self._leg_keys) > _LEG_KEYS_CACHED:
                self._leg_keys.popitem(last=False)
        else:
            self._leg_keys.move_to_end(cache_key)
        sealed = leg["sealed_origin"]
        try:
            mid, cid, procedure, outcome = layout.origin_from_plaintext(aead.decrypt(sealed[:12], sealed[12:], layout.leg_aad(r)))
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise _reject(Reason.UNDECRYPTABLE, "the leg's sealed origin does not open under its leg key") from None
        return {**r, "message_id": mid, "correlation_id": cid, "procedure": procedure, "outcome": outcome}


# --------------------------------------------------------------------------- hub forwarding


@dataclass(frozen=True, slots=True)
class LegIds:
    """The ids a forwarded leg carries instead of the origin's (chosen by the hub: ``infra.crypto.pseudonyms``)."""

    message_id: str
    correlation_id: str


class HubForwarder:
    """The hub's side: re-address verified envelopes with the translated subject and countersign them.

    The hub never holds a body key. ``forward`` takes the ``EnvelopeMeta`` that
    ``Verifier.verify`` returned (or raw bytes, verified here first), the
    subject token translated into the recipient's token space, for a fan-out
    the one recipient this copy is for, and optionally the leg's own ids
    (:class:`LegIds`): the origin's ids, procedure and outcome are then sealed
    to the recipient in the leg (see the module docstring).
    """

    def __init__(
        self, hub_keyset: Keyset, directory: KeyDirectory, *, clock: Callable[[], float] = time.time, **verifier_options
    ) -> None:
        self._keyset = hub_keyset
        self._directory = directory
        self._clock = clock
        self.verifier = Verifier(directory, hub_id=hub_keyset.participant_id, clock=clock, **verifier_options)
        # (recipient, key id) -> (sealed at, leg key, its HPKE ciphertext to that key)
        self._leg_keys: dict[tuple[str, str], tuple[float, AESGCM, bytes]] = {}

    def forward(self, envelope: EnvelopeMeta | bytes, new_subject: str, *, recipient: str | None = None,
                leg: LegIds | None = None) -> bytes:
        """One forwarded envelope, countersigned on its own."""
        return self.forward_batch([(envelope, new_subject, recipient, leg)])[0]

    def forward_batch(
        self,
        items: Sequence[tuple[EnvelopeMeta | bytes, str] | tuple[EnvelopeMeta | bytes, str, str | None]
                        | tuple[EnvelopeMeta | bytes, str, str | None, LegIds | None]],
    ) -> list[bytes]:
        """Forward many envelopes under ONE countersignature over the Merkle root of their hub digests."""
        if not items:
            return []
        forwarded_at = int(self._clock() * 1000)
        key_id = self._keyset.signing_key_id
        records, leaves = [], []
        for item in items:
            envelope, new_subject = item[0], item[1]
            recipient = item[2] if len(item) > 2 else None
            leg = item[3] if len(item) > 3 else None
            meta = self.verifier.verify(envelope) if isinstance(envelope, (bytes, bytearray)) else envelope
            handle = meta._handle
            if not isinstance(handle, _Handle):
                raise ValueError("forward() needs an EnvelopeMeta returned by Verifier.verify(), not peek()")
            src = handle.record
            r = dict(src)
            r["subject"] = new_subject
            wrap_leaf = b""
            if src["wraps"]:
                index = handle.wrap_index(recipient)
                if index is None:
                    raise ValueError("forward() of a fan-out needs recipient= one of its wrap recipients")
                w = src["wraps"][index]
                r["recipient"], r["recipient_key_id"], r["wraps"] = w["recipient"], w["recipient_key_id"], [w]
                r["wrap_proof"] = {
                    "leaf_index": index,
                    "leaf_count": len(src["wraps"]),
                    "siblings": handle.wrap_path(index),
                }
                wrap_leaf = handle.wrap_leaves[index]
            elif recipient is not None and recipient != src["recipient"]:
                raise ValueError("recipient= differs from the envelope's recipient")
            if leg is not None:
                self._seal_leg(r, handle, leg)
            r["countersignature"] = {"key_id": key_id, "forwarded_at": forwarded_at, "signature": None}
            records.append(r)
            leaves.append(layout.hub_leaf(handle.origin_leaf, r, wrap_leaf, forwarded_at, key_id))
        for r, signature in zip(records, layout.tree_signatures(self._keyset, layout.HUB_ROOT, leaves), strict=True):
            r["countersignature"]["signature"] = signature
        return [_encode(r) for r in records]

    def _seal_leg(self, r: dict, handle: _Handle, leg: LegIds) -> None:
        """Give ``r`` the leg's own ids and seal the origin's ids, procedure and outcome to its recipient."""
        if not (_UUID.fullmatch(leg.message_id) and _UUID.fullmatch(leg.correlation_id)):
            raise ValueError("leg ids must be canonical lowercase UUIDs")
        r["message_id"], r["correlation_id"] = leg.message_id, leg.correlation_id
        r["procedure"] = r["outcome"] = None
        aead, sealed_key = self._leg_key(r["recipient"], r["recipient_key_id"])
        nonce = secrets.token_bytes(12)
        r["leg"] = {"leg_key": sealed_key,
                    "sealed_origin": nonce + aead.encrypt(nonce, handle.origin_plaintext(), layout.leg_aad(r))}

    def _leg_key(self, recipient: str, key_id: str) -> tuple[AESGCM, bytes]:
        """The leg key for one recipient key: HPKE-sealed once, reused for ``LEG_KEY_LIFETIME_S``.

        One public-key operation per recipient key and hour instead of one per leg (a lookup to
        1,000 banks would otherwise pay 1,000 HPKE seals).  The sealed key is the same on every leg
        to that key, which joins nothing a reader of that one inbox could not join already.
        """
        now = self._clock()
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
