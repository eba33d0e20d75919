"""The schema catalogue: every ``schemas/avsc/<logical_name>/v<N>.avsc``, loaded once.

Each version is parsed with fastavro once and indexed by its CRC-64-AVRO
fingerprint of the Parsing Canonical Form, which is what the single-object
header carries. Every version ever published stays in the catalogue so old
bytes remain readable; a reader resolves them against the latest version.

Each .avsc file is self-contained: a named type shared by several schemas
(``renkei.BankAccount``) is inlined in each file that uses it, so a file
parses on its own in any Avro library.

The catalogue's compatibility rule is FULL_TRANSITIVE: every version reads
every other version's data, both ways. :func:`incompatibilities` and
:func:`check_full_transitive` are the one implementation of that check (Apache
Avro's own ``avro.compatibility``), used by the tests and ``renkei schemas check``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fingerprint_hex
from fastavro.schema import to_parsing_canonical_form

AVSC_ROOT = Path(__file__).parent / "avsc"
NAMESPACE = "renkei"
_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")
_LOGICAL_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass(frozen=True)
class SchemaVersion:
    """One published version of one logical schema."""

    name: str  # logical name, e.g. "provision_inquiry"
    version: int
    fingerprint: bytes  # 8-byte little-endian CRC-64-AVRO of the canonical form
    canonical_form: str
    source: dict[str, Any] = field(repr=False)  # the .avsc as written
    parsed: dict[str, Any] = field(repr=False)  # fastavro-parsed; never mutate
    uuid_fields: tuple[str, ...] = ()  # top-level string fields with logicalType uuid
    defaults: dict[str, Any] = field(default_factory=dict, repr=False)  # top-level field defaults

    @property
    def header(self) -> bytes:
        return SINGLE_OBJECT_MARKER + self.fingerprint


SINGLE_OBJECT_MARKER = b"\xc3\x01"


def camel_name(logical_name: str) -> str:
    """``provision_inquiry`` -> ``ProvisionInquiry`` (the record's Avro name)."""
    return "".join(part.capitalize() for part in logical_name.split("_"))


def fingerprint_of(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, little-endian."""
    canonical = to_parsing_canonical_form(schema)
    # fastavro's hex is already the little-endian byte order the spec frames.
    return bytes.fromhex(_fingerprint_hex(canonical, "CRC-64-AVRO"))


@dataclass(frozen=True)
class Catalogue:
    by_fingerprint: dict[bytes, SchemaVersion]
    by_name: dict[str, dict[int, SchemaVersion]]
    latest: dict[str, SchemaVersion]


def load(root: Path = AVSC_ROOT) -> Catalogue:
    """Load and index every .avsc under ``root``. Raises ValueError on a bad catalogue."""
    by_fingerprint: dict[bytes, SchemaVersion] = {}
    by_name: dict[str, dict[int, SchemaVersion]] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        name = directory.name
        if not _LOGICAL_NAME.fullmatch(name):
            raise ValueError(f"schema folder {name!r} is not a snake_case logical name")
        versions: dict[int, SchemaVersion] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _VERSION_FILE.fullmatch(path.name)
            if match is None:
                raise ValueError(f"{path}: schema files must be named v<N>.avsc")
            entry = _load_version(name, int(match.group(1)), path)
            clash = by_fingerprint.get(entry.fingerprint)
            if clash is not None:
                raise ValueError(
                    f"{path}: same canonical form as {clash.name} v{clash.version}"
                )
            by_fingerprint[entry.fingerprint] = entry
            versions[entry.version] = entry
        if versions:
            by_name[name] = dict(sorted(versions.items()))
    latest = {name: vs[max(vs)] for name, vs in by_name.items()}
    return Catalogue(by_fingerprint, by_name, latest)


def _load_version(name: str, version: int, path: Path) -> SchemaVersion:
    return parse_version(name, version, json.loads(path.read_text(encoding="utf-8")), where=path)


def parse_version(name: str, version: int, source: dict[str, Any], *, where: object = "schema") -> SchemaVersion:
    """One version from its .avsc JSON, with the catalogue's rules; raises ValueError naming ``where``."""
    if not isinstance(source, dict) or source.get("type") != "record":
        raise ValueError(f"{where}: a catalogue schema is an Avro record")
    try:
        # A fresh named-type table per version: v1 and v2 both define renkei.X.
        parsed = fastavro.parse_schema(source, named_schemas={})
    except Exception as exc:  # fastavro raises several types for a bad schema; the message is schema text only
        raise ValueError(f"{where}: not a valid Avro schema: {exc}") from None
    _refuse_zero_size_items(parsed, where)
    uuid_fields = tuple(
        f["name"]
        for f in source.get("fields", ())
        if isinstance(f.get("type"), dict)
        and f["type"].get("logicalType") == "uuid"
        and f["type"].get("type") == "string"
    )
    return SchemaVersion(
        name=name,
        version=version,
        fingerprint=fingerprint_of(source),
        canonical_form=to_parsing_canonical_form(source),
        source=source,
        parsed=parsed,
        uuid_fields=uuid_fields,
        defaults={f["name"]: f["default"] for f in source.get("fields", ()) if "default" in f},
    )


def _refuse_zero_size_items(schema: Any, path: object) -> None:
    """An array or map of zero-byte items lets a 20-byte input claim 2**62 items.

    Every item must consume at least one input byte, so a hostile count runs
    into end-of-input after at most ``len(data)`` items.
    """

    seen: set[str] = set()

    def min_size(s: Any) -> int:
        if isinstance(s, str):
            if s == "null":
                return 0
            return 1  # every other primitive and named reference takes >= 1 byte
        if isinstance(s, list):
            return 1  # the union branch index
        kind = s.get("type")
        if kind == "record":
            if s["name"] in seen:
                return 1  # recursive reference; conservatively non-empty
            seen.add(s["name"])
            return sum(min_size(f["type"]) for f in s["fields"])
        if kind == "fixed":
            return int(s["size"])
        if kind in ("array", "map", "enum"):
            return 1
        return min_size(kind)

    def walk(s: Any) -> None:
        if isinstance(s, list):
            for branch in s:
                walk(branch)
        elif isinstance(s, dict):
            kind = s.get("type")
            if kind in ("array", "map"):
                items = s["items"] if kind == "array" else s["values"]
                if min_size(items) == 0:
                    raise ValueError(f"{path}: {kind} of zero-size items is not allowed")
                walk(items)
            elif kind == "record":
                for f in s["fields"]:
                    walk(f["type"])

    walk(schema)


@cache
def catalogue() -> Catalogue:
    """The package's catalogue, loaded on first use and then shared."""
    return load()


# --- compatibility (FULL_TRANSITIVE) ------------------------------------------------


FULL_TRANSITIVE = "FULL_TRANSITIVE"


@dataclass(frozen=True)
class Incompatibility:
    """One direction in which one version cannot read another's data, and Avro's reasons."""

    reader: str  # "v2", or "proposed"
    writer: str
    problems: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.reader} cannot read data written by {self.writer}: {'; '.join(self.problems)}"


def incompatibilities(reader: dict[str, Any], writer: dict[str, Any]) -> tuple[str, ...]:
    """Why ``reader`` cannot read what ``writer`` wrote (Avro schema resolution); empty when it can.

    Apache Avro's own checker (``avro.compatibility``, the Python port of Java's
    ``SchemaCompatibility``), on the schemas as written.
    """
    import avro.errors
    import avro.schema
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    try:
        parsed_reader, parsed_writer = avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    except avro.errors.AvroException as exc:  # schema text only, never data
        raise ValueError(f"not a valid Avro schema (Apache Avro): {exc}") from None
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader=parsed_reader, writer=parsed_writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return ()
    where = sorted(result.locations or ())
    return tuple(sorted(result.messages or ())) + ((f"at {', '.join(where)}",) if where else ())


def compatible(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    """``reader`` can read data ``writer`` wrote."""
    return not incompatibilities(reader, writer)


def check_full_transitive(
    proposed: dict[str, Any], earlier: dict[int, SchemaVersion], *, label: str = "proposed"
) -> list[Incompatibility]:
    """Every way ``proposed`` breaks FULL_TRANSITIVE against ``earlier`` versions (both directions each).

    Raises ValueError when Apache Avro cannot parse ``proposed``."""
    found = []
    for version, entry in sorted(earlier.items()):
        old = f"v{version}"
        for reader, writer, r_label, w_label in ((proposed, entry.source, label, old),
                                                 (entry.source, proposed, old, label)):
            problems = incompatibilities(reader, writer)
            if problems:
                found.append(Incompatibility(r_label, w_label, problems))
    return found


def logical_name_of(source: dict[str, Any]) -> str:
    """``renkei.ProvisionInquiry`` (or name + namespace) -> ``provision_inquiry``."""
    full = str(source.get("name", ""))
    short = full.rsplit(".", 1)[-1]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", short).lower()
