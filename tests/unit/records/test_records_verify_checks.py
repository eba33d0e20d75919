"""The portal's verdict (``infra.records.records_verify.judge``), one attack on the database per test (pure logic).

Each test plays what a database operator could do to a person's records — delete, truncate, re-chain, move
the head, lose the checkpoint state — and checks the verdict names it, located by sequence numbers, and
that only the records still linked to a proof point (the signed checkpoint or the sealed head) are shown
as verified. Written for the mutation score (docs/testing.md, "Mutation testing"); the chain and
checkpoint helpers are those of ``test_records_checkpoints.py``.
"""

from __future__ import annotations

import dataclasses

from infra.crypto.records_keys import RecordsKey
from infra.records.checkpoints import CheckpointEvidence
from infra.records.provisions import (
    ANCHOR_DOMAIN,
    GENESIS_HASH,
    HEAD_DOMAIN,
    Anchor,
    ChainState,
    Head,
    anchor_statement,
    bucket_of,
    head_statement,
)
from infra.records.records_verify import CheckpointSeen, RecordState, Verdict, judge
from tests.unit.records.test_records_checkpoints import (
    KEY,
    KEYS,
    T0,
    TOKEN,
    chain,
    checkpoint,
    evidence,
    record,
    sealed_head,
)

S = RecordState
NO_EVIDENCE = CheckpointEvidence(None, bucket_of(TOKEN), [], {})


def head_at(seq: int, last_hash: bytes, cp: tuple[int, bytes] = (0, GENESIS_HASH), key: RecordsKey = KEY) -> Head:
    """A head at ``(seq, last_hash)`` sealed by ``key`` (the records key unless said otherwise)."""
    [seal] = key.seal(HEAD_DOMAIN, [head_statement(TOKEN, seq, last_hash)])
    return Head(seq, last_hash, seal, *cp)


def anchor_at(seq: int, last_hash: bytes) -> Anchor:
    [seal] = KEY.seal(ANCHOR_DOMAIN, [anchor_statement(TOKEN, seq, last_hash, T0)])
    return Anchor(seq, last_hash, T0, seal)


def states(verdict) -> list[RecordState]:
    return [verdict.states[r.seq] for r in verdict.records]


# --------------------------------------------------------------------------- the verdict's record


def test_a_clean_chain_is_ok_and_says_which_checkpoint_proved_it():
    records = chain(3)
    ev, published = evidence(3, records[2].hash, number=4)
    verdict = judge(ChainState(TOKEN, records, sealed_head(records, cp=3), None), ev, published, KEYS)
    assert (verdict.verdict, verdict.problems, verdict.ok, verdict.pending) == (Verdict.OK, [], True, 0)
    assert verdict.checkpoint == CheckpointSeen(4, T0, True)
    assert verdict.records == records and verdict.purged_before is None
    assert states(verdict) == [S.CHECKPOINTED] * 3


def test_pending_is_ok_and_tampered_is_not():
    records = chain(2)
    pending = judge(ChainState(TOKEN, records, sealed_head(records), None), NO_EVIDENCE, None, KEYS)
    assert (pending.verdict, pending.ok, pending.pending) == (Verdict.PENDING, True, 2)
    tampered = judge(ChainState(TOKEN, records[:1], sealed_head(records), None), NO_EVIDENCE, None, KEYS)
    assert (tampered.verdict, tampered.ok, tampered.pending) == (Verdict.TAMPERED, False, 0)


def test_a_person_without_records_is_ok():
    verdict = judge(ChainState(TOKEN, [], None, None), NO_EVIDENCE, None, KEYS)
    assert (verdict.verdict, verdict.problems, verdict.states, verdict.checkpoint) == (Verdict.OK, [], {}, None)


# --------------------------------------------------------------------------- which checkpoint counts


def test_checkpoint_state_deleted_from_the_database_while_one_is_published():
    records = chain(2)
    state = ChainState(TOKEN, records, sealed_head(records), None)
    verdict = judge(state, NO_EVIDENCE, checkpoint(number=3), KEYS)
    assert verdict.problems == [
        "checkpoint #3 is published but the database holds no checkpoint (checkpoint state deleted)"]
    assert verdict.verdict is Verdict.TAMPERED and verdict.checkpoint is None
    assert states(verdict) == [S.UNVERIFIED] * 2  # the head's seal alone proves nothing once the proof is gone


def test_evidence_that_no_longer_reproduces_the_signed_root():
    records = chain(4)
    ev, published = evidence(3, records[2].hash)
    state = ChainState(TOKEN, records, sealed_head(records, cp=3), None)
    expected = ["the database no longer proves checkpoint #1: checkpointed heads were altered, moved or deleted"]
    for heads in ([(TOKEN, 2, records[1].hash)], [(TOKEN, 3, records[1].hash)], []):  # moved, altered, deleted
        verdict = judge(state, dataclasses.replace(ev, heads=heads), published, KEYS)
        assert verdict.problems == expected, heads
        assert verdict.checkpoint == CheckpointSeen(1, T0, True)
        assert states(verdict) == [S.UNVERIFIED] * 4, heads
    other_bucket = dataclasses.replace(ev, bucket_roots={**ev.bucket_roots, (ev.bucket + 1) % 4096: bytes(32)})
    assert judge(state, other_bucket, published, KEYS).problems == expected


