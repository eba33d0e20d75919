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


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class ArrayCaps:
    """Caps on the arrays of one schema, by field name: ``ArrayCaps(source, {"wraps": 1000})``.

    ``source`` is the schema as JSON (a catalogue version's ``source``).  A cap applies to every
    array-typed field of that name, at any depth.  ``check(data, offset)`` walks the record that
    starts at ``offset`` and returns the first :class:`CapExceeded`, or None; bytes it cannot
    walk raise ``CodecError(MALFORMED)``.

    The schema is compiled once into Python source (:class:`_Compiler`): one function per named
    record, every other type stepped over inline. The hub walks every envelope before decoding it, and a
    closure call per field cost as much as fastavro's whole decode (issue 18).
    """

    def __init__(self, source: Any, caps: Mapping[str, int]) -> None:
        self._root = _Compiler(dict(caps)).compile(source)

    def check(self, data: bytes, offset: int = 0) -> CapExceeded | None:
        try:
            self._root(data, offset)
        except _Stop as stop:
            return stop.found
        return None


class _Compiler:
    """Schema → the source of skip functions: ``pos = <step over one value at pos>`` lines, ``n = len(data)``."""

    def __init__(self, caps: dict[str, int]) -> None:
        self.caps = caps
        self.functions: list[list[str]] = []
        self.records: dict[str, str] = {}  # full name → function name
        self.inline: dict[str, tuple[str, Any]] = {}  # enum / fixed by full name → (kind, size)
        self.constants: dict[str, Any] = {}
        self.counter = 0

    def compile(self, source: Any) -> _Skip:
        root = ["def _root(data, pos):", "    n = len(data)"]
        root += self.step(source, None, "", 1)
        root.append("    return pos")
        self.functions.append(root)
        scope: dict[str, Any] = {"_varint": _varint, "_malformed": _malformed, "_Stop": _Stop,
                                 "CapExceeded": CapExceeded, "_named": {}, **self.constants}
        exec("\n\n".join("\n".join(f) for f in self.functions), scope)  # noqa: S102 - our own generated code
        scope["_named"].update({full: scope[name] for full, name in self.records.items()})
        return scope["_root"]

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def step(self, schema: Any, field: str | None, namespace: str, depth: int) -> list[str]:
        pad = "    " * depth
        if isinstance(schema, str):
            return self.primitive(schema, pad) if schema in _PRIMITIVES else self.reference(schema, namespace, pad)
        if isinstance(schema, list):
            return self.union(schema, field, namespace, depth)
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            name = schema["name"]
            full = name if "." in name else f"{namespace}.{name}" if namespace else name
            if kind == "enum":
                self.inline[full] = ("int", None)
                return self.primitive("int", pad)
            if kind == "fixed":
                self.inline[full] = ("fixed", int(schema["size"]))
                return self.fixed(int(schema["size"]), pad)
            function = self.var("_record")
            self.records[full] = function
            body = [f"def {function}(data, pos):", "    n = len(data)"]
            for f in schema["fields"]:
                body += self.step(f["type"], f["name"], namespace, 1)
            self.functions.append([*body, "    return pos"])
            return [f"{pad}pos = {function}(data, pos)"]
        if kind == "array":
            return self.array(lambda d: self.step(schema["items"], None, namespace, d), field, depth)
        if kind == "map":
            return self.array(lambda d: self.primitive("bytes", "    " * d) + self.step(schema["values"], None,
                                                                                       namespace, d), field, depth)
        return self.step(kind, field, namespace, depth)  # {"type": "long", "logicalType": ...}

    def reference(self, name: str, namespace: str, pad: str) -> list[str]:
        full = name if "." in name else f"{namespace}.{name}" if namespace else name
        if full in self.inline:
            kind, size = self.inline[full]
            return self.fixed(size, pad) if kind == "fixed" else self.primitive("int", pad)
        if full in self.records:
            return [f"{pad}pos = {self.records[full]}(data, pos)"]
        return [f"{pad}pos = _named[{full!r}](data, pos)"]  # resolved when walked, as a type may recurse

    @staticmethod
    def fixed(size: int, pad: str) -> list[str]:
        return [f"{pad}if pos + {size} > n:", f"{pad}    raise _malformed()", f"{pad}pos += {size}"]

    def primitive(self, kind: str, pad: str) -> list[str]:
        if kind == "null":
            return []
        if kind in ("boolean", "float", "double"):
            return self.fixed({"boolean": 1, "float": 4, "double": 8}[kind], pad)
        if kind in ("int", "long"):
            return [f"{pad}if pos < n and data[pos] < 0x80:", f"{pad}    pos += 1", f"{pad}else:",
                    f"{pad}    pos = _varint(data, pos)[1]"]
        size = self.var("size")  # bytes, string
        return [*self.small_varint(size, pad), f"{pad}if {size} < 0 or pos + {size} > n:",
                f"{pad}    raise _malformed()", f"{pad}pos += {size}"]

    @staticmethod
    def small_varint(target: str, pad: str) -> list[str]:
        """``target, pos = <the zig-zag varint at pos>``, one-byte values without a call."""
        return [f"{pad}if pos < n and data[pos] < 0x80:", f"{pad}    {target} = data[pos]", f"{pad}    pos += 1",
                f"{pad}    {target} = ({target} >> 1) ^ -({target} & 1)", f"{pad}else:",
                f"{pad}    {target}, pos = _varint(data, pos)"]

    def union(self, branches: list[Any], field: str | None, namespace: str, depth: int) -> list[str]:
        pad = "    " * depth
        index = self.var("branch")
        lines = self.small_varint(index, pad)
        for i, branch in enumerate(branches):
            lines.append(f"{pad}{'if' if i == 0 else 'elif'} {index} == {i}:")
            lines += self.step(branch, field, namespace, depth + 1) or [f"{pad}    pass"]
        lines += [f"{pad}else:" if branches else f"{pad}if True:", f"{pad}    raise _malformed()"]
        return lines

    def array(self, item: Callable[[int], list[str]], field: str | None, depth: int) -> list[str]:
        pad = "    " * depth
        count, total = self.var("count"), self.var("total")
        cap = self.caps.get(field) if field is not None else None
        lines = [f"{pad}{total} = 0", f"{pad}while True:"]
        lines += self.small_varint(count, pad + "    ")
        lines += [f"{pad}    if {count} == 0:", f"{pad}        break",
                  # a block with its byte size: the size is not trusted, the items are walked
                  f"{pad}    if {count} < 0:", f"{pad}        {count} = -{count}",
                  f"{pad}        pos = _varint(data, pos)[1]"]
        if cap is not None:
            found = self.var("_found")
            self.constants[found] = CapExceeded(field or "", cap)
            lines += [f"{pad}    {total} += {count}", f"{pad}    if {total} > {cap}:", f"{pad}        raise _Stop({found})"]
        lines += [f"{pad}    for _ in range({count}):"]
        lines += item(depth + 2) or [f"{pad}        pass"]
        return lines
