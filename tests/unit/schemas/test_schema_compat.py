"""The catalogue's rules: FULL_TRANSITIVE compatibility, docs, naming, no My Number."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest

from schemas import catalogue, types

ROOT = catalogue.AVSC_ROOT
FILES = sorted(ROOT.glob("*/*.avsc"))
NAMES = sorted(p.name for p in ROOT.iterdir() if p.is_dir())


def _source(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _versions(name: str) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / name).glob("v*.avsc")):
        found.append((int(path.stem[1:]), _source(path)))
    return sorted(found, key=lambda pair: pair[0])


_compatible = catalogue.compatible  # the one FULL_TRANSITIVE check, shared with `renkei schemas check`


# --- compatibility -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_pair_of_versions_is_mutually_compatible(name):
    """FULL_TRANSITIVE: any version reads any other version's data, both ways."""
    versions = _versions(name)
    for (va, a), (vb, b) in itertools.combinations(versions, 2):
        assert _compatible(reader=b, writer=a), f"{name}: v{vb} cannot read v{va}"
        assert _compatible(reader=a, writer=b), f"{name}: v{va} cannot read v{vb}"


@pytest.mark.parametrize("name", NAMES)
def test_each_version_passes_the_full_transitive_check_against_its_predecessors(name):
    versions = catalogue.catalogue().by_name[name]
    for number, entry in versions.items():
        earlier = {v: e for v, e in versions.items() if v < number}
        assert catalogue.check_full_transitive(entry.source, earlier) == [], (name, number)


def test_the_history_has_a_real_second_version():
    assert [v for v, _ in _versions("provision_inquiry")] == [1, 2]


def test_checker_fails_on_a_new_required_field():
    """The guard can fail: a field without default breaks backward compatibility."""
    _, latest = _versions("provision_inquiry")[-1]
    broken = copy.deepcopy(latest)
    broken["fields"].append({"name": "agency_ref", "type": "string", "doc": "Breaking: no default."})
    assert not _compatible(reader=broken, writer=latest)  # new reader, old data
    assert _compatible(reader=latest, writer=broken)  # old reader ignores the field
    found = catalogue.check_full_transitive(broken, catalogue.catalogue().by_name["provision_inquiry"])
    assert [(i.reader, i.writer) for i in found] == [("proposed", "v1"), ("proposed", "v2")]
    assert all("agency_ref" in i.describe() for i in found)


def test_checker_fails_on_a_new_enum_symbol_without_reader_default():
    _, response = _versions("registration_request")[-1]
    grown = copy.deepcopy(response)
    grown["fields"][0]["type"]["symbols"].append("SUSPEND")  # RegistrationOperation has no default
    assert not _compatible(reader=response, writer=grown)


def test_enum_default_lets_old_readers_accept_new_symbols():
    _, response = _versions("provision_response")[-1]
    grown = copy.deepcopy(response)
    grown["fields"][0]["type"]["symbols"].append("PENDING")
    assert _compatible(reader=response, writer=grown)
    assert _compatible(reader=grown, writer=response)


def test_checker_fails_on_a_changed_type():
    _, latest = _versions("numbering_ack")[-1]
    broken = copy.deepcopy(latest)
    broken["fields"][2]["type"] = "string"  # accounts_linked: int -> string
    assert not _compatible(reader=broken, writer=latest)


# --- files, names, docs ---------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_file_parses_and_is_named_after_its_folder(path):
    source = _source(path)
    assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", path.parent.name)
    assert re.fullmatch(r"v[1-9][0-9]*\.avsc", path.name)
    assert source["type"] == "record"
    assert source.get("namespace", "renkei") == "renkei" or source["name"].startswith("renkei.")
    assert source["name"].split(".")[-1] == catalogue.camel_name(path.parent.name)
    fastavro.parse_schema(source, named_schemas={})
    avro.schema.parse(json.dumps(source))


def _undocumented(schema: Any, where: str, seen: set[str]) -> list[str]:
    if isinstance(schema, list):
        return [m for branch in schema for m in _undocumented(branch, where, seen)]
    if not isinstance(schema, dict):
        return []
    missing = []
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed"):
        if schema["name"] in seen:
            return []
        seen.add(schema["name"])
        if not str(schema.get("doc", "")).strip():
            missing.append(f"{where}:{schema['name']}")
    if kind == "record":
        for field in schema["fields"]:
            if not str(field.get("doc", "")).strip():
                missing.append(f"{where}.{field['name']}")
            missing += _undocumented(field["type"], f"{where}.{field['name']}", seen)
    elif kind == "array":
        missing += _undocumented(schema["items"], where, seen)
    elif kind == "map":
        missing += _undocumented(schema["values"], where, seen)
    return missing


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_record_enum_and_field_has_a_doc(path):
    assert _undocumented(_source(path), path.parent.name, set()) == []


