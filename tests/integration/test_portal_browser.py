"""The portal as a person meets it: headless Chromium drives whole visits on the real stack (issue 20, 14.7).

Playwright (the ``playwright`` package) with Debian's Chromium (``/usr/bin/chromium``) and a Japanese font
(``fonts-noto-cjk``), both installed by ``.ci/run``.  A missing browser or font skips this module on a
developer's machine and FAILS it in CI (``tests.tools.require`` under ``RENKEI_CI_REQUIRE=1``).

- A whole visit, in Japanese, with the keyboard for the login: a wrong PIN (tries left shown), log in,
  register the account (the bank's check: pending, then confirmed), the account shown masked, the
  registration notice; an agency's inquiry appears as a notice and as a record by the agency's name,
  verified; the same page in English; a phone-width screen with nothing wider than the screen.
- The card rules in the browser: three wrong PINs lock the card, and a second logged-in browser loses
  access at its next refresh; wrong, right, wrong, wrong leaves the card usable.
- Screenshots (Japanese, English, phone) are checked not blank (pixel spread), and the Japanese glyphs
  are checked rendered: distinct characters draw distinct glyphs with the page's font — which the same
  check, run in a Chromium whose fontconfig lacks every CJK font, reports as missing (so it can fail).
  They are written to ``RENKEI_SCREENSHOTS_DIR`` if set (``docs/img`` refreshes the ones docs/portal.md
  shows), else to the test's temporary folder.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.portal import PortalConnector
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from schemas import types as msg
from tests.integration.test_connectors_support import account, hold_account, my_number, serve_portal
from tests.tools import require

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
AGENCY = "agency-city-minato"
WAIT_MS = 90_000


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    found = subprocess.run(["fc-list", ":lang=ja", "family"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("fc-list") else ""
    if not found:
        return "no Japanese font (apt-get install fonts-noto-cjk)"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    require(_missing())


@pytest.fixture(scope="module")
async def portal(running_platform):
    async with serve_portal(running_platform.settings, "portal-web") as p:
        yield p


@pytest.fixture(scope="module")
async def chromium(browser_ready):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("RENKEI_SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


async def issue(portal: PortalConnector, mn: str, pin: str, prefix: str = "WEB") -> str:
    card = f"{prefix}-{uuid.uuid4().hex[:6].upper()}"
    await portal.enrol(card, mn, pin)
    return card


async def log_in(page: Any, card: str, pin: str) -> None:
    await page.fill("#card-id", card)
    await page.fill("#pin", pin)
    await page.click("#login-button")


# --------------------------------------------------------------------------- what a screenshot must show

GLYPHS = """(font) => {
  const draw = (ch) => {
    const c = document.createElement("canvas"); c.width = 80; c.height = 80;
    const x = c.getContext("2d"); x.font = font; x.fillStyle = "#000"; x.textBaseline = "top";
    x.fillText(ch, 4, 4);
    return Array.from(x.getImageData(0, 0, 80, 80).data.filter((_, i) => i % 4 === 3));
  };
  const chars = ["公", "金", "受", "取", "口", "座"].map(draw);
  const inked = chars.every((g) => g.some((v) => v > 0));
  const distinct = new Set(chars.map((g) => g.join(","))).size;
  return {inked, distinct};
}"""

PIXELS = """async (png) => {
  const img = new Image(); img.src = "data:image/png;base64," + png; await img.decode();
  const c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
  const x = c.getContext("2d"); x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, img.width, img.height).data;
  let n = 0, sum = 0, sq = 0; const colours = new Set();
  for (let i = 0; i < d.length; i += 4 * 7) {
    const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    n++; sum += y; sq += y * y; colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  const mean = sum / n;
  return {width: img.width, height: img.height, variance: sq / n - mean * mean, colours: colours.size};
}"""


async def japanese_rendered(page: Any) -> dict:
    """Six different kanji drawn with the font of the page's heading: each inked, all different."""
    font = await page.evaluate("() => getComputedStyle(document.querySelector('h1')).font")
    return await page.evaluate(GLYPHS, font)


async def screenshot(page: Any, chromium: Any, path: Path, **kw: Any) -> dict:
    """Save a screenshot and measure it in a blank page: size, luminance variance, distinct colours."""
    data = await page.screenshot(path=str(path), **kw)
    blank = await chromium.new_page()
    try:
        stats = await blank.evaluate(PIXELS, base64.b64encode(data).decode())
    finally:
        await blank.close()
    assert stats["variance"] > 200 and stats["colours"] > 50, (path.name, stats)  # text and colour, not blank
    return stats


