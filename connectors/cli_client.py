"""Bus clients for one command-line request (``renkei portal|agency|bank|dicj …``, see connectors.commands).

:class:`CommandClient` sends as a participant and waits for the answer, like
:class:`streams.client.BusClient`, but it only *listens* to the identity's
inbox; it does not consume it:

- a group-less consumer (partitions assigned, nothing committed, no group to
  join: no JoinGroup wait on the embedded broker) starts at each inbox
  partition's high watermark, read from a fetch response *before* anything is
  sent, so the answer cannot be missed;
- each record's routing fields are peeked at, and only an answer somebody is
  waiting for (same identity and correlation id) is opened — verified and
  decrypted — and handed over;
- it claims nothing in ``processed_messages`` and makes no effect.

A BusClient in a consumer group of its own would claim every message of the
identity's inbox in the participant's database: a long-running connector of
the same participant (the portal connector, an agency connector) on that
database would then find the answers to ITS requests already claimed and
skip their effects.  Two commands run at once cannot take each other's answers
either (a shared group would give the single inbox partition to one of them).

Without a group join, a command does not wait for the embedded broker's
JoinGroup (about 5 s, more right after the previous member left).  A hub
rejection notice answering a request raises :class:`Refused` with the reason
code.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from infra.core.errors import Rejection
from infra.core.retry import Backoff
from infra.core.settings import Settings
from infra.crypto.envelope import Opened, peek
from schemas import types as msg
from streams.client import BusClient
from streams.participant import Identity

log = logging.getLogger("renkei.cli")


class Refused(Exception):
    """The hub refused a request (a ``rejection.notice``): a stable reason code and a safe message."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class RaisesRefusals:
    """Mixin for a BusClient: ``request`` raises :class:`Refused` when the answer is a rejection notice."""

    async def request(self, sender: str, **kw: Any) -> Opened:
        answer: Opened = await super().request(sender, **kw)  # type: ignore[misc]
        if answer.meta.type == msg.REJECTION_NOTICE:
            raise Refused(answer.body["reason_code"], answer.body["message"], answer.meta.correlation_id)
        return answer


class Listening(RaisesRefusals):
    """Mixin for a BusClient: read the identities' inboxes from their high watermarks, without a consumer group,
    and hand awaited answers to their waiters: claim nothing, make no effect."""

    runtime: Any
    since: dict[str, int] | None = None
    """Where to start reading, ``{"topic:partition": offset}`` (a resumed batch rereads its inbox from where
    its first run started, so answers that arrived while no process listened are found); None: the ends."""
    inbox_offsets: dict[str, int]
    """Where the listener started, in the same form (what a batch stores to be resumed from)."""

    async def __aenter__(self) -> Any:
        await self.runtime.start(consume=False)
        self._consumer: Any = None
        self._listener: asyncio.Task[None] | None = None
        try:
            await self._start_listening()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        await self.runtime.stop()

    async def _start_listening(self) -> None:
        from aiokafka import TopicPartition

        from infra.ops import high_watermarks, partitions_of
        from infra.platform.kafka import consumer, fetch_wait_ms

        settings = self.runtime.settings
        self._consumer = consumer(settings, group_id=None,
                                  fetch_max_wait_ms=fetch_wait_ms(settings.kafka, len(self.runtime.by_inbox)))
        await self._consumer.start()
        tps = [TopicPartition(topic, p) for topic in self.runtime.by_inbox
               for p in await partitions_of(self._consumer, topic)]
        # Start at the ends (end_offsets on Apache Kafka; on Tansu, from a fetch response).
        ends = await high_watermarks(self._consumer, tps, kafka=settings.kafka)
        starts = {tp: min(offset, (self.since or {}).get(f"{tp.topic}:{tp.partition}", offset))
                  for tp, offset in ends.items()}
        self.inbox_offsets = {f"{tp.topic}:{tp.partition}": offset for tp, offset in starts.items()}
        self._consumer.assign(tps)
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)
        self._listener = asyncio.create_task(self._listen(), name="cli-listener")

    async def _listen(self) -> None:
        backoff, failures = Backoff(), 0
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: the request's own timeout decides
                failures += 1
                delay = backoff.delay(failures)
                log.warning("inbox listener: fetch failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            for tp, records in batches.items():
                ident = self.runtime.by_inbox[tp.topic]
                for record in records:
                    self._offer(ident, record.value)

    def _offer(self, ident: Identity, value: bytes) -> None:
        """Hand an awaited answer to its waiter; anything else is left alone (never claimed, never opened)."""
        try:
            meta = peek(value)
        except Exception:
            return
        waiter = self.runtime.waiters.get((ident.participant_id, meta.correlation_id))
        if waiter is None or waiter.done():
            return
        try:
            opened = ident.opener.receive(value)
        except Rejection as exc:  # forged, expired or not for us: keep waiting for the real answer
            log.warning("%s: a message answering request %s did not open: %s", ident.participant_id,
                        meta.correlation_id, exc.code)
            return
        waiter.set_result(opened)


class CommandClient(Listening, BusClient):
    """Participant identities for one command: send, await the answer; listen without consuming (module docstring)."""

    def __init__(self, settings: Settings, identities: list[str], *, since: dict[str, int] | None = None) -> None:
        self.since = since
        # The group is never joined (the runtime does not consume); it only names the runtime's tasks.
        super().__init__(settings, identities, group=f"{settings.kafka.topic_prefix}.cli")
