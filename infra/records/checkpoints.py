"""Provision checkpoints: the format, the tree over every chain head, and the evidence a verifier reads.

A checkpoint commits to the head ``(seq, last hash)`` of every person's chain of
provision records at one moment, without naming anyone:

- each head is a leaf ``H(0x00 || items(tag, person_key, seq, hash))`` where
  ``person_key = SHA-256(tag || token)`` (:func:`infra.records.provisions.person_key`);
- the heads are spread over 4096 buckets by the first 12 bits of
  ``person_key``; a bucket's root is the RFC 9162 Merkle root (:mod:`infra.crypto.merkle`)
  over a header leaf naming the bucket and its heads sorted by ``person_key``;
- the checkpoint's root is the Merkle root over the 4096 bucket roots.

The published checkpoint (:class:`Checkpoint`, Avro ``provision_checkpoint``,
signed by the records key as ``signed_provision_checkpoint``) carries the root,
its number, the time, how many chains and records it covers and the hash of the
previous checkpoint — no token, no per-person value: nothing a participant
could link to anyone.  A person's inclusion is proven from the hub database
(:class:`CheckpointEvidence`: the rows of the person's bucket and the bucket
roots); a database operator who alters any of them no longer reproduces the
signed root.  Buckets keep both costs bounded: a checkpoint re-hashes only the
buckets whose heads moved, and a verifier reads one bucket (about
``chains / 4096`` rows) and the 4096 bucket roots.

Building and publishing: :mod:`infra.records.checkpoint_builder` (the hub).  Reading
the topic: :mod:`infra.records.checkpoint_log`.  A person's verdict:
:mod:`infra.records.records_verify`.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import asyncpg

from infra.core.errors import CodecError, RenkeiError
from infra.crypto import merkle
from infra.crypto.records_keys import RecordsKey, RecordsPublicKeys
from infra.records.provisions import BUCKET_BITS, GENESIS_HASH, bucket_of, encode_items, person_key
from schemas import codec

__all__ = [
    "BUCKETS",
    "CHECKPOINT_DOMAIN",
    "Checkpoint",
    "CheckpointError",
    "CheckpointEvidence",
    "bucket_root",
    "checkpoint_leaf",
    "empty_bucket_root",
    "open_checkpoint",
    "read_evidence",
    "sign_checkpoint",
    "tree_levels",
    "tree_root",
    "updated_root",
]

BUCKETS: Final = 1 << BUCKET_BITS
CHECKPOINT_DOMAIN: Final = b"renkei.provision_checkpoint.v1\x00"
_LEAF_TAG: Final = b"renkei.checkpoint_head.v1"
_BUCKET_TAG: Final = b"renkei.checkpoint_bucket.v1"
_SEQ = struct.Struct(">Q")
_BUCKET = struct.Struct(">H")


class CheckpointError(RenkeiError):
    """Bytes that are not a checkpoint signed by a trusted records key (the message names no value)."""


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint, as made by the hub and as read back from the topic or the database."""

    number: int
    issued_at: datetime
    root: bytes = field(repr=False)
    buckets: int
    chains: int
    records: int
    previous: bytes = field(repr=False)
    key_id: str
    signed: bytes = field(repr=False)  # the signed_provision_checkpoint bytes, as published
    body: bytes = field(repr=False)  # the provision_checkpoint bytes the key signed

    @property
    def digest(self) -> bytes:
        """SHA-256 of the checkpoint's bytes: what the next checkpoint names as ``previous``."""
        return hashlib.sha256(self.body).digest()


def sign_checkpoint(key: RecordsKey, *, number: int, issued_at: datetime, root: bytes, chains: int, records: int,
                    previous: bytes) -> Checkpoint:
    """Encode and sign a checkpoint with the records key."""
    body = codec.encode("provision_checkpoint", {
        "number": number, "issued_at": issued_at, "root": root, "buckets": BUCKETS, "chains": chains,
        "records": records, "previous": previous,
    })
    signed = codec.encode("signed_provision_checkpoint", {
        "checkpoint": body, "key_id": key.key_id, "signature": key.sign(CHECKPOINT_DOMAIN, body)})
    return _checkpoint(codec.decode(body, "provision_checkpoint"), key.key_id, signed, body)


def open_checkpoint(signed: bytes, keys: RecordsPublicKeys) -> Checkpoint:
    """The checkpoint in ``signed`` once its signature verifies with a trusted records key, else CheckpointError."""
    try:
        outer = codec.decode(bytes(signed), "signed_provision_checkpoint")
        body = bytes(outer["checkpoint"])
        if not keys.verify(outer["key_id"], CHECKPOINT_DOMAIN, body, bytes(outer["signature"])):
            raise CheckpointError("checkpoint signature does not verify with a trusted records key")
        inner = codec.decode(body, "provision_checkpoint")
    except CodecError as exc:
        raise CheckpointError(f"not a signed provision checkpoint ({exc.code})") from None
    if inner["number"] < 1 or inner["buckets"] != BUCKETS or len(inner["root"]) != 32 or len(inner["previous"]) != 32:
        raise CheckpointError("signed checkpoint has fields this verifier cannot use")
    return _checkpoint(inner, outer["key_id"], bytes(signed), body)


