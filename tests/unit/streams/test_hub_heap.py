"""The hub worker's start-up leaves the collector a small heap and a young generation larger than a batch
(``streams.hub.settle_heap``, called by ``start_hub``; docs/performance.md, "Issue 18, session 8")."""

from __future__ import annotations

import gc
import weakref

from streams.hub import GC_YOUNG_THRESHOLD, settle_heap


class _Node:
    pass


def test_settle_heap_freezes_what_exists_and_still_collects_cycles_made_later():
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0  # the start-up objects are out of every later collection
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert gc.isenabled()
        node = _Node()
        node.me = node  # a cycle made after start-up: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