def _fields(schema: Any, seen: set[str]):
    if isinstance(schema, list):
        for branch in schema:
            yield from _fields(branch, seen)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record" and schema["name"] not in seen:
            seen.add(schema["name"])
            for field in schema["fields"]:
                yield field
                yield from _fields(field["type"], seen)
        elif kind == "array":
            yield from _fields(schema["items"], seen)
        elif kind == "map":
            yield from _fields(schema["values"], seen)


MY_NUMBER = re.compile(r"my_?number|mynumber|kojin_?bango|individual_?number", re.IGNORECASE)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_my_number_field_except_the_sealed_one(path):
    for field in _fields(_source(path), set()):
        if MY_NUMBER.search(field["name"]):
            assert (path.parent.name, field["name"]) == ("token_issue_request", "sealed_my_number")
            assert field["type"] == "bytes"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_enum_defaults_are_symbols(path):
    for field in _fields(_source(path), set()):
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "enum" and "default" in kind:
            assert kind["default"] in kind["symbols"]


def test_bank_account_is_the_same_everywhere():
    """BankAccount is inlined per file (self-contained .avsc); the copies must not drift."""
    copies = {}
    for path in FILES:
        for field in _fields(_source(path), set()):
            kind = field["type"]
            candidates = kind if isinstance(kind, list) else [kind]
            for candidate in candidates:
                if isinstance(candidate, dict) and candidate.get("type") == "array":
                    candidate = candidate["items"]
                if isinstance(candidate, dict) and candidate.get("name") == "BankAccount":
                    copies[str(path.relative_to(ROOT))] = candidate
    users = {"registration_request", "existence_check", "provision_response", "lookup_answer", "lookup_result"}
    assert {where.split("/")[0] for where in copies} >= users
    first = next(iter(copies.values()))
    for where, found in copies.items():
        assert found == first, where


def test_message_types_name_real_schemas():
    assert set(types.BODY_SCHEMA.values()) <= set(NAMES)
    assert all(re.fullmatch(r"[a-z]+(\.[a-z]+)+", t) for t in types.BODY_SCHEMA)
    assert types.MESSAGE_TYPES == frozenset(types.BODY_SCHEMA)


def test_registration_v2_adds_consent_and_outcomes_both_ways():
    """A v1 registration (an older portal or bank) reads as v2 with no consent; a v2 one with consent reads
    at a v1 reader without it; v2's new outcomes read as UNKNOWN at a v1 reader (its enum default)."""
    from datetime import UTC, datetime

    from schemas import codec

    now = datetime(2025, 4, 1, tzinfo=UTC)
    request = {"operation": "DELETE", "account": None, "channel": "BANK_COUNTER", "requested_at": now}
    v1 = codec.encode("registration_request", request, version=1)
    assert codec.decode(v1, "registration_request")["consent"] is None
    consent = {"given_by": "PERSON", "method": "BANK_APP", "given_at": now, "evidence_ref": "APP-1"}
    v2 = codec.encode("registration_request", {**request, "consent": consent}, version=2)
    assert codec.decode(v2, "registration_request")["consent"] == consent
    old_reader = fastavro.parse_schema(_versions("registration_request")[0][1], named_schemas={})
    new_writer = fastavro.parse_schema(_versions("registration_request")[1][1], named_schemas={})
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, new_writer, {**request, "consent": consent})
    buf.seek(0)
    assert "consent" not in fastavro.schemaless_reader(buf, new_writer, old_reader)

    result_v1 = fastavro.parse_schema(_versions("registration_result")[0][1], named_schemas={})
    result_v2 = fastavro.parse_schema(_versions("registration_result")[1][1], named_schemas={})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, result_v2, {"operation": "REGISTER", "status": "NOT_HOLDER", "detail": None,
                                                "decided_at": now})
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, result_v2, result_v1)["status"] == "UNKNOWN"


def test_a_schema_apache_avro_cannot_parse_is_a_value_error_not_a_crash():
    bad = {"type": "record", "name": "renkei.X", "fields": [{"name": "a", "type": "no_such_type"}]}
    with pytest.raises(ValueError, match="not a valid Avro schema"):
        catalogue.incompatibilities(bad, catalogue.catalogue().latest["numbering_ack"].source)
