"""Reliability, quick versions of `renkei chaos` (the full ones run from the CLI; docs/performance.md).

On one running platform (hub, registry and bank simulator as real processes):
crash safety with workers SIGKILLed mid-traffic, hostile envelopes on the
ingress topic, then the demo's flows and a leak scan of every topic, table
and log file for every My Number used — with a positive control: a number
planted in a topic, a table and a log file must be found, each in its
encoding, and nothing else.  No timing assertions: performance is measured by
``renkei bench``, not by tests.

The tests share nothing but fixtures: the crash-safety run (about two minutes)
is a module fixture, made by whichever test needs it first, in any order.
"""

from __future__ import annotations

import base64
import json
import random

import asyncpg
import pytest

from infra.domain.validation import generate_my_number
from infra.platform.kafka import producer
from infra.platform.pgdsn import component_dsn
from infra.tools.bench import create_topics
from infra.tools.chaos import QUICK, bad_input, crash_safety, demo_flows
from infra.tools.demo_lookups import INHERITANCE_DEADLINE_S
from infra.tools.leakscan import scan
from tests.integration.platform_fixtures import isolated_platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYNTHETIC = "123456789018"  # the hostile-input run's subject (check digit valid, nobody's)


@pytest.fixture(scope="module")
async def running_platform(endpoints, database, tmp_path_factory):
    """All workers, with the demo's short inheritance deadline (its lookup flow shows a bank missing, then late)."""
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("platform"),
                                 lookup_deadline_inheritance_s=INHERITANCE_DEADLINE_S) as platform:
        yield platform


@pytest.fixture(scope="module")
async def crash_run(running_platform):
    """The crash-safety run on the module's platform: (report, the My Numbers its traffic used)."""
    return await crash_safety(running_platform, QUICK)


async def test_workers_killed_mid_traffic_lose_and_duplicate_nothing(crash_run):
    report, _ = crash_run
    assert report.invariants and all(report.invariants.values()), json.dumps(report.__dict__, default=str)
    assert report.counts["outcomes"] == {"answered": sum(report.counts["requests"].values())}
    assert report.counts["injected"] == QUICK.injected_bad


async def test_hostile_envelopes_are_dead_lettered_and_good_ones_delivered(running_platform):
    report = await bad_input(running_platform, QUICK)
    assert all(report.invariants.values()), json.dumps(report.__dict__, default=str)
    assert report.counts["dead_letters"] == QUICK.bad_envelopes
    assert "" not in report.counts["dead_letter_reasons"]


async def _plant(settings, planted: str, log_dir) -> None:
    """The positive control: ``planted`` in a topic (base64 in JSON), a table (UTF-16) and a log file (hex)."""
    topic = f"{settings.kafka.topic_prefix}.leakscan.control"
    await create_topics(settings, {topic: 1})
    prod = producer(settings)
    await prod.start()
    try:
        value = json.dumps({"blob": base64.b64encode(f"person={planted};".encode()).decode()}).encode()
        await prod.send_and_wait(topic, value)
    finally:
        await prod.stop()
    conn = await asyncpg.connect(component_dsn(settings, "hub"))  # a component's table, as any other
    try:
        await conn.execute("CREATE TABLE leakscan_control (note bytea)")
        await conn.execute("INSERT INTO leakscan_control VALUES ($1)", f"番号 {planted}".encode("utf-16-le"))
    finally:
        await conn.close()
    (log_dir / "planted.log").write_text(f"INFO x: {planted.encode().hex()}\n")


async def test_no_my_number_in_any_topic_table_or_log(running_platform, crash_run, tmp_path):
    settings = running_platform.settings
    crash, crash_numbers = crash_run
    flows, demo_numbers = await demo_flows(settings)
    assert all(f["ok"] for f in flows), flows
    used = sorted({*crash_numbers, *demo_numbers, SYNTHETIC})
    assert len(used) > QUICK.people
    planted = next(n for n in (generate_my_number(random.Random(k)) for k in range(100)) if n not in used)
    await _plant(settings, planted, tmp_path)
    try:
        report = await scan(settings, [*used, planted], [running_platform.stack.logs_dir, tmp_path])
    finally:
        conn = await asyncpg.connect(component_dsn(settings, "hub"))
        await conn.execute("DROP TABLE leakscan_control")
        await conn.close()
    # It read everything: at least what the crash run alone put on ingress and on the audit topic (how much
    # that is depends on the machine's load: the traffic is paced, not counted).
    assert report.scanned["records"] >= crash.counts["ingress_records"] + crash.counts["audit_records"] > 0
    assert report.scanned["tables"] > 10 and report.scanned["log_files"] >= 3
    control = sorted([*used, planted]).index(planted)
    found = {(h["where"].split()[0], h["encoding"]) for h in report.hits if h["person"] == control}
    assert found == {("topic", "base64"), ("table", "utf-16"), ("log", "hex")}, report.hits[:20]  # the scan works
    real = [h for h in report.hits if h["person"] != control]
    assert real == [], real[:20]  # and finds nothing of the numbers the platform handled
