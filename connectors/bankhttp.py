"""Bank HTTP channel: the bank's systems call us for registrations; we call the bank for existence checks.

A channel adapter of :class:`connectors.runtime.ConnectorRuntime` for ONE bank,
served over TLS only (:mod:`connectors.channel_tls`), every request in both
directions signed with the bank's channel key (:mod:`connectors.httpsig`,
HMAC-SHA256 over method, path, body digest, timestamp, nonce and key id).  The
API is the OpenAPI document :mod:`connectors.bankhttp_openapi`, served at
``GET /openapi.json``.

Server (the bank → us), JSON, every ``/v1/`` call authenticated *before* it is
read: a call that does not authenticate is ``401 {reason, message}``
(``AUTH_REQUIRED``, ``UNKNOWN_KEY``, ``BAD_SIGNATURE``, ``EXPIRED``,
``REPLAYED``: nonces are remembered in ``bankhttp_nonces``) and nothing is
published.

- ``POST /v1/registrations`` with header ``Idempotency-Key`` (1–64 ASCII
  letters, digits, ``-``, ``_``) and body ``{operation: REGISTER|CHANGE|DELETE,
  customer_ref, my_number, account?: {branch_code, account_type,
  account_number, holder_kana}, consent: {given_by, method, given_at,
  evidence_ref}}`` → ``202 {request_id, status: SENT}``; the same key again →
  ``200`` with the request's current state (nothing sent twice).  ``400`` with
  ``{reason, message, field?}``: ``MISSING_IDEMPOTENCY_KEY``, ``MALFORMED``,
  ``INVALID_FIELD``; ``503 UNAVAILABLE`` when the token authority does not
  answer (retry with the same key).
- ``GET /v1/registrations/{key}`` → ``{request_id, status, detail}`` (``SENT``
  until the registry answered, then ``DONE`` / ``NOT_HOLDER`` / … / ``REJECTED:<reason>``).
- ``POST /v1/customers`` ``{customer_ref, my_number}`` → ``200 {customer_ref,
  status: LINKED}``: the bank links its customer reference to the person, so
  that existence checks about them carry it.

Client (us → the bank): each ``existence.check`` (口座実在性確認) becomes
``POST {bank_url}/v1/existence-checks`` (https) with ``Idempotency-Key: <message
id>`` and ``{reference, account, person: {token, customer_ref}}``; the bank
answers ``200 {result, holder}`` from its own customer data, ``holder`` saying
whether its record for this person holds the account (a CONFIRMED without it is
NOT_HOLDER: :func:`infra.validation.existence_outcome`), which is sent back to
the registry.  Timeouts, connection errors, 408, 429 and 5xx are retried by the
runtime with backoff; other 4xx, a non-JSON or out-of-range answer are
dead-lettered at once (``MALFORMED``).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from infra.envelope import Message
from infra.errors import ConfigError, Reason, Rejection, ValidationError
from infra.metrics import Counter
from infra.policy import BASIS_BANK_INTAKE, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.settings import Settings
from infra.validation import (
    existence_outcome,
    validate_bank_account,
    validate_consent,
    validate_my_number,
    validate_reference,
)
from schemas import types as T
from streams.participant import Context

from connectors import channel_keys
from connectors.bankhttp_openapi import document
from connectors.channel_tls import ServerCertificate, certificate_hosts, client_context, server_certificate
from connectors.httpsig import (
    MAX_SKEW_S,
    SCHEME,
    TO_BANK,
    TO_RENKEI,
    AuthFailed,
    ChannelKeys,
    Verified,
    sign,
    verify,
)
from connectors.runtime import Answered, ChannelAdapter, ConnectorRuntime, Delivery, TransientError, start_site

_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
AUTH_REASONS = frozenset({"AUTH_REQUIRED", "UNKNOWN_KEY", "BAD_SIGNATURE", "EXPIRED", "REPLAYED"})

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
    # Request signatures: a nonce is accepted once (per bank and key) within the replay window, also across
    # a restart or a standby connector taking over (they share the database).
    """
    CREATE TABLE bankhttp_nonces (
        bank_id  text NOT NULL,
        key_id   text NOT NULL,
        nonce    text NOT NULL,
        seen_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (bank_id, key_id, nonce)
    );
    CREATE INDEX bankhttp_nonces_seen ON bankhttp_nonces (seen_at);
    """,
]


def _problem(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": SCHEME} if status == 401 else None
    return web.json_response({"reason": reason, "message": message, **extra}, status=status, headers=headers)


def require_https(url: str, flag: str = "--bank-url") -> str:
    """The bank's endpoint, which must be https (the check carries an account and the person's token)."""
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ConfigError(f"{flag}: the bank's endpoint must be https:// (existence checks carry personal data)")
    return url.rstrip("/")


class BankHttp(ChannelAdapter):
    """The HTTP channel of one bank: a server for its registrations, a client for our existence checks."""

    name = "bank-http"
    migrations = BANKHTTP_MIGRATIONS

    def __init__(self, bank_id: str, bank_code: str, bank_url: str, *, keys: ChannelKeys,
                 bank_tls: ssl.SSLContext | None = None, timeout_s: float = 5.0, token_timeout_s: float = 30.0,
                 max_skew_s: int = MAX_SKEW_S) -> None:
        if keys.bank_id != bank_id:
            raise ConfigError(f"the channel keys are {keys.bank_id}'s, not {bank_id}'s")
        self.bank_id, self.bank_code = bank_id, bank_code
        self.bank_url = require_https(bank_url)
        self.keys = keys
        self.bank_tls = bank_tls or client_context()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.token_timeout_s = token_timeout_s
        self.max_skew_s = max_skew_s
        self.http: aiohttp.ClientSession | None = None
        self.auth_failures = Counter("renkei_connector_auth_failures_total",
                                     "Bank HTTP calls refused before anything was read (401), by reason",
                                     labels={"reason": AUTH_REASONS})
        self._nonces_inserted = 0

    async def start(self, runtime: Any) -> None:
        await super().start(runtime)
        runtime.runtime.metrics.register(self.auth_failures)
        self.http = aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(ssl=self.bank_tls))

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    def handlers(self) -> dict:
        return {T.EXISTENCE_CHECK: self.on_existence_check, T.REGISTRATION_RESULT: self.on_result,
                T.REJECTION_NOTICE: self.on_result}

    # client: existence checks --------------------------------------------------------------------
    async def on_existence_check(self, ctx: Context) -> None:
        customer_ref = await ConnectorRuntime.local_id_of(ctx.conn, ctx.me, ctx.meta.subject)
        await self.runtime.enqueue(ctx, self, {"account": ctx.body["account"], "customer_ref": customer_ref})

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Exception | Answered | None]:
        outcomes: dict[int, Exception | Answered | None] = {}
        for d in deliveries:
            outcomes[d.id] = await self._check(d)
        return outcomes

    async def _check(self, d: Delivery) -> Exception | Answered:
        assert self.http is not None
        url = f"{self.bank_url}/v1/existence-checks"
        body = json.dumps({"reference": d.correlation_id, "account": d.payload["account"],
                           "person": {"token": d.subject, "customer_ref": d.payload.get("customer_ref")}}).encode()
        path = urllib.parse.urlsplit(url).path
        headers = {"Idempotency-Key": d.message_id, "Content-Type": "application/json",
                   "Authorization": sign(self.keys.current, TO_BANK, "POST", path, body)}
        try:
            async with self.http.post(url, data=body, headers=headers) as resp:
                if resp.status in (408, 429) or resp.status >= 500:
                    return TransientError(f"bank answered HTTP {resp.status}")
                if resp.status >= 400:
                    return Rejection(Reason.INVALID_FIELD, f"bank refused the check: HTTP {resp.status}")
                raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return TransientError(f"bank unreachable ({type(exc).__name__})")
        try:
            answer = json.loads(raw)
        except ValueError:
            return Rejection(Reason.MALFORMED, "bank answer is not JSON")
        if not isinstance(answer, dict):
            return Rejection(Reason.MALFORMED, "bank answer must be a JSON object {result, holder}")
        try:
            result = existence_outcome(answer.get("result"), answer.get("holder"))
        except ValidationError as exc:
            return Rejection(Reason.MALFORMED, f"bank answer: {exc.message}")
        return Answered(T.EXISTENCE_ANSWER, {"bank_code": self.bank_code, "result": result,
                                             "answered_at": datetime.now(UTC)})

    async def on_result(self, ctx: Context) -> None:
        if ctx.meta.type == T.REGISTRATION_RESULT:
            status, detail = ctx.body["status"], ctx.body.get("detail")
        else:
            status, detail = f"REJECTED:{ctx.body['reason_code']}", ctx.body["message"]
        await ctx.conn.execute("UPDATE bankhttp_requests SET status = $2, detail = $3, answered_at = now() "
                               "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, status, detail)

    # server -----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.add_routes([web.post("/v1/registrations", self.register),
                        web.get("/v1/registrations/{key}", self.status),
                        web.post("/v1/customers", self.link_customer),
                        web.get("/openapi.json", self.openapi)])
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every /v1/ call is authenticated before anything else reads it (its body only for the digest)."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        body = await request.read()
        try:
            verified = verify(self.keys, request.headers.get("Authorization"), TO_RENKEI, request.method,
                              request.raw_path, body, max_skew_s=self.max_skew_s)
            await self._remember(verified)
        except AuthFailed as exc:
            self.auth_failures.inc(reason=exc.reason)
            return _problem(401, exc.reason, exc.message)
        return await handler(request)

    async def _remember(self, verified: Verified) -> None:
        """Accept a nonce once within the window (REPLAYED otherwise); old nonces are purged now and then."""
        fresh = await self.runtime.pool.fetchval(
            "INSERT INTO bankhttp_nonces (bank_id, key_id, nonce) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING "
            "RETURNING 1", self.bank_id, verified.key_id, verified.nonce)
        if fresh is None:
            raise AuthFailed("REPLAYED", "this request (its nonce) was used before; sign every request anew")
        self._nonces_inserted += 1
        if self._nonces_inserted % 500 == 1:
            await self.runtime.pool.execute(
                "DELETE FROM bankhttp_nonces WHERE bank_id = $1 AND seen_at < now() - make_interval(secs => $2)",
                self.bank_id, 2.0 * self.max_skew_s)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=document(), content_type="application/json")

    async def _state(self, key: str) -> dict | None:
        row = await self.runtime.pool.fetchrow(
            "SELECT status, detail FROM bankhttp_requests WHERE idempotency_key = $1 AND bank_id IN ($2, '') "
            "ORDER BY bank_id DESC LIMIT 1", key, self.bank_id)
        return None if row is None else {"request_id": key, "status": row["status"], "detail": row["detail"]}

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            raise ValidationError("body", "must be JSON") from None

    async def register(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY_RE.fullmatch(key):
            return _problem(400, "MISSING_IDEMPOTENCY_KEY", "Idempotency-Key: 1-64 ASCII letters, digits, - or _")
        known = await self._state(key)
        if known is not None:
            return web.json_response(known, status=200)
        try:
            body = await self._json_body(request)
        except ValidationError:
            return _problem(400, "MALFORMED", "body must be JSON")
        try:
            operation, ref, my_number, account, consent = self._validate(body)
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        try:
            token = await self.runtime.enrol(self.bank_id, ref, my_number, timeout=self.token_timeout_s)
        except (asyncio.TimeoutError, RuntimeError):
            return _problem(503, "UNAVAILABLE", "the token authority did not answer; retry with the same key")
        correlation = str(uuid.uuid4())
        message = Message(body={"operation": operation, "account": account, "channel": "BANK_COUNTER",
                                "consent": consent, "requested_at": datetime.now(UTC)},
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

    def _validate(self, body: Any) -> tuple[str, str, str, dict | None, dict]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        operation = body.get("operation")
        if operation not in ("REGISTER", "CHANGE", "DELETE"):
            raise ValidationError("operation", "must be REGISTER, CHANGE or DELETE")
        ref = self._customer_ref(body)
        my_number = validate_my_number(body.get("my_number") if isinstance(body.get("my_number"), str) else "")
        account = None
        if operation != "DELETE" or body.get("account") is not None:
            raw = body.get("account")
            if not isinstance(raw, dict):
                raise ValidationError("account", "is required")
            account = validate_bank_account({**raw, "bank_code": self.bank_code})
        return operation, ref, my_number, account, validate_consent(body.get("consent"))

    @staticmethod
    def _customer_ref(body: dict) -> str:
        return validate_reference(body.get("customer_ref"), field="customer_ref", max_length=32)

    async def link_customer(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise ValidationError("body", "must be a JSON object")
            ref = self._customer_ref(body)
            my_number = validate_my_number(body.get("my_number") if isinstance(body.get("my_number"), str) else "")
        except ValidationError as exc:
            reason = "MALFORMED" if exc.field == "body" else exc.code
            return _problem(400, reason, exc.message, **({} if exc.field == "body" else {"field": exc.field}))
        try:
            await self.runtime.enrol(self.bank_id, ref, my_number, timeout=self.token_timeout_s)
        except (asyncio.TimeoutError, RuntimeError):
            return _problem(503, "UNAVAILABLE", "the token authority did not answer; retry")
        return web.json_response({"customer_ref": ref, "status": "LINKED"})

    async def status(self, request: web.Request) -> web.Response:
        state = await self._state(request.match_info["key"])
        if state is None:
            return _problem(404, "NOT_FOUND", "no request with this key")
        return web.json_response(state)


class BankHttpConnector:
    """The runtime with this bank's HTTP channel; ``url`` (https) is the registration server once started.

    ``keys``: the bank's channel keys (default: from the key store, the first one issued if there is
    none); ``tls``: the server certificate (default: issued from the platform's channel CA for ``host``);
    ``bank_ca``: the CA file that signs the bank's endpoint (default: the system's trust store).
    ``/health`` and ``/metrics`` are served on the API server and, in plain HTTP for monitoring, on the
    runtime's loopback ops server (``ops_port``; ``runtime.ops_url``).
    """

    def __init__(self, settings: Settings, bank_id: str, bank_code: str, bank_url: str, *, host: str = "127.0.0.1",
                 port: int = 0, timeout_s: float = 5.0, keys: ChannelKeys | None = None,
                 tls: ServerCertificate | None = None, bank_ca: Path | None = None, token_timeout_s: float = 30.0,
                 group: str | None = None, ops_port: int | None = None) -> None:
        keys = keys or channel_keys.load(settings, bank_id, create=True)
        self.adapter = BankHttp(bank_id, bank_code, bank_url, keys=keys, bank_tls=client_context(bank_ca),
                                timeout_s=timeout_s, token_timeout_s=token_timeout_s)
        self.runtime = ConnectorRuntime(settings, [bank_id], [self.adapter], ops_port=ops_port,
                                        group=group or f"{settings.kafka.topic_prefix}.connector.{bank_id}")
        self.tls = tls or server_certificate(settings, bank_id, certificate_hosts(host))
        self.host, self.port = host, port
        self.url: str | None = None
        self._runner: Any = None

    async def __aenter__(self) -> BankHttpConnector:
        await self.runtime.start()
        app = self.adapter.app()
        app.add_routes(self.runtime.ops_routes())
        self._runner, self.url = await start_site(app, self.host, self.port, ssl_context=self.tls.server_context())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.runtime.stop()
