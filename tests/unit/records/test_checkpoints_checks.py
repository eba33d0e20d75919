"""Signed checkpoints (``infra.records.checkpoints``): what opens, what is refused, what the tree commits to (pure logic).

Written for the mutation score (docs/testing.md, "Mutation testing"): each test names a property a forged or
altered checkpoint, or a moved head, would break.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from infra.crypto.records_keys import RecordsKey
from infra.records.checkpoints import (
    BUCKETS,
    CHECKPOINT_DOMAIN,
    CheckpointError,
    CheckpointEvidence,
    bucket_root,
    checkpoint_leaf,
    empty_bucket_root,
    open_checkpoint,
    sign_checkpoint,
    tree_levels,
    tree_root,
)
from infra.records.provisions import GENESIS_HASH, HEAD_DOMAIN, bucket_of, person_key
from schemas import codec
from tests.unit.records.test_records_checkpoints import KEY, KEYS, T0, TOKEN

BODY = {"number": 2, "issued_at": T0, "root": b"\x07" * 32, "buckets": BUCKETS, "chains": 3, "records": 11,
        "previous": b"\x08" * 32}


def signed(body: dict | bytes, key: RecordsKey = KEY, domain: bytes = CHECKPOINT_DOMAIN,
           key_id: str | None = None) -> bytes:
    """A signed_provision_checkpoint around ``body`` (a provision_checkpoint record, or raw bytes)."""
    raw = body if isinstance(body, bytes) else codec.encode("provision_checkpoint", body)
    return codec.encode("signed_provision_checkpoint", {
        "checkpoint": raw, "key_id": key.key_id if key_id is None else key_id, "signature": key.sign(domain, raw)})


def test_sign_and_open_carry_every_field():
    made = sign_checkpoint(KEY, number=2, issued_at=T0, root=b"\x07" * 32, chains=3, records=11,
                           previous=b"\x08" * 32)
    for cp in (made, open_checkpoint(made.signed, KEYS)):
        assert (cp.number, cp.issued_at, cp.root, cp.buckets, cp.chains, cp.records, cp.previous, cp.key_id) == (
            2, T0, b"\x07" * 32, BUCKETS, 3, 11, b"\x08" * 32, KEY.key_id)
        assert cp.signed == made.signed and cp.body == made.body
        assert cp.digest == hashlib.sha256(made.body).digest()  # what the next checkpoint names as previous
    assert codec.decode(made.body, "provision_checkpoint") == BODY
    assert open_checkpoint(bytearray(made.signed), KEYS).signed == made.signed  # as a database driver hands it


def test_a_checkpoint_signed_for_another_purpose_or_by_an_unknown_key_id_is_refused():
    words = "^checkpoint signature does not verify with a trusted records key$"  # what the operator reads
    with pytest.raises(CheckpointError, match=words):
        open_checkpoint(signed(BODY, domain=HEAD_DOMAIN), KEYS)  # a head seal's signature over the same bytes
    with pytest.raises(CheckpointError, match=words):
        open_checkpoint(signed(BODY, key_id="records-0000"), KEYS)
    assert open_checkpoint(signed(BODY), KEYS).number == 2


def test_a_signed_body_that_is_not_a_checkpoint_is_refused_without_echoing_it():
    with pytest.raises(CheckpointError, match=r"not a signed provision checkpoint \(") as caught:
        open_checkpoint(signed(b"\xc3\x01" + bytes(8) + b"junk-body"), KEYS)
    assert "junk-body" not in str(caught.value)
    with pytest.raises(CheckpointError, match="not a signed provision checkpoint"):
        open_checkpoint(b"\xc3\x01" + bytes(8), KEYS)


def test_a_record_of_another_schema_is_refused_outside_or_inside_the_signature():
    body = codec.encode("provision_checkpoint", BODY)
    with pytest.raises(CheckpointError, match="not a signed provision checkpoint"):
        open_checkpoint(body, KEYS)  # the bare checkpoint where the signed one belongs
    wrapper = codec.encode("signed_provision_checkpoint", {"checkpoint": body, "key_id": "k", "signature": b""})
    with pytest.raises(CheckpointError, match="not a signed provision checkpoint"):
        open_checkpoint(signed(wrapper), KEYS)  # validly signed, but a wrapper inside the wrapper


@pytest.mark.parametrize("change", [{"number": 0}, {"number": -1}, {"buckets": BUCKETS // 2},
                                    {"buckets": BUCKETS * 2}, {"root": b"\x07" * 31}, {"root": b"\x07" * 33},
                                    {"previous": b"\x08" * 31}, {"previous": b""}])
def test_a_validly_signed_checkpoint_with_unusable_fields_is_refused(change):
    with pytest.raises(CheckpointError, match="^signed checkpoint has fields this verifier cannot use$"):
        open_checkpoint(signed({**BODY, **change}), KEYS)


def test_the_first_checkpoint_opens():
    assert open_checkpoint(signed({**BODY, "number": 1, "previous": GENESIS_HASH}), KEYS).number == 1


def test_a_leaf_is_the_documented_encoding():
    """H(0x00 || items(tag, person_key, seq, hash)): what an auditor recomputes from the module docstring."""
    def item(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    items = item(b"renkei.checkpoint_head.v1") + item(person_key(TOKEN)) + item((3).to_bytes(8, "big")) + item(
        b"\x01" * 32)
    assert checkpoint_leaf(TOKEN, 3, b"\x01" * 32) == hashlib.sha256(b"\x00" + items).digest()


def test_a_leaf_commits_to_the_person_the_seq_and_the_hash():
    leaf = checkpoint_leaf(TOKEN, 3, b"\x01" * 32)
    assert len(leaf) == 32
    assert leaf == checkpoint_leaf(TOKEN, 3, b"\x01" * 32)
    assert len({leaf, checkpoint_leaf(TOKEN + "x", 3, b"\x01" * 32), checkpoint_leaf(TOKEN, 4, b"\x01" * 32),
                checkpoint_leaf(TOKEN, 3, b"\x02" * 32)}) == 4


def test_a_bucket_root_counts_every_checkpointed_head_from_seq_one():
    bucket = bucket_of(TOKEN)
    one = bucket_root(bucket, [(TOKEN, 1, b"\x01" * 32)])
    assert one != empty_bucket_root(bucket)
    assert one != bucket_root(bucket, [(TOKEN, 2, b"\x01" * 32)]) != bucket_root(bucket, [(TOKEN, 1, b"\x02" * 32)])
    assert bucket_root(bucket, [(TOKEN, 1, b"\x01" * 32), ("someone-else", 0, GENESIS_HASH)]) == one
    assert bucket_root(bucket + 1, [(TOKEN, 1, b"\x01" * 32)]) != one  # the header names the bucket
    two = [(TOKEN, 1, b"\x01" * 32), ("someone-else", 5, b"\x05" * 32)]
    assert bucket_root(bucket, two) != one and bucket_root(bucket, two) == bucket_root(bucket, two[::-1])


def test_the_tree_has_one_leaf_per_bucket_and_halves_to_one_root():
    levels = tree_levels({})
    assert [len(level) for level in levels] == [BUCKETS >> d for d in range(13)]
    assert levels[0][5] != levels[0][6]  # every empty bucket differs: its header names it
    roots = {7: b"\x07" * 32}
    assert tree_root(roots) != tree_root({}) and tree_root(roots) != tree_root({8: b"\x07" * 32})
    assert tree_root({7: empty_bucket_root(7)}) == tree_root({})


def evidence_with(heads, bucket=None, roots=None, signed_bytes=b"x") -> CheckpointEvidence:
    return CheckpointEvidence(signed_bytes, bucket_of(TOKEN) if bucket is None else bucket, heads, roots or {})


def test_evidence_proves_the_person_s_head_and_ignores_rows_of_other_buckets():
    bucket = bucket_of(TOKEN)
    stranger = next(t for t in (f"t{n}" for n in range(1000)) if bucket_of(t) != bucket)
    mine = [(TOKEN, 4, b"\x04" * 32)]
    root, head = evidence_with(mine).root_for(TOKEN)
    assert head == (4, b"\x04" * 32) and root == tree_root({bucket: bucket_root(bucket, mine)})
    with_stranger = evidence_with(mine + [(stranger, 9, b"\x09" * 32)])
    assert with_stranger.root_for(TOKEN) == (root, head)  # a row of another bucket is not in this bucket's root
    assert evidence_with([]).root_for(TOKEN) == (tree_root({}), (0, GENESIS_HASH))
    neighbour = [n for n in (f"n{k}" for k in range(100_000)) if bucket_of(n) == bucket][0]
    assert evidence_with([(neighbour, 2, b"\x02" * 32)]).root_for(TOKEN)[1] == (0, GENESIS_HASH)


def test_evidence_uses_the_stored_roots_of_the_other_buckets_and_recomputes_its_own():
    bucket = bucket_of(TOKEN)
    mine = [(TOKEN, 4, b"\x04" * 32)]
    stale = {bucket: b"\xee" * 32, (bucket + 1) % BUCKETS: b"\x0b" * 32}  # its own stored root is not trusted
    root, _ = evidence_with(mine, roots=stale).root_for(TOKEN)
    assert root == tree_root({bucket: bucket_root(bucket, mine), (bucket + 1) % BUCKETS: b"\x0b" * 32})
    assert stale[bucket] == b"\xee" * 32  # the evidence's own mapping is not changed by asking


def test_issued_at_is_kept_to_the_millisecond():
    made = sign_checkpoint(KEY, number=1, issued_at=T0 + timedelta(milliseconds=7), root=bytes(32), chains=0,
                           records=0, previous=GENESIS_HASH)
    assert open_checkpoint(made.signed, KEYS).issued_at == T0 + timedelta(milliseconds=7)
