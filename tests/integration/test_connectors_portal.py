"""Portal connector: PIN login and lock-out, STEP1 registration, numbering, provision records with the chain verified.

The browser test drives the real page in headless Chromium (Playwright, /usr/bin/chromium); it is skipped
only when chromium or the playwright package is not installed, and fails instead under CI (tests/tools.py).
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest

from connectors.portal import PortalConnector
from infra.keystore import KeyStore
from infra.pgdsn import observer_dsn, records_dsn
from infra.provisions import ProvisionStore, RecordDraft
from infra.storage import create_pool
from tests.integration.platform_fixtures import *  # noqa: F403
from tests.integration.test_connectors_support import account, eventually, hold_account, my_number, own_database
from tests.tools import require

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
async def portal(running_platform):
    settings = await own_database(running_platform.settings, "portal")
    async with PortalConnector(settings, provisions_dsn=records_dsn(running_platform.settings)) as p:
        yield p


async def login(http: aiohttp.ClientSession, url: str, card: str, pin: str) -> aiohttp.ClientResponse:
    async with http.post(f"{url}/api/login", json={"card_id": card, "pin": pin}) as resp:
        await resp.read()
        return resp


async def follow(http, url, request_id, timeout=60.0) -> dict:
    async def answered():
        async with http.get(f"{url}/api/requests/{request_id}") as resp:
            body = await resp.json()
            return body if body["status"] != "SENT" else None
    return await eventually(answered, timeout=timeout, interval=0.3)


def session() -> aiohttp.ClientSession:
    """One browser: its own cookie jar."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def wrong_pin(http: aiohttp.ClientSession, url: str, card: str) -> tuple[int, int | None]:
    async with http.post(f"{url}/api/login", json={"card_id": card, "pin": "0000"}) as resp:
        return resp.status, (await resp.json()).get("tries_left")


async def can_read_records(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/api/records") as resp:
        await resp.read()
        assert resp.status in (200, 401), resp.status
        return resp.status == 200


async def test_wrong_pins_lock_the_card_and_end_its_other_sessions(portal):
    await portal.enrol("card-lock", my_number(), "1234")
    async with session() as owner, session() as guesser:
        assert (await login(owner, portal.url, "card-lock", "1234")).status == 200  # the owner, logged in
        assert await can_read_records(owner, portal.url)
        seen = [await wrong_pin(guesser, portal.url, "card-lock") for _ in range(3)]  # someone else guesses
        assert seen == [(401, 2), (401, 1), (423, None)]
        assert (await login(guesser, portal.url, "card-lock", "1234")).status == 423  # the right PIN no longer helps
        assert not await can_read_records(guesser, portal.url)
        assert not await can_read_records(owner, portal.url)  # the session opened before the lock is over too
        # Reset at the counter (the card is issued again): the old session does not come back with it.
        await portal.enrol("card-lock", my_number(), "1234")
        assert not await can_read_records(owner, portal.url)
        assert (await login(owner, portal.url, "card-lock", "1234")).status == 200
        assert await can_read_records(owner, portal.url)


async def test_a_card_locked_at_the_counter_ends_its_live_sessions(portal):
    """A lock that did not come from wrong PINs (the card reported lost): its sessions end at once."""
    await portal.enrol("card-lost", my_number(), "5678")
    async with session() as owner:
        assert (await login(owner, portal.url, "card-lost", "5678")).status == 200
        assert await can_read_records(owner, portal.url)
        await portal.runtime.pool.execute("UPDATE portal_people SET locked = true WHERE card_id = 'card-lost'")
        assert not await can_read_records(owner, portal.url)
        assert (await login(owner, portal.url, "card-lost", "5678")).status == 423


async def test_a_right_pin_resets_the_count_of_wrong_ones(portal):
    await portal.enrol("card-reset", my_number(), "2222")
    async with session() as http:
        assert await wrong_pin(http, portal.url, "card-reset") == (401, 2)
        assert (await login(http, portal.url, "card-reset", "2222")).status == 200
        # wrong, right, wrong, wrong: two wrong in a row, not three — the card stays usable
        assert [await wrong_pin(http, portal.url, "card-reset") for _ in range(2)] == [(401, 2), (401, 1)]
        assert (await login(http, portal.url, "card-reset", "2222")).status == 200
        assert await can_read_records(http, portal.url)
    assert await portal.runtime.pool.fetchval("SELECT locked FROM portal_people WHERE card_id = 'card-reset'") is False


async def test_register_then_records_are_listed_verified_and_withheld_ones_hidden(running_platform, pg, portal):
    acct, mn = account("9000", "スズキ ハナコ"), my_number()
    await hold_account(running_platform.settings, pg, mn, acct)  # the bank's records: the card holder's account
    await portal.enrol("card-0001", mn, "4321")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await login(http, portal.url, "card-0001", "4321")).status == 200
        bad = dict(acct, branch_code="12")
        async with http.post(f"{portal.url}/api/account", json={"operation": "REGISTER", "account": bad}) as resp:
            assert resp.status == 400
            assert (await resp.json())["field"] == "account.branch_code"
        async with http.post(f"{portal.url}/api/account", json={"operation": "REGISTER", "account": acct}) as resp:
            assert resp.status == 202
            request_id = (await resp.json())["request_id"]
        assert (await follow(http, portal.url, request_id))["status"] == "DONE"

        async with http.get(f"{portal.url}/api/records") as resp:
            shown = await resp.json()
        assert shown["chain_ok"] and shown["records"] and shown["verdict"] in ("OK", "PENDING")
        assert all(r["verified"] for r in shown["records"])
        assert any(r["requester"] == "portal" and r["provider"] == "registry" for r in shown["records"])

        # a withheld (不開示) record joins the chain but is not shown; the chain still verifies
        token = await portal.runtime.pool.fetchval("SELECT token FROM portal_people WHERE card_id = 'card-0001'")
        pool = await create_pool(observer_dsn(running_platform.settings), min_size=1, max_size=2)  # an insider
        key = KeyStore.for_settings(running_platform.settings).records_key()  # what the hub signs heads with
        try:
            async with pool.acquire() as conn, conn.transaction():
                await ProvisionStore(pool, key).append(conn, [RecordDraft(
                    message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), person_token=token, requester="agency-nta",
                    provider="registry", data_item="public_funds_account", legal_basis="account-registration-act/art9",
                    requested_at=datetime.now(UTC), not_disclosed=True)])
        finally:
            await pool.close()
        async with http.get(f"{portal.url}/api/records") as resp:
            after = await resp.json()
        assert after["chain_ok"] and len(after["records"]) == len(shown["records"])
        assert not any(r["requester"] == "agency-nta" for r in after["records"])

        # altering a stored record turns it red
        await pg.execute("UPDATE provision_records SET provider = 'someone-else' WHERE person_token = $1 "
                         "AND seq = 1", token)
        async with http.get(f"{portal.url}/api/records") as resp:
            tampered = await resp.json()
        assert not tampered["chain_ok"] and tampered["verdict"] == "TAMPERED"
        assert [r["verified"] for r in tampered["records"]][0] is False
        assert tampered["records"][0]["state"] == "TAMPERED"


