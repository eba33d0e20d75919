"""Worker metrics: the Prometheus series a worker keeps, with labels that cannot carry personal data.

Each worker process (hub, registry, banks, DICJ desk, connectors) keeps one
:class:`WorkerMetrics` — one ``prometheus_client`` registry — and serves it with
:class:`MetricsServer` on the configured ``ops_host``/``ops_port`` (settings,
``RENKEI_OPS_HOST``/``RENKEI_OPS_PORT``, ``--ops-host``/``--ops-port``; port 0 =
a free one; faust's own web server stays off):

- ``GET /metrics`` — Prometheus text exposition format 0.0.4 (``prometheus_client``);
- ``GET /health`` — ``{"status": "ok" | "starting" | "failing", ...}``, HTTP
  200 only when ``ok``, with a few headline counts.

Serving them (``/metrics``, ``/health``, the discovery file ``renkei status`` reads) and reading
another worker's is :mod:`infra.platform.metrics_server`.  A worker
kind adds its own metrics with :meth:`WorkerMetrics.register` (the connector
runtime's ``renkei_connector_*``) and figures read on demand with the
server's ``collect`` hook.

Label values never carry personal data or tokens: every label is declared with
the closed set of values it may take (reason codes, the participants of the
platform) or comes from the worker's own configuration and consumer assignment
(group and topic names, partition numbers); anything outside a closed set is
counted as ``OTHER``, and an open label refuses anything but a plain identifier.
The small wrappers below exist for that rule: ``prometheus_client`` itself would
take any string.  Counters and gauges are ``prometheus_client``'s own; histograms
count a whole batch at once and are exposed as its histogram families.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from infra.core.errors import Reason

# No ``*_created`` series: they double every counter and no Renkei dashboard or alert reads them.
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; a batch of 500 takes tens of milliseconds, a database outage holds one for seconds."""

REASON_CODES = frozenset(r.value for r in Reason)
OTHER = "OTHER"
WORKER_LABEL = "worker"
STALL_AFTER_S = 60.0
"""A group with records behind and no batch for this long is ``stalled`` (renkei_consumer_group_stalled)."""

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")

Labels = Mapping[str, Collection[str] | None]
"""Label name -> the closed set of values it may take, or None (internal values: plain identifiers only)."""


class _Metric:
    """One series family with closed label sets, backed by a ``prometheus_client`` metric of its own.

    The metric belongs to no registry: a :class:`WorkerMetrics` exposes it (with the ``worker`` label
    added) once registered, and it counts before that too (a channel adapter used on its own).
    """

    kind = ""

    def __init__(self, name: str, help_text: str, labels: Labels | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help_text
        self.labels = dict(labels or {})
        if WORKER_LABEL in self.labels:
            raise ValueError(f"{name}: the {WORKER_LABEL} label is added by WorkerMetrics")
        self._prom = self._make(tuple(self.labels))

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _key(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        if set(values) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {sorted(self.labels)}, got {sorted(values)}")
        out = []
        for label, allowed in self.labels.items():
            value = str(values[label])
            if allowed is not None and value not in allowed:
                value = OTHER
            elif allowed is None and not _SAFE_VALUE.match(value):
                raise ValueError(f"{self.name}: label {label} value is not a plain identifier")
            out.append(value)
        return tuple(out)

    def _child(self, values: Mapping[str, Any]) -> Any:
        key = self._key(values)
        return self._prom.labels(*key) if key else self._prom

    def families(self, worker: str) -> list[Any]:
        """The ``prometheus_client`` metric families, each sample labelled ``worker`` first."""
        out = []
        for family in self._prom.collect():
            family.samples = [s._replace(labels={WORKER_LABEL: worker, **s.labels}) for s in family.samples]
            out.append(family)
        return out

    def samples(self, suffix: str = "") -> list[tuple[dict[str, str], float]]:
        """``(labels, value)`` of each series named ``name + suffix``."""
        wanted = self.sample_name + suffix
        return [(dict(s.labels), s.value) for family in self._prom.collect() for s in family.samples
                if s.name == wanted]

    @property
    def sample_name(self) -> str:
        return self.name

    def value(self, **labels: Any) -> float:
        key = dict(zip(self.labels, self._key(labels)))
        return next((v for found, v in self.samples() if found == key), 0.0)

    def total(self) -> float:
        return sum(v for _, v in self.samples())


class Counter(_Metric):
    """A value that only goes up (per label combination)."""

    kind = "counter"

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        return prometheus_client.Counter(self.name, self.help, labelnames, registry=None)

    @property
    def sample_name(self) -> str:
        return self.name if self.name.endswith("_total") else f"{self.name}_total"

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        self._child(labels).inc(amount)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        return prometheus_client.Gauge(self.name, self.help, labelnames, registry=None)

    def inc(self, amount: float = 1, **labels: Any) -> None:
        self._child(labels).inc(amount)

    def set(self, value: float, **labels: Any) -> None:
        self._child(labels).set(float(value))

    def clear(self) -> None:
        """Forget every label combination (a gauge refreshed as a whole, e.g. per assigned partition)."""
        if self.labels:
            self._prom.clear()
        else:
            self._prom.set(0)


class Histogram(_Metric):
    """Observations counted into cumulative buckets, exposed as a ``prometheus_client`` histogram family.

    Kept here rather than in ``prometheus_client.Histogram``: a worker records every message of a batch
    at once (``times``), which that class can only do one observation (and one lock) at a time — 11 ms
    for a batch of 500 on the hub, against microseconds here.
    """

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS,
                 labels: Labels | None = None) -> None:
        self.buckets = tuple(sorted(b for b in buckets if not math.isinf(b)))
        self._series: dict[tuple[str, ...], _Buckets] = {}
        self._lock = threading.Lock()
        super().__init__(name, help_text, labels)
        if not self.labels:
            self._series[()] = _Buckets(len(self.buckets))  # an unlabelled series is there from the start

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        return None  # the counts live in self._series

    def observe(self, value: float, times: int = 1, **labels: Any) -> None:
        """Record ``value`` ``times`` times (every message of a batch that finished together)."""
        if times <= 0:
            return
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)  # the first bound >= value; len(buckets) = +Inf
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Buckets(len(self.buckets))
            series.counts[slot] += times
            series.sum += value * times

    def families(self, worker: str) -> list[Any]:
        family = HistogramMetricFamily(self.name, self.help, labels=(WORKER_LABEL, *self.labels))
        with self._lock:
            series = [(key, list(b.counts), b.sum) for key, b in self._series.items()]
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for key, counts, total in series:
            cumulative = list(itertools.accumulate(counts))
            family.add_metric([worker, *key], list(zip(bounds, cumulative)), total)
        return [family]

    def samples(self, suffix: str = "") -> list[tuple[dict[str, str], float]]:
        wanted = self.name + suffix
        return [({k: v for k, v in s.labels.items() if k != WORKER_LABEL}, s.value)
                for family in self.families("") for s in family.samples if s.name == wanted]

    @property
    def count(self) -> int:
        return int(sum(v for _, v in self.samples("_count")))

    @property
    def sum(self) -> float:
        return sum(v for _, v in self.samples("_sum"))

    def total(self) -> float:
        return float(self.count)


