"""The embedded stack and the CLI lifecycle, on the real embedded broker (Apache Kafka by default) and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.core.errors import StackError
from infra.platform.embedded import EmbeddedStack, process_alive, read_state

pytestmark = pytest.mark.integration


def renkei(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")})


async def test_stack_starts_serves_and_stops_cleanly(tmp_path):
    stack = EmbeddedStack(tmp_path / "s")
    async with stack:
        components = {c.name: c for c in read_state(tmp_path / "s")}
        assert set(components) == {"broker", "postgres"}
        assert all(c.alive() for c in components.values())
        assert (tmp_path / "s" / "logs" / "broker.log").exists()
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        await producer.send_and_wait("lifecycle", b"ping")
        await producer.stop()
        consumer = AIOKafkaConsumer("lifecycle", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        msg = await consumer.getone()
        await consumer.stop()
        assert msg.value == b"ping"
        conn = await asyncpg.connect(stack.pg_dsn)
        assert await conn.fetchval("SELECT 41 + 1") == 42
        await conn.close()
    assert not any(process_alive(c.pid, c.cmd_marker) for c in components.values())
    assert read_state(tmp_path / "s") == []


async def test_busy_port_names_the_port_and_the_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError) as err:
            await EmbeddedStack(tmp_path / "s", kafka_port=port).start()
    assert f"port {port}" in str(err.value) and "--kafka-port" in str(err.value)
    assert read_state(tmp_path / "s") == []


def test_cli_up_detach_status_down_leaves_nothing(tmp_path):
    state = str(tmp_path / "cli")
    up = renkei("up", "--detach", "--json", "--state-dir", state, timeout=300)  # a cold JVM broker on a busy machine
    assert up.returncode == 0, up.stderr
    deadline = time.monotonic() + 60
    while True:  # workers publish their metrics endpoint once their HTTP server is up
        status = renkei("status", "--json", "--state-dir", state)
        rows = json.loads(status.stdout)["components"]
        if all(r["endpoint"] for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status.returncode == 0, status.stderr
    assert {r["name"] for r in rows} == {"broker", "postgres", "hub", "registry", "banks", "dicj"}
    assert all(r["alive"] and r["pid"] > 0 and r["endpoint"] for r in rows)
    topics = renkei("topics", "list", "--json", "--state-dir", state)
    names = {t["name"] for t in json.loads(topics.stdout)["topics"]}
    assert {"renkei.hub.ingress", "renkei.inbox.registry", "renkei.keys"} <= names

    # Kill the broker behind the CLI's back: status must say so and exit non-zero.
    broker = next(r for r in rows if r["name"] == "broker")
    os.kill(broker["pid"], signal.SIGKILL)
    time.sleep(0.3)
    status = renkei("status", "--json", "--state-dir", state)
    assert status.returncode == 1
    by_name = {r["name"]: r for r in json.loads(status.stdout)["components"]}
    assert by_name["broker"]["alive"] is False and by_name["postgres"]["alive"] is True

    down = renkei("down", "--json", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(r["pid"]) for r in rows)
    assert json.loads(renkei("status", "--json", "--state-dir", state).stdout) == {"components": []}


def test_cli_up_on_busy_port_fails_with_guidance(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = renkei("up", "--detach", "--state-dir", str(tmp_path / "b"), "--pg-port", str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--pg-port" in result.stderr
    assert read_state(tmp_path / "b") == []


def test_cli_participants_json():
    result = renkei("participants", "--json", "--banks", "3")
    assert result.returncode == 0
    rows = json.loads(result.stdout)["participants"]
    assert sum(r["kind"] == "bank" for r in rows) == 3
    assert {"id", "kind", "name", "bank_code", "suspended"} <= set(rows[0])


def test_cli_configuration_error_exits_2(tmp_path):
    result = renkei("status", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "configuration file not found" in result.stderr


def test_children_die_with_a_killed_parent_when_tied(tmp_path):
    """die_with_parent (used by tests and the demo): SIGKILL of the starter leaves no broker or database."""
    script = (
        "import asyncio, json, os, sys\n"
        "from infra.platform.embedded import EmbeddedStack\n"
        "async def main():\n"
        f"    s = EmbeddedStack({str(tmp_path / 's')!r}, die_with_parent=True)\n"
        "    await s.start()\n"
        "    print(json.dumps([c.pid for c in s.components.values()]), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = json.loads(proc.stdout.readline())
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(p) for p in pids)
