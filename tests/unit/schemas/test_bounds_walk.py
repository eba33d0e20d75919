"""The array-cap walker steps over every Avro type exactly: the capped array comes AFTER a field of each type,
so a walker that mis-steps over any of them reads the wrong bytes as the array's count and misjudges the cap.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when one skip function
of schemas/bounds.py steps one byte too far or too short, or a cap's edge moves.
"""

from __future__ import annotations

import copy
import io

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.core.errors import CodecError, Reason
from schemas.bounds import ArrayCaps, CapExceeded

EVERY_TYPE = {"type": "record", "name": "Outer", "namespace": "t.ns", "fields": [
    {"name": "nothing", "type": "null"},
    {"name": "flag", "type": "boolean"},
    {"name": "small", "type": "int"},
    {"name": "big", "type": "long"},
    {"name": "ratio", "type": "float"},
    {"name": "exact", "type": "double"},
    {"name": "blob", "type": "bytes"},
    {"name": "text", "type": "string"},
    {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 5}},
    {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "labels", "type": {"type": "map", "values": "string"}},
    {"name": "choice", "type": ["null", "long", "string", "Digest"]},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "namespace": "other", "fields": [
        {"name": "x", "type": "t.ns.Colour"},
        {"name": "next", "type": ["null", "other.Inner"]},  # a recursive named type
    ]}},
    {"name": "again", "type": "other.Inner"},
    {"name": "fixed_again", "type": "Digest"},  # a name resolved in the enclosing namespace
    {"name": "items", "type": {"type": "array", "items": "long"}},
]}

PARSED = fastavro.parse_schema(copy.deepcopy(EVERY_TYPE))


