"""Simulated banks for the embedded world: many bank identities served by one process.

Each bank has its own keys, inbox topic and token space; their accounts live
in one PostgreSQL table keyed by bank code.  They answer account existence
checks (口座実在性確認) against their accounts and holder names, and record the
registry's answers to their bank-channel registrations (STEP3).  The
connectors issue turns this into real bridges (batch files, HTTP); the
handlers here are the bank's side of the protocol.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from infra.participants import load_participants
from infra.settings import Settings
from infra.validation import validate_bank_account
from schemas import types as T
from streams.participant import Context, ParticipantRuntime

log = logging.getLogger("renkei.bank")

BANK_MIGRATIONS = [
    """
    CREATE TABLE bank_accounts (
        bank_code      text NOT NULL,
        branch_code    text NOT NULL,
        account_type   text NOT NULL,
        account_number text NOT NULL,
        holder_kana    text NOT NULL,
        closed         boolean NOT NULL DEFAULT false,
        PRIMARY KEY (bank_code, branch_code, account_type, account_number)
    );
    CREATE TABLE bank_registration_results (
        participant    text NOT NULL,
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        token          text NOT NULL,
        status         text NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    """,
]


async def open_account(conn: Any, account: dict, *, closed: bool = False) -> None:
    """Seed a (simulated) deposit account."""
    a = validate_bank_account(account)
    await conn.execute(
        "INSERT INTO bank_accounts VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        a["bank_code"], a["branch_code"], a["account_type"], a["account_number"], a["holder_kana"], closed)


async def on_existence_check(ctx: Context) -> None:
    me = ctx.participants.get(ctx.me)
    assert me is not None and me.bank_code is not None
    try:
        a = validate_bank_account(ctx.body["account"])
    except Exception:
        a = None
    row = None
    if a is not None and a["bank_code"] == me.bank_code:
        row = await ctx.conn.fetchrow(
            "SELECT holder_kana, closed FROM bank_accounts WHERE bank_code = $1 AND branch_code = $2 "
            "AND account_type = $3 AND account_number = $4",
            a["bank_code"], a["branch_code"], a["account_type"], a["account_number"])
    if row is None:
        result = "ACCOUNT_NOT_FOUND"
    elif row["closed"]:
        result = "ACCOUNT_CLOSED"
    elif row["holder_kana"] != a["holder_kana"]:
        result = "HOLDER_MISMATCH"
    else:
        result = "CONFIRMED"
    ctx.reply(type=T.EXISTENCE_ANSWER,
              body={"bank_code": me.bank_code, "result": result, "answered_at": datetime.now(UTC)})


async def on_registration_result(ctx: Context) -> None:
    await ctx.conn.execute(
        "INSERT INTO bank_registration_results (participant, message_id, correlation_id, token, status) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        ctx.me, ctx.meta.message_id, ctx.meta.correlation_id, ctx.meta.subject, ctx.body["status"])


HANDLERS = {
    T.EXISTENCE_CHECK: on_existence_check,
    T.REGISTRATION_RESULT: on_registration_result,
}


def bank_runtime(settings: Settings, bank_ids: list[str] | None = None, *, group: str | None = None) -> ParticipantRuntime:
    if bank_ids is None:
        bank_ids = [p.id for p in load_participants(settings.participants_file, banks=settings.banks).banks()]
    return ParticipantRuntime(settings, bank_ids, HANDLERS, group=group or f"{settings.kafka.topic_prefix}.banks",
                              migrations={"bank-sim": BANK_MIGRATIONS})


async def serve(settings: Settings) -> None:
    runtime = bank_runtime(settings)
    await runtime.start()
    log.info("serving %d banks", len(runtime.identity_ids))
    try:
        await asyncio.Event().wait()
    finally:
        await runtime.stop()


def main(argv: list[str] | None = None) -> None:
    from infra.cli import worker_settings
    from streams.app import serve_until_signal

    settings = worker_settings(argv, participant_id="banks")
    serve_until_signal(serve(settings), settings.log_level)


if __name__ == "__main__":
    main()
