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
    Anchor,
    ChainProblem,
    ChainState,
    ProvisionRecord,
    ProvisionStatus,
    RecordDraft,
    anchor_statement,
    audit_record,
    canonical_bytes,
    chain_hash,
    encode_items,
    from_avro,
    head_statement,
    record_from_row,
    to_avro,
    verify_records,
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
    with pytest.raises(Rejection) as caught:
        from_avro(datum)
    assert caught.value.reason is Reason.RECORD_FAILED
    assert caught.value.message == "provision record: seq is not in the record (v1): pass it"
    back = from_avro(datum, seq=6)
    assert back == written and chain_hash(back.prev_hash, canonical_bytes(back)) == written.hash
    assert from_avro({**datum, "seq": 6}, seq=99).seq == 6  # the datum's own seq wins


def test_a_datum_with_a_status_this_reader_does_not_know_is_refused():
    datum = {**to_avro(record()), "status": "UNKNOWN"}
    with pytest.raises(Rejection) as caught:
        from_avro(datum)
    assert caught.value.reason is Reason.RECORD_FAILED
    assert caught.value.message == "provision record: status symbol is not one this reader knows"
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
    # each located at the one record (the portal marks the records inside a problem's span TAMPERED)
    assert [(p.first, p.last) for p in walk.problems] == [(3, 3), (3, 3)]
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