async def test_the_japanese_check_fails_when_the_font_is_missing(browser_ready, portal, tmp_path):
    """Guard for the guard: a Chromium whose fontconfig has no CJK font draws every kanji alike."""
    from playwright.async_api import async_playwright

    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    "<dir>/usr/share/fonts/truetype/dejavu</dir>"
                    f"<cachedir>{tmp_path / 'fc-cache'}</cachedir></fontconfig>")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                           env={**os.environ, "FONTCONFIG_FILE": str(conf)})
        try:
            page = await browser.new_page()
            await page.goto(portal.url)
            without = await japanese_rendered(page)
        finally:
            await browser.close()
    assert without["distinct"] <= 1 or not without["inked"], without


# --------------------------------------------------------------------------- a whole visit


async def test_a_whole_visit_in_japanese_then_english_then_on_a_phone(running_platform, pg, bus, portal, chromium,
                                                                      shots):
    from playwright.async_api import expect

    acct, mn, pin = account("9000", "タカハシ ケン"), my_number(), "2468"
    await hold_account(running_platform.settings, pg, mn, acct)
    card = await issue(portal, mn, pin)
    context = await chromium.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    page = await context.new_page()
    try:
        await page.goto(portal.url)
        assert await page.get_attribute("html", "lang") == "ja"
        await expect(page.locator("#login-heading")).to_have_text("カードでログイン")
        rendered = await japanese_rendered(page)
        assert rendered == {"inked": True, "distinct": 6}, rendered
        await screenshot(page, chromium, shots / "portal-login-ja.png")

        await log_in(page, card, "9999")
        await expect(page.locator("#login-message")).to_contain_text("あと2回")
        # the right PIN with the keyboard only: focus moves through labelled fields, Enter submits
        await page.focus("#card-id")
        await page.keyboard.press("Control+A")
        await page.keyboard.type(card)
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "pin"
        await page.keyboard.type(pin)
        await page.keyboard.press("Enter")
        await expect(page.locator("#who")).to_have_text(card)
        await expect(page.locator("#account-card")).to_contain_text("登録されている公金受取口座はありません")

        # register: the bank's check is pending, then confirmed; the account is shown masked
        await page.select_option("#bank-code", acct["bank_code"])
        await page.fill("#branch-code", acct["branch_code"])
        await page.fill("#account-number", acct["account_number"])
        await page.fill("#holder-kana", "ﾀｶﾊｼ ｹﾝ")  # half-width, as on a passbook
        await page.click("#account-button")
        await expect(page.locator("#requests")).to_contain_text("口座の登録")
        await expect(page.locator("#account-status")).to_contain_text("口座の登録: 手続きが完了しました", timeout=WAIT_MS)
        card_box = page.locator("#account-card")
        await expect(card_box).to_contain_text("デモ銀行 9000", timeout=WAIT_MS)
        await expect(card_box).to_contain_text(f"****{acct['account_number'][-3:]}")
        await expect(card_box).to_contain_text("タカハシ ケン")
        assert acct["account_number"] not in await card_box.inner_text()
        notices = page.locator("#notices")
        await expect(notices).to_contain_text("公金受取口座が登録されました", timeout=WAIT_MS)

        # an agency asks for the account: a notice and a record by the agency's name, verified
        answer = await bus.request(AGENCY, type=msg.PROVISION_INQUIRY, to="registry",
                                   subject=await bus.token_for(AGENCY, mn),
                                   body={"procedure_code": "child-allowance", "purpose": "臨時特別給付金",
                                         "requested_at": datetime.now(UTC)},
                                   data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION,
                                   procedure="child-allowance", timeout=60)
        assert answer.body["status"] == "REGISTERED"
        await expect(notices).to_contain_text("港区 給付担当に公金受取口座の情報が提供されました", timeout=WAIT_MS)
        await expect(notices).to_contain_text("目的: 臨時特別給付金")
        records = page.locator("#records tbody")
        asked = records.locator("tr.record", has_text="港区 給付担当")  # the inquiry, and the provision
        await expect(asked).to_have_count(2, timeout=WAIT_MS)
        await expect(asked.filter(has_text="提供").first).to_be_visible()
        await expect(page.locator("#records tbody tr.broken")).to_have_count(0)
        await expect(page.locator("#chain-status")).to_contain_text("記録は改ざんされていません")
        assert await page.locator("#records tbody tr.record").count() >= 3
        await expect(records).to_contain_text("年")  # dates in Japanese: 2026年5月1日 …
        await screenshot(page, chromium, shots / "portal-ja.png", full_page=True)

        # the same page in English, every label switched
        await page.click("button.lang[data-lang=en]")
        await expect(page.locator("h1")).to_have_text("Your public-funds account and your information")
        assert await page.get_attribute("html", "lang") == "en"
        await expect(notices).to_contain_text("Your public-funds account was provided to Minato City benefits office")
        await expect(page.locator("#chain-status")).to_contain_text("have not been tampered with")
        await expect(records).to_contain_text("JST")
        await expect(page.locator("#account-card")).to_contain_text("Demo Bank 9000")
        await expect(page.locator("#account-status")).to_have_text("Registering the account: Done")  # said again
        await screenshot(page, chromium, shots / "portal-en.png", full_page=True)
    finally:
        await context.close()

    phone = await chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                       device_scale_factor=2, locale="ja-JP")
    page = await phone.new_page()
    try:
        await page.goto(f"{portal.url}/?lang=ja")
        await log_in(page, card, pin)
        await expect(page.locator("#notices")).to_contain_text("公金受取口座が登録されました", timeout=WAIT_MS)
        await expect(page.locator("#records tbody tr.record").first).to_be_visible(timeout=WAIT_MS)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
        label = await page.locator("#records tbody td.requester").first.evaluate(
            "td => getComputedStyle(td, '::before').content")
        assert "照会した機関" in label  # on a phone each cell carries its column's name
        await page.locator("#notices-section").scroll_into_view_if_needed()
        await screenshot(page, chromium, shots / "portal-phone-ja.png")
    finally:
        await phone.close()


