"""The codec: single-object framing, round trips, schema resolution, and hostile bytes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.core.errors import CodecError, Reason
from schemas import catalogue, codec, types

NOW = datetime(2025, 4, 1, 9, 30, tzinfo=UTC)
ACCOUNT = {
    "bank_code": "0001",
    "branch_code": "001",
    "account_type": "ORDINARY",
    "account_number": "1234567",
    "holder_kana": "ヤマダ タロウ",
}

# Realistic bodies for the schemas this module's owner maintains.
SAMPLES: dict[str, dict[str, Any]] = {
    "registration_request": {
        "operation": "REGISTER",
        "account": ACCOUNT,
        "channel": "PORTAL",
        "requested_at": NOW,
    },
    "registration_result": {"operation": "DELETE", "status": "DONE", "detail": None, "decided_at": NOW},
    "existence_check": {"account": ACCOUNT, "requested_at": NOW},
    "existence_answer": {"bank_code": "0001", "result": "CONFIRMED", "answered_at": NOW},
    "provision_inquiry": {"procedure_code": "KYUFU-0001", "purpose": "特別定額給付金", "requested_at": NOW},
    "provision_response": {"status": "REGISTERED", "account": ACCOUNT, "answered_at": NOW},
    "numbering_request": {
        "bank_codes": ["0001", "0005", "9900"],
        "channel": "BANK",
        "receiving_bank_code": "0001",
        "requested_at": NOW,
    },
    "numbering_ack": {"bank_code": "0005", "status": "LINKED", "accounts_linked": 2, "acknowledged_at": NOW},
    "numbering_result": {
        "outcomes": [
            {"bank_code": "0001", "status": "LINKED", "accounts_linked": 1},
            {"bank_code": "0005", "status": "NO_ACCOUNT", "accounts_linked": 0},
        ],
        "banks_not_answered": ["9900"],
        "completed_at": NOW,
    },
    "inheritance_lookup": {"receiving_bank_code": None, "requested_at": NOW, "deadline": NOW},
    "disaster_lookup": {"designated_bank_codes": [], "disaster_id": "2024-NOTO", "requested_at": NOW, "deadline": NOW},
    "lookup_answer": {"bank_code": "0001", "accounts": [ACCOUNT, dict(ACCOUNT, account_type="SAVINGS")], "answered_at": NOW},
    "lookup_result": {
        "lookup_kind": "INHERITANCE",
        "answering_bank_codes": ["0001", "0005"],
        "accounts": [ACCOUNT],
        "banks_not_answered": ["9900"],
        "is_supplement": False,
        "completed_at": NOW,
    },
    "rejection_notice": {
        "reason_code": "BAD_SIGNATURE",
        "message": "signature does not verify",
        "original_message_id": uuid.uuid4(),
        "original_type": "provision.inquiry",
        "rejected_at": NOW,
    },
    "provision_record": {
        "record_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
        "correlation_id": uuid.uuid4(),
        "person_token": b"\x01" * 32,
        "requester": "agency.city-shibuya",
        "provider": "registry",
        "data_item": "public_funds_account",
        "legal_basis": "口座登録法第9条",
        "requested_at": NOW,
        "provided_at": NOW,
        "status": "PROVIDED",
        "not_disclosed": False,
        "prev_hash": bytes(32),
        "hash": b"\xab" * 32,
    },
    "token_issue_request": {
        "sealed_my_number": b"\x00" * 80,
        "authority_key_id": "token-authority/enc/1",
        "requester": "agency.city-shibuya",
        "local_ref": "local-42",
        "requested_at": NOW,
    },
    "token_issue_response": {"token": b"\x02" * 32, "local_ref": "local-42", "issued_at": NOW},
    "key_directory_entry": {
        "participant_id": "bank.0001",
        "key_id": "bank.0001/sign/1",
        "purpose": "SIGN",
        "algorithm": "Ed25519",
        "public_key": b"\x03" * 32,
        "status": "ACTIVE",
        "not_before": NOW,
        "not_after": None,
    },
}


def _synthesise(schema: Any, named: dict[str, Any]) -> Any:
    """A valid value for any Avro schema, so every catalogue entry round-trips."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"] or ["null"]
        return _synthesise(branches[0], named)
    if isinstance(schema, str):
        if schema in named:
            return _synthesise(named[schema], named)
        return {"null": None, "boolean": True, "int": 7, "long": 7, "float": 1.5, "double": 1.5,
                "bytes": b"\x01\x02", "string": "x"}[schema]
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "uuid":
        return uuid.uuid4()
    if logical in ("timestamp-millis", "timestamp-micros"):
        return NOW
    if kind in ("record", "enum", "fixed"):
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', 'renkei')}.{schema['name']}"
        named[schema["name"]] = named[full] = schema
    if kind == "record":
        return {f["name"]: _synthesise(f["type"], named) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return b"\x00" * schema["size"]
    if kind == "array":
        return [_synthesise(schema["items"], named)]
    if kind == "map":
        return {"k": _synthesise(schema["values"], named)}
    return _synthesise(kind, named)


def _all_versions() -> list[tuple[str, int]]:
    return [(name, v) for name in codec.names() for v in codec.versions(name)]


# --- round trips ----------------------------------------------------------------


def test_every_message_type_maps_to_a_catalogue_schema():
    assert set(types.BODY_SCHEMA.values()) <= set(codec.names())
    assert set(SAMPLES) <= set(codec.names())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_round_trips(name):
    data = codec.encode(name, SAMPLES[name])
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.fingerprint(name)
    decoded = codec.decode(data, name)
    for key, value in SAMPLES[name].items():
        assert decoded[key] == value, key
    assert codec.encode(name, decoded) == data


@pytest.mark.parametrize(("name", "version"), _all_versions())
def test_every_version_round_trips_a_synthesised_record(name, version):
    record = _synthesise(catalogue.catalogue().by_name[name][version].source, {})
    data = codec.encode(name, record, version=version)
    assert codec.writer_name(data) == (name, version)
    assert codec.encode(name, codec.decode(data), version=version) == data
    codec.decode(data, name)  # resolves against the latest version


def _crc64_avro(data: bytes) -> int:
    """The spec's reference CRC-64-AVRO (Rabin) fingerprint, written out independently."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_is_little_endian_crc64_avro_of_the_canonical_form():
    # Spec vector: fingerprint64("null") == 0x63dd24e7cc258f8a, framed little-endian.
    assert catalogue.fingerprint_of("null") == (0x63DD24E7CC258F8A).to_bytes(8, "little")
    for name, version in _all_versions():
        entry = catalogue.catalogue().by_name[name][version]
        assert "logicalType" not in entry.canonical_form and '"doc"' not in entry.canonical_form
        expected = _crc64_avro(entry.canonical_form.encode()).to_bytes(8, "little")
        assert entry.fingerprint == expected, (name, version)


def test_fingerprint_agrees_with_the_avro_package_where_it_follows_the_spec():
    # avro (Python) 1.12 leaves {"type": "long"} in the canonical form of a
    # logical-typed primitive, against the spec's [PRIMITIVES] rule that
    # fastavro and Java follow; compare on a schema without logical types.
    plain = {"type": "record", "name": "renkei.Plain", "doc": "d",
             "fields": [{"name": "a", "type": ["null", "string"], "doc": "d", "default": None},
                        {"name": "b", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}]}
    reference = avro.schema.parse(json.dumps(plain)).fingerprint("CRC-64-AVRO")
    assert catalogue.fingerprint_of(plain) == bytes(reference)


def test_omitted_fields_take_their_defaults():
    data = codec.encode("provision_response", {"status": "NOT_REGISTERED", "answered_at": NOW})
    assert codec.decode(data, "provision_response")["account"] is None


def test_old_version_is_read_as_the_latest():
    assert codec.versions("provision_inquiry") == [1, 2]
    v1 = codec.encode("provision_inquiry", {"procedure_code": "P", "requested_at": NOW}, version=1)
    assert codec.writer_name(v1) == ("provision_inquiry", 1)
    assert codec.decode(v1, "provision_inquiry") == {"procedure_code": "P", "purpose": None, "requested_at": NOW}
    assert "purpose" not in codec.decode(v1)  # no name: read as written


def test_string_uuids_are_accepted_and_read_back_as_uuid():
    record = dict(SAMPLES["rejection_notice"], original_message_id=str(SAMPLES["rejection_notice"]["original_message_id"]))
    decoded = codec.decode(codec.encode("rejection_notice", record))
    assert decoded["original_message_id"] == SAMPLES["rejection_notice"]["original_message_id"]


# --- encode errors -----------------------------------------------------------------

SECRET = "ヤマダ123456789018"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({**SAMPLES["provision_response"], "status": SECRET}, "status"),
        ({**SAMPLES["provision_response"], "account": {**ACCOUNT, "branch_code": 5}}, "branch_code"),
        ({"status": "REGISTERED", "account": ACCOUNT}, "answered_at"),
        ({**SAMPLES["provision_response"], "extra": SECRET}, "extra"),
    ],
)
def test_encode_rejects_invalid_records_naming_the_field_not_the_value(record, field):
    with pytest.raises(CodecError) as caught:
        codec.encode("provision_response", record)
    assert caught.value.reason is Reason.MALFORMED
    assert field in caught.value.message
    assert SECRET not in str(caught.value) and "ヤマダ" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_encode_rejects_out_of_range_int_and_bad_uuid():
    with pytest.raises(CodecError, match="accounts_linked"):
        codec.encode("numbering_ack", {**SAMPLES["numbering_ack"], "accounts_linked": 2**40})
    with pytest.raises(CodecError, match="original_message_id"):
        codec.encode("rejection_notice", {**SAMPLES["rejection_notice"], "original_message_id": SECRET})


def test_unknown_names_and_versions_are_unknown_schema():
    for call in (
        lambda: codec.encode("no_such_schema", {}),
        lambda: codec.encode("provision_inquiry", {}, version=99),
        lambda: codec.versions("no_such_schema"),
        lambda: codec.fingerprint("no_such_schema"),
        lambda: codec.decode(codec.encode("numbering_ack", SAMPLES["numbering_ack"]), "no_such_schema"),
    ):
        with pytest.raises(CodecError) as caught:
            call()
        assert caught.value.reason is Reason.UNKNOWN_SCHEMA


# --- decode errors ------------------------------------------------------------------


def _valid() -> bytes:
    return codec.encode("lookup_result", SAMPLES["lookup_result"])


def _reason(data: bytes, name: str | None = None, **kw) -> Reason:
    with pytest.raises(CodecError) as caught:
        codec.decode(data, name, **kw)
    return caught.value.reason


def test_decode_error_reasons():
    data = _valid()
    assert _reason(data, max_size=len(data) - 1) is Reason.OVERSIZE
    assert _reason(b"") is Reason.MALFORMED
    assert _reason(b"\xc3\x02" + data[2:]) is Reason.MALFORMED
    assert _reason(data[:9]) is Reason.MALFORMED
    assert _reason(data[:-1]) is Reason.MALFORMED
    assert _reason(data + b"\x00") is Reason.MALFORMED  # trailing bytes
    assert _reason(data[:2] + b"\x00" * 8 + data[10:]) is Reason.UNKNOWN_SCHEMA
    # A writer of another logical name is UNKNOWN_SCHEMA, not a silent misread.
    assert _reason(data, "lookup_answer") is Reason.UNKNOWN_SCHEMA
    with pytest.raises(CodecError):
        codec.decode("not bytes")  # type: ignore[arg-type]


def test_huge_length_prefix_does_not_allocate():
    header = codec.fingerprint("lookup_result")
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"  # zig-zag varint ~2**62
    for body in (b"\x00" + huge, huge, b"\x01" + huge + b"\x00"):  # enum then array count, ...
        assert _reason(b"\xc3\x01" + header + body) is Reason.MALFORMED
    token = codec.fingerprint("token_issue_response")
    assert _reason(b"\xc3\x01" + token + huge + b"abc") is Reason.MALFORMED  # bytes length


def test_decode_messages_never_echo_the_body():
    data = codec.encode("existence_check", {"account": {**ACCOUNT, "holder_kana": "ヒミツ"}, "requested_at": NOW})
    corrupt = data.replace("ヒミツ".encode(), b"\xff\xfe\xfd" * 3)
    with pytest.raises(CodecError) as caught:
        codec.decode(corrupt, "existence_check")
    assert "\\xff" not in str(caught.value) and "ヒミツ" not in str(caught.value)
    assert caught.value.__suppress_context__


def test_catalogue_refuses_arrays_of_zero_size_items(tmp_path: Path):
    folder = tmp_path / "bad_array"
    folder.mkdir()
    (folder / "v1.avsc").write_text(json.dumps({
        "type": "record", "name": "BadArray", "namespace": "renkei", "doc": "d",
        "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}, "doc": "d"}],
    }))
    with pytest.raises(ValueError, match="zero-size"):
        catalogue.load(tmp_path)


# --- fuzzing: only CodecError ever escapes ---------------------------------------------

FINGERPRINTS = [codec.fingerprint(name, v) for name, v in _all_versions()]
VALID = [codec.encode(name, SAMPLES[name]) for name in sorted(SAMPLES)]
NAMES = st.sampled_from([None, *codec.names()])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_codec_error(data: bytes, name: str | None) -> None:
    try:
        codec.decode(data, name)
    except CodecError:
        pass


@FUZZ
@given(st.binary(max_size=64), NAMES)
def test_random_bytes(data, name):
    _only_codec_error(data, name)


@FUZZ
@given(st.sampled_from(FINGERPRINTS), st.binary(max_size=64), NAMES)
def test_random_body_behind_a_valid_header(fp, body, name):
    _only_codec_error(b"\xc3\x01" + fp + body, name)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_mutations_of_valid_records(data, draw):
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "truncate", "insert", "fingerprint", "length"]))
        if op == "flip" and mutated:
            i = draw.draw(st.integers(0, len(mutated) - 1))
            mutated[i] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "truncate":
            del mutated[draw.draw(st.integers(0, len(mutated))):]
        elif op == "insert":
            i = draw.draw(st.integers(0, len(mutated)))
            mutated[i:i] = draw.draw(st.binary(min_size=1, max_size=8))
        elif op == "fingerprint" and len(mutated) >= 10:
            mutated[2:10] = draw.draw(st.sampled_from(FINGERPRINTS))
        elif op == "length":
            i = draw.draw(st.integers(10, max(10, len(mutated))))
            mutated[i:i] = draw.draw(st.sampled_from([b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f",
                                                       b"\xff\xff\xff\xff\x0f", b"\x01", b"\x81\x80\x80\x80\x10"]))
    _only_codec_error(bytes(mutated), draw.draw(NAMES))
