"""Portal connector over HTTP, on the real stack: the card rules, the portal's security, and what a person sees.

Card and session attacks (issue 13 item 11, issue 14 item 7): three wrong PINs lock the card and a second
logged-in session loses access at once; wrong, right, wrong, wrong leaves it usable; an unknown card answers
like a wrong PIN in shape and time; a lost card ends every session; sessions are stored hashed and expire;
state changes need the CSRF token and the same origin; login failures are limited per client; the cookie is
Secure over TLS.  What the person sees (issue 16 item 5, issue 20): a registration (theirs, or one an agency
filed) and an agency's inquiry each become a notice; the registered account masked; records by name,
verified; a lookup result is a notice; only the registry and DICJ may notify.  The browser test is
test_portal_browser.py.
"""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from connectors.channel_tls import CA_FILE, client_context, server_certificate
from connectors.portal import COOKIE, PortalConnector
from connectors.portal_sessions import session_hash
from connectors.portal_throttle import LoginThrottle
from connectors.runtime import start_site
from infra.core.errors import Rejection
from infra.domain.disasters import Disaster, declare, today_jst
from infra.domain.policy import (
    BASIS_ALONGSIDE_PROCEDURE,
    BASIS_DISASTER_LOOKUP,
    BASIS_PROVISION,
    BASIS_REGISTRATION,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_PERSON_NOTICE,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.platform.keystore import KeyStore
from infra.platform.metrics_server import parse_text
from infra.platform.pgdsn import observer_dsn
from infra.platform.storage import create_pool
from infra.records.provisions import ProvisionStore, RecordDraft
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import account, hold_account, my_number, serve_portal

pytestmark = pytest.mark.integration

AGENCY = "agency-city-minato"


@pytest.fixture(scope="module")
async def portal(running_platform):
    async with serve_portal(running_platform.settings) as p:
        yield p


@pytest.fixture(scope="module")
async def bus(running_platform):
    """The portal and the agencies as one client of the bus — not DICJ: a plain client of DICJ's identity would
    claim DICJ's messages in the platform's database before the DICJ desk of the lookup test could."""
    ids = ["portal"] + [p.id for p in running_platform.participants if p.kind.value == "agency"]
    async with BusClient(running_platform.settings, ids,
                         group=f"{running_platform.settings.kafka.topic_prefix}.portal-clients") as client:
        yield client


class Visitor:
    """One browser's worth of HTTP: its own cookie jar, JSON bodies, the page's CSRF header and Origin."""

    def __init__(self, url: str, ssl: Any = None) -> None:
        self.url, self.ssl = url, ssl
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf: str | None = None

    async def __aenter__(self) -> Visitor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.close()

    async def login(self, card: str, pin: str) -> tuple[int, dict]:
        status, body = await self.call("POST", "/api/login", {"card_id": card, "pin": pin})
        if status == 200:
            self.csrf = body["csrf_token"]
        return status, body

    async def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
                   origin: str | None = None) -> tuple[int, dict]:
        headers = {"Origin": origin or self.url}
        if csrf and self.csrf and method != "GET":
            headers["X-CSRF-Token"] = self.csrf
        async with self.http.request(method, f"{self.url}{path}", json=body, headers=headers, ssl=self.ssl) as resp:
            return resp.status, await resp.json()

    def cookie(self) -> str:
        return next(c.value for c in self.http.cookie_jar if c.key == COOKIE)


async def issue(portal: PortalConnector, pin: str = "1234", mn: str | None = None) -> tuple[str, str]:
    """A new card for a new (or the given) person: ``(card id, portal token)``."""
    card = f"card-{uuid.uuid4().hex[:10]}"
    return card, await portal.enrol(card, mn or my_number(), pin)


async def follow(visitor: Visitor, request_id: str, timeout: float = 90.0) -> dict:
    async def answered() -> dict | None:
        _, body = await visitor.call("GET", f"/api/requests/{request_id}")
        return body if body["state"] != "PENDING" else None
    return await eventually(answered, timeout=timeout, interval=0.3)


async def notices(visitor: Visitor, kind: str, count: int = 1, timeout: float = 60.0) -> list[dict]:
    async def arrived() -> list[dict] | None:
        _, body = await visitor.call("GET", "/api/notices")
        found = [n for n in body["notices"] if n["kind"] == kind]
        return found if len(found) >= count else None
    return await eventually(arrived, timeout=timeout, interval=0.3)


