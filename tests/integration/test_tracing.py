"""W3C trace context on the real broker: one STEP1 registration and one STEP2 round trip are each one trace
across every hop, the header is well-formed and random, and a sender cannot make the hub show a recipient
its own ids through it (infra.core.tracing). The platform here logs JSON (infra.core.logs): the last test reads the
workers' log files — every line an object with the ids of the message it is about, and no My Number."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from infra.core.errors import EnvelopeRejection
from infra.core.tracing import HEADER, TraceContext
from infra.crypto.envelope import Message, peek
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.kafka import producer
from infra.platform.stack import WORKERS, Platform
from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
from infra.tools.harness import eventually, read_topic
from infra.tools.leakscan import Scanner
from schemas import types as msg
from tests.integration.platform_fixtures import bus, correlation_seen_by, isolated_platform, pg  # noqa: F401
from tests.integration.test_connectors_support import hold_account
from tests.integration.test_flows import AGENCY, PROCEDURE, account, inquire, now, register
from tests.integration.test_flows import person as new_person

pytestmark = [pytest.mark.integration]


USED: list[str] = []  # every My Number this module's flows carried: the log files must hold none


def person() -> str:
    USED.append(new_person())
    return USED[-1]


@pytest.fixture(scope="module")
async def running_platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    """The platform's workers with log_format = "json" (handed to them by `renkei up`'s environment)."""
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("traced"), log_format="json",
                                 prefix_letter="t") as platform:
        yield platform


def _traceparent(record: Any) -> bytes | None:
    return dict(record.headers or ()).get(HEADER)


async def _hops(settings, topics: Iterable[tuple[str, int]]) -> list[tuple[str, Any, Any]]:
    """Every record of ``topics`` as (topic, envelope metadata, trace context)."""
    out = []
    for topic, partitions in topics:
        for r in await read_topic(settings, topic, partitions):
            try:
                meta = peek(r.value)
            except EnvelopeRejection:  # not an envelope (e.g. a barrier marker): no hop of a message
                continue
            out.append((topic, meta, TraceContext.parse(_traceparent(r))))
    return out


def _ids(meta: Any) -> set[str]:
    return {meta.message_id.replace("-", ""), meta.correlation_id.replace("-", "")}


async def test_a_step2_round_trip_is_one_trace_on_every_hop(bus, pg, running_platform):
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    mn = person()
    await hold_account(settings, pg, mn, account())
    token = await bus.token_for(AGENCY, mn)
    answer = await bus.request(
        AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
        body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=60, procedure=PROCEDURE)
    agency_correlation = answer.meta.correlation_id
    registry_correlation = str(correlation_seen_by(settings, agency_correlation, AGENCY, "registry"))
    hops = await _hops(settings, [(names.ingress, INGRESS_PARTITIONS), (names.inbox("registry"), 1),
                                  (names.inbox(AGENCY), 1)])

    def one(topic: str, type_: str, correlation: str) -> tuple[Any, TraceContext]:
        found = [(m, t) for tp, m, t in hops if tp == topic and m.type == type_ and m.correlation_id == correlation]
        assert len(found) == 1, (topic, type_, found)
        return found[0]

    legs = [one(names.ingress, msg.PROVISION_INQUIRY, agency_correlation),  # the agency starts the trace
            one(names.inbox("registry"), msg.PROVISION_INQUIRY, registry_correlation),  # the hub continues it
            one(names.ingress, msg.PROVISION_RESPONSE, registry_correlation),  # the registry answers in it
            one(names.inbox(AGENCY), msg.PROVISION_RESPONSE, agency_correlation)]  # and the agency gets it back
    traces = [t for _, t in legs]
    assert all(t is not None for t in traces), traces
    assert len({t.trace_id for t in traces}) == 1  # one trace
    assert len({t.span_id for t in traces}) == 4  # each hop a span of its own
    # Random, not made from any id of any leg: the recipient learns no other participant's ids from it.
    assert not {traces[0].trace_id} & set().union(*(_ids(m) for m, _ in legs))
    # The next round trip is another trace: a trace never joins two exchanges about the same person.
    await inquire(bus, mn)
    again = await _hops(settings, [(names.inbox("registry"), 1)])
    assert len({t.trace_id for _, m, t in again if m.type == msg.PROVISION_INQUIRY and t is not None}) >= 2


async def test_a_step1_registration_with_its_existence_check_is_one_trace(bus, pg, running_platform):
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    mn, acct = person(), account()
    await hold_account(settings, pg, mn, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"
    hops = await _hops(settings, [(names.ingress, INGRESS_PARTITIONS), (names.inbox("registry"), 1),
                                  (names.inbox("bank-9001"), 1), (names.inbox("portal"), 1)])
    results = [(tp, m, t) for tp, m, t in hops if tp == names.inbox("portal") and m.type == msg.REGISTRATION_RESULT]
    trace_id = results[-1][2].trace_id  # ours is the last result the portal received
    in_trace = {(tp, m.type) for tp, m, t in hops if t is not None and t.trace_id == trace_id}
    assert in_trace == {
        (names.ingress, msg.REGISTRATION_REQUEST), (names.inbox("registry"), msg.REGISTRATION_REQUEST),
        (names.ingress, msg.EXISTENCE_CHECK), (names.inbox("bank-9001"), msg.EXISTENCE_CHECK),
        (names.ingress, msg.EXISTENCE_ANSWER), (names.inbox("registry"), msg.EXISTENCE_ANSWER),
        (names.ingress, msg.REGISTRATION_RESULT), (names.inbox("portal"), msg.REGISTRATION_RESULT),
        (names.ingress, msg.NOTICE), (names.inbox("portal"), msg.NOTICE)}  # the registration notice


async def test_a_trace_id_made_of_the_senders_correlation_id_is_not_shown_to_the_recipient(bus, pg, running_platform):
    """The attack: an agency's client sends its correlation id as trace id (and, next, junk). The registry's
    leg must carry a fresh random trace, never the agency's id, and a good inquiry between them still arrives."""
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    mn = person()
    token = await bus.token_for(AGENCY, mn)
    sealer = bus.runtime.identities[AGENCY].sealer
    smuggling, junk = str(uuid.uuid4()), str(uuid.uuid4())
    envelopes = sealer.seal_batch([Message(
        body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()}, type=msg.PROVISION_INQUIRY,
        to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION,
        correlation_id=c, procedure=PROCEDURE) for c in (smuggling, junk)])
    headers = [[(HEADER, f"00-{smuggling.replace('-', '')}-00f067aa0ba902b7-01".encode())],
               [(HEADER, b"00-not-a-trace\x00\xff")]]
    prod = producer(settings)
    await prod.start()
    try:
        await prod.send_and_wait(names.ingress, envelopes[0], key=token.encode(), headers=headers[0])
        good = await inquire(bus, mn)  # good traffic between the attacks, delivered as usual
        await prod.send_and_wait(names.ingress, envelopes[1], key=token.encode(), headers=headers[1])
    finally:
        await prod.stop()
    assert good["status"] == "NOT_REGISTERED"

    async def legs() -> dict[str, TraceContext | None] | None:
        wanted = {str(correlation_seen_by(settings, c, AGENCY, "registry")): c for c in (smuggling, junk)}
        seen = {wanted[m.correlation_id]: t for _, m, t in await _hops(settings, [(names.inbox("registry"), 1)])
                if m.correlation_id in wanted}
        return seen if len(seen) == 2 else None

    seen = await eventually(legs, timeout=60)
    for correlation in (smuggling, junk):
        trace = seen[correlation]
        assert trace is not None and TraceContext.parse(trace.header) == trace  # well-formed, a new trace
        assert trace.trace_id != smuggling.replace("-", "") and trace.trace_id != junk.replace("-", "")
    assert seen[smuggling].trace_id != seen[junk].trace_id


