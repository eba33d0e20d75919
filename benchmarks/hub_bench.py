"""Where the hub's time goes: ``HubService.process`` in this process, phase by phase.

Starts an embedded stack (temporary folder), seals N STEP2 inquiries, feeds
them to ``HubService`` from a plain aiokafka loop in batches of up to 500 and
prints msgs/s with the wall time (``us_per_msg``) and this process's CPU time
(``cpu_us_per_msg``, ``time.process_time``: what other sessions' load moves
least) spent in each phase of a batch: decide (verify, policy, tokens), the
PostgreSQL transaction (claim, records, lookups), and emit (countersign,
produce, acks).  The broker and PostgreSQL are other processes: their CPU is
not in these figures; an awaited phase's CPU includes what the event loop ran
meanwhile (aiokafka's fetcher).  ``cpu_us_per_msg["loop (all)"]`` is the whole
consume-and-process loop, ``gc_us_per_msg`` the garbage collector's share of it.  ``--profile FILE`` also writes a cProfile of the run
(read it with ``python -m pstats``).

    .venv/bin/python -m benchmarks.hub_bench --messages 4000 [--per-message] [--profile /tmp/hub.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from infra.core.settings import KafkaSettings, Settings
from infra.tools import bench


class _GcTime:
    """CPU time spent in the garbage collector while ``on`` (``gc.callbacks``), and its collections."""

    def __init__(self) -> None:
        self.on, self.seconds, self.collections, self._started = False, 0.0, 0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        elif self.on:
            self.seconds += time.process_time() - self._started
            self.collections += 1


def _timed(totals: dict[str, float], cpu: dict[str, float], name: str, fn: Any) -> Any:
    """``fn`` adding its wall time to ``totals[name]`` and this process's CPU time to ``cpu[name]``."""
    if asyncio.iscoroutinefunction(fn):
        async def wrapper(*a: Any, **kw: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return await fn(*a, **kw)
            finally:
                totals[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
    else:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                totals[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
    return wrapper


async def run(messages: int, per_message: bool, profile: str | None, murmur2: bool = False) -> dict[str, Any]:
    from infra.platform.embedded import EmbeddedStack
    from infra.platform.kafka import producer as make_producer
    from streams.gateway import Inbound
    from streams.hub import HubService, settle_heap, single_partition_first

    root = Path(tempfile.mkdtemp(prefix="renkei-hub-bench-"))
    try:
        async with EmbeddedStack(root / "stack") as stack:
            base = Settings(kafka=KafkaSettings(bootstrap=stack.bootstrap, broker=stack.broker_kind),
                            pg_dsn=stack.pg_dsn, state_dir=root,
                            log_level="WARNING")
            plat = await bench.sub_platform(base, root, "thr", banks=5, workers=[])
            s = plat.settings
            t, c = time.perf_counter(), time.process_time()
            records = bench.seal_inquiries(s, messages, per_message=per_message)
            seal_s, seal_cpu_s = time.perf_counter() - t, time.process_time() - c
            src = f"{s.kafka.topic_prefix}.bench.hub-src"
            await bench.create_topics(s, {src: 4})
            await bench.produce_all(s, src, records)
            # --murmur2: aiokafka's default partitioner (pure-Python murmur2 on every send), for before/after
            prod = make_producer(s, linger_ms=2, **({} if murmur2 else {"partitioner": single_partition_first}))
            await prod.start()
            service = await HubService.create(s, prod)
            settle_heap()  # as start_hub does in the worker
            totals: dict[str, float] = defaultdict(float)
            cpu: dict[str, float] = defaultdict(float)
            service.core.decide = _timed(totals, cpu, "decide", service.core.decide)
            service.core.forward = _timed(totals, cpu, "countersign", service.core.forward)
            service._commit = _timed(totals, cpu, "pg_transaction", service._commit)
            service._emit = _timed(totals, cpu, "emit (countersign + produce + acks)", service._emit)
            cons = bench.plain_consumer(s)
            await cons.start()
            await bench.assign_from(cons, src, 4)
            gc_time = _GcTime()
            profiler = cProfile.Profile() if profile else None
            batches = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            gc_time.on = True
            done = 0
            while done < len(records):
                got = await cons.getmany(timeout_ms=100, max_records=500)
                batch = [Inbound(r.value, r.partition, r.offset, r.key) for rs in got.values() for r in rs]
                if batch:
                    t, c = time.perf_counter(), time.process_time()
                    done += (await service.process(batch)).received
                    totals["process (all)"] += time.perf_counter() - t
                    cpu["process (all)"] += time.process_time() - c
                    batches += 1
            elapsed = time.perf_counter() - started
            gc_time.on = False
            cpu["loop (all)"] = time.process_time() - cpu_started
            if profiler:
                profiler.disable()
                profiler.dump_stats(profile)
            await cons.stop()
            await service.close()
            await prod.stop()
            await plat.stop()
            per_msg = {k: round(v / messages * 1e6, 1) for k, v in totals.items()}
            cpu_per_msg = {k: round(v / messages * 1e6, 1) for k, v in cpu.items()}
            return {"messages": messages, "per_message_signatures": per_message, "batches": batches,
                    "msgs_per_s": round(messages / elapsed), "seal_us_per_msg": round(seal_s / messages * 1e6, 1),
                    "seal_cpu_us_per_msg": round(seal_cpu_s / messages * 1e6, 1),
                    "us_per_msg": per_msg, "cpu_us_per_msg": cpu_per_msg, "forwarded": service.totals.forwarded,
                    "gc_us_per_msg": round(gc_time.seconds / messages * 1e6, 1), "gc_collections": gc_time.collections,
                    "rejected": service.totals.by_reason}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--per-message", action="store_true", help="one signature per envelope")
    parser.add_argument("--profile", help="write a cProfile to this file")
    parser.add_argument("--murmur2", action="store_true", help="aiokafka's default partitioner (before/after)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.per_message, args.profile, args.murmur2)), indent=2))


if __name__ == "__main__":
    main()
