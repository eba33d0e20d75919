"""The embedded broker's cost on this machine: start time, idle CPU of an idle platform, memory.

For one broker (``--broker kafka`` or ``tansu``), in temporary folders:

1. start time, ``--starts`` times: a cold start (Apache Kafka: storage formatted first) on a
   fresh state folder, then a warm restart on the same folder (min / median / max, seconds until
   the broker serves metadata);
2. an idle platform as ``renkei up`` starts it (broker, PostgreSQL, hub, registry, bank
   simulator), left ``--settle`` seconds, then the CPU each process uses over ``--seconds``
   (from /proc/<pid>/stat, in % of one core), and the broker's RSS (now and peak).

    .venv/bin/python -m benchmarks.broker_idle --broker kafka --seconds 60 --json

``--alone``: instead of 2, the broker by itself (no PostgreSQL, no client), for trying its settings:
``--set key=value`` (a server.properties line, repeatable) and ``--jvm OPTION`` / ``--drop-jvm OPTION``
(repeatable) change the embedded node's configuration in this process only, e.g.

    .venv/bin/python -m benchmarks.broker_idle --starts 0 --alone --seconds 30 --jvm -XX:-UsePerfData --json

The load average of the machine is printed too: on a shared machine it moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from infra.core.settings import load_settings
from infra.platform.embedded import EmbeddedStack
from infra.tools.bench import cpu_seconds, peak_rss_mb


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


async def start_times(broker: str, starts: int, root: Path) -> dict[str, Any]:
    settings = load_settings(environ=dict(os.environ) | {"RENKEI_BROKER": broker})
    cold: list[float] = []
    warm: list[float] = []
    for i in range(starts):
        for phase in (cold, warm):
            stack = EmbeddedStack.for_settings(settings, root / f"start{i}", with_postgres=False, notify=lambda _: None)
            t = time.perf_counter()
            await stack.start()
            phase.append(time.perf_counter() - t)
            await stack.stop()
    return {"cold_start_s": spread(cold), "warm_start_s": spread(warm)}


async def idle_platform(broker: str, seconds: float, settle: float, root: Path) -> dict[str, Any]:
    from infra.platform.stack import Platform

    settings = load_settings(environ=dict(os.environ) | {"RENKEI_BROKER": broker},
                             cli={"state_dir": str(root / "idle")})
    async with Platform(settings, die_with_parent=True) as platform:
        await platform.wait_ready(300)
        await asyncio.sleep(settle)
        pids = {c.name: c.pid for c in platform.stack.components.values()}
        before = {n: cpu_seconds(p, with_children_of=(n == "postgres")) for n, p in pids.items()}
        t = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t
        after = {n: cpu_seconds(p, with_children_of=(n == "postgres")) for n, p in pids.items()}
        broker_pid = pids["broker"]
        cpu = {n: round((after[n] - before[n]) / elapsed * 100, 1) for n in pids}
        return {"broker": platform.stack.broker_description, "idle_cpu_pct_of_one_core": cpu,
                "idle_cpu_pct_total": round(sum(cpu.values()), 1), "idle_seconds": round(elapsed, 1),
                "broker_rss_mb": rss_mb(broker_pid), "broker_peak_rss_mb": peak_rss_mb(broker_pid)}


def try_broker_settings(props: dict[str, str], add_jvm: list[str], drop_jvm: list[str]) -> None:
    """Make every Apache Kafka node this process starts take ``props`` and these JVM options (a what-if)."""
    from infra.platform import kafka_broker

    properties, jvm_argv = kafka_broker.NodeConfig.properties, kafka_broker.NodeConfig.jvm_argv

    def with_props(self: Any) -> dict[str, str]:
        return properties(self) | props

    def with_jvm(self: Any, *args: Any, options: tuple[str, ...] = kafka_broker.JVM_OPTIONS, **kw: Any) -> list[str]:
        if options is kafka_broker.JVM_OPTIONS:  # the broker's, not a tool's
            options = (*(o for o in options if o not in drop_jvm), *add_jvm)
        return jvm_argv(self, *args, options=options, **kw)

    kafka_broker.NodeConfig.properties = with_props  # type: ignore[method-assign]
    kafka_broker.NodeConfig.jvm_argv = with_jvm  # type: ignore[method-assign]


async def idle_broker(broker: str, seconds: float, settle: float, root: Path) -> dict[str, Any]:
    """The broker alone, no client: its own idle work."""
    settings = load_settings(environ=dict(os.environ) | {"RENKEI_BROKER": broker})
    stack = EmbeddedStack.for_settings(settings, root / "alone", with_postgres=False, notify=lambda _: None)
    await stack.start()
    try:
        await asyncio.sleep(settle)
        pid = stack.components["broker"].pid
        before, t = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t
        return {"broker": stack.broker_description, "alone": True,
                "idle_cpu_pct_of_one_core": {"broker": round((cpu_seconds(pid) - before) / elapsed * 100, 2)},
                "idle_seconds": round(elapsed, 1), "broker_rss_mb": rss_mb(pid)}
    finally:
        await stack.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--alone", action="store_true", help="the broker by itself, no platform")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a broker property")
    parser.add_argument("--jvm", action="append", default=[], metavar="OPTION", help="a JVM option to add")
    parser.add_argument("--drop-jvm", action="append", default=[], metavar="OPTION", help="a JVM option to drop")
    args = parser.parse_args()
    props = dict(kv.split("=", 1) for kv in args.set)
    if props or args.jvm or args.drop_jvm:
        try_broker_settings(props, args.jvm, args.drop_jvm)
    with tempfile.TemporaryDirectory(prefix="renkei-broker-idle-") as tmp:
        report: dict[str, Any] = {"broker_kind": args.broker, "load_avg_1m_start": round(os.getloadavg()[0], 2),
                                  "broker_settings_tried": props, "jvm_added": args.jvm, "jvm_dropped": args.drop_jvm}
        if args.starts:  # --starts 0: the idle platform only
            report.update(await start_times(args.broker, args.starts, Path(tmp)))
        idle = idle_broker if args.alone else idle_platform
        report.update(await idle(args.broker, args.seconds, args.settle, Path(tmp)))
        report["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    asyncio.run(main())
