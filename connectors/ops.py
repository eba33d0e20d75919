"""``renkei connector …``: operating the connectors — their dead letters and re-drive.

``renkei connector dlq list`` shows the dead letters a connector kept in its own database
(``connector_dead_letters``: connector, direction, ref, reason code, detail), with the state of the
delivery behind a sink dead letter and how often the item was re-driven before.  Metadata only: a
delivery's payload (an account, a subject token) is never read or printed.

``renkei connector dlq redrive --connector NAME (--id ID… | --reason R) --reason-text WHY`` puts
dead-lettered items back where the running connector takes them again:

- *sink* (a delivery the channel did not take: bank endpoint down past the last attempt, a 4xx):
  the ``DEAD`` delivery becomes ``PENDING`` with its attempts reset, due now; the running
  connector's delivery loop hands it to the channel again (the same message id, so the channel's
  idempotency key is the same);
- *source*: the adapter decides (:meth:`connectors.runtime.ChannelAdapter.redrive_source`): an
  agency outbox row becomes ``PENDING`` again; a bank file rejected as a whole is refused — the
  bank has it in ``REJ_<name>.csv`` and resubmits a corrected file.

Every re-drive (refusals too) is kept in ``connector_redrives`` (who, why, the ops event id,
outcome) and the dead letter is closed (``redriven_at``) — nothing is overwritten; an item that
fails again gets a new dead letter.  One ops audit event goes to ``<prefix>.audit.ops``
(``what: "redrive"``, as ``renkei dlq redrive`` writes) before the database commits: no event,
no re-drive.  ``--dry-run`` does the same work in a transaction that is rolled back (the audit
event is written, flagged ``dry_run``).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from infra.core.errors import ConfigError, StackError
from infra.core.settings import Settings

ADAPTER_MODULES = ("connectors.agency", "connectors.bankfiles", "connectors.bankhttp", "connectors.portal")
"""Modules whose channel adapters may own dead letters (their ``redrive_source`` decides source items)."""

LIST_COLUMNS = ["id", "at", "connector", "dir", "ref", "reason", "detail", "delivery", "attempts", "earlier re-drives",
                "re-driven at"]


def register(add: Any, common: Any) -> None:
    """Add the ``connector`` command group to the ``renkei`` parser (``add(name, handler, help)``)."""
    connector = add("connector", cmd_connector, "operate the connectors: dead letters and their re-drive")
    groups = connector.add_subparsers(dest="connector_command", required=True, metavar="GROUP")
    dlq = groups.add_parser("dlq", parents=[common], help="the connectors' dead letters (metadata only)",
                            description="the connectors' dead letters, from the connector's database "
                                        "(--participant-id: the connector's participant)")
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="open dead letters, oldest first",
                                 description="open dead letters (not re-driven), oldest first; never a payload")
    listing.add_argument("--connector", help="one connector (adapter name: agency, bank-files, bank-http, portal)")
    listing.add_argument("--reason", help="one reason code (e.g. CHANNEL_UNAVAILABLE)")
    listing.add_argument("--limit", type=int, default=50, help="at most N dead letters (default 50)")
    listing.add_argument("--all", dest="include_redriven", action="store_true",
                         help="also the dead letters already re-driven")
    redrive = actions.add_parser(
        "redrive", parents=[common], help="put dead-lettered items back to the connector",
        description="sink deliveries go back to PENDING (attempts reset); source items as their adapter allows")
    redrive.add_argument("--connector", required=True, help="the connector whose dead letters to re-drive")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", type=int, nargs="+", metavar="ID", help="dead letter ids (from list)")
    which.add_argument("--reason", help="every open dead letter of the connector with this reason code")
    redrive.add_argument("--reason-text", dest="reason_text", required=True,
                         help="why (required; kept with each re-drive and in the ops audit trail)")
    redrive.add_argument("--dry-run", dest="dry_run", action="store_true",
                         help="report what would be re-driven; change nothing")


async def cmd_connector(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import emit
    from infra.platform.endpoints import resolve_running

    settings = resolve_running(settings)
    if args.dlq_action == "list":
        report = await list_dead_letters(settings, connector=args.connector, reason=args.reason, limit=args.limit,
                                         include_redriven=args.include_redriven)
        emit(args, report, "Connector dead letters", LIST_COLUMNS, [_list_row(d) for d in report["dead_letters"]],
              f"{report['count']} dead letter(s) shown; open by connector: {report['open'] or 'none'}")
        return 0
    report = await redrive(settings, connector=args.connector, ids=args.ids, reason=args.reason,
                           why=args.reason_text, dry_run=args.dry_run)
    verb = "would be re-driven" if args.dry_run else "re-driven"
    emit(args, report, f"Re-drive of {args.connector} dead letters" + (" (dry run)" if args.dry_run else ""),
          ["id", "dir", "ref", "reason", "outcome", "message"],
          [[i["id"], i["direction"], i["ref"], i["reason"], i["outcome"], i["message"]] for i in report["items"]],
          f"{report['matched']} matched, {report['redriven']} {verb}, {report['refused']} refused; "
          f"audit event {report['audit']['id']}")
    return 0 if report["refused"] == 0 else 1


# --------------------------------------------------------------------------- list


async def list_dead_letters(settings: Settings, *, connector: str | None = None, reason: str | None = None,
                            limit: int = 50, include_redriven: bool = False) -> dict[str, Any]:
    """Dead letters with their delivery's state and earlier re-drives (JSON shape in docs/cli.md)."""
    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    conn = await _connect(settings)
    try:
        rows = await conn.fetch(
            f"{_SELECT} WHERE ($1::text IS NULL OR d.connector = $1) AND ($2::text IS NULL OR d.reason = $2) "
            "AND ($3 OR d.redriven_at IS NULL) ORDER BY d.id LIMIT $4", connector, reason, include_redriven, limit)
        open_counts = {r["connector"]: r["n"] for r in await conn.fetch(
            "SELECT connector, count(*) AS n FROM connector_dead_letters WHERE redriven_at IS NULL "
            "GROUP BY connector ORDER BY connector")}
    finally:
        await conn.close()
    letters = [_dead_letter(r) for r in rows]
    by_reason: dict[str, int] = {}
    for d in letters:
        by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
    return {"dead_letters": letters, "count": len(letters), "by_reason": by_reason, "open": open_counts}


