"""W3C trace context (https://www.w3.org/TR/trace-context/) carried with each message as a Kafka header.

One STEP2 round trip, one STEP1 registration, one lookup with all its legs shows as one trace: the
participant that starts an exchange sends a new ``traceparent``; the hub continues it on every leg it
forwards (same trace id, a span id of its own); a participant answering in a handler continues the
trace of the message it answers.

What the header may carry, and why it cannot link people (docs/operations.md, "Tracing and logs"):

- only ``traceparent`` (version ``00``, a trace id, a span id, the sampled flag), rewritten by each hop
  from the parsed values, never copied as bytes; ``tracestate`` and any vendor header are not passed on;
- trace and span ids are drawn from :mod:`secrets`, never derived from a message id, a correlation id,
  a token or any body field, so a recipient's trace id tells it nothing about another participant's ids;
- the hub refuses to continue a trace id equal to the envelope's own message id or correlation id (the
  mistake of a client that "reuses the correlation id as trace id" would otherwise show the recipient
  the sender's correlation id, which the hub's pseudonyms hide): such a message starts a new trace;
- a missing or malformed header is never an error: the hop starts a new trace.

A trace links the legs of one exchange, which the broker's timing and the hub's provision records link
anyway; it never links two exchanges (each new request starts a new random trace).

Spans: :func:`hop` is the one place a hop's context is made. With OpenTelemetry's SDK configured
(``pip install renkei[otel]``, :mod:`infra.core.tracing_otel`) each hop is also a span exported there;
without it, ids are drawn here and nothing else happens.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.core.tracing_otel import otel_hop

__all__ = ["HEADER", "TraceContext", "continue_trace", "hop", "incoming", "received", "stored_headers",
           "trace_headers"]

HEADER = "traceparent"
_VERSION = "00"
_SAMPLED = 0x01
# version-traceid-parentid-flags, lower-case hex only (the spec refuses upper case).
_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    """One hop's place in a trace: the trace id (16 bytes, hex), this hop's span id (8 bytes, hex), sampled."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @classmethod
    def new(cls) -> TraceContext:
        """A new trace: random ids from the operating system's CSPRNG."""
        return cls(_random_hex(16, _ZERO_TRACE), _random_hex(8, _ZERO_SPAN))

    def child(self) -> TraceContext:
        """The next hop of the same trace: a new random span id."""
        return TraceContext(self.trace_id, _random_hex(8, _ZERO_SPAN), self.sampled)

    @property
    def header(self) -> str:
        """The ``traceparent`` value: ``00-<trace id>-<span id>-<flags>``."""
        return f"{_VERSION}-{self.trace_id}-{self.span_id}-{_SAMPLED if self.sampled else 0:02x}"

    @classmethod
    def parse(cls, value: bytes | str | None) -> TraceContext | None:
        """The context of a ``traceparent`` value, or ``None`` when it is absent or not valid per the spec."""
        if value is None:
            return None
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return None
        value = value.strip(" \t")
        match = _FORMAT.match(value)
        if match is None:
            return None
        version, trace_id, span_id, flags = match.groups()
        if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        # Version 00 is exactly 55 characters; a later version may append fields after a dash.
        if len(value) != 55 and (version == _VERSION or value[55:56] != "-"):
            return None
        return cls(trace_id, span_id, bool(int(flags, 16) & _SAMPLED))


def _random_hex(nbytes: int, zero: str) -> str:
    while True:  # all-zero ids are invalid; a draw of one is astronomically rare, but never send it
        value = secrets.token_hex(nbytes)
        if value != zero:
            return value


def incoming(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None) -> TraceContext | None:
    """The trace context a record arrived with (its ``traceparent`` header), or ``None``."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == HEADER:
            return TraceContext.parse(value)
    return None


def continue_trace(parent: TraceContext | None, *, not_ids: Iterable[str | None] = ()) -> TraceContext | None:
    """``parent`` if a hop may continue it, else ``None`` (a new trace).

    ``not_ids``: message or correlation ids (UUID strings) the trace id must not equal — a sender that
    made its trace id from one of its ids would show it to the recipient.
    """
    if parent is None:
        return None
    forbidden = {i.replace("-", "").lower() for i in not_ids if i}
    return None if parent.trace_id in forbidden else parent


def received(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None, *,
             not_ids: Iterable[str | None] = ()) -> TraceContext:
    """The trace a record received with ``headers`` belongs to: the sender's where it may be continued
    (:func:`continue_trace`), else a new one. Never fails: a bad header only starts a new trace."""
    parent = continue_trace(incoming(headers), not_ids=not_ids)
    return parent if parent is not None else hop(None, "renkei.trace.start")


def hop(parent: TraceContext | None, name: str, attributes: Mapping[str, str] | None = None) -> TraceContext:
    """The context of one hop: a child of ``parent``, or a new trace without one.

    With OpenTelemetry's SDK configured, the hop is also recorded as a span (``name``, ``attributes``:
    participant ids, message types and topics only, never a token or an id that joins legs).
    """
    ids = (parent.trace_id, parent.span_id, parent.sampled) if parent is not None else None
    recorded = otel_hop(ids, name, attributes or {})
    if recorded is not None:
        return TraceContext(*recorded)
    return parent.child() if parent is not None else TraceContext.new()


def trace_headers(context: TraceContext) -> list[tuple[str, bytes]]:
    """The Kafka header(s) that carry ``context``."""
    return [(HEADER, context.header.encode("ascii"))]


def stored_headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    """The Kafka headers of a message sent from an outbox row that kept its ``traceparent`` (rows stored
    before traces were kept have none: no header)."""
    trace = TraceContext.parse(traceparent)
    return trace_headers(trace) if trace is not None else None
