"""``renkei demo``: the platform's main job on the embedded stack, reported as flows.

Runs in its own state folder (``<state>/demo``, wiped first) so it never
disturbs a stack started with ``renkei up``.  Each flow reports
``{"name", "ok", ...details}``; the demo exits non-zero if any flow fails.
The portal (web page and API) runs beside the platform for the whole demo;
the card issuer gives the demo person a card, and ``--serve`` (what ``make
demo`` runs) keeps everything up afterwards with the page's URL, the card id
and its PIN (shown once) printed, so a newcomer can log in, until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from infra.core.settings import Settings

Hold = Callable[[dict[str, Any]], Awaitable[None]]


async def run_demo(settings: Settings, progress: Any = None, *, hold: Hold | None = None,
                   portal_port: int = 0) -> dict[str, Any]:
    """Run the flows; with ``hold``, await ``hold(report)`` (the report then shows the card's PIN) before the
    platform and the portal stop."""
    from connectors.portal import PortalConnector
    from infra.platform.embedded import stop_recorded
    from infra.platform.pgdsn import public_dsn, records_dsn
    from infra.platform.stack import Platform
    from infra.tools.demo_lookups import INHERITANCE_DEADLINE_S

    # A short inheritance deadline, so that the deliberately slow bank shows as missing, then late.
    demo_settings = dataclasses.replace(settings, state_dir=settings.state_dir / "demo",
                                        lookup_deadline_inheritance_s=INHERITANCE_DEADLINE_S)
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
        from infra.tools.demo_accounts import COUNTER_BANK, account_flows  # 公金受取口座 STEP1-3
        from infra.tools.demo_lookups import lookup_flows  # 付番申出, 相続時・災害時照会
        from infra.tools.demo_portal import portal_flow  # the page, as the demo person meets it

        s = platform.settings
        async with PortalConnector(s, provisions_dsn=records_dsn(s), port=portal_port) as portal:
            assert portal.url is not None
            flows, records, card = await account_flows(s)
            if card is not None:
                flows.append(await portal_flow(portal.url, card, expected_bank=COUNTER_BANK.split("-")[1]))
            flows += await lookup_flows(s)
            report = {  # the person must also see their records, each verified
                "ok": all(f["ok"] for f in flows) and bool(records) and all(r["chain_ok"] for r in records),
                "flows": flows,
                "provision_records": records,
                "portal": {"url": portal.url, "card_id": card and card.card_id,
                           "pin": card.pin if card is not None and hold is not None else None,
                           "serving": hold is not None},
                "elapsed_s": round(time.perf_counter() - started, 2),
            }
            if hold is not None:
                await hold(report)
    return report


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
    for col in ("#", "requester", "provider", "data item", "procedure", "status", "when", "chain"):
        records.add_column(col)
    for r in report.get("provision_records", []):
        records.add_row(str(r["seq"]), r["requester"], r["provider"], r["data_item"], r.get("procedure") or "",
                        r["status"], r["provided_at"] or r["requested_at"],
                        "[green]✓[/green]" if r["chain_ok"] else "[red]✗[/red]")
    console.print(records)
    console.print(f"{'All flows succeeded' if report['ok'] else 'Some flows FAILED'} in {report['elapsed_s']} s.")
    portal = report.get("portal") or {}
    if portal.get("serving") and portal.get("pin"):
        console.print(
            f"\n[bold]Log in to the portal as the demo person[/bold] (マイナポータル-like page, Japanese first):\n"
            f"  open   {portal['url']}\n  card   {portal['card_id']}\n  PIN    {portal['pin']}   "
            "(shown once; three wrong PINs lock the card)\n"
            "The stack and the portal keep running until Ctrl-C.")
    elif portal.get("card_id"):
        console.print("Run `renkei demo --serve` (or `make demo`) to keep the stack and the portal running and "
                      "log in to the page as the demo person.")
