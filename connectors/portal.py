"""The portal connector (マイナポータル-like): the person's web page and its API, one person per session.

Why this file is long: the person's web API and the connector serving it; views, sessions, cards and
throttling are already modules of their own.

A person logs in with a card and its PIN (:mod:`connectors.portal_cards`: three
wrong PINs lock the card, as the My Number card's do; an unknown card answers
like a wrong PIN), then, in Japanese or English (``connectors/static/``):

- sees their registered public-funds account, masked (bank, branch, last
  digits, holder kana) as the registry's last notice showed it;
- registers, changes or deletes it (STEP1, ``registration.request`` to the
  registry, answered after the bank's existence check: pending, confirmed or
  refused and why);
- files an account-numbering request (付番申出: ``numbering.request`` to the one
  bank named, or to DICJ for several, which answers with ONE consolidated
  ``numbering.result``) and sees each bank's answer;
- reads their notices (お知らせ, :mod:`connectors.portal_notices`) as they arrive;
- reads their provision records (情報提供等記録) by participant name, verified
  against the latest signed checkpoint (:mod:`infra.records.records_verify`: OK /
  PENDING / TAMPERED); records withheld from the person (不開示) are not shown.

Security (docs/portal.md, "Security"): sessions are stored hashed with idle
and absolute limits (:mod:`connectors.portal_sessions`); the cookie is
HttpOnly, SameSite=Strict and Secure over TLS; every state-changing request
needs the session's CSRF token and a same-origin ``Origin``; login failures
are limited per client address (:mod:`connectors.portal_throttle`).  Requests
are answered ``202`` with a request id; the page polls.  The portal knows a
person only by its token.  Channel adapter of
:class:`connectors.runtime.ConnectorRuntime`; see docs/connectors.md.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from connectors.portal_cards import CardStore, validate_card_id, validate_pin
from connectors.portal_notices import NoticeVault, PortalNotices, numbering_notice
from connectors.portal_schema import PORTAL_MIGRATIONS
from connectors.portal_sessions import ABSOLUTE_LIMIT, IDLE_LIMIT, Sessions, csrf_matches, csrf_token
from connectors.portal_throttle import LoginThrottle
from connectors.portal_views import account_view, bank_names, named_records, notice_view, request_view
from connectors.runtime import ChannelAdapter, ConnectorRuntime, start_site
from infra.core.errors import Reason, StackError, ValidationError
from infra.core.settings import Settings
from infra.crypto.envelope import Message
from infra.domain.policy import (
    BASIS_CHANGE,
    BASIS_NUMBERING,
    BASIS_REGISTRATION,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.domain.procedures import Procedures
from infra.domain.validation import validate_bank_account, validate_bank_code
from infra.platform.keystore import KeyStore
from infra.platform.metrics import Counter
from infra.platform.storage import create_pool
from infra.records.checkpoint_log import CheckpointLog
from infra.records.records_verify import RecordState, RecordsVerifier
from schemas import types as msg
from streams.participant import Context

log = logging.getLogger("renkei.connector.portal")

PORTAL_ID = "portal"
COOKIE = "renkei_portal_session"
CSRF_HEADER = "X-CSRF-Token"
STATIC = Path(__file__).with_name("static")
LOGIN_OUTCOMES = frozenset({"ok", "wrong_pin", "locked", "suspended", "throttled"})


def _problem(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"reason": reason, "message": message, **extra}, status=status)


def _raise(status: type[web.HTTPException], reason: Reason, message: str) -> web.HTTPException:
    return status(text=json.dumps({"reason": reason.value, "message": message}), content_type="application/json")


class Portal(ChannelAdapter):
    """Channel: people in a browser. Handlers record answers to their requests and keep their notices."""

    name = "portal"
    migrations = PORTAL_MIGRATIONS

    def __init__(self, records: RecordsVerifier | None = None, *, notices: PortalNotices | None = None,
                 throttle: LoginThrottle | None = None, idle: timedelta = IDLE_LIMIT,
                 absolute: timedelta = ABSOLUTE_LIMIT) -> None:
        self.records_verifier = records
        self.notices = notices
        self.throttle = throttle or LoginThrottle()
        self.idle, self.absolute = idle, absolute
        self.logins: Counter | None = None

    async def start(self, runtime: ConnectorRuntime) -> None:
        await super().start(runtime)
        self.cards = CardStore(runtime.pool)
        self.sessions = Sessions(runtime.pool, idle=self.idle, absolute=self.absolute)
        if self.logins is None:
            self.logins = runtime.runtime.metrics.register(Counter(
                "renkei_portal_logins_total", "Portal login attempts by outcome (a rise in wrong_pin or throttled "
                "from many addresses: someone guessing card ids)", labels={"outcome": LOGIN_OUTCOMES}))

    @property
    def participants(self) -> Any:
        return self.runtime.runtime.participants

    def handlers(self) -> dict:
        return {msg.REGISTRATION_RESULT: self.on_answer, msg.NUMBERING_ACK: self.on_numbering_ack,
                msg.NUMBERING_RESULT: self.on_numbering_result, msg.REJECTION_NOTICE: self.on_answer,
                msg.NOTICE: self.on_notice}

    async def on_answer(self, ctx: Context) -> None:
        body = ctx.body
        if ctx.meta.type == msg.REGISTRATION_RESULT:
            status, detail = body["status"], body.get("detail")
        else:
            status, detail = f"REJECTED:{body['reason_code']}", body["message"]
        await ctx.conn.execute("UPDATE portal_requests SET status = $2, detail = $3, answered_at = now() "
                               "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, status, detail)

    async def on_numbering_ack(self, ctx: Context) -> None:
        """One bank's answer to a numbering request filed here; DONE once every named bank answered."""
        banks = await ctx.conn.fetchval("SELECT banks FROM portal_requests WHERE correlation_id = $1::uuid "
                                        "FOR UPDATE", ctx.meta.correlation_id)
        if banks is None:
            return
        answers = json.loads(banks)
        answers[ctx.body["bank_code"]] = ctx.body["status"]
        done = all(v is not None for v in answers.values())
        await ctx.conn.execute(
            "UPDATE portal_requests SET banks = $2::jsonb, status = CASE WHEN $3 THEN 'DONE' ELSE status END, "
            "answered_at = now() WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, json.dumps(answers), done)

    async def on_numbering_result(self, ctx: Context) -> None:
        """DICJ's consolidated result: the answer to a numbering filed here for several banks (one status per
        bank; a bank DICJ heard nothing from by its deadline is NO_ANSWER), or of one the person filed at a
        bank's counter. Either way it is also a notice."""
        assert self.notices is not None
        banks = await ctx.conn.fetchval("SELECT banks FROM portal_requests WHERE correlation_id = $1::uuid "
                                        "FOR UPDATE", ctx.meta.correlation_id)
        if banks is not None:
            outcomes = {o["bank_code"]: o["status"] for o in ctx.body["outcomes"]}
            answers = {code: outcomes.get(code, "NO_ANSWER") for code in json.loads(banks)}
            await ctx.conn.execute(
                "UPDATE portal_requests SET banks = $2::jsonb, status = 'DONE', answered_at = now() "
                "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, json.dumps(answers))
        await self.notices.store(ctx.conn, ctx.meta.message_id, ctx.meta.subject, ctx.meta.sender,
                                 numbering_notice(ctx.body, ctx.meta.correlation_id))

    async def on_notice(self, ctx: Context) -> None:
        assert self.notices is not None
        await self.notices.store(ctx.conn, ctx.meta.message_id, ctx.meta.subject, ctx.meta.sender, ctx.body)

    # -- the web API ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._security_headers])
        app.add_routes([
            web.get("/", self.page),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
            web.get("/api/me", self.me),
            web.get("/api/banks", self.banks),
            web.post("/api/account", self.account),
            web.post("/api/numbering", self.numbering),
            web.get("/api/requests", self.requests),
            web.get("/api/requests/{request_id}", self.request_status),
            web.get("/api/notices", self.notices_list),
            web.post("/api/notices/read", self.notices_read),
            web.get("/api/records", self.records),
            web.static("/static", STATIC),
        ])
        return app

    @web.middleware
    async def _security_headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    async def page(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "portal.html")

    @staticmethod
    async def _json(request: web.Request) -> dict:
        # A cross-site HTML form cannot send application/json without a CORS preflight (which is refused).
        if request.content_type != "application/json":
            raise _raise(web.HTTPUnsupportedMediaType, Reason.MALFORMED, "send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            raise _raise(web.HTTPBadRequest, Reason.MALFORMED, "body must be JSON") from None
        if not isinstance(body, dict):
            raise _raise(web.HTTPBadRequest, Reason.MALFORMED, "body must be a JSON object")
        return body

    @staticmethod
    def _same_origin(request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise _raise(web.HTTPForbidden, Reason.CSRF_REJECTED, "a request from another site is refused")

    async def _person(self, request: web.Request, *, changes: bool = False) -> Any:
        """The session's person; ``changes``: a state-changing request (same origin, this session's CSRF token)."""
        if changes:
            self._same_origin(request)
        value = request.cookies.get(COOKIE)
        session = await self.sessions.find(value)
        if session is None:
            raise _raise(web.HTTPUnauthorized, Reason.LOGIN_REQUIRED,
                         "log in (again): the session ended, expired, or its card was locked or reported lost")
        if changes and not csrf_matches(value or "", request.headers.get(CSRF_HEADER)):
            raise _raise(web.HTTPForbidden, Reason.CSRF_REJECTED, f"the {CSRF_HEADER} header is missing or wrong; "
                                                                  "reload the page")
        return session

    def _count(self, outcome: str) -> None:
        if self.logins is not None:
            self.logins.inc(outcome=outcome)

    async def login(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        client = request.remote or "unknown"
        wait = self.throttle.retry_after(client)
        if wait is not None:
            self._count("throttled")
            return web.json_response(
                {"reason": Reason.RATE_LIMITED.value, "retry_after_s": int(wait) + 1,
                 "message": "too many failed logins from this address; try again later"},
                status=429, headers={"Retry-After": str(int(wait) + 1)})
        body = await self._json(request)
        try:
            card, pin = validate_card_id(body.get("card_id")), validate_pin(body.get("pin"))
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        result = await self.cards.login(card, pin)
        if result.counted:
            self.throttle.failed(client)
        if not result.ok:
            assert result.reason is not None
            self._count({Reason.WRONG_PIN: "wrong_pin", Reason.CARD_LOCKED: "locked"}.get(result.reason, "suspended"))
            extra = {} if result.tries_left is None else {"tries_left": result.tries_left}
            if result.reason is Reason.WRONG_PIN:
                return _problem(401, result.reason.value, "card id or PIN is wrong", **extra)
            if result.reason is Reason.CARD_LOCKED:
                return _problem(423, result.reason.value, "this card is locked after too many wrong PINs; it is "
                                                          "unlocked at the counter", **extra)
            return _problem(423, result.reason.value, "this card was reported lost; it is unlocked at the counter")
        self._count("ok")
        await self.sessions.purge_expired()
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            value = await self.sessions.open(conn, card)
        response = web.json_response({"card_id": card, "csrf_token": csrf_token(value)})
        # No Max-Age: the cookie goes with the browser; the server's idle and absolute limits apply anyway.
        response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", secure=request.secure, path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        await self._person(request, changes=True)
        await self.sessions.close(request.cookies.get(COOKIE))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        """Who is logged in, the session's CSRF token, the registered account (masked), unread notices."""
        person = await self._person(request)
        assert self.notices is not None
        pool = self.runtime.pool
        return web.json_response({
            "card_id": person.card_id, "csrf_token": csrf_token(request.cookies[COOKIE]),
            "account": account_view(self.participants, await self.notices.account(pool, person.token)),
            "unread_notices": await self.notices.unread(pool, person.token),
        })

    async def banks(self, request: web.Request) -> web.Response:
        await self._person(request)
        return web.json_response({"banks": [{"bank_code": b.bank_code, "name": bank_names(self.participants,
                                                                                            b.bank_code)}
                                            for b in self.participants.banks() if not b.suspended]})

    async def _send(self, person: Any, kind: str, messages: list[Message], banks: list[str] | None = None
                    ) -> web.Response:
        correlation = messages[0].correlation_id
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO portal_requests (correlation_id, card_id, kind, status, banks) "
                "VALUES ($1::uuid, $2, $3, 'SENT', $4::jsonb)", correlation, person.card_id, kind,
                None if banks is None else json.dumps(dict.fromkeys(banks)))
            await self.runtime.publish(conn, self, PORTAL_ID, f"request/{correlation}", messages)
        return web.json_response({"request_id": correlation, "status": "SENT", "state": "PENDING"}, status=202)

    async def account(self, request: web.Request) -> web.Response:
        person = await self._person(request, changes=True)
        body = await self._json(request)
        operation = body.get("operation")
        if operation not in ("REGISTER", "CHANGE", "DELETE"):
            return _problem(400, "INVALID_FIELD", "operation: must be REGISTER, CHANGE or DELETE", field="operation")
        account = None
        if operation != "DELETE":
            try:
                account = validate_bank_account(body.get("account") or {})
            except ValidationError as exc:
                return _problem(400, exc.code, exc.message, field=exc.field)
        message = Message(
            body={"operation": operation, "account": account, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            type=msg.REGISTRATION_REQUEST, to="registry", subject=person.token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
            basis=BASIS_REGISTRATION if operation == "REGISTER" else BASIS_CHANGE, correlation_id=str(uuid.uuid4()))
        return await self._send(person, f"account.{operation.lower()}", [message])

    async def numbering(self, request: web.Request) -> web.Response:
        person = await self._person(request, changes=True)
        body = await self._json(request)
        codes = body.get("bank_codes")
        try:
            if not isinstance(codes, list) or not codes:
                raise ValidationError("bank_codes", "at least one 4-digit bank code")
            codes = sorted({validate_bank_code(c, field="bank_codes") for c in codes})
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        banks = [self.participants.by_bank_code(c) for c in codes]
        if any(b is None for b in banks):
            return _problem(400, "UNKNOWN_PARTICIPANT", "bank_codes: a code names no participating bank",
                            field="bank_codes")
        correlation = str(uuid.uuid4())
        body = {"bank_codes": codes, "channel": "PORTAL", "receiving_bank_code": None, "requested_at": datetime.now(UTC)}
        # One bank answers for itself; several are asked through DICJ, which gathers their answers into ONE
        # consolidated numbering.result (口座管理法: the request names every bank, one answer comes back).
        recipients = [banks[0].id] if len(banks) == 1 else ["dicj"]
        messages = [Message(body=body, type=msg.NUMBERING_REQUEST, to=to, subject=person.token,
                            data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                            correlation_id=correlation) for to in recipients]
        return await self._send(person, "numbering", messages, banks=codes)

    _REQUEST_COLUMNS = "correlation_id, kind, status, detail, banks, created_at, answered_at"

    async def requests(self, request: web.Request) -> web.Response:
        """The person's last requests filed here (newest first), so a reload still shows what is pending."""
        person = await self._person(request)
        rows = await self.runtime.pool.fetch(
            f"SELECT {self._REQUEST_COLUMNS} FROM portal_requests WHERE card_id = $1 "
            "ORDER BY created_at DESC LIMIT 10", person.card_id)
        return web.json_response({"requests": [request_view(r) for r in rows]})

    async def request_status(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        try:
            rid = uuid.UUID(request.match_info["request_id"])
        except ValueError:
            return _problem(404, "NOT_FOUND", "no such request")
        row = await self.runtime.pool.fetchrow(
            f"SELECT {self._REQUEST_COLUMNS} FROM portal_requests WHERE correlation_id = $1 AND card_id = $2",
            rid, person.card_id)
        if row is None:
            return _problem(404, "NOT_FOUND", "no such request")
        return web.json_response(request_view(row))

    async def notices_list(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        assert self.notices is not None
        pool = self.runtime.pool
        shown = await self.notices.for_person(pool, person.token)
        return web.json_response({"unread": await self.notices.unread(pool, person.token),
                                  "notices": [notice_view(self.participants, n) for n in shown]})

    async def notices_read(self, request: web.Request) -> web.Response:
        person = await self._person(request, changes=True)
        assert self.notices is not None
        return web.json_response({"marked": await self.notices.mark_read(self.runtime.pool, person.token)})

    async def records(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        if self.records_verifier is None:
            return _problem(503, "UNAVAILABLE", "provision records are not configured on this portal")
        try:
            view = await records_view(self.records_verifier, person.token)
        except StackError:
            return _problem(503, "UNAVAILABLE", "the published checkpoints cannot be read now; try again later")
        return web.json_response(named_records(self.participants, view))


async def records_view(verifier: RecordsVerifier, token: str, procedures: Procedures | None = None) -> dict:
    """The person's provision records as the portal shows them, verified against the latest checkpoint.

    ``{verdict, chain_ok, problems, checkpoint, pending, purged_before, records: [{requester, provider,
    data_item, legal_basis, procedure, status, requested_at, provided_at, state, verified}]}``: ``verdict`` OK /
    PENDING / TAMPERED; ``procedure`` the public-benefit procedure the exchange served, with its names, legal
    basis and purpose from the catalogue (``procedures``, default ``infra/domain/procedures.toml``; just ``{code}`` for
    a code it no longer lists; null where none applies); ``status`` what happened (PROVIDED, NOT_REGISTERED,
    BLOCKED, …); ``state`` CHECKPOINTED / PENDING (not yet checkpointed) / TAMPERED / UNVERIFIED; 不開示
    records are verified but not listed.  ``token`` is the person's PORTAL token. Also ``renkei portal records``.
    """
    verdict = await verifier.verify(token)
    catalogue = procedures if procedures is not None else Procedures.load()

    def procedure(code: str | None) -> dict | None:
        if code is None:
            return None
        known = catalogue.get(code)
        return known.to_json() if known is not None else {"code": code}

    seen = verdict.checkpoint
    return {
        "verdict": verdict.verdict.value,
        "chain_ok": verdict.ok,
        "problems": verdict.problems,
        "checkpoint": seen and {"number": seen.number, "issued_at": seen.issued_at.isoformat(),
                                "published": seen.published},
        "pending": sum(1 for r in verdict.records
                       if not r.not_disclosed and verdict.states[r.seq] is RecordState.PENDING),
        "purged_before": verdict.purged_before and verdict.purged_before.isoformat(),
        "records": [{
            "requester": r.requester, "provider": r.provider, "data_item": r.data_item,
            "legal_basis": r.legal_basis, "procedure": procedure(r.procedure), "status": r.status.value,
            "requested_at": r.requested_at.isoformat(),
            "provided_at": r.provided_at and r.provided_at.isoformat(),
            "state": verdict.states[r.seq].value,
            "verified": verdict.states[r.seq] in (RecordState.CHECKPOINTED, RecordState.PENDING),
        } for r in verdict.records if not r.not_disclosed],
    }


class PortalConnector:
    """The portal process: runtime + the web app (``url`` once started; ``https`` with ``ssl_context``)."""

    def __init__(self, settings: Settings, *, provisions_dsn: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, ops_port: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 throttle: LoginThrottle | None = None, idle: timedelta = IDLE_LIMIT,
                 absolute: timedelta = ABSOLUTE_LIMIT) -> None:
        self.settings = settings
        self.provisions_dsn = provisions_dsn
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.adapter = Portal(notices=PortalNotices(NoticeVault.for_settings(settings)), throttle=throttle,
                              idle=idle, absolute=absolute)
        self.runtime = ConnectorRuntime(settings, [PORTAL_ID], [self.adapter],
                                        group=f"{settings.kafka.topic_prefix}.connector.portal", ops_port=ops_port)
        self.url: str | None = None
        self._runner: Any = None
        self._records_pool: Any = None

    @property
    def cards(self) -> CardStore:
        return self.adapter.cards

    async def __aenter__(self) -> PortalConnector:
        # The records public keys first: a portal that could not verify records does not start.
        keys = KeyStore.for_settings(self.settings).records_public_keys() if self.provisions_dsn else None
        await self.runtime.start()
        if keys is not None:
            self._records_pool = await create_pool(self.provisions_dsn, min_size=1, max_size=4)
            self.adapter.records_verifier = RecordsVerifier(self._records_pool, keys,
                                                            CheckpointLog(self.settings, keys))
        app = self.adapter.app()
        app.add_routes(self.runtime.ops_routes())
        self._runner, self.url = await start_site(app, self.host, self.port, ssl_context=self.ssl_context)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.adapter.records_verifier is not None:
            await self.adapter.records_verifier.close()
        if self._records_pool is not None:
            await self._records_pool.close()
        await self.runtime.stop()

    async def enrol(self, card_id: str, my_number: str, pin: str) -> str:
        """Issue a card (as ``renkei portal card issue`` does): the person's portal token through token issuance,
        bound to ``card_id`` and ``pin``. The My Number is not kept. Returns the token."""
        token = await self.runtime.token_for(PORTAL_ID, my_number)
        await self.cards.issue(card_id, token, pin)
        return token


__all__ = ["COOKIE", "CSRF_HEADER", "PORTAL_ID", "Portal", "PortalConnector", "records_view"]