async def test_numbering_request_is_sent_to_each_named_bank(portal):
    await portal.enrol("card-num", my_number(), "1111")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, portal.url, "card-num", "1111")
        async with http.post(f"{portal.url}/api/numbering", json={"bank_codes": ["9000", "9001"]}) as resp:
            assert resp.status == 202
            request_id = (await resp.json())["request_id"]
        async with http.post(f"{portal.url}/api/numbering", json={"bank_codes": ["0000"]}) as resp:
            assert resp.status == 400 and (await resp.json())["reason"] == "UNKNOWN_PARTICIPANT"
    sent = await portal.runtime.pool.fetchval(
        "SELECT array_length(message_ids, 1) FROM connector_source_log WHERE source_key = $1", f"request/{request_id}")
    assert sent == 2


def _browser_missing() -> str | None:
    if shutil.which("chromium") is None and not shutil.os.path.exists(CHROMIUM):
        return "chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return None


async def test_browser_login_register_and_see_the_record(pg, portal):
    require(_browser_missing())  # skipped without Chromium, failed under CI (RENKEI_CI_REQUIRE=1)
    from playwright.async_api import async_playwright, expect

    acct, mn = account("9000", "タカハシ ケン"), my_number()
    await hold_account(portal.settings, pg, mn, acct)
    await portal.enrol("card-web1", mn, "2468")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = await browser.new_page()
            await page.goto(portal.url)
            await page.fill("#card-id", "card-web1")
            await page.fill("#pin", "9999")
            await page.click("#login-button")
            await expect(page.locator("#login-message")).to_contain_text("2 tries left")
            await page.fill("#pin", "2468")
            await page.click("#login-button")
            await expect(page.locator("#who")).to_have_text("card-web1")
            await page.fill("#bank-code", acct["bank_code"])
            await page.fill("#branch-code", acct["branch_code"])
            await page.fill("#account-number", acct["account_number"])
            await page.fill("#holder-kana", "ﾀｶﾊｼ ｹﾝ")  # half-width, as on a passbook
            await page.click("#account-button")
            await expect(page.locator("#account-status")).to_contain_text("DONE", timeout=60_000)
            rows = page.locator("#records tbody tr.record")
            await expect(rows.first).to_be_visible(timeout=30_000)
            await expect(page.locator("#records tbody tr.broken")).to_have_count(0)
            await expect(page.locator("#chain-status")).to_contain_text("Chain verified")
            assert await page.locator("#records tbody tr.verified").count() >= 1
        finally:
            await browser.close()
