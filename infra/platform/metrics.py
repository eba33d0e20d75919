"""Worker metrics and health over HTTP: Prometheus text, a JSON health check, a discovery file.

Each worker process (hub, registry, banks) keeps one :class:`WorkerMetrics`
and serves it with :class:`MetricsServer` on a loopback port chosen free at
start (faust's own web server stays off):

- ``GET /metrics`` — Prometheus text exposition format 0.0.4;
- ``GET /health`` — ``{"status": "ok" | "starting" | "failing", ...}``, HTTP
  200 only when ``ok``, with a few headline counts.

The server writes ``<state>/workers/<pid>.json`` (worker name, pid, URLs) so
``renkei status`` finds it; the file goes when the server stops.  A worker
kind adds its own metrics with :meth:`WorkerMetrics.register` (the connector
runtime's ``renkei_connector_*``) and figures read on demand with the
server's ``collect`` hook.

Label values never carry personal data or tokens: every label is declared with
the closed set of values it may take (reason codes) or comes from the worker's
own consumer assignment (topic names, partition numbers); anything outside a
closed set is counted as ``OTHER``.  Written by hand, no dependency: the format
is small and stable.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from infra.core.errors import Reason

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; a batch of 500 takes tens of milliseconds, a database outage holds one for seconds."""

