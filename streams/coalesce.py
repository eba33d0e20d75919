"""Group commit for a participant's sends: concurrent sends of one sender, stored together.

A client (the agency client of ``streams.client``, the portal) calls
``ParticipantRuntime.send`` once per request; alone, each call is one PostgreSQL
transaction and one Ed25519 batch signature over a single message. Under load the
calls overlap: while one store is in flight, the ones that arrive queue, and the
next store takes all of them — one transaction, one signature (``Sealer.seal_batch``)
for the lot. A lone call is stored at once (nothing waits to be joined), so
coalescing adds no latency.

A failing batch is redone one caller at a time, so one caller's bad message (a
recipient without a key, say) fails that caller only. Each caller gets back the
results of its own items, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

__all__ = ["SendCoalescer"]


@dataclass
class _Queued(Generic[Item, Result]):
    items: list[Item]
    result: asyncio.Future[list[Result]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SendCoalescer(Generic[Item, Result]):
    """Coalesces concurrent :meth:`submit` calls into calls of ``store`` (one result per item, in order)."""

    def __init__(self, store: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._store = store
        self._queued: list[_Queued[Item, Result]] = []
        self._turn = asyncio.Lock()  # one store at a time: the queue grows behind it
        self._running: set[asyncio.Task[Any]] = set()
        self.stores = 0  # calls of ``store`` (batches), for the metrics and the tests

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        mine: _Queued[Item, Result] = _Queued(list(items))
        self._queued.append(mine)
        try:
            async with self._turn:
                if not mine.result.done() and self._queued:
                    batch, self._queued = self._queued, []
                    task = asyncio.ensure_future(self._store_batch(batch))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                    # Shielded: a caller that gives up (a request's timeout) does not cancel the others' store.
                    await asyncio.shield(task)
            return await mine.result
        except asyncio.CancelledError:
            if mine in self._queued:  # not taken yet: it is not sent at all
                self._queued.remove(mine)
            mine.result.cancel()  # taken: it is stored all the same, nobody waits for its ids
            raise

    async def _store_batch(self, batch: list[_Queued[Item, Result]]) -> None:
        try:
            results = await self._call([i for q in batch for i in q.items])
        except asyncio.CancelledError:
            for q in batch:
                q.result.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            for q in batch:  # whose item failed it? each caller alone: the others still go out
                try:
                    _settle(q, await self._call(q.items))
                except Exception as alone:
                    _settle(q, error=alone)
            return
        start = 0
        for q in batch:
            _settle(q, results[start:start + len(q.items)])
            start += len(q.items)

    async def _call(self, items: list[Item]) -> list[Result]:
        self.stores += 1
        results = await self._store(items)
        if len(results) != len(items):
            raise RuntimeError(f"store returned {len(results)} results for {len(items)} items")
        return results


def _settle(queued: _Queued[Any, Any], results: list[Any] | None = None, *, error: BaseException | None = None) -> None:
    if queued.result.done():  # its caller was cancelled meanwhile
        return
    if error is not None:
        queued.result.set_exception(error)
    else:
        queued.result.set_result(results)
