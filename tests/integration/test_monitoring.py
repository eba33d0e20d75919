"""Renkei wired into Prometheus with the real tools (issue 19, items 1 and 2).

Debian's ``prometheus`` package (``promtool`` and the server), installed by ``.ci/run``; missing, the
module is skipped on a developer's machine and FAILS in CI (``tests.tools.require``).

- ``promtool check rules`` and ``promtool test rules`` on infra/monitoring's alert rules (each alert
  fires on the series that should fire it and not on healthy ones);
- the platform's workers started with ``ops_port`` set serve /metrics on ``ops_port + i`` in start
  order, ``renkei ops targets`` lists them, and ``promtool check metrics`` accepts every worker's
  exposition;
- a real Prometheus scrapes the running stack through the file-based discovery ``renkei ops targets``
  writes, with the example prometheus.yml and the alert rules loaded, and answers queries for series
  the traffic moved (per-participant messages, dead letters by reason);
- every metric name the Grafana dashboard queries exists in a real scrape, and every dashboard
  expression is accepted by the real Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from infra.ops.metrics_targets import scrape_targets, write_file_sd
from infra.platform.kafka import producer
from infra.platform.metrics_server import read_endpoint
from infra.platform.stack import WORKERS
from infra.platform.topics import TopicNames
from infra.tools.harness import eventually
from tests.integration.platform_fixtures import bus, isolated_platform  # noqa: F401
from tests.integration.test_flows import AGENCY, person
from tests.integration.waits import hub_barrier
from tests.tools import require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "infra" / "monitoring"
WORKER_NAMES = [w.name for w in WORKERS]  # hub, registry, banks, dicj: start order = port order


def _missing() -> str | None:
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install prometheus)"
    return None


@pytest.fixture(scope="module")
def prometheus_tools() -> None:
    require(_missing())


def free_port_run(n: int) -> int:
    """A first port with ``n`` free ones from it (checked by binding each; the workers bind them next)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no run of {n} free ports")


@pytest.fixture(scope="module")
async def running_platform(endpoints, database, tmp_path_factory):
    """The whole platform, its workers' /metrics on fixed ports from ``ops_port``."""
    base = free_port_run(len(WORKER_NAMES))
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("monitoring"), ops_port=base) as p:
        yield p


def run(cmd: list[str], *, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.get(url) as r:
        r.raise_for_status()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()


def metric_names(exposition: str) -> set[str]:
    """Every family a scrape declares (``# TYPE``) and every sample name in it."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M):
        names |= {name} | ({f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set())
    names |= {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}
    return names


def dashboard_expressions() -> list[str]:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


PROMQL_WORDS = {"sum", "by", "max", "min", "rate", "increase", "delta", "histogram_quantile", "le", "absent",
                "and", "or", "unless", "without", "avg", "count", "on", "ignoring", "group_left", "group_right"}


def names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside braces and quotes that are no PromQL word."""
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)  # matchers, strings, ranges
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", bare)  # grouping labels
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS
            and not re.fullmatch(r"\d+", w)}


# --------------------------------------------------------------------------- the rule files alone


def test_alert_rules_pass_promtool_check_and_their_unit_series(prometheus_tools):
    checked = run(["promtool", "check", "rules", "renkei-alerts.yml"], cwd=MONITORING)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = run(["promtool", "test", "rules", "renkei-alerts.test.yml"], cwd=MONITORING)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((MONITORING / "renkei-alerts.yml").read_text())["groups"][0]["rules"]
    tests = (MONITORING / "renkei-alerts.test.yml").read_text()
    for rule in rules:  # every alert has unit series that make it fire
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]


def test_promtool_test_rules_fails_when_an_alert_does_not_fire(prometheus_tools, tmp_path):
    """The rule tests can fail: with the hub-down alert's threshold broken, promtool says so."""
    rules = (MONITORING / "renkei-alerts.yml").read_text()
    (tmp_path / "renkei-alerts.yml").write_text(rules.replace('component="hub"}) == 0', 'component="hub"}) == 7'))
    shutil.copy(MONITORING / "renkei-alerts.test.yml", tmp_path)
    tested = run(["promtool", "test", "rules", "renkei-alerts.test.yml"], cwd=tmp_path)
    assert tested.returncode != 0 and "RenkeiHubDown" in tested.stdout + tested.stderr


# --------------------------------------------------------------------------- a running stack


