"""A running platform for integration tests: hub, registry and simulated banks as real processes.

``running_platform`` starts the workers (faust hub, faust registry, bank
simulator) as child processes against the session's broker and PostgreSQL,
under a fresh topic prefix and PostgreSQL namespace (each component's schema,
owned by its role), and waits until every worker has joined its consumer group.
``pg`` is the administrator with every component schema on its search path
(``infra.platform.pgdsn.observer_dsn``): what a test inspects, it inspects as the operator.  The fixtures
reach every integration test through tests/integration/conftest.py; import the helpers by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra.core.settings import KafkaSettings, Settings
from infra.crypto.pseudonyms import HubPseudonyms
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import observer_dsn
from infra.platform.pgprovision import drop_database_namespace
from infra.platform.stack import WORKERS, Platform
from streams.client import BusClient

__all__ = ["running_platform", "bus", "pg", "PARTICIPANTS_FILE", "isolated_platform", "hub_pseudonyms", "correlation_seen_by",
           "ENTITLED_PROCEDURE"]

PARTICIPANTS_FILE = Path(__file__).with_name("participants.toml")
"""The built-in set plus ``agency-suspended`` (suspended) and ``bank-8999`` (not in lookup fan-outs)."""


ENTITLED_PROCEDURE = {"agency-city-minato": "child-allowance", "agency-nta": "income-tax-refund",
                      "agency-mhlw": "national-pension", "agency-suspended": "child-allowance"}
"""A public-benefit procedure each test agency may ask under (infra/domain/procedures.toml; agency-suspended: refused anyway)."""


def hub_pseudonyms(settings: Settings) -> HubPseudonyms:
    """The hub's ids for a platform's state folder: what a test needs to find a leg, a record or a conversation."""
    return HubPseudonyms.of(KeyStore.for_settings(settings).token_authority())


def correlation_seen_by(settings: Settings, correlation_id: str | uuid.UUID, sender: str,
                        participant: str) -> uuid.UUID:
    """``sender``'s correlation id of a conversation as ``participant`` was shown it (each has its own)."""
    names = hub_pseudonyms(settings)
    return uuid.UUID(names.correlation_for(names.conversation(str(correlation_id), sender), participant))


@contextlib.asynccontextmanager
async def isolated_platform(endpoints: Any, database: Any, state: Path, *,
                            participants_file: Path = PARTICIPANTS_FILE, workers: list[str] | None = None,
                            banks: int | None = None, prefix_letter: str = "p", kafka: KafkaSettings | None = None,
                            prepare: Callable[[Settings], Awaitable[None]] | None = None,
                            **overrides: Any) -> AsyncIterator[Platform]:
    """Workers as real processes under a fresh topic prefix and PostgreSQL namespace, ready to serve.

    ``database``: the session's (``tests.conftest.Database``). ``workers`` names a subset of
    ``infra.platform.stack.WORKERS`` (default: all of them); ``overrides`` are further ``Settings`` fields (e.g.
    ``registry_check_deadline_s``), handed to the workers too. The platform creates its namespace's schemas.
    ``kafka`` replaces the session broker's settings (the secured cluster: its admin's login);
    ``prepare`` runs before the platform starts (e.g. applying the prefix's ACLs).
    """
    prefix = prefix_letter + uuid.uuid4().hex[:10]
    settings = database.settings(endpoints, namespace=prefix, state_dir=state,
                                 participants_file=participants_file,
                                 **({"banks": banks} if banks is not None else {}), **overrides)
    if kafka is not None:
        settings = dataclasses.replace(settings, kafka=dataclasses.replace(kafka, topic_prefix=prefix))
    chosen = WORKERS if workers is None else [w for w in WORKERS if w.name in workers]
    platform = Platform(settings, workers=chosen, die_with_parent=True)
    try:
        if prepare is not None:
            await prepare(settings)
        await platform.start()
        await platform.wait_ready(120)
        yield platform
    finally:
        await platform.stop()
        await drop_database_namespace(settings)


@pytest.fixture(scope="module")
async def running_platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("platform")) as platform:
        yield platform


@pytest.fixture(scope="module")
async def bus(running_platform: Platform) -> AsyncIterator[BusClient]:
    """The portal and every agency, as one client process of the bus (DICJ is the platform's own worker: a
    client claiming DICJ's inbox too would take applications from it)."""
    ids = ["portal"] + [p.id for p in running_platform.participants if p.kind.value == "agency"]
    async with BusClient(running_platform.settings, ids,
                         group=f"{running_platform.settings.kafka.topic_prefix}.clients") as client:
        yield client


@pytest.fixture
async def pg(running_platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(running_platform.settings))
    yield conn
    await conn.close()
