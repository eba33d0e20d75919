"""Provision records (情報提供等記録, 番号法 §23), hash-chained per person.

Why this file is long: one record's whole life — validation, canonical bytes and chain hash, Avro form,
PostgreSQL store — kept together so the hash and its three encodings cannot drift apart.

Every inquiry and provision the policy marks ``records`` produces one
:class:`ProvisionRecord`: who asked whom for which data item, under which
legal basis and for which public-benefit procedure (and so which purpose),
when, what came of it (``PROVIDED``, ``NOT_REGISTERED``, ``BLOCKED`` …, as the
answering participant stated it in its signed envelope), and whether it is
withheld from the person (不開示). The records of one person (keyed by their
token in the portal's token space) form a chain: record ``n`` carries
``seq = n``, the hash of record ``n - 1`` as
``prev_hash`` (32 zero bytes for the first) and

    hash = SHA-256(prev_hash || canonical_bytes(record))

so deleting, inserting or altering a record is detected by
:meth:`ProvisionStore.verify_chain`. ``provision_chain_heads`` holds each
person's last seq and hash, so deleting the tail is detected too.

Records name the person twice: by the portal token (the chain's key in the
database, which the portal reads by) and, from canonical encoding v2, by a
hub-only pseudonym (``person``, :mod:`infra.crypto.pseudonyms`) that the hash covers
instead of the token — so what the hub publishes on the audit topic (keyed by
the pseudonym, with no token) can be re-hashed by an auditor, and joins nothing
on the participants' topics.  Records written before v2 (no ``person``) keep
their v1 encoding and verify as before.

Against whoever runs the database (who could rewrite a chain *and* its head),
every head a batch moves is sealed by the hub's records key
(:mod:`infra.crypto.records_keys`, kept outside PostgreSQL): a rewritten chain has no
validly signed head.  :mod:`infra.records.checkpoints` publishes signed checkpoints of
all heads outside the database, and :mod:`infra.records.records_verify` checks a
person's chain against the latest one.  Retention (:meth:`ProvisionStore.purge`)
removes the oldest records of a chain and leaves a signed anchor where the
remaining chain now starts.

Fail closed (DESIGN §2): :meth:`ProvisionStore.append` runs inside the caller's
transaction, before the message is forwarded. If it raises, the caller rolls
back and must not forward. Database failures propagate unchanged (asyncpg /
OS errors: transient, retry the message); a draft that cannot be a record is
refused at construction with ``Rejection(RECORD_FAILED)`` (dead-letter it).
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Final

import asyncpg

from infra.core.errors import Reason, Rejection
from infra.crypto.records_keys import RecordsKey, Seal
from infra.platform.storage import migrate
from schemas import codec

__all__ = [
    "ANCHOR_DOMAIN",
    "BUCKET_BITS",
    "CANONICAL_TAG",
    "CANONICAL_TAG_V2",
    "GENESIS_HASH",
    "OUTCOME_STATUS",
    "HEAD_DOMAIN",
    "PROVISION_MIGRATIONS",
    "Anchor",
    "ChainProblem",
    "ChainState",
    "ChainVerdict",
    "ChainWalk",
    "Head",
    "ProvisionRecord",
    "ProvisionStatus",
    "ProvisionStore",
    "PurgeResult",
    "RecordDraft",
    "anchor_statement",
    "audit_record",
    "bucket_of",
    "canonical_bytes",
    "chain_hash",
    "encode_items",
    "from_avro",
    "head_statement",
    "person_key",
    "record_from_row",
    "record_time",
    "to_avro",
    "verify_records",
    "walk_chain",
]

GENESIS_HASH: Final = bytes(32)
CANONICAL_TAG: Final = b"renkei.provision_record.v1"  # domain separation, bumped if the encoding changes
CANONICAL_TAG_V2: Final = b"renkei.provision_record.v2"  # the pseudonym instead of the token, and the procedure
HEAD_DOMAIN: Final = b"renkei.provision_heads.v1\x00"  # records-key seals over chain heads
ANCHOR_DOMAIN: Final = b"renkei.provision_anchors.v1\x00"  # records-key seals over retention anchors
_HEAD_TAG: Final = b"renkei.provision_head.v1"
_ANCHOR_TAG: Final = b"renkei.provision_anchor.v1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS: Final = timedelta(milliseconds=1)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-]+={0,2}")  # base64url, padding optional
_PROCEDURE_RE: Final = re.compile(r"[\x21-\x7e]{1,64}")  # a catalogue code (infra.domain.procedures): printable ASCII


class ProvisionStatus(str, Enum):
    """The provision_record schema's status symbols (UNKNOWN is never written)."""

    REQUESTED = "REQUESTED"  # inquiry forwarded
    PROVIDED = "PROVIDED"  # answer delivered
    NOT_REGISTERED = "NOT_REGISTERED"  # nothing to provide
    REFUSED = "REFUSED"  # rejected
    NO_ANSWER = "NO_ANSWER"  # deadline passed
    BLOCKED = "BLOCKED"  # an account exists but may not be provided (unconfirmed or suspended): nothing provided


