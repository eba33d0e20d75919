"""The registry (公金受取口座登録簿, Digital Agency): one public-funds account per person.

Handles, over its inbox (see docs/architecture.md for the sequences):

- ``registration.request`` — REGISTER / CHANGE / DELETE, filed by the person
  through the portal (STEP1, §3 §6), by an agency entitled by policy alongside
  another procedure (§4), or by the bank that holds the account at its counter
  (STEP3, §8, with the person's consent in the body, recorded).  Who filed it is
  the envelope's verified sender; the rules of who may do what are
  :mod:`streams.registration_rules`.  REGISTER and CHANGE always ask the
  account's bank first (口座実在性確認, ``existence.check``): the bank answers
  from its own customer data — the account exists, is open, and is held by this
  person (its token) — and only CONFIRMED registers.  A failed check changes
  nothing: a failed CHANGE keeps the account registered before.  DELETE removes
  the account and its data key (crypto-shredding).
- ``existence.answer`` — accepted only from the bank that was asked, for a check
  still open; anything else is dead-lettered with its reason.  A check that gets
  no answer within ``registry_check_deadline_s`` is closed by
  :func:`expire_checks` with a TIMEOUT result to whoever asked.
- ``provision.inquiry`` from an agency (STEP2) — answers REGISTERED with the
  account (sealed end to end to the agency), NOT_REGISTERED or BLOCKED; the
  answer's signed envelope states that outcome and the inquiry's procedure,
  so the hub's provision record says what happened.

Every registration result (done or refused, whoever filed it) and every
provision of the account to an agency is also told to the person: a
``person.notice`` to the portal (お知らせ, :mod:`streams.notices`), queued in
the same transaction as the effect, so it is sent once.

People are known only by the registry's own tokens.  Account data is stored
encrypted with a per-person data key (AES-GCM, the token as associated data);
data keys are wrapped with the registry's key-encryption key.  Every effect
runs in the participant runtime's transaction, keyed by message id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.core.errors import ValidationError
from infra.core.settings import Settings
from infra.crypto.envelope import Message
from infra.crypto.sealing import open_sealed, seal
from infra.domain.policy import DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import validate_bank_account, validate_consent
from infra.platform.keystore import REGISTRY_KEK, KeyStore
from schemas import types as msg
from streams.notices import notice
from streams.participant import Context, ParticipantRuntime
from streams.registration_rules import Channel, answer_refusal, channel_of, check_outcome, intake

log = logging.getLogger("renkei.registry")

REGISTRY_ID = "registry"

REGISTRY_MIGRATIONS = [
    """
    CREATE TABLE registry_data_keys (
        token       text PRIMARY KEY,
        wrapped_key bytea NOT NULL
    );
    CREATE TABLE registry_accounts (
        token       text PRIMARY KEY,
        status      text NOT NULL CHECK (status IN ('REGISTERED', 'BLOCKED')),
        account_ct  bytea NOT NULL,
        channel     text NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE registry_pending_checks (
        correlation_id uuid PRIMARY KEY,
        token       text NOT NULL,
        operation   text NOT NULL,
        account_ct  bytea NOT NULL,
        requester   text NOT NULL,
        basis       text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    """,
    # Whose account it is: a check remembers the bank it asked (only that bank may answer) and the channel;
    # it is closed (answered or TIMEOUT), not deleted, so a late or second answer is told apart from one to
    # nothing asked; its account copy is dropped when it closes.  Consents of bank-filed requests are kept.
    """
    ALTER TABLE registry_pending_checks ADD COLUMN bank text, ADD COLUMN channel text,
        ADD COLUMN closed_at timestamptz, ADD COLUMN outcome text;
    CREATE INDEX registry_pending_checks_open ON registry_pending_checks (created_at) WHERE closed_at IS NULL;
    ALTER TABLE registry_accounts ADD COLUMN consent_correlation uuid;
    CREATE TABLE registry_consents (
        correlation_id uuid PRIMARY KEY,
        token          text NOT NULL,
        bank           text NOT NULL,
        operation      text NOT NULL,
        given_by       text NOT NULL,
        method         text NOT NULL,
        given_at       timestamptz NOT NULL,
        evidence_ref   text NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    """,
]


class AccountVault:
    """Per-person data keys, wrapped by the registry's KEK; account data sealed under them (:mod:`infra.crypto.sealing`)."""

    def __init__(self, kek: bytes) -> None:
        self._kek = kek

    async def _data_key(self, conn: Any, token: str, *, create: bool) -> bytes | None:
        wrapped = await conn.fetchval("SELECT wrapped_key FROM registry_data_keys WHERE token = $1", token)
        if wrapped is None:
            if not create:
                return None
            key = AESGCM.generate_key(bit_length=256)
            wrapped = seal(self._kek, key, b"renkei registry data key|" + token.encode())
            await conn.execute("INSERT INTO registry_data_keys (token, wrapped_key) VALUES ($1, $2)", token, wrapped)
            return key
        return open_sealed(self._kek, wrapped, b"renkei registry data key|" + token.encode())

    async def seal(self, conn: Any, token: str, account: dict) -> bytes:
        key = await self._data_key(conn, token, create=True)
        assert key is not None
        return seal(key, json.dumps(account, sort_keys=True).encode(), token.encode())

    async def open(self, conn: Any, token: str, ciphertext: bytes) -> dict | None:
        key = await self._data_key(conn, token, create=False)
        if key is None:
            return None  # shredded
        return json.loads(open_sealed(key, ciphertext, token.encode()))

    @staticmethod
    async def shred(conn: Any, token: str) -> None:
        await conn.execute("DELETE FROM registry_data_keys WHERE token = $1", token)


def _now() -> datetime:
    return datetime.now(UTC)


def _result(operation: str, status: str, detail: str | None = None) -> dict:
    return {"operation": operation, "status": status, "detail": detail, "decided_at": _now()}


class Registry:
    """The registry's handlers; the rules are :mod:`streams.registration_rules`, this wires them to the tables."""

    def __init__(self, vault: AccountVault) -> None:
        self.vault = vault

    def handlers(self) -> dict:
        return {
            msg.REGISTRATION_REQUEST: self.on_registration_request,
            msg.EXISTENCE_ANSWER: self.on_existence_answer,
            msg.PROVISION_INQUIRY: self.on_provision_inquiry,
        }

    async def registered_account(self, ctx: Context, token: str) -> dict | None:
        """The account registered for ``token`` now (None: nothing registered)."""
        row = await ctx.conn.fetchrow("SELECT account_ct FROM registry_accounts WHERE token = $1 FOR UPDATE", token)
        if row is None:
            return None
        return await self.vault.open(ctx.conn, token, row["account_ct"])

    async def registered_bank_code(self, ctx: Context, token: str) -> str | None:
        """The bank code of the account registered for ``token`` now (None: nothing registered)."""
        account = await self.registered_account(ctx, token)
        return None if account is None else account["bank_code"]

    async def on_registration_request(self, ctx: Context) -> None:
        body, meta = ctx.body, ctx.meta
        operation, token = body["operation"], meta.subject
        sender = ctx.participants.get(meta.sender)
        channel = channel_of(sender)  # anyone but the portal, an agency or a bank: dead-lettered UNAUTHORISED
        assert sender is not None

        def refuse(status: str, detail: str | None, account: dict | None = None) -> None:
            """Answer whoever filed it, and tell the person (the result, and the account it concerned)."""
            ctx.reply(type=msg.REGISTRATION_RESULT, body=_result(operation, status, detail))
            ctx.outgoing.append(_registration_notice(operation, status, detail, token, meta.correlation_id,
                                                     meta.legal_basis, meta.sender, account))

        consent = None
        if channel is Channel.BANK_COUNTER:  # STEP3: the person's consent travels with the request, and is kept
            try:
                consent = validate_consent(body.get("consent"), now=meta.created_at)
            except ValidationError as exc:
                return refuse("CONSENT_REQUIRED", f"a bank files a registration only with the person's consent "
                                                  f"({exc.message})")
            await ctx.conn.execute(
                "INSERT INTO registry_consents (correlation_id, token, bank, operation, given_by, method, given_at, "
                "evidence_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                uuid.UUID(meta.correlation_id), token, sender.id, operation, consent["given_by"], consent["method"],
                consent["given_at"], consent["evidence_ref"])
        account = None
        if operation != "DELETE":
            try:
                account = validate_bank_account(body.get("account") or {})
            except ValidationError as exc:
                return refuse("REFUSED", exc.message)
        bank = ctx.participants.by_bank_code(account["bank_code"]) if account is not None else None
        registered = await self.registered_account(ctx, token)
        refusal = intake(channel, operation, sender_bank_code=sender.bank_code,
                         account_bank_code=account["bank_code"] if account else None, account_bank_known=bank is not None,
                         registered_bank_code=registered["bank_code"] if registered else None)
        if refusal is not None:
            return refuse(refusal.status, refusal.detail, account)
        if operation == "DELETE":
            await ctx.conn.execute("DELETE FROM registry_accounts WHERE token = $1", token)
            await self.vault.shred(ctx.conn, token)
            return refuse("DONE", None, registered)  # the person is told which account was deleted
        assert account is not None and bank is not None
        # Hold the request and ask the account's bank (口座実在性確認); only that bank may answer.
        held = await ctx.conn.fetchval(
            "INSERT INTO registry_pending_checks (correlation_id, token, operation, account_ct, requester, basis, bank, "
            "channel) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (correlation_id) DO NOTHING RETURNING 1",
            meta.correlation_id, token, operation, await self.vault.seal(ctx.conn, token, account),
            meta.sender, meta.legal_basis, bank.id, channel.value)
        if held is None:
            return refuse("REFUSED", "another request with this correlation id is being checked; send a new one",
                          account)
        ctx.send(type=msg.EXISTENCE_CHECK, to=bank.id, subject=token, body={"account": account, "requested_at": _now()})

    async def on_existence_answer(self, ctx: Context) -> None:
        pending = await ctx.conn.fetchrow(
            "SELECT * FROM registry_pending_checks WHERE correlation_id = $1 FOR UPDATE", ctx.meta.correlation_id)
        token = pending["token"] if pending is not None else None
        account = None
        if pending is not None and pending["closed_at"] is None:
            account = await self.vault.open(ctx.conn, token, pending["account_ct"])
        asked = None
        if pending is not None:  # checks from before this rule named no bank: the account's bank was asked
            by_code = ctx.participants.by_bank_code(account["bank_code"]) if account else None
            asked = pending["bank"] or (by_code.id if by_code else "")
        refused = answer_refusal(asked=asked, answered_by=ctx.meta.sender,
                                 outcome=pending["outcome"] if pending is not None else None)
        if refused is not None:
            raise refused  # dead-lettered with its reason; the check stays as it was
        assert pending is not None
        result = ctx.body["result"]
        if account is None:  # deleted meanwhile: the data key is gone, and the person asked for deletion
            stored, status, detail = False, "REFUSED", "the registration was deleted while its account was checked"
        else:
            registered_before = await self.registered_bank_code(ctx, token) is not None
            stored, status, detail = check_outcome(result, registered_before=registered_before)
        await ctx.conn.execute(
            "UPDATE registry_pending_checks SET closed_at = now(), outcome = $2, account_ct = '\\x'::bytea "
            "WHERE correlation_id = $1", pending["correlation_id"], result)
        if stored:
            await self._store(ctx, token, account, pending["channel"] or Channel.PORTAL.value,
                              pending["correlation_id"] if pending["channel"] == Channel.BANK_COUNTER.value else None)
        ctx.send(type=msg.REGISTRATION_RESULT, to=pending["requester"], subject=token,
                 body=_result(pending["operation"], status, detail), basis=pending["basis"])
        ctx.outgoing.append(_registration_notice(pending["operation"], status, detail, token,
                                                 str(pending["correlation_id"]), pending["basis"],
                                                 pending["requester"], account))

    async def _store(self, ctx: Context, token: str, account: dict, channel: str,
                     consent_correlation: uuid.UUID | None) -> None:
        await ctx.conn.execute(
            "INSERT INTO registry_accounts (token, status, account_ct, channel, consent_correlation) "
            "VALUES ($1, 'REGISTERED', $2, $3, $4) ON CONFLICT (token) DO UPDATE SET status = 'REGISTERED', "
            "account_ct = $2, channel = $3, consent_correlation = $4, updated_at = now()",
            token, await self.vault.seal(ctx.conn, token, account), channel, consent_correlation)

    async def on_provision_inquiry(self, ctx: Context) -> None:
        row = await ctx.conn.fetchrow("SELECT status, account_ct FROM registry_accounts WHERE token = $1",
                                      ctx.meta.subject)
        account = None
        if row is None:
            status = "NOT_REGISTERED"
        elif row["status"] == "BLOCKED":  # stored blocked before the holder check existed: never provided
            status = "BLOCKED"
        else:
            account = await self.vault.open(ctx.conn, ctx.meta.subject, row["account_ct"])
            status = "REGISTERED" if account is not None else "NOT_REGISTERED"
        # The outcome goes into the signed envelope too: the hub cannot read the body, and the provision
        # record must say what happened (REGISTERED → PROVIDED; NOT_REGISTERED and BLOCKED provide nothing).
        ctx.reply(type=msg.PROVISION_RESPONSE, body={"status": status, "account": account, "answered_at": _now()},
                  outcome=status)
        if account is not None:  # 口座情報の提供: the person is told who received their account, and for what
            # The procedure the hub checked is the signed one (the envelope's), not the body's copy.
            ctx.outgoing.append(notice(
                kind="PROVISION", event=status, status="PROVIDED", subject=ctx.meta.subject,
                reference=ctx.meta.correlation_id, basis=ctx.meta.legal_basis, party=ctx.meta.sender,
                procedure_code=ctx.meta.procedure or ctx.body.get("procedure_code"), purpose=ctx.body.get("purpose"),
                account=account))


async def expire_checks(runtime: ParticipantRuntime, deadline_s: float, *, limit: int = 200) -> int:
    """Close the checks older than ``deadline_s`` that no bank answered: TIMEOUT to whoever asked.

    One transaction: the checks are closed and the results sealed into the outbox together, so a
    crash sends each TIMEOUT once; a bank's answer that comes later is refused (EXPIRED).
    """
    assert runtime.pool is not None
    async with runtime.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE registry_pending_checks SET closed_at = now(), outcome = 'TIMEOUT', account_ct = '\\x'::bytea "
            "WHERE correlation_id IN (SELECT correlation_id FROM registry_pending_checks WHERE closed_at IS NULL "
            "AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
            "RETURNING correlation_id, token, operation, requester, basis, bank", float(deadline_s), limit)
        if rows:
            messages = []
            for r in rows:
                detail = f"{r['bank'] or 'the bank'} did not answer the existence check within {deadline_s:g} s; " \
                         "nothing changed"
                messages.append(Message(
                    body=_result(r["operation"], "TIMEOUT", detail), type=msg.REGISTRATION_RESULT, to=r["requester"],
                    subject=r["token"], data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=r["basis"],
                    correlation_id=str(r["correlation_id"])))
                messages.append(_registration_notice(r["operation"], "TIMEOUT", detail, r["token"],
                                                     str(r["correlation_id"]), r["basis"], r["requester"], None))
            await runtime.send(REGISTRY_ID, messages, conn=conn)
    if rows:
        log.warning("%d existence check(s) got no answer within %g s: TIMEOUT sent", len(rows), deadline_s)
    return len(rows)


def _registration_notice(operation: str, status: str, detail: str | None, token: str, reference: str, basis: str,
                         filed_by: str, account: dict | None) -> Message:
    """The person's notice of one registration result: what was asked, by whom, what came of it."""
    return notice(kind="REGISTRATION", event=operation, status=status, detail=detail, subject=token,
                  reference=reference, basis=basis, party=filed_by, account=account)


def sweep_interval(deadline_s: float) -> float:
    """How often the registry looks for expired checks: a tenth of the deadline, between 1 and 30 s."""
    return min(max(deadline_s / 10, 1.0), 30.0)


def registry_runtime(settings: Settings) -> ParticipantRuntime:
    vault = AccountVault(KeyStore.for_settings(settings).secret(REGISTRY_KEK))
    return ParticipantRuntime(settings, [REGISTRY_ID], Registry(vault).handlers(),
                              group=f"{settings.kafka.topic_prefix}.{REGISTRY_ID}",
                              migrations={"registry": REGISTRY_MIGRATIONS}, worker=REGISTRY_ID)


async def serve(settings: Settings) -> None:
    """The registry worker until cancelled: the participant runtime's own consume loop over its inbox (one
    batch per poll, one transaction, one commit), and the sweep of expired existence checks.

    It ran as a faust agent before (issue 18): faust's ``take_events`` waited up to 20 ms for a batch to
    fill on every poll, its commit timer and agent supervisor ticked while idle, and measured on an idle
    platform it cost the registry more than twice the CPU of the hub's plain loop
    (docs/performance.md). The group is the same, ``<prefix>.registry`` (the ACLs' name); a rolling
    upgrade cannot mix the two in one group (faust's assignor): stop the old worker, then start this one.
    """
    runtime = registry_runtime(settings)
    await runtime.serve_metrics()
    await runtime.start()
    try:
        interval = sweep_interval(settings.registry_check_deadline_s)
        while True:
            await asyncio.sleep(interval)
            try:
                await expire_checks(runtime, settings.registry_check_deadline_s)
            except Exception as exc:  # database away: the checks wait for the next round
                log.warning("expiring existence checks failed (%s); retrying", type(exc).__name__)
    finally:
        await runtime.stop()  # the batch in hand finishes and commits first


def main(argv: list[str] | None = None) -> None:
    from infra.core.arguments import worker_settings
    from streams.app import serve_until_signal

    settings = worker_settings(argv, participant_id=REGISTRY_ID)
    serve_until_signal(serve(settings), settings.log_level, settings.log_format, "registry")


if __name__ == "__main__":
    main()
