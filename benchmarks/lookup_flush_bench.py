"""The hub's lookup-result flush: one ``send`` per record against one record batch per topic (``Outgoing``).

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.lookup_flush_bench [--silent-banks 1000] [--rounds 5]

A lookup past its deadline leaves one consolidated result for DICJ and, with it, one provision
record per bank that did not answer (``NO_ANSWER``), all produced by ``LookupTracker.flush``
(``streams/lookups.py``): the result to DICJ's inbox and ``--silent-banks`` + 1 audit records to the
audit topic, both of one partition. On a fresh embedded broker, for ``--rounds`` rounds each way in
alternation, it produces records of those sizes and waits for every ack: ``send`` awaited record by
record (the flush before), and ``streams.hub_produce.Outgoing`` (the flush now). Figures: this
process's CPU ms per flush (``time.process_time``) and wall ms, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from infra.core.settings import KafkaSettings, Settings
from infra.platform.embedded import EmbeddedStack
from infra.platform.kafka import producer
from infra.tools.bench import create_topics
from streams.hub_produce import Outgoing

RESULT_BYTES = 3_000  # a sealed lookup.result envelope, about
RECORD_BYTES = 700  # an audit record (infra.records.provisions.audit_record), about


async def _flush(prod: Any, batched: bool, records: list[tuple[str, bytes, bytes]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    if batched:
        out = Outgoing(prod)
        for topic, key, value in records:
            out.add(topic, value, key=key)
        await out.flush()
    else:
        futures = [await prod.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futures)
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


async def run(silent: int, rounds: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="renkei-flush-bench-"))
    settings = Settings(state_dir=state, log_level="WARNING")
    try:
        async with EmbeddedStack.for_settings(settings, state / "stack") as stack:
            s = Settings(state_dir=state, kafka=KafkaSettings(bootstrap=stack.bootstrap, broker=stack.broker_kind))
            await create_topics(s, {"bench.inbox.dicj": 1, "bench.audit": 1})
            records = [("bench.inbox.dicj", b"subject-token", os.urandom(RESULT_BYTES))]
            records += [("bench.audit", f"person-{i % 7}".encode(), os.urandom(RECORD_BYTES)) for i in range(silent + 1)]
            prod = producer(s)
            await prod.start()
            try:
                await _flush(prod, True, records)  # warm-up: metadata, connections
                got: dict[str, list[tuple[float, float]]] = {"send_each": [], "outgoing": []}
                for _ in range(rounds):
                    for way in got:
                        got[way].append(await _flush(prod, way == "outgoing", records))
            finally:
                await prod.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return {"records_per_flush": len(records), "rounds": rounds, "load_avg_1m": round(os.getloadavg()[0], 2),
            **{way: {"cpu_ms": round(statistics.median(c for c, _ in r), 1),
                     "wall_ms": round(statistics.median(w for _, w in r), 1)} for way, r in got.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--silent-banks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.silent_banks, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