OUTCOME_STATUS: Final = {
    "REGISTERED": ProvisionStatus.PROVIDED,
    "NOT_REGISTERED": ProvisionStatus.NOT_REGISTERED,
    "BLOCKED": ProvisionStatus.BLOCKED,
}
"""The outcome a provision.response states in its signed envelope -> the status of its provision record."""
_V1_STATUSES: Final = "'REQUESTED', 'PROVIDED', 'NOT_REGISTERED', 'REFUSED', 'NO_ANSWER'"  # migration 1, frozen


def _refuse(what: str) -> Rejection:
    return Rejection(Reason.RECORD_FAILED, f"provision record: {what}")


def _as_uuid(name: str, value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value if type(value) is uuid.UUID else uuid.UUID(bytes=value.bytes)
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise _refuse(f"{name} is not a UUID") from None


def _as_utc_to_the_ms(name: str, value: Any) -> datetime:
    """Aware UTC datetime truncated to milliseconds (the Avro precision the hash must survive)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise _refuse(f"{name} must be a timezone-aware datetime")
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _as_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse(f"{name} must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """What the hub knows about an exchange before it is chained. Normalised on construction."""

    message_id: uuid.UUID
    correlation_id: uuid.UUID
    person_token: str = field(repr=False)  # portal token space, base64url
    requester: str
    provider: str
    data_item: str
    legal_basis: str
    requested_at: datetime
    provided_at: datetime | None = None
    status: ProvisionStatus = ProvisionStatus.REQUESTED
    not_disclosed: bool = False
    person: str | None = field(default=None, repr=False)  # the hub's pseudonym (v2 encoding); None: v1
    procedure: str | None = None  # the public-benefit procedure (infra.domain.procedures) the exchange served

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "message_id", _as_uuid("message_id", self.message_id))
        put(self, "correlation_id", _as_uuid("correlation_id", self.correlation_id))
        if not isinstance(self.person_token, str) or not _TOKEN_RE.fullmatch(self.person_token):
            raise _refuse("person_token must be a non-empty base64url string")
        for name in ("requester", "provider", "data_item", "legal_basis"):
            _as_text(name, getattr(self, name))
        put(self, "requested_at", _as_utc_to_the_ms("requested_at", self.requested_at))
        if self.provided_at is not None:
            put(self, "provided_at", _as_utc_to_the_ms("provided_at", self.provided_at))
        try:
            put(self, "status", ProvisionStatus(self.status))
        except ValueError:
            raise _refuse(f"status must be one of {', '.join(s.value for s in ProvisionStatus)}") from None
        if not isinstance(self.not_disclosed, bool):
            raise _refuse("not_disclosed must be a bool")
        if self.person is not None and (not isinstance(self.person, str) or not _TOKEN_RE.fullmatch(self.person)):
            raise _refuse("person must be a base64url pseudonym")
        if self.procedure is not None and (not isinstance(self.procedure, str)
                                           or not _PROCEDURE_RE.fullmatch(self.procedure)):
            raise _refuse("procedure must be a catalogue code")
        if self.procedure is not None and self.person is None:
            raise _refuse("a record naming a procedure needs the v2 encoding (a person pseudonym)")

    @property
    def key(self) -> tuple[uuid.UUID, str, str]:
        """Idempotency key: one record per message per (requester, provider)."""
        return (self.message_id, self.requester, self.provider)


@dataclass(frozen=True, slots=True)
class ProvisionRecord:
    """One chained provision record, as stored and as published (see :func:`to_avro`)."""

    record_id: uuid.UUID
    message_id: uuid.UUID
    correlation_id: uuid.UUID
    person_token: str = field(repr=False)
    requester: str
    provider: str
    data_item: str
    legal_basis: str
    requested_at: datetime
    provided_at: datetime | None
    status: ProvisionStatus
    not_disclosed: bool
    seq: int
    prev_hash: bytes = field(repr=False)
    hash: bytes = field(repr=False)
    person: str | None = field(default=None, repr=False)  # None: a v1 record (before pseudonyms)
    procedure: str | None = None

    @property
    def version(self) -> int:
        """The canonical encoding the hash uses: 2 with a pseudonym, 1 for records written before it."""
        return 1 if self.person is None else 2

    @classmethod
    def chain(cls, draft: RecordDraft, *, seq: int, prev_hash: bytes,
              record_id: uuid.UUID | None = None) -> ProvisionRecord:
        """The record ``draft`` becomes at position ``seq`` after ``prev_hash``."""
        record_id = record_id or uuid.uuid4()
        digest = chain_hash(prev_hash, _canonical(draft, record_id, seq))
        return cls(
            record_id=record_id, message_id=draft.message_id,
            correlation_id=draft.correlation_id, person_token=draft.person_token,
            requester=draft.requester, provider=draft.provider, data_item=draft.data_item,
            legal_basis=draft.legal_basis, requested_at=draft.requested_at,
            provided_at=draft.provided_at, status=draft.status, not_disclosed=draft.not_disclosed,
            seq=seq, prev_hash=prev_hash, hash=digest, person=draft.person, procedure=draft.procedure,
        )


# --- canonical encoding and hash ----------------------------------------------


def canonical_bytes(record: ProvisionRecord) -> bytes:
    """The bytes the hash covers: every field but ``prev_hash`` and ``hash``, in a fixed order.

    Each item is a 4-byte big-endian length followed by its bytes, so no two
    different records encode the same.  Version 1 (records without a
    pseudonym): ``CANONICAL_TAG``, record_id, message_id, correlation_id (16
    raw bytes each), person_token (ASCII), requester, provider, data_item,
    legal_basis (UTF-8), requested_at (8-byte signed big-endian epoch
    milliseconds), provided_at (same, or zero-length when absent), status (its
    ASCII symbol), not_disclosed (one byte 0/1), seq (8-byte unsigned
    big-endian).  Version 2: ``CANONICAL_TAG_V2``, then the same items with the
    pseudonym ``person`` (ASCII) in place of person_token, then procedure
    (ASCII, zero-length when absent).  A v1 record never had a procedure: one
    that shows one gets it appended, so the stored hash no longer matches.
    """
    return _canonical(record, record.record_id, record.seq)


_pack_len = struct.Struct(">I").pack
_pack_ms = struct.Struct(">q").pack
_pack_seq = struct.Struct(">Q").pack
_TAG_ITEM: Final = _pack_len(len(CANONICAL_TAG)) + CANONICAL_TAG
_TAG_ITEM_V2: Final = _pack_len(len(CANONICAL_TAG_V2)) + CANONICAL_TAG_V2
_LEN0, _LEN1, _LEN8, _LEN16 = (_pack_len(n) for n in (0, 1, 8, 16))


def _text(value: str, encoding: str = "utf-8") -> bytes:
    data = value.encode(encoding)
    return _pack_len(len(data)) + data


def _canonical(src: RecordDraft | ProvisionRecord, record_id: uuid.UUID, seq: int) -> bytes:
    # Same layout as the canonical_bytes docstring; fixed-size lengths are precomputed.
    provided = src.provided_at
    v1 = src.person is None
    return b"".join((
        _TAG_ITEM if v1 else _TAG_ITEM_V2,
        _LEN16, record_id.bytes,
        _LEN16, src.message_id.bytes,
        _LEN16, src.correlation_id.bytes,
        _text(src.person_token if v1 else src.person, "ascii"),
        _text(src.requester),
        _text(src.provider),
        _text(src.data_item),
        _text(src.legal_basis),
        _LEN8, _pack_ms((src.requested_at - _EPOCH) // _MS),
        _LEN0 if provided is None else _LEN8 + _pack_ms((provided - _EPOCH) // _MS),
        _text(ProvisionStatus(src.status).value, "ascii"),
        _LEN1, b"\x01" if src.not_disclosed else b"\x00",
        _LEN8, _pack_seq(seq),
        b"" if v1 and src.procedure is None else _text(src.procedure or "", "ascii"),
    ))


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """``SHA-256(prev_hash || canonical)``; ``prev_hash`` is always 32 bytes."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    return hashlib.sha256(prev_hash + canonical).digest()


def encode_items(*items: bytes) -> bytes:
    """Each item as a 4-byte big-endian length and its bytes (the layout of ``canonical_bytes``)."""
    return b"".join(_pack_len(len(item)) + item for item in items)


def head_statement(person_token: str, seq: int, last_hash: bytes) -> bytes:
    """What a head seal signs: "this person's chain ends at ``seq`` with ``last_hash``"."""
    return encode_items(_HEAD_TAG, person_token.encode("ascii"), _pack_seq(seq), last_hash)


def anchor_statement(person_token: str, seq: int, last_hash: bytes, purged_before: datetime) -> bytes:
    """What a retention anchor's seal signs: "records up to ``seq`` (ending in ``last_hash``) were purged as
    older than ``purged_before``; the chain goes on from there"."""
    purged_before_epoch_ms = (_as_utc_to_the_ms("purged_before", purged_before) - _EPOCH) // _MS
    return encode_items(_ANCHOR_TAG, person_token.encode("ascii"), _pack_seq(seq), last_hash,
                        _pack_ms(purged_before_epoch_ms))


def record_time(record: RecordDraft | ProvisionRecord) -> datetime:
    """When the exchange a record describes last happened (provided, else requested): what retention counts from."""
    return max(record.requested_at, record.provided_at or record.requested_at)


# --- Avro ----------------------------------------------------------------------


def to_avro(record: ProvisionRecord) -> dict[str, Any]:
    """The record as the hub publishes it: a ``provision_record`` v2 datum (for ``schemas.codec.encode``).

    Never with the portal token (``person_token`` is empty): a v2 record names its person by the
    pseudonym its hash covers, so an auditor can re-hash it; a v1 record (written before
    pseudonyms) is published without any person (its hash needs the token, which stays in the
    database).
    """
    return {
        "record_id": record.record_id,
        "message_id": record.message_id,
        "correlation_id": record.correlation_id,
        "person_token": b"",
        "requester": record.requester,
        "provider": record.provider,
        "data_item": record.data_item,
        "legal_basis": record.legal_basis,
        "requested_at": record.requested_at,
        "provided_at": record.provided_at,
        "status": ProvisionStatus(record.status).value,
        "not_disclosed": record.not_disclosed,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "person": record.person,
        "procedure": record.procedure,
        "seq": record.seq,
    }


def audit_record(record: ProvisionRecord, person: str) -> tuple[bytes, bytes]:
    """``(Kafka key, value)`` of the record on the audit topic: keyed by the person's pseudonym, never a token."""
    return person.encode("ascii"), encode_audit(to_avro(record))


def encode_audit(datum: dict[str, Any]) -> bytes:
    """A :func:`to_avro` datum as ``codec.encode("provision_record", …)`` writes it, without its re-validation.

    The hub publishes one of these per provision; the datum is built here from a typed
    :class:`ProvisionRecord`, never from input, so its shape is known (``codec.encode_built``: fastavro's
    strict writer still refuses a missing or unknown key or a value of the wrong type). Same bytes as the
    validating encoder (``tests/unit/records/test_provisions_avro.py``).
    """
    return codec.encode_built("provision_record", datum)


def from_avro(datum: dict[str, Any], *, seq: int | None = None) -> ProvisionRecord:
    """A record from a decoded ``provision_record`` datum, as a reader of the audit topic sees it.

    ``person_token`` is whatever the datum carries (empty from v2 on: the person is ``person``).
    ``seq`` comes from the datum (v2); for v1 data pass it (the portal, auditors take it from the
    Kafka record or count the person's records; the hash covers it).
    """
    seq = datum.get("seq") if datum.get("seq") is not None else seq
    if seq is None:
        raise _refuse("seq is not in the record (v1): pass it")
    try:
        status = ProvisionStatus(datum["status"])
    except ValueError:
        raise _refuse("status symbol is not one this reader knows") from None
    return ProvisionRecord(
        record_id=_as_uuid("record_id", datum["record_id"]),
        message_id=_as_uuid("message_id", datum["message_id"]),
        correlation_id=_as_uuid("correlation_id", datum["correlation_id"]),
        person_token=bytes(datum["person_token"]).decode("ascii"),
        requester=datum["requester"], provider=datum["provider"], data_item=datum["data_item"],
        legal_basis=datum["legal_basis"], requested_at=datum["requested_at"],
        provided_at=datum["provided_at"], status=status, not_disclosed=datum["not_disclosed"],
        seq=seq, prev_hash=bytes(datum["prev_hash"]), hash=bytes(datum["hash"]),
        person=datum.get("person"), procedure=datum.get("procedure"),
    )


# --- PostgreSQL ------------------------------------------------------------------

_STATUSES = ", ".join(f"'{s.value}'" for s in ProvisionStatus)  # every status this code writes (migration 3)

BUCKET_BITS: Final = 12
"""Checkpoints spread the chain heads over 2**12 buckets by a hash of the person's token (see bucket_of)."""
_BUCKET_TAG: Final = "renkei.records.bucket.v1:"
_BUCKET_DIGEST_SQL = f"sha256(('{_BUCKET_TAG}' || person_token)::bytea)"  # tokens are base64url: no escapes
_BUCKET_SQL = f"(get_byte({_BUCKET_DIGEST_SQL}, 0) << 4) | (get_byte({_BUCKET_DIGEST_SQL}, 1) >> 4)"


def person_key(person_token: str) -> bytes:
    """SHA-256 of the bucket tag and the token: places a head in its bucket and orders it there."""
    return hashlib.sha256((_BUCKET_TAG + person_token).encode("ascii")).digest()


def bucket_of(person_token: str) -> int:
    """The checkpoint bucket of a person's head: the first 12 bits of :func:`person_key` (the SQL column agrees)."""
    return int.from_bytes(person_key(person_token)[:2], "big") >> (16 - BUCKET_BITS)

PROVISION_MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE provision_records (
        record_id      uuid        PRIMARY KEY,
        message_id     uuid        NOT NULL,
        correlation_id uuid        NOT NULL,
        person_token   text        NOT NULL,
        requester      text        NOT NULL,
        provider       text        NOT NULL,
        data_item      text        NOT NULL,
        legal_basis    text        NOT NULL,
        requested_at   timestamptz NOT NULL,
        provided_at    timestamptz,
        status         text        NOT NULL CHECK (status IN ({_V1_STATUSES})),
        not_disclosed  boolean     NOT NULL,
        seq            bigint      NOT NULL CHECK (seq >= 1),
        prev_hash      bytea       NOT NULL,
        hash           bytea       NOT NULL,
        recorded_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (message_id, requester, provider),
        UNIQUE (person_token, seq)
    );
    CREATE INDEX provision_records_correlation ON provision_records (correlation_id);
    CREATE TABLE provision_chain_heads (
        person_token text   PRIMARY KEY,
        seq          bigint NOT NULL,
        last_hash    bytea  NOT NULL
    );
    """,
    # Tamper evidence against the database's operator (issue 13): the head's records-key seal, the head as of
    # the latest checkpoint (cp_seq 0 = never checkpointed) and the checkpoint bucket; retention anchors; the
    # checkpoints made (infra.records.checkpoints) and the roots of their buckets.
    f"""
    ALTER TABLE provision_chain_heads
        ADD COLUMN seal    bytea,
        ADD COLUMN cp_seq  bigint NOT NULL DEFAULT 0 CHECK (cp_seq >= 0),
        ADD COLUMN cp_hash bytea  NOT NULL DEFAULT '\\x{GENESIS_HASH.hex()}'::bytea,
        ADD COLUMN bucket  smallint GENERATED ALWAYS AS ({_BUCKET_SQL}) STORED;
    CREATE INDEX provision_chain_heads_bucket ON provision_chain_heads (bucket) WHERE cp_seq > 0;
    CREATE INDEX provision_chain_heads_pending ON provision_chain_heads (person_token) WHERE seq <> cp_seq;
    CREATE TABLE provision_chain_anchors (
        person_token  text        PRIMARY KEY,
        seq           bigint      NOT NULL CHECK (seq >= 1),
        last_hash     bytea       NOT NULL,
        purged_before timestamptz NOT NULL,
        purged_at     timestamptz NOT NULL DEFAULT now(),
        seal          bytea       NOT NULL
    );
    CREATE TABLE provision_checkpoints (
        number       bigint      PRIMARY KEY CHECK (number >= 1),
        signed       bytea       NOT NULL,
        issued_at    timestamptz NOT NULL,
        published    boolean     NOT NULL DEFAULT false,
        topic_offset bigint
    );
    CREATE INDEX provision_checkpoints_unpublished ON provision_checkpoints (number) WHERE NOT published;
    CREATE TABLE provision_checkpoint_buckets (
        bucket smallint PRIMARY KEY,
        root   bytea    NOT NULL
    );
    """,
    # Records say what happened (issue 16): the procedure, the BLOCKED outcome, and the hub's pseudonym of the
    # person that canonical encoding v2 covers (NULL: a v1 record, written before).
    f"""
    ALTER TABLE provision_records
        ADD COLUMN person    text,
        ADD COLUMN procedure text,
        DROP CONSTRAINT provision_records_status_check,
        ADD CONSTRAINT provision_records_status_check CHECK (status IN ({_STATUSES}));
    """,
]

_COLUMNS: Final = (
    "record_id", "message_id", "correlation_id", "person_token", "requester", "provider",
    "data_item", "legal_basis", "requested_at", "provided_at", "status", "not_disclosed",
    "seq", "prev_hash", "hash", "person", "procedure",
)

# Creates missing heads and locks every head of the batch, in person_token order
# (concurrent appenders lock in the same order: no deadlock), returning the current head.
_LOCK_HEADS = """
INSERT INTO provision_chain_heads AS h (person_token, seq, last_hash)
SELECT p, 0, $2::bytea FROM unnest($1::text[]) AS p ORDER BY p
ON CONFLICT (person_token) DO UPDATE SET person_token = h.person_token
RETURNING person_token, seq, last_hash
"""

_EXISTING = """
SELECT r.message_id, r.requester, r.provider
FROM provision_records r
JOIN unnest($1::uuid[], $2::text[], $3::text[]) AS k(message_id, requester, provider)
  USING (message_id, requester, provider)
"""

_MOVE_HEADS = """
UPDATE provision_chain_heads h SET seq = u.seq, last_hash = u.last_hash, seal = u.seal
FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[]) AS u(person_token, seq, last_hash, seal)
WHERE h.person_token = u.person_token
"""

_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM provision_records"


def record_from_row(row: asyncpg.Record) -> ProvisionRecord:
    """A record from a ``provision_records`` row."""
    return ProvisionRecord(
        record_id=_as_uuid("record_id", row["record_id"]),
        message_id=_as_uuid("message_id", row["message_id"]),
        correlation_id=_as_uuid("correlation_id", row["correlation_id"]),
        person_token=row["person_token"], requester=row["requester"], provider=row["provider"],
        data_item=row["data_item"], legal_basis=row["legal_basis"],
        requested_at=row["requested_at"], provided_at=row["provided_at"],
        status=ProvisionStatus(row["status"]), not_disclosed=row["not_disclosed"], seq=row["seq"],
        prev_hash=bytes(row["prev_hash"]), hash=bytes(row["hash"]), person=row["person"],
        procedure=row["procedure"],
    )


_PURGE_CANDIDATES = """
SELECT person_token, upto FROM (
    SELECT person_token, min(seq) AS first,
           coalesce(min(seq) FILTER (WHERE greatest(requested_at, coalesce(provided_at, requested_at)) >= $1) - 1,
                    max(seq)) AS upto
    FROM provision_records GROUP BY person_token
) c WHERE upto >= first ORDER BY person_token
"""


@dataclass(frozen=True)
class Head:
    """A person's chain head as stored: its last record, its seal, and the head as of the latest checkpoint."""

    seq: int
    last_hash: bytes = field(repr=False)
    seal: Seal | None = field(repr=False)
    cp_seq: int = 0
    cp_hash: bytes = field(default=GENESIS_HASH, repr=False)


