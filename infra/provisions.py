"""Provision records (情報提供等記録, 番号法 §23), hash-chained per person.

Every inquiry and provision the policy marks ``records`` produces one
:class:`ProvisionRecord`: who asked whom for which data item, under which
legal basis, when, and whether it is withheld from the person (不開示). The
records of one person (keyed by their token in the portal's token space) form
a chain: record ``n`` carries ``seq = n``, the hash of record ``n - 1`` as
``prev_hash`` (32 zero bytes for the first) and

    hash = SHA-256(prev_hash || canonical_bytes(record))

so deleting, inserting or altering a record is detected by
:meth:`ProvisionStore.verify_chain`. ``provision_chain_heads`` holds each
person's last seq and hash, so deleting the tail is detected too.

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

from infra.errors import Reason, Rejection
from infra.storage import migrate

__all__ = [
    "CANONICAL_TAG",
    "GENESIS_HASH",
    "PROVISION_MIGRATIONS",
    "ChainVerdict",
    "ProvisionRecord",
    "ProvisionStatus",
    "ProvisionStore",
    "RecordDraft",
    "canonical_bytes",
    "chain_hash",
    "from_avro",
    "to_avro",
]

GENESIS_HASH: Final = bytes(32)
CANONICAL_TAG: Final = b"renkei.provision_record.v1"  # domain separation, bumped if the encoding changes
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS: Final = timedelta(milliseconds=1)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-]+={0,2}")  # base64url, padding optional


class ProvisionStatus(str, Enum):
    """The provision_record schema's status symbols (UNKNOWN is never written)."""

    REQUESTED = "REQUESTED"  # inquiry forwarded
    PROVIDED = "PROVIDED"  # answer delivered
    NOT_REGISTERED = "NOT_REGISTERED"  # nothing to provide
    REFUSED = "REFUSED"  # rejected
    NO_ANSWER = "NO_ANSWER"  # deadline passed


def _refuse(what: str) -> Rejection:
    return Rejection(Reason.RECORD_FAILED, f"provision record: {what}")


def _as_uuid(name: str, value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value if type(value) is uuid.UUID else uuid.UUID(bytes=value.bytes)
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise _refuse(f"{name} is not a UUID") from None


def _as_utc_ms(name: str, value: Any) -> datetime:
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

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "message_id", _as_uuid("message_id", self.message_id))
        put(self, "correlation_id", _as_uuid("correlation_id", self.correlation_id))
        if not isinstance(self.person_token, str) or not _TOKEN_RE.fullmatch(self.person_token):
            raise _refuse("person_token must be a non-empty base64url string")
        for name in ("requester", "provider", "data_item", "legal_basis"):
            _as_text(name, getattr(self, name))
        put(self, "requested_at", _as_utc_ms("requested_at", self.requested_at))
        if self.provided_at is not None:
            put(self, "provided_at", _as_utc_ms("provided_at", self.provided_at))
        try:
            put(self, "status", ProvisionStatus(self.status))
        except ValueError:
            raise _refuse(f"status must be one of {', '.join(s.value for s in ProvisionStatus)}") from None
        if not isinstance(self.not_disclosed, bool):
            raise _refuse("not_disclosed must be a bool")

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
            seq=seq, prev_hash=prev_hash, hash=digest,
        )


# --- canonical encoding and hash ----------------------------------------------


def canonical_bytes(record: ProvisionRecord) -> bytes:
    """The bytes the hash covers: every field but ``prev_hash`` and ``hash``, in a fixed order.

    Each item is a 4-byte big-endian length followed by its bytes, so no two
    different records encode the same: ``CANONICAL_TAG``, record_id,
    message_id, correlation_id (16 raw bytes each), person_token (ASCII),
    requester, provider, data_item, legal_basis (UTF-8), requested_at (8-byte
    signed big-endian epoch milliseconds), provided_at (same, or zero-length
    when absent), status (its ASCII symbol), not_disclosed (one byte 0/1),
    seq (8-byte unsigned big-endian).
    """
    return _canonical(record, record.record_id, record.seq)


