"""Inheritance lookups (相続時照会) across N banks on the embedded stack: latency and sustained rate.

Not a timed test: run it by hand and read the figures.

    /tmp/rk/bin/python -m benchmarks.lookup_bench --banks 1000 --lookups 20 --sustain-s 60 --concurrency 4

It starts a fresh embedded platform (Tansu + PostgreSQL, hub and bank
simulator as real processes, ``--banks`` simulated banks) in a temporary
state folder, reports how long topic creation + key bootstrap and the key
directory load take, numbers one person's accounts at three banks, then:

1. ``--lookups`` sequential lookups to every participating bank — inquiry
   sent by DICJ → consolidated ``lookup.result`` received by DICJ: p50/p99;
2. ``--sustain-s`` seconds with ``--concurrency`` lookups in flight:
   completed lookups per second (each = 1 fan-out + N answers + 1 result).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from connectors.client import BusClient
from connectors.dicj import DicjDesk
from infra.settings import Settings
from infra.stack import WORKERS, Platform


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(banks: int, lookups: int, sustain_s: float, concurrency: int, keep: bool) -> dict:
    from infra.demo_lookups import _World  # the demo's seeding helpers (accounts, portal numbering)
    from infra.keystore import KeyStore, load_directory

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
        prefix = s.kafka.topic_prefix
        conn = await asyncpg.connect(s.pg_dsn)
        async with DicjDesk(s, group=f"{prefix}.bench-dicj") as dicj, \
                BusClient(s, ["portal"], group=f"{prefix}.bench-portal") as portal:
            w = _World(s, conn, dicj, portal)
            mn, accounts = await w.person({"9000": 2, f"{9000 + banks // 2:04d}": 1, f"{9000 + banks - 1:04d}": 1})
            for code in accounts:
                await w.number_via_portal(mn, code)
            subject = await dicj.token_for("dicj", mn)
            asked = len(dicj.lookup_banks())
            out["banks_asked_per_lookup"] = asked

            async def one() -> float:
                started = time.perf_counter()
                cid = await dicj.start_lookup("INHERITANCE", subject, deadline_s=300)
                view = await dicj.wait_result(cid, timeout=600)
                if len(view["answering_banks"]) != asked or len(view["accounts"]) != 4:
                    raise RuntimeError(f"incomplete result: {len(view['answering_banks'])} banks answered")
                return time.perf_counter() - started

            await one()  # warm-up (JIT caches, connection pools)
            latencies = [await one() for _ in range(lookups)]
            out["sequential"] = {"lookups": lookups, "p50_s": round(_pct(latencies, 0.5), 3),
                                 "p99_s": round(_pct(latencies, 0.99), 3), "max_s": round(max(latencies), 3)}

            done: list[float] = []
            stop = time.perf_counter() + sustain_s

            async def worker() -> None:
                while time.perf_counter() < stop:
                    done.append(await one())

            t3 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t3
            out["sustained"] = {"concurrency": concurrency, "seconds": round(elapsed, 1), "lookups": len(done),
                                "lookups_per_s": round(len(done) / elapsed, 3),
                                "bank_answers_per_s": round(len(done) * asked / elapsed, 1),
                                "p50_s": round(_pct(done, 0.5), 3), "p99_s": round(_pct(done, 0.99), 3)}
        await conn.close()
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
