"""The bank's side of the HTTP channel, as a reference for a bank's own systems (and what the tests use).

- :class:`BankChannelClient` — the bank's systems calling the connector: every
  request signed with the bank's channel key (``bank-to-renkei``), over TLS
  verified against the channel CA (``bank-http-ca.pem``) or the given CA file.
- :func:`verify_check` — the bank's endpoints (existence checks, lookups, numbering
  requests, DICJ's results and notifications): authenticate the connector's call
  (``renkei-to-bank``, nonce remembered) before reading it.

The keys come from the file ``renkei bank channel-key --export`` wrote
(:func:`connectors.channel_keys.load_exported`).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from connectors.channel_tls import client_context
from connectors.httpsig import TO_BANK, TO_RENKEI, ChannelKeys, NonceCache, sign, verify


class BankChannelClient:
    """A bank system's signed HTTPS client for its connector (``async with``)."""

    def __init__(self, base_url: str, keys: ChannelKeys, *, ca_file: Path | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys = keys
        self._tls = client_context(ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BankChannelClient:
        self.http = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=self._tls))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.http is not None:
            await self.http.close()

    async def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                   raw: bytes | None = None, signed: bool = True) -> tuple[int, Any]:
        """``(HTTP status, JSON answer)``; ``raw`` sends bytes as they are (e.g. not JSON)."""
        assert self.http is not None, "use `async with`"
        data = raw if raw is not None else (b"" if body is None else json.dumps(body, ensure_ascii=False).encode())
        sent = dict(headers or {})
        if data:
            sent.setdefault("Content-Type", "application/json")
        if signed:
            target = urllib.parse.urlsplit(self.base_url + path)
            sent["Authorization"] = sign(self.keys.current, TO_RENKEI, method, target.path + (
                f"?{target.query}" if target.query else ""), data)
        async with self.http.request(method, self.base_url + path, data=data or None, headers=sent) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def register(self, idempotency_key: str, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.call("POST", "/v1/registrations", body, headers={"Idempotency-Key": idempotency_key})

    async def state(self, idempotency_key: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/registrations/{idempotency_key}")

    async def link_customer(self, customer_ref: str, my_number: str) -> tuple[int, Any]:
        return await self.call("POST", "/v1/customers", {"customer_ref": customer_ref, "my_number": my_number})

    async def file_numbering(self, idempotency_key: str, body: dict[str, Any]) -> tuple[int, Any]:
        """付番申出 taken at the counter: ``{customer_ref, my_number, bank_codes, own_outcome?}``."""
        return await self.call("POST", "/v1/numbering-requests", body, headers={"Idempotency-Key": idempotency_key})

    async def apply_lookup(self, idempotency_key: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A lookup application taken at the counter (``kind`` INHERITANCE or DISASTER and its fields)."""
        return await self.call("POST", "/v1/lookup-applications", body, headers={"Idempotency-Key": idempotency_key})

    async def request_state(self, kind_path: str, idempotency_key: str) -> tuple[int, Any]:
        """``kind_path``: ``numbering-requests`` or ``lookup-applications``."""
        return await self.call("GET", f"/v1/{kind_path}/{idempotency_key}")

    async def answer_lookup(self, reference: str, accounts: list[dict[str, Any]]) -> tuple[int, Any]:
        """The later answer to a lookup the bank accepted with 202."""
        return await self.call("POST", "/v1/lookup-answers", {"reference": reference, "accounts": accounts})

    async def ack_numbering(self, reference: str, status: str, accounts_linked: int) -> tuple[int, Any]:
        """The later answer to a numbering request the bank accepted with 202."""
        return await self.call("POST", "/v1/numbering-acks", {"reference": reference, "status": status,
                                                               "accounts_linked": accounts_linked})


async def verify_check(keys: ChannelKeys, nonces: NonceCache, request: web.Request) -> dict[str, Any]:
    """The bank's endpoint: authenticate the connector's existence check, then return its JSON body.

    Raises :class:`connectors.httpsig.AuthFailed` (answer 401 with its reason) before reading it.
    """
    body = await request.read()
    nonces.check_and_remember(verify(keys, request.headers.get("Authorization"), TO_BANK, request.method,
                                     request.raw_path, body))
    return json.loads(body)


__all__ = ["BankChannelClient", "verify_check"]
