"""Worker metrics: text exposition, closed label sets, the HTTP endpoints and the discovery file."""

from __future__ import annotations

import json
import os

import pytest
from aiokafka import TopicPartition

from infra.core.errors import Reason
from infra.platform.metrics import Gauge, WorkerMetrics
from infra.platform.metrics_server import (
    MetricsServer,
    WorkerEndpoint,
    add_worker_health,
    fetch_health,
    fetch_metrics,
    parse_text,
    read_endpoint,
    workers_dir,
)
from streams.gateway import HubDecision, Inbound
from streams.hub import dead_letter_headers, record_headers


def test_counters_histograms_and_gauges_render_as_prometheus_text():
    m = WorkerMetrics("hub")
    m.batch_done(3, started=0.0)  # a monotonic start far in the past: lands in +Inf only
    m.messages_out.inc(2)
    m.reject("UNKNOWN_KEY", 2)
    m.set_lag("renkei.hub.ingress", 1, 7)
    m.provision_write_seconds.observe(0.004)
    text = m.render()
    assert "# TYPE renkei_messages_in_total counter" in text
    assert "# TYPE renkei_batch_duration_seconds histogram" in text
    values = parse_text(text)
    assert values['renkei_messages_in_total{worker="hub"}'] == 3
    assert values['renkei_messages_out_total{worker="hub"}'] == 2
    assert values['renkei_messages_rejected_total{worker="hub",reason="UNKNOWN_KEY"}'] == 2
    assert values['renkei_consumer_lag{worker="hub",topic="renkei.hub.ingress",partition="1"}'] == 7
    assert values['renkei_message_duration_seconds_count{worker="hub"}'] == 3  # one observation per message
    assert values['renkei_batch_duration_seconds_count{worker="hub"}'] == 1
    assert values['renkei_batch_duration_seconds_bucket{worker="hub",le="30"}'] == 0
    assert values['renkei_batch_duration_seconds_bucket{worker="hub",le="+Inf"}'] == 1
    assert values['renkei_provision_write_seconds_bucket{worker="hub",le="0.0025"}'] == 0
    assert values['renkei_provision_write_seconds_bucket{worker="hub",le="0.005"}'] == 1
    assert m.headline() == {"processed": 3, "out": 2, "rejected": 2, "duplicates": 0, "lag": 7}


def test_per_message_durations_follow_sequential_completion():
    m = WorkerMetrics("registry")
    m.batch_done(3, started=100.0, per_message_done=[100.0005, 100.02, 100.3])
    values = parse_text(m.render())
    assert values['renkei_message_duration_seconds_bucket{worker="registry",le="0.001"}'] == 1
    assert values['renkei_message_duration_seconds_bucket{worker="registry",le="0.025"}'] == 2
    assert values['renkei_message_duration_seconds_bucket{worker="registry",le="0.5"}'] == 3


def test_a_label_outside_its_closed_set_is_counted_as_other_never_shown():
    m = WorkerMetrics("hub")
    token = "AbC_dEf-0123456789abcdefghijklmnopqrstuvwxyz"  # what a subject token looks like
    m.reject(token)
    m.reject("123456789012")  # a My Number-shaped string
    text = m.render()
    assert token not in text and "123456789012" not in text
    assert parse_text(text)['renkei_messages_rejected_total{worker="hub",reason="OTHER"}'] == 2
    with pytest.raises(ValueError):
        m.set_lag('renkei.inbox.x"}\nevil 1', 0, 1)  # internal labels must be plain identifiers
    with pytest.raises(ValueError):
        m.messages_in.inc(-1)


def test_lag_comes_from_the_fetch_high_watermark():
    class Consumer:
        def highwater(self, tp):
            if tp.partition == 2:
                raise AssertionError("not assigned")
            return 10

    tp = lambda p: TopicPartition("renkei.hub.ingress", p)  # noqa: E731
    m = WorkerMetrics("hub")
    m.record_lag(Consumer(), {tp(0): 9, tp(1): 4, tp(2): 1})
    values = parse_text(m.render())
    assert values['renkei_consumer_lag{worker="hub",topic="renkei.hub.ingress",partition="0"}'] == 0
    assert values['renkei_consumer_lag{worker="hub",topic="renkei.hub.ingress",partition="1"}'] == 5
    assert not any('partition="2"' in k for k in values)


