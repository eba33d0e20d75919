"""``renkei ops serve`` on the running platform (issue 19, item 7): what it shows, and who it refuses.

- Who may look: with a token, a request without it or with a wrong one is refused (401), from loopback
  too, and a write method is refused (405), while the right token keeps getting the page between the
  refusals; without a token the page answers loopback peers only — a peer reaching it over the machine's
  network address is refused (403) even when the page was bound to every address.
- What it shows, in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright, as the portal's
  browser test): every worker and its health, the platform's consumer groups, the hub's dead letters by
  reason, the ops audit event of a dry-run re-drive — and never a subject token or a My Number, not even
  the one an operator typed into the re-drive's reason.  A screenshot is checked not blank and written
  to ``RENKEI_SCREENSHOTS_DIR`` if set (``docs/img`` refreshes docs/operations.md's), else to the test's
  temporary folder.  A missing Chromium skips the browser test here and FAILS it in CI.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import aiohttp
import pytest

from infra.ops.dlq import redrive
from infra.ops.ops_page import OpsPage, PageAccess
from infra.platform.stack import WORKERS
from tests.integration.platform_fixtures import bus, running_platform  # noqa: F401
from tests.integration.test_flows import AGENCY, person
from tests.integration.test_monitoring import send_junk
from tests.integration.test_portal_browser import ARGS, CHROMIUM, screenshot
from tests.integration.waits import hub_barrier
from tests.tools import require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "ops-page-test-token-7f3a9c2e"
TYPED_BY_MISTAKE = "123456789018"  # a My Number-shaped run an operator put into a --reason


def network_address() -> str | None:
    """This machine's address on a network interface (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, \
            s.request(method, url, headers=headers) as r:
        return r.status, await r.text()


async def test_with_a_token_anyone_without_it_is_refused_and_the_holder_still_served(running_platform, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    access = PageAccess.for_address("127.0.0.1", token_file)
    async with OpsPage(running_platform.settings, access) as page:
        assert page.url is not None
        status, body = await get(page.url, TOKEN)
        assert status == 200 and "Components and health" in body
        for attempt in (None, "wrong-token-of-the-same-length!", TOKEN[:-1], ""):
            status, body = await get(page.url, attempt)
            assert status == 401 and "UNAUTHORISED" in body and "Components" not in body, attempt
            assert (await get(page.url + "api/overview", attempt))[0] == 401
            status, body = await get(page.url, TOKEN)  # the holder, between the refusals
            assert status == 200 and "Consumer groups" in body
        assert (await get(page.url, TOKEN, method="POST"))[0] == 405
        assert (await get(page.url, TOKEN, method="DELETE"))[0] == 405
        status, _ = await get(page.url + "api/overview", TOKEN)
        assert status == 200


async def test_without_a_token_a_peer_on_the_network_is_refused_even_when_it_can_connect(running_platform):
    address = network_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    # Bound to every address on purpose (the CLI refuses that without a token): the peer check still holds.
    async with OpsPage(running_platform.settings, PageAccess(None), host="0.0.0.0") as page:
        assert page.url is not None
        port = page.url.rstrip("/").rsplit(":", 1)[1]
        status, body = await get(f"http://{address}:{port}/")
        assert status == 403 and "Components" not in body
        assert (await get(f"http://{address}:{port}/api/overview"))[0] == 403
        status, body = await get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "Components and health" in body
        assert (await get(f"http://{address}:{port}/"))[0] == 403


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("RENKEI_SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


async def test_the_page_in_chromium_shows_components_lag_dead_letters_and_audit_events_only_as_metadata(
        running_platform, bus, shots, tmp_path):
    require(None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    settings = running_platform.settings
    mn = person()
    token = await bus.token_for(AGENCY, mn)
    await send_junk(settings, 2)
    await hub_barrier(settings)
    await redrive(settings, reason_code="MALFORMED", reason=f"checking the junk; customer {TYPED_BY_MISTAKE}",
                  dry_run=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with OpsPage(settings, PageAccess.for_address("127.0.0.1", token_file)) as page_server, \
            async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                                extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
            page = await context.new_page()
            assert page_server.url is not None
            await page.goto(page_server.url, wait_until="load", timeout=90_000)
            components = await page.inner_text("#components")
            for worker in WORKERS:
                assert worker.name in components
            assert "ok" in components
            groups = await page.inner_text("#groups")
            prefix = settings.kafka.topic_prefix
            assert f"{prefix}.hub" in groups and f"{prefix}.registry" in groups
            dead = await page.inner_text("#dead_letters")
            assert "MALFORMED" in dead
            audit = await page.inner_text("#audit")
            assert "redrive (dry run)" in audit and "[digits hidden]" in audit and "matched" in audit
            text = await page.inner_text("body")
            assert TYPED_BY_MISTAKE not in text and mn not in text and token not in text
            assert TYPED_BY_MISTAKE not in await page.content()
            await screenshot(page, browser, shots / "ops-page.png", full_page=True)
            assert (shots / "ops-page.png").stat().st_size > 10_000
            unauthorised = await browser.new_page()  # a browser without the token sees no page
            response = await unauthorised.goto(page_server.url)
            assert response is not None and response.status == 401
            assert "Components" not in await unauthorised.content()
        finally:
            await browser.close()
