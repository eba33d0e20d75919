"""The shape of ``renkei bench --json`` (issue 18's stable keys), built from the same functions the bench uses.

Values here are made up: what is checked is that every stable key is there, derived figures
(totals, ratios, faust's cost) follow from their inputs, and a missing or unmeasured figure
shows up as a missed goal or a missing key instead of passing silently.
"""

from __future__ import annotations

import json
import math

from infra.tools.bench import machine
from infra.tools.bench_figures import (
    GOALS,
    STABLE_KEYS,
    goals,
    idle_figures,
    lookup_cost,
    lookup_figures,
    low_rate,
    missing_keys,
    per_unit_ms,
    step2_figures,
    throughput_figures,
)


def _report() -> dict:
    run = {"msgs_per_s": 4000, "complete": True}
    out = {"machine": {**machine("Apache Kafka 4.4.0"), "load_avg_1m_end": 1.0}, "raw_msgs_per_s": 20000}
    out.update(throughput_figures(20000, run, {"msgs_per_s": 3000, "complete": True},
                                  {"msgs_per_s": 2000, "complete": True}, {"msgs_per_s": 4500}, {1: 4000, 2: 6000}))
    trips = step2_figures([0.01, 0.02, 0.05], rate=100, requests=3, sent_s=0.03, elapsed_s=1.0, timeouts=0,
                          statuses={"REGISTERED": 3})
    out.update(low_rate(trips))
    out.update(step2_figures([0.2] * 10, rate=500, requests=10, sent_s=0.02, elapsed_s=1.0, timeouts=0, statuses={}))
    out["step2_cpu_ms_per_round_trip"] = per_unit_ms({"broker": 0.5, "hub": 0.25}, 100)
    out.update(idle_figures({"broker": 0.1, "hub": 0.05}, 10))
    out.update(lookup_figures([1.0, 2.0], [1.5], 4.0, 1000, 8))
    out.update(lookup_cost({"hub": 1.0, "banks": 3.0}, 4, ["hub"]))
    out["worker_rss_mb"] = 120.0
    out["goals"] = goals(out)
    return out


def test_a_report_built_by_the_bench_functions_has_every_stable_key_and_is_json():
    report = _report()
    assert missing_keys(report) == []
    assert set(report["goals"]) == set(GOALS)
    assert json.loads(json.dumps(report))["hub_workers_msgs_per_s"] == {"1": 4000, "2": 6000}
    for key in ("hub_ratio", "step2_p99_ms", "step2_low_p99_ms", "lookup_p99_ms", "lookups_per_s",
                "lookup_hub_cpu_ms", "idle_cpu_pct", "worker_rss_mb", "machine"):
        assert key in STABLE_KEYS  # the names issue 18 gives


def test_derived_figures_follow_from_their_inputs():
    report = _report()
    assert report["hub_ratio"] == 0.2 and report["hub_faust_ratio"] == 0.1
    assert report["faust_cost"] == 0.5  # faust reached half the plain loop's rate
    assert report["step2_cpu_ms_per_round_trip"] == {"broker": 5.0, "hub": 2.5, "total": 7.5}
    assert report["idle_cpu_pct"] == 1.5 and report["idle_cpu_pct_each"] == {"broker": 1.0, "hub": 0.5}
    assert report["lookup_hub_cpu_ms"] == 250.0 and report["lookup_cpu_ms_per_lookup"]["total"] == 1000.0
    assert report["step2_low_p99_ms"] == 50.0 and "step2_low_rate" in report
    assert report["goals"]["idle_cpu<=2%"] and not report["goals"]["step2_cpu<=5ms"]


def test_a_figure_left_out_is_reported_missing_and_an_unmeasured_one_misses_its_goal():
    report = _report()
    del report["lookup_hub_cpu_ms"]
    del report["step2_cpu_ms_per_round_trip"]["total"]
    del report["machine"]["broker"]
    assert set(missing_keys(report)) == {"lookup_hub_cpu_ms", "step2_cpu_ms_per_round_trip.total", "machine.broker"}
    unmeasured = _report()
    unmeasured.update(lookup_figures([], [], 30.0, 1000, 8))  # no lookup completed
    assert math.isnan(unmeasured["lookup_p99_ms"])
    assert goals(unmeasured)["lookup_p99<=3s@>=5/s"] is False
