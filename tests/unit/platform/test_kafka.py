"""Client settings that lean on aiokafka's internals: fail here, not silently, if an upgrade moves them."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from aiokafka.consumer import fetcher

from infra.platform.kafka import WHOLE_ASSIGNMENT_BACKOFF_S, fetch_whole_assignment


def test_whole_assignment_fetches_set_the_fetchers_prefetch_backoff_far_beyond_any_batch():
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_prefetch_backoff=0.1))
    fetch_whole_assignment(consumer)  # type: ignore[arg-type]
    assert consumer._fetcher._prefetch_backoff == WHOLE_ASSIGNMENT_BACKOFF_S >= 600


def test_aiokafkas_fetcher_still_gives_buffered_records_the_backoff_it_reads_from_that_attribute():
    source = inspect.getsource(fetcher.Fetcher)
    assert "self._prefetch_backoff = prefetch_backoff" in source
    assert source.count("backoff=self._prefetch_backoff") >= 1  # each FetchResult takes it when made
    # ... and a node with a partition still in its backoff gets no fetch (the partition is not left out)
    assert "if node_id in backoff_by_nodes:" in source
