"""Bank HTTP channel: the bank's systems call us for registrations; we call the bank for existence checks.

A channel adapter of :class:`connectors.runtime.ConnectorRuntime` for ONE bank.

Server (the bank → us), JSON:

- ``POST /v1/registrations`` with header ``Idempotency-Key`` (1–64 ASCII
  letters, digits, ``-``, ``_``) and body ``{operation: REGISTER|CHANGE|DELETE,
  customer_ref, my_number, account?: {branch_code, account_type,
  account_number, holder_kana}}`` → ``202 {request_id, status: SENT}``; the same
  key again → ``200`` with the request's current state (nothing sent twice).
  ``400`` with ``{reason, message, field?}``: ``MISSING_IDEMPOTENCY_KEY``,
  ``MALFORMED``, ``INVALID_FIELD``; ``503 UNAVAILABLE`` when the token authority
  does not answer (retry with the same key).
- ``GET /v1/registrations/{key}`` → ``{request_id, status, detail}`` (``SENT``
  until the registry answered, then ``DONE`` / ``REFUSED`` / … / ``REJECTED:<reason>``).

Client (us → the bank): each ``existence.check`` (口座実在性確認) becomes
``POST {bank_url}/v1/existence-checks`` with ``Idempotency-Key: <message id>``
and ``{reference, account}``; the bank answers ``200 {result}`` with one of
CONFIRMED / ACCOUNT_NOT_FOUND / HOLDER_MISMATCH / ACCOUNT_CLOSED, which is sent
back to the registry.  Timeouts, connection errors, 408, 429 and 5xx are
retried by the runtime with backoff; other 4xx are dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from infra.envelope import Message
from infra.errors import Reason, Rejection, ValidationError
from infra.policy import BASIS_BANK_INTAKE, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.settings import Settings
from infra.validation import validate_bank_account, validate_my_number
from schemas import types as T
from streams.participant import Context

from connectors.runtime import Answered, ChannelAdapter, ConnectorRuntime, Delivery, TransientError, start_site

EXISTENCE_RESULTS = ("CONFIRMED", "ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "ACCOUNT_CLOSED")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REF_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")

BANKHTTP_MIGRATIONS = [
    """
    CREATE TABLE bankhttp_requests (
        idempotency_key text PRIMARY KEY,
        correlation_id  uuid NOT NULL UNIQUE,
        status          text NOT NULL,
        detail          text,
        received_at     timestamptz NOT NULL DEFAULT now(),
        answered_at     timestamptz
    );
    """,
    # An Idempotency-Key is the bank's own: two banks served from one database may use the same one.
    # Rows from before carry bank_id '' and still answer for their key at any bank (as they did).
    """
    ALTER TABLE bankhttp_requests ADD COLUMN bank_id text NOT NULL DEFAULT '';
    ALTER TABLE bankhttp_requests DROP CONSTRAINT bankhttp_requests_pkey;
    ALTER TABLE bankhttp_requests ADD PRIMARY KEY (bank_id, idempotency_key);
    ALTER TABLE bankhttp_requests ALTER COLUMN bank_id DROP DEFAULT;
    """,
]


def _problem(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"reason": reason, "message": message, **extra}, status=status)


class BankHttp(ChannelAdapter):
    """The HTTP channel of one bank: a server for its registrations, a client for our existence checks."""

    name = "bank-http"
    migrations = BANKHTTP_MIGRATIONS

    def __init__(self, bank_id: str, bank_code: str, bank_url: str, *, timeout_s: float = 5.0) -> None:
        self.bank_id, self.bank_code = bank_id, bank_code
        self.bank_url = bank_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.http: aiohttp.ClientSession | None = None

    async def start(self, runtime: Any) -> None:
        await super().start(runtime)
        self.http = aiohttp.ClientSession(timeout=self.timeout)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    def handlers(self) -> dict:
        return {T.EXISTENCE_CHECK: self.on_existence_check, T.REGISTRATION_RESULT: self.on_result,
                T.REJECTION_NOTICE: self.on_result}

    # client: existence checks --------------------------------------------------------------------
    async def on_existence_check(self, ctx: Context) -> None:
        await self.runtime.enqueue(ctx, self, {"account": ctx.body["account"]})

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Exception | Answered | None]:
        outcomes: dict[int, Exception | Answered | None] = {}
        for d in deliveries:
            outcomes[d.id] = await self._check(d)
        return outcomes

    async def _check(self, d: Delivery) -> Exception | Answered:
        assert self.http is not None
        try:
            async with self.http.post(f"{self.bank_url}/v1/existence-checks",
                                      json={"reference": d.correlation_id, "account": d.payload["account"]},
                                      headers={"Idempotency-Key": d.message_id}) as resp:
                if resp.status in (408, 429) or resp.status >= 500:
                    return TransientError(f"bank answered HTTP {resp.status}")
                if resp.status >= 400:
                    return Rejection(Reason.INVALID_FIELD, f"bank refused the check: HTTP {resp.status}")
                body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return TransientError(f"bank unreachable ({type(exc).__name__})")
        except ValueError:
            return Rejection(Reason.MALFORMED, "bank answer is not JSON")
        result = body.get("result") if isinstance(body, dict) else None
        if result not in EXISTENCE_RESULTS:
            return Rejection(Reason.MALFORMED, f"bank answer: result must be one of {', '.join(EXISTENCE_RESULTS)}")
        return Answered(T.EXISTENCE_ANSWER, {"bank_code": self.bank_code, "result": result,
                                             "answered_at": datetime.now(UTC)})

    async def on_result(self, ctx: Context) -> None:
        if ctx.meta.type == T.REGISTRATION_RESULT:
            status, detail = ctx.body["status"], ctx.body.get("detail")
        else:
            status, detail = f"REJECTED:{ctx.body['reason_code']}", ctx.body["message"]
        await ctx.conn.execute("UPDATE bankhttp_requests SET status = $2, detail = $3, answered_at = now() "
                               "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, status, detail)

    # server: registrations -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/v1/registrations", self.register),
                        web.get("/v1/registrations/{key}", self.status)])
        return app

    async def _state(self, key: str) -> dict | None:
        row = await self.runtime.pool.fetchrow(
            "SELECT status, detail FROM bankhttp_requests WHERE idempotency_key = $1 AND bank_id IN ($2, '') "
            "ORDER BY bank_id DESC LIMIT 1", key, self.bank_id)
        return None if row is None else {"request_id": key, "status": row["status"], "detail": row["detail"]}

    async def register(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY_RE.fullmatch(key):
            return _problem(400, "MISSING_IDEMPOTENCY_KEY", "Idempotency-Key: 1-64 ASCII letters, digits, - or _")
        known = await self._state(key)
        if known is not None:
            return web.json_response(known, status=200)
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "MALFORMED", "body must be JSON")
        try:
            operation, ref, my_number, account = self._validate(body)
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        try:
            token = await self.runtime.enrol(self.bank_id, ref, my_number)
        except (asyncio.TimeoutError, RuntimeError):
            return _problem(503, "UNAVAILABLE", "the token authority did not answer; retry with the same key")
        correlation = str(uuid.uuid4())
        message = Message(body={"operation": operation, "account": account, "channel": "BANK_COUNTER",
                                "requested_at": datetime.now(UTC)},
                          type=T.REGISTRATION_REQUEST, to="registry", subject=token,
                          data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE, correlation_id=correlation)
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO bankhttp_requests (bank_id, idempotency_key, correlation_id, status) "
                "VALUES ($1, $2, $3::uuid, 'SENT') ON CONFLICT DO NOTHING RETURNING idempotency_key",
                self.bank_id, key, correlation)
            if inserted is not None:
                await self.runtime.publish(conn, self, self.bank_id, f"http/{self.bank_id}/{key}", [message])
        if inserted is None:  # a concurrent request with the same key won
            return web.json_response(await self._state(key), status=200)
        return web.json_response({"request_id": key, "status": "SENT", "detail": None}, status=202)

    def _validate(self, body: Any) -> tuple[str, str, str, dict | None]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        operation = body.get("operation")
        if operation not in ("REGISTER", "CHANGE", "DELETE"):
            raise ValidationError("operation", "must be REGISTER, CHANGE or DELETE")
        ref = body.get("customer_ref")
        if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
            raise ValidationError("customer_ref", "must be 1 to 32 ASCII letters, digits, - or _")
        my_number = validate_my_number(body.get("my_number") if isinstance(body.get("my_number"), str) else "")
        account = None
        if operation != "DELETE" or body.get("account") is not None:
            raw = body.get("account")
            if not isinstance(raw, dict):
                raise ValidationError("account", "is required")
            account = validate_bank_account({**raw, "bank_code": self.bank_code})
        return operation, ref, my_number, account

    async def status(self, request: web.Request) -> web.Response:
        state = await self._state(request.match_info["key"])
        if state is None:
            return _problem(404, "NOT_FOUND", "no request with this key")
        return web.json_response(state)


class BankHttpConnector:
    """The runtime with this bank's HTTP channel; ``url`` is the registration server once started."""

    def __init__(self, settings: Settings, bank_id: str, bank_code: str, bank_url: str, *, host: str = "127.0.0.1",
                 port: int = 0, timeout_s: float = 5.0) -> None:
        self.adapter = BankHttp(bank_id, bank_code, bank_url, timeout_s=timeout_s)
        self.runtime = ConnectorRuntime(settings, [bank_id], [self.adapter],
                                        group=f"{settings.kafka.topic_prefix}.connector.{bank_id}")
        self.host, self.port = host, port
        self.url: str | None = None
        self._runner: Any = None

    async def __aenter__(self) -> BankHttpConnector:
        await self.runtime.start()
        app = self.adapter.app()
        app.add_routes(self.runtime.ops_routes())
        self._runner, self.url = await start_site(app, self.host, self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.runtime.stop()