async def worker_metrics_urls(platform: Any, timeout: float = 120) -> dict[str, str]:
    """name -> /metrics URL of each platform worker, once every one has written its discovery file."""
    deadline = time.monotonic() + timeout
    while True:
        found = {n: read_endpoint(platform.settings.state_dir, platform.stack.components[n].pid) for n in WORKER_NAMES}
        if all(found.values()):
            return {n: e.metrics for n, e in found.items() if e is not None}
        if time.monotonic() > deadline:
            raise AssertionError(f"workers without a metrics endpoint: {[n for n, e in found.items() if e is None]}")
        await asyncio.sleep(0.3)


async def test_each_worker_serves_metrics_on_its_configured_port_and_promtool_accepts_it(
        prometheus_tools, running_platform, tmp_path):
    base = running_platform.settings.ops_port
    urls = await worker_metrics_urls(running_platform)
    for i, name in enumerate(WORKER_NAMES):
        assert urls[name] == f"http://127.0.0.1:{base + i}/metrics", (name, urls[name])
    for name, url in urls.items():
        text = await scrape(url)
        checked = run(["promtool", "check", "metrics"], stdin=text)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
        assert 'worker="' in text
        assert "renkei_consumer_group_lag" in text and "renkei_key_directory_version" in text

    out = tmp_path / "targets" / "renkei.json"
    listed = run([sys.executable, "-m", "infra.cli", "ops", "targets", "--output", str(out),
                  "--state-dir", str(running_platform.settings.state_dir)], cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(out.read_text())
    by_component = {g["labels"]["component"]: g["targets"] for g in groups}
    for i, name in enumerate(WORKER_NAMES):
        assert by_component[name] == [f"127.0.0.1:{base + i}"]


async def send_junk(settings: Any, n: int) -> None:
    """``n`` records on ingress that are no envelope: each is dead-lettered MALFORMED by the hub."""
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(n):
            await prod.send_and_wait(TopicNames(settings.kafka.topic_prefix).ingress, b"not an envelope %d" % i,
                                     key=b"junk")
    finally:
        await prod.stop()


async def query(api: str, promql: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
            s.get(f"{api}/api/v1/query", params={"query": promql}) as r:
        body = await r.json()
        assert body["status"] == "success", (promql, body)
        return body["data"]


async def until(check: Any, what: str, timeout: float = 120.0) -> Any:
    """:func:`eventually`, counting a Prometheus that does not answer yet as "not yet"."""
    async def answered() -> Any:
        try:
            return await check()
        except (aiohttp.ClientError, OSError):
            return None

    return await eventually(answered, timeout=timeout, interval=0.5, what=what)


@pytest.fixture(scope="module")
async def prometheus(prometheus_tools, running_platform, tmp_path_factory):
    """A real Prometheus with infra/monitoring's prometheus.yml (1 s scrapes) and alert rules, scraping
    the workers through the file_sd file ``renkei ops targets`` writes."""
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(MONITORING / "renkei-alerts.yml")]
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(folder / "targets" / "*.json")]
    config["scrape_configs"][0]["file_sd_configs"][0]["refresh_interval"] = "1s"
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    await worker_metrics_urls(running_platform)
    write_file_sd(scrape_targets(running_platform.settings.state_dir), folder / "targets" / "renkei.json")
    checked = run(["promtool", "check", "config", str(folder / "prometheus.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(["prometheus", f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        async def ready() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"{api}/-/ready") as r:
                return r.status == 200

        await until(ready, "Prometheus ready", 60)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_a_real_prometheus_scrapes_the_stack_and_answers_for_the_series_traffic_moved(
        prometheus, running_platform, bus):
    async def all_up() -> bool:
        found = (await query(prometheus, 'up{job="renkei"}'))["result"]
        return {r["metric"]["component"] for r in found if r["value"][1] == "1"} >= set(WORKER_NAMES)

    await until(all_up, "every worker up in Prometheus")
    settings = running_platform.settings
    await bus.token_for(AGENCY, person())  # a token exchange: the agency's message in, the answer out
    await send_junk(settings, 3)
    await hub_barrier(settings)

    async def participant_series() -> list[Any]:
        return (await query(prometheus, 'renkei_participant_messages_total{component="hub", '
                                        f'participant="{AGENCY}", direction="in"}} > 0'))["result"]

    async def malformed() -> list[Any]:
        return (await query(prometheus, 'sum by (reason) (renkei_messages_rejected_total'
                                        '{component="hub", reason="MALFORMED"}) >= 3'))["result"]

    assert await until(participant_series, "the agency's messages at the hub")
    assert await until(malformed, "the hub's MALFORMED dead letters")
    async with aiohttp.ClientSession() as s, s.get(f"{prometheus}/api/v1/rules") as r:
        rules = [rule["name"] for g in (await r.json())["data"]["groups"] for rule in g["rules"]]
    assert "RenkeiHubDown" in rules and "RenkeiRevokedKeyStillUsed" in rules and len(rules) == 8


async def test_the_dashboard_queries_only_series_a_real_scrape_has(prometheus, running_platform):
    urls = await worker_metrics_urls(running_platform)
    scraped: set[str] = {"up"}  # Prometheus's own series for every target
    for url in urls.values():
        scraped |= metric_names(await scrape(url))
    expressions = dashboard_expressions()
    assert len(expressions) >= 12
    named = set().union(*(names_in(e) for e in expressions))
    assert {"renkei_participant_messages_total", "renkei_consumer_group_lag", "renkei_lookup_legs_outstanding",
            "renkei_provision_write_seconds_bucket", "renkei_key_directory_version"} <= named
    assert named <= scraped, f"the dashboard names series no worker exposes: {sorted(named - scraped)}"
    assert names_in('sum by (reason) (increase(renkei_nope_total{reason="X"}[5m]))') == {"renkei_nope_total"}
    for expr in expressions:  # and the real Prometheus accepts every expression
        await query(prometheus, expr.replace("${datasource}", ""))


DRAWN_PANELS = ("Workers up", "Messages processed per second by worker", "Consumer lag by group",
                "Dead letters by reason (per 5 min)")


async def test_the_dashboards_panels_drawn_by_the_real_prometheus(prometheus, running_platform, bus, tmp_path):
    """docs/operations.md's dashboard picture: the dashboard's own panel queries, drawn by the real Prometheus's
    graph page in headless Chromium over the test's traffic (Grafana itself is not packaged in Debian). Every
    panel must draw a series, not an error; the screenshot is checked not blank and written to
    ``RENKEI_SCREENSHOTS_DIR`` if set (``docs/img`` refreshes the docs'), else to the test's folder."""
    import os
    import urllib.parse

    from tests.integration.test_portal_browser import ARGS, CHROMIUM, screenshot

    require(None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    panels = {p["title"]: p["targets"][0]["expr"]
              for p in json.loads((MONITORING / "grafana-dashboard.json").read_text())["panels"]}
    await send_junk(running_platform.settings, 3)  # a dead-letter series to draw
    await hub_barrier(running_platform.settings)

    async def drawn() -> bool:
        rejected = await query(prometheus, 'renkei_messages_rejected_total{reason="MALFORMED"}')
        return bool(rejected["result"])

    await until(drawn, "Prometheus to scrape the dead letters")
    params: dict[str, str] = {}
    for i, title in enumerate(DRAWN_PANELS):
        params |= {f"g{i}.expr": panels[title], f"g{i}.tab": "0", f"g{i}.range_input": "1m",
                   f"g{i}.stacked": "0", f"g{i}.show_exemplars": "0"}
    url = f"{prometheus}/graph?{urllib.parse.urlencode(params)}"
    where = Path(os.environ.get("RENKEI_SCREENSHOTS_DIR") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url, wait_until="networkidle", timeout=90_000)
            # Debian's Prometheus 2.42 serves its classic graph page: one rickshaw graph and legend per panel
            # with data ("No datapoints found." otherwise); rates need two scrapes, so look again for a while.
            legends: list[str] = []
            for _ in range(12):
                legends = [t for t in await page.locator(".rickshaw_legend").all_inner_texts() if t.strip()]
                if len(legends) >= len(DRAWN_PANELS):
                    break
                await asyncio.sleep(5)
                await page.reload(wait_until="networkidle", timeout=90_000)
            assert len(legends) == len(DRAWN_PANELS), (legends, (await page.inner_text(".graph_area, body"))[:3000])
            errors = [t for t in await page.locator(".alert-danger").all_inner_texts() if t.strip()]
            assert errors == [], errors
            assert "MALFORMED" in "\n".join(legends) and "hub" in "\n".join(legends), legends
            await page.add_style_tag(content="nav.navbar { display: none; }")  # fixed: it would float mid-picture
            await screenshot(page, browser, where / "dashboard-panels.png", full_page=True)
        finally:
            await browser.close()
