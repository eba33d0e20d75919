"""Shared helpers for the connector integration tests (no tests here).

Each connector gets its OWN PostgreSQL namespace — the agency's, the bank's or the
portal's database, its schema owned by its own role — next to the platform's
(hub, registry, simulated banks, provision records), on the same real PostgreSQL
and the same real broker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from connectors import channel_keys
from connectors.bank_sim import seed_customer
from connectors.bankhttp_bank import verify_check
from connectors.channel_tls import CA_FILE, server_certificate
from connectors.httpsig import AuthFailed, NonceCache
from connectors.runtime import start_site
from infra.core.settings import Settings
from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.keystore import KeyStore
from infra.platform.pglayout import ident
from schemas import types as msg
from streams.client import BusClient

RNG = random.Random()


async def own_database(platform_settings: Settings, name: str) -> Settings:
    """Settings for a connector with a database namespace of its own (its own database, as in production):
    its component's schema there, owned by its role, and nothing else of the platform's."""
    from infra.platform.pgprovision import provision_database

    spaced = dataclasses.replace(platform_settings, pg_schema_prefix=ident(
        f"{platform_settings.kafka.topic_prefix}_{name}_{uuid.uuid4().hex[:6]}_"))
    await provision_database(spaced)
    return spaced


@contextlib.asynccontextmanager
async def serve_portal(platform_settings: Settings, name: str = "portal") -> AsyncIterator[Any]:
    """The portal connector with its own database next to the platform, verifying the platform's records.

    Test modules lock many cards from 127.0.0.1, so its per-client login throttle is out of the way here
    (it has a test of its own).
    """
    from connectors.portal import PortalConnector
    from connectors.portal_throttle import LoginThrottle
    from infra.platform.pgdsn import records_dsn

    settings = await own_database(platform_settings, name)
    async with PortalConnector(settings, provisions_dsn=records_dsn(platform_settings),
                               throttle=LoginThrottle(max_failures=10_000)) as portal:
        yield portal


def my_number() -> str:
    return generate_my_number(RNG)


def account(bank_code: str = "9000", holder: str = "ヤマダ タロウ") -> dict:
    return {"bank_code": bank_code, "branch_code": f"{RNG.randrange(1000):03d}", "account_type": "ORDINARY",
            "account_number": f"{RNG.randrange(10**7):07d}", "holder_kana": holder}


def bank_token(settings: Settings, mn: str, bank_id: str) -> str:
    """A bank's token for the person: what a simulated bank knows of its customer (tests and demo only)."""
    return KeyStore.for_settings(settings).token_authority().token_for(mn, bank_id)


async def hold_account(settings: Settings, pg: asyncpg.Connection, mn: str, acct: dict) -> None:
    """Open ``acct`` at its simulated bank, held by the person ``mn`` (the bank's customer data)."""
    await seed_customer(pg, bank_token(settings, mn, f"bank-{acct['bank_code']}"), acct)


async def register_through_portal(platform_settings: Settings, pg: asyncpg.Connection, mn: str, acct: dict) -> str:
    """Open the account at a simulated bank, held by the person, and register it (STEP1) with a plain bus client
    as the portal."""
    await hold_account(platform_settings, pg, mn, acct)
    async with BusClient(platform_settings, ["portal"],
                         group=f"{platform_settings.kafka.topic_prefix}.helper-{uuid.uuid4().hex[:6]}") as client:
        token = await client.token_for("portal", mn)
        answer = await client.request("portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
                                      body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                            "requested_at": datetime.now(UTC)},
                                      data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=60)
    assert answer.meta.type == msg.REGISTRATION_RESULT and answer.body["status"] == "DONE", answer.body
    return token


Answer = Callable[[dict], Awaitable[web.Response]]


class BankEndpoint:
    """A bank's own system in a test: its existence-check endpoint over TLS (a certificate from the channel CA),
    verifying the connector's signature before reading the call, then ``answer(body)``.

    ``calls`` keeps ``(Idempotency-Key, body)`` of each authenticated call; ``refused`` the 401 reasons.
    ``url`` and ``ca_file`` once started (``async with``).
    """

    def __init__(self, settings: Settings, bank_id: str, answer: Answer, *,
                 more: dict[str, Answer] | None = None) -> None:
        self.settings, self.bank_id, self.answer = settings, bank_id, answer
        self.more = more or {}  # other endpoints of the bank: path → answer(body)
        self.keys = channel_keys.load(settings, bank_id, create=True)
        self.nonces = NonceCache()
        self.calls: list[tuple[str, dict]] = []
        self.refused: list[str] = []
        self.url: str | None = None
        self.ca_file = KeyStore.for_settings(settings).dir / CA_FILE
        self._runner: Any = None

    async def check(self, request: web.Request) -> web.Response:
        try:
            body = await verify_check(self.keys, self.nonces, request)
        except AuthFailed as exc:
            self.refused.append(exc.reason)
            return web.json_response({"reason": exc.reason, "message": exc.message}, status=401)
        self.calls.append((request.headers["Idempotency-Key"], body))
        answer = self.more.get(request.path, self.answer)
        return await answer(body)

    async def __aenter__(self) -> BankEndpoint:
        app = web.Application()
        app.add_routes([web.post("/v1/existence-checks", self.check)] +
                       [web.post(path, self.check) for path in self.more])
        tls = server_certificate(self.settings, f"test-{self.bank_id}", ["127.0.0.1"])
        self._runner, self.url = await start_site(app, "127.0.0.1", 0, ssl_context=tls.server_context())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._runner.cleanup()


def start_platform(endpoints: Any, database: Any, state: Any, *, with_bank_sim: bool) -> Any:
    """Hub + registry (+ the simulated banks) as real processes, under a fresh prefix and schema.

    Without the bank simulator a bank connector under test is the only consumer of its bank's inbox.
    An async context manager: ``async with start_platform(...) as platform``.
    """
    from tests.integration.platform_fixtures import isolated_platform

    workers = ["hub", "registry", "banks"] if with_bank_sim else ["hub", "registry"]
    return isolated_platform(endpoints, database, state, workers=workers, prefix_letter="c")


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory):
    """Hub and registry for one test module, without the bank simulator (import it into the module)."""
    async with start_platform(endpoints, database, tmp_path_factory.mktemp("platform"), with_bank_sim=False) as p:
        yield p
