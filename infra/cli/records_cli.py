"""``renkei records purge``: remove provision records older than the retention period (an ops command).

The law keeps provision records (情報提供等記録) for years: ``records_retention_years``
(default 7, the 住基ネット disclosure period).  A purge removes, from every
chain, the records whose exchange happened before ``--before`` — never later
than the retention cutoff, which is 00:00 JST on today's date that many years
ago — and leaves each shortened chain a signed anchor where it now starts, so
the rest still verifies (:meth:`infra.records.provisions.ProvisionStore.purge`).  It
signs with the records key, so it runs where the key store is (beside the hub).

Every run, ``--dry-run`` included, writes one event to the ops audit trail
(``<prefix>.audit.ops``: who, why, the cutoff, the counts) before the database
commits: no event, nothing purged.  Exit codes: 0 done, 1 some chains were left
whole because their oldest records do not verify (kept as evidence; see
``renkei portal records``) or the stack is away, 2 a usage error (``--before``
inside the retention period, no ``--reason``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from infra.core.errors import ConfigError
from infra.core.settings import Settings

__all__ = ["register", "retention_cutoff", "parse_before"]

JST = timezone(timedelta(hours=9), "JST")


def retention_cutoff(years: int, *, now: datetime | None = None) -> datetime:
    """00:00 JST of today's date ``years`` years ago (29 February → 28 February): records before it may go."""
    today = (now or datetime.now(UTC)).astimezone(JST).date()
    try:
        then = today.replace(year=today.year - years)
    except ValueError:  # 29 February in a year that has none
        then = today.replace(year=today.year - years, day=28)
    return datetime.combine(then, time(0), JST)


def parse_before(value: str) -> datetime:
    """``--before``: a date (``2018-04-01``, meaning 00:00 JST) or an ISO-8601 time with a UTC offset."""
    from infra.ops import parse_time

    text = value.strip()
    try:
        return datetime.combine(date.fromisoformat(text), time(0), JST)
    except ValueError:
        pass
    return datetime.fromtimestamp(parse_time(text) / 1000, UTC)


def register(add: Any) -> None:
    """Add ``renkei records purge`` to the ``renkei`` parser (``add(name, handler, help)`` from infra.cli)."""
    from infra.core.arguments import common_parser

    group = add("records", cmd_purge, "provision records (情報提供等記録): remove those past their retention")
    sub = group.add_subparsers(dest="records_command", required=True, metavar="COMMAND")
    text = ("remove the provision records older than --before (at most the retention cutoff), leaving each "
            "chain a signed anchor; audited in the ops audit trail")
    p = sub.add_parser("purge", parents=[common_parser()], help=text, description=text)
    p.set_defaults(handler=cmd_purge)
    p.add_argument("--before", default=None, metavar="DATE",
                   help="remove records of exchanges before this date (00:00 JST) or ISO-8601 time; default and "
                        "latest allowed: the retention cutoff (records_retention_years ago)")
    p.add_argument("--reason", default=None, help="why (required; it goes into the ops audit trail)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="count what would go, remove nothing (still audited)")


async def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import OpsEvent, emit, ops_audit_topic, warn
    from infra.platform.endpoints import resolve_running
    from infra.platform.keystore import KeyStore

    cutoff = retention_cutoff(settings.records_retention_years)
    before = parse_before(args.before) if args.before else cutoff
    if before > cutoff:
        raise ConfigError(f"--before {before.astimezone(JST).isoformat()} is inside the "
                          f"{settings.records_retention_years}-year retention period: the latest allowed is "
                          f"{cutoff.isoformat()} (records_retention_years)")
    event = OpsEvent.new("records-purge", args.reason or "", {"before": before.isoformat()}, dry_run=args.dry_run,
                         detail={"retention_years": settings.records_retention_years,
                                 "cutoff": cutoff.isoformat()})
    key = KeyStore.for_settings(settings).records_key()  # before anything is touched: no key, no purge
    settings = resolve_running(settings)
    result, audit = await _purge(settings, key, before, event, dry_run=args.dry_run)
    report = {"before": before.isoformat(), "cutoff": cutoff.isoformat(),
              "retention_years": settings.records_retention_years, "dry_run": args.dry_run,
              "chains": result.chains, "records": result.records, "kept": result.kept,
              "audit": {"id": audit["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}}
    verb = "would remove" if args.dry_run else "removed"
    emit(args, report, f"Provision records before {before.astimezone(JST).isoformat()}",
         ["chains", "records", "kept whole (do not verify)", "dry run"],
         [[result.chains, result.records, result.kept, args.dry_run]],
         footer=f"{verb} {result.records} record(s) from {result.chains} chain(s); audit event {audit['id']}")
    if result.kept:
        warn(f"{result.kept} chain(s) left whole: their oldest records do not verify (tampering evidence kept)")
        return 1
    return 0


class _DryRun(Exception):
    """Rolls the purge's transaction back after counting."""


async def _purge(settings: Settings, key: Any, before: datetime, event: Any, *, dry_run: bool) -> tuple[Any, dict]:
    """Purge in one transaction; the ops audit event is written before it commits (or rolls back, dry run)."""
    import asyncpg

    from infra.core.errors import RenkeiError, StackError
    from infra.ops import write_ops_event
    from infra.platform.kafka import producer as make_producer
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import create_pool
    from infra.records.provisions import ProvisionStore

    try:
        pool = await create_pool(component_dsn(settings, "hub"), min_size=1, max_size=1)  # the records' owner
    except (OSError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot reach the provision records' PostgreSQL ({type(exc).__name__})") from exc
    producer = make_producer(settings)
    result = audit = None
    try:
        await producer.start()
        async with pool.acquire() as conn, conn.transaction():
            result = await ProvisionStore(pool, key).purge(conn, before=before)
            counts = {"chains": result.chains, "records": result.records, "kept": result.kept,
                      "status": "dry-run" if dry_run else "done"}
            try:
                audit = await write_ops_event(settings, producer, event, counts)
            except RenkeiError:
                raise
            except Exception as exc:  # broker away: nothing is purged without its audit event
                raise StackError(f"the ops audit event could not be written ({type(exc).__name__}); nothing was "
                                 "purged") from exc
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    finally:
        await producer.stop()
        await pool.close()
    return result, audit