def binary(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    return out.getvalue()


def inner(depth: int) -> dict:
    node = None
    for i in range(depth):
        node = {"x": ["RED", "GREEN", "BLUE"][i % 3], "next": node}
    return node or {"x": "BLUE", "next": None}


longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
records = st.fixed_dictionaries({
    "nothing": st.none(),
    "flag": st.booleans(),
    "small": st.integers(min_value=-(2**31), max_value=2**31 - 1),
    "big": longs,
    "ratio": st.floats(width=32, allow_nan=False),
    "exact": st.floats(allow_nan=False),
    "blob": st.binary(max_size=200),
    "text": st.text(max_size=100),
    "colour": st.sampled_from(["RED", "GREEN", "BLUE"]),
    "digest": st.binary(min_size=5, max_size=5),
    "when": st.integers(min_value=0, max_value=2**40),
    "labels": st.dictionaries(st.text(max_size=80), st.text(max_size=80), max_size=4),
    "choice": st.one_of(st.none(), longs.map(lambda n: ("long", n)), st.text(max_size=70).map(lambda s: ("string", s)),
                        st.binary(min_size=5, max_size=5).map(lambda b: ("t.ns.Digest", b))),
    "inner": st.integers(min_value=1, max_value=4).map(inner),
    "again": st.integers(min_value=1, max_value=3).map(inner),
    "fixed_again": st.binary(min_size=5, max_size=5),
    "items": st.lists(longs, max_size=12),
})


@given(records, st.integers(min_value=0, max_value=12))
def test_the_cap_is_judged_exactly_after_a_field_of_every_type(record, cap):
    data = binary(record)
    found = ArrayCaps(EVERY_TYPE, {"items": cap}).check(data)
    assert found == (CapExceeded("items", cap) if len(record["items"]) > cap else None)
    assert ArrayCaps(EVERY_TYPE, {}).check(data) is None


@given(records, st.binary(max_size=9))
def test_a_record_is_walked_from_its_offset(record, prefix):
    data = prefix + binary(record)
    caps = ArrayCaps(EVERY_TYPE, {"items": 0})
    assert caps.check(data, len(prefix)) == (CapExceeded("items", 0) if record["items"] else None)


def base() -> dict:
    return {"nothing": None, "flag": True, "small": 300, "big": -(2**40), "ratio": 1.5, "exact": -2.25,
            "blob": b"\x01" * 70, "text": "é" * 40, "colour": "GREEN", "digest": b"12345", "when": 2**33,
            "labels": {"k" * 70: "v" * 70, "a": ""}, "choice": ("string", "s" * 65), "inner": inner(3),
            "again": inner(1), "fixed_again": b"abcde", "items": [1, -1, 2**62]}


@pytest.mark.parametrize("field, value", [
    ("blob", b""), ("blob", b"\x00" * 63), ("blob", b"\x00" * 64), ("text", "x" * 64), ("small", 63), ("small", 64),
    ("small", -64), ("small", -65), ("big", 2**63 - 1), ("big", -(2**63)), ("choice", None), ("choice", ("long", 5)),
    ("choice", ("t.ns.Digest", b"\xff" * 5)), ("labels", {}), ("inner", inner(1))])
def test_one_byte_and_longer_varints_strings_and_branches_are_stepped_over(field, value):
    record = {**base(), field: value}
    data = binary(record)
    assert ArrayCaps(EVERY_TYPE, {"items": 3}).check(data) is None
    assert ArrayCaps(EVERY_TYPE, {"items": 2}).check(data) == CapExceeded("items", 2)


def test_a_map_is_capped_like_an_array_under_its_field_name():
    record = {**base(), "labels": {str(i): "" for i in range(3)}}
    assert ArrayCaps(EVERY_TYPE, {"labels": 3}).check(binary(record)) is None
    assert ArrayCaps(EVERY_TYPE, {"labels": 2}).check(binary(record)) == CapExceeded("labels", 2)


def test_a_cap_of_another_name_does_not_apply():
    assert ArrayCaps(EVERY_TYPE, {"other": 0}).check(binary(base())) is None


def test_the_items_of_a_capped_array_are_not_themselves_capped_under_no_name():
    """An array's items have no field name: a cap never applies to them by accident (None is not a name)."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "rows", "type": {"type": "array", "items": {"type": "array", "items": "int"}}}]}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)), {"rows": [[1, 2, 3]]})
    assert ArrayCaps(schema, {"rows": 1, None: 0}).check(out.getvalue()) is None


@pytest.mark.parametrize("cut", [1, 2, 5, 10])
def test_a_record_cut_short_anywhere_is_malformed(cut):
    data = binary(base())
    with pytest.raises(CodecError) as info:
        ArrayCaps(EVERY_TYPE, {}).check(data[:-cut])
    assert info.value.reason is Reason.MALFORMED
    assert str(info.value) == "MALFORMED: record is not valid Avro binary for its schema"


@pytest.mark.parametrize("bad", [
    b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # an 11-byte varint: longer than any Avro long
    b"\x80" * 10 + b"\x00",  # the same, of value 0: refused for its length, not for its value
    b"\x03",  # a negative length
    b"\x80",  # a varint cut short
    b"\x08abc",  # a length past the end
])
def test_lengths_and_varints_that_cannot_be_walked_are_malformed(bad):
    schema = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    with pytest.raises(CodecError) as info:
        ArrayCaps(schema, {}).check(bad)
    assert info.value.reason is Reason.MALFORMED


def test_a_record_that_ends_before_its_last_int_is_malformed():
    schema = {"type": "record", "name": "N", "fields": [{"name": "s", "type": "string"}, {"name": "n", "type": "int"}]}
    for cut in (b"", b"\x02x"):
        with pytest.raises(CodecError) as info:
            ArrayCaps(schema, {}).check(cut)
        assert info.value.reason is Reason.MALFORMED
    assert ArrayCaps(schema, {}).check(b"\x02x\x02") is None


def test_a_ten_byte_varint_is_still_a_long():
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"},
                                                        {"name": "items", "type": {"type": "array", "items": "int"}}]}
    ten = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # the largest zig-zag long takes ten bytes
    assert ArrayCaps(schema, {"items": 0}).check(ten + b"\x00") is None
    assert ArrayCaps(schema, {"items": 0}).check(ten + b"\x02\x00\x00") == CapExceeded("items", 0)


def test_a_union_index_out_of_range_is_malformed():
    schema = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "int"]}]}
    for index in (b"\x04", b"\x01"):  # 2 and -1
        with pytest.raises(CodecError):
            ArrayCaps(schema, {}).check(index)
    assert ArrayCaps(schema, {}).check(b"\x02\x02") is None  # branch 1, int 1


def test_a_fixed_cut_short_is_malformed_and_an_exact_one_is_not():
    schema = {"type": "record", "name": "F", "fields": [{"name": "f", "type": {"type": "fixed", "name": "F4",
                                                                                "size": 4}}]}
    assert ArrayCaps(schema, {}).check(b"abcd") is None
    with pytest.raises(CodecError):
        ArrayCaps(schema, {}).check(b"abc")


def test_a_bytes_field_ending_exactly_at_the_end_is_whole():
    schema = {"type": "record", "name": "B", "fields": [{"name": "b", "type": "bytes"}]}
    assert ArrayCaps(schema, {}).check(b"\x06abc") is None
    long_value = b"x" * 100
    assert ArrayCaps(schema, {}).check(b"\xc8\x01" + long_value) is None  # 100: a two-byte length
    with pytest.raises(CodecError):
        ArrayCaps(schema, {}).check(b"\xc8\x01" + long_value[:-1])


def test_an_error_type_is_walked_like_a_record_and_a_cap_reaches_through_a_union():
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "e", "type": {"type": "error", "name": "E", "fields": [{"name": "m", "type": "string"}]}},
        {"name": "again", "type": "E"},
        {"name": "items", "type": ["null", {"type": "array", "items": "int"}]}]}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)),
                               {"e": {"m": "x" * 70}, "again": {"m": ""}, "items": [1, 2, 3]})
    assert ArrayCaps(schema, {"items": 3}).check(out.getvalue()) is None
    assert ArrayCaps(schema, {"items": 2}).check(out.getvalue()) == CapExceeded("items", 2)


def test_full_names_and_map_values_resolve_in_their_namespace():
    """A type named with a full name keeps it; a map's named values resolve in the enclosing namespace."""
    schema = {"type": "record", "name": "Top", "namespace": "n1", "fields": [
        {"name": "full", "type": {"type": "record", "name": "n2.Named", "fields": [
            {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["A", "B"]}}]}},
        {"name": "ref", "type": "n2.Named"},
        {"name": "d", "type": {"type": "fixed", "name": "Dg", "size": 3}},
        {"name": "m", "type": {"type": "map", "values": "Dg"}},
        {"name": "items", "type": {"type": "array", "items": "int"}}]}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)),
                               {"full": {"c": "B"}, "ref": {"c": "A"}, "d": b"abc", "m": {"k": b"123"}, "items": [1, 2]})
    assert ArrayCaps(schema, {"items": 2}).check(out.getvalue()) is None
    assert ArrayCaps(schema, {"items": 1}).check(out.getvalue()) == CapExceeded("items", 1)