# --------------------------------------------------------------------------- the card rules (14.7)


async def test_three_wrong_pins_lock_the_card_and_the_right_pin_no_longer_helps(portal):
    card, _ = await issue(portal, "1234")
    async with Visitor(portal.url) as v:
        seen = [((s := await v.login(card, "0000"))[0], s[1]["reason"], s[1].get("tries_left")) for _ in range(3)]
        assert seen == [(401, "WRONG_PIN", 2), (401, "WRONG_PIN", 1), (423, "CARD_LOCKED", 0)]
        status, body = await v.login(card, "1234")
        assert (status, body["reason"]) == (423, "CARD_LOCKED") and "tries_left" not in body
        assert (await v.call("GET", "/api/records"))[0] == 401


async def test_wrong_right_wrong_wrong_leaves_the_card_usable(portal):
    card, _ = await issue(portal, "2468")
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "1111"))[1]["tries_left"] == 2
        assert (await v.login(card, "2468"))[0] == 200  # a right PIN resets the count
        assert [(await v.login(card, "1111"))[1]["tries_left"] for _ in range(2)] == [2, 1]
        assert (await v.login(card, "2468"))[0] == 200
        assert (await v.call("GET", "/api/me"))[0] == 200
    assert (await portal.cards.state(card))[0].value == "ACTIVE"


async def test_a_second_logged_in_session_loses_access_when_the_card_locks(portal):
    card, _ = await issue(portal, "1357")
    async with Visitor(portal.url) as holder, Visitor(portal.url) as stranger:
        assert (await holder.login(card, "1357"))[0] == 200
        assert (await holder.call("GET", "/api/me"))[0] == 200
        for _ in range(3):
            await stranger.login(card, "9999")
        status, body = await holder.call("GET", "/api/me")
        assert (status, body["reason"]) == (401, "LOGIN_REQUIRED")
        status, _ = await holder.call("POST", "/api/account", {"operation": "DELETE"})
        assert status == 401
    assert await portal.runtime.pool.fetchval("SELECT count(*) FROM portal_sessions WHERE card_id = $1", card) == 0


# --------------------------------------------------------------------------- no card-id enumeration (13.11)


