"""``renkei demo`` flow ``portal-page``: the demo person logs in to the portal page with their card.

The demo runs the portal connector (``connectors.portal.PortalConnector``) next
to its platform from the start, so the notices the registry sends (お知らせ)
are kept as they arrive.  After the account flows, this flow does over HTTP
what the page does: logs in with the demo card and PIN, reads the registered
account (masked), the notices and the verified provision records, and logs
out.  It checks what a person must see: the account the bank counter
registered last (STEP3), a notice for each registration and each provision to
an agency, and records that verify.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from infra.core.clock import elapsed_ms

NOTICES_WANTED = {("REGISTRATION", "REGISTER"), ("REGISTRATION", "CHANGE"), ("PROVISION", "REGISTERED")}


async def portal_flow(url: str, card: Any, *, expected_bank: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Log in as the demo person, wait for their notices, read account and records; one flow dict."""
    import aiohttp

    started = time.perf_counter()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        headers = {"Origin": url}
        async with http.post(f"{url}/api/login", json={"card_id": card.card_id, "pin": card.pin},
                             headers=headers) as resp:
            login = resp.status
            csrf = (await resp.json()).get("csrf_token")
        if login != 200:
            return {"name": "portal-page", "ok": False, "login": login}
        seen: set[tuple[str, str]] = set()
        notices: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while not NOTICES_WANTED <= seen and time.monotonic() < deadline:
            async with http.get(f"{url}/api/notices") as resp:
                notices = (await resp.json())["notices"]
            seen = {(n["kind"], n["event"]) for n in notices}
            if not NOTICES_WANTED <= seen:
                await asyncio.sleep(0.5)
        async with http.get(f"{url}/api/me") as resp:
            me = await resp.json()
        async with http.get(f"{url}/api/records") as resp:
            records = await resp.json()
        async with http.post(f"{url}/api/logout", json={}, headers={**headers, "X-CSRF-Token": csrf or ""}):
            pass
    account = me.get("account") or {}
    return {"name": "portal-page",
            "ok": NOTICES_WANTED <= seen and account.get("bank_code") == expected_bank
            and records.get("chain_ok") is True and bool(records.get("records")),
            "login": login, "account_bank": account.get("bank_code"), "notices": len(notices),
            "notice_kinds": sorted(f"{k}:{e}" for k, e in seen), "records_verdict": records.get("verdict"),
            "elapsed_ms": elapsed_ms(started)}


__all__ = ["NOTICES_WANTED", "portal_flow"]
