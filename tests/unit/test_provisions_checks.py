"""Provision records at their seams (``infra.records.provisions``): a row read back, a record read from the audit
topic, the walk that locates each break in a chain, the statements the records key seals (pure logic).

Written for the mutation score (docs/testing.md, "Mutation testing"); ``test_provisions_chain.py`` pins the
canonical encoding these complete.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.core.errors import Reason, Rejection
from infra.records.provisions import (
    GENESIS_HASH,
    ProvisionRecord,
    ProvisionStatus,
    RecordDraft,
    anchor_statement,
    audit_record,
    canonical_bytes,
    chain_hash,
    from_avro,
    record_from_row,
    to_avro,
    walk_chain,
)
from schemas import codec

TOKEN = "dG9rZW4tZm9yLWEtcGVyc29u"
PERSON = "cHNldWRvbnltLW9mLXRoZS1wZXJzb24"
T0 = datetime(2025, 4, 1, 0, 30, tzinfo=UTC)


def record(seq: int = 1, prev: bytes = GENESIS_HASH, v2: bool = True, **over) -> ProvisionRecord:
    fields = dict(message_id=uuid.UUID(int=seq), correlation_id=uuid.UUID(int=500), person_token=TOKEN,
                  requester="agency-nta", provider="registry", data_item="public_funds_account",
                  legal_basis="account-registration-act/art9", requested_at=T0 + timedelta(minutes=seq),
                  provided_at=T0 + timedelta(minutes=seq, seconds=5), status=ProvisionStatus.PROVIDED,
                  not_disclosed=True)
    if v2:
        fields |= dict(person=PERSON, procedure="income-tax-refund")
    return ProvisionRecord.chain(RecordDraft(**(fields | over)), seq=seq, prev_hash=prev,
                                 record_id=uuid.UUID(int=900 + seq))


def chain(n: int) -> list[ProvisionRecord]:
    out, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        out.append(record(seq, prev))
        prev = out[-1].hash
    return out


# --------------------------------------------------------------------------- rows, Avro, the audit topic


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_a_row_reads_back_as_the_record_written(v2):
    written = record(v2=v2)
    row = {f.name: getattr(written, f.name) for f in dataclasses.fields(ProvisionRecord)}
    # as asyncpg hands them: bytea as bytes-like, the status as its symbol, uuids as its own UUID subclass
    row |= dict(prev_hash=memoryview(written.prev_hash), hash=bytearray(written.hash), status=written.status.value,
                record_id=str(written.record_id))
    back = record_from_row(row)
    assert back == written
    assert type(back.prev_hash) is bytes and type(back.hash) is bytes and back.status is ProvisionStatus.PROVIDED
    assert chain_hash(back.prev_hash, canonical_bytes(back)) == written.hash


def test_a_record_on_the_audit_topic_is_keyed_by_the_pseudonym_and_carries_every_field_but_the_token():
    written = record(seq=4, prev=b"\x04" * 32)
    key, value = audit_record(written, PERSON)
    assert key == PERSON.encode("ascii") and TOKEN.encode() not in value
    datum = codec.decode(value, "provision_record")
    assert datum == to_avro(written)
    assert datum["person_token"] == b"" and datum["seq"] == 4 and datum["status"] == "PROVIDED"
    assert (datum["prev_hash"], datum["hash"], datum["not_disclosed"]) == (b"\x04" * 32, written.hash, True)
    back = from_avro(datum)
    assert back == dataclasses.replace(written, person_token="")
    assert chain_hash(back.prev_hash, canonical_bytes(back)) == written.hash


def test_a_v1_datum_needs_its_seq_from_the_reader():
    written = record(seq=6, prev=b"\x06" * 32, v2=False)
    datum = {**to_avro(written), "seq": None, "person_token": TOKEN.encode()}
    with pytest.raises(Rejection, match=r"seq is not in the record \(v1\): pass it") as caught:
        from_avro(datum)
    assert caught.value.reason is Reason.RECORD_FAILED
    back = from_avro(datum, seq=6)
    assert back == written and chain_hash(back.prev_hash, canonical_bytes(back)) == written.hash
    assert from_avro({**datum, "seq": 6}, seq=99).seq == 6  # the datum's own seq wins


def test_a_datum_with_a_status_this_reader_does_not_know_is_refused():
    datum = {**to_avro(record()), "status": "UNKNOWN"}
    with pytest.raises(Rejection, match="status symbol is not one this reader knows") as caught:
        from_avro(datum)
    assert caught.value.reason is Reason.RECORD_FAILED
    with pytest.raises(Rejection, match="record_id is not a UUID"):
        from_avro({**to_avro(record()), "record_id": "not-a-uuid"})


# --------------------------------------------------------------------------- the chain walk


def test_the_walk_names_each_break_in_words_and_by_seq():
    one, two, three, four, five = chain(5)
    walk = walk_chain([one, two, dataclasses.replace(two, record_id=uuid.uuid4()), four])
    assert [p.text for p in walk.problems] == ["seq 2: duplicated (inserted)", "seq 3 missing (deleted)"]
    assert [(p.first, p.last) for p in walk.problems] == [(2, 2), (3, 3)]
    walk = walk_chain([one, five])
    assert [(p.text, p.first, p.last) for p in walk.problems] == [("seq 2-4 missing (deleted)", 2, 4)]
    relinked = dataclasses.replace(three, prev_hash=b"\x09" * 32)
    walk = walk_chain([one, two, relinked])
    assert [p.text for p in walk.problems] == ["seq 3: prev_hash does not match seq 2 (chain broken)",
                                               "seq 3: hash mismatch (altered)"]
    assert (walk.last_seq, walk.last_hash) == (3, relinked.hash)


def test_the_walk_of_a_clean_chain_ends_at_its_last_record():
    records = chain(3)
    walk = walk_chain(records)
    assert walk.problems == [] and (walk.last_seq, walk.last_hash) == (3, records[2].hash)
    assert walk.hashes == {r.seq: r.hash for r in records}
    empty = walk_chain([], (7, b"\x07" * 32))
    assert (empty.problems, empty.last_seq, empty.last_hash, empty.hashes) == ([], 7, b"\x07" * 32, {})


def test_a_record_before_an_anchor_is_an_insertion_even_when_it_links():
    records = chain(4)
    walk = walk_chain(records, (2, records[1].hash))
    assert [(p.text, p.first) for p in walk.problems] == [("seq 1: before the chain's start (inserted)", 1),
                                                         ("seq 2: before the chain's start (inserted)", 2)]
    assert walk.last_seq == 4 and sorted(walk.hashes) == [3, 4]


# --------------------------------------------------------------------------- what the records key seals


def test_an_anchor_statement_is_the_same_instant_in_any_zone_and_refuses_a_naive_time():
    jst = timezone(timedelta(hours=9))
    at = datetime(2019, 4, 1, 9, 0, 0, 123456, tzinfo=jst)
    assert anchor_statement(TOKEN, 3, bytes(32), at) == anchor_statement(TOKEN, 3, bytes(32), at.astimezone(UTC))
    assert anchor_statement(TOKEN, 3, bytes(32), at) == anchor_statement(
        TOKEN, 3, bytes(32), at.replace(microsecond=123000))  # milliseconds, as the database keeps it
    assert anchor_statement(TOKEN, 3, bytes(32), at) != anchor_statement(TOKEN, 3, bytes(32),
                                                                        at + timedelta(milliseconds=1))
    assert anchor_statement(TOKEN, 3, bytes(32), at) != anchor_statement(TOKEN + "A", 3, bytes(32), at)
    with pytest.raises(Rejection, match="purged_before must be a timezone-aware datetime"):
        anchor_statement(TOKEN, 3, bytes(32), datetime(2019, 4, 1))
