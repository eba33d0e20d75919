"""What the ops tools share: time windows, bounded partition scans, the ops audit trail, progress.

The tools (``infra.ops.inspection``, ``infra.ops.lag``, ``infra.ops.dlq``, ``infra.ops.replay``)
read envelope metadata only, never a body, and never load a keyset: an ops
team needs no participant's private key and sees no personal data — and no
token material either (not even a prefix: it would join one person's tokens).

Every scan filters by the *record* timestamp itself. On Apache Kafka the high
watermark is ``end_offsets`` and ``offsets_for_times`` finds where a window
starts (the first record at or after a time; none past the end). On the Tansu
fallback both are wrong (docs/embedded.md), so there the high watermark comes
from a fetch response and the time lookup is only a hint: it matches the
broker's store time (so a clock-skew margin is subtracted), and past the end
it answers offset 0 with timestamp -1.

Every action (replay, rewind, redrive) writes one JSON event to the ops audit
topic ``<prefix>.audit.ops`` (declared in ``infra.platform.topics.layout``: 1 partition, no time limit;
created here on first use where the layout was not applied), separate
from the Avro provision records on ``<prefix>.audit.provisions``.

Rule: imports ``infra.records``, ``infra.platform`` and below, never ``streams``; ``connectors``' commands,
the tools and the CLI import it. Layers and their allowed directions: docs/architecture.md.

Its public names are its modules and what ``__all__`` names here; the package re-exports
nothing of its modules.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infra.core.errors import ConfigError, StackError
from infra.core.settings import KafkaSettings, Settings
from infra.platform.scans import FETCH_TIMEOUT_S, high_watermarks, partitions_of, read_range, scan_consumer
from infra.platform.topics import TopicNames, ops_audit_spec

__all__ = [
    "add_window_args",
    "audit_before_commit",
    "classify",
    "DEFAULT_SKEW_MS",
    "dlq",
    "dlq_args",
    "emit",
    "ensure_ops_audit_topic",
    "FETCH_TIMEOUT_S",
    "high_watermarks",
    "inspect_args",
    "inspection",
    "iso",
    "lag",
    "lag_args",
    "metrics_targets",
    "ops_audit_topic",
    "ops_page",
    "OpsEvent",
    "parse_time",
    "partitions_of",
    "progress",
    "read_range",
    "renkei_headers",
    "replay",
    "replay_args",
    "scan_consumer",
    "SKIP",
    "start_offset",
    "STOP",
    "subject_shown",
    "TAKE",
    "warn",
    "Window",
    "window_from_args",
    "write_ops_event",
]

DEFAULT_SKEW_MS = 5 * 60 * 1000
"""How far a producer's clock may run ahead of the broker's store time (seek hint margin)."""

def ops_audit_topic(prefix: str) -> str:
    return TopicNames(prefix).ops_audit


# --------------------------------------------------------------------------- time


def parse_time(value: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds from ``value``: epoch ms digits, ``now``, or ISO-8601 with a UTC offset.

    A time without an offset is refused rather than guessed (UTC or JST?).
    """
    text = value.strip()
    if text == "now":
        return now_ms if now_ms is not None else int(time.time() * 1000)
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ConfigError(f"time {value!r}: use ISO-8601 with an offset (2025-04-01T09:00+09:00), "
                          "epoch milliseconds, or 'now'") from None
    if parsed.tzinfo is None:
        raise ConfigError(f"time {value!r} has no UTC offset: add one, e.g. +09:00 (JST) or Z (UTC)")
    return int(parsed.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """Record timestamps in ``[start_ms, end_ms)`` and offsets in ``[from_offset, to_offset)``."""

    start_ms: int | None = None
    end_ms: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def __post_init__(self) -> None:
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ConfigError("the window is empty: --to must be after --from")
        if self.from_offset is not None and self.to_offset is not None and self.to_offset <= self.from_offset:
            raise ConfigError("the offset range is empty: --to-offset must be above --from-offset")

    def contains(self, timestamp_ms: int, offset: int) -> bool:
        return (
            (self.start_ms is None or timestamp_ms >= self.start_ms)
            and (self.end_ms is None or timestamp_ms < self.end_ms)
            and (self.from_offset is None or offset >= self.from_offset)
            and (self.to_offset is None or offset < self.to_offset)
        )

    def past(self, timestamp_ms: int, offset: int, skew_ms: int = DEFAULT_SKEW_MS) -> bool:
        """True once a scan can stop: beyond the offset range, or a timestamp beyond the end plus skew.

        Timestamps are not ordered within a partition (each producer stamps its
        own), so the scan runs ``skew_ms`` past ``end_ms`` before giving up.
        """
        if self.to_offset is not None and offset >= self.to_offset:
            return True
        return self.end_ms is not None and timestamp_ms >= self.end_ms + skew_ms

    def to_json(self) -> dict[str, Any]:
        return {"from": iso(self.start_ms), "to": iso(self.end_ms), "from_ms": self.start_ms, "to_ms": self.end_ms,
                "from_offset": self.from_offset, "to_offset": self.to_offset}


TAKE, SKIP, STOP = "take", "skip", "stop"


def classify(window: Window, timestamp_ms: int, offset: int, skew_ms: int = DEFAULT_SKEW_MS) -> str:
    """What a scan does with one record of a partition read in offset order: take, skip or stop."""
    if window.past(timestamp_ms, offset, skew_ms):
        return STOP
    return TAKE if window.contains(timestamp_ms, offset) else SKIP


# --------------------------------------------------------------------------- safe rendering


def subject_shown(subject: str) -> str:
    """What ops tools show of a subject token: whether there is one, nothing of it.

    Even a prefix of a token is a handle on one person: two records with the same prefix on the
    ingress topic and an inbox would join that person's tokens of two participants.
    """
    return "present" if subject else "none"


def renkei_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Only the platform's own ``renkei.*`` headers; anything else may hold anything."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        if name.startswith("renkei."):
            out[name] = (value or b"").decode("utf-8", "replace")
    return out


# --------------------------------------------------------------------------- scanning


async def start_offset(consumer: Any, tp: Any, window: Window, skew_ms: int = DEFAULT_SKEW_MS, *,
                       kafka: KafkaSettings | None = None) -> int:
    """Where a scan of ``window`` begins (at least the window's offset bound).

    Apache Kafka (``kafka`` given, not Tansu): the first offset whose record time is at or after
    the start, or the end when none is. Otherwise a hint minus ``skew_ms``, guarded, or the bound.
    """
    floor = window.from_offset or 0
    if window.start_ms is None:
        return floor
    if kafka is not None and not kafka.tansu:
        found = (await consumer.offsets_for_times({tp: window.start_ms})).get(tp)
        at = found.offset if found is not None else (await consumer.end_offsets([tp]))[tp]
        return max(floor, at)
    hint = (await consumer.offsets_for_times({tp: max(0, window.start_ms - skew_ms)})).get(tp)
    if hint is None or hint.timestamp is None or hint.timestamp < 0:
        return floor  # no usable hint (Tansu: offset 0, ts -1 past the end): scan from the floor
    return max(floor, hint.offset)


# --------------------------------------------------------------------------- audit trail


@dataclass(frozen=True)
class OpsEvent:
    """One ops action, as written to ``<prefix>.audit.ops`` (JSON; shape in docs/operations.md)."""

    what: str  # replay | rewind | redrive
    reason: str
    window: dict[str, Any]
    counts: dict[str, Any]
    detail: dict[str, Any]
    dry_run: bool
    id: str = ""
    who: str = ""
    at: str = ""

    @staticmethod
    def new(what: str, reason: str, window: dict[str, Any], *, dry_run: bool,
            detail: dict[str, Any] | None = None) -> OpsEvent:
        if not reason or not reason.strip():
            raise ConfigError("--reason is required: say why, it goes into the ops audit trail")
        return OpsEvent(what=what, reason=reason.strip(), window=window, counts={}, detail=detail or {},
                        dry_run=dry_run, id=str(uuid.uuid4()), who=_os_user(), at="")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "who": self.who, "what": self.what, "window": self.window, "reason": self.reason,
                "counts": self.counts, "detail": self.detail, "dry_run": self.dry_run, "at": self.at}


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): the uid is still an answer
        import os

        return f"uid:{os.getuid()}"