_pack_len = struct.Struct(">I").pack
_pack_ms = struct.Struct(">q").pack
_pack_seq = struct.Struct(">Q").pack
_TAG_ITEM: Final = _pack_len(len(CANONICAL_TAG)) + CANONICAL_TAG
_LEN0, _LEN1, _LEN8, _LEN16 = (_pack_len(n) for n in (0, 1, 8, 16))


def _text(value: str, encoding: str = "utf-8") -> bytes:
    data = value.encode(encoding)
    return _pack_len(len(data)) + data


def _canonical(src: RecordDraft | ProvisionRecord, record_id: uuid.UUID, seq: int) -> bytes:
    # Same layout as the canonical_bytes docstring; fixed-size lengths are precomputed.
    provided = src.provided_at
    return b"".join((
        _TAG_ITEM,
        _LEN16, record_id.bytes,
        _LEN16, src.message_id.bytes,
        _LEN16, src.correlation_id.bytes,
        _text(src.person_token, "ascii"),
        _text(src.requester),
        _text(src.provider),
        _text(src.data_item),
        _text(src.legal_basis),
        _LEN8, _pack_ms((src.requested_at - _EPOCH) // _MS),
        _LEN0 if provided is None else _LEN8 + _pack_ms((provided - _EPOCH) // _MS),
        _text(ProvisionStatus(src.status).value, "ascii"),
        _LEN1, b"\x01" if src.not_disclosed else b"\x00",
        _LEN8, _pack_seq(seq),
    ))


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """``SHA-256(prev_hash || canonical)``; ``prev_hash`` is always 32 bytes."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    return hashlib.sha256(prev_hash + canonical).digest()


# --- Avro ----------------------------------------------------------------------


def to_avro(record: ProvisionRecord) -> dict[str, Any]:
    """The record as a ``provision_record`` Avro datum (for ``schemas.codec.encode``)."""
    return {
        "record_id": record.record_id,
        "message_id": record.message_id,
        "correlation_id": record.correlation_id,
        "person_token": record.person_token.encode("ascii"),
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
    }


def from_avro(datum: dict[str, Any], *, seq: int) -> ProvisionRecord:
    """A record from a decoded ``provision_record`` datum; ``seq`` travels outside the schema.

    The v1 schema has no seq field: consumers (the portal, auditors) take it
    from the Kafka record or count the person's records; the hash covers it.
    """
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
    )


# --- PostgreSQL ------------------------------------------------------------------

_STATUSES = ", ".join(f"'{s.value}'" for s in ProvisionStatus)

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
        status         text        NOT NULL CHECK (status IN ({_STATUSES})),
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
]

_COLUMNS: Final = (
    "record_id", "message_id", "correlation_id", "person_token", "requester", "provider",
    "data_item", "legal_basis", "requested_at", "provided_at", "status", "not_disclosed",
    "seq", "prev_hash", "hash",
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
UPDATE provision_chain_heads h SET seq = u.seq, last_hash = u.last_hash
FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(person_token, seq, last_hash)
WHERE h.person_token = u.person_token
"""

_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM provision_records"


def _from_row(row: asyncpg.Record) -> ProvisionRecord:
    return ProvisionRecord(
        record_id=_as_uuid("record_id", row["record_id"]),
        message_id=_as_uuid("message_id", row["message_id"]),
        correlation_id=_as_uuid("correlation_id", row["correlation_id"]),
        person_token=row["person_token"], requester=row["requester"], provider=row["provider"],
        data_item=row["data_item"], legal_basis=row["legal_basis"],
        requested_at=row["requested_at"], provided_at=row["provided_at"],
        status=ProvisionStatus(row["status"]), not_disclosed=row["not_disclosed"], seq=row["seq"],
        prev_hash=bytes(row["prev_hash"]), hash=bytes(row["hash"]),
    )


@dataclass(frozen=True)
class ChainVerdict:
    """Result of :meth:`ProvisionStore.verify_chain`. ``problems`` never name personal data."""

    ok: bool
    checked: int
    problems: list[str]


class ProvisionStore:
    """Provision records in PostgreSQL. ``append`` joins the caller's transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> list[int]:
        """Create or upgrade the tables (component ``provisions``)."""
        return await migrate(self._pool, "provisions", PROVISION_MIGRATIONS)

    async def append(self, conn: asyncpg.Connection, drafts: Iterable[RecordDraft]) -> list[ProvisionRecord]:
        """Chain and insert ``drafts``; return the records written now (already recorded ones are skipped).

        Must run inside the caller's open transaction on ``conn`` (with the
        message-id claim and before forwarding). Heads are locked in person
        order, so concurrent hub workers serialise per person and never
        deadlock. Raises what asyncpg raises; the caller rolls back and does
        not forward (fail closed).
        """
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
                      r.status.value, r.not_disclosed, r.seq, r.prev_hash, r.hash) for r in written],
        )
        moved = sorted({r.person_token for r in written})
        await conn.execute(_MOVE_HEADS, moved, [heads[p][0] for p in moved], [heads[p][1] for p in moved])
        return written

    async def for_person(self, person_token: str, *, include_not_disclosed: bool = False) -> list[ProvisionRecord]:
        """The person's records in chain order; 不開示 records only when asked for."""
        sql = f"{_SELECT} WHERE person_token = $1"
        if not include_not_disclosed:
            sql += " AND NOT not_disclosed"
        rows = await self._pool.fetch(sql + " ORDER BY seq", person_token)
        return [_from_row(r) for r in rows]

    async def by_message_ids(self, conn: asyncpg.Connection | asyncpg.Pool,
                             message_ids: Iterable[uuid.UUID | str]) -> list[ProvisionRecord]:
        """Records already written for these messages (e.g. to republish after a crash), by person and seq."""
        ids = sorted({_as_uuid("message_id", m) for m in message_ids})
        if not ids:
            return []
        rows = await conn.fetch(f"{_SELECT} WHERE message_id = ANY($1::uuid[]) ORDER BY person_token, seq", ids)
        return [_from_row(r) for r in rows]

    async def verify_chain(self, person_token: str) -> ChainVerdict:
        """Recompute the person's chain and compare it with the stored hashes and head."""
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(f"{_SELECT} WHERE person_token = $1 ORDER BY seq", person_token)
                head = await conn.fetchrow(
                    "SELECT seq, last_hash FROM provision_chain_heads WHERE person_token = $1", person_token)
        return _verify([_from_row(r) for r in rows], None if head is None else (head["seq"], bytes(head["last_hash"])))


def _verify(records: Sequence[ProvisionRecord], head: tuple[int, bytes] | None) -> ChainVerdict:
    problems: list[str] = []
    expected, prev_hash, last_seq = 1, GENESIS_HASH, 0
    for record in records:
        if record.seq < expected:
            problems.append(f"seq {record.seq}: duplicated (inserted)")
            continue
        if record.seq > expected:
            gap = f"{expected}" if record.seq == expected + 1 else f"{expected}-{record.seq - 1}"
            problems.append(f"seq {gap} missing (deleted)")
        elif record.prev_hash != prev_hash:
            problems.append(f"seq {record.seq}: prev_hash does not match seq {record.seq - 1} (chain broken)")
        if chain_hash(record.prev_hash, canonical_bytes(record)) != record.hash:
            problems.append(f"seq {record.seq}: hash mismatch (altered)")
        expected, prev_hash, last_seq = record.seq + 1, record.hash, record.seq
    if head is None:
        if records:
            problems.append("no chain head for this person (head deleted)")
    else:
        head_seq, head_hash = head
        if head_seq > last_seq:
            problems.append(f"head says seq {head_seq}, last record is {last_seq} (tail deleted)")
        elif head_seq < last_seq:
            problems.append(f"head says seq {head_seq}, last record is {last_seq} (records added outside the store)")
        elif head_hash != prev_hash:
            problems.append(f"head hash does not match seq {last_seq} (altered)")
    return ChainVerdict(ok=not problems, checked=len(records), problems=problems)
