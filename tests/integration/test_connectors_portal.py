"""Portal connector: PIN login and lock-out, STEP1 registration, numbering, provision records with the chain verified.

The browser test drives the real page in headless Chromium (Playwright, /usr/bin/chromium); it is skipped
only when chromium or the playwright package is not installed.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest

from connectors.portal import PortalConnector
from infra.keystore import KeyStore
from infra.provisions import ProvisionStore, RecordDraft
from infra.storage import create_pool
from tests.integration.platform_fixtures import *  # noqa: F403
from tests.integration.test_connectors_support import account, eventually, hold_account, my_number, own_database

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
async def portal(running_platform):
    settings = await own_database(running_platform.settings, "portal")
    async with PortalConnector(settings, provisions_dsn=running_platform.settings.pg_dsn) as p:
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


async def test_wrong_pins_lock_the_card(portal):
    await portal.enrol("card-lock", my_number(), "1234")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        seen = []
        for _ in range(3):
            async with http.post(f"{portal.url}/api/login", json={"card_id": "card-lock", "pin": "0000"}) as resp:
                seen.append((resp.status, (await resp.json()).get("tries_left")))
        assert seen == [(401, 2), (401, 1), (423, None)]
        assert (await login(http, portal.url, "card-lock", "1234")).status == 423  # the right PIN no longer helps
        async with http.get(f"{portal.url}/api/records") as resp:
            assert resp.status == 401


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
        pool = await create_pool(running_platform.settings.pg_dsn, min_size=1, max_size=2)
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


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
async def test_browser_login_register_and_see_the_record(pg, portal):
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
