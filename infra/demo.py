"""``renkei demo``: the platform's main job on the embedded stack, reported as flows.

Runs in its own state folder (``<state>/demo``, wiped first) so it never
disturbs a stack started with ``renkei up``.  Each flow reports
``{"name", "ok", ...details}``; the demo exits non-zero if any flow fails.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from infra.settings import Settings


async def _broker_and_database_roundtrip(settings: Settings) -> dict[str, Any]:
    """One message through the broker (ingress topic) and one row through PostgreSQL."""
    import asyncpg

    from infra.kafka import consumer, producer
    from infra.topics import TopicNames

    topic = TopicNames(settings.kafka.topic_prefix).ingress
    marker = uuid.uuid4().hex.encode()
    started = time.perf_counter()
    prod = producer(settings)
    await prod.start()
    try:
        meta = await prod.send_and_wait(topic, marker, key=b"demo")
    finally:
        await prod.stop()
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        cons.assign([tp])
        cons.seek(tp, meta.offset)
        got = await cons.getone()
    finally:
        await cons.stop()
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS demo_roundtrip (id text PRIMARY KEY, at timestamptz DEFAULT now())")
        await conn.execute("INSERT INTO demo_roundtrip (id) VALUES ($1) ON CONFLICT DO NOTHING", marker.decode())
        stored = await conn.fetchval("SELECT count(*) FROM demo_roundtrip WHERE id = $1", marker.decode())
    finally:
        await conn.close()
    return {
        "name": "broker-and-database-roundtrip",
        "ok": got.value == marker and stored == 1,
        "topic": topic,
        "partition": meta.partition,
        "offset": meta.offset,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


async def run_demo(settings: Settings, progress: Any = None) -> dict[str, Any]:
    from infra.embedded import stop_recorded
    from infra.stack import Platform

    demo_settings = dataclasses.replace(settings, state_dir=settings.state_dir / "demo")
    stop_recorded(demo_settings.state_dir)  # a previous demo killed half-way
    import shutil

    shutil.rmtree(demo_settings.state_dir, ignore_errors=True)
    started = time.perf_counter()
    async with Platform(demo_settings) as platform:
        if progress is not None:
            progress.print(f"Stack up: broker {platform.settings.kafka.bootstrap}, "
                           f"PostgreSQL {platform.settings.pg_dsn.split('@')[-1]}")
        flows = [await _broker_and_database_roundtrip(platform.settings)]
        from infra.demo_lookups import lookup_flows  # 付番申出, 相続時・災害時照会

        flows += await lookup_flows(platform.settings)
    return {
        "ok": all(f["ok"] for f in flows),
        "flows": flows,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="Renkei demo")
    table.add_column("flow")
    table.add_column("result")
    table.add_column("details")
    for flow in report["flows"]:
        details = ", ".join(f"{k}={v}" for k, v in flow.items() if k not in ("name", "ok"))
        table.add_row(flow["name"], "[green]ok[/green]" if flow["ok"] else "[red]FAILED[/red]", details)
    console.print(table)
    console.print(f"{'All flows succeeded' if report['ok'] else 'Some flows FAILED'} in {report['elapsed_s']} s.")
