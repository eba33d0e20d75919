"""``renkei broker fetch|info``: the embedded broker's prerequisites, fetched and shown.

``fetch`` resolves the Apache Kafka jars with Maven (once; ``make demo`` and ``make test``
run it, and ``renkei up`` does the same when they are missing). Where the embedded broker
will be Tansu (``--broker tansu``, or ``auto`` without Java 17+), it fetches nothing and says
why. ``info`` tells which broker ``renkei up`` would start and what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from infra.core.errors import StackError
from infra.core.settings import Settings


@dataclass(frozen=True)
class BrokerInfo:
    """What the embedded stack would start, and why (``renkei broker info --json``)."""

    requested: str  # auto | kafka | tansu
    kind: str  # kafka | tansu | "" when `kafka` was asked for and cannot run
    kafka_version: str
    java: str  # path, "" if none runs
    java_version: str
    maven: str  # path, "" if not on PATH
    cache: str  # the folder of the fetched release (its jars in libs/)
    fetched: bool
    problem: str  # why Apache Kafka is not the broker (the fallback's warning or the error)


def broker_info(settings: Settings) -> BrokerInfo:
    from infra.platform import kafka_broker as kb

    cache = settings.resolved_kafka_cache
    java = kb.find_java(settings.embedded_java)
    fetched = kb.cached_distribution(cache) is not None
    maven = kb.maven_executable()
    try:
        choice = kb.choose_broker(settings.kafka.broker, java, cached=fetched, maven=maven is not None)
        kind, problem = choice.kind, choice.warning
    except StackError as exc:
        kind, problem = "", str(exc)
    return BrokerInfo(settings.kafka.broker, kind, kb.kafka_version(), java.path if java else "",
                      java.version if java else "", maven or "", str(kb.distribution_dir(cache)), fetched, problem)


async def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform import kafka_broker as kb

    info = await asyncio.to_thread(broker_info, settings)
    if args.broker_action == "fetch":
        if info.kind == "kafka":
            await asyncio.to_thread(kb.fetch_distribution, settings.resolved_kafka_cache,
                                    notify=None if args.json else _stderr)
            info = BrokerInfo(**{**asdict(info), "fetched": True})
        elif info.kind == "":
            raise StackError(info.problem)
        elif info.problem and not args.json:
            _stderr(f"warning: {info.problem}; nothing to fetch")
    _show(info, args.json)
    return 0


def _stderr(line: str) -> None:
    print(f"renkei: {line}", file=sys.stderr, flush=True)


def _show(info: BrokerInfo, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(asdict(info), indent=2) + "\n")
        return
    if info.kind == "kafka":
        state = "fetched" if info.fetched else "not fetched yet (renkei broker fetch, or the first renkei up)"
        lines = [f"embedded broker: Apache Kafka {info.kafka_version} ({state}; {info.cache})",
                 f"java: {info.java} ({info.java_version})"]
    else:
        lines = [f"embedded broker: {info.kind or 'none'} (asked for: {info.requested})"]
        if info.problem:
            lines.append(f"why: {info.problem}")
    sys.stdout.write("\n".join(lines) + "\n")


def register(add: Any) -> None:
    """Add ``renkei broker fetch|info`` (``add(name, handler, help)`` from infra.cli)."""
    broker = add("broker", cmd_broker, "the embedded broker: fetch Apache Kafka's jars with Maven, or show "
                                       "which broker `renkei up` starts")
    broker.add_argument("broker_action", choices=["fetch", "info"], metavar="fetch|info",
                        help="fetch: resolve the Kafka jars now (once); info: what would run and why")