async def _timed_login(v: Visitor, card: str, pin: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    status, body = await v.login(card, pin)
    return time.perf_counter() - start, status, body


async def test_an_unknown_card_answers_like_a_wrong_pin_in_shape_and_time(portal):
    real = [(await issue(portal, "4321"))[0] for _ in range(6)]
    unknown = [f"card-{uuid.uuid4().hex[:10]}" for _ in range(6)]
    async with Visitor(portal.url) as v:
        wrong_t, unknown_t = [], []
        for r, u in zip(real, unknown, strict=True):  # interleaved, so load on the machine hits both alike
            t_r, s_r, b_r = await _timed_login(v, r, "0000")
            t_u, s_u, b_u = await _timed_login(v, u, "0000")
            wrong_t.append(t_r)
            unknown_t.append(t_u)
            assert (s_u, b_u) == (s_r, b_r) == (401, {"reason": "WRONG_PIN", "message": b_r["message"],
                                                     "tries_left": 2})
        # Both do the same scrypt work: the unknown card is not answered in a fraction of the time.
        ratio = statistics.median(unknown_t) / statistics.median(wrong_t)
        assert 0.5 < ratio < 2.0, (wrong_t, unknown_t)
        # ... and both count down and lock the same way, answer by answer.
        seq_r = [await v.login(real[0], "0000") for _ in range(3)]
        seq_u = [await v.login(unknown[0], "0000") for _ in range(3)]
        assert seq_r == seq_u
        assert [(s, b["reason"], b.get("tries_left")) for s, b in seq_u] == [
            (401, "WRONG_PIN", 1), (423, "CARD_LOCKED", 0), (423, "CARD_LOCKED", None)]


# --------------------------------------------------------------------------- lost cards, sessions, CSRF (13.11)


async def test_reporting_a_card_lost_ends_every_session_and_only_the_holder_unlocks_it(portal):
    mn = my_number()
    card, token = await issue(portal, "8642", mn)
    async with Visitor(portal.url) as phone, Visitor(portal.url) as laptop, Visitor(portal.url) as other:
        assert (await phone.login(card, "8642"))[0] == 200 and (await laptop.login(card, "8642"))[0] == 200
        other_card, _ = await issue(portal, "1111")
        assert (await other.login(other_card, "1111"))[0] == 200
        await portal.cards.report_lost(card)
        assert (await phone.call("GET", "/api/notices"))[0] == 401
        assert (await laptop.call("GET", "/api/me"))[0] == 401
        assert (await other.call("GET", "/api/me"))[0] == 200  # another person's session is untouched
        status, body = await phone.login(card, "8642")
        assert (status, body["reason"]) == (423, "CARD_SUSPENDED")
        with pytest.raises(Rejection) as refused:  # someone else's My Number at the counter
            await portal.cards.unlock(card, await portal.runtime.token_for("portal", my_number()), "9753")
        assert refused.value.code == "NOT_CARD_HOLDER"
        await portal.cards.unlock(card, await portal.runtime.token_for("portal", mn), "9753")
        assert (await laptop.call("GET", "/api/me"))[0] == 401  # a session ended by the report stays ended
        assert (await phone.login(card, "8642"))[0] == 401  # the old PIN is gone
        assert (await phone.login(card, "9753"))[0] == 200
        await portal.cards.lock(card)  # locked at the counter (the person asks): its live sessions end too
        assert (await phone.call("GET", "/api/me"))[0] == 401
        assert (await phone.login(card, "9753"))[1]["reason"] == "CARD_LOCKED"


async def test_sessions_are_stored_hashed_and_end_when_idle_or_too_old(portal):
    card, _ = await issue(portal, "5678")
    db = portal.runtime.pool
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "5678"))[0] == 200
        value = v.cookie()
        stored = await db.fetch("SELECT session_hash FROM portal_sessions WHERE card_id = $1", card)
        assert [bytes(r["session_hash"]) for r in stored] == [hashlib.sha256(value.encode()).digest()]
        assert value.encode() not in b"".join(bytes(r["session_hash"]) for r in stored)
        await db.execute("UPDATE portal_sessions SET last_seen_at = now() - interval '16 minutes' "
                         "WHERE session_hash = $1", session_hash(value))
        assert (await v.call("GET", "/api/me"))[0] == 401  # idle for longer than 15 minutes
        assert (await v.login(card, "5678"))[0] == 200
        await db.execute("UPDATE portal_sessions SET created_at = now() - interval '3 hours' "
                         "WHERE session_hash = $1", session_hash(v.cookie()))
        assert (await v.call("GET", "/api/me"))[0] == 401  # busy, but logged in more than 2 hours ago
        assert (await v.login(card, "5678"))[0] == 200
        assert (await v.call("GET", "/api/me"))[0] == 200
        assert (await v.call("POST", "/api/logout", {}))[0] == 200
        assert (await v.call("GET", "/api/me"))[0] == 401


async def test_state_changes_need_the_session_csrf_token_and_the_same_origin(portal):
    card, _ = await issue(portal, "2222")
    db = portal.runtime.pool
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "2222"))[0] == 200
        numbering = {"bank_codes": ["9000"]}
        status, body = await v.call("POST", "/api/numbering", numbering, csrf=False)
        assert (status, body["reason"]) == (403, "CSRF_REJECTED")
        v_token, v.csrf = v.csrf, "forged"
        assert (await v.call("POST", "/api/numbering", numbering))[0] == 403
        v.csrf = v_token
        status, body = await v.call("POST", "/api/numbering", numbering, origin="https://evil.example")
        assert (status, body["reason"]) == (403, "CSRF_REJECTED")
        # A cross-site HTML form can only send form encodings: refused before anything is read.
        async with v.http.post(f"{portal.url}/api/numbering", data="bank_codes=9000",
                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "X-CSRF-Token": v.csrf}) as resp:
            assert resp.status == 415
        assert await db.fetchval("SELECT count(*) FROM portal_requests WHERE card_id = $1", card) == 0
        status, body = await v.call("POST", "/api/numbering", numbering)  # the page's own request
        assert status == 202, body
        assert await db.fetchval("SELECT count(*) FROM portal_requests WHERE card_id = $1", card) == 1
        # A login from another site is refused too (login CSRF).
        status, body = await v.call("POST", "/api/login", {"card_id": card, "pin": "2222"},
                                    origin="https://evil.example")
        assert (status, body["reason"]) == (403, "CSRF_REJECTED")


