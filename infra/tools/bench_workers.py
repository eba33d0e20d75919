"""``renkei bench``'s hub-worker runs: several hub processes sharing ingress, and the faust-driven hub.

* :func:`scaling` — the same N fresh envelopes through 1, 2 and 4 hub workers of one consumer group
  (ingress has 4 partitions, so 4 is the most that share work);
* :data:`FAUST_HUB` — the hub's ``HubService`` driven by faust (``streams.hub_faust``), measured
  beside the plain aiokafka loop to show what the framework costs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from infra.core.settings import Settings
from infra.platform.stack import WORKERS, WorkerSpec

HUB = next(w for w in WORKERS if w.name == "hub")
FAUST_HUB = WorkerSpec("hub", "streams.hub_faust", HUB.args, HUB.group)
"""The faust-driven hub in the same consumer group and under the same principal as the real one."""


async def wait_members(settings: Settings, group: str, members: int, timeout: float = 120.0) -> None:
    """Until ``group`` is Stable with exactly ``members`` members (a rebalance must not fall inside a run)."""
    from infra.platform.kafka import admin_client

    admin = admin_client(settings)
    await admin.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                g = (await admin.describe_consumer_groups([group]))[0].groups[0]
                if g[2] == "Stable" and len(g[5]) == members:
                    return
            except Exception:  # the coordinator moving or the group forming: ask again
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} did not settle at {members} members within {timeout:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def scaling(platform: Any, messages: int, counts: tuple[int, ...],
                  run: Callable[[Settings, list[tuple[bytes, bytes]]], Awaitable[dict[str, Any]]],
                  seal: Callable[..., list[tuple[bytes, bytes]]]) -> dict[int, float]:
    """msgs/s through ``n`` hub workers for each ``n`` in ``counts`` (ascending), fresh envelopes each run
    (the ones already sent would be refused as replays)."""
    settings = platform.settings
    group = HUB.group(settings)
    running = 1
    out: dict[int, float] = {}
    for n in counts:
        for k in range(running + 1, n + 1):
            platform.start_worker(HUB, name=f"hub-{k}")
        running = max(running, n)
        await platform.wait_ready(180)
        await wait_members(settings, group, running)
        records = seal(settings, messages, per_message=False, rng=random.Random(1000 + n))
        out[n] = (await run(settings, records))["msgs_per_s"]
    return out
