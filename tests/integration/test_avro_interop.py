"""Renkei's Avro framing against an independent implementation: Apache Avro's Java library.

The JVM program (infra/avro-interop, resolved by Maven from Maven Central) decodes Renkei's
single-object bytes with ``BinaryMessageDecoder`` + ``SchemaStore`` (one record of every version of
every schema, and a real sealed envelope), encodes records with ``BinaryMessageEncoder`` for Renkei to
decode, and prints Java's CRC-64-AVRO fingerprint and Parsing Canonical Form of every catalogue version.
No mock: a disagreement on the fingerprint, the body encoding or schema resolution fails a comparison.
"""

from __future__ import annotations

import copy
import fcntl
import io
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import fastavro
import pytest
from fastavro.utils import generate_one

from infra.core.settings import DEFAULT_CACHE
from infra.platform.kafka_broker import MIN_JAVA, find_java
from schemas import codec
from schemas.catalogue import AVSC_ROOT, catalogue, check_full_transitive
from tests.tools import require
from tests.unit.envelope_world import World

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2] / "infra" / "avro-interop"
POM = PROJECT / "pom.xml"
MAIN = PROJECT / "src" / "main" / "java" / "renkei" / "interop" / "AvroInterop.java"


def _missing() -> str | None:
    java = find_java()
    if java is None:
        return "Java is not installed (the Avro interop test runs Apache Avro's Java library)"
    if java.major < MIN_JAVA:
        return f"Java {java.version} is older than {MIN_JAVA}"
    if not (Path(os.path.realpath(java.path)).parent / "javac").exists():
        return f"{java.path} is a JRE: the interop program is compiled from source, which needs a JDK (javac)"
    if shutil.which("mvn") is None:
        return "Maven (mvn) is not installed (it resolves org.apache.avro:avro from Maven Central)"
    return None


def _avro_version() -> str:
    return re.search(r"<avro\.version>([^<]+)</avro\.version>", POM.read_text()).group(1)  # type: ignore[union-attr]


def _libs() -> Path:
    """The Java classpath, resolved by Maven once into the cache the embedded Kafka's jars share."""
    home = DEFAULT_CACHE / f"avro-interop-{_avro_version()}"
    home.mkdir(parents=True, exist_ok=True)
    libs = home / "libs"
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits for one fetch
        if not (home / "COMPLETE").exists():
            shutil.rmtree(libs, ignore_errors=True)
            result = subprocess.run(["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
                                     f"-Dlibs.dir={libs}"], capture_output=True, text=True, timeout=900, check=False)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            (home / "COMPLETE").write_text("ok\n")
    assert any(libs.glob("avro-*.jar"))
    return libs


