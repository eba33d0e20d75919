"""The audit topic's record encoder (``encode_audit``) writes exactly what the validating codec writes.

The hub encodes one provision record per provision without fastavro's re-validation (issue 18): these
tests pin that the bytes are the validating ``codec.encode``'s for every shape a record takes, and that
a datum of the wrong shape is still refused rather than written.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.records.provisions import (
    GENESIS_HASH,
    ProvisionRecord,
    ProvisionStatus,
    RecordDraft,
    audit_record,
    encode_audit,
    to_avro,
)
from schemas import codec

PERSON = "cHNldWRvbnltLW9mLWEtcGVyc29u"


def record(**over) -> ProvisionRecord:
    fields = dict(
        message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), person_token="dG9rZW4tZm9yLWEtcGVyc29u",
        requester="agency-nta", provider="registry", data_item="public_funds_account",
        legal_basis="account-registration-act/art9",
        requested_at=datetime(2025, 4, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=9))),
    )
    fields.update(over)
    return ProvisionRecord.chain(RecordDraft(**fields), seq=7, prev_hash=GENESIS_HASH, record_id=uuid.uuid4())


@pytest.mark.parametrize("over", [
    {},  # a v1 record: no pseudonym, no procedure
    {"person": PERSON, "procedure": "income-tax-refund"},
    {"person": PERSON, "procedure": "child-allowance", "provided_at": datetime(2025, 4, 1, 0, 30, tzinfo=UTC)},
    *({"person": PERSON, "procedure": "child-allowance", "status": status} for status in ProvisionStatus),
    {"person": PERSON, "procedure": "child-allowance", "not_disclosed": True},
])
def test_the_audit_encoder_writes_the_validating_codecs_bytes(over):
    rec = record(**over)
    datum = to_avro(rec)
    assert encode_audit(datum) == codec.encode("provision_record", datum)
    key, value = audit_record(rec, PERSON)
    assert key == PERSON.encode() and value == codec.encode("provision_record", datum)
    assert codec.decode(value, "provision_record")["record_id"] == rec.record_id


@pytest.mark.parametrize("change", [
    lambda d: d.pop("seq"),  # a field missing
    lambda d: d.update(extra=1),  # a field the schema does not have
    lambda d: d.update(seq="seven"),  # a value of the wrong type
    lambda d: d.update(status="MAYBE"),  # not a symbol of the enum
])
def test_a_datum_of_the_wrong_shape_is_refused_not_written(change):
    datum = to_avro(record(person=PERSON, procedure="child-allowance"))
    change(datum)
    with pytest.raises((ValueError, TypeError, KeyError)):
        encode_audit(datum)
