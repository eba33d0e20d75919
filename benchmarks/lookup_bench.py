"""Inheritance lookups (相続時照会) across N banks on the embedded stack: latency and sustained rate.

Not a timed test: run it by hand and read the figures.

    /tmp/rk/bin/python -m benchmarks.lookup_bench --banks 1000 --lookups 20 --sustain-s 60 --concurrency 4

It starts a fresh embedded platform (Tansu + PostgreSQL, hub and bank
simulator as real processes, ``--banks`` simulated banks) in a temporary
state folder, reports how long topic creation + key bootstrap and the key
directory load take, numbers one person's accounts at three banks, then:

1. ``--lookups`` sequential lookups to every participating bank — inquiry
   sent by DICJ → consolidated ``lookup.result`` received by DICJ: p50;
2. ``--sustain-s`` seconds with ``--concurrency`` lookups in flight:
   completed lookups per second (each = 1 fan-out + N answers + 1 result),
   p50/p99 — the lookup phase of ``renkei bench`` (``infra.tools.bench.lookups``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from infra.core.settings import Settings
from infra.platform.stack import WORKERS, Platform


async def run(banks: int, lookups: int, sustain_s: float, concurrency: int, keep: bool) -> dict:
    from infra.platform.keystore import KeyStore, load_directory

    state = Path(tempfile.mkdtemp(prefix="renkei-lookup-bench-"))
    settings = Settings(state_dir=state, banks=banks, log_level="WARNING")
    out: dict = {"banks": banks}
    t0 = time.perf_counter()
    platform = Platform(settings, workers=[w for w in WORKERS if w.name in ("hub", "banks")])
    await platform.start()
    out["platform_start_s"] = round(time.perf_counter() - t0, 2)  # stack + topics + keys + spawn
    try:
        t1 = time.perf_counter()
        await platform.wait_ready(600)
        out["workers_ready_s"] = round(time.perf_counter() - t1, 2)
        s = platform.settings
        t2 = time.perf_counter()
        directory = await load_directory(s, KeyStore.for_settings(s).root_public_key())
        out["directory_load_s"] = round(time.perf_counter() - t2, 2)
        out["directory_entries"] = len(directory)
        from infra.tools.bench import lookups as measure  # the same lookup phase as `renkei bench`

        out.update(await measure(s, lookups, sustain_s, concurrency))
    finally:
        await platform.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--sustain-s", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the state folder (logs) afterwards")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.banks, args.lookups, args.sustain_s, args.concurrency, args.keep)),
                     indent=2))


if __name__ == "__main__":
    main()
