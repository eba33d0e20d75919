"""The figures of ``renkei bench --json``: their stable names, how each is derived, and the goals.

Pure (no broker, no database), so a unit test can check the report's shape: every key
:data:`STABLE_KEYS` names is what issue 18 asks for, and ``renkei bench`` fills each one
(docs/performance.md explains every figure).
"""

from __future__ import annotations

import math
from typing import Any

STABLE_KEYS = (
    "machine", "raw_msgs_per_s", "hub_msgs_per_s", "hub_ratio", "hub_faust_msgs_per_s", "hub_faust_ratio",
    "faust_cost", "hub_workers_msgs_per_s", "hub_inprocess_msgs_per_s", "step2_p50_ms", "step2_p99_ms",
    "step2_completed_per_s", "step2_low_p50_ms", "step2_low_p99_ms", "step2_cpu_ms_per_round_trip",
    "lookup_p50_ms", "lookup_p99_ms", "lookups_per_s", "lookup_hub_cpu_ms", "lookup_cpu_ms_per_lookup",
    "idle_cpu_pct", "idle_cpu_pct_each", "worker_rss_mb", "goals",
)
"""Keys every report carries (a figure that could not be measured is NaN or 0 with an ``…_error`` key)."""

MACHINE_KEYS = ("cores", "python", "broker", "load_avg_1m_start", "load_avg_1m_end")

GOALS = {
    "hub_ratio>=0.5": lambda r: r["hub_ratio"] >= 0.5,
    "step2_p99<=100ms": lambda r: r["step2_p99_ms"] <= 100,
    "step2_low_p99<=30ms": lambda r: r["step2_low_p99_ms"] <= 30,
    "step2_cpu<=5ms": lambda r: r["step2_cpu_ms_per_round_trip"]["total"] <= 5,
    "lookup_p99<=3s@>=5/s": lambda r: r["lookup_p99_ms"] <= 3000 and r["lookups_per_s"] >= 5,
    "idle_cpu<=2%": lambda r: r["idle_cpu_pct"] <= 2,
    "worker_rss<=250MB": lambda r: r["worker_rss_mb"] <= 250,
}
"""Issue 18's goals, each checked against the report (NaN compares false: a missing figure is a missed goal)."""


def goals(report: dict[str, Any]) -> dict[str, bool]:
    return {name: bool(check(report)) for name, check in GOALS.items()}


def missing_keys(report: dict[str, Any]) -> list[str]:
    """Stable keys (and machine fields) a report lacks: what the shape test and the bench itself check."""
    missing = [k for k in STABLE_KEYS if k not in report]
    missing += [f"machine.{k}" for k in MACHINE_KEYS if k not in report.get("machine", {})]
    if "total" not in report.get("step2_cpu_ms_per_round_trip", {}):
        missing.append("step2_cpu_ms_per_round_trip.total")
    return missing


def per_unit_ms(used_s: dict[str, float], units: int) -> dict[str, float]:
    """CPU seconds per process over ``units`` (round trips, lookups) → ms per unit, with their ``total``."""
    units = max(1, units)
    each = {name: round(s / units * 1000, 2) for name, s in used_s.items()}
    return {**each, "total": round(sum(used_s.values()) / units * 1000, 2)}


def idle_figures(used_s: dict[str, float], seconds: float) -> dict[str, Any]:
    """CPU of an idle platform as a percentage of one core: the total and each process."""
    each = {name: round(s / seconds * 100, 2) for name, s in used_s.items()}
    return {"idle_cpu_pct": round(sum(used_s.values()) / seconds * 100, 2), "idle_cpu_pct_each": each,
            "idle_seconds": seconds}


def throughput_figures(raw: float, plain: dict[str, Any], per_message: dict[str, Any], faust: dict[str, Any],
                       inprocess: dict[str, Any], workers: dict[int, float]) -> dict[str, Any]:
    """Every hub figure against the raw consume → produce of the same run.

    ``faust_cost`` is the share of the plain loop's throughput the faust-driven worker loses
    (0.2 = a fifth: the issue's threshold for leaving faust).
    """
    def ratio(x: float) -> float:
        return round(x / raw, 3) if raw else float("nan")

    return {
        "hub_msgs_per_s": plain["msgs_per_s"], "hub_ratio": ratio(plain["msgs_per_s"]),
        "hub_complete": plain["complete"] and per_message["complete"] and faust["complete"],
        "hub_per_message_sig_msgs_per_s": per_message["msgs_per_s"],
        "hub_per_message_sig_ratio": ratio(per_message["msgs_per_s"]),
        "hub_faust_msgs_per_s": faust["msgs_per_s"], "hub_faust_ratio": ratio(faust["msgs_per_s"]),
        "faust_cost": round(1 - faust["msgs_per_s"] / plain["msgs_per_s"], 3) if plain["msgs_per_s"] else float("nan"),
        "hub_inprocess_msgs_per_s": inprocess["msgs_per_s"], "hub_inprocess_ratio": ratio(inprocess["msgs_per_s"]),
        "hub_workers_msgs_per_s": {str(n): v for n, v in sorted(workers.items())},
    }


def step2_figures(latencies_s: list[float], *, rate: float, requests: int, sent_s: float, elapsed_s: float,
                  timeouts: int, statuses: dict[str, int]) -> dict[str, Any]:
    """STEP2 round trips at one offered rate: latency percentiles and whether the rate was sustained."""
    return {"step2_p50_ms": round(pct(latencies_s, 0.5) * 1000, 1), "step2_p99_ms": round(pct(latencies_s, 0.99) * 1000, 1),
            "step2_max_ms": round(max(latencies_s, default=float("nan")) * 1000, 1),
            "step2_rate": rate, "step2_offered_rate": round(requests / sent_s, 1) if sent_s else float("nan"),
            "step2_completed_per_s": round(len(latencies_s) / elapsed_s, 1) if elapsed_s else 0.0,
            "step2_requests": requests, "step2_answered": len(latencies_s), "step2_timeouts": timeouts,
            "step2_statuses": statuses}


def low_rate(figures: dict[str, Any]) -> dict[str, Any]:
    """The same figures of the lower offered rate, under ``step2_low_…``."""
    return {k.replace("step2_", "step2_low_", 1): v for k, v in figures.items()}


def lookup_figures(done_s: list[float], sequential_s: list[float], elapsed_s: float, banks: int,
                   concurrency: int) -> dict[str, Any]:
    return {"lookup_banks": banks, "lookup_p50_ms": _ms(pct(done_s, 0.5)), "lookup_p99_ms": _ms(pct(done_s, 0.99)),
            "lookups_per_s": round(len(done_s) / elapsed_s, 3) if elapsed_s else 0.0,
            "lookup_concurrency": concurrency, "lookups_sustained": len(done_s),
            "lookup_sequential_p50_ms": _ms(pct(sequential_s, 0.5))}


def _ms(seconds: float) -> float:
    """Whole milliseconds; NaN (nothing measured) stays NaN instead of failing the whole report."""
    return seconds if math.isnan(seconds) else round(seconds * 1000)


def lookup_cost(used_s: dict[str, float], lookups: int, hub_names: list[str]) -> dict[str, Any]:
    """CPU per lookup of each process, and the hub's own (``lookup_hub_cpu_ms``): in production every
    bank runs on its own machines, so the hub's share is what the platform pays."""
    each = per_unit_ms(used_s, lookups)
    return {"lookup_cpu_ms_per_lookup": each, "lookup_hub_cpu_ms": round(sum(each[n] for n in hub_names), 2)}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
