"""Inheritance lookups (相続時照会) across N banks on the embedded stack: latency, sustained rate, CPU per lookup.

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.lookup_bench --banks 1000 --lookups 2 --sustain-s 60 --concurrency 8 \
        [--profile DIR]

It starts a fresh embedded platform (Apache Kafka + PostgreSQL, hub and bank
simulator as real processes, ``--banks`` simulated banks) in a temporary
state folder, reports how long topic creation + key bootstrap and the key
directory load take, numbers one person's accounts at three banks, then:

1. ``--lookups`` sequential lookups to every participating bank — inquiry
   sent by DICJ → consolidated ``lookup.result`` received by DICJ: p50;
2. ``--sustain-s`` seconds with ``--concurrency`` lookups in flight:
   completed lookups per second (each = 1 fan-out + N answers + 1 result),
   p50/p99 — the lookup phase of ``renkei bench`` (``infra.tools.bench.lookups``).

``cpu_ms_per_lookup``: CPU milliseconds of each process (broker, PostgreSQL with its backends, the hub,
the bank simulator, this process — DICJ's desk) over both phases, divided by every lookup made, as
``lookup_cpu_ms_per_lookup`` of ``renkei bench``; ``hub`` is ``lookup_hub_cpu_ms``.

``--profile DIR``: ``py-spy record`` (install it into the venv) of the hub, the bank simulator and this
process over the first ``--sustain-s`` seconds of the lookup phase (the parties' start, the warm-up lookup —
a hub worker's first fan-out —, the sequential ones, then the sustained), as collapsed stacks
(``DIR/<process>.txt``), and the top functions of each by share of its samples, leaf (self) and inclusive
(``DIR/top.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infra.core.settings import Settings
from infra.platform.stack import WORKERS, Platform


def _py_spy() -> str:
    """The venv's py-spy, else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


_FRAME = re.compile(r" \((?:[^()]*/)?([^/()]+?)(?::\d+)?\)$")


def top_functions(collapsed: Path, n: int = 15) -> dict[str, Any]:
    """Shares of a py-spy collapsed-stack file: the ``n`` commonest leaf frames and inclusive frames."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_FRAME.sub(lambda m: f" ({m[1]})", f) for f in stack.split(";")]  # "name (file.py)"
        samples = int(count)
        total += samples
        leaf[frames[-1]] += samples
        for f in set(frames):
            inclusive[f] += samples
    share = lambda c: [(f, round(100 * k / total, 1)) for f, k in c.most_common(n)]  # noqa: E731
    return {"samples": total, "self_pct": share(leaf), "inclusive_pct": share(inclusive)}


async def run(banks: int, lookups: int, sustain_s: float, concurrency: int, keep: bool,
              profile: Path | None = None) -> dict:
    from infra.platform.keystore import KeyStore, load_directory
    from infra.tools.bench import CpuMeter, stack_components
    from infra.tools.bench import lookups as measure  # the same lookup phase as `renkei bench`
    from infra.tools.bench_figures import lookup_cost

    state = Path(tempfile.mkdtemp(prefix="renkei-lookup-bench-"))
    settings = Settings(state_dir=state, banks=banks, log_level="WARNING")
    out: dict = {"banks": banks, "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    platform = Platform(settings, workers=[w for w in WORKERS if w.name in ("hub", "banks")])
    await platform.start()
    out["platform_start_s"] = round(time.perf_counter() - t0, 2)  # stack + topics + keys + spawn
    spies: list[subprocess.Popen[bytes]] = []
    try:
        t1 = time.perf_counter()
        await platform.wait_ready(900)
        out["workers_ready_s"] = round(time.perf_counter() - t1, 2)
        s = platform.settings
        t2 = time.perf_counter()
        directory = await load_directory(s, KeyStore.for_settings(s).root_public_key())
        out["directory_load_s"] = round(time.perf_counter() - t2, 2)
        out["directory_entries"] = len(directory)
        comps = platform.stack.components
        processes = stack_components(platform.stack, platform, this_process="dicj (this process)")
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            # Started now: the warm-up lookup (the hub's first fan-out) is in the profile.
            spies = [subprocess.Popen([_py_spy(), "record", "--format", "raw", "--nonblocking", "--rate", "50",
                                       "-d", str(int(sustain_s)), "-o", str(profile / f"{name}.txt"), "-p", str(pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in (("hub", comps["hub"].pid), ("banks", comps["banks"].pid),
                                       ("dicj", os.getpid()))]
        meter = CpuMeter(processes)
        meter.start()
        out.update(await measure(s, lookups, sustain_s, concurrency))
        used = meter.stop()
        cost = lookup_cost(used, out["lookups_total"], ["hub"])
        out["cpu_ms_per_lookup"] = cost["lookup_cpu_ms_per_lookup"]
        out["lookup_hub_cpu_ms"] = cost["lookup_hub_cpu_ms"]
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    finally:
        for spy in spies:
            try:
                spy.wait(timeout=120)
            except subprocess.TimeoutExpired:
                spy.terminate()
        await platform.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    if profile is not None:
        tops = {f.stem: top_functions(f) for f in sorted(profile.glob("*.txt")) if f.stat().st_size}
        (profile / "top.json").write_text(json.dumps(tops, indent=1, ensure_ascii=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--sustain-s", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the state folder (logs) afterwards")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles of hub, banks and DICJ here")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.banks, args.lookups, args.sustain_s, args.concurrency, args.keep,
                                     args.profile)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
