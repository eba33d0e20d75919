"""Array-length caps checked on Avro binary BEFORE it is decoded.

Decoding is the first thing a receiver does with hostile bytes, and its cost
grows with the number of array items, not with the byte size: a 750 KB
envelope of 250,000 empty fan-out wraps took fastavro 1.7 s to decode here,
before any signature could be checked.  :class:`ArrayCaps` walks the binary
(no objects built, nothing hashed) and refuses the record as soon as an array
named in its caps holds more items than allowed, so the work spent on such a
record is bounded by the cap, not by what the sender chose to put in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.core.errors import CodecError, Reason

__all__ = ["ArrayCaps", "CapExceeded"]

_Skip = Callable[[bytes, int], int]


@dataclass(frozen=True)
class CapExceeded:
    """An array field held more items than its cap (the walk stopped at cap + 1)."""

    field: str
    cap: int


class _Stop(Exception):
    def __init__(self, found: CapExceeded) -> None:
        self.found = found


def _malformed() -> CodecError:
    return CodecError(Reason.MALFORMED, "record is not valid Avro binary for its schema")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``: ``(value, next position)``; at most 10 bytes, as for an Avro long."""
    result = shift = 0
    try:
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return (result >> 1) ^ -(result & 1), pos
            shift += 7
            if shift >= 70:
                raise _malformed()
    except IndexError:
        raise _malformed() from None


def _skip_varint(data: bytes, pos: int) -> int:
    if pos < len(data) and data[pos] < 0x80:  # the common one-byte case, without building a tuple
        return pos + 1
    return _varint(data, pos)[1]


def _skip_bytes(data: bytes, pos: int) -> int:
    if pos < len(data) and data[pos] < 0x80:  # lengths under 64: one byte
        n, pos = data[pos], pos + 1
        n = (n >> 1) ^ -(n & 1)
    else:
        n, pos = _varint(data, pos)
    if n < 0 or pos + n > len(data):
        raise _malformed()
    return pos + n


def _skip_fixed(size: int) -> _Skip:
    def skip(data: bytes, pos: int) -> int:
        if pos + size > len(data):
            raise _malformed()
        return pos + size
    return skip


def _skip_nothing(data: bytes, pos: int) -> int:
    return pos


_PRIMITIVES: dict[str, _Skip] = {
    "null": _skip_nothing, "boolean": _skip_fixed(1), "int": _skip_varint, "long": _skip_varint,
    "float": _skip_fixed(4), "double": _skip_fixed(8), "bytes": _skip_bytes, "string": _skip_bytes,
}


class ArrayCaps:
    """Caps on the arrays of one schema, by field name: ``ArrayCaps(source, {"wraps": 1000})``.

    ``source`` is the schema as JSON (a catalogue version's ``source``).  A cap applies to every
    array-typed field of that name, at any depth.  ``check(data, offset)`` walks the record that
    starts at ``offset`` and returns the first :class:`CapExceeded`, or None; bytes it cannot
    walk raise ``CodecError(MALFORMED)``.
    """

    def __init__(self, source: Any, caps: Mapping[str, int]) -> None:
        self._caps = dict(caps)
        self._named: dict[str, _Skip] = {}
        self._root = self._compile(source, None, "")

    def check(self, data: bytes, offset: int = 0) -> CapExceeded | None:
        try:
            self._root(data, offset)
        except _Stop as stop:
            return stop.found
        return None

    # -- compiling the schema into skip functions
    def _compile(self, schema: Any, field: str | None, namespace: str) -> _Skip:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            named = self._named
            return lambda data, pos: named[full](data, pos)  # resolved when called: types may recurse
        if isinstance(schema, list):
            return self._union([self._compile(s, field, namespace) for s in schema])
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            name = schema["name"]
            full = name if "." in name else f"{namespace}.{name}" if namespace else name
            if kind == "enum":
                skip = _skip_varint
            elif kind == "fixed":
                skip = _skip_fixed(int(schema["size"]))
            else:
                holder: list[_Skip] = []
                self._named[full] = lambda data, pos: holder[0](data, pos)
                fields = [self._compile(f["type"], f["name"], namespace) for f in schema["fields"]]
                holder.append(self._record(fields))
                return self._named[full]
            self._named[full] = skip
            return skip
        if kind == "array":
            return self._array(self._compile(schema["items"], None, namespace), field)
        if kind == "map":
            value = self._compile(schema["values"], None, namespace)
            return self._array(lambda data, pos: value(data, _skip_bytes(data, pos)), field)
        return self._compile(kind, field, namespace)  # {"type": "long", "logicalType": ...}

    @staticmethod
    def _record(fields: list[_Skip]) -> _Skip:
        def skip(data: bytes, pos: int) -> int:
            for f in fields:
                pos = f(data, pos)
            return pos
        return skip

    @staticmethod
    def _union(branches: list[_Skip]) -> _Skip:
        def skip(data: bytes, pos: int) -> int:
            index, pos = _varint(data, pos)
            if not 0 <= index < len(branches):
                raise _malformed()
            return branches[index](data, pos)
        return skip

    def _array(self, item: _Skip, field: str | None) -> _Skip:
        cap = self._caps.get(field) if field is not None else None

        def skip(data: bytes, pos: int) -> int:
            total = 0
            while True:
                count, pos = _varint(data, pos)
                if count == 0:
                    return pos
                if count < 0:  # a block with its byte size: the size is not trusted, the items are walked
                    count = -count
                    _, pos = _varint(data, pos)
                total += count
                if cap is not None and total > cap:
                    raise _Stop(CapExceeded(field or "", cap))
                for _ in range(count):
                    pos = item(data, pos)
        return skip