async def test_login_failures_are_limited_per_client_so_cards_cannot_be_locked_in_bulk(portal):
    victims = [(await issue(portal, "7777"))[0] for _ in range(3)]
    saved = portal.adapter.throttle
    portal.adapter.throttle = LoginThrottle(max_failures=4, window_s=600)
    try:
        async with Visitor(portal.url) as v:
            assert [(await v.login(victims[0], "0000"))[0] for _ in range(3)] == [401, 401, 423]
            assert (await v.login(victims[1], "0000"))[0] == 401  # the fourth failure from this address
            status, body = await v.login(victims[1], "0000")
            assert (status, body["reason"]) == (429, "RATE_LIMITED") and body["retry_after_s"] > 0
            status, _ = await v.login(victims[2], "7777")  # refused before any card is touched
            assert status == 429
        assert (await portal.cards.state(victims[1]))[1] == 1  # the throttled try never reached the card
        assert (await portal.cards.state(victims[2]))[0].value == "ACTIVE"
        metrics = await portal.runtime.metrics_text()
        assert parse_text(metrics)['renkei_portal_logins_total{worker="connector-portal",outcome="throttled"}'] == 2
    finally:
        portal.adapter.throttle = saved


async def test_the_cookie_is_secure_httponly_and_strict_over_tls(portal):
    card, _ = await issue(portal, "3141")
    tls = server_certificate(portal.settings, "portal-test", ["127.0.0.1"])
    runner, url = await start_site(portal.adapter.app(), "127.0.0.1", 0, ssl_context=tls.server_context())
    try:
        ca = client_context(KeyStore.for_settings(portal.settings).dir / CA_FILE)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/login", json={"card_id": card, "pin": "3141"}, ssl=ca) as resp:
                assert resp.status == 200
                header = resp.headers["Set-Cookie"]
                assert "Strict-Transport-Security" in resp.headers
        attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
        assert {"secure", "httponly", "samesite", "path"} <= attributes and "samesite=strict" in header.lower()
        assert "max-age" not in attributes and "expires" not in attributes  # gone with the browser
        async with Visitor(portal.url) as plain:  # over plain HTTP (loopback) the flag would be lost: not set
            assert (await plain.login(card, "3141"))[0] == 200
            assert not next(c for c in plain.http.cookie_jar if c.key == COOKIE)["secure"]
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- what the person sees (16.5, 20.3)