@dataclass(frozen=True)
class Anchor:
    """Where a chain starts after a retention purge: the last purged record's seq and hash, sealed."""

    seq: int
    last_hash: bytes = field(repr=False)
    purged_before: datetime
    seal: Seal | None = field(repr=False)


@dataclass(frozen=True)
class ChainState:
    """One person's chain as the database holds it, read in one snapshot (see :meth:`ProvisionStore.chain_state`)."""

    person_token: str = field(repr=False)
    records: list[ProvisionRecord]  # every record, 不開示 ones included, in seq order
    head: Head | None
    anchor: Anchor | None

    @property
    def start(self) -> tuple[int, bytes]:
        """Seq and hash the remaining records continue from: the anchor's, or (0, genesis)."""
        return (self.anchor.seq, self.anchor.last_hash) if self.anchor else (0, GENESIS_HASH)


@dataclass(frozen=True)
class ChainProblem:
    """Something wrong with a chain, located by sequence numbers (never by personal data)."""

    first: int | None  # the first seq concerned; None: the chain as a whole (its head)
    last: int | None
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ChainWalk:
    """What walking a chain's records found: its problems and where it ends."""

    problems: list[ChainProblem]
    last_seq: int
    last_hash: bytes = field(repr=False)
    hashes: dict[int, bytes] = field(repr=False)  # seq -> stored hash, for the records present


