"""The envelope on the wire: its format limits, the fast Avro codec, the routing metadata and ``peek``.

Nothing here verifies or decrypts: ``decode`` turns bytes into a record (size and array caps first)
and ``encode`` the reverse, byte-identical to ``schemas.codec`` (tests/unit/crypto/test_envelope_golden.py).
The primitives built on it are :mod:`infra.crypto.seal`, :mod:`infra.crypto.verify`,
:mod:`infra.crypto.open` and :mod:`infra.crypto.forward`; the signed layout is :mod:`infra.crypto.layout`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import fastavro

from infra.core.errors import CodecError, EnvelopeRejection, Reason
from infra.crypto import layout, merkle
from schemas import codec
from schemas.bounds import ArrayCaps
from schemas.catalogue import SINGLE_OBJECT_MARKER, catalogue
from schemas.types import BODY_SCHEMA

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_WRAPS",
    "DEFAULT_SKEW_S",
    "DEFAULT_TTL_S",
    "FANOUT",
    "MAX_TTL_S",
    "EnvelopeMeta",
    "body_schema",
    "decode",
    "encode",
    "is_uuid",
    "meta_of",
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

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_uuid(value: str) -> bool:
    """A canonical lowercase UUID: the only spelling of an id that signed digests accept."""
    return _UUID.fullmatch(value) is not None


def body_schema(type_: str) -> str:
    """The Avro schema of a message type's body; UNKNOWN_SCHEMA for a type not in the catalogue."""
    name = BODY_SCHEMA.get(type_)
    if name is None:
        raise EnvelopeRejection(Reason.UNKNOWN_SCHEMA, "message type is not in the catalogue (schemas.types)")
    return name


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
            raise EnvelopeRejection(Reason.MALFORMED, "envelope: body is not a valid envelope record") from None
        if found is None:
            return
        if found.field == "wraps":
            raise EnvelopeRejection(Reason.OVERSIZE, f"envelope carries more than {found.cap} wraps (one per recipient)")
        raise EnvelopeRejection(Reason.MALFORMED, f"envelope: a Merkle audit path is longer than {found.cap} siblings")

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
            raise EnvelopeRejection(Reason.MALFORMED, "envelope must be bytes")
        data = bytes(data)
        if len(data) > max_bytes:
            raise EnvelopeRejection(Reason.OVERSIZE, f"envelope is {len(data)} bytes, maximum is {max_bytes}")
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
            raise EnvelopeRejection(Reason.MALFORMED, "envelope: body is not a valid envelope record") from None
        if buffer.tell() != len(data):
            raise EnvelopeRejection(Reason.MALFORMED, "envelope: trailing bytes after the record")
        if schema is self.schema_v1:
            record.update(dict.fromkeys(_V2_FIELDS))
        return record

    @staticmethod
    def _decode_other_version(data: bytes, max_bytes: int) -> dict:
        try:
            r = codec.decode(data, SCHEMA, max_size=max_bytes)
        except CodecError as exc:
            raise EnvelopeRejection(exc.reason, f"envelope: {exc.message}") from None
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


def decode(data: bytes, max_bytes: int, max_wraps: int = DEFAULT_MAX_WRAPS) -> dict:
    """The envelope record of ``data``, size and array caps checked first; verifies NOTHING."""
    return _envelopes().decode(data, max_bytes, max_wraps)


def encode(record: dict) -> bytes:
    """The wire bytes of an envelope record built by this layer (v1 unless it uses v2's fields)."""
    return _envelopes().encode(record)


def _dt(ms: int) -> datetime:
    return layout.EPOCH + timedelta(milliseconds=ms)


def meta_of(r: dict) -> EnvelopeMeta:
    """The routing fields of a decoded envelope record."""
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
    )


def peek(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> EnvelopeMeta:
    """Decode the routing fields WITHOUT verifying anything (ops inspection; needs no keys)."""
    return meta_of(decode(data, max_bytes))
