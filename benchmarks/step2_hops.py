"""Where a STEP2 round trip's time goes, hop by hop, at a low offered rate (well under capacity).

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.step2_hops --rate 20 --seconds 10 [--json]

Starts a fresh embedded platform (hub, registry and bank simulator as processes, 5 banks) in a
temporary folder and sends STEP2 inquiries from an agency at ``--rate`` per second (open loop), as
``renkei bench`` does. Afterwards it reads the ingress topic and the registry's and agency's
inboxes and follows each round trip by its W3C trace id (every leg carries it; the hub continues
it): each record's timestamp is the moment its sender's producer took it (CreateTime), so

* ``client_send``   the agency's ``request`` → its inquiry handed to the producer (outbox store, relay);
* ``hub_inquiry``   that → the hub's forward handed to the producer (produce, broker, fetch, hub batch);
* ``registry``      that → the registry's answer handed to the producer (fetch, handler, commit, relay);
* ``hub_answer``    that → the hub's forward of the answer handed to the producer;
* ``client_receive`` that → the answer opened in the agency's runtime (produce, broker, fetch, open,
  the client's transaction).

p50 / p99 of each in ms, and of the whole. ``worker_batch_ms``: how long the hub's and the registry's
batches took on average (their ``renkei_batch_duration_seconds`` over the run): the part of a hop that
is the worker's own processing; the rest of it is produce, broker, fetch and waiting. Timestamps are milliseconds of the wall clock of one
machine, so a hop's figure is good to about 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.core.settings import Settings
from infra.core.tracing import incoming
from infra.crypto.envelope import peek
from infra.platform.stack import WORKERS, Platform
from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
from infra.tools.bench import AGENCY, PROCEDURE, CpuMeter, assign_from, open_loop, plain_consumer, stack_components

HOPS = ("client_send", "hub_inquiry", "registry", "hub_answer", "client_receive")


@dataclass
class Trip:
    """One round trip as the agency saw it: wall-clock seconds of the send and of the answer."""

    sent: float
    answered: float
    answer_id: str  # the message id of the leg the agency received (clear in its envelope)


async def offer(settings: Settings, rate: float, seconds: float) -> list[Trip]:
    import random

    from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.domain.validation import generate_my_number
    from infra.platform.keystore import KeyStore
    from schemas import types as msg
    from streams.client import BusClient

    rng = random.Random(7)
    authority = KeyStore.for_settings(settings).token_authority()
    subjects = [authority.token_for(generate_my_number(rng), AGENCY) for _ in range(200)]
    trips: list[Trip] = []
    async with BusClient(settings, [AGENCY], group=f"{settings.kafka.topic_prefix}.hops-client") as bus:

        async def one(i: int, keep: bool = True) -> None:
            sent = time.time()
            answer = await bus.request(
                AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=subjects[i % len(subjects)],
                body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": datetime.now(UTC)},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=60, procedure=PROCEDURE)
            if keep:
                trips.append(Trip(sent, time.time(), answer.meta.message_id))

        # warm-up: connections, caches, the hub's leg keys
        await open_loop(rate, max(5, int(rate)), functools.partial(one, keep=False))
        await open_loop(rate, int(rate * seconds), one)
    return trips


async def legs(settings: Settings) -> dict[str, dict[str, float]]:
    """trace id → {leg name: CreateTime in seconds}, read from the three topics of a STEP2 round trip."""
    from schemas import types as msg


    names = TopicNames(settings.kafka.topic_prefix)
    wanted = {(names.ingress, msg.PROVISION_INQUIRY): "inquiry_in", (names.inbox("registry"), msg.PROVISION_INQUIRY):
              "inquiry_out", (names.ingress, msg.PROVISION_RESPONSE): "answer_in",
              (names.inbox(AGENCY), msg.PROVISION_RESPONSE): "answer_out"}
    out: dict[str, dict[str, float]] = {}
    ids: dict[str, str] = {}  # the agency's leg id → trace id
    cons = plain_consumer(settings)
    await cons.start()
    try:
        for topic in {t for t, _ in wanted}:
            await assign_from(cons, topic, INGRESS_PARTITIONS if topic == names.ingress else 1)
            idle = 0
            while idle < 3:  # everything was produced before: three empty polls in a row = read to the end
                got = await cons.getmany(timeout_ms=300)
                idle = 0 if got else idle + 1
                for records in got.values():
                    for r in records:
                        meta = peek(r.value)
                        name = wanted.get((topic, meta.type))
                        trace = incoming(r.headers)
                        if name is None or trace is None:
                            continue
                        out.setdefault(trace.trace_id, {})[name] = r.timestamp / 1000
                        if name == "answer_out":
                            ids[meta.message_id] = trace.trace_id
    finally:
        await cons.stop()
    return {ids_key: out[trace] for ids_key, trace in ids.items() if trace in out}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": round(statistics.median(values) * 1000, 1),
            "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1)}


def hop_figures(trips: list[Trip], by_answer: dict[str, dict[str, float]]) -> dict[str, Any]:
    per_hop: dict[str, list[float]] = {h: [] for h in HOPS}
    totals: list[float] = []
    for trip in trips:
        leg = by_answer.get(trip.answer_id)
        if leg is None or len(leg) < 4:
            continue
        points = [trip.sent, leg["inquiry_in"], leg["inquiry_out"], leg["answer_in"], leg["answer_out"], trip.answered]
        for hop, (a, b) in zip(HOPS, zip(points, points[1:]), strict=True):
            per_hop[hop].append(b - a)
        totals.append(trip.answered - trip.sent)
    return {"round_trips": len(totals), "unmatched": len(trips) - len(totals), "round_trip_ms": percentiles(totals),
            "hops_ms": {h: percentiles(v) for h, v in per_hop.items()}}


async def batch_totals(platform: Platform, names: tuple[str, ...] = ("hub", "registry")) -> dict[str, tuple[float, float]]:
    """(seconds, batches) of ``renkei_batch_duration_seconds`` so far, per worker, from its ``/metrics``."""
    from infra.platform.metrics_server import fetch_metrics, read_endpoint

    out: dict[str, tuple[float, float]] = {}
    for name in names:
        found = read_endpoint(platform.settings.state_dir, platform.stack.components[name].pid)
        if found is None:
            continue
        samples = await fetch_metrics(found.metrics)
        total = {k.split("{")[0]: v for k, v in samples.items() if k.startswith("renkei_batch_duration_seconds_")}
        out[name] = (total.get("renkei_batch_duration_seconds_sum", 0.0),
                     total.get("renkei_batch_duration_seconds_count", 0.0))
    return out


async def run(rate: float, seconds: float, keep: bool) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="renkei-hops-"))
    settings = Settings(state_dir=state, banks=5, log_level="WARNING")
    platform = Platform(settings, workers=[w for w in WORKERS if w.name in ("hub", "registry", "banks")],
                        die_with_parent=True)  # a killed run leaves no process behind
    await platform.start()
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    try:
        await platform.wait_ready(300)
        say("platform ready")
        s = platform.settings
        meter = CpuMeter(stack_components(platform.stack, platform))
        await asyncio.sleep(2)
        meter.start()
        batches = await batch_totals(platform)
        trips = await offer(s, rate, seconds)
        used = meter.stop()
        after = await batch_totals(platform)
        out["worker_batch_ms"] = {n: {"mean": round((after[n][0] - batches[n][0]) * 1000 / max(1, after[n][1] - batches[n][1]), 1),
                                      "batches": int(after[n][1] - batches[n][1])} for n in after if n in batches}
        say(f"{len(trips)} round trips; reading the topics")
        out.update(hop_figures(trips, await legs(s)))
        out["cpu_ms_per_round_trip"] = {n: round(v * 1000 / max(1, len(trips)), 2) for n, v in used.items()}
    finally:
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        await platform.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="offered round trips per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the state folder (logs) afterwards")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.rate, args.seconds, args.keep)), indent=2))


if __name__ == "__main__":
    main()