def walk_chain(records: Sequence[ProvisionRecord], start: tuple[int, bytes] = (0, GENESIS_HASH)) -> ChainWalk:
    """Check seq continuity, ``prev_hash`` links and every record's hash, from ``start`` (an anchor or genesis)."""
    problems: list[ChainProblem] = []
    hashes: dict[int, bytes] = {}
    last_seq, prev_hash = start
    expected = last_seq + 1
    for record in records:
        seq = record.seq
        if seq < expected:
            what = "duplicated (inserted)" if seq > start[0] else "before the chain's start (inserted)"
            problems.append(ChainProblem(seq, seq, f"seq {seq}: {what}"))
            continue
        if seq > expected:
            gap = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
            problems.append(ChainProblem(expected, seq - 1, f"seq {gap} missing (deleted)"))
        elif record.prev_hash != prev_hash:
            problems.append(ChainProblem(seq, seq, f"seq {seq}: prev_hash does not match seq {seq - 1} (chain broken)"))
        if chain_hash(record.prev_hash, canonical_bytes(record)) != record.hash:
            problems.append(ChainProblem(seq, seq, f"seq {seq}: hash mismatch (altered)"))
        hashes[seq] = record.hash
        expected, prev_hash, last_seq = seq + 1, record.hash, seq
    return ChainWalk(problems, last_seq, prev_hash, hashes)