def test_a_head_statement_is_each_item_length_prefixed_in_order():
    assert encode_items(b"ab", b"", b"c") == b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01c"
    assert head_statement(TOKEN, 3, b"\x05" * 32) == encode_items(
        b"renkei.provision_head.v1", TOKEN.encode("ascii"), (3).to_bytes(8, "big"), b"\x05" * 32)
    at = datetime(2019, 4, 1, 9, 0, 0, 123456, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    assert anchor_statement(TOKEN, 3, b"\x05" * 32, at) == encode_items(
        b"renkei.provision_anchor.v1", TOKEN.encode("ascii"), (3).to_bytes(8, "big"), b"\x05" * 32,
        ms.to_bytes(8, "big", signed=True))


# --------------------------------------------------------------------------- the verdict on a stored chain


def test_the_verdict_names_each_disagreement_between_the_head_and_the_records():
    records = chain(3)
    one, two, three = records
    ok = verify_records(records, (3, three.hash))
    assert (ok.ok, ok.checked, ok.problems) == (True, 3, [])
    added = verify_records(records, (2, two.hash))
    assert (added.ok, added.checked, added.problems) == (
        False, 3, ["head says seq 2, last record is 3 (records added outside the store)"])
    assert verify_records(records, (3, b"\x01" * 32)).problems == ["head hash does not match seq 3 (altered)"]
    assert verify_records(records[:2], (3, three.hash)).problems == ["head says seq 3, last record is 2 (tail deleted)"]
    headless = verify_records(records, None)
    assert (headless.ok, headless.checked) == (False, 3)
    assert verify_records([], None).problems == [] and verify_records([], (0, GENESIS_HASH)).ok


def test_a_chain_state_starts_at_its_anchor_or_at_genesis():
    records = chain(2)
    bare = ChainState(TOKEN, records, None, None)
    assert bare.start == (0, GENESIS_HASH)
    anchored = ChainState(TOKEN, records[1:], None, Anchor(1, records[0].hash, T0, None))
    assert anchored.start == (1, records[0].hash)
    assert str(ChainProblem(2, 3, "seq 2-3 missing (deleted)")) == "seq 2-3 missing (deleted)"


def test_a_records_idempotency_key_and_version():
    written = record(seq=2)
    assert RecordDraft(**{f: getattr(written, f) for f in (
        "message_id", "correlation_id", "person_token", "requester", "provider", "data_item", "legal_basis",
        "requested_at")}).key == (uuid.UUID(int=2), "agency-nta", "registry")
    assert written.version == 2 and record(v2=False).version == 1


def test_a_record_chained_without_an_id_gets_a_fresh_one_its_hash_covers():
    draft = RecordDraft(message_id=uuid.UUID(int=1), correlation_id=uuid.UUID(int=2), person_token=TOKEN,
                        requester="agency-nta", provider="registry", data_item="public_funds_account",
                        legal_basis="account-registration-act/art9", requested_at=T0)
    a = ProvisionRecord.chain(draft, seq=1, prev_hash=GENESIS_HASH)
    b = ProvisionRecord.chain(draft, seq=1, prev_hash=GENESIS_HASH)
    assert isinstance(a.record_id, uuid.UUID) and a.record_id != b.record_id and a.hash != b.hash
    assert chain_hash(GENESIS_HASH, canonical_bytes(a)) == a.hash
    with pytest.raises(ValueError, match=r"^prev_hash must be 32 bytes$"):
        chain_hash(b"\x00" * 31, canonical_bytes(a))


@pytest.mark.parametrize("over, words", [
    ({"message_id": "not-a-uuid"}, "provision record: message_id is not a UUID"),
    ({"correlation_id": 17}, "provision record: correlation_id is not a UUID"),
    ({"person_token": "has space"}, "provision record: person_token must be a non-empty base64url string"),
    ({"person_token": None}, "provision record: person_token must be a non-empty base64url string"),
    ({"provider": ""}, "provision record: provider must be a non-empty string"),
    ({"data_item": 5}, "provision record: data_item must be a non-empty string"),
    ({"requested_at": "2025-04-01"}, "provision record: requested_at must be a timezone-aware datetime"),
    ({"provided_at": datetime(2025, 4, 1)}, "provision record: provided_at must be a timezone-aware datetime"),
    ({"status": "LOST"}, "provision record: status must be one of REQUESTED, PROVIDED, NOT_REGISTERED, REFUSED, "
                         "NO_ANSWER, BLOCKED"),
    ({"not_disclosed": 1}, "provision record: not_disclosed must be a bool"),
    ({"person": "has space"}, "provision record: person must be a base64url pseudonym"),
    ({"person": 7}, "provision record: person must be a base64url pseudonym"),
    ({"person": PERSON, "procedure": "with space"}, "provision record: procedure must be a catalogue code"),
    ({"person": PERSON, "procedure": 3}, "provision record: procedure must be a catalogue code"),
    ({"person": PERSON, "procedure": "x" * 65}, "provision record: procedure must be a catalogue code"),
    ({"procedure": "income-tax-refund"},
     "provision record: a record naming a procedure needs the v2 encoding (a person pseudonym)"),
])
def test_each_refused_draft_says_which_field_and_why(over, words):
    fields = dict(message_id=uuid.UUID(int=1), correlation_id=uuid.UUID(int=2), person_token=TOKEN,
                  requester="agency-nta", provider="registry", data_item="public_funds_account",
                  legal_basis="account-registration-act/art9", requested_at=T0)
    with pytest.raises(Rejection) as caught:
        RecordDraft(**(fields | over))
    assert caught.value.reason is Reason.RECORD_FAILED and caught.value.message == words


def test_the_edges_of_a_draft_that_is_accepted():
    fields = dict(message_id=uuid.UUID(int=1), correlation_id=uuid.UUID(int=2), person_token="ab-_==",
                  requester="a", provider="b", data_item="c", legal_basis="d", requested_at=T0,
                  provided_at=T0 + timedelta(microseconds=1999))
    draft = RecordDraft(**fields, person="Zz09_-", procedure="!" + "~" * 63)
    assert draft.provided_at == T0 + timedelta(milliseconds=1) and draft.procedure == "!" + "~" * 63
    assert draft.not_disclosed is False and draft.status is ProvisionStatus.REQUESTED


def test_ids_are_plain_uuids_and_times_whole_milliseconds_whatever_they_came_as():
    class DriverUUID(uuid.UUID):  # asyncpg hands back a UUID subclass of its own
        pass

    draft = RecordDraft(message_id=DriverUUID(int=1), correlation_id=uuid.UUID(int=2), person_token=TOKEN,
                        requester="a", provider="b", data_item="c", legal_basis="d",
                        requested_at=T0 + timedelta(microseconds=1000), provided_at=T0 + timedelta(microseconds=999))
    assert type(draft.message_id) is uuid.UUID and draft.message_id == uuid.UUID(int=1)
    assert type(draft.correlation_id) is uuid.UUID and draft.correlation_id == uuid.UUID(int=2)
    assert (draft.requested_at, draft.provided_at) == (T0 + timedelta(milliseconds=1), T0)


@pytest.mark.parametrize("name", ["record_id", "message_id", "correlation_id"])
def test_an_audit_datum_with_an_id_that_is_not_a_uuid_names_it(name):
    with pytest.raises(Rejection) as caught:
        from_avro({**to_avro(record()), name: "not-a-uuid"})
    assert caught.value.reason is Reason.RECORD_FAILED and caught.value.message == f"provision record: {name} is not a UUID"


@pytest.mark.parametrize("name", ["record_id", "message_id", "correlation_id"])
def test_a_row_with_an_id_that_is_not_a_uuid_names_the_column(name):
    written = record()
    row = {f.name: getattr(written, f.name) for f in dataclasses.fields(ProvisionRecord)} | {name: "not-a-uuid"}
    with pytest.raises(Rejection) as caught:
        record_from_row(row)
    assert caught.value.reason is Reason.RECORD_FAILED and caught.value.message == f"provision record: {name} is not a UUID"


@pytest.mark.parametrize("not_disclosed", [True, False], ids=["withheld", "disclosed"])
def test_the_canonical_bytes_are_the_documented_items_in_order(not_disclosed):
    """Built by hand from ``canonical_bytes``' docstring, as an auditor re-hashing the audit topic would."""
    written = record(seq=3, prev=b"\x03" * 32, not_disclosed=not_disclosed)

    def item(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw

    def ms(at: datetime) -> bytes:
        return int(at.timestamp() * 1000).to_bytes(8, "big", signed=True)

    expected = b"".join((
        item(b"renkei.provision_record.v2"), item(uuid.UUID(int=903).bytes), item(uuid.UUID(int=3).bytes),
        item(uuid.UUID(int=500).bytes), item(PERSON.encode()), item(b"agency-nta"), item(b"registry"),
        item(b"public_funds_account"), item(b"account-registration-act/art9"),
        item(ms(T0 + timedelta(minutes=3))), item(ms(T0 + timedelta(minutes=3, seconds=5))), item(b"PROVIDED"),
        item(b"\x01" if not_disclosed else b"\x00"), item((3).to_bytes(8, "big")), item(b"income-tax-refund"),
    ))
    assert canonical_bytes(written) == expected
    assert written.hash == chain_hash(b"\x03" * 32, expected)