def test_dead_letters_keep_redrive_replay_and_ops_headers_only():
    carried = (("renkei.redrive", b"7"), ("renkei.redrive.count", b"2"), ("renkei.redrive.history", b"3,7"),
               ("renkei.replay", b"t:0:5"), ("renkei.replay.ts", b"1"), ("renkei.ops.event", b"ev-1"),
               ("traceparent", b"00-abc"), ("renkei.reason", b"FORGED"))
    d = HubDecision(Inbound(b"x", 0, 12, None, carried)).reject(Reason.UNKNOWN_KEY, "no key")
    headers = dead_letter_headers(d)
    names = [k for k, _ in headers]
    assert dict(headers)["renkei.redrive.count"] == b"2" and dict(headers)["renkei.ops.event"] == b"ev-1"
    assert {"renkei.redrive", "renkei.redrive.history", "renkei.replay", "renkei.replay.ts"} <= set(names)
    assert "traceparent" not in names
    assert names.count("renkei.reason") == 1 and dict(headers)["renkei.reason"] == b"UNKNOWN_KEY"
    assert record_headers(None) == () and record_headers({"a": b"1"}) == (("a", b"1"),)
    assert record_headers([("a", None)]) == (("a", b""),)


async def test_server_serves_metrics_and_health_and_writes_its_discovery_file(tmp_path):
    m = WorkerMetrics("banks")
    state = {"status": "starting"}
    server = MetricsServer(m, lambda: (state["status"], ""), state_dir=tmp_path)
    async with server:
        found = read_endpoint(tmp_path, os.getpid())
        assert found is not None and found.endpoint == server.endpoint and found.worker == "banks"
        assert server.endpoint.startswith("http://127.0.0.1:")
        assert (await fetch_health(found))["status"] == "starting"
        state["status"] = "ok"
        m.messages_in.inc(5)
        m.reject("EXPIRED")
        report = await fetch_health(found)
        assert report["status"] == "ok" and report["processed"] == 5 and report["rejected"] == 1
        assert (await fetch_metrics(found.metrics))['renkei_messages_in_total{worker="banks"}'] == 5
        rows = [{"name": "banks", "pid": os.getpid(), "alive": True, "endpoint": ""},
                {"name": "broker", "pid": 1, "alive": True, "endpoint": "127.0.0.1:9092"}]
        await add_worker_health(tmp_path, rows)
        assert rows[0]["endpoint"] == server.endpoint and rows[0]["health"] == "ok"
        assert rows[0]["metrics"] == f"{server.endpoint}/metrics" and rows[0]["processed"] == 5
        assert rows[1]["endpoint"] == "127.0.0.1:9092" and rows[1]["health"] is None
    assert not list(workers_dir(tmp_path).glob("*.json"))  # removed on stop
    gone = await fetch_health(WorkerEndpoint("banks", os.getpid(), server.endpoint), timeout=1)
    assert gone["status"] == "unreachable"


async def test_a_raising_health_check_reports_failing(tmp_path):
    def broken() -> tuple[str, str]:
        raise RuntimeError("boom")

    async with MetricsServer(WorkerMetrics("hub"), broken) as server:
        report = await fetch_health(WorkerEndpoint("hub", os.getpid(), server.endpoint))
    assert report["status"] == "failing" and "RuntimeError" in report["detail"]
    assert json.dumps(report)