@dataclass(frozen=True)
class ChainVerdict:
    """Result of :meth:`ProvisionStore.verify_chain`. ``problems`` never name personal data."""

    ok: bool
    checked: int
    problems: list[str]


@dataclass(frozen=True)
class PurgeResult:
    """What :meth:`ProvisionStore.purge` did (or, rolled back, would do)."""

    before: datetime
    chains: int  # chains whose oldest records were removed
    records: int  # records removed
    kept: int  # chains left whole because their oldest records do not verify (kept as evidence)


class ProvisionStore:
    """Provision records in PostgreSQL. ``append`` and ``purge`` join the caller's transaction.

    ``key`` is the records key (:class:`infra.crypto.records_keys.RecordsKey`): only
    the writers (the hub, the retention purge) hold it; readers pass none.
    """

    def __init__(self, pool: asyncpg.Pool, key: RecordsKey | None = None) -> None:
        self._pool = pool
        self._key = key

    async def migrate(self) -> list[int]:
        """Create or upgrade the tables (component ``provisions``)."""
        return await migrate(self._pool, "provisions", PROVISION_MIGRATIONS)

    def _signing_key(self, what: str) -> RecordsKey:
        if self._key is None:
            raise RuntimeError(f"ProvisionStore.{what} needs the records key (ProvisionStore(pool, key))")
        return self._key

    async def append(self, conn: asyncpg.Connection, drafts: Iterable[RecordDraft]) -> list[ProvisionRecord]:
        """Chain and insert ``drafts``; return the records written now (already recorded ones are skipped).

        Must run inside the caller's open transaction on ``conn`` (with the
        message-id claim and before forwarding). Heads are locked in person
        order, so concurrent hub workers serialise per person and never
        deadlock; every head the batch moves is sealed with one records-key
        signature. Raises what asyncpg raises; the caller rolls back and does
        not forward (fail closed).
        """
        key = self._signing_key("append")
        if not conn.is_in_transaction():
            raise RuntimeError("ProvisionStore.append must run inside the caller's transaction")
        batch: dict[tuple[uuid.UUID, str, str], RecordDraft] = {}
        for draft in drafts:
            if not isinstance(draft, RecordDraft):
                raise TypeError("append takes RecordDraft objects")
            batch.setdefault(draft.key, draft)
        if not batch:
            return []
        persons = sorted({d.person_token for d in batch.values()})
        heads = {r["person_token"]: (r["seq"], bytes(r["last_hash"]))
                 for r in await conn.fetch(_LOCK_HEADS, persons, GENESIS_HASH)}
        keys = list(batch)
        for row in await conn.fetch(_EXISTING, [k[0] for k in keys], [k[1] for k in keys],
                                    [k[2] for k in keys]):
            batch.pop((_as_uuid("message_id", row["message_id"]), row["requester"], row["provider"]), None)
        if not batch:
            return []
        written: list[ProvisionRecord] = []
        for draft in batch.values():  # caller's order within each person
            seq, last = heads[draft.person_token]
            record = ProvisionRecord.chain(draft, seq=seq + 1, prev_hash=last)
            heads[draft.person_token] = (record.seq, record.hash)
            written.append(record)
        await conn.copy_records_to_table(
            "provision_records", columns=_COLUMNS,
            records=[(r.record_id, r.message_id, r.correlation_id, r.person_token, r.requester,
                      r.provider, r.data_item, r.legal_basis, r.requested_at, r.provided_at,
                      r.status.value, r.not_disclosed, r.seq, r.prev_hash, r.hash, r.person, r.procedure)
                     for r in written],
        )
        moved = sorted({r.person_token for r in written})
        seals = key.seal(HEAD_DOMAIN, [head_statement(p, *heads[p]) for p in moved])
        await conn.execute(_MOVE_HEADS, moved, [heads[p][0] for p in moved], [heads[p][1] for p in moved],
                           [s.to_bytes() for s in seals])
        return written

    async def for_person(self, person_token: str, *, include_not_disclosed: bool = False) -> list[ProvisionRecord]:
        """The person's records in chain order; 不開示 records only when asked for."""
        sql = f"{_SELECT} WHERE person_token = $1"
        if not include_not_disclosed:
            sql += " AND NOT not_disclosed"
        rows = await self._pool.fetch(sql + " ORDER BY seq", person_token)
        return [record_from_row(r) for r in rows]

    async def by_message_ids(self, conn: asyncpg.Connection | asyncpg.Pool,
                             message_ids: Iterable[uuid.UUID | str]) -> list[ProvisionRecord]:
        """Records already written for these messages (e.g. to republish after a crash), by person and seq."""
        ids = sorted({_as_uuid("message_id", m) for m in message_ids})
        if not ids:
            return []
        rows = await conn.fetch(f"{_SELECT} WHERE message_id = ANY($1::uuid[]) ORDER BY person_token, seq", ids)
        return [record_from_row(r) for r in rows]

    @staticmethod
    async def chain_state(conn: asyncpg.Connection, person_token: str) -> ChainState:
        """The person's records, head and anchor (run it in a repeatable-read transaction for one snapshot)."""
        rows = await conn.fetch(f"{_SELECT} WHERE person_token = $1 ORDER BY seq", person_token)
        head = await conn.fetchrow("SELECT seq, last_hash, seal, cp_seq, cp_hash FROM provision_chain_heads "
                                   "WHERE person_token = $1", person_token)
        anchor = await conn.fetchrow("SELECT seq, last_hash, purged_before, seal FROM provision_chain_anchors "
                                     "WHERE person_token = $1", person_token)
        return ChainState(
            person_token=person_token,
            records=[record_from_row(r) for r in rows],
            head=None if head is None else Head(head["seq"], bytes(head["last_hash"]), Seal.from_bytes(head["seal"]),
                                                head["cp_seq"], bytes(head["cp_hash"])),
            anchor=None if anchor is None else Anchor(anchor["seq"], bytes(anchor["last_hash"]),
                                                      anchor["purged_before"], Seal.from_bytes(anchor["seal"])),
        )

    async def verify_chain(self, person_token: str) -> ChainVerdict:
        """Recompute the person's chain and compare it with the stored hashes and head.

        The database alone: it cannot tell a chain rewritten together with its
        head (:mod:`infra.records.records_verify` checks seals and checkpoints too).
        """
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state = await self.chain_state(conn, person_token)
        head = None if state.head is None else (state.head.seq, state.head.last_hash)
        return verify_records(state.records, head, state.start)

    async def purge(self, conn: asyncpg.Connection, *, before: datetime, chunk: int = 1000) -> PurgeResult:
        """Remove, from every chain, the records older than ``before`` (by :func:`record_time`), oldest first.

        Only a prefix of a chain goes: records up to the first one at or after
        ``before``.  Each purged chain gets a sealed :class:`Anchor` (its last
        purged seq and hash), so what remains still verifies and a later
        deletion or alteration is still detected.  A chain whose purged part or
        existing anchor does not verify is left whole (evidence is not
        destroyed).  Runs inside the caller's transaction (which writes the ops
        audit event before it commits).
        """
        key = self._signing_key("purge")
        if not conn.is_in_transaction():
            raise RuntimeError("ProvisionStore.purge must run inside the caller's transaction")
        before = _as_utc_to_the_ms("before", before)
        verifier = key.public()
        candidates = [(r["person_token"], r["upto"]) for r in await conn.fetch(_PURGE_CANDIDATES, before)]
        chains = removed = kept = 0
        for i in range(0, len(candidates), chunk):
            part = dict(candidates[i:i + chunk])
            tokens = list(part)
            rows = await conn.fetch(
                f"{_SELECT} JOIN unnest($1::text[], $2::bigint[]) AS u(p, upto) ON person_token = u.p "
                "AND seq <= u.upto + 1 ORDER BY person_token, seq", tokens, [part[t] for t in tokens])
            anchors = {r["person_token"]: r for r in await conn.fetch(
                "SELECT person_token, seq, last_hash, purged_before, seal FROM provision_chain_anchors "
                "WHERE person_token = ANY($1::text[]) FOR UPDATE", tokens)}
            by_person: dict[str, list[ProvisionRecord]] = {t: [] for t in tokens}
            for row in rows:
                by_person[row["person_token"]].append(record_from_row(row))
            purged: list[tuple[str, int, bytes]] = []
            for token in tokens:
                upto, records = part[token], by_person[token]
                old = anchors.get(token)
                start = (0, GENESIS_HASH)
                if old is not None:
                    start = (old["seq"], bytes(old["last_hash"]))
                    statement = anchor_statement(token, *start, old["purged_before"])
                    if not verifier.check(ANCHOR_DOMAIN, statement, Seal.from_bytes(old["seal"])):
                        kept += 1
                        continue
                prefix = [r for r in records if r.seq <= upto]
                walk = walk_chain(prefix, start)
                following = [r for r in records if r.seq == upto + 1]
                if walk.problems or walk.last_seq != upto or (following and following[0].prev_hash != walk.last_hash):
                    kept += 1
                    continue
                purged.append((token, upto, walk.last_hash))
                removed += len(prefix)
            if not purged:
                continue
            seals = key.seal(ANCHOR_DOMAIN, [anchor_statement(t, s, h, before) for t, s, h in purged])
            await conn.executemany(
                "INSERT INTO provision_chain_anchors (person_token, seq, last_hash, purged_before, seal) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (person_token) DO UPDATE SET seq = $2, last_hash = $3, "
                "purged_before = $4, purged_at = now(), seal = $5",
                [(t, s, h, before, seal.to_bytes()) for (t, s, h), seal in zip(purged, seals, strict=True)])
            await conn.execute(
                "DELETE FROM provision_records USING unnest($1::text[], $2::bigint[]) AS u(p, upto) "
                "WHERE person_token = u.p AND seq <= u.upto", [t for t, _, _ in purged], [s for _, s, _ in purged])
            chains += len(purged)
        return PurgeResult(before=before, chains=chains, records=removed, kept=kept)


def verify_records(records: Sequence[ProvisionRecord], head: tuple[int, bytes] | None,
            start: tuple[int, bytes] = (0, GENESIS_HASH)) -> ChainVerdict:
    walk = walk_chain(records, start)
    problems = [p.text for p in walk.problems]
    last_seq = walk.last_seq
    if head is None:
        if records:
            problems.append("no chain head for this person (head deleted)")
    else:
        head_seq, head_hash = head
        if head_seq > last_seq:
            problems.append(f"head says seq {head_seq}, last record is {last_seq} (tail deleted)")
        elif head_seq < last_seq:
            problems.append(f"head says seq {head_seq}, last record is {last_seq} (records added outside the store)")
        elif head_hash != walk.last_hash:
            problems.append(f"head hash does not match seq {last_seq} (altered)")
    return ChainVerdict(ok=not problems, checked=len(records), problems=problems)