REASON_CODES = frozenset(r.value for r in Reason)
OTHER = "OTHER"
WORKERS_DIR = "workers"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: dict[str, frozenset[str] | None] | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help_text
        self.labels = dict(labels or {})  # label name -> closed set of values, or None (internal values)

    def _key(self, values: dict[str, Any]) -> tuple[str, ...]:
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

    def _label_text(self, key: tuple[str, ...], const: str, extra: str = "") -> str:
        parts = [const] if const else []
        parts += [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self, const: str) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A value that only goes up (per label combination)."""

    kind = "counter"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._values: dict[tuple[str, ...], float] = {} if self.labels else {(): 0.0}

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def render(self, const: str) -> list[str]:
        lines = super().render(const)
        for key, v in sorted(self._values.items()):
            lines.append(f"{self.name}{self._label_text(key, const)} {_fmt(v)}")
        return lines


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        self._values[self._key(labels)] = float(value)

    def clear(self) -> None:
        """Forget every label combination (a gauge refreshed as a whole, e.g. per assigned partition)."""
        self._values = {} if self.labels else {(): 0.0}


class Histogram(_Metric):
    """Observations counted into cumulative buckets (no labels: one per worker is what ops read)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` ``times`` times (every message of a batch that finished together)."""
        if times <= 0:
            return
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self._counts[i] += times
        self.count += times
        self.sum += value * times

    def render(self, const: str) -> list[str]:
        lines = super().render(const)
        for bound, n in zip(self.buckets, self._counts):
            le = 'le="' + _fmt(bound) + '"'
            lines.append(f"{self.name}_bucket{self._label_text((), const, le)} {n}")
        inf = 'le="+Inf"'
        lines.append(f"{self.name}_bucket{self._label_text((), const, inf)} {self.count}")
        lines.append(f"{self.name}_sum{self._label_text((), const)} {_fmt(self.sum)}")
        lines.append(f"{self.name}_count{self._label_text((), const)} {self.count}")
        return lines


M = TypeVar("M", bound=_Metric)


class WorkerMetrics:
    """The metrics every Renkei worker exposes (names in docs/operations.md#metrics-and-health)."""

    def __init__(self, worker: str) -> None:
        if not _SAFE_VALUE.match(worker):
            raise ValueError("worker name must be a plain identifier")
        self.worker = worker
        self.started = time.time()
        reason = {"reason": REASON_CODES}
        tp = {"topic": None, "partition": None}
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
        self.lag = Gauge("renkei_consumer_lag", "Records behind the fetch high watermark, per assigned partition",
                         labels=tp)
        self.provision_write_seconds = Histogram(
            "renkei_provision_write_seconds",
            "Hub: the PostgreSQL transaction that claims a batch and appends its provision records (with retries)")
        self.provision_records = Counter("renkei_provision_records_total", "Hub: provision records written")
        self.directory_entries = Gauge("renkei_key_directory_entries", "Keys in this worker's key directory")
        self.directory_updates = Counter("renkei_key_directory_updates_total",
                                         "Key directory records applied after start (rotation, revocation)")
        self.directory_skipped = Counter(
            "renkei_key_directory_skipped_total",
            "Keys-topic records skipped since start (junk, bad or unknown root signature, older version, "
            "bare tombstone), by reason", labels={"reason": _directory_skip_reasons()})
        self.start_time = Gauge("renkei_start_time_seconds", "When the worker started (Unix time)")
        self.start_time.set(self.started)
        self._extra: list[_Metric] = []
        self._directory: Any = None

    def watch_directory(self, directory: Any) -> None:
        """Read the key directory's size and skipped records (``infra.crypto.keys.KeyDirectory``) at each scrape."""
        self._directory = directory

    def _sync_directory(self) -> None:
        directory = self._directory
        self.directory_entries.set(len(directory))
        for reason, count in directory.skipped.items():
            missing = count - self.directory_skipped.value(reason=reason)
            if missing > 0:
                self.directory_skipped.inc(missing, reason=reason)

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
        self.messages_in.inc(received)
        self.batch_seconds.observe(now - started)
        if per_message_done is None:
            self.message_seconds.observe(now - started, received)
        else:
            for done in per_message_done:
                self.message_seconds.observe(done - started)

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
        const = f'worker="{self.worker}"'
        lines: list[str] = []
        for metric in self.all():
            lines += metric.render(const)
        return "\n".join(lines) + "\n"

    def headline(self) -> dict[str, Any]:
        return {"processed": int(self.messages_in.total()), "out": int(self.messages_out.total()),
                "rejected": int(self.rejected.total()), "duplicates": int(self.duplicates.total()),
                "lag": int(self.lag.total())}


def _directory_skip_reasons() -> frozenset[str]:
    from infra.crypto.keys import SKIP_REASONS

    return SKIP_REASONS


# --------------------------------------------------------------------------- the HTTP side


Health = Callable[[], tuple[str, str]]
"""Returns ``(status, detail)``: status ``ok``, ``starting`` or ``failing``; detail safe to show."""


@dataclass(frozen=True)
class WorkerEndpoint:
    """What ``<state>/workers/<pid>.json`` says about one running worker."""

    worker: str
    pid: int
    endpoint: str

    @property
    def metrics(self) -> str:
        return f"{self.endpoint}/metrics"

    @property
    def health(self) -> str:
        return f"{self.endpoint}/health"

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "pid": self.pid, "endpoint": self.endpoint, "metrics": self.metrics,
                "health": self.health}


def workers_dir(state_dir: Path) -> Path:
    return Path(state_dir) / WORKERS_DIR


class MetricsServer:
    """A small aiohttp site on loopback serving ``/metrics`` and ``/health``; an async context manager.

    ``collect`` (optional, async) runs before each answer to refresh what is read on demand (the
    connector runtime's backlog gauges come from its database); if it raises, ``/health`` says
    ``failing``.  ``details`` (optional) adds fields to the ``/health`` report.  :meth:`routes` serves
    the same two endpoints on another aiohttp app (a connector's own API server).
    """

    def __init__(self, metrics: WorkerMetrics, health: Health, *, state_dir: Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, collect: Callable[[], Awaitable[None]] | None = None,
                 details: Callable[[], dict[str, Any]] | None = None) -> None:
        self.metrics = metrics
        self.health = health
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.collect = collect
        self.details = details
        self.endpoint = ""
        self._runner: Any = None
        self._file: Path | None = None
        self._collect_error: str | None = None

    async def start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.endpoint = f"http://{self.host}:{port}"
        if self.state_dir is not None:
            self._file = write_endpoint(self.state_dir, WorkerEndpoint(self.metrics.worker, os.getpid(), self.endpoint))
            atexit.register(self._file.unlink, missing_ok=True)  # faust workers exit without a stop hook
        return self.endpoint

    async def stop(self) -> None:
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            _CLAIMED.discard(self._file)
            self._file = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def routes(self) -> list[Any]:
        from aiohttp import web

        return [web.get("/metrics", self._metrics), web.get("/health", self._health)]

    async def refresh(self) -> None:
        """Run ``collect``; a failure is remembered for the health report, never raised."""
        if self.collect is None:
            return
        try:
            await self.collect()
            self._collect_error = None
        except Exception as exc:  # database away: the report says so, the scrape still answers
            self._collect_error = type(exc).__name__

    def health_report(self) -> dict[str, Any]:
        try:
            status, detail = self.health()
        except Exception as exc:  # a broken check is a failing worker, not a 500 without a body
            status, detail = "failing", f"health check raised {type(exc).__name__}"
        if self._collect_error is not None and status == "ok":
            status, detail = "failing", f"collecting figures failed ({self._collect_error})"
        report = {"status": status, "detail": detail, "worker": self.metrics.worker, "pid": os.getpid(),
                  "uptime_s": round(time.time() - self.metrics.started, 1), **self.metrics.headline()}
        if self.details is not None:
            report.update({k: v for k, v in self.details().items() if k not in report})
        return report

    async def report(self) -> dict[str, Any]:
        """Refresh, then the ``/health`` report."""
        await self.refresh()
        return self.health_report()

    async def render(self) -> str:
        """Refresh, then the ``/metrics`` text."""
        await self.refresh()
        return self.metrics.render()

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text=await self.render(), content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"}, charset="utf-8")

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        report = await self.report()
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)


_CLAIMED: set[Path] = set()
"""Discovery files written by this process's servers (a process may run more than one)."""


def write_endpoint(state_dir: Path, endpoint: WorkerEndpoint) -> Path:
    """Write ``<state>/workers/<pid>.json``; a second server of the same process writes ``<pid>-<n>.json``."""
    folder = workers_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{endpoint.pid}.json"
    n = 1
    while path in _CLAIMED:
        n += 1
        path = folder / f"{endpoint.pid}-{n}.json"
    _CLAIMED.add(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoint.to_json()))
    tmp.replace(path)
    return path


def read_endpoint(state_dir: Path, pid: int) -> WorkerEndpoint | None:
    """The endpoint the worker with ``pid`` wrote, if it wrote one."""
    try:
        data = json.loads((workers_dir(state_dir) / f"{pid}.json").read_text())
        return WorkerEndpoint(str(data["worker"]), int(data["pid"]), str(data["endpoint"]))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def other_endpoints(state_dir: Path, known_pids: set[int], prefix: str = "") -> list[WorkerEndpoint]:
    """Live processes with a discovery file that the stack did not start (connectors run with
    ``renkei … serve``, say) and a worker name starting with ``prefix``, one per process, by pid; files
    of processes that are gone are skipped."""
    from infra.platform.embedded import process_alive

    found: dict[int, WorkerEndpoint] = {}
    folder = workers_dir(state_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            endpoint = WorkerEndpoint(str(data["worker"]), int(data["pid"]), str(data["endpoint"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if (not endpoint.worker.startswith(prefix) or endpoint.pid in known_pids or endpoint.pid in found
                or not process_alive(endpoint.pid)):
            continue
        found[endpoint.pid] = endpoint
    return list(found.values())


async def fetch_health(endpoint: WorkerEndpoint, timeout: float = 2.0) -> dict[str, Any]:
    """The worker's ``/health`` report, or ``{"status": "unreachable"}``."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(endpoint.health) as response:
                return await response.json()
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return {"status": "unreachable", "detail": type(exc).__name__}


async def fetch_metrics(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Scrape ``url`` into ``{"name{labels}": value}`` (tests and quick looks; not a full parser)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            return parse_text(await response.text())


def parse_text(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


async def add_worker_health(state_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Extend ``renkei status`` rows (name, pid, alive, endpoint) with each worker's metrics URL and health.

    Adds ``metrics``, ``health`` (ok | starting | failing | unreachable | down), ``processed`` and
    ``rejected``; ``None`` for components that serve no metrics (the broker, PostgreSQL).  A row whose
    endpoint is empty gets the worker's HTTP endpoint.
    """
    import asyncio

    async def one(row: dict[str, Any]) -> None:
        row.update(metrics=None, health=None, processed=None, rejected=None)
        found = read_endpoint(state_dir, int(row["pid"]))
        if found is None:
            return
        row["endpoint"] = row.get("endpoint") or found.endpoint
        row["metrics"] = found.metrics
        report = await fetch_health(found) if row.get("alive") else {"status": "down"}
        row.update(health=report.get("status"), processed=report.get("processed"), rejected=report.get("rejected"))

    await asyncio.gather(*(one(r) for r in rows))
    return rows
