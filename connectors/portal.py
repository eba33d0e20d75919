"""The portal connector (マイナポータル-like): an aiohttp API and a small web page for one person at a time.

A person logs in with a demo card id and a PIN (the card locks after
:data:`MAX_PIN_TRIES` wrong PINs, as the My Number card's user-certificate PIN
does), then:

- registers, changes or deletes their public-funds account (STEP1,
  ``registration.request`` to the registry, answered asynchronously);
- files an account-numbering request (付番申出, ``numbering.request`` to each
  named bank);
- reads their provision records (情報提供等記録), verified against the latest
  signed checkpoint on the checkpoint topic (:mod:`infra.records_verify`): a
  verdict OK / PENDING / TAMPERED, and each record checkpointed, pending (not
  yet checkpointed) or tampered; records withheld from the person (不開示) are
  not shown.  Records are keyed by the person's PORTAL token.

The portal knows a person only by its token (obtained once by
:meth:`PortalConnector.enrol` through the token-issuance exchange; the My
Number is not stored).  Requests are answered with ``202`` and a request id;
the page polls ``GET /api/requests/{id}``.  Channel adapter of
:class:`connectors.runtime.ConnectorRuntime`; see docs/connectors.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.checkpoint_log import CheckpointLog
from infra.envelope import Message
from infra.errors import StackError, ValidationError
from infra.keystore import KeyStore
from infra.policy import (
    BASIS_CHANGE,
    BASIS_NUMBERING,
    BASIS_REGISTRATION,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.procedures import Procedures
from infra.records_verify import RecordsVerifier, RecordState
from infra.settings import Settings
from infra.storage import create_pool
from infra.validation import validate_bank_account, validate_bank_code
from schemas import types as T
from streams.participant import Context

from connectors.runtime import ChannelAdapter, ConnectorRuntime, start_site

log = logging.getLogger("renkei.connector.portal")

PORTAL_ID = "portal"
MAX_PIN_TRIES = 3
SESSION_TTL = timedelta(minutes=30)
COOKIE = "renkei_portal_session"
STATIC = Path(__file__).with_name("static")
_CARD_RE = re.compile(r"[A-Za-z0-9-]{4,32}")

PORTAL_MIGRATIONS = [
    """
    CREATE TABLE portal_people (
        card_id     text PRIMARY KEY,
        token       text NOT NULL,
        pin_salt    bytea NOT NULL,
        pin_hash    bytea NOT NULL,
        failed      integer NOT NULL DEFAULT 0,
        locked      boolean NOT NULL DEFAULT false
    );
    CREATE TABLE portal_sessions (
        session_id  text PRIMARY KEY,
        card_id     text NOT NULL REFERENCES portal_people (card_id),
        expires_at  timestamptz NOT NULL
    );
    CREATE TABLE portal_requests (
        correlation_id uuid PRIMARY KEY,
        card_id     text NOT NULL REFERENCES portal_people (card_id),
        kind        text NOT NULL,
        status      text NOT NULL,
        detail      text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        answered_at timestamptz
    );
    """,
]


def _pin_hash(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _problem(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"reason": reason, "message": message, **extra}, status=status)


class Portal(ChannelAdapter):
    """Channel: people in a browser. Handlers record the answers to their requests."""

    name = "portal"
    migrations = PORTAL_MIGRATIONS

    def __init__(self, records: RecordsVerifier | None = None) -> None:
        self.records_verifier = records

    def handlers(self) -> dict:
        return {T.REGISTRATION_RESULT: self.on_answer, T.NUMBERING_ACK: self.on_answer,
                T.NUMBERING_RESULT: self.on_answer, T.REJECTION_NOTICE: self.on_answer}

    async def on_answer(self, ctx: Context) -> None:
        body, type_ = ctx.body, ctx.meta.type
        if type_ == T.REGISTRATION_RESULT:
            status, detail = body["status"], body.get("detail")
        elif type_ == T.NUMBERING_ACK:
            status, detail = "ANSWERED", f"{body['bank_code']}:{body['status']}"
        elif type_ == T.NUMBERING_RESULT:
            status = "DONE"
            detail = " ".join(f"{o['bank_code']}:{o['status']}" for o in body["outcomes"])
        else:
            status, detail = f"REJECTED:{body['reason_code']}", body["message"]
        await ctx.conn.execute(
            "UPDATE portal_requests SET status = $2, answered_at = now(), "
            "detail = CASE WHEN $4 AND detail IS NOT NULL THEN detail || ' ' || $3 ELSE $3 END "
            "WHERE correlation_id = $1::uuid", ctx.meta.correlation_id, status, detail, type_ == T.NUMBERING_ACK)

    # -- the web API ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._security_headers])
        app.add_routes([
            web.get("/", self.page),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
            web.get("/api/me", self.me),
            web.post("/api/account", self.account),
            web.post("/api/numbering", self.numbering),
            web.get("/api/requests/{request_id}", self.request_status),
            web.get("/api/records", self.records),
            web.static("/static", STATIC),
        ])
        return app

    @web.middleware
    async def _security_headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'")
        return response

    async def page(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "portal.html")

    async def _json(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"reason": "MALFORMED", "message": "body must be JSON"}',
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"reason": "MALFORMED", "message": "body must be a JSON object"}',
                                     content_type="application/json")
        return body

    async def _person(self, request: web.Request) -> Any:
        session = request.cookies.get(COOKIE, "")
        row = await self.runtime.pool.fetchrow(
            "SELECT p.card_id, p.token FROM portal_sessions s JOIN portal_people p USING (card_id) "
            "WHERE s.session_id = $1 AND s.expires_at > now() AND NOT p.locked", session)
        if row is None:
            raise web.HTTPUnauthorized(text='{"reason": "LOGIN_REQUIRED", "message": "log in first"}',
                                       content_type="application/json")
        return row

    async def login(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        card, pin = body.get("card_id"), body.get("pin")
        if not isinstance(card, str) or not _CARD_RE.fullmatch(card) or not isinstance(pin, str):
            return _problem(400, "INVALID_FIELD", "card_id and pin are required")
        pool = self.runtime.pool
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM portal_people WHERE card_id = $1 FOR UPDATE", card)
            if row is None:
                return _problem(401, "WRONG_PIN", "card id or PIN is wrong")
            if row["locked"]:
                return _problem(423, "LOCKED", "this card is locked after too many wrong PINs; reset it at the counter")
            if not hmac.compare_digest(_pin_hash(pin, bytes(row["pin_salt"])), bytes(row["pin_hash"])):
                failed = row["failed"] + 1
                locked = failed >= MAX_PIN_TRIES
                await conn.execute("UPDATE portal_people SET failed = $2, locked = $3 WHERE card_id = $1",
                                   card, failed, locked)
                if locked:
                    await conn.execute("DELETE FROM portal_sessions WHERE card_id = $1", card)
                    return _problem(423, "LOCKED", "this card is now locked after too many wrong PINs")
                return _problem(401, "WRONG_PIN", "card id or PIN is wrong", tries_left=MAX_PIN_TRIES - failed)
            session = secrets.token_urlsafe(32)
            await conn.execute("UPDATE portal_people SET failed = 0 WHERE card_id = $1", card)
            await conn.execute("INSERT INTO portal_sessions (session_id, card_id, expires_at) VALUES ($1, $2, $3)",
                               session, card, datetime.now(UTC) + SESSION_TTL)
        response = web.json_response({"card_id": card})
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", max_age=int(SESSION_TTL.total_seconds()),
                            path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        await self.runtime.pool.execute("DELETE FROM portal_sessions WHERE session_id = $1",
                                        request.cookies.get(COOKIE, ""))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        return web.json_response({"card_id": person["card_id"]})

    async def _send(self, person: Any, kind: str, messages: list[Message]) -> web.Response:
        correlation = messages[0].correlation_id
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO portal_requests (correlation_id, card_id, kind, status) "
                               "VALUES ($1::uuid, $2, $3, 'SENT')", correlation, person["card_id"], kind)
            await self.runtime.publish(conn, self, PORTAL_ID, f"request/{correlation}", messages)
        return web.json_response({"request_id": correlation, "status": "SENT"}, status=202)

    async def account(self, request: web.Request) -> web.Response:
        person = await self._person(request)
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
            type=T.REGISTRATION_REQUEST, to="registry", subject=person["token"], data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
            basis=BASIS_REGISTRATION if operation == "REGISTER" else BASIS_CHANGE, correlation_id=str(uuid.uuid4()))
        return await self._send(person, f"account.{operation.lower()}", [message])

    async def numbering(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        body = await self._json(request)
        codes = body.get("bank_codes")
        try:
            if not isinstance(codes, list) or not codes:
                raise ValidationError("bank_codes", "at least one 4-digit bank code")
            codes = sorted({validate_bank_code(c, field="bank_codes") for c in codes})
        except ValidationError as exc:
            return _problem(400, exc.code, exc.message, field=exc.field)
        participants = self.runtime.runtime.participants
        banks = [participants.by_bank_code(c) for c in codes]
        if any(b is None for b in banks):
            return _problem(400, "UNKNOWN_PARTICIPANT", "bank_codes: a code names no participating bank",
                            field="bank_codes")
        correlation = str(uuid.uuid4())
        body = {"bank_codes": codes, "channel": "PORTAL", "receiving_bank_code": None, "requested_at": datetime.now(UTC)}
        messages = [Message(body=body, type=T.NUMBERING_REQUEST, to=b.id, subject=person["token"],
                            data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                            correlation_id=correlation) for b in banks]
        return await self._send(person, "numbering", messages)

    async def request_status(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        try:
            rid = uuid.UUID(request.match_info["request_id"])
        except ValueError:
            return _problem(404, "NOT_FOUND", "no such request")
        row = await self.runtime.pool.fetchrow(
            "SELECT kind, status, detail, created_at, answered_at FROM portal_requests "
            "WHERE correlation_id = $1 AND card_id = $2", rid, person["card_id"])
        if row is None:
            return _problem(404, "NOT_FOUND", "no such request")
        return web.json_response({"request_id": str(rid), "kind": row["kind"], "status": row["status"],
                                  "detail": row["detail"], "created_at": row["created_at"].isoformat(),
                                  "answered_at": row["answered_at"] and row["answered_at"].isoformat()})

    async def records(self, request: web.Request) -> web.Response:
        person = await self._person(request)
        if self.records_verifier is None:
            return _problem(503, "UNAVAILABLE", "provision records are not configured on this portal")
        try:
            return web.json_response(await records_view(self.records_verifier, person["token"]))
        except StackError:
            return _problem(503, "UNAVAILABLE", "the published checkpoints cannot be read now; try again later")


async def records_view(verifier: RecordsVerifier, token: str, procedures: Procedures | None = None) -> dict:
    """The person's provision records as the portal shows them, verified against the latest checkpoint.

    ``{verdict, chain_ok, problems, checkpoint, pending, purged_before, records: [{requester, provider,
    data_item, legal_basis, procedure, status, requested_at, provided_at, state, verified}]}``: ``verdict`` OK /
    PENDING / TAMPERED; ``procedure`` the public-benefit procedure the exchange served, with its names, legal
    basis and purpose from the catalogue (``procedures``, default ``infra/procedures.toml``; just ``{code}`` for
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
    """The portal process: runtime + the web app (``url`` once started)."""

    def __init__(self, settings: Settings, *, provisions_dsn: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, ops_port: int | None = None) -> None:
        self.settings = settings
        self.provisions_dsn = provisions_dsn
        self.host, self.port = host, port
        self.adapter = Portal()
        self.runtime = ConnectorRuntime(settings, [PORTAL_ID], [self.adapter],
                                        group=f"{settings.kafka.topic_prefix}.connector.portal", ops_port=ops_port)
        self.url: str | None = None
        self._runner: Any = None
        self._records_pool: Any = None

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
        self._runner, self.url = await start_site(app, self.host, self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.adapter.records_verifier is not None:
            await self.adapter.records_verifier.close()
        if self._records_pool is not None:
            await self._records_pool.close()
        await self.runtime.stop()

    async def enrol(self, card_id: str, my_number: str, pin: str) -> None:
        """Demo card issuance: the person's portal token and a PIN (4 digits). The My Number is not kept."""
        if not _CARD_RE.fullmatch(card_id) or not (pin.isascii() and pin.isdigit() and len(pin) == 4):
            raise ValueError("card_id: 4-32 letters, digits or -; pin: 4 digits")
        token = await self.runtime.token_for(PORTAL_ID, my_number)
        salt = secrets.token_bytes(16)
        await self.runtime.pool.execute(
            "INSERT INTO portal_people (card_id, token, pin_salt, pin_hash) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (card_id) DO UPDATE SET token = $2, pin_salt = $3, pin_hash = $4, failed = 0, locked = false",
            card_id, token, salt, _pin_hash(pin, salt))