# --------------------------------------------------------------------------- the card rules, in the browser


async def test_three_wrong_pins_lock_the_card_and_a_second_browser_loses_access(portal, chromium):
    from playwright.async_api import expect

    card = await issue(portal, my_number(), "1357")
    holder, stranger = await chromium.new_context(locale="ja-JP"), await chromium.new_context(locale="ja-JP")
    try:
        mine = await holder.new_page()
        await mine.goto(portal.url)
        await log_in(mine, card, "1357")
        await expect(mine.locator("#who")).to_have_text(card)

        theirs = await stranger.new_page()
        await theirs.goto(portal.url)
        for left in ("あと2回", "あと1回"):
            await log_in(theirs, card, "0000")
            await expect(theirs.locator("#login-message")).to_contain_text(left)
        await log_in(theirs, card, "0000")
        await expect(theirs.locator("#login-message")).to_contain_text("このカードはロックされています")
        await log_in(theirs, card, "1357")  # the right PIN no longer helps
        await expect(theirs.locator("#login-message")).to_contain_text("このカードはロックされています")

        # the holder's open page loses access at its next refresh (the page polls every few seconds)
        await expect(mine.locator("#login-section")).to_be_visible(timeout=30_000)
        await expect(mine.locator("#login-message")).to_contain_text("ログインが終了しました")
        await expect(mine.locator("#app-section")).to_be_hidden()
    finally:
        await holder.close()
        await stranger.close()


async def test_wrong_right_wrong_wrong_leaves_the_card_usable(portal, chromium):
    from playwright.async_api import expect

    card = await issue(portal, my_number(), "8080")
    context = await chromium.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        await page.goto(portal.url)
        await log_in(page, card, "1111")
        await expect(page.locator("#login-message")).to_contain_text("あと2回")
        await log_in(page, card, "8080")
        await expect(page.locator("#who")).to_have_text(card)
        await page.click("#logout-button")
        await expect(page.locator("#login-section")).to_be_visible()
        for left in ("あと2回", "あと1回"):
            await log_in(page, card, "1111")
            await expect(page.locator("#login-message")).to_contain_text(left)
        await log_in(page, card, "8080")
        await expect(page.locator("#who")).to_have_text(card)
    finally:
        await context.close()
    assert (await portal.cards.state(card))[0].value == "ACTIVE"