async def test_a_registration_and_an_agency_inquiry_each_become_a_notice_the_person_sees(running_platform, pg, bus,
                                                                                          portal):
    acct, mn = account("9000", "スズキ ハナコ"), my_number()
    await hold_account(running_platform.settings, pg, mn, acct)
    card, token = await issue(portal, "4321", mn)
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "4321"))[0] == 200
        assert (await v.call("GET", "/api/me"))[1]["account"] is None
        status, body = await v.call("POST", "/api/account", {"operation": "REGISTER", "account": dict(
            acct, branch_code="12")})
        assert (status, body["field"]) == (400, "account.branch_code")
        status, body = await v.call("POST", "/api/account", {"operation": "REGISTER", "account": acct})
        assert status == 202 and body["state"] == "PENDING"
        answered = await follow(v, body["request_id"])
        assert (answered["state"], answered["status"]) == ("CONFIRMED", "DONE")

        (registered,) = await notices(v, "REGISTRATION")
        assert (registered["event"], registered["status"], registered["party"]) == ("REGISTER", "DONE", "portal")
        assert registered["account"]["number_last_digits"] == acct["account_number"][-3:]
        assert acct["account_number"] not in str(registered)  # masked at the registry
        me = (await v.call("GET", "/api/me"))[1]
        assert me["account"]["bank_name"] == {"ja": "デモ銀行 9000", "en": "Demo Bank 9000"}
        assert (me["account"]["branch_code"], me["account"]["holder_kana"]) == (acct["branch_code"], "スズキ ハナコ")
        assert me["unread_notices"] >= 1

        # An agency asks for the account (STEP2): the person is told, and the record names the agency.
        agency_token = await bus.token_for(AGENCY, mn)
        answer = await bus.request(AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=agency_token,
                                   body={"procedure_code": "child-allowance", "purpose": "特別定額給付金",
                                         "requested_at": datetime.now(UTC)},
                                   data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION,
                                   procedure="child-allowance", timeout=60)
        assert answer.body["status"] == "REGISTERED"
        (provided,) = await notices(v, "PROVISION")
        assert provided["party"] == AGENCY and provided["party_name"]["ja"] == "港区 給付担当"
        assert (provided["procedure_code"], provided["purpose"]) == ("child-allowance", "特別定額給付金")

        async def named_record() -> dict | None:
            _, shown = await v.call("GET", "/api/records")
            return shown if any(r["requester"] == AGENCY for r in shown["records"]) else None
        shown = await eventually(named_record, timeout=60)
        assert shown["chain_ok"] and shown["verdict"] in ("OK", "PENDING")
        asked = next(r for r in shown["records"] if r["requester"] == AGENCY)
        assert asked["requester_name"] == {"ja": "港区 給付担当", "en": "Minato City benefits office"}
        assert asked["provider_name"]["ja"] == "デジタル庁 公金受取口座登録簿"
        assert all(r["verified"] for r in shown["records"])

        assert (await v.call("POST", "/api/notices/read", {}))[1]["marked"] >= 2
        assert (await v.call("GET", "/api/notices"))[1]["unread"] == 0

        # a withheld (不開示) record joins the chain but is not shown; the chain still verifies
        pool = await create_pool(observer_dsn(running_platform.settings), min_size=1, max_size=2)  # an insider
        key = KeyStore.for_settings(running_platform.settings).records_key()  # what the hub signs heads with
        try:
            async with pool.acquire() as conn, conn.transaction():
                await ProvisionStore(pool, key).append(conn, [RecordDraft(
                    message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), person_token=token,
                    requester="agency-nta", provider="registry", data_item="public_funds_account",
                    legal_basis="account-registration-act/art9", requested_at=datetime.now(UTC),
                    not_disclosed=True)])
        finally:
            await pool.close()
        after = (await v.call("GET", "/api/records"))[1]
        assert after["chain_ok"] and len(after["records"]) == len(shown["records"])
        assert not any(r["requester"] == "agency-nta" for r in after["records"])

        # altering a stored record turns it red
        await pg.execute("UPDATE provision_records SET provider = 'someone-else' WHERE person_token = $1 "
                         "AND seq = 1", token)
        tampered = (await v.call("GET", "/api/records"))[1]
        assert not tampered["chain_ok"] and tampered["verdict"] == "TAMPERED"
        assert tampered["records"][0]["state"] == "TAMPERED" and tampered["records"][0]["verified"] is False


async def test_a_registration_an_agency_files_alongside_a_procedure_shows_on_the_portal(running_platform, pg, bus,
                                                                                         portal):
    acct, mn = account("9002", "タナカ ジロウ"), my_number()
    await hold_account(running_platform.settings, pg, mn, acct)
    card, _ = await issue(portal, "6543", mn)
    answer = await bus.request("agency-nta", type=msg.REGISTRATION_REQUEST, to="registry",
                               subject=await bus.token_for("agency-nta", mn),
                               body={"operation": "REGISTER", "account": acct, "channel": "ALONGSIDE_PROCEDURE",
                                     "requested_at": datetime.now(UTC)},
                               data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_ALONGSIDE_PROCEDURE, timeout=90)
    assert answer.body["status"] == "DONE", answer.body
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "6543"))[0] == 200
        (notice,) = await notices(v, "REGISTRATION")
        assert (notice["party"], notice["party_name"]["en"]) == ("agency-nta", "National Tax Agency refunds")
        me = (await v.call("GET", "/api/me"))[1]
        assert me["account"]["bank_code"] == "9002" and me["account"]["filed_by"] == "agency-nta"


