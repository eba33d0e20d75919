"""The registry (公金受取口座登録簿, Digital Agency): one public-funds account per person.

Handles, over its inbox (see docs/architecture.md for the sequences):

- STEP1 ``registration.request`` from the portal — REGISTER / CHANGE first ask
  the account's bank to confirm the account exists in the person's name
  (口座実在性確認, ``existence.check``); the registration completes only on
  CONFIRMED.  A failed name check stores the account BLOCKED: it is never
  provided.  DELETE removes the account and its data key (crypto-shredding).
- STEP2 ``provision.inquiry`` from an agency — answers REGISTERED with the
  account (sealed end to end to the agency), NOT_REGISTERED or BLOCKED; the
  answer's signed envelope states that outcome and the inquiry's procedure,
  so the hub's provision record says what happened.
- STEP3 ``registration.request`` from a bank (bank-channel intake) — the bank
  vouches for its own account, so it is registered directly and the result
  returned to the bank.

People are known only by the registry's own tokens.  Account data is stored
encrypted with a per-person data key (AES-GCM, the token as associated data);
data keys are wrapped with the registry's key-encryption key.  Every effect
runs in the participant runtime's transaction, keyed by message id.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import ValidationError
from infra.keystore import REGISTRY_KEK, KeyStore
from infra.participants import Kind
from infra.settings import Settings
from infra.validation import validate_bank_account
from schemas import types as T
from streams.participant import Context, ParticipantRuntime

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
]


class AccountVault:
    """Per-person data keys, wrapped by the registry's KEK; account data sealed under them."""

    def __init__(self, kek: bytes) -> None:
        self._kek = AESGCM(kek)

    async def _data_key(self, conn: Any, token: str, *, create: bool) -> bytes | None:
        wrapped = await conn.fetchval("SELECT wrapped_key FROM registry_data_keys WHERE token = $1", token)
        if wrapped is None:
            if not create:
                return None
            key = AESGCM.generate_key(bit_length=256)
            nonce = secrets.token_bytes(12)
            wrapped = nonce + self._kek.encrypt(nonce, key, b"renkei registry data key|" + token.encode())
            await conn.execute("INSERT INTO registry_data_keys (token, wrapped_key) VALUES ($1, $2)", token, wrapped)
            return key
        return self._kek.decrypt(wrapped[:12], wrapped[12:], b"renkei registry data key|" + token.encode())

    async def seal(self, conn: Any, token: str, account: dict) -> bytes:
        key = await self._data_key(conn, token, create=True)
        assert key is not None
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(key).encrypt(nonce, json.dumps(account, sort_keys=True).encode(), token.encode())

    async def open(self, conn: Any, token: str, ciphertext: bytes) -> dict | None:
        key = await self._data_key(conn, token, create=False)
        if key is None:
            return None  # shredded
        return json.loads(AESGCM(key).decrypt(ciphertext[:12], ciphertext[12:], token.encode()))

    @staticmethod
    async def shred(conn: Any, token: str) -> None:
        await conn.execute("DELETE FROM registry_data_keys WHERE token = $1", token)


def _now() -> datetime:
    return datetime.now(UTC)


def _result(operation: str, status: str, detail: str | None = None) -> dict:
    return {"operation": operation, "status": status, "detail": detail, "decided_at": _now()}


