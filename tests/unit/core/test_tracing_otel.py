"""With the optional extra (renkei[otel]) every hop is an OpenTelemetry span whose ids the next traceparent
carries; without a configured SDK provider nothing is recorded (infra.core.tracing_otel). CI installs the extra."""

from __future__ import annotations

import pytest

from infra.core import tracing_otel
from infra.core.tracing import TraceContext, hop
from tests.tools import require


@pytest.fixture
def exporter():
    require(None if tracing_otel.available() else "the OpenTelemetry SDK (pip install 'renkei[otel]')")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracing_otel.use_tracer_provider(tracing_otel.tracer_provider(SimpleSpanProcessor(spans)))
    yield spans
    tracing_otel.use_tracer_provider(None)


def test_each_hop_is_a_span_and_the_header_carries_its_ids(exporter):
    sent = hop(None, "renkei.participant.send",
               {"renkei.participant": "agency-nta", "renkei.type": "provision.inquiry"})
    forwarded = hop(sent, "renkei.hub.forward", {"renkei.sender": "agency-nta", "renkei.recipient": "registry"})
    answered = hop(TraceContext.parse(forwarded.header), "renkei.participant.send", {"renkei.participant": "registry"})
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["renkei.participant.send", "renkei.hub.forward", "renkei.participant.send"]
    assert {f"{s.context.trace_id:032x}" for s in spans} == {sent.trace_id}  # one trace
    assert [f"{s.context.span_id:016x}" for s in spans] == [sent.span_id, forwarded.span_id, answered.span_id]
    assert spans[0].parent is None
    assert spans[1].parent.span_id == int(sent.span_id, 16) and spans[1].parent.is_remote
    assert spans[2].parent.span_id == int(forwarded.span_id, 16)
    assert spans[1].attributes["renkei.recipient"] == "registry"
    assert spans[1].attributes["messaging.system"] == "kafka"


def test_a_remote_parent_from_a_header_is_continued(exporter):
    parent = TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    child = hop(parent, "renkei.hub.forward")
    (span,) = exporter.get_finished_spans()
    assert child.trace_id == parent.trace_id and span.parent.span_id == int(parent.span_id, 16)


def test_without_a_configured_provider_nothing_is_recorded_and_ids_still_flow():
    require(None if tracing_otel.available() else "the OpenTelemetry SDK (pip install 'renkei[otel]')")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracing_otel.use_tracer_provider(None)
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("a global SDK provider is configured in this process")
    assert tracing_otel.otel_hop(None, "renkei.hub.forward", {}) is None
    ctx = hop(None, "renkei.hub.forward")
    assert TraceContext.parse(ctx.header) == ctx