# --------------------------------------------------------------------------- records the checkpoint covers


def test_a_truncation_back_to_an_old_sealed_head_is_caught_by_the_checkpoint():
    records = chain(5)
    ev, published = evidence(5, records[4].hash)
    # the operator deletes seq 4-5 and puts back the head (and its genuine seal) as it was at seq 3
    state = ChainState(TOKEN, records[:3], head_at(3, records[2].hash, cp=(5, records[4].hash)), None)
    verdict = judge(state, ev, published, KEYS)
    assert verdict.problems == ["seq 4-5 missing: checkpoint #1 covers them (deleted)",
                                "the chain head is at seq 3, before checkpoint #1 (seq 5) (moved head)"]
    assert states(verdict) == [S.UNVERIFIED] * 3
    state = ChainState(TOKEN, records[:4], head_at(4, records[3].hash), None)
    assert judge(state, ev, published, KEYS).problems == [
        "seq 5 missing: checkpoint #1 covers them (deleted)",
        "the chain head is at seq 4, before checkpoint #1 (seq 5) (moved head)"]
    # the head put back further than the records left: the checkpoint proves nothing of seq 3 any more
    state = ChainState(TOKEN, records[:3], head_at(2, records[1].hash), None)
    assert judge(state, ev, published, KEYS).problems == [
        "seq 4-5 missing: checkpoint #1 covers them (deleted)",
        "the chain head is at seq 2, before checkpoint #1 (seq 5) (moved head)",
        "seq 3: after the chain head (records added outside the store)"]


def test_a_chain_rewritten_after_its_checkpoint():
    original = chain(5)
    ev, published = evidence(3, original[2].hash)
    rewritten, prev = [], GENESIS_HASH  # every record re-hashed and re-linked: the chain walk finds nothing
    for seq in range(1, 6):
        rewritten.append(record(seq, prev, not_disclosed=True))
        prev = rewritten[-1].hash
    verdict = judge(ChainState(TOKEN, rewritten, sealed_head(rewritten, cp=3), None), ev, published, KEYS)
    assert verdict.problems == ["the records up to seq 3 are not the ones checkpoint #1 covers (rewritten)"]
    assert states(verdict) == [S.UNVERIFIED] * 3 + [S.PENDING] * 2  # the sealed head still proves 4-5


def test_a_problem_at_the_proof_point_leaves_the_records_before_it_unverified():
    records = chain(5)
    ev, published = evidence(5, records[4].hash)
    altered = records[:4] + [dataclasses.replace(records[4], requester="agency-mhlw")]  # seq 5 altered in place
    verdict = judge(ChainState(TOKEN, altered, sealed_head(records, cp=5), None), ev, published, KEYS)
    assert verdict.problems == ["seq 5: hash mismatch (altered)"]
    assert states(verdict) == [S.UNVERIFIED] * 4 + [S.TAMPERED]
    altered = [dataclasses.replace(records[0], requester="agency-mhlw")] + records[1:]
    verdict = judge(ChainState(TOKEN, altered, sealed_head(records, cp=5), None), ev, published, KEYS)
    assert states(verdict) == [S.TAMPERED] + [S.CHECKPOINTED] * 4  # later records are still linked to the proof


# --------------------------------------------------------------------------- the retention anchor


def test_a_checkpoint_exactly_at_the_retention_anchor():
    old = chain(3)
    rest = chain(2, start=(3, old[-1].hash))
    ev, published = evidence(3, old[-1].hash)
    state = ChainState(TOKEN, rest, sealed_head(rest, cp=3), anchor_at(3, old[-1].hash))
    verdict = judge(state, ev, published, KEYS)
    assert (verdict.verdict, verdict.problems, verdict.purged_before) == (Verdict.PENDING, [], T0)
    assert states(verdict) == [S.PENDING] * 2
    ev, published = evidence(3, b"\x05" * 32)  # the checkpoint saw another seq 3 than the one the anchor names
    verdict = judge(state, ev, published, KEYS)
    assert verdict.problems == ["the retention anchor does not match checkpoint #1 (altered)"]
    assert verdict.verdict is Verdict.TAMPERED


def test_a_purge_past_the_latest_checkpoint_is_no_tampering():
    old = chain(3)
    rest = chain(2, start=(3, old[-1].hash))
    ev, published = evidence(2, old[1].hash)  # checkpointed at seq 2; the purge then removed 1-3
    state = ChainState(TOKEN, rest, sealed_head(rest), anchor_at(3, old[-1].hash))
    verdict = judge(state, ev, published, KEYS)
    assert (verdict.verdict, verdict.problems) == (Verdict.PENDING, [])
    assert states(verdict) == [S.PENDING] * 2