async def ensure_ops_audit_topic(settings: Settings) -> str:
    from aiokafka.admin import NewTopic

    from infra.platform.kafka import admin_client

    spec = ops_audit_spec(TopicNames(settings.kafka.topic_prefix))
    name = spec.name
    admin = admin_client(settings)
    await admin.start()
    try:
        if name in set(await admin.list_topics()):
            return name
        response = await admin.create_topics([NewTopic(name, spec.partitions, settings.kafka.replication,
                                                       topic_configs=spec.configs)])
        for topic, code, *rest in response.topic_errors:
            if code not in (0, 36):  # 36: created concurrently
                raise StackError(f"creating the ops audit topic {topic} failed: error {code} {rest[0] if rest else ''}")
        return name
    finally:
        await admin.close()


async def write_ops_event(settings: Settings, producer: Any, event: OpsEvent, counts: dict[str, Any]) -> dict:
    """Append ``event`` with its final counts to the ops audit topic; returns what was written."""
    topic = await ensure_ops_audit_topic(settings)
    record = event.to_json() | {"counts": counts, "at": iso(int(time.time() * 1000))}
    await producer.send_and_wait(topic, json.dumps(record, ensure_ascii=False).encode(), key=event.id.encode())
    return record


async def audit_before_commit(settings: Settings, producer: Any, event: OpsEvent, counts: dict[str, Any], *,
                              undone: str = "nothing was changed") -> dict:
    """:func:`write_ops_event` inside the change's transaction: if the event cannot be written (broker away),
    StackError — the transaction rolls back, so nothing changes without its audit event."""
    from infra.core.errors import RenkeiError

    try:
        return await write_ops_event(settings, producer, event, counts)
    except RenkeiError:
        raise
    except Exception as exc:
        raise StackError(f"the ops audit event could not be written ({type(exc).__name__}); {undone}") from exc


