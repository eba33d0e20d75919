"""Avro single-object encoding of catalogue records: ``C3 01`` + fingerprint + body.

The 8-byte little-endian CRC-64-AVRO fingerprint names the writer's schema
version, so a reader resolves it from the catalogue with no registry server
and reads it as the latest version of the expected logical schema (Avro
schema resolution). This module is a trust boundary: whatever the bytes,
only :class:`~infra.core.errors.CodecError` escapes, and no message echoes a value.

Decoding a record whose writer schema belongs to a *different* logical name
than the one asked for is ``UNKNOWN_SCHEMA``: the fingerprint is not a known
version of the expected schema.

Decoded values: ``timestamp-millis`` fields are timezone-aware UTC
``datetime``; ``uuid`` fields are ``uuid.UUID``; enums are their symbol
strings. Encoding accepts ``datetime`` or epoch milliseconds, and ``UUID`` or
its string form.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError as _AvroValidationError
from fastavro.validation import validate as _validate

from infra.core.errors import CodecError, Reason
from schemas.catalogue import SINGLE_OBJECT_MARKER, SchemaVersion, catalogue

__all__ = [
    "DEFAULT_MAX_SIZE",
    "HEADER_SIZE",
    "decode",
    "encode",
    "encode_built",
    "fingerprint",
    "names",
    "schema",
    "versions",
    "writer_name",
]

HEADER_SIZE = 10  # 2-byte marker + 8-byte fingerprint
DEFAULT_MAX_SIZE = 1_048_576


def encode(name: str, record: dict, *, version: int | None = None) -> bytes:
    """Encode ``record`` as schema ``name`` (latest version unless ``version``)."""
    entry = _entry(name, version)
    label = f"{entry.name} v{entry.version}"
    if not isinstance(record, dict):
        raise CodecError(Reason.MALFORMED, f"{label}: record must be a dict")
    if entry.defaults and not entry.defaults.keys() <= record.keys():
        record = {**entry.defaults, **record}
    if not _is_valid(record, entry):
        raise CodecError(Reason.MALFORMED, f"{label}: {_invalid_fields(record, entry)}")
    if entry.uuid_fields:
        record = _canonical_uuids(record, entry, label)
    buffer = io.BytesIO()
    buffer.write(entry.header)
    try:
        # strict: unknown or missing keys are an error (defaults were filled in above)
        schemaless_writer(buffer, entry.parsed, record, strict=True)
    except Exception:
        raise CodecError(Reason.MALFORMED, f"{label}: {_unknown_fields(record, entry)}") from None
    return buffer.getvalue()


def encode_built(name: str, record: dict) -> bytes:
    """``encode(name, record)``'s bytes without its checks, for a record the caller built itself from typed
    values (the hub's provision records, one per provision: the ``validate`` walk was ~7 % of the hub's
    time, docs/performance.md). The record must be complete, defaults and canonical UUIDs included;
    fastavro's strict writer still refuses a missing or unknown key or a value of the wrong type (its own
    ``ValueError``/``TypeError``/``KeyError``, not a ``CodecError``: a built record of the wrong shape is
    a bug, not input). Never for input from outside.
    """
    entry = _entry(name, None)
    buffer = io.BytesIO()
    buffer.write(entry.header)
    schemaless_writer(buffer, entry.parsed, record, strict=True)
    return buffer.getvalue()


def decode(data: bytes, name: str | None = None, *, max_size: int = DEFAULT_MAX_SIZE) -> dict:
    """Decode single-object ``data``; read as the latest version of ``name`` if given."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(Reason.MALFORMED, "input must be bytes")
    size = len(data)
    if size > max_size:
        raise CodecError(Reason.OVERSIZE, f"record is {size} bytes, maximum is {max_size}")
    writer = _writer(data)
    reader: dict | None = None
    if name is not None:
        expected = catalogue().latest.get(name)
        if expected is None:
            raise CodecError(Reason.UNKNOWN_SCHEMA, f"no schema named {name!r} in the catalogue")
        if writer.name != name:
            raise CodecError(
                Reason.UNKNOWN_SCHEMA,
                f"writer schema is {writer.name} v{writer.version}, expected a version of {name}",
            )
        if expected is not writer:
            reader = expected.parsed
    buffer = io.BytesIO(data)
    buffer.seek(HEADER_SIZE)
    try:
        record = schemaless_reader(buffer, writer.parsed, reader)
    except Exception:
        # fastavro raises EOFError, ValueError, IndexError, UnicodeDecodeError,
        # OverflowError, MemoryError ... on hostile bytes, and some carry the
        # bytes; the boundary contract is CodecError with no value.
        raise CodecError(
            Reason.MALFORMED, f"body is not a valid {writer.name} v{writer.version} record"
        ) from None
    if buffer.tell() != size:
        raise CodecError(
            Reason.MALFORMED,
            f"{size - buffer.tell()} trailing bytes after a {writer.name} v{writer.version} record",
        )
    return record