async def test_workers_log_json_lines_with_the_messages_ids_and_no_my_number(bus, pg, running_platform):
    """A refused inquiry (a procedure the agency is not entitled to) shows in the hub's log as one JSON line with
    the agency's own message and correlation ids, the reason code and the trace id of its ingress record."""
    settings = running_platform.settings
    names = TopicNames(settings.kafka.topic_prefix)
    mn = person()
    token = await bus.token_for(AGENCY, mn)
    refused = await bus.request(
        AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
        body={"procedure_code": "national-pension", "purpose": None, "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=60, procedure="national-pension")
    assert refused.meta.type == msg.REJECTION_NOTICE and refused.body["reason_code"] == "PROCEDURE_NOT_ALLOWED"
    message_id = str(refused.body["original_message_id"])
    (sent,) = [t for tp, m, t in await _hops(settings, [(names.ingress, INGRESS_PARTITIONS)])
               if m.message_id == message_id]
    logs = running_platform.stack.logs_dir

    async def logged() -> dict | None:
        for line in (logs / "hub.log").read_text().splitlines():
            entry = json.loads(line)
            if entry["message_id"] == message_id:
                return entry
        return None

    entry = await eventually(logged, timeout=30)
    assert (entry["component"], entry["participant"], entry["reason"], entry["level"]) == \
        ("hub", AGENCY, "PROCEDURE_NOT_ALLOWED", "INFO")
    assert entry["correlation_id"] == refused.meta.correlation_id  # the agency's own correlation id
    assert entry["trace_id"] == sent.trace_id
    # Every line of every worker's log is one JSON object with the documented fields; none holds a My Number.
    fields = {"time", "level", "component", "participant", "logger", "message", "message_id", "correlation_id",
              "reason", "trace_id"}
    for worker in WORKERS:
        text = (logs / f"{worker.name}.log").read_text()
        lines = text.splitlines()
        assert lines, worker.name
        for line in lines:
            assert fields <= set(json.loads(line)), (worker.name, line)
        assert Scanner(USED).search(text.encode()) == [], worker.name
