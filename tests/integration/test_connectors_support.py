"""Shared helpers for the connector integration tests (no tests here).

Each connector gets its OWN PostgreSQL namespace — the agency's, the bank's or the
portal's database, its schema owned by its own role — next to the platform's
(hub, registry, simulated banks, provision records), on the same real PostgreSQL
and the same real broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
import uuid
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from connectors.bank_sim import open_account
from connectors.client import BusClient
from infra.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.settings import Settings
from infra.validation import generate_my_number
from schemas import types as T

RNG = random.Random()


async def own_database(platform_settings: Settings, name: str) -> Settings:
    """Settings for a connector with a database namespace of its own (its own database, as in production):
    its component's schema there, owned by its role, and nothing else of the platform's."""
    from infra.pgprovision import provision_database

    spaced = dataclasses.replace(
        platform_settings, pg_schema_prefix=f"{platform_settings.kafka.topic_prefix}_{name}_{uuid.uuid4().hex[:6]}_")
    await provision_database(spaced)
    return spaced


def my_number() -> str:
    return generate_my_number(RNG)


def account(bank_code: str = "9000", holder: str = "ヤマダ タロウ") -> dict:
    return {"bank_code": bank_code, "branch_code": f"{RNG.randrange(1000):03d}", "account_type": "ORDINARY",
            "account_number": f"{RNG.randrange(10**7):07d}", "holder_kana": holder}


async def register_through_portal(platform_settings: Settings, pg: asyncpg.Connection, mn: str, acct: dict) -> str:
    """Open the account at a simulated bank and register it (STEP1) with a plain bus client as the portal."""
    await open_account(pg, acct)
    async with BusClient(platform_settings, ["portal"],
                         group=f"{platform_settings.kafka.topic_prefix}.helper-{uuid.uuid4().hex[:6]}") as client:
        token = await client.token_for("portal", mn)
        answer = await client.request("portal", type=T.REGISTRATION_REQUEST, to="registry", subject=token,
                                      body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                            "requested_at": datetime.now(UTC)},
                                      data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=60)
    assert answer.meta.type == T.REGISTRATION_RESULT and answer.body["status"] == "DONE", answer.body
    return token


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


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