async def test_numbering_at_several_banks_is_one_result_through_dicj_and_a_lookup_result_is_a_notice(running_platform, pg, bus, portal):
    acct, mn = account("9001", "ヤマモト サクラ"), my_number()
    await hold_account(running_platform.settings, pg, mn, acct)
    card, _ = await issue(portal, "1212", mn)
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "1212"))[0] == 200
        status, body = await v.call("POST", "/api/numbering", {"bank_codes": ["0000"]})
        assert (status, body["reason"]) == (400, "UNKNOWN_PARTICIPANT")
        status, body = await v.call("POST", "/api/numbering", {"bank_codes": ["9000", "9001"]})
        assert status == 202
        sent = await portal.runtime.pool.fetchval(
            "SELECT array_length(message_ids, 1) FROM connector_source_log WHERE source_key = $1",
            f"request/{body['request_id']}")
        assert sent == 1  # several banks: one request through DICJ, one consolidated result back
        answered = await follow(v, body["request_id"])
        assert answered["state"] == "ANSWERED" and answered["banks"] == {"9000": "NO_ACCOUNT", "9001": "LINKED"}
        (numbered,) = await notices(v, "NUMBERING")
        assert numbered["bank_codes"] == ["9001"] and numbered["reference"] == body["request_id"]

        # 災害時照会 under a declared disaster: the platform's DICJ worker asks the designated banks; its result is
        # also a notice to the person, naming the banks that reported accounts
        today, disaster_id = today_jst(), f"2026-P{uuid.uuid4().hex[:8]}"
        await declare(pg, Disaster(disaster_id, "ポータル試験の災害", ("13",), today - timedelta(days=1),
                                   today + timedelta(days=30)), who="test", reason="declared for the test",
                      audit_event=uuid.uuid4())
        answer = await bus.request("portal", type=msg.LOOKUP_APPLICATION_DISASTER, to="dicj",
                                   subject=await bus.token_for("portal", mn),
                                   body={"application_ref": "PORTAL-NOTICE-1", "disaster_id": disaster_id,
                                         "area_code": "13101", "designated_bank_codes": ["9000", "9001"],
                                         "applied_at": datetime.now(UTC)},
                                   data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=BASIS_DISASTER_LOOKUP, timeout=120)
        assert (answer.meta.type, answer.body["banks_with_accounts"]) == (msg.LOOKUP_NOTIFICATION, ["9001"])
        cid = await pg.fetchval("SELECT lookup_correlation FROM dicj_applications WHERE application_ref = $1",
                                "PORTAL-NOTICE-1")
        (found,) = await notices(v, "LOOKUP")
        assert (found["event"], found["status"], found["bank_codes"]) == ("DISASTER", "COMPLETE", ["9001"])
        assert found["banks"][0]["name"]["ja"] == "デモ銀行 9001" and found["reference"] == str(cid)


async def test_only_the_registry_and_dicj_may_notify_the_person(running_platform, pg, bus, portal):
    """An agency forging a notice ("your account was deleted") is refused by the hub and nothing is stored;
    the registry's own notice, sent around it, still arrives."""
    acct, mn = account("9003", "イトウ ケン"), my_number()
    await hold_account(running_platform.settings, pg, mn, acct)
    card, _ = await issue(portal, "9090", mn)
    forged = {"kind": "REGISTRATION", "event": "DELETE", "status": "DONE", "detail": None, "party": "portal",
              "procedure_code": None, "purpose": None, "account": None, "bank_codes": [],
              "reference": str(uuid.uuid4()), "occurred_at": datetime.now(UTC)}
    answer = await bus.request(AGENCY, type=msg.NOTICE, to="portal", subject=await bus.token_for(AGENCY, mn),
                               body=forged, data_item=DATA_PERSON_NOTICE, basis=BASIS_PROVISION, timeout=60)
    assert answer.meta.type == msg.REJECTION_NOTICE and answer.body["reason_code"] == "UNAUTHORISED"
    portal_token = await bus.token_for("portal", mn)
    answer = await bus.request("portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=portal_token,
                               body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                     "requested_at": datetime.now(UTC)},
                               data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=90)
    assert answer.body["status"] == "DONE"
    async with Visitor(portal.url) as v:
        assert (await v.login(card, "9090"))[0] == 200
        (notice,) = await notices(v, "REGISTRATION")
        assert (notice["event"], notice["sender"]) == ("REGISTER", "registry")
    senders = await portal.runtime.pool.fetch("SELECT DISTINCT sender FROM portal_notices WHERE token = $1",
                                              portal_token)
    assert [r["sender"] for r in senders] == ["registry"]
