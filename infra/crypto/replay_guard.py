"""The replay guard: remembers message ids so an envelope opens once (``Verifier.verify``, ``Opener.open``).

The protocol is all the primitives need; the hub and the participants pass a PostgreSQL-backed guard
(the claim in the effect's transaction), tools and tests the in-memory one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

__all__ = ["MemoryReplayGuard", "ReplayGuard"]


class ReplayGuard(Protocol):
    def check_and_remember(self, message_id: str) -> bool:
        """True if ``message_id`` is new (and now remembered); False if seen before."""
        ...


class MemoryReplayGuard:
    """In-process replay guard: the last ``max_entries`` message ids (LRU).

    Size it for the message rate times ``MAX_TTL_S``; an id evicted earlier than
    its message expires could be replayed. The hub uses a PostgreSQL guard.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries

    def check_and_remember(self, message_id: str) -> bool:
        if message_id in self._seen:
            self._seen.move_to_end(message_id)
            return False
        self._seen[message_id] = None
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)