def _checkpoint(inner: dict, key_id: str, signed: bytes, body: bytes) -> Checkpoint:
    return Checkpoint(number=inner["number"], issued_at=inner["issued_at"], root=bytes(inner["root"]),
                      buckets=inner["buckets"], chains=inner["chains"], records=inner["records"],
                      previous=bytes(inner["previous"]), key_id=key_id, signed=signed, body=body)


# --- the tree -----------------------------------------------------------------------------------


def checkpoint_leaf(person_token: str, seq: int, last_hash: bytes) -> bytes:
    """The leaf hash of one checkpointed head (the person appears only as ``person_key``)."""
    return merkle.leaf_hash(encode_items(_LEAF_TAG, person_key(person_token), _SEQ.pack(seq), last_hash))


def bucket_root(bucket: int, heads: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Merkle root over the bucket's header leaf and its heads ``(token, seq, hash)`` sorted by person key.

    Heads with ``seq`` 0 (never checkpointed) are not in the tree.
    """
    ordered = sorted((person_key(t), t, s, h) for t, s, h in heads if s > 0)
    leaves = [merkle.leaf_hash(encode_items(_BUCKET_TAG, _BUCKET.pack(bucket)))]
    leaves += [checkpoint_leaf(t, s, h) for _, t, s, h in ordered]
    return merkle.build(leaves)[0]


@functools.cache
def empty_bucket_root(bucket: int) -> bytes:
    return bucket_root(bucket, ())


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()  # RFC 9162 interior node, as infra.crypto.merkle


def tree_levels(bucket_roots: Mapping[int, bytes]) -> list[list[bytes]]:
    """Every level of the top tree, leaves first. ``BUCKETS`` is a power of two: the RFC 9162 tree over it is
    the perfect binary tree, so a level is a list and a bucket's ancestors are found by halving its index."""
    level = [merkle.leaf_hash(bucket_roots.get(b) or empty_bucket_root(b)) for b in range(BUCKETS)]
    levels = [level]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def tree_root(bucket_roots: Mapping[int, bytes]) -> bytes:
    """The checkpoint root over all ``BUCKETS`` bucket roots (an absent bucket is empty)."""
    return tree_levels(bucket_roots)[-1][0]


def updated_root(levels: list[list[bytes]], changed: Mapping[int, bytes]) -> bytes:
    """The root once the buckets in ``changed`` get new roots: only their paths are re-hashed (``levels`` is
    updated in place)."""
    touched = set(changed)
    for b, root in changed.items():
        levels[0][b] = merkle.leaf_hash(root)
    for depth in range(1, len(levels)):
        touched = {i // 2 for i in touched}
        below = levels[depth - 1]
        for i in touched:
            levels[depth][i] = _node(below[2 * i], below[2 * i + 1])
    return levels[-1][0]


# --- the evidence in the hub database -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointEvidence:
    """What the database says about the latest checkpoint for one bucket (read in the verifier's snapshot)."""

    signed: bytes | None = field(repr=False)  # the latest checkpoint the hub made, as signed (None: none yet)
    bucket: int
    heads: list[tuple[str, int, bytes]] = field(repr=False)  # (token, cp_seq, cp_hash) of the bucket
    bucket_roots: dict[int, bytes] = field(repr=False)

    def root_for(self, person_token: str) -> tuple[bytes, tuple[int, bytes]]:
        """The root this evidence proves, and the person's checkpointed head ``(seq, hash)`` ((0, genesis): none)."""
        mine = [(t, s, h) for t, s, h in self.heads if bucket_of(t) == self.bucket]
        roots = dict(self.bucket_roots)
        roots[self.bucket] = bucket_root(self.bucket, mine)
        head = next(((s, h) for t, s, h in mine if t == person_token), (0, GENESIS_HASH))
        return tree_root(roots), head


async def read_evidence(conn: asyncpg.Connection, person_token: str) -> CheckpointEvidence:
    """The latest checkpoint row, the person's bucket and every bucket root (call inside the verifier's snapshot)."""
    bucket = bucket_of(person_token)
    signed = await conn.fetchval("SELECT signed FROM provision_checkpoints ORDER BY number DESC LIMIT 1")
    heads = await conn.fetch("SELECT person_token, cp_seq, cp_hash FROM provision_chain_heads "
                             "WHERE bucket = $1 AND cp_seq > 0", bucket)
    roots = await conn.fetch("SELECT bucket, root FROM provision_checkpoint_buckets")
    return CheckpointEvidence(
        signed=None if signed is None else bytes(signed), bucket=bucket,
        heads=[(r["person_token"], r["cp_seq"], bytes(r["cp_hash"])) for r in heads],
        bucket_roots={r["bucket"]: bytes(r["root"]) for r in roots},
    )
