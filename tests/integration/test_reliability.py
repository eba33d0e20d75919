"""Reliability, quick versions of `renkei chaos` (the full ones run from the CLI; docs/performance.md).

On one running platform (hub, registry and bank simulator as real processes):
crash safety with workers SIGKILLed mid-traffic, hostile envelopes on the
ingress topic, then the demo's flows and a leak scan of every topic, table
and log file for every My Number used.  No timing assertions: performance is
measured by ``renkei bench``, not by tests.
"""

from __future__ import annotations

import json

import pytest

from infra.chaos import QUICK, bad_input, crash_safety, demo_flows
from infra.demo_lookups import INHERITANCE_DEADLINE_S
from infra.leakscan import scan
from tests.integration.platform_fixtures import isolated_platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_USED: list[str] = []  # My Numbers the tests of this module used, for the leak scan


@pytest.fixture(scope="module")
async def running_platform(endpoints, tmp_path_factory):
    """All workers, with the demo's short inheritance deadline (its lookup flow shows a bank missing, then late)."""
    async with isolated_platform(endpoints, tmp_path_factory.mktemp("platform"),
                                 lookup_deadline_inheritance_s=INHERITANCE_DEADLINE_S) as platform:
        yield platform


async def test_workers_killed_mid_traffic_lose_and_duplicate_nothing(running_platform):
    report, numbers = await crash_safety(running_platform, QUICK)
    _USED.extend(numbers)
    assert report.invariants and all(report.invariants.values()), json.dumps(report.__dict__, default=str)
    assert report.counts["outcomes"] == {"answered": sum(report.counts["requests"].values())}
    assert report.counts["injected"] == QUICK.injected_bad


async def test_hostile_envelopes_are_dead_lettered_and_good_ones_delivered(running_platform):
    report = await bad_input(running_platform, QUICK)
    assert all(report.invariants.values()), json.dumps(report.__dict__, default=str)
    assert report.counts["dead_letters"] == QUICK.bad_envelopes
    assert "" not in report.counts["dead_letter_reasons"]


async def test_no_my_number_in_any_topic_table_or_log(running_platform):
    flows, numbers = await demo_flows(running_platform.settings)
    assert all(f["ok"] for f in flows), flows
    _USED.extend(numbers)
    assert len(_USED) > QUICK.people
    report = await scan(running_platform.settings, _USED, [running_platform.stack.logs_dir])
    assert report.scanned["records"] > 1000 and report.scanned["tables"] > 10 and report.scanned["log_files"] >= 3
    assert report.ok, report.hits[:20]