_SELECT = """
SELECT d.id, d.at, d.connector, d.direction, d.ref, d.reason, d.detail, d.redriven_at, d.delivery_id,
       v.status AS delivery_status, v.attempts AS delivery_attempts,
       (SELECT count(*) FROM connector_dead_letters e WHERE e.connector = d.connector AND e.ref = d.ref
        AND e.id < d.id AND e.redriven_at IS NOT NULL) AS earlier_redrives
FROM connector_dead_letters d LEFT JOIN connector_deliveries v ON v.id = d.delivery_id
"""


def _dead_letter(r: Any) -> dict[str, Any]:
    delivery = None
    if r["delivery_id"] is not None:
        delivery = {"id": r["delivery_id"], "status": r["delivery_status"], "attempts": r["delivery_attempts"]}
    return {"id": r["id"], "at": _iso(r["at"]), "connector": r["connector"], "direction": r["direction"],
            "ref": r["ref"], "reason": r["reason"], "detail": r["detail"], "delivery": delivery,
            "redriven_at": _iso(r["redriven_at"]), "earlier_redrives": r["earlier_redrives"]}


def _list_row(d: dict[str, Any]) -> list[Any]:
    delivery = d["delivery"] or {}
    return [d["id"], d["at"], d["connector"], d["direction"], d["ref"], d["reason"], d["detail"],
            delivery.get("status"), delivery.get("attempts"), d["earlier_redrives"], d["redriven_at"]]


# --------------------------------------------------------------------------- redrive


async def redrive(settings: Settings, *, connector: str, ids: list[int] | None = None, reason: str | None = None,
                  why: str, dry_run: bool = False) -> dict[str, Any]:
    """Re-drive the open dead letters ``ids`` (or all with ``reason``) of ``connector``; see the module docstring."""
    from infra.ops import OpsEvent

    if not ids and not reason:
        raise ConfigError("say which dead letters: --id ID… or --reason CODE")
    event = OpsEvent.new("redrive", why, {"connector": connector, "reason_code": reason, "ids": ids},
                         dry_run=dry_run, detail={"table": "connector_dead_letters", "connector": connector})
    adapters = adapter_classes()
    conn = await _connect(settings)
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            known = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM connector_dead_letters WHERE connector = $1)",
                                        connector)
            if not known and connector not in adapters:
                raise ConfigError(f"no connector named {connector!r} (adapters: {', '.join(sorted(adapters))})")
            rows = await conn.fetch(
                f"{_SELECT} WHERE d.connector = $1 AND (d.id = ANY($2::bigint[]) OR ($2 IS NULL AND d.reason = $3)) "
                "ORDER BY d.id FOR UPDATE OF d", connector, ids, reason)
            items = [await _redrive_one(conn, r, adapters.get(connector), event) for r in rows]
            found = {r["id"] for r in rows}
            items += [{"id": i, "direction": None, "ref": None, "reason": None, "outcome": "refused",
                       "message": f"no dead letter {i} of connector {connector}"} for i in ids or [] if i not in found]
            counts = {"matched": len(rows), "redriven": sum(i["outcome"] == "redriven" for i in items),
                      "refused": sum(i["outcome"] == "refused" for i in items)}
            audit = await _audit(settings, event, {**counts, "status": "done"})
        except BaseException:
            await tx.rollback()
            raise
        if dry_run:
            await tx.rollback()
        else:
            await tx.commit()
    finally:
        await conn.close()
    return {"connector": connector, "selection": {"ids": ids, "reason": reason}, "dry_run": dry_run, **counts,
            "items": items, "audit": audit}