def test_an_anchor_sealed_by_another_key_is_a_deletion():
    old = chain(3)
    rest = chain(2, start=(3, old[-1].hash))
    [seal] = RecordsKey.generate().seal(ANCHOR_DOMAIN, [anchor_statement(TOKEN, 3, old[-1].hash, T0)])
    state = ChainState(TOKEN, rest, sealed_head(rest), Anchor(3, old[-1].hash, T0, seal))
    verdict = judge(state, NO_EVIDENCE, None, KEYS)
    assert verdict.problems == ["seq 1-3 removed without a signed retention anchor (deleted)"]
    assert states(verdict) == [S.PENDING] * 2  # what is left still links to the sealed head


# --------------------------------------------------------------------------- the chain head


def test_a_deleted_head():
    records = chain(2)
    assert judge(ChainState(TOKEN, records, None, None), NO_EVIDENCE, None, KEYS).problems == [
        "no chain head for this person (head deleted)"]
    old = chain(3)
    only_anchor = ChainState(TOKEN, [], None, anchor_at(3, old[-1].hash))  # every record purged, head deleted
    assert judge(only_anchor, NO_EVIDENCE, None, KEYS).problems == ["no chain head for this person (head deleted)"]
    ev, published = evidence(2, records[1].hash)  # everything deleted, but the checkpoint covered two records
    assert judge(ChainState(TOKEN, [], None, None), ev, published, KEYS).problems == [
        "seq 1-2 missing: checkpoint #1 covers them (deleted)", "no chain head for this person (head deleted)"]


def test_a_head_not_sealed_by_the_records_key():
    records = chain(3)
    ev, published = evidence(2, records[1].hash)
    for head in (head_at(3, records[2].hash, key=RecordsKey.generate()),
                 dataclasses.replace(sealed_head(records), seal=None)):
        verdict = judge(ChainState(TOKEN, records, head, None), ev, published, KEYS)
        assert verdict.problems == ["the chain head is not signed by the records key (moved head)"]
        assert states(verdict) == [S.CHECKPOINTED] * 2 + [S.UNVERIFIED]  # seq 3 has no proof left


def test_a_deleted_tail():
    records = chain(5)
    for kept, text in ((3, "seq 4-5 missing (tail deleted)"), (4, "seq 5 missing (tail deleted)")):
        verdict = judge(ChainState(TOKEN, records[:kept], sealed_head(records), None), NO_EVIDENCE, None, KEYS)
        assert verdict.problems == [text]
        assert states(verdict) == [S.UNVERIFIED] * kept


def test_records_added_after_the_head():
    records = chain(5)
    verdict = judge(ChainState(TOKEN, records, sealed_head(records[:3]), None), NO_EVIDENCE, None, KEYS)
    assert verdict.problems == ["seq 4-5: after the chain head (records added outside the store)"]
    assert states(verdict) == [S.UNVERIFIED] * 3 + [S.TAMPERED] * 2
    verdict = judge(ChainState(TOKEN, records, sealed_head(records[:4]), None), NO_EVIDENCE, None, KEYS)
    assert verdict.problems == ["seq 5: after the chain head (records added outside the store)"]


def test_a_head_moved_back_below_the_checkpoint_does_not_unprove_what_it_covers():
    records = chain(5)
    ev, published = evidence(5, records[4].hash)
    verdict = judge(ChainState(TOKEN, records, sealed_head(records[:3]), None), ev, published, KEYS)
    assert verdict.problems == ["the chain head is at seq 3, before checkpoint #1 (seq 5) (moved head)"]
    assert states(verdict) == [S.CHECKPOINTED] * 5  # the checkpoint covers 4-5: they are not the extra records
    ev, published = evidence(4, records[3].hash)
    verdict = judge(ChainState(TOKEN, records, sealed_head(records[:3]), None), ev, published, KEYS)
    assert verdict.problems == ["the chain head is at seq 3, before checkpoint #1 (seq 4) (moved head)",
                                "seq 5: after the chain head (records added outside the store)"]
    assert states(verdict) == [S.CHECKPOINTED] * 4 + [S.TAMPERED]


def test_a_head_that_does_not_match_the_last_record():
    records = chain(3)
    wrong = head_at(3, b"\x09" * 32)  # sealed, at the right seq, over another hash
    ev, published = evidence(3, records[2].hash)
    verdict = judge(ChainState(TOKEN, records, wrong, None), ev, published, KEYS)
    assert verdict.problems == ["the chain head does not match seq 3 (moved head)"]
    assert states(verdict) == [S.CHECKPOINTED] * 3  # the checkpoint covers the last record: the head moved
    verdict = judge(ChainState(TOKEN, records, wrong, None), NO_EVIDENCE, None, KEYS)
    assert verdict.problems == ["seq 3: does not match the chain head (altered)"]
    assert states(verdict) == [S.UNVERIFIED] * 2 + [S.TAMPERED]
    ev, published = evidence(2, records[1].hash)
    verdict = judge(ChainState(TOKEN, records, wrong, None), ev, published, KEYS)
    assert verdict.problems == ["seq 3: does not match the chain head (altered)"]
    assert states(verdict) == [S.CHECKPOINTED] * 2 + [S.TAMPERED]
