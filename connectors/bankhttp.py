"""Bank HTTP channel: the bank's systems file requests with us; we ask and tell the bank's endpoints.

Why this file is long: both directions of one bank HTTP channel (the bank calls us, we call the bank) share
its signing keys and state.

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

- A person's request, each with header ``Idempotency-Key`` (1–64 ASCII letters,
  digits, ``-``, ``_``) and ``{customer_ref, my_number, …}`` (the My Number is
  exchanged for the bank's token and never kept) → ``202 {request_id, status:
  SENT, …}``; the same key again → ``200`` with the request's current state
  (nothing sent twice; a key of another kind of request → ``409 KEY_IN_USE``).
  ``400`` with ``{reason, message, field?}``: ``MISSING_IDEMPOTENCY_KEY``,
  ``MALFORMED``, ``INVALID_FIELD``; ``503 UNAVAILABLE`` when the token authority
  does not answer (retry with the same key).  ``GET …/{key}`` → its state:

  - ``POST /v1/registrations`` ``{operation: REGISTER|CHANGE|DELETE, account?,
    consent}`` (STEP3) → the registry's result (``DONE`` / ``NOT_HOLDER`` / … /
    ``REJECTED:<reason>``);
  - ``POST /v1/numbering-requests`` ``{bank_codes, own_outcome?}`` (付番申出 at
    the counter; ``own_outcome`` ``{status, accounts_linked}`` when this bank is
    named) → DICJ's ONE consolidated result, also posted to the bank;
  - ``POST /v1/lookup-applications`` ``{kind: INHERITANCE, relationship,
    evidence, date_of_death}`` (an heir's 相続時照会: the person is the
    deceased) or ``{kind: DISASTER, disaster_id, area_code,
    designated_bank_codes}`` (災害時照会) → DICJ's notification (which banks hold
    numbered accounts, or why it was refused), also posted to the bank.

- ``POST /v1/customers`` ``{customer_ref, my_number}`` → ``200 {customer_ref,
  status: LINKED}``: the bank links its customer reference to the person, so
  that questions about them carry it.
- ``POST /v1/lookup-answers`` ``{reference, accounts}`` and ``POST
  /v1/numbering-acks`` ``{reference, status, accounts_linked}``: the bank's
  later answer to a question it accepted with ``202`` (below) → ``200``, or
  ``404 UNKNOWN_REFERENCE`` when no open question has this reference.

Client (us → the bank), signed, ``Idempotency-Key: <message id>``, to
``{bank_url}/v1/…`` (https): the questions ``existence-checks`` (口座実在性確認:
``200 {result, holder}`` from the bank's own customer data, ``holder`` saying
whether its record for this person holds the account — a CONFIRMED without it is
NOT_HOLDER: :func:`infra.domain.validation.existence_outcome`), ``lookups`` (a lookup
or its reminder: ``200 {accounts}``, or ``202`` and the answer later) and
``numbering-requests`` (``200 {status, accounts_linked}``, or ``202`` and later);
the notices ``numbering-results`` and ``lookup-notifications`` (any ``2xx``).
Timeouts, connection errors, 408, 429 and 5xx are retried by the runtime with
backoff; other 4xx, a non-JSON or out-of-range answer are dead-lettered at once
(``MALFORMED``).
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

from connectors import channel_keys
from connectors.bank_questions import (
    LOOKUP_KINDS,
    NOTICES,
    QUESTIONS,
    lookup_answer,
    notice_payload,
    numbering_ack,
    question_payload,
)
from connectors.bankhttp_openapi import document
from connectors.bankhttp_requests import REQUEST_KINDS
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
from infra.core.errors import ConfigError, Reason, Rejection, ValidationError
from infra.core.settings import Settings
from infra.domain.validation import existence_outcome, validate_my_number, validate_reference
from infra.platform.metrics import Counter
from schemas import types as msg
from streams.participant import Context

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
    # Numbering requests and lookup applications besides registrations; DICJ's result and notifications kept.
    """
    ALTER TABLE bankhttp_requests ADD COLUMN kind text NOT NULL DEFAULT 'registration', ADD COLUMN result jsonb;
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
        return {**{t: self.on_question for t in QUESTIONS}, **{t: self.on_notice for t in NOTICES},
                msg.REGISTRATION_RESULT: self.on_result, msg.REJECTION_NOTICE: self.on_result}

    # client: questions and notices to the bank's endpoints ---------------------------------------
    async def on_question(self, ctx: Context) -> None:
        await self.runtime.enqueue(ctx, self, await question_payload(ctx))

    async def on_notice(self, ctx: Context) -> None:
        """DICJ's result or notification for a request the bank filed here: kept for GET, and posted to it."""
        notice = notice_payload(ctx)
        key = await ctx.conn.fetchval(
            "UPDATE bankhttp_requests SET status = $2, detail = $3, answered_at = coalesce(answered_at, now()), "
            "result = coalesce(result, '[]'::jsonb) || jsonb_build_array($4::jsonb) WHERE correlation_id = $1::uuid "
            "RETURNING idempotency_key", ctx.meta.correlation_id, notice.get("status", "DONE"), notice.get("reason"),
            json.dumps(notice))
        if key is None:  # not filed through this channel (e.g. before it took the bank over)
            await self.runtime.dead_letter(self, "sink", f"{ctx.meta.type}/{ctx.meta.message_id}",
                                           "UNKNOWN_REFERENCE", "no request of this channel has this correlation id",
                                           ctx.conn)
            return
        await self.runtime.enqueue(ctx, self, {"request_id": key, **notice})

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Exception | Answered | None]:
        outcomes: dict[int, Exception | Answered | None] = {}
        for d in deliveries:
            outcomes[d.id] = await self._call(d)
        return outcomes

    def _request(self, d: Delivery) -> tuple[str, dict[str, Any]]:
        """The bank endpoint and body for a delivery (docs/connectors.md, "Bank HTTP")."""
        p = d.payload
        person = {"token": d.subject, "customer_ref": p.get("customer_ref")}
        if d.type == msg.EXISTENCE_CHECK:
            return "existence-checks", {"reference": d.correlation_id, "account": p["account"], "person": person}
        if d.type in LOOKUP_KINDS:
            return "lookups", {"reference": d.correlation_id, "kind": p["kind"], "person": person,
                               "reminder": p["reminder"], "deadline": p["deadline"],
                               "receiving_bank_code": p.get("receiving_bank_code"), "disaster_id": p.get("disaster_id")}
        if d.type == msg.NUMBERING_REQUEST:
            return "numbering-requests", {"reference": d.correlation_id, "person": person, "channel": p["channel"],
                                          "receiving_bank_code": p.get("receiving_bank_code")}
        return ("numbering-results" if d.type == msg.NUMBERING_RESULT else "lookup-notifications"), p

    def _answer(self, d: Delivery, answer: dict[str, Any]) -> Answered:
        """The bank's synchronous answer to a question, validated (ValidationError otherwise)."""
        if d.type == msg.EXISTENCE_CHECK:
            return Answered(msg.EXISTENCE_ANSWER, {"bank_code": self.bank_code, "answered_at": datetime.now(UTC),
                                                 "result": existence_outcome(answer.get("result"),
                                                                             answer.get("holder"))})
        if d.type in LOOKUP_KINDS:
            return Answered(msg.LOOKUP_ANSWER, lookup_answer(self.bank_code, answer.get("accounts")))
        return Answered(msg.NUMBERING_ACK, numbering_ack(self.bank_code, answer.get("status"),
                                                      answer.get("accounts_linked")))

    async def _call(self, d: Delivery) -> Exception | Answered | None:
        """POST one delivery; a question answered at once (200) is Answered, one accepted for later (202) and a
        notice taken (2xx) are None; timeouts, 408, 429 and 5xx are transient, anything else dead-lettered."""
        assert self.http is not None
        path, payload = self._request(d)
        url = f"{self.bank_url}/v1/{path}"
        body = json.dumps(payload).encode()
        headers = {"Idempotency-Key": d.message_id, "Content-Type": "application/json",
                   "Authorization": sign(self.keys.current, TO_BANK, "POST", urllib.parse.urlsplit(url).path, body)}
        try:
            async with self.http.post(url, data=body, headers=headers) as resp:
                if resp.status in (408, 429) or resp.status >= 500:
                    return TransientError(f"bank answered HTTP {resp.status}")
                if resp.status >= 400:
                    return Rejection(Reason.INVALID_FIELD, f"bank refused the {path} call: HTTP {resp.status}")
                raw = await resp.read()
                if d.type in NOTICES or (resp.status == 202 and d.type != msg.EXISTENCE_CHECK):
                    return None  # told; or the bank answers later (POST /v1/lookup-answers, /v1/numbering-acks)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return TransientError(f"bank unreachable ({type(exc).__name__})")
        try:
            answer = json.loads(raw)
        except ValueError:
            return Rejection(Reason.MALFORMED, "bank answer is not JSON")
        if not isinstance(answer, dict):
            return Rejection(Reason.MALFORMED, "bank answer must be a JSON object")
        try:
            return self._answer(d, answer)
        except ValidationError as exc:
            return Rejection(Reason.MALFORMED, f"bank answer: {exc.message}")

    async def on_result(self, ctx: Context) -> None:
        if ctx.meta.type == msg.REGISTRATION_RESULT:
            status, detail = ctx.body["status"], ctx.body.get("detail")
        else:
            status, detail = f"REJECTED:{ctx.body['reason_code']}", ctx.body["message"]
        await ctx.conn.execute("UPDATE bankhttp_requests SET status = $2, detail = $3, answered_at = now() "
                               "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, status, detail)

    # server -----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        routes = [web.post("/v1/customers", self.link_customer), web.get("/openapi.json", self.openapi),
                  web.post("/v1/lookup-answers", self.take_lookup_answer),
                  web.post("/v1/numbering-acks", self.take_numbering_ack)]
        for kind, filed in REQUEST_KINDS.items():
            routes += [web.post(f"/v1/{filed.path}", self._filer(kind)),
                       web.get(f"/v1/{filed.path}/{{key}}", self._reader(kind))]
        app.add_routes(routes)
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
            "SELECT kind, status, detail, result FROM bankhttp_requests WHERE idempotency_key = $1 "
            "AND bank_id IN ($2, '') ORDER BY bank_id DESC LIMIT 1", key, self.bank_id)
        if row is None:
            return None
        state = {"request_id": key, "status": row["status"], "detail": row["detail"]}
        if row["kind"] != "registration":  # DICJ's result / notifications, the first one first
            state["results"] = json.loads(row["result"]) if row["result"] else []
        return {"kind": row["kind"], **state}

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            raise ValidationError("body", "must be JSON") from None

    def _filer(self, kind: str) -> Any:
        async def file(request: web.Request) -> web.Response:
            return await self._file(request, kind)
        return file

    def _reader(self, kind: str) -> Any:
        async def read(request: web.Request) -> web.Response:
            state = await self._state(request.match_info["key"])
            if state is None or state.pop("kind") != kind:
                return _problem(404, "NOT_FOUND", f"no {REQUEST_KINDS[kind].called} with this key")
            return web.json_response(state)
        return read

    async def _file(self, request: web.Request, kind: str) -> web.Response:
        """Publish a person's request once per Idempotency-Key: validate, exchange the My Number, publish."""
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY_RE.fullmatch(key):
            return _problem(400, "MISSING_IDEMPOTENCY_KEY", "Idempotency-Key: 1-64 ASCII letters, digits, - or _")
        known = await self._state(key)
        if known is not None:
            if known.pop("kind") != kind:
                return _problem(409, "KEY_IN_USE", "this Idempotency-Key names another kind of request")
            return web.json_response(known, status=200)
        try:
            body = await self._json_body(request)
        except ValidationError:
            return _problem(400, "MALFORMED", "body must be JSON")
        try:
            if not isinstance(body, dict):
                raise ValidationError("body", "must be a JSON object")
            ref = self._customer_ref(body)
            my_number = validate_my_number(body.get("my_number") if isinstance(body.get("my_number"), str) else "")
            build = REQUEST_KINDS[kind].build(self.bank_code, body)
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        try:
            token = await self.runtime.enrol(self.bank_id, ref, my_number, timeout=self.token_timeout_s)
        except (asyncio.TimeoutError, RuntimeError):
            return _problem(503, "UNAVAILABLE", "the token authority did not answer; retry with the same key")
        correlation = str(uuid.uuid4())
        message = build(token, correlation)
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO bankhttp_requests (bank_id, idempotency_key, correlation_id, status, kind) "
                "VALUES ($1, $2, $3::uuid, 'SENT', $4) ON CONFLICT DO NOTHING RETURNING idempotency_key",
                self.bank_id, key, correlation, kind)
            if inserted is not None:
                await self.runtime.publish(conn, self, self.bank_id, f"http/{self.bank_id}/{key}", [message])
        state = await self._state(key)
        assert state is not None
        if state.pop("kind") != kind:  # a concurrent request with the same key won
            return _problem(409, "KEY_IN_USE", "this Idempotency-Key names another kind of request")
        return web.json_response(state, status=202 if inserted is not None else 200)

    @staticmethod
    def _customer_ref(body: dict) -> str:
        return validate_reference(body.get("customer_ref"), field="customer_ref", max_length=32)

    async def _take_answer(self, request: web.Request, type_: str, answer: Any) -> web.Response:
        """The bank's later answer to a question it accepted (202): sent on once, to the question's asker."""
        try:
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise ValidationError("body", "must be a JSON object")
            reference = body.get("reference")
            try:
                reference = str(uuid.UUID(reference)) if isinstance(reference, str) else None
            except ValueError:
                reference = None
            if reference is None:
                raise ValidationError("reference", "the question's reference (a UUID)")
            reply = answer(body)
        except ValidationError as exc:
            if exc.field == "body":
                return _problem(400, "MALFORMED", exc.message)
            return _problem(400, exc.code, exc.message, field=exc.field)
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            answered = await self.runtime.answer(conn, self, reference, type=type_, body=reply)
        if not answered:
            return _problem(404, "UNKNOWN_REFERENCE", "no open question of ours has this reference (unknown or "
                                                      "answered)")
        return web.json_response({"reference": reference, "status": "ANSWERED"})

    async def take_lookup_answer(self, request: web.Request) -> web.Response:
        return await self._take_answer(request, msg.LOOKUP_ANSWER,
                                       lambda b: lookup_answer(self.bank_code, b.get("accounts")))

    async def take_numbering_ack(self, request: web.Request) -> web.Response:
        return await self._take_answer(request, msg.NUMBERING_ACK,
                                       lambda b: numbering_ack(self.bank_code, b.get("status"), b.get("accounts_linked")))

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
