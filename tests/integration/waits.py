"""Waiting on evidence, not on the clock: what a test checks before it says "nothing happened".

A fixed sleep proves nothing on a loaded machine (the worker may not have looked yet) and wastes time
on an idle one.  Instead:

* :func:`moved_on` — a worker's pass counter (``renkei_consumer_polls_total``,
  ``renkei_outbox_relay_passes_total``, ``renkei_connector_source_passes_total``, read in process or
  from a worker's ``/metrics``) has moved on by ``by`` passes: everything before the first of them was
  seen by a whole pass;
* :func:`hub_barrier` — one marker record on every ingress partition; once the hub has dead-lettered
  all of them, it has processed everything produced to ingress before (a partition is consumed in
  order).  The markers are dead letters with reason ``MALFORMED`` and no message id;
* :func:`dead_letters` — the hub's dead letters (reason, message id, source), read from the topic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from infra.core.settings import Settings
from infra.platform.metrics_server import WorkerEndpoint, fetch_health, fetch_metrics, read_endpoint
from infra.platform.topics import TopicNames
from infra.tools.harness import dead_letter_info, eventually, read_topic

BARRIER_PREFIX = b"renkei-test-barrier:"


async def moved_on(read: Callable[[], Awaitable[float] | float], *, by: int = 2, timeout: float = 60.0,
                   what: str = "the worker") -> float:
    """Wait until ``read()`` (a pass counter) is ``by`` above its value now; returns the new value."""
    async def value() -> float:
        got = read()
        return float(await got) if asyncio.iscoroutine(got) or asyncio.isfuture(got) else float(got)

    start = await value()
    deadline = time.monotonic() + timeout
    while (now := await value()) < start + by:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not make {by} more passes within {timeout:.0f} s ({start} → {now})")
        await asyncio.sleep(0.05)
    return now


def metric(url: str, name: str, **labels: str) -> Callable[[], Awaitable[float]]:
    """A reader of one series (summed over the other labels) of a worker's ``/metrics``, for :func:`moved_on`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]

    async def read() -> float:
        samples = await fetch_metrics(url)
        return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))

    return read


async def metrics_url(platform: Any, name: str, *, timeout: float = 90.0) -> str:
    """The ``/metrics`` URL of the platform's worker ``name`` (its current process), once it reports healthy."""
    return (await endpoint_of(platform, name, timeout=timeout)).metrics


async def endpoint_of(platform: Any, name: str, *, timeout: float = 90.0) -> WorkerEndpoint:
    """The metrics endpoint the running worker ``name`` (its current process) wrote, once its health says ok."""
    async def healthy() -> WorkerEndpoint | None:
        found = read_endpoint(platform.settings.state_dir, platform.stack.components[name].pid)
        return found if found is not None and (await fetch_health(found))["status"] == "ok" else None

    return await eventually(healthy, timeout=timeout, interval=0.3, what=f"{name} to report healthy")


async def dead_letters(settings: Settings) -> list[dict[str, str]]:
    """Every dead letter on the hub's rejected topic: ``reason``, ``message_id``, ``verified``, ``source``."""
    names = TopicNames(settings.kafka.topic_prefix)
    return [dead_letter_info(r) for r in await read_topic(settings, names.rejected)]


async def hub_barrier(settings: Settings, *, timeout: float = 120.0) -> None:
    """Return once the hub has processed everything produced to ingress before this call (see the module doc)."""
    from infra.platform.kafka import producer

    ingress = TopicNames(settings.kafka.topic_prefix).ingress
    prod = producer(settings)
    await prod.start()
    try:
        partitions = sorted(await prod.partitions_for(ingress))
        marks = set()
        for p in partitions:
            sent = await prod.send_and_wait(ingress, BARRIER_PREFIX + uuid.uuid4().bytes, partition=p)
            marks.add(f"{sent.partition}@{sent.offset}")
    finally:
        await prod.stop()
    deadline = time.monotonic() + timeout
    while True:
        seen = {d["source"] for d in await dead_letters(settings)}
        if marks <= seen:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the hub did not reach the barrier on {sorted(marks - seen)} within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def replayed(dead: list[dict[str, str]], message_ids: Any) -> list[dict[str, str]]:
    """The REPLAYED dead letters among ``dead`` whose message id is one of ``message_ids``."""
    ids = {str(m) for m in message_ids}
    return [d for d in dead if d["reason"] == "REPLAYED" and d["message_id"] in ids]
