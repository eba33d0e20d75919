"""Scratch: the platform on the secured cluster."""
from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from connectors.client import BusClient
from infra.policy import BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.validation import generate_my_number
from schemas import types as T
from tests.integration.cluster_fixtures import kafka_cluster, secured_platform  # noqa: F401
from tests.integration.test_connectors_support import hold_account

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AGENCY = "agency-city-minato"


async def test_step1_step2(secured_platform):
    s = secured_platform.settings
    prefix = s.kafka.topic_prefix
    mn = generate_my_number(random.Random())
    acct = {"bank_code": "9001", "branch_code": "101", "account_type": "ORDINARY",
            "account_number": f"{random.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    pg = await asyncpg.connect(s.pg_dsn)
    try:
        await hold_account(s, pg, mn, acct)
    finally:
        await pg.close()
    async with BusClient(s.as_principal("portal"), ["portal"], group=f"{prefix}.portal.test") as portal:
        token = await portal.token_for("portal", mn)
        answer = await portal.request("portal", type=T.REGISTRATION_REQUEST, to="registry", subject=token,
                                      body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                            "requested_at": datetime.now(UTC)},
                                      data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=120)
        assert answer.body["status"] == "DONE", answer.body
    async with BusClient(s.as_principal(AGENCY), [AGENCY], group=f"{prefix}.{AGENCY}.test") as agency:
        token = await agency.token_for(AGENCY, mn)
        answer = await agency.request(AGENCY, type=T.PROVISION_INQUIRY, to="registry", subject=token,
                                      body={"procedure_code": "BENEFIT-001", "purpose": None,
                                            "requested_at": datetime.now(UTC)},
                                      data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=120)
        assert answer.body["status"] == "REGISTERED"
