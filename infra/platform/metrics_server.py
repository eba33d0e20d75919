"""Worker metrics and health over HTTP: serving ``/metrics`` and ``/health``, the discovery file, scraping.

:class:`MetricsServer` serves one worker's :class:`~infra.platform.metrics.WorkerMetrics` on the configured
``ops_host``/``ops_port``:

- ``GET /metrics`` — Prometheus text exposition format 0.0.4 (``prometheus_client``);
- ``GET /health`` — ``{"status": "ok" | "starting" | "failing", ...}``, HTTP
  200 only when ``ok``, with a few headline counts.

The server writes ``<state>/workers/<pid>.json`` (worker name, pid, URLs) so
``renkei status`` finds it; the file goes when the server stops.  The readers
(:func:`read_endpoint`, :func:`fetch_health`, :func:`fetch_metrics`, :func:`parse_text`) are what
``renkei status``, the ops page and the tests use to look at a running worker.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.platform.metrics import WorkerMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes for Renkei's names (all legacy-charset); newer prometheus_client versions
announce ``version=1.0.0``, which scrapers older than Prometheus 3 do not know."""

WORKERS_DIR = "workers"

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

        return web.Response(body=(await self.render()).encode(),
                            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})

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


async def fetch_metrics(url: str, timeout: float = 2.0) -> Samples:
    """Scrape ``url`` into ``{"name{labels}": value}`` (tests and quick looks; not a full parser)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            return parse_text(await response.text())


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def series_key(series: str) -> str:
    """``name{labels}`` with its labels sorted by name: one spelling whatever order they were written in."""
    name, brace, rest = series.partition("{")
    if not brace:
        return name
    labels = sorted((k, _bound(v) if k == "le" else v) for k, v in _LABEL.findall(rest))
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _bound(value: str) -> str:
    """A bucket bound in one spelling (``30`` and ``30.0`` are the same bucket)."""
    try:
        return repr(float(value)) if value != "+Inf" else value
    except ValueError:
        return value


class Samples(dict[str, float]):
    """Scraped series by ``name{labels}``; a look-up may write the labels in any order."""

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(series_key(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(series_key(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(series_key(key), default)


def parse_text(text: str) -> Samples:
    """A scrape's samples (tests and quick looks; comments skipped, no timestamps in Renkei's exposition)."""
    out = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        dict.__setitem__(out, series_key(name), float(value))
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
