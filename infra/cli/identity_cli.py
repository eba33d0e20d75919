"""``renkei identity relink --old - --new - --reason WHY [--notice REF]``: 番号変更, an ops command of the hub.

A person's leaked My Number was replaced; from now on the new number gets the person's existing tokens
and the old one is refused (infra.domain.identity).  Both numbers are read from standard input, old first (a
terminal prompts without echo), never from the command line, and never printed, logged or stored.

Who may: the hub's operator — the command needs the token authority's secret (the hub's key store and its
passphrase) and the hub's PostgreSQL role, which no participant holds (the ops role only reads).  The
change comes from J-LIS's notification (``--notice REF`` records its reference; without it the change is
recorded as the operator's own, e.g. a correction).  No bus message can make a change.

Every run writes one event to the ops audit trail (``<prefix>.audit.ops``: who, why, the notice, the
relink id — no number) before the database commits: no event, no change.  Exit codes: 0 done,
2 refused (INVALID_FIELD a number breaks a rule; NUMBER_RETIRED the old number was replaced already;
NUMBER_IN_USE the new number is linked already), 1 the stack is away.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from infra.core.settings import Settings

__all__ = ["register"]


def register(add: Any) -> None:
    """Add ``renkei identity relink`` (``add(name, handler, help)`` from infra.cli)."""
    from infra.core.arguments import common_parser

    group = add("identity", cmd_relink, "番号変更: move a person's tokens from a replaced My Number to the new one")
    sub = group.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")
    text = ("the person of the old My Number is known by the new one from now on (the same tokens, records "
            "and registrations); the old number is refused. Both numbers on standard input; audited")
    p = sub.add_parser("relink", parents=[common_parser()], help=text, description=text)
    p.set_defaults(handler=cmd_relink)
    p.add_argument("--old", required=True, metavar="-", help="`-`: the replaced My Number, read from standard input")
    p.add_argument("--new", required=True, metavar="-",
                   help="`-`: the new My Number, read from standard input after the old one")
    p.add_argument("--reason", default=None, help="why (required; it goes into the ops audit trail)")
    p.add_argument("--notice", default=None, metavar="REF",
                   help="the reference of J-LIS's notification of the change (recorded; without it the change "
                        "is recorded as the operator's own)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up (nothing changed) after S seconds without the database or the broker (60)")


async def cmd_relink(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.commands import normalise_my_number, read_secret
    from infra.core.console import print_json, table
    from infra.core.errors import Rejection, StackError, ValidationError
    from infra.ops import OpsEvent
    from infra.platform.endpoints import resolve_running
    from infra.platform.keystore import KeyStore

    if args.old != "-" or args.new != "-":
        return _refused(args, "INVALID_FIELD", "--old - --new -: the numbers are read from standard input only "
                                               "(never from a command line)")
    event = OpsEvent.new("identity-relink", args.reason or "", {}, dry_run=False,
                         detail={"via": "jlis-notice" if args.notice else "operator", "notice": args.notice})
    try:
        old = normalise_my_number(read_secret("Old My Number: "))
        new = normalise_my_number(read_secret("New My Number: "))
    except ValidationError as exc:
        return _refused(args, exc.code, exc.message)
    authority = KeyStore.for_settings(settings).token_authority()  # the hub's operator only: no secret, no change
    settings = resolve_running(settings)
    try:
        async with asyncio.timeout(args.timeout):
            relink_id, audit = await _relink(settings, authority, old, new, event)
    except TimeoutError:
        raise StackError(f"no answer from the database or the broker within {args.timeout:g} s; nothing was "
                         "changed") from None
    except Rejection as exc:
        return _refused(args, exc.code, exc.message)
    report = {"command": "identity relink", "status": "DONE", "reason": None, "relink_id": relink_id,
              "via": event.detail["via"], "notice": args.notice, "audit": {"id": audit["id"]}}
    if args.json:
        print_json(report)
    else:
        table("番号変更: the person is known by the new number; the old one is refused",
               ["relink", "via", "notice", "audit event"], [[relink_id, report["via"], args.notice, audit["id"]]])
    return 0


def _refused(args: argparse.Namespace, code: str, message: str) -> int:
    import sys

    from infra.core.console import print_json

    if args.json:
        print_json({"command": "identity relink", "status": "REJECTED", "reason": code, "detail": message,
                     "relink_id": None})
    print(f"renkei: identity relink rejected: {code} ({message})", file=sys.stderr)
    return 2


async def _relink(settings: Settings, authority: Any, old: str, new: str, event: Any) -> tuple[int, dict]:
    """Check and write the change in one transaction (the table locked: changes one at a time); the audit
    event is written before it commits."""
    import asyncpg

    from infra.core.errors import StackError
    from infra.domain.identity import IDENTITY_MIGRATIONS, NumberChanges
    from infra.ops import audit_before_commit
    from infra.platform.kafka import producer as make_producer
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import migrate

    try:
        conn = await asyncpg.connect(component_dsn(settings, "hub"))  # the table's owner: the hub's role
    except (OSError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot reach the hub's PostgreSQL ({type(exc).__name__})") from exc
    producer = make_producer(settings)
    try:
        await migrate(conn, "hub-identity", IDENTITY_MIGRATIONS)
        await producer.start()
        async with conn.transaction():
            await conn.execute("LOCK TABLE identity_relinks IN SHARE ROW EXCLUSIVE MODE")
            changes = NumberChanges(authority)
            await changes.refresh(conn)
            row = changes.relink(old, new)  # Rejection: NUMBER_RETIRED, NUMBER_IN_USE
            relink_id = await conn.fetchval(
                "INSERT INTO identity_relinks (retired_key, current_key, person, via, notice, actor, reason, "
                "audit_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::uuid) RETURNING id",
                row.retired_key, row.current_key, row.person, event.detail["via"], event.detail["notice"],
                event.who, event.reason, event.id)
            audit = await audit_before_commit(settings, producer, event, {"relink_id": relink_id, "status": "done"})
    finally:
        await producer.stop()
        await conn.close()
    return relink_id, audit