def test_two_byte_branch_indices_and_block_counts_take_the_long_read():
    """The compiled walker reads one-byte indices and counts inline and longer ones through ``_varint``: a union's
    branch 65 and an array of 64 and of 65 items (a two-byte count) are stepped over exactly."""
    branches = [{"type": "fixed", "name": f"F{i}", "size": i % 3 + 1} for i in range(70)]
    schema = {"type": "record", "name": "Wide", "fields": [
        {"name": "pick", "type": branches}, {"name": "tail", "type": "string"},
        {"name": "items", "type": {"type": "array", "items": "int"}}]}
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    for n in (63, 64, 65):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, {"pick": ("F65", b"\x01" * (65 % 3 + 1)), "tail": "x" * 70,
                                                 "items": list(range(n))})
        data = out.getvalue()
        assert ArrayCaps(schema, {"items": n}).check(data) is None
        assert ArrayCaps(schema, {"items": n - 1}).check(data) == CapExceeded("items", n - 1)
        with pytest.raises(CodecError):
            ArrayCaps(schema, {}).check(data[:-1])


def test_a_block_with_a_negative_two_byte_count_reads_its_byte_size_and_counts_each_item_once():
    """Avro lets a writer give an array block as ``-count, byte size, items``. A count of -65 takes the long read
    (two bytes); the walker must decode its sign, step over the size, and count 65 items, no more."""
    schema = {"type": "record", "name": "Blocks", "fields": [
        {"name": "items", "type": {"type": "array", "items": "int"}}, {"name": "tail", "type": "string"}]}

    def zigzag(value: int) -> bytes:
        n, out = (value << 1) ^ (value >> 63), b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    data = zigzag(-65) + zigzag(65) + zigzag(1) * 65 + zigzag(0) + zigzag(3) + b"abc"
    assert zigzag(-65) == b"\x81\x01"  # two bytes: through _varint
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    assert fastavro.schemaless_reader(io.BytesIO(data), parsed) == {"items": [1] * 65, "tail": "abc"}
    assert ArrayCaps(schema, {"items": 65}).check(data) is None
    assert ArrayCaps(schema, {"items": 64}).check(data) == CapExceeded("items", 64)
