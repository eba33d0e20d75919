"""OpenTelemetry spans for the hops of :mod:`infra.core.tracing` — only with the optional extra (``renkei[otel]``).

Renkei uses the OpenTelemetry API the way a library does: the operator configures the SDK (a
``TracerProvider`` with an exporter; e.g. run the worker under ``opentelemetry-instrument``, which reads
``OTEL_*`` variables), and every hop becomes a PRODUCER span of that provider, its ids the ones the next
``traceparent`` carries. Without the SDK installed, or with no SDK provider configured, :func:`otel_hop`
returns ``None`` and :mod:`infra.core.tracing` draws the ids itself: a no-op, not an error.

:func:`use_tracer_provider` sets a provider for Renkei alone (tests, an embedding application). A provider
made by :func:`tracer_provider` draws its ids from :mod:`secrets` (the SDK's default generator uses
:mod:`random`, whose output can be predicted from earlier ids).
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Mapping
from typing import Any

__all__ = ["Ids", "available", "otel_hop", "tracer_provider", "use_tracer_provider"]

_SDK = (importlib.util.find_spec("opentelemetry") is not None
        and importlib.util.find_spec("opentelemetry.sdk") is not None)
_chosen: list[Any] = []  # a provider set with use_tracer_provider (at most one)
_tracers: dict[int, Any] = {}


def available() -> bool:
    """The OpenTelemetry SDK is installed (``pip install renkei[otel]``)."""
    return _SDK


def use_tracer_provider(provider: Any | None) -> None:
    """Record Renkei's hops as spans of ``provider`` (``None``: back to the global provider, if an SDK one)."""
    _chosen.clear()
    if provider is not None:
        _chosen.append(provider)


def tracer_provider(*processors: Any) -> Any:
    """An SDK ``TracerProvider`` whose ids come from :mod:`secrets`, with ``processors`` added."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class SecretIds(IdGenerator):
        def generate_span_id(self) -> int:
            return int.from_bytes(secrets.token_bytes(8)) or 1

        def generate_trace_id(self) -> int:
            return int.from_bytes(secrets.token_bytes(16)) or 1

    provider = TracerProvider(id_generator=SecretIds())
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _tracer() -> Any | None:
    if not _SDK:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = _chosen[0] if _chosen else trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the API's default: nothing configured, nothing recorded
        return None
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = provider.get_tracer("renkei")
    return tracer


Ids = tuple[str, str, bool]
"""A hop's (trace id, span id, sampled), as :class:`infra.core.tracing.TraceContext` holds them."""


def otel_hop(parent: Ids | None, name: str, attributes: Mapping[str, str]) -> Ids | None:
    """Record one hop as a span (a child of ``parent``'s remote span); its ids, or ``None`` without an SDK."""
    tracer = _tracer()
    if tracer is None:
        return None
    from opentelemetry import trace

    context = None
    if parent is not None:
        trace_id, span_id, sampled = parent
        remote = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                   trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0))
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    span = tracer.start_span(name, context=context, kind=trace.SpanKind.PRODUCER,
                             attributes={"messaging.system": "kafka", **attributes})
    span.end()  # a hop is the moment a message is handed on; its time is the broker's, not ours
    made = span.get_span_context()
    return f"{made.trace_id:032x}", f"{made.span_id:016x}", bool(made.trace_flags.sampled)