# --------------------------------------------------------------------------- output


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr (counts, rate, elapsed); silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)

    class _Rate(TransferSpeedColumn):
        def render(self, task: Any) -> Any:
            from rich.text import Text

            return Text(f"{task.speed or 0:,.0f} rec/s", style="progress.data.speed")

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   _Rate(), TimeElapsedColumn(), console=console, disable=not console.is_terminal, transient=False)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1, **fields: bar.update(task, advance=n, **fields)


def emit(args: argparse.Namespace, obj: dict[str, Any], title: str, columns: list[str],
         rows: list[list[Any]], footer: str | None = None) -> None:
    from infra.core.console import console, print_json, table

    if args.json:
        print_json(obj)
        return
    table(title, columns, rows)
    if footer:
        console().print(footer)


def warn(message: str) -> None:
    sys.stderr.write(f"renkei: {message}\n")


# --------------------------------------------------------------------------- CLI arguments


def add_window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_time", help="window start (ISO-8601 with offset, epoch ms, or now)")
    p.add_argument("--to", dest="to_time", help="window end, exclusive (default: no end)")
    p.add_argument("--from-offset", dest="from_offset", type=int, help="lowest offset per partition")
    p.add_argument("--to-offset", dest="to_offset", type=int, help="offset bound per partition, exclusive")
    p.add_argument("--clock-skew", dest="skew_ms", type=int, default=DEFAULT_SKEW_MS,
                   help="ms a producer clock may run ahead of the broker (seek margin; default 300000)")


def window_from_args(args: argparse.Namespace) -> Window:
    now = int(time.time() * 1000)
    return Window(
        start_ms=parse_time(args.from_time, now_ms=now) if getattr(args, "from_time", None) else None,
        end_ms=parse_time(args.to_time, now_ms=now) if getattr(args, "to_time", None) else None,
        from_offset=getattr(args, "from_offset", None),
        to_offset=getattr(args, "to_offset", None),
    )


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", help="full topic name (e.g. renkei.hub.rejected)")
    p.add_argument("--partition", type=int, help="one partition (default: all)")
    p.add_argument("--from-offset", dest="from_offset", type=int, default=0, help="first offset per partition")
    p.add_argument("--limit", type=int, default=50, help="records to show in all (default 50)")


def lag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", help="one consumer group (default: every group)")


def dlq_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "redrive"])
    p.add_argument("--reason-code", dest="reason_code", help="only dead letters with this reason code")
    p.add_argument("--since", help="only dead letters written at/after this time")
    p.add_argument("--limit", type=int, help="list at most this many")
    p.add_argument("--reason", help="redrive: why (required; goes into the ops audit trail)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="redrive: count, produce nothing")


def replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", required=True, help="source topic")
    add_window_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--into", help="re-produce the window's records into this topic")
    target.add_argument("--rewind-group", dest="rewind_group",
                        help="move this consumer group's committed offsets back to --from")
    p.add_argument("--evict-stale-members", dest="evict_stale", action="store_true",
                   help="rewind: the group lists members you know are stopped (the embedded broker keeps "
                        "members that left): join the group to evict them; refused if one is still alive")
    p.add_argument("--reason", required=True, help="why (required; goes into the ops audit trail)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print counts per partition only")
