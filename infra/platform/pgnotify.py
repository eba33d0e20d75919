"""Wake-ups at a PostgreSQL commit: LISTEN/NOTIFY, for work that a caller's transaction makes visible.

A row written in somebody else's transaction (an outbox row stored by ``ParticipantRuntime.send(...,
conn=)``: the agency connector's publish, DICJ's sweeps, the bank simulator's delayed answers) can be
seen only once that transaction commits, and the writer's code does not say when that is. A wake-up
sent at the write would come too early: the reader finds nothing and waits for its timer. A
:func:`notify` in the same transaction is delivered by PostgreSQL at the commit — and never if the
transaction rolls back — to every session that listens on the channel: a :class:`Listener`'s callback
runs as soon as the row is there, in this process or any other.

A notification is a hint, not a queue: a listener that was disconnected misses what was sent
meanwhile, so it calls back once more (payload ``None``) when it is connected again, and the reader
keeps a slow timer of its own as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from infra.core.retry import Backoff

__all__ = ["Listener", "notify"]

log = logging.getLogger("renkei.pgnotify")
RECONNECT = Backoff(base_s=0.5, cap_s=10.0)


async def notify(conn: asyncpg.Connection, channel: str, payload: str) -> None:
    """Notify ``channel``'s listeners with ``payload`` when ``conn``'s transaction commits (at once outside one)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


class Listener:
    """A connection of its own that LISTENs on ``channel``; ``on_notify(payload)`` for each notification.

    ``on_notify(None)`` after every reconnection (what was sent while it was away is not delivered).
    An async context manager; :meth:`start` raises if PostgreSQL cannot be reached, later losses are
    retried in the background for as long as it runs.
    """

    def __init__(self, dsn: str, channel: str, on_notify: Callable[[str | None], None]) -> None:
        self.dsn = dsn
        self.channel = channel
        self.on_notify = on_notify
        self._conn: asyncpg.Connection | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._conn = await self._listen()

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.add_listener(self.channel, self._received)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._lost)
        return conn

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_notify(payload)

    def _lost(self, _conn: Any) -> None:
        if not self._stopping and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._connect_again(), name="pg-listen")

    async def _connect_again(self) -> None:
        attempt = 0
        while not self._stopping:
            attempt += 1
            await asyncio.sleep(RECONNECT.delay(attempt))
            try:
                self._conn = await self._listen()
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                log.warning("listening on %s again failed (%s); retrying", self.channel, type(exc).__name__)
                continue
            self.on_notify(None)  # whatever was notified while away
            return

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
