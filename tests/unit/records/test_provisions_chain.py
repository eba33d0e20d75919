"""Provision records without a database: canonical encoding, hash chain, anchors, statements, drafts, Avro."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from infra.core.errors import Reason, Rejection
from infra.records.provisions import (
    CANONICAL_TAG,
    CANONICAL_TAG_V2,
    GENESIS_HASH,
    OUTCOME_STATUS,
    ProvisionRecord,
    ProvisionStatus,
    RecordDraft,
    anchor_statement,
    bucket_of,
    canonical_bytes,
    chain_hash,
    from_avro,
    head_statement,
    person_key,
    record_time,
    to_avro,
    verify_records,
    walk_chain,
)
from schemas import codec

JST = timezone(timedelta(hours=9))
TOKEN = "dG9rZW4tZm9yLWEtcGVyc29u"


def draft(**over) -> RecordDraft:
    fields = dict(
        message_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        correlation_id=uuid.UUID("00000000-0000-4000-8000-000000000002"),
        person_token=TOKEN, requester="agency-nta", provider="registry",
        data_item="public_funds_account", legal_basis="account-registration-act/art9",
        requested_at=datetime(2025, 4, 1, 9, 30, 0, 123456, tzinfo=JST),
    )
    fields.update(over)
    return RecordDraft(**fields)


RID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


def first(**over) -> ProvisionRecord:
    return ProvisionRecord.chain(draft(**over), seq=1, prev_hash=GENESIS_HASH, record_id=RID)


# SHA-256 of the record built by first(), computed independently from the documented encoding.
KNOWN_HASH = "ee172a97386673fea38b78d019394a1bd0a88e124ccfb0f65f3c6bc6132254e0"


def test_known_answer_pins_the_encoding():
    record = first()
    canonical = canonical_bytes(record)
    assert canonical.startswith(len(CANONICAL_TAG).to_bytes(4, "big") + CANONICAL_TAG)
    # If this changes, every stored chain stops verifying: bump CANONICAL_TAG instead.
    assert record.hash.hex() == KNOWN_HASH


def test_hash_is_sha256_of_prev_hash_and_canonical_bytes():
    import hashlib

    record = first()
    assert record.hash == hashlib.sha256(GENESIS_HASH + canonical_bytes(record)).digest()
    with pytest.raises(ValueError):
        chain_hash(b"short", b"")


@pytest.mark.parametrize("change", [
    {"record_id": uuid.UUID(int=1)},
    {"message_id": uuid.UUID(int=2)},
    {"correlation_id": uuid.UUID(int=3)},
    {"person_token": TOKEN + "A"},
    {"requester": "agency-mhlw"},
    {"provider": "registry2"},
    {"data_item": "deposit_account_holdings"},
    {"legal_basis": "account-registration-act/art3"},
    {"requested_at": datetime(2025, 4, 1, 0, 30, 0, 124000, tzinfo=timezone.utc)},
    {"provided_at": datetime(2025, 4, 1, tzinfo=timezone.utc)},
    {"status": ProvisionStatus.PROVIDED},
    {"not_disclosed": True},
    {"seq": 2},
], ids=lambda c: next(iter(c)))
def test_every_field_is_covered_by_the_hash(change):
    record = first()
    altered = dataclasses.replace(record, **change)
    assert chain_hash(altered.prev_hash, canonical_bytes(altered)) != record.hash


def test_length_prefixes_make_field_boundaries_unambiguous():
    a = first(requester="ab", provider="c")
    b = first(requester="a", provider="bc")
    assert canonical_bytes(a) != canonical_bytes(b)


def test_absent_provided_at_differs_from_the_epoch():
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert canonical_bytes(first()) != canonical_bytes(first(provided_at=epoch))


def test_times_are_utc_milliseconds_so_the_hash_survives_avro():
    d = draft()
    assert d.requested_at == datetime(2025, 4, 1, 0, 30, 0, 123000, tzinfo=timezone.utc)
    assert d.requested_at.tzinfo is timezone.utc


def test_prev_hash_links_records():
    one = first()
    two = ProvisionRecord.chain(draft(message_id=uuid.uuid4(), status="PROVIDED"), seq=2, prev_hash=one.hash)
    assert two.prev_hash == one.hash
    assert verify_records([one, two], (2, two.hash)).ok
    verdict = verify_records([two], (2, two.hash))
    assert verdict.problems == ["seq 1 missing (deleted)"]
    verdict = verify_records([one], (2, two.hash))
    assert verdict.problems == ["head says seq 2, last record is 1 (tail deleted)"]
    forged = dataclasses.replace(one, data_item="x")
    assert verify_records([forged, two], (2, two.hash)).problems == ["seq 1: hash mismatch (altered)"]
    rehashed = ProvisionRecord.chain(draft(data_item="x"), seq=1, prev_hash=GENESIS_HASH, record_id=RID)
    assert verify_records([rehashed, two], (2, two.hash)).problems == [
        "seq 2: prev_hash does not match seq 1 (chain broken)"]
    assert verify_records([one, two], None).problems == ["no chain head for this person (head deleted)"]
    assert verify_records([], None).ok


def test_status_enum_matches_the_schema_symbols():
    status = next(f for f in codec.schema("provision_record")["fields"] if f["name"] == "status")
    symbols = status["type"]["symbols"]
    assert [s.value for s in ProvisionStatus] == [s for s in symbols if s != "UNKNOWN"]


@pytest.mark.parametrize("over, field", [
    ({"message_id": "not-a-uuid"}, "message_id"),
    ({"person_token": ""}, "person_token"),
    ({"person_token": "トークン"}, "person_token"),
    ({"person_token": "has space"}, "person_token"),
    ({"requester": ""}, "requester"),
    ({"legal_basis": None}, "legal_basis"),
    ({"requested_at": datetime(2025, 4, 1)}, "requested_at"),
    ({"status": "UNKNOWN"}, "status"),
    ({"not_disclosed": "no"}, "not_disclosed"),
])
def test_bad_drafts_are_refused_as_record_failed(over, field):
    with pytest.raises(Rejection) as caught:
        draft(**over)
    assert caught.value.reason is Reason.RECORD_FAILED
    assert field in caught.value.message


def test_drafts_accept_uuid_strings_and_status_strings():
    d = draft(message_id="00000000-0000-4000-8000-000000000001", status="NO_ANSWER")
    assert d.message_id == uuid.UUID(int=0x00000000000040008000000000000001)
    assert d.status is ProvisionStatus.NO_ANSWER


def test_reprs_do_not_show_the_person_token_or_hashes():
    record = first()
    assert TOKEN not in repr(draft()) and TOKEN not in repr(record)
    assert record.hash.hex() not in repr(record)


def test_avro_of_a_v1_record_carries_no_token():
    record = ProvisionRecord.chain(
        draft(status=ProvisionStatus.PROVIDED, provided_at=datetime(2025, 4, 1, 1, tzinfo=timezone.utc)),
        seq=7, prev_hash=bytes(range(32)))
    datum = to_avro(record)
    assert datum["person_token"] == b"" and datum["person"] is None and datum["seq"] == 7
    back = from_avro(codec.decode(codec.encode("provision_record", datum), "provision_record"))
    assert dataclasses.replace(back, person_token=TOKEN) == record  # only the token stayed in the database
    # a never-provided record carries null
    assert codec.decode(codec.encode("provision_record", to_avro(first())), "provision_record")["provided_at"] is None


PERSON = "cHNldWRvbnltLW9mLXRoZS1wZXJzb24tdW5kZXItdGhlLWh1Yi1rZXk"  # a pseudonym's shape (base64url)


def v2(**over) -> ProvisionRecord:
    return first(person=PERSON, procedure="income-tax-refund", **over)


def test_v2_encoding_replaces_the_token_by_the_pseudonym_and_adds_the_procedure():
    record = v2()
    canonical = canonical_bytes(record)
    assert record.version == 2 and first().version == 1
    assert canonical.startswith(len(CANONICAL_TAG_V2).to_bytes(4, "big") + CANONICAL_TAG_V2)
    assert TOKEN.encode() not in canonical and PERSON.encode() in canonical
    assert canonical.endswith(len("income-tax-refund").to_bytes(4, "big") + b"income-tax-refund")
    # Independently: the v1 items with the pseudonym for the token, then the procedure.
    v1_like = canonical_bytes(first(person_token=PERSON))
    expected = (len(CANONICAL_TAG_V2).to_bytes(4, "big") + CANONICAL_TAG_V2
                + v1_like[4 + len(CANONICAL_TAG):] + len(b"income-tax-refund").to_bytes(4, "big")
                + b"income-tax-refund")
    assert canonical == expected
    assert canonical_bytes(first(person=PERSON)).endswith(bytes(4))  # no procedure: a zero-length item


@pytest.mark.parametrize("change", [
    {"person": PERSON[:-1] + "A"},
    {"person": None},  # back to v1: another tag
    {"procedure": "child-allowance"},
    {"procedure": None},
    {"status": ProvisionStatus.BLOCKED},
    {"person_token": TOKEN + "A"},  # NOT covered in v2: the head seal binds the chain to the token
], ids=lambda c: next(iter(c)))
def test_v2_hash_covers_the_pseudonym_and_the_procedure(change):
    record = v2()
    altered = dataclasses.replace(record, **change)
    covered = chain_hash(altered.prev_hash, canonical_bytes(altered)) != record.hash
    assert covered is ("person_token" not in change)


def test_a_procedure_written_into_a_v1_record_breaks_its_hash():
    record = first()
    forged = dataclasses.replace(record, procedure="child-allowance")
    assert chain_hash(forged.prev_hash, canonical_bytes(forged)) != record.hash


def test_a_v2_record_read_from_the_audit_topic_can_be_rehashed_without_any_token():
    record = ProvisionRecord.chain(draft(person=PERSON, procedure="income-tax-refund",
                                         status=ProvisionStatus.NOT_REGISTERED), seq=3, prev_hash=bytes(range(32)))
    datum = codec.decode(codec.encode("provision_record", to_avro(record)), "provision_record")
    assert datum["person_token"] == b"" and datum["person"] == PERSON and datum["status"] == "NOT_REGISTERED"
    back = from_avro(datum)
    assert back.seq == 3 and back.procedure == "income-tax-refund" and back.person_token == ""
    assert chain_hash(back.prev_hash, canonical_bytes(back)) == record.hash


def test_drafts_with_a_procedure_need_a_pseudonym_and_a_code():
    with pytest.raises(Rejection, match="v2"):
        draft(procedure="income-tax-refund")
    with pytest.raises(Rejection, match="procedure"):
        draft(person=PERSON, procedure="has space")
    with pytest.raises(Rejection, match="person"):
        draft(person="not base64url!")
    assert PERSON not in repr(v2()) and "income-tax-refund" in repr(v2())


def test_outcomes_map_to_statuses():
    assert OUTCOME_STATUS == {"REGISTERED": ProvisionStatus.PROVIDED, "NOT_REGISTERED": ProvisionStatus.NOT_REGISTERED,
                              "BLOCKED": ProvisionStatus.BLOCKED}


def test_after_a_purge_the_chain_starts_at_its_anchor():
    one = first()
    two = ProvisionRecord.chain(draft(message_id=uuid.uuid4()), seq=2, prev_hash=one.hash)
    three = ProvisionRecord.chain(draft(message_id=uuid.uuid4()), seq=3, prev_hash=two.hash)
    assert verify_records([two, three], (3, three.hash), (1, one.hash)).ok
    assert verify_records([], (3, three.hash), (3, three.hash)).ok  # everything purged
    assert verify_records([three], (3, three.hash), (1, one.hash)).problems == ["seq 2 missing (deleted)"]
    assert verify_records([two, three], (3, three.hash), (1, b"\x01" * 32)).problems == [
        "seq 2: prev_hash does not match seq 1 (chain broken)"]
    assert verify_records([one, two, three], (3, three.hash), (1, one.hash)).problems == [
        "seq 1: before the chain's start (inserted)"]


def test_walk_chain_locates_each_problem():
    one = first()
    two = ProvisionRecord.chain(draft(message_id=uuid.uuid4()), seq=2, prev_hash=one.hash)
    four = ProvisionRecord.chain(draft(message_id=uuid.uuid4()), seq=4, prev_hash=bytes(32))
    walk = walk_chain([one, dataclasses.replace(two, provider="x"), four])
    assert [(p.first, p.last) for p in walk.problems] == [(2, 2), (3, 3)]
    assert (walk.last_seq, walk.last_hash, sorted(walk.hashes)) == (4, four.hash, [1, 2, 4])


def test_statements_bind_every_field():
    base = head_statement(TOKEN, 3, bytes(32))
    assert len({base, head_statement(TOKEN + "A", 3, bytes(32)), head_statement(TOKEN, 4, bytes(32)),
                head_statement(TOKEN, 3, b"\x01" * 32)}) == 4
    at = datetime(2019, 4, 1, tzinfo=timezone.utc)
    anchor = anchor_statement(TOKEN, 3, bytes(32), at)
    assert anchor != base and anchor != anchor_statement(TOKEN, 3, bytes(32), at + timedelta(milliseconds=1))


def test_record_time_is_the_end_of_the_exchange():
    d = draft()
    assert record_time(d) == d.requested_at
    later = d.requested_at + timedelta(days=400)
    assert record_time(draft(provided_at=later)) == later


def test_the_bucket_is_the_first_12_bits_of_the_person_key():
    key = person_key(TOKEN)
    assert bucket_of(TOKEN) == int.from_bytes(key[:2], "big") >> 4 and 0 <= bucket_of(TOKEN) < 4096
    assert len({bucket_of(f"t{n}") for n in range(2000)}) > 1500  # spread
