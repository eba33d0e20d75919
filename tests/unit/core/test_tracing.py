"""W3C trace context (infra.core.tracing): the header's form, its randomness, and what a hop refuses to continue."""

from __future__ import annotations

import uuid

import pytest

from infra.core.tracing import (
    HEADER,
    TraceContext,
    continue_trace,
    hop,
    incoming,
    received,
    stored_headers,
    trace_headers,
)

SPEC_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # W3C Trace Context, §3.2


def test_the_specs_example_parses_and_formats_back():
    ctx = TraceContext.parse(SPEC_EXAMPLE)
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert ctx.header == SPEC_EXAMPLE
    assert TraceContext.parse(SPEC_EXAMPLE.encode()) == ctx
    assert TraceContext.parse(SPEC_EXAMPLE[:-2] + "00").sampled is False


@pytest.mark.parametrize("bad", [
    None, "", "garbage", b"\xff\xfe", SPEC_EXAMPLE.upper(),
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    SPEC_EXAMPLE + "-extra",  # version 00 has exactly four fields
    SPEC_EXAMPLE[:-1],  # short
    "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  # misplaced dash
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
])
def test_a_malformed_header_is_no_context(bad):
    assert TraceContext.parse(bad) is None


def test_a_later_version_with_more_fields_is_read_for_its_known_part():
    ctx = TraceContext.parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert ctx.header.startswith("00-")  # re-emitted as the version this code speaks


def test_new_traces_are_well_formed_random_and_children_keep_the_trace():
    traces = [TraceContext.new() for _ in range(2000)]
    assert all(TraceContext.parse(t.header) == t for t in traces)
    assert len({t.trace_id for t in traces}) == 2000 and len({t.span_id for t in traces}) == 2000
    # 256 000 bits drawn: a CSPRNG gives about half ones; a counter, a clock or an id-derived value does not.
    bits = "".join(bin(int(t.trace_id, 16))[2:].zfill(128) for t in traces)
    assert abs(bits.count("1") / len(bits) - 0.5) < 0.01
    parent = traces[0]
    child = parent.child()
    assert child.trace_id == parent.trace_id and child.span_id != parent.span_id and child.sampled


def test_a_hop_continues_its_parent_or_starts_a_trace():
    parent = TraceContext.parse(SPEC_EXAMPLE)
    leg = hop(parent, "test.hop")
    assert leg.trace_id == parent.trace_id and leg.span_id != parent.span_id
    root = hop(None, "test.hop")
    assert root.trace_id != parent.trace_id and TraceContext.parse(root.header) == root


def test_headers_are_read_from_pairs_or_a_mapping_and_written_as_one_header():
    ctx = TraceContext.parse(SPEC_EXAMPLE)
    assert incoming([("renkei.other", b"x"), (HEADER, SPEC_EXAMPLE.encode())]) == ctx
    assert incoming({HEADER: SPEC_EXAMPLE.encode()}) == ctx
    assert incoming(None) is None and incoming([]) is None and incoming([(HEADER, None)]) is None
    assert trace_headers(ctx) == [(HEADER, SPEC_EXAMPLE.encode())]
    assert stored_headers(SPEC_EXAMPLE) == [(HEADER, SPEC_EXAMPLE.encode())]
    assert stored_headers(None) is None and stored_headers("junk") is None


def test_a_trace_id_made_from_the_messages_own_ids_is_not_continued():
    """A client that used its correlation id as trace id would show it to the recipient: a new trace instead."""
    correlation = str(uuid.uuid4())
    smuggled = TraceContext(correlation.replace("-", ""), "00f067aa0ba902b7")
    assert continue_trace(smuggled, not_ids=(str(uuid.uuid4()), correlation)) is None
    assert continue_trace(TraceContext(correlation.upper().replace("-", "").lower(), "00f067aa0ba902b7"),
                          not_ids=(correlation.upper(),)) is None
    fine = TraceContext.new()
    assert continue_trace(fine, not_ids=(correlation, None)) is fine
    fresh = received([(HEADER, smuggled.header.encode())], not_ids=(correlation,))
    assert fresh.trace_id != smuggled.trace_id and TraceContext.parse(fresh.header) == fresh


@pytest.mark.parametrize("header", [b"junk", b"\x00" * 80, "00-ZZ".encode(), None])
def test_a_bad_header_starts_a_new_trace_and_never_raises(header):
    ctx = received([(HEADER, header)], not_ids=())
    assert TraceContext.parse(ctx.header) == ctx
