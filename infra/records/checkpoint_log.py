"""The published checkpoints, as a verifier reads them from ``<prefix>.audit.checkpoints``.

The topic is the part of the record of provision records that the database's
operator does not control: the hub appends every checkpoint there, signed by
the records key.  :meth:`CheckpointLog.latest` answers the highest-numbered
checkpoint that verifies; a record that does not (junk or a forgery written by
someone with Write on the topic) is skipped and counted in ``skipped``, never
fatal.  An older checkpoint replayed onto the topic does not win either: the
highest number does.

The first read starts ``tail`` records before the end (the latest checkpoint is
normally the last record; checkpoints carry their number, so order does not
matter); later reads continue where the previous one stopped, so a long-lived
verifier (the portal) pays only for what was published since.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from infra.core.settings import Settings
from infra.crypto.records_keys import RecordsPublicKeys
from infra.platform.topics import TopicNames
from infra.records.checkpoints import Checkpoint, CheckpointError, open_checkpoint

__all__ = ["CheckpointLog"]

log = logging.getLogger("renkei.checkpoints")


class CheckpointLog:
    """Reads the checkpoint topic; ``latest()`` catches up to its current end. ``close()`` when done."""

    def __init__(self, settings: Settings, keys: RecordsPublicKeys, *, tail: int = 256,
                 timeout_s: float = 15.0) -> None:
        self.settings = settings
        self.keys = keys
        self.tail = tail
        self.timeout_s = timeout_s
        self.topic = TopicNames(settings.kafka.topic_prefix).checkpoints
        self.skipped = 0
        self._best: Checkpoint | None = None
        self._consumer: Any = None
        self._wait_ms = 0
        self._lock = asyncio.Lock()

    async def latest(self) -> Checkpoint | None:
        """The highest-numbered validly signed checkpoint published so far (None: none yet, or no topic).

        Raises StackError when the broker does not answer within ``timeout_s``.
        """
        from aiokafka import TopicPartition

        from infra.core.errors import ConfigError
        from infra.platform.kafka import consumer, fetch_wait_ms
        from infra.platform.scans import partitions_of

        async with self._lock:
            if self._consumer is None:
                # Short fetch waits: every read ends at the high watermark, where a held fetch is only latency.
                self._wait_ms = fetch_wait_ms(self.settings.kafka)
                self._consumer = consumer(self.settings, group_id=None, fetch_max_wait_ms=self._wait_ms)
                await self._consumer.start()
            try:
                partitions = await partitions_of(self._consumer, self.topic)
            except ConfigError:
                return self._best  # the layout was not applied: nothing was published
            tps = [TopicPartition(self.topic, p) for p in partitions]  # declared with one; read all there are
            if set(tps) != self._consumer.assignment():
                self._consumer.assign(tps)
                # Where the tail starts: a hint only (end_offsets can be low on the embedded broker; reading a
                # few more records is harmless), then every record up to the fetched high watermark is read.
                ends = await self._consumer.end_offsets(tps)
                for tp in tps:
                    self._consumer.seek(tp, max(0, ends[tp] - self.tail))
            for tp in tps:
                await self._catch_up(tp)
            return self._best

    async def _catch_up(self, tp: Any) -> None:
        import time

        from infra.core.errors import StackError

        wait_ms = 2 * self._wait_ms + 10  # about one fetch round trip at the end of the log
        deadline = time.monotonic() + self.timeout_s
        while True:
            batch = (await self._consumer.getmany(tp, timeout_ms=wait_ms, max_records=500)).get(tp, [])
            for record in batch:
                self._consider(record.value, record.offset)
            high = self._consumer.highwater(tp)
            if not batch and high is not None and await self._consumer.position(tp) >= high:
                return
            if time.monotonic() > deadline:
                raise StackError(f"the checkpoint topic {tp.topic} could not be read to its end in "
                                 f"{self.timeout_s:.0f} s")

    def _consider(self, value: bytes | None, offset: int) -> None:
        try:
            checkpoint = open_checkpoint(value or b"", self.keys)
        except CheckpointError as exc:
            self.skipped += 1
            log.warning("checkpoint topic record at offset %d skipped: %s", offset, exc)
            return
        if self._best is None or checkpoint.number > self._best.number:
            self._best = checkpoint

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> CheckpointLog:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
