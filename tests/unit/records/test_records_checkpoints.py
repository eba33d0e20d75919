"""The records key, checkpoints and the person's verdict, without a database or a broker (pure logic)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.cli.records_cli import parse_before, retention_cutoff
from infra.core.errors import ConfigError
from infra.core.settings import load_settings
from infra.crypto.records_keys import RecordsKey, RecordsPublicKeys, Seal
from infra.records.checkpoints import (
    BUCKETS,
    CheckpointError,
    CheckpointEvidence,
    bucket_root,
    empty_bucket_root,
    open_checkpoint,
    sign_checkpoint,
    tree_levels,
    tree_root,
    updated_root,
)
from infra.records.provisions import (
    ANCHOR_DOMAIN,
    GENESIS_HASH,
    HEAD_DOMAIN,
    Anchor,
    ChainState,
    Head,
    ProvisionRecord,
    RecordDraft,
    anchor_statement,
    bucket_of,
    head_statement,
)
from infra.records.records_verify import RecordState, Verdict, judge

KEY = RecordsKey.generate()
KEYS = KEY.public()
T0 = datetime(2025, 4, 1, tzinfo=UTC)
TOKEN = "cGVyc29uLWluLXRoZS1wb3J0YWw"


# --------------------------------------------------------------------------- the records key


def test_a_seal_proves_each_statement_and_nothing_else():
    statements = [f"statement {n}".encode() for n in range(5)]
    seals = KEY.seal(HEAD_DOMAIN, statements)
    assert len({s.signature for s in seals}) == 1  # one signature for the batch
    for statement, seal in zip(statements, seals):
        assert KEYS.check(HEAD_DOMAIN, statement, seal)
        assert KEYS.check(HEAD_DOMAIN, statement, Seal.from_bytes(seal.to_bytes()))  # as the database keeps it
        assert not KEYS.check(ANCHOR_DOMAIN, statement, seal)  # another purpose
        assert not RecordsKey.generate().public().check(HEAD_DOMAIN, statement, seal)  # another key
    assert not KEYS.check(HEAD_DOMAIN, statements[1], seals[0])
    assert not KEYS.check(HEAD_DOMAIN, statements[0], dataclasses.replace(seals[0], index=1))
    assert not KEYS.check(HEAD_DOMAIN, statements[0], None)
    assert KEY.seal(HEAD_DOMAIN, []) == []


@pytest.mark.parametrize("data", [None, b"", b"\x01", b"\x02" + bytes(100), b"\x01\x05abc", bytes(300)])
def test_malformed_seals_are_none(data):
    assert Seal.from_bytes(data) is None


def test_a_truncated_or_padded_seal_is_not_a_seal():
    raw = KEY.seal(HEAD_DOMAIN, [b"a", b"b", b"c"])[0].to_bytes()
    assert Seal.from_bytes(raw[:-1]) is None and Seal.from_bytes(raw + b"\x00") is None


def test_public_keys_file(tmp_path):
    other = RecordsKey.generate()
    path = tmp_path / "records.pub"
    path.write_text(f"# rotated 2026-01\n{other.public_key.hex()}\n\n{KEY.public_key.hex()}  # current\n")
    keys = RecordsPublicKeys.from_file(path)
    assert keys.key_ids == sorted([KEY.key_id, other.key_id])
    with pytest.raises(ConfigError, match="no records public key"):
        RecordsPublicKeys.from_file(tmp_path / "missing.pub")
    path.write_text("not hex\n")
    with pytest.raises(ConfigError):
        RecordsPublicKeys.from_file(path)


def test_a_domain_must_be_one_nul_terminated_tag():
    with pytest.raises(ValueError):
        KEY.sign(b"no terminator", b"x")


# --------------------------------------------------------------------------- the checkpoint


def checkpoint(number=1, root=bytes(32), key=KEY, previous=GENESIS_HASH):
    return sign_checkpoint(key, number=number, issued_at=T0, root=root, chains=2, records=7, previous=previous)


def test_a_checkpoint_opens_only_with_the_records_key():
    made = checkpoint(root=b"\x07" * 32)
    opened = open_checkpoint(made.signed, KEYS)
    assert (opened.number, opened.root, opened.chains, opened.records, opened.buckets) == (1, b"\x07" * 32, 2, 7,
                                                                                          BUCKETS)
    assert opened.digest == made.digest and opened.body == made.body
    with pytest.raises(CheckpointError, match="signature"):
        open_checkpoint(checkpoint(key=RecordsKey.generate()).signed, KEYS)
    with pytest.raises(CheckpointError):
        open_checkpoint(b"junk", KEYS)
    flipped = bytearray(made.signed)
    flipped[made.signed.index(b"\x07" * 32)] ^= 1  # one bit of the root
    with pytest.raises(CheckpointError, match="signature"):
        open_checkpoint(bytes(flipped), KEYS)


def test_the_tree_commits_to_every_head_and_nothing_per_person_shows():
    heads = [(f"token-{n}", n + 1, bytes([n]) * 32) for n in range(40)]
    by_bucket: dict[int, list] = {}
    for h in heads:
        by_bucket.setdefault(bucket_of(h[0]), []).append(h)
    roots = {b: bucket_root(b, hs) for b, hs in by_bucket.items()}
    root = tree_root(roots)
    assert root != tree_root({})
    some = next(iter(by_bucket))
    assert bucket_root(some, list(reversed(by_bucket[some]))) == roots[some]  # order of rows does not matter
    moved = [(t, s + 1, h) for t, s, h in by_bucket[some]]
    assert tree_root({**roots, some: bucket_root(some, moved)}) != root
    assert bucket_root(some, ()) == empty_bucket_root(some) != empty_bucket_root(some + 1)
    assert bucket_root(some, [("never-checkpointed", 0, GENESIS_HASH)]) == empty_bucket_root(some)


def test_the_top_tree_is_the_rfc_9162_tree_and_updates_in_place():
    from infra.crypto import merkle

    roots = {b: bytes([b % 251]) * 32 for b in range(0, BUCKETS, 7)}
    leaves = [merkle.leaf_hash(roots.get(b) or empty_bucket_root(b)) for b in range(BUCKETS)]
    assert tree_root(roots) == merkle.build(leaves)[0]
    levels = tree_levels(roots)
    changed = {3: b"\x01" * 32, 4095: b"\x02" * 32, 0: b"\x03" * 32}
    assert updated_root(levels, changed) == tree_root({**roots, **changed})


# --------------------------------------------------------------------------- the verdict


def record(seq: int, prev: bytes, **over) -> ProvisionRecord:
    draft = RecordDraft(message_id=uuid.UUID(int=seq), correlation_id=uuid.UUID(int=1000 + seq), person_token=TOKEN,
                        requester="agency-nta", provider="registry", data_item="public_funds_account",
                        legal_basis="account-registration-act/art9", requested_at=T0 + timedelta(hours=seq), **over)
    return ProvisionRecord.chain(draft, seq=seq, prev_hash=prev, record_id=uuid.UUID(int=2000 + seq))


def chain(n: int, start: tuple[int, bytes] = (0, GENESIS_HASH)) -> list[ProvisionRecord]:
    out, prev = [], start[1]
    for seq in range(start[0] + 1, start[0] + n + 1):
        out.append(record(seq, prev))
        prev = out[-1].hash
    return out


def sealed_head(records: list[ProvisionRecord], cp: int = 0) -> Head:
    last = records[-1]
    [seal] = KEY.seal(HEAD_DOMAIN, [head_statement(TOKEN, last.seq, last.hash)])
    cp_hash = next((r.hash for r in records if r.seq == cp), GENESIS_HASH)
    return Head(last.seq, last.hash, seal, cp, cp_hash)


def evidence(cp_seq: int, cp_hash: bytes, number: int = 1) -> tuple[CheckpointEvidence, object]:
    """The database's evidence for a checkpoint covering the person at (cp_seq, cp_hash), and that checkpoint."""
    bucket = bucket_of(TOKEN)
    heads = [(TOKEN, cp_seq, cp_hash)] if cp_seq else []
    roots = {bucket: bucket_root(bucket, heads)}
    made = checkpoint(number=number, root=tree_root(roots))
    return CheckpointEvidence(signed=made.signed, bucket=bucket, heads=heads, bucket_roots=roots), made