def test_a_worker_kind_registers_its_own_metrics_with_closed_labels():
    from connectors.runtime import ConnectorMetrics

    m = WorkerMetrics("connector-bank-files")
    c = ConnectorMetrics(m, ["bank-files"])
    c.published.inc(connector="bank-files", type="registration.request")
    c.dead_letters.inc(connector="bank-files", direction="source", reason="COUNT_MISMATCH")
    c.dead_letters.inc(connector="bank-files", direction="sink", reason="123456789012")  # never a label value
    c.published.inc(connector="someone-else", type="x.y")
    c.up.set(1)
    c.consumer_lag.set(3, topic="renkei.inbox.bank-9001", partition=0)
    c.consumer_lag.clear()  # refreshed as a whole: a partition no longer assigned disappears
    c.consumer_lag.set(1, topic="renkei.inbox.bank-9001", partition=1)
    text = m.render()
    values = parse_text(text)
    w = 'worker="connector-bank-files"'
    assert values[f'renkei_connector_up{{{w}}}'] == 1
    assert values[f'renkei_connector_published_total{{{w},connector="bank-files",type="registration.request"}}'] == 1
    assert values[f'renkei_connector_published_total{{{w},connector="OTHER",type="OTHER"}}'] == 1
    assert values[f'renkei_connector_dead_letters_total{{{w},connector="bank-files",direction="source",'
                  f'reason="COUNT_MISMATCH"}}'] == 1
    assert values[f'renkei_connector_dead_letters_total{{{w},connector="bank-files",direction="sink",'
                  f'reason="OTHER"}}'] == 1
    assert "123456789012" not in text and 'partition="0"' not in text
    assert values[f'renkei_connector_consumer_lag{{{w},topic="renkei.inbox.bank-9001",partition="1"}}'] == 1
    assert f'renkei_messages_in_total{{{w}}}' in values  # one exposition: the worker series too
    with pytest.raises(ValueError):
        m.register(m.messages_in)


async def test_collect_runs_per_request_details_extend_health_and_routes_embed(tmp_path):
    from aiohttp import ClientSession, web

    from connectors.runtime import start_site

    m = WorkerMetrics("connector-portal")
    gauge = m.register(Gauge("renkei_test_backlog", "Read on demand"))
    calls = {"n": 0, "fail": False}

    async def collect() -> None:
        calls["n"] += 1
        if calls["fail"]:
            raise OSError("database away")
        gauge.set(calls["n"])

    server = MetricsServer(m, lambda: ("ok", ""), state_dir=tmp_path, collect=collect,
                           details=lambda: {"outbox_pending": 4, "status": "overridden?"})
    async with server:
        second = MetricsServer(WorkerMetrics("connector-agency"), lambda: ("ok", ""), state_dir=tmp_path)
        async with second:  # two servers in one process: two discovery files, the first one is <pid>.json
            assert read_endpoint(tmp_path, os.getpid()).worker == "connector-portal"
            assert sorted(p.name for p in workers_dir(tmp_path).glob("*.json")) == [
                f"{os.getpid()}-2.json", f"{os.getpid()}.json"]
        found = read_endpoint(tmp_path, os.getpid())
        assert (await fetch_metrics(found.metrics))['renkei_test_backlog{worker="connector-portal"}'] == 1
        report = await fetch_health(found)
        assert report["status"] == "ok" and report["outbox_pending"] == 4 and calls["n"] == 2
        calls["fail"] = True
        report = await fetch_health(found)
        assert report["status"] == "failing" and "OSError" in report["detail"]
        app = web.Application()  # the same endpoints on another app (a connector's API server)
        app.add_routes(server.routes())
        runner, url = await start_site(app, "127.0.0.1", 0)
        try:
            async with ClientSession() as http, http.get(f"{url}/health") as resp:
                assert resp.status == 503 and (await resp.json())["worker"] == "connector-portal"
        finally:
            await runner.cleanup()
    assert not list(workers_dir(tmp_path).glob("*.json"))


def test_other_endpoints_lists_live_processes_the_stack_did_not_start(tmp_path):
    import os
    import subprocess

    from infra.platform.metrics_server import WorkerEndpoint, other_endpoints, write_endpoint

    gone = subprocess.Popen(["true"])
    gone.wait()
    me = os.getpid()
    write_endpoint(tmp_path, WorkerEndpoint("participant", me, "http://127.0.0.1:1"))  # <pid>.json
    write_endpoint(tmp_path, WorkerEndpoint("connector-portal", me, "http://127.0.0.1:2"))  # <pid>-2.json
    write_endpoint(tmp_path, WorkerEndpoint("connector-agency", gone.pid, "http://127.0.0.1:3"))
    (tmp_path / "workers" / "broken.json").write_text("{not json")
    found = other_endpoints(tmp_path, set(), prefix="connector-")
    assert [(e.worker, e.pid, e.endpoint) for e in found] == [("connector-portal", me, "http://127.0.0.1:2")]
    assert other_endpoints(tmp_path, {me}, prefix="connector-") == []  # a component of the stack: not "other"
    assert len(other_endpoints(tmp_path, set())) == 1  # one row per process, however many servers it runs
