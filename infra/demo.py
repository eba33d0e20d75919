"""``renkei demo``: the platform's main job on the embedded stack, reported as flows.

Runs in its own state folder (``<state>/demo``, wiped first) so it never
disturbs a stack started with ``renkei up``.  Each flow reports
``{"name", "ok", ...details}``; the demo exits non-zero if any flow fails.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from infra.settings import Settings


async def run_demo(settings: Settings, progress: Any = None) -> dict[str, Any]:
    from infra.embedded import stop_recorded
    from infra.pgdsn import public_dsn
    from infra.stack import Platform

    demo_settings = dataclasses.replace(settings, state_dir=settings.state_dir / "demo")
    stop_recorded(demo_settings.state_dir)  # a previous demo killed half-way
    import shutil

    shutil.rmtree(demo_settings.state_dir, ignore_errors=True)
    started = time.perf_counter()
    async with Platform(demo_settings, die_with_parent=True) as platform:
        if progress is not None:
            progress.print(f"Stack up: broker {platform.settings.kafka.bootstrap}, "
                           f"PostgreSQL {public_dsn(platform.settings.pg_dsn).split('@')[-1]}")
        await platform.wait_ready(120)
        if progress is not None:
            progress.print(f"Workers ready ({', '.join(w.name for w in platform.workers)}); running the flows…")
        from infra.demo_accounts import account_flows  # 公金受取口座 STEP1-3
        from infra.demo_lookups import lookup_flows  # 付番申出, 相続時・災害時照会

        flows, records = await account_flows(platform.settings)
        flows += await lookup_flows(platform.settings)
    return {  # the person must also see their records, each verified
        "ok": all(f["ok"] for f in flows) and bool(records) and all(r["chain_ok"] for r in records),
        "flows": flows,
        "provision_records": records,
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
    records = Table(title="The demo person's provision records (情報提供等記録), as the portal shows them")
    for col in ("#", "requester", "provider", "data item", "status", "when", "chain"):
        records.add_column(col)
    for r in report.get("provision_records", []):
        records.add_row(str(r["seq"]), r["requester"], r["provider"], r["data_item"], r["status"],
                        r["provided_at"] or r["requested_at"], "[green]✓[/green]" if r["chain_ok"] else "[red]✗[/red]")
    console.print(records)
    console.print(f"{'All flows succeeded' if report['ok'] else 'Some flows FAILED'} in {report['elapsed_s']} s.")