def _run_java(work: Path) -> None:
    java = find_java()
    assert java is not None
    result = subprocess.run([java.path, "-cp", f"{_libs()}/*", str(MAIN), str(AVSC_ROOT), str(work)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"Java failed:\n{result.stdout}\n{result.stderr}"


def _avro_json(schema: dict, record: dict) -> str:
    out = io.StringIO()
    fastavro.json_writer(out, schema, [record])
    return out.getvalue()


def _from_avro_json(schema: dict, text: str) -> dict:
    return next(iter(fastavro.json_reader(io.StringIO(text), schema)))


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory):
    """Run the JVM once over: a random record of every catalogue version and a real sealed envelope."""
    require(_missing())
    work = tmp_path_factory.mktemp("avro-interop")
    (work / "in").mkdir()
    saved = random.getstate()
    random.seed(19)  # fastavro's generator draws from `random`: the same records every run
    cases: dict[str, tuple[str, int, bytes]] = {}
    for name, versions in catalogue().by_name.items():
        for version, entry in versions.items():
            record = generate_one(entry.parsed)
            data = codec.encode(name, record, version=version)
            case = f"v{version}-generated"
            cases[f"{name}.{case}"] = (name, version, data)
            (work / "in" / f"{name}.{case}.bin").write_bytes(data)
            (work / "in" / f"{name}.v{version}.{case}.json").write_text(
                _avro_json(entry.parsed, codec.decode(data)))
    random.setstate(saved)
    world = World()
    sealed = world.seal("agency-a", "registry", "provision.inquiry")  # as the agency sends it to the hub
    forwarded = world.forward(sealed)  # countersigned, as the registry receives it
    for label, data in (("sealed", sealed), ("forwarded", forwarded)):
        version = codec.writer_name(data)[1]
        cases[f"envelope.{label}"] = ("envelope", version, data)
        (work / "in" / f"envelope.{label}.bin").write_bytes(data)
        (work / "in" / f"envelope.v{version}.{label}.json").write_text(
            _avro_json(codec.schema("envelope", version), codec.decode(data)))
    for name, case, proposed in _proposals():
        (work / "in" / f"{name}.{case}.avsc").write_text(json.dumps(proposed))
    _run_java(work)
    return work, cases, world


def _field(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["name"] == name)


def _proposals() -> list[tuple[str, str, dict]]:
    """Proposed next versions, compatible and not, for `renkei schemas check` and Java to judge."""
    def latest(name: str) -> dict:
        return copy.deepcopy(catalogue().latest[name].source)

    optional = {"name": "channel_ref", "type": ["null", "string"], "default": None, "doc": "d"}
    add_optional = latest("provision_inquiry")
    add_optional["fields"].append(optional)
    add_required = latest("provision_inquiry")
    add_required["fields"].append({"name": "agency_ref", "type": "string", "doc": "d"})
    purpose_required = latest("provision_inquiry")  # reads v2 data, not v1's
    del _field(purpose_required, "purpose")["default"]
    purpose_required["fields"].append(optional)
    type_change = latest("numbering_ack")
    _field(type_change, "accounts_linked")["type"] = "string"
    closed_enum = latest("registration_request")
    _field(closed_enum, "operation")["type"]["symbols"].append("SUSPEND")
    open_enum = latest("provision_response")
    _field(open_enum, "status")["type"]["symbols"].insert(-1, "PENDING")
    return [("provision_inquiry", "add-optional", add_optional), ("provision_inquiry", "add-required", add_required),
            ("provision_inquiry", "purpose-required", purpose_required), ("numbering_ack", "type-change", type_change),
            ("registration_request", "closed-enum", closed_enum), ("provision_response", "open-enum", open_enum)]


def test_java_computes_the_same_fingerprint_and_canonical_form_for_every_version(exchanged):
    """The single-object header Renkei writes is the one Java writes and looks up (the Avro spec's
    CRC-64-AVRO of the Parsing Canonical Form, logical types stripped)."""
    work, *_ = exchanged
    java = {}
    for line in (work / "fingerprints.tsv").read_text(encoding="utf-8").splitlines():
        name, version, fingerprint, canonical = line.split("\t")
        java[(name, int(version))] = (fingerprint, canonical)
    ours = {(name, v): (e.fingerprint.hex(), e.canonical_form)
            for name, versions in catalogue().by_name.items() for v, e in versions.items()}
    assert java.keys() == ours.keys()
    for key, (fingerprint, canonical) in ours.items():
        assert java[key] == (fingerprint, canonical), key
    logical = [k for k, e in ((k, catalogue().by_name[k[0]][k[1]]) for k in ours) if "logicalType" in json.dumps(e.source)]
    assert logical, "the catalogue has logical types, so this covers the case the avro package gets wrong"


def test_java_decodes_every_renkei_record_as_the_latest_version(exchanged):
    """Java's BinaryMessageDecoder finds the writer by fingerprint in its SchemaStore and resolves
    the record to the latest version, reading the same values Renkei reads."""
    work, cases, *_ = exchanged
    for case, (name, _version, data) in cases.items():
        reader = codec.schema(name)
        java_read = _from_avro_json(reader, (work / "out" / f"{case}.json").read_text())
        assert java_read == codec.decode(data, name), case


def test_renkei_decodes_what_java_encoded_byte_for_byte(exchanged):
    """Java's BinaryMessageEncoder writes the same bytes as Renkei for the same record and version,
    and Renkei's decoder reads them."""
    work, cases, *_ = exchanged
    for case, (name, version, data) in cases.items():
        label = case.split(".", 1)[1]
        java_bytes = (work / "out" / f"{name}.v{version}.{label}.bin").read_bytes()
        assert java_bytes[:2] == b"\xc3\x01" and java_bytes[2:10] == codec.fingerprint(name, version), case
        assert codec.writer_name(java_bytes) == (name, version)
        assert codec.decode(java_bytes, name) == codec.decode(data, name), case
        assert java_bytes == data, case


def test_a_real_envelope_java_re_encoded_is_still_verified_and_opened(exchanged):
    """A real sealed envelope survives Java: what Java decoded and re-encoded passes the hub's ingress
    verification (sealed) and the recipient's signature checks and decryption (forwarded)."""
    work, cases, world = exchanged
    _, version, sealed = cases["envelope.sealed"]
    java_sealed = (work / "out" / f"envelope.v{version}.sealed.bin").read_bytes()
    assert world.ingress.verify(java_sealed).meta.sender == "agency-a"
    _, version, forwarded = cases["envelope.forwarded"]
    java_forwarded = (work / "out" / f"envelope.v{version}.forwarded.bin").read_bytes()
    opened = world.opener("registry").receive(java_forwarded)
    assert opened.meta.type == "provision.inquiry" and opened.meta.sender == "agency-a"
    assert opened.body == world.opener("registry").receive(forwarded).body
    java_read = _from_avro_json(codec.schema("envelope"), (work / "out" / "envelope.forwarded.json").read_text())
    assert java_read["countersignature"] is not None
    assert java_read["body"] == codec.decode(forwarded)["body"]  # the ciphertext, untouched


def test_java_agrees_with_the_full_transitive_check(exchanged):
    """`renkei schemas check` (schemas.catalogue.check_full_transitive) and Java's SchemaCompatibility,
    both ways against every version (what a Schema Registry applies under FULL_TRANSITIVE), give the
    same verdict on compatible and incompatible proposals, and both accept every published version."""
    work, *_ = exchanged
    for line in (work / "compatibility.tsv").read_text().splitlines():
        name, version, verdict = line.split("\t", 2)
        assert verdict == "compatible", (name, version, verdict)
    verdicts = {}
    for name, case, proposed in _proposals():
        java = (work / "out" / f"{name}.{case}.verdict").read_text()
        ours = check_full_transitive(proposed, catalogue().by_name[name])
        verdicts[case] = java.split("\t")[0]
        assert (java == "compatible") == (not ours), (case, java, [i.describe() for i in ours])
    assert verdicts == {"add-optional": "compatible", "add-required": "incompatible",
                        "purpose-required": "incompatible", "type-change": "incompatible",
                        "closed-enum": "incompatible", "open-enum": "compatible"}
