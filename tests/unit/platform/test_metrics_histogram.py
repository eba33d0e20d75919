"""The batch histogram: a batch recorded at once reads exactly as the same observations made one by one."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from infra.platform.metrics import Histogram, WorkerMetrics


def buckets(m: WorkerMetrics, name: str) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value for f in text_string_to_metric_families(m.render())
            if f.name == name for s in f.samples}


def test_times_at_once_equals_one_by_one_and_buckets_are_cumulative():
    at_once, one_by_one = WorkerMetrics("hub"), WorkerMetrics("hub")
    for m in (at_once, one_by_one):
        m.register(Histogram("renkei_test_seconds", "test", labels={"kind": frozenset({"a", "b"})}))
    h1, h2 = at_once.all()[-1], one_by_one.all()[-1]
    for value, times, kind in ((0.0005, 3, "a"), (0.001, 2, "a"), (0.3, 5, "b"), (99.0, 1, "a"), (0.0, 0, "b")):
        h1.observe(value, times, kind=kind)
        for _ in range(times):
            h2.observe(value, kind=kind)
    assert buckets(at_once, "renkei_test_seconds") == buckets(one_by_one, "renkei_test_seconds")
    samples = buckets(at_once, "renkei_test_seconds")
    a = [v for k, v in samples.items() if k.startswith("renkei_test_seconds_bucket") and "'a'" in k]
    assert a == sorted(a) and a[-1] == 6  # cumulative, +Inf last: 3 + 2 + 1
    assert samples["renkei_test_seconds_bucket[('kind', 'a'), ('le', '0.001'), ('worker', 'hub')]"] == 5  # le is <=
    assert samples["renkei_test_seconds_count[('kind', 'b'), ('worker', 'hub')]"] == 5
    assert abs(samples["renkei_test_seconds_sum[('kind', 'a'), ('worker', 'hub')]"] - (0.0015 + 0.002 + 99.0)) < 1e-9
    assert h1.count == 11 and abs(h1.sum - (0.0015 + 0.002 + 1.5 + 99.0)) < 1e-9


def test_an_unlabelled_histogram_is_exposed_at_zero_from_the_start():
    m = WorkerMetrics("registry")
    text = m.render()
    assert 'renkei_batch_duration_seconds_count{worker="registry"} 0.0' in text
    assert 'renkei_batch_duration_seconds_bucket{le="+Inf",worker="registry"} 0.0' in text
