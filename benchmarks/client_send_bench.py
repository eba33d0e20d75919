"""A client's concurrent sends (the agency client's STEP2 inquiries): coalesced against one transaction each.

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.client_send_bench [--sends 500] [--rounds 3]

It starts a fresh embedded platform with no workers (broker, PostgreSQL, topics, keys), then a
``BusClient`` for ``agency-nta`` (``streams.client``), and issues ``--sends`` provision inquiries
at once, two ways, alternating for ``--rounds`` rounds:

- ``coalesced``: each through ``ParticipantRuntime.send`` as ``BusClient.request`` does — sends that
  arrive while one is stored go in the next store together (``streams.coalesce``);
- ``one_each``: each in its own transaction with its own signature (what ``send`` did before),
  through ``send(..., conn=)`` in a transaction of its own.

Figures: wall ms for all the sends, this process's CPU µs per send (``time.process_time``), and the
number of stores (transactions) the coalesced way used. Both ways seal, sign and insert the same
outbox rows; the outbox relay produces them to ingress (no hub runs: nothing consumes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.core.settings import Settings
from infra.platform.stack import Platform

AGENCY = "agency-nta"
PROCEDURE = "income-tax-refund"  # one AGENCY is entitled to (infra/domain/procedures.toml)


def _inquiry() -> Any:
    from infra.crypto.envelope import Message
    from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from schemas import types as msg

    return Message(body={"procedure_code": PROCEDURE, "requested_at": datetime.now(UTC)}, type=msg.PROVISION_INQUIRY,
                   to="registry", subject=f"tok-{uuid.uuid4().hex}", data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                   basis=BASIS_PROVISION, correlation_id=str(uuid.uuid4()), procedure=PROCEDURE)


async def _round(runtime: Any, sends: int, coalesced: bool) -> dict[str, float]:
    messages = [_inquiry() for _ in range(sends)]

    async def one_each(m: Any) -> list[str]:
        async with runtime.pool.acquire() as conn, conn.transaction():
            return await runtime.send(AGENCY, [m], conn=conn)

    stores_before = runtime.send_stores(AGENCY)
    cpu, wall = time.process_time(), time.perf_counter()
    if coalesced:
        await asyncio.gather(*(runtime.send(AGENCY, [m]) for m in messages))
    else:
        await asyncio.gather(*(one_each(m) for m in messages))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"wall_ms": wall * 1000, "cpu_us_per_send": cpu / sends * 1e6,
            "stores": runtime.send_stores(AGENCY) - stores_before if coalesced else sends}


async def run(sends: int, rounds: int) -> dict[str, Any]:
    from streams.client import BusClient

    state = Path(tempfile.mkdtemp(prefix="renkei-send-bench-"))
    platform = Platform(Settings(state_dir=state, banks=3, log_level="WARNING"), workers=[])
    await platform.start()
    out: dict[str, Any] = {"sends": sends, "rounds": rounds}
    try:
        async with BusClient(platform.settings, [AGENCY], group="send-bench") as client:
            runtime = client.runtime
            await _round(runtime, 20, True)  # warm-up: connections, caches
            runs: dict[str, list[dict[str, float]]] = {"coalesced": [], "one_each": []}
            for _ in range(rounds):
                for way in ("one_each", "coalesced"):
                    runs[way].append(await _round(runtime, sends, way == "coalesced"))
        for way, got in runs.items():
            out[way] = {k: round(statistics.median(r[k] for r in got), 1) for k in got[0]}
    finally:
        await platform.stop()
        shutil.rmtree(state, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.sends, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