async def _redrive_one(conn: Any, r: Any, adapter: Any, event: Any) -> dict[str, Any]:
    from connectors.runtime import NotRedrivable

    item = {"id": r["id"], "direction": r["direction"], "ref": r["ref"], "reason": r["reason"]}
    if r["redriven_at"] is not None:
        return {**item, "outcome": "refused", "message": f"already re-driven at {_iso(r['redriven_at'])}"}
    try:
        async with conn.transaction():  # a savepoint: a refusal undoes this item's changes only
            if r["direction"] == "sink":
                await _redrive_delivery(conn, r)
            elif adapter is None:
                raise NotRedrivable(f"no adapter named {r['connector']} is known to this tool")
            else:
                await adapter.redrive_source(conn, r["ref"])
        outcome, message = "redriven", ("delivery back to PENDING, attempts reset" if r["direction"] == "sink"
                                        else "source item pending again")
    except NotRedrivable as exc:
        outcome, message = "refused", str(exc)
    if outcome == "redriven":
        await conn.execute("UPDATE connector_dead_letters SET redriven_at = now() WHERE id = $1", r["id"])
    await conn.execute(
        "INSERT INTO connector_redrives (dead_letter_id, connector, who, reason, ops_event, outcome) "
        "VALUES ($1, $2, $3, $4, $5::uuid, $6)", r["id"], r["connector"], event.who, event.reason, event.id,
        outcome if outcome == "redriven" else f"refused: {message}")
    return {**item, "outcome": outcome, "message": message}


async def _redrive_delivery(conn: Any, r: Any) -> None:
    from connectors.runtime import NotRedrivable

    delivery_id = r["delivery_id"]
    if delivery_id is None:  # a dead letter written before deliveries were linked: its ref is type/message-id
        message_id = r["ref"].rpartition("/")[2]
        delivery_id = await conn.fetchval("SELECT id FROM connector_deliveries WHERE connector = $1 "
                                          "AND message_id::text = $2", r["connector"], message_id)
        if delivery_id is None:
            raise NotRedrivable("its delivery is not in this database")
    d = await conn.fetchrow("SELECT status, payload_ct IS NULL AND coalesce(payload, '{}'::jsonb) = '{}'::jsonb "
                            "AS cleared FROM connector_deliveries "
                            "WHERE id = $1 FOR UPDATE", delivery_id)
    if d["status"] != "DEAD":
        raise NotRedrivable(f"its delivery is {d['status']} now")
    if d["cleared"]:
        raise NotRedrivable("its payload was cleared when it died (before re-drive existed); the sender must "
                            "send the message again")
    await conn.execute("UPDATE connector_deliveries SET status = 'PENDING', attempts = 0, next_attempt_at = now() "
                       "WHERE id = $1", delivery_id)


async def _audit(settings: Settings, event: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """Write the ops audit event (before the database commits: no event, no re-drive)."""
    from infra.ops import ops_audit_topic, write_ops_event
    from infra.platform.kafka import producer as make_producer

    producer = make_producer(settings)
    try:
        await producer.start()
        record = await write_ops_event(settings, producer, event, counts)
    except StackError:
        raise
    except Exception as exc:  # broker away: nothing is re-driven without its audit event
        raise StackError(f"the ops audit event could not be written ({type(exc).__name__}); nothing was "
                         "re-driven") from exc
    finally:
        await producer.stop()
    return {"id": record["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}


# --------------------------------------------------------------------------- shared


def adapter_classes() -> dict[str, Any]:
    """Channel adapter classes by connector name (``ChannelAdapter.name``)."""
    from connectors.runtime import ChannelAdapter

    for module in ADAPTER_MODULES:
        importlib.import_module(module)
    found: dict[str, Any] = {}
    todo = list(ChannelAdapter.__subclasses__())
    while todo:
        cls = todo.pop()
        found.setdefault(cls.name, cls)
        todo += cls.__subclasses__()
    return found


async def _connect(settings: Settings) -> Any:
    import asyncpg

    from infra.platform.pgdsn import component_dsn

    try:
        conn = await asyncpg.connect(component_dsn(settings, settings.participant_id))
    except (OSError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot reach the connector's PostgreSQL ({type(exc).__name__})") from exc
    if await conn.fetchval("SELECT to_regclass('connector_redrives')") is None:
        await conn.close()
        raise ConfigError(f"{settings.participant_id}'s database has no connector tables (or they predate "
                          "re-drive): name the connector's participant with --participant-id (e.g. portal, "
                          "agency-nta, bank-9003)")
    return conn


def _iso(value: Any) -> str | None:
    """A database time as the ops tools print times (``infra.ops.iso``: UTC, milliseconds, ``Z``)."""
    from infra.ops import iso

    return iso(int(value.timestamp() * 1000)) if value is not None else None