def test_no_checkpoint_yet_means_pending_not_failed():
    records = chain(3)
    state = ChainState(TOKEN, records, sealed_head(records), None)
    verdict = judge(state, CheckpointEvidence(None, bucket_of(TOKEN), [], {}), None, KEYS)
    assert (verdict.verdict, verdict.problems, verdict.checkpoint) == (Verdict.PENDING, [], None)
    assert set(verdict.states.values()) == {RecordState.PENDING} and verdict.pending == 3


def test_checkpointed_then_pending_records():
    records = chain(5)
    ev, published = evidence(3, records[2].hash)
    state = ChainState(TOKEN, records, sealed_head(records, cp=3), None)
    verdict = judge(state, ev, published, KEYS)
    assert verdict.verdict is Verdict.PENDING and verdict.checkpoint.published
    assert [verdict.states[s] for s in range(1, 6)] == [RecordState.CHECKPOINTED] * 3 + [RecordState.PENDING] * 2
    ev, published = evidence(5, records[4].hash)
    assert judge(state, ev, published, KEYS).verdict is Verdict.OK


def test_only_records_linked_to_a_proof_point_are_verified():
    records = chain(12)
    ev, published = evidence(10, records[9].hash)
    tampered = [r for r in records if r.seq != 3]
    tampered[5] = dataclasses.replace(tampered[5], requester="agency-mhlw")  # seq 7 altered in place
    verdict = judge(ChainState(TOKEN, tampered, sealed_head(records, cp=10), None), ev, published, KEYS)
    assert verdict.problems == ["seq 3 missing (deleted)", "seq 7: hash mismatch (altered)"]
    S = RecordState
    assert verdict.states == {1: S.UNVERIFIED, 2: S.UNVERIFIED, 4: S.UNVERIFIED, 5: S.UNVERIFIED, 6: S.UNVERIFIED,
                              7: S.TAMPERED, 8: S.CHECKPOINTED, 9: S.CHECKPOINTED, 10: S.CHECKPOINTED,
                              11: S.PENDING, 12: S.PENDING}


