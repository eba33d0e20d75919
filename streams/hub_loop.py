"""The hub worker's consume loop on a plain aiokafka consumer group (``python -m streams.hub_loop``, what ``renkei up`` and ``renkei worker hub`` start).

One poll is one batch end to end: ``getmany`` (up to :data:`HUB_BATCH_MAX` records, what the
fetcher already holds — it prefetches the next batch while this one is processed), then
``HubService.process`` (decide, one PostgreSQL transaction, countersign, produce, wait for the
acks), then one offset commit of exactly the offsets processed.  faust drove the same
``HubService`` before; measured in the same run it cost the hub more than a fifth of its
throughput (docs/performance.md), so the hub runs without it (``streams.hub_faust`` keeps the
faust app for the bench's comparison).

Guarantees are the service's, unchanged: nothing is forwarded before the batch's claims and
provision records commit; the offsets are committed only after the forwards are acknowledged, so
a crash redelivers the batch (same offsets: forwarded again, no new record).  A commit refused
because the group rebalanced meanwhile is the same case: the partition's next owner redelivers.
Every hub worker joins the group ``<prefix>.hub`` (the name the ACLs grant), so several share the
ingress topic's partitions.

A batch whose forwards the broker did not acknowledge is read again after a back-off (nothing is
skipped: fail closed). The idempotent producer retries retriable errors itself without end; what
reaches the loop is a refusal (a missing ACL on an inbox, a record over the topic's size limit). After
one, aiokafka does not reset the partition's sequence, so later batches to it fail
OutOfOrderSequenceNumber until the worker restarts: fix the cause, then restart the hub (the log
says which error, every attempt).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from infra.core.logs import configure_logging
from infra.core.retry import Backoff
from infra.core.settings import Settings
from infra.platform.kafka import consumer as make_consumer
from infra.platform.kafka import fetch_wait_ms, fetch_whole_assignment
from infra.platform.metrics_server import MetricsServer
from infra.platform.topics import TopicNames
from streams.gateway import Inbound
from streams.hub import HubRunning, hub_metrics, hub_metrics_server, observe_batch, record_headers, start_hub

log = logging.getLogger("renkei.hub")

HUB_BATCH_MAX = 500
"""Records per poll (faust's ``take_events`` took the same); one transaction and one countersignature each."""
FORWARD_RETRY = Backoff(base_s=0.2, cap_s=5.0)  # a batch the broker did not acknowledge is read again after this
"""Back-off between attempts at a batch whose forwards the broker did not acknowledge."""
DRAIN_S = 10.0
"""How long a stopping worker lets its batch finish and commit before it is cancelled."""


class HubLoop:
    """Ingress → ``HubService.process`` → commit, until :meth:`stop`; an async context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.group = f"{settings.kafka.topic_prefix}.hub"
        self.metrics = hub_metrics(settings)
        self.hub: HubRunning | None = None
        self.consumer: Any = None
        self._server: MetricsServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def health(self) -> tuple[str, str]:
        if self.hub is None or self._task is None:
            return "starting", "loading keys and connecting to PostgreSQL"
        if self._task.done():
            return "failing", "the consume loop stopped"
        return self.hub.health()

    async def start(self) -> None:
        self._server = hub_metrics_server(self.settings, self.metrics, self.health,
                                          lambda: self.hub.service if self.hub is not None else None)
        await self._server.start()
        self.hub = await start_hub(self.settings, self.metrics)
        # Joined only once the service can process: a member that cannot yet work would hold partitions.
        self.consumer = make_consumer(self.settings, self.names.ingress, group_id=self.group,
                                      fetch_max_wait_ms=fetch_wait_ms(self.settings.kafka))
        await self.consumer.start()
        fetch_whole_assignment(self.consumer)  # each poll takes every buffered record: no partition waits out a fetch
        self._task = asyncio.create_task(self._run(), name="hub-consume")
        log.info("hub ready: consuming %s", self.names.ingress)

    async def _run(self) -> None:
        assert self.hub is not None
        process = self.hub.service.process
        failures = 0
        while not self._stopping:
            polled = await self.consumer.getmany(timeout_ms=200, max_records=HUB_BATCH_MAX)
            if not polled:
                continue
            started = time.monotonic()
            batch = [Inbound(r.value, r.partition, r.offset, r.key, record_headers(r.headers))
                     for records in polled.values() for r in records]
            try:
                stats = await process(batch)
            except KafkaError as exc:
                failures += 1
                delay = FORWARD_RETRY.delay(failures)
                # A forward or record the broker did not acknowledge (process() itself turns every bad
                # message into a dead letter and waits out a database outage). The claims and records are
                # committed, so reading the batch again forwards it again without a new record.
                log.error("a batch's forwards were not acknowledged (%s); reading it again in %.1f s",
                          type(exc).__name__, delay)
                self._rewind(polled)
                await asyncio.sleep(delay)
                continue
            failures = 0
            last = {tp: records[-1].offset for tp, records in polled.items() if records}
            await self._commit(last)
            observe_batch(self.metrics, stats, started, self.consumer, last)

    def _rewind(self, polled: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in polled.items():
            try:
                self.consumer.seek(tp, records[0].offset)
            except IllegalStateError:  # no longer ours: its new owner reads it from the committed offset
                pass

    async def _commit(self, last: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit({tp: offset + 1 for tp, offset in last.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced while the batch ran: its next owner redelivers it (same offsets, so the
            # claims forward it again and record nothing new).
            log.warning("offsets of a processed batch not committed (%s); its partitions' new owner redelivers it",
                        type(exc).__name__)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); the batch will be redelivered after a restart", exc)

    async def wait(self) -> None:
        """Until the consume loop ends (an error in it is raised here)."""
        assert self._task is not None
        await self._task

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await asyncio.wait([self._task], timeout=DRAIN_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()  # leaves the group: the other workers take the partitions at once
        if self.hub is not None:
            await self.hub.stop()
        if self._server is not None:
            await self._server.stop()

    async def __aenter__(self) -> HubLoop:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run the hub until SIGTERM or SIGINT; the batch in hand finishes and commits first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with HubLoop(settings) as hub:
        stopped, running = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hub.wait())
        await asyncio.wait([stopped, running], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    if running.done() and not running.cancelled():
        running.result()  # the loop died: exit with its error (non-zero), so `renkei status` shows it dead


def run_hub(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format, "hub")
    asyncio.run(serve(settings))


def main(argv: list[str] | None = None) -> None:
    """The hub worker: ``python -m streams.hub_loop [flags]`` (this module, not ``streams.hub``, so the hub's
    rules do not import the loop that drives them)."""
    from infra.core.arguments import worker_settings

    run_hub(worker_settings(argv, participant_id="hub"))


if __name__ == "__main__":
    main()