class _Buckets:
    """One histogram series: observations per bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * (bounds + 1)
        self.sum = 0.0


M = TypeVar("M", bound=_Metric)


class WorkerMetrics:
    """The metrics every Renkei worker exposes (names in docs/operations.md#metrics-and-health)."""

    def __init__(self, worker: str, group: str = "", stall_after_s: float = STALL_AFTER_S) -> None:
        if not _SAFE_VALUE.match(worker):
            raise ValueError("worker name must be a plain identifier")
        self.worker = worker
        self.group = group
        """The worker's consumer group (renkei_consumer_group_*); set by the worker before its first batch."""
        self.stall_after_s = stall_after_s
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        self.participants: set[str] = set()
        """The platform's participant ids: the closed set of the ``participant`` label (:meth:`know_participants`)."""
        self._last_batch = time.monotonic()
        reason = {"reason": REASON_CODES}
        tp = {"topic": None, "partition": None}
        who = {"participant": self.participants}
        self.messages_in = Counter("renkei_messages_in_total", "Records consumed and processed")
        self.messages_out = Counter("renkei_messages_out_total",
                                    "Messages produced onward (hub: to inboxes; participant: replies relayed)")
        self.rejected = Counter("renkei_messages_rejected_total",
                                "Messages dead-lettered, by reason code", labels=reason)
        self.duplicates = Counter("renkei_messages_duplicate_total",
                                  "Messages whose id was processed before (redelivery, replay, rewind): no effect")
        self.batch_seconds = Histogram("renkei_batch_duration_seconds", "Wall time of one batch step")
        self.message_seconds = Histogram("renkei_message_duration_seconds",
                                         "Per message: from the batch reaching the worker to its effect committed")
        self.participant_messages = Counter(
            "renkei_participant_messages_total",
            "Hub: messages by verified participant, in (sent by it, accepted) and out (forwarded to its inbox)",
            labels={**who, "direction": frozenset({"in", "out"})})
        self.participant_seconds = Histogram(
            "renkei_participant_message_duration_seconds",
            "Hub: per accepted message, from its batch reaching the hub to its forward, by sending participant",
            labels=who)
        self.lag = Gauge("renkei_consumer_lag", "Records behind the fetch high watermark, per assigned partition",
                         labels=tp)
        self.group_lag = Gauge("renkei_consumer_group_lag",
                               "Records behind the fetch high watermark, summed over this worker's partitions",
                               labels={"group": None})
        self.group_stalled = Gauge(
            "renkei_consumer_group_stalled",
            f"1 when the group has records behind and this worker finished no batch for {stall_after_s:g} s, else 0",
            labels={"group": None})
        self.provision_write_seconds = Histogram(
            "renkei_provision_write_seconds",
            "Hub: the PostgreSQL transaction that claims a batch and appends its provision records (with retries)")
        self.provision_records = Counter("renkei_provision_records_total", "Hub: provision records written")
        self.directory_entries = Gauge("renkei_key_directory_entries", "Keys in this worker's key directory")
        self.directory_version = Gauge(
            "renkei_key_directory_version",
            "Sum of the versions of every key-directory entry held: equal on workers holding the same directory, "
            "one higher or more with each change applied")
        self.directory_updates = Counter("renkei_key_directory_updates_total",
                                         "Key directory records applied after start (rotation, revocation)")
        self.directory_skipped = Counter(
            "renkei_key_directory_skipped_total",
            "Keys-topic records skipped since start (junk, bad or unknown root signature, older version, "
            "bare tombstone), by reason", labels={"reason": _directory_skip_reasons()})
        self.start_time = Gauge("renkei_start_time_seconds", "When the worker started (Unix time)")
        self._extra: list[_Metric] = []
        self._directory: Any = None
        self.start_time.set(self.started)
        self.registry.register(_WorkerCollector(self))

    def know_participants(self, ids: Iterable[str]) -> None:
        """Allow these participant ids as ``participant`` label values (others count as OTHER)."""
        self.participants.update(i for i in ids if _SAFE_VALUE.match(i))

    def watch_directory(self, directory: Any) -> None:
        """Read the key directory's size and skipped records (``infra.crypto.keys.KeyDirectory``) at each scrape."""
        self._directory = directory

    def _sync_directory(self) -> None:
        directory = self._directory
        self.directory_entries.set(len(directory))
        self.directory_version.set(directory_version(directory))
        for reason, count in directory.skipped.items():
            missing = count - self.directory_skipped.value(reason=reason)
            if missing > 0:
                self.directory_skipped.inc(missing, reason=reason)

    def _sync_group(self) -> None:
        if not self.group:
            return
        behind = self.lag.total()
        self.group_lag.set(behind, group=self.group)
        idle = time.monotonic() - self._last_batch
        self.group_stalled.set(1 if behind > 0 and idle >= self.stall_after_s else 0, group=self.group)

    def register(self, metric: M) -> M:
        """Add a metric of this worker's own kind (e.g. the connector runtime's); rendered after the common ones."""
        if any(m.name == metric.name for m in self.all()):
            raise ValueError(f"metric {metric.name} is already registered")
        self._extra.append(metric)
        return metric

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)] + self._extra

    # -- what the workers call -----------------------------------------------------------------
    def batch_done(self, received: int, started: float, per_message_done: Iterable[float] | None = None) -> None:
        """One batch of ``received`` records, begun at ``started`` (monotonic).

        ``per_message_done`` gives each message's completion time (sequential processing); without
        it every message finished with the batch.
        """
        now = time.monotonic()
        self._last_batch = now
        self.messages_in.inc(received)
        self.batch_seconds.observe(now - started)
        if per_message_done is None:
            self.message_seconds.observe(now - started, received)
        else:
            for done in per_message_done:
                self.message_seconds.observe(done - started)

    def by_participant(self, senders: Mapping[str, int], recipients: Mapping[str, int], started: float) -> None:
        """Hub: one batch's accepted messages by verified sender and forwards by recipient, begun at ``started``."""
        seconds = time.monotonic() - started
        for sender, n in senders.items():
            self.participant_messages.inc(n, participant=sender, direction="in")
            self.participant_seconds.observe(seconds, n, participant=sender)
        for recipient, n in recipients.items():
            self.participant_messages.inc(n, participant=recipient, direction="out")

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected.inc(count, reason=reason)

    def set_lag(self, topic: str, partition: int, lag: int | None) -> None:
        if lag is not None:
            self.lag.set(max(0, lag), topic=topic, partition=partition)

    def record_lag(self, consumer: Any, last_offsets: dict[Any, int]) -> None:
        """Lag per partition after processing up to ``last_offsets`` (tp -> offset), from the fetch
        high watermark (``consumer.highwater``, aiokafka or faust; ``end_offsets`` is wrong on Tansu)."""
        for tp, offset in last_offsets.items():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not assigned any more (rebalance): no figure rather than a failed batch
                continue
            if high is not None:
                self.set_lag(tp.topic, tp.partition, high - offset - 1)

    def render(self) -> str:
        if self._directory is not None:
            self._sync_directory()
        self._sync_group()
        return generate_latest(self.registry).decode()

    def headline(self) -> dict[str, Any]:
        return {"processed": int(self.messages_in.total()), "out": int(self.messages_out.total()),
                "rejected": int(self.rejected.total()), "duplicates": int(self.duplicates.total()),
                "lag": int(self.lag.total())}


class _WorkerCollector(Collector):
    """Exposes a worker's metrics in its registry, each sample labelled with the worker's name."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        for metric in self.metrics.all():
            yield from metric.families(self.metrics.worker)


def directory_version(directory: Any) -> int:
    """The key directory's version figure: the sum of its entries' and participant statuses' versions."""
    return sum(e.version for e in directory.entries()) + sum(s.version for s in directory.statuses())


def _directory_skip_reasons() -> frozenset[str]:
    from infra.crypto.keys import SKIP_REASONS

    return SKIP_REASONS