class Registry:
    """The registry's handlers; pure business rules over the runtime's context."""

    def __init__(self, vault: AccountVault) -> None:
        self.vault = vault

    def handlers(self) -> dict:
        return {
            T.REGISTRATION_REQUEST: self.on_registration_request,
            T.EXISTENCE_ANSWER: self.on_existence_answer,
            T.PROVISION_INQUIRY: self.on_provision_inquiry,
        }

    async def on_registration_request(self, ctx: Context) -> None:
        body, meta = ctx.body, ctx.meta
        operation = body["operation"]
        token = meta.subject
        sender = ctx.participants.get(meta.sender)
        if operation == "DELETE":
            deleted = await ctx.conn.execute("DELETE FROM registry_accounts WHERE token = $1", token)
            await self.vault.shred(ctx.conn, token)
            status = "DONE" if deleted.endswith(" 1") else "NOT_REGISTERED"
            ctx.reply(type=T.REGISTRATION_RESULT, body=_result(operation, status))
            return
        try:
            account = validate_bank_account(body.get("account") or {})
        except ValidationError as exc:
            ctx.reply(type=T.REGISTRATION_RESULT, body=_result(operation, "REFUSED", exc.message))
            return
        bank = ctx.participants.by_bank_code(account["bank_code"])
        if sender is not None and sender.kind is Kind.BANK:
            # STEP3: the bank registers its own customer's account at the counter.
            if sender.bank_code != account["bank_code"]:
                ctx.reply(type=T.REGISTRATION_RESULT,
                          body=_result(operation, "REFUSED", "a bank may register only its own accounts"))
                return
            await self._store(ctx, token, account, "REGISTERED", "BANK_COUNTER")
            ctx.reply(type=T.REGISTRATION_RESULT, body=_result(operation, "DONE"))
            return
        if bank is None:
            ctx.reply(type=T.REGISTRATION_RESULT,
                      body=_result(operation, "ACCOUNT_NOT_FOUND", "no participating bank has this bank code"))
            return
        # STEP1: hold the request and ask the bank to confirm the account (口座実在性確認).
        await ctx.conn.execute(
            "INSERT INTO registry_pending_checks (correlation_id, token, operation, account_ct, requester, basis) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (correlation_id) DO NOTHING",
            meta.correlation_id, token, operation, await self.vault.seal(ctx.conn, token, account),
            meta.sender, meta.legal_basis)
        ctx.send(type=T.EXISTENCE_CHECK, to=bank.id, subject=token,
                 body={"account": account, "requested_at": _now()})

    async def on_existence_answer(self, ctx: Context) -> None:
        pending = await ctx.conn.fetchrow(
            "DELETE FROM registry_pending_checks WHERE correlation_id = $1 RETURNING *", ctx.meta.correlation_id)
        if pending is None:
            return  # an answer to nothing we asked (or answered already): no effect
        token = pending["token"]
        account = await self.vault.open(ctx.conn, token, pending["account_ct"])
        if account is None:
            return  # deleted meanwhile: the data key is gone
        answer = ctx.body["result"]
        if answer == "CONFIRMED":
            await self._store(ctx, token, account, "REGISTERED", "PORTAL")
            status = "DONE"
        elif answer == "HOLDER_MISMATCH":
            # Not the person's own account (e.g. a family member's): kept blocked, never provided.
            await self._store(ctx, token, account, "BLOCKED", "PORTAL")
            status = "HOLDER_MISMATCH"
        else:
            status = "ACCOUNT_NOT_FOUND"
        ctx.send(type=T.REGISTRATION_RESULT, to=pending["requester"], subject=token,
                 body=_result(pending["operation"], status), basis=pending["basis"])

    async def _store(self, ctx: Context, token: str, account: dict, status: str, channel: str) -> None:
        await ctx.conn.execute(
            "INSERT INTO registry_accounts (token, status, account_ct, channel) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (token) DO UPDATE SET status = $2, account_ct = $3, channel = $4, updated_at = now()",
            token, status, await self.vault.seal(ctx.conn, token, account), channel)

    async def on_provision_inquiry(self, ctx: Context) -> None:
        row = await ctx.conn.fetchrow("SELECT status, account_ct FROM registry_accounts WHERE token = $1",
                                      ctx.meta.subject)
        account = None
        if row is None:
            status = "NOT_REGISTERED"
        elif row["status"] == "BLOCKED":
            status = "BLOCKED"
        else:
            account = await self.vault.open(ctx.conn, ctx.meta.subject, row["account_ct"])
            status = "REGISTERED" if account is not None else "NOT_REGISTERED"
        # The outcome goes into the signed envelope too: the hub cannot read the body, and the provision
        # record must say what happened (REGISTERED → PROVIDED; NOT_REGISTERED and BLOCKED provide nothing).
        ctx.reply(type=T.PROVISION_RESPONSE, body={"status": status, "account": account, "answered_at": _now()},
                  outcome=status)


def registry_runtime(settings: Settings) -> ParticipantRuntime:
    vault = AccountVault(KeyStore.for_settings(settings).secret(REGISTRY_KEK))
    return ParticipantRuntime(settings, [REGISTRY_ID], Registry(vault).handlers(),
                              group=f"{settings.kafka.topic_prefix}.{REGISTRY_ID}",
                              migrations={"registry": REGISTRY_MIGRATIONS}, worker=REGISTRY_ID)


def build_app(settings: Settings) -> Any:
    """The registry as a faust app: one agent over its inbox, feeding the participant runtime."""
    import asyncio

    from infra.topics import TopicNames
    from streams.app import BATCH_MAX, BATCH_WITHIN_S, make_app

    runtime = registry_runtime(settings)
    inbox = TopicNames(settings.kafka.topic_prefix).inbox(REGISTRY_ID)
    app = make_app(settings, f"{settings.kafka.topic_prefix}.{REGISTRY_ID}")
    topic = app.topic(inbox, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    ready = asyncio.Event()

    @app.task
    async def _start_runtime() -> None:
        await runtime.serve_metrics()
        await runtime.start(consume=False)
        ready.set()

    @app.agent(topic)
    async def registry(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await ready.wait()
            await runtime.handle_records(inbox, [(e.message.value, e.message.partition, e.message.offset)
                                                 for e in events])
            last: dict[Any, int] = {}
            for e in events:
                last[e.message.tp] = max(last.get(e.message.tp, -1), e.message.offset)
            runtime.metrics.record_lag(app.consumer, last)

    return app


def main(argv: list[str] | None = None) -> None:
    from infra.cli import worker_settings
    from streams.app import run_worker

    settings = worker_settings(argv, participant_id=REGISTRY_ID)
    run_worker(build_app(settings), log_level=settings.log_level)


if __name__ == "__main__":
    main()
