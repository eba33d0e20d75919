"""``renkei disaster declare|change-period|list``: the registry of declared disasters (an ops command).

A 災害時照会 may be made only under a disaster the Disaster Relief Act applies
to (infra.domain.disasters).  Who may declare one: the platform's operators, on the
machine that reaches the platform's database and broker, when the Cabinet
Office announces that the Act applies — never a participant (no message type
declares a disaster; DICJ only reads the registry).  Every declaration and
every change of period writes one event to the ops audit trail
(``<prefix>.audit.ops``: who, why, what) before the database commits: no
event, no change.  Exit codes: 0 done, 1 the stack is away, 2 a usage error
(no ``--reason``, a bad id, area or date, an id taken by another declaration).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import date
from typing import Any

from infra.core.errors import ConfigError, Rejection
from infra.core.settings import Settings

__all__ = ["register"]


def register(add: Any) -> None:
    """Add ``renkei disaster …`` to the ``renkei`` parser (``add(name, handler, help)`` from infra.cli)."""
    from infra.core.arguments import common_parser

    group = add("disaster", cmd_list, "declared disasters (災害救助法): the only ones a disaster lookup may be made under")
    sub = group.add_subparsers(dest="disaster_command", required=True, metavar="COMMAND")
    text = "declare a disaster the Disaster Relief Act applies to (audited in the ops audit trail)"
    p = sub.add_parser("declare", parents=[common_parser()], help=text, description=text)
    p.set_defaults(handler=cmd_declare)
    p.add_argument("--id", dest="disaster_id", required=True, help="the disaster's id (e.g. 2026-NOTO-01)")
    p.add_argument("--name", required=True, help="its name (e.g. '令和8年能登半島地震')")
    p.add_argument("--areas", required=True, metavar="CODES",
                   help="areas it covers: prefecture (17) or municipality (17204) codes, comma-separated")
    p.add_argument("--from", dest="applies_from", required=True, metavar="DATE",
                   help="first day lookups may be made under it (YYYY-MM-DD, JST)")
    p.add_argument("--until", dest="applies_until", required=True, metavar="DATE",
                   help="last day lookups may be made under it (YYYY-MM-DD, JST)")
    p.add_argument("--reason", default=None, help="why, e.g. the announcement (required; into the ops audit trail)")
    text = "end a declared disaster's lookup period early, or extend it (audited in the ops audit trail)"
    p = sub.add_parser("change-period", parents=[common_parser()], help=text, description=text)
    p.set_defaults(handler=cmd_change_period)
    p.add_argument("--id", dest="disaster_id", required=True, help="the disaster's id")
    p.add_argument("--until", dest="applies_until", required=True, metavar="DATE", help="the new last day (JST)")
    p.add_argument("--reason", default=None, help="why (required; into the ops audit trail)")
    text = "list the declared disasters"
    p = sub.add_parser("list", parents=[common_parser()], help=text, description=text)
    p.set_defaults(handler=cmd_list)
    for p in sub.choices.values():
        p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the platform's database and broker (default 30)")


def _date(value: str, flag: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"{flag}: a date, YYYY-MM-DD") from None


def _rows(found: list[Any]) -> list[list[Any]]:
    from infra.domain.disasters import today_jst

    today = today_jst()
    return [[d.id, d.name, " ".join(d.areas), d.applies_from.isoformat(), d.applies_until.isoformat(),
             "yes" if d.applies_from <= today <= d.applies_until else "no"] for d in found]


COLUMNS = ["id", "name", "areas", "from", "until", "open today"]


async def _audited(settings: Settings, what: str, reason: str | None, disaster_id: str, detail: dict[str, Any],
                   change: Any, *, timeout: float) -> tuple[Any, dict]:
    """Run ``change(conn, who, reason, event_id)`` in one transaction that commits only after the ops
    audit event was written."""
    import asyncpg

    from infra.core.errors import StackError
    from infra.domain.disasters import DISASTER_MIGRATIONS
    from infra.ops import OpsEvent, audit_before_commit
    from infra.platform.kafka import producer as make_producer
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import migrate

    event = OpsEvent.new(what, reason or "", {"disaster": disaster_id}, dry_run=False, detail=detail)
    try:
        conn = await asyncpg.connect(component_dsn(settings, "dicj"), timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackError(f"cannot reach the platform's PostgreSQL ({type(exc).__name__})") from exc
    producer = make_producer(settings)
    try:
        await migrate(conn, "disasters", DISASTER_MIGRATIONS)
        await producer.start()
        async with conn.transaction():
            import uuid

            result = await change(conn, event.who, event.reason, uuid.UUID(event.id))
            audit = await asyncio.wait_for(audit_before_commit(settings, producer, event, {"status": "done"}), timeout)
    finally:
        await producer.stop()
        await conn.close()
    return result, audit


async def cmd_declare(settings: Settings, args: argparse.Namespace) -> int:
    from infra.domain.disasters import Disaster, declare, validate_areas, validate_disaster_id
    from infra.ops import emit, ops_audit_topic
    from infra.platform.endpoints import resolve_running

    try:
        disaster = Disaster(validate_disaster_id(args.disaster_id, field="--id"), args.name.strip(),
                            validate_areas(a for a in args.areas.replace(",", " ").split()),
                            _date(args.applies_from, "--from"), _date(args.applies_until, "--until"))
    except Rejection as exc:
        raise ConfigError(exc.message) from None
    if not disaster.name:
        raise ConfigError("--name: the disaster's name")
    if disaster.applies_until < disaster.applies_from:
        raise ConfigError("--until: the period ends before it begins")
    settings = resolve_running(settings)

    async def change(conn: Any, who: str, reason: str, event: Any) -> bool:
        try:
            return await declare(conn, disaster, who=who, reason=reason, audit_event=event)
        except Rejection as exc:
            raise ConfigError(f"--id {disaster.id}: {exc.message}") from None

    created, audit = await _audited(settings, "disaster-declare", args.reason, disaster.id, disaster.to_json(),
                                    change, timeout=args.timeout)
    report = {"status": "DONE", "created": created, "disaster": disaster.to_json(),
              "audit": {"id": audit["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}}
    emit(args, report, "Declared disaster", COLUMNS, _rows([disaster]),
         footer=f"{'declared' if created else 'already declared, unchanged'}; audit event {audit['id']}")
    return 0


async def cmd_change_period(settings: Settings, args: argparse.Namespace) -> int:
    from infra.domain.disasters import change_period, validate_disaster_id
    from infra.ops import emit, ops_audit_topic
    from infra.platform.endpoints import resolve_running

    try:
        disaster_id = validate_disaster_id(args.disaster_id, field="--id")
    except Rejection as exc:
        raise ConfigError(exc.message) from None
    until = _date(args.applies_until, "--until")
    settings = resolve_running(settings)

    async def change(conn: Any, who: str, reason: str, event: Any) -> Any:
        try:
            return await change_period(conn, disaster_id, until, who=who, reason=reason, audit_event=event)
        except Rejection as exc:
            raise ConfigError(f"--id {disaster_id}: {exc.code}: {exc.message}") from None

    disaster, audit = await _audited(settings, "disaster-change-period", args.reason, disaster_id,
                                     {"applies_until": until.isoformat()}, change, timeout=args.timeout)
    report = {"status": "DONE", "created": False, "disaster": disaster.to_json(),
              "audit": {"id": audit["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}}
    emit(args, report, "Disaster period changed", COLUMNS, _rows([disaster]), footer=f"audit event {audit['id']}")
    return 0


async def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from infra.core.errors import StackError
    from infra.domain.disasters import DISASTER_MIGRATIONS, disasters
    from infra.ops import emit
    from infra.platform.endpoints import resolve_running
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import migrate

    settings = resolve_running(settings)
    try:
        conn = await asyncpg.connect(component_dsn(settings, "dicj"), timeout=args.timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackError(f"cannot reach the platform's PostgreSQL ({type(exc).__name__})") from exc
    try:
        await migrate(conn, "disasters", DISASTER_MIGRATIONS)
        found = await disasters(conn)
    finally:
        await conn.close()
    emit(args, {"disasters": [d.to_json() for d in found]}, "Declared disasters (災害救助法)", COLUMNS, _rows(found))
    return 0