def test_the_database_may_be_ahead_of_the_topic_never_behind_it():
    records = chain(2)
    state = ChainState(TOKEN, records, sealed_head(records, cp=2), None)
    ev, second = evidence(2, records[1].hash, number=2)
    first = checkpoint(number=1)
    ahead = judge(state, ev, first, KEYS)
    assert ahead.verdict is Verdict.OK and not ahead.checkpoint.published  # made, not yet on the topic
    ev_old, _ = evidence(2, records[1].hash, number=1)
    behind = judge(state, ev_old, second, KEYS)
    assert behind.problems == ["the database holds checkpoint #1 but #2 is published (the database was rolled back)"]
    assert set(behind.states.values()) == {RecordState.UNVERIFIED}
    other = checkpoint(number=2, root=b"\x01" * 32)
    assert judge(state, ev, other, KEYS).problems == [
        "the database's checkpoint #2 is not the published one (forked)"]
    forged = dataclasses.replace(ev, signed=checkpoint(number=2, key=RecordsKey.generate()).signed)
    assert judge(state, forged, None, KEYS).problems == [
        "the database's latest checkpoint is not signed by the records key (forged)"]


def test_an_anchor_starts_the_chain_after_a_purge():
    old = chain(3)
    rest = chain(2, start=(3, old[-1].hash))
    [seal] = KEY.seal(ANCHOR_DOMAIN, [anchor_statement(TOKEN, 3, old[-1].hash, T0)])
    anchor = Anchor(3, old[-1].hash, T0, seal)
    ev, published = evidence(5, rest[-1].hash)
    state = ChainState(TOKEN, rest, sealed_head(rest, cp=5), anchor)
    verdict = judge(state, ev, published, KEYS)
    assert verdict.verdict is Verdict.OK and verdict.purged_before == T0 and sorted(verdict.states) == [4, 5]
    moved = dataclasses.replace(anchor, seq=4, last_hash=rest[0].hash)
    state = ChainState(TOKEN, rest[1:], sealed_head(rest, cp=5), moved)
    assert judge(state, ev, published, KEYS).problems == [
        "seq 1-4 removed without a signed retention anchor (deleted)"]


def test_problems_and_reprs_name_no_token():
    records = chain(3)
    ev, published = evidence(3, records[2].hash)
    state = ChainState(TOKEN, [records[0], records[2]], None, None)
    verdict = judge(state, ev, published, KEYS)
    assert verdict.verdict is Verdict.TAMPERED and verdict.problems
    assert not any(TOKEN in p for p in verdict.problems)
    assert TOKEN not in repr(verdict) and TOKEN not in repr(state) and TOKEN not in repr(ev)


# --------------------------------------------------------------------------- retention settings


def test_the_retention_cutoff_is_midnight_jst_years_ago():
    jst = timezone(timedelta(hours=9))
    now = datetime(2026, 11, 28, 16, 30, tzinfo=UTC)  # already 29 November in Japan
    assert retention_cutoff(7, now=now) == datetime(2019, 11, 29, tzinfo=jst)
    leap = datetime(2028, 2, 29, 3, 0, tzinfo=jst)
    assert retention_cutoff(7, now=leap) == datetime(2021, 2, 28, tzinfo=jst)


def test_before_is_a_date_in_jst_or_a_time_with_an_offset():
    assert parse_before("2018-04-01") == datetime(2018, 4, 1, tzinfo=timezone(timedelta(hours=9)))
    assert parse_before("2018-04-01T00:00:00Z") == datetime(2018, 4, 1, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_before("2018-04-01T09:00")  # a time without an offset is not guessed


def test_records_settings():
    s = load_settings(environ={"RENKEI_RECORDS_RETENTION_YEARS": "10", "RENKEI_RECORDS_CHECKPOINT_INTERVAL_S": "2"})
    assert (s.records_retention_years, s.records_checkpoint_interval_s, s.records_checkpoint_records) == (10, 2, 1000)
    with pytest.raises(ConfigError, match="records_checkpoint_records"):
        load_settings(environ={"RENKEI_RECORDS_CHECKPOINT_RECORDS": "0"})