def writer_name(data: bytes) -> tuple[str, int]:
    """``(logical name, version)`` of the schema that wrote ``data``, from its header."""
    writer = _writer(data)
    return writer.name, writer.version


def fingerprint(name: str, version: int | None = None) -> bytes:
    """8-byte little-endian CRC-64-AVRO fingerprint of ``name`` (latest unless ``version``)."""
    return _entry(name, version).fingerprint


def names() -> list[str]:
    """Every logical schema name in the catalogue, sorted."""
    return sorted(catalogue().by_name)


def versions(name: str) -> list[int]:
    """Published versions of ``name``, ascending."""
    return list(_versions_of(name))


def schema(name: str, version: int | None = None) -> dict[str, Any]:
    """The fastavro-parsed schema of ``name`` (latest unless ``version``). Do not mutate."""
    return _entry(name, version).parsed


# --- internals -------------------------------------------------------------


def _versions_of(name: str) -> dict[int, SchemaVersion]:
    found = catalogue().by_name.get(name)
    if found is None:
        raise CodecError(Reason.UNKNOWN_SCHEMA, f"no schema named {name!r} in the catalogue")
    return found


def _entry(name: str, version: int | None) -> SchemaVersion:
    if version is None:
        entry = catalogue().latest.get(name)
        if entry is None:
            raise CodecError(Reason.UNKNOWN_SCHEMA, f"no schema named {name!r} in the catalogue")
        return entry
    entry = _versions_of(name).get(version)
    if entry is None:
        raise CodecError(Reason.UNKNOWN_SCHEMA, f"{name} has no version {version}")
    return entry


def _writer(data: bytes) -> SchemaVersion:
    if len(data) < HEADER_SIZE or data[:2] != SINGLE_OBJECT_MARKER:
        raise CodecError(Reason.MALFORMED, "not Avro single-object encoding (marker C3 01)")
    writer = catalogue().by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
    if writer is None:
        raise CodecError(Reason.UNKNOWN_SCHEMA, "writer fingerprint is not in the catalogue")
    return writer


def _is_valid(record: dict, entry: SchemaVersion) -> bool:
    try:
        # raise_errors=False takes fastavro's fast path (4x quicker than collecting errors)
        return bool(_validate(record, entry.parsed, raise_errors=False))
    except Exception:  # fastavro's own messages carry the value; never chain them
        return False


def _invalid_fields(record: dict, entry: SchemaVersion) -> str:
    """Name the offending fields (slow path, only on failure); never the datum."""
    try:
        _validate(record, entry.parsed, raise_errors=True)
    except _AvroValidationError as exc:
        # ValidationErrorData.field is a schema path like "renkei.BankAccount.branch_code".
        paths: list[str] = []
        for error in getattr(exc, "errors", ()):
            path = str(getattr(error, "field", "") or "").removeprefix("renkei.")
            if path and path not in paths:
                paths.append(path)
        if paths:
            return f"missing or wrongly typed field {', '.join(paths[:3])}"
    except Exception:
        pass  # fall through to the generic description
    return "record does not match the schema"


def _unknown_fields(record: dict, entry: SchemaVersion) -> str:
    known = {f["name"] for f in entry.source.get("fields", ())}
    unknown = sorted(str(k) for k in record if k not in known)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    return "record does not match the schema"


def _canonical_uuids(record: dict, entry: SchemaVersion, label: str) -> dict:
    out = dict(record)
    for field_name in entry.uuid_fields:
        value = out[field_name]
        if isinstance(value, uuid.UUID):
            continue
        try:
            out[field_name] = uuid.UUID(value)
        except (TypeError, ValueError, AttributeError):
            raise CodecError(Reason.MALFORMED, f"{label}: field {field_name} is not a UUID") from None
    return out
