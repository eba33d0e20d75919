"""Prometheus scrape targets from a state folder: file-based service discovery for ``renkei ops targets``.

Every worker that serves ``/metrics`` writes ``<state>/workers/<pid>.json`` (infra.platform.metrics); this
turns the live ones into Prometheus's ``file_sd_configs`` format, one group per worker with the
label ``component`` (hub, registry, banks, dicj, connector-…), so the alert rules and the dashboard
in ``infra/monitoring/`` can tell a hub from a bank simulator.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.platform.metrics_server import other_endpoints


@dataclass(frozen=True)
class ScrapeTarget:
    """One worker's ``/metrics`` address and what it is."""

    address: str  # host:port
    component: str
    pid: int

    def to_file_sd(self) -> dict[str, Any]:
        return {"targets": [self.address], "labels": {"component": self.component}}


def scrape_targets(state_dir: Path) -> list[ScrapeTarget]:
    """The live workers under ``state_dir`` that serve metrics, by component then address."""
    found = []
    for endpoint in other_endpoints(state_dir, set()):
        parts = urllib.parse.urlsplit(endpoint.endpoint)
        if parts.hostname is None or parts.port is None:
            continue
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        found.append(ScrapeTarget(f"{host}:{parts.port}", endpoint.worker, endpoint.pid))
    return sorted(found, key=lambda t: (t.component, t.address))


def write_file_sd(targets: list[ScrapeTarget], path: Path) -> Path:
    """Write ``targets`` for ``file_sd_configs``, atomically (Prometheus may read the file at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([t.to_file_sd() for t in targets], indent=2) + "\n")
    tmp.replace(path)
    return path
