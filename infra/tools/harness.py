"""What the tools share when they drive a running platform: reading a topic whole, its dead letters, waiting for
quiet or for a condition, the parties of a lookup (banks' database, DICJ's desk, a portal client), and printing
a report of invariants (``renkei chaos`` and ``renkei chaos --insider``).

``renkei bench`` and ``renkei chaos`` (and the integration tests) both use these; keeping them here lets
the tools import one way only (chaos may use bench's traffic generators, never the reverse).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.core.settings import Settings
from infra.domain.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
from infra.domain.validation import generate_my_number
from infra.platform.storage import count_everywhere
from schemas import types as msg

if TYPE_CHECKING:  # the CLI imports this module to build its parser: an ops command must not load the key store
    import asyncpg

    from connectors.dicj import DicjDesk
    from streams.client import BusClient

__all__ = ["LookupWorld", "dead_letter_info", "eventually", "lookup_world", "print_report", "quiesce", "read_topic"]

log = logging.getLogger("renkei.chaos")


async def quiesce(conn: Any, timeout: float = 120.0) -> None:
    """Wait until outboxes are sent and the hub has taken nothing new for two seconds."""
    end = time.monotonic() + timeout
    last, steady = -1, 0
    while time.monotonic() < end and steady < 4:
        pending = await count_everywhere(conn, "participant_outbox", "sent_at IS NULL")
        seen = await conn.fetchval("SELECT count(*) FROM hub_messages")
        steady = steady + 1 if (pending == 0 and seen == last) else 0
        last = seen
        await asyncio.sleep(0.5)


async def eventually(check: Callable[[], Awaitable[Any] | Any], *, timeout: float = 30.0, interval: float = 0.2,
                     what: str = "the condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that.

    The one poll-until loop of the tools and the integration tests.  On timeout: :class:`TimeoutError` saying
    what was awaited and for how long — never the values seen, which may be personal data.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def read_topic(settings: Settings, topic: str, partitions: int = 1, *, patience_s: float = 120.0) -> list[Any]:
    """Every record of ``topic`` from offset 0.

    On Apache Kafka up to the end offsets taken at the start: an empty fetch proves nothing there (while a
    leader moves after a broker's loss, fetches answer nothing for a while), so it reads until every
    partition's position reaches its end, for up to ``patience_s``. On Tansu, whose end offsets are wrong,
    until three fetches in a row bring nothing.
    """
    from aiokafka import TopicPartition

    from infra.platform.kafka import consumer

    cons = consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await cons.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        cons.assign(tps)
        for tp in tps:
            cons.seek(tp, 0)
        ends = None if settings.kafka.tansu else await cons.end_offsets(tps)
        deadline = time.monotonic() + patience_s
        out: list[Any] = []
        idle = 0
        while True:
            batches = await cons.getmany(timeout_ms=200, max_records=10000)
            got = [r for rs in batches.values() for r in rs]
            out.extend(got)
            idle = 0 if got else idle + 1
            if ends is None:
                if idle >= 3:
                    return out
            elif all([await cons.position(tp) >= ends[tp] for tp in tps]):
                return out
            elif time.monotonic() > deadline:
                log.warning("read_topic %s: the end offsets were not reached in %.0f s; returning %d records",
                            topic, patience_s, len(out))
                return out
    finally:
        await cons.stop()


class LookupWorld:
    """Seeding helpers for lookups (accounts at banks, portal numbering), for ``renkei demo`` and ``renkei bench``.

    Built by :func:`lookup_world`; ``conn`` is the simulated banks' own database, ``dicj`` DICJ's desk,
    ``portal`` a portal client.
    """

    def __init__(self, settings: Settings, conn: asyncpg.Connection, dicj: DicjDesk, portal: BusClient) -> None:
        from infra.platform.keystore import KeyStore

        self.settings, self.conn, self.dicj, self.portal = settings, conn, dicj, portal
        self.tokens = KeyStore.for_settings(settings).token_authority()
        self.rng = random.Random()

    def bank_token(self, my_number: str, code: str) -> str:
        return self.tokens.token_for(my_number, f"bank-{code}")

    async def person(self, holdings: dict[str, int]) -> tuple[str, dict[str, list[dict]]]:
        from connectors.bank_sim import seed_customer

        mn = generate_my_number(self.rng)
        accounts: dict[str, list[dict]] = {}
        for code, n in holdings.items():
            for _ in range(n):
                a = {"bank_code": code, "branch_code": f"{self.rng.randrange(1, 999):03d}", "account_type": "ORDINARY",
                     "account_number": f"{self.rng.randrange(10**7):07d}", "holder_kana": "スズキ イチロウ"}
                await seed_customer(self.conn, self.bank_token(mn, code), a)
                accounts.setdefault(code, []).append(a)
        return mn, accounts

    async def number_via_portal(self, my_number: str, code: str) -> dict:
        answer = await self.portal.request(
            "portal", type=msg.NUMBERING_REQUEST, to=f"bank-{code}", subject=await self.portal.token_for("portal", my_number),
            body={"bank_codes": [code], "channel": "PORTAL", "receiving_bank_code": None,
                  "requested_at": datetime.now(UTC)},
            data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=60)
        return answer.body



@asynccontextmanager
async def lookup_world(settings: Settings, tag: str) -> AsyncIterator[LookupWorld]:
    """The parties of a lookup, started and closed together: the simulated banks' database, DICJ's desk and a
    portal client (groups ``<prefix>.<tag>-dicj`` and ``<prefix>.<tag>-portal``)."""
    import asyncpg

    from connectors.dicj import DicjDesk
    from infra.platform.pgdsn import component_dsn
    from infra.platform.pglayout import BANKS
    from streams.client import BusClient

    prefix = settings.kafka.topic_prefix
    conn = await asyncpg.connect(component_dsn(settings, BANKS))  # the simulated banks' own data
    try:
        async with DicjDesk(settings, group=f"{prefix}.{tag}-dicj") as dicj, \
                BusClient(settings, ["portal"], group=f"{prefix}.{tag}-portal") as portal:
            yield LookupWorld(settings, conn, dicj, portal)
    finally:
        await conn.close()


def dead_letter_info(record: Any) -> dict[str, str]:
    headers = {k: (v or b"").decode(errors="replace") for k, v in (record.headers or ())}
    return {"reason": headers.get("renkei.reason", ""), "message_id": headers.get("renkei.message_id", ""),
            "verified": headers.get("renkei.verified", ""),
            "source": f"{headers.get('renkei.src.partition', '')}@{headers.get('renkei.src.offset', '')}"}


def print_report(report: dict[str, Any], console: Any) -> None:
    import json

    from rich.table import Table

    table = Table(title="Renkei chaos: invariants")
    table.add_column("invariant")
    table.add_column("result")
    for name, ok in report["invariants"].items():
        table.add_row(name, "[green]pass[/green]" if ok else "[red]FAIL[/red]")
    console.print(table)
    console.print(json.dumps(report["counts"], indent=1, ensure_ascii=False, default=str))
    for problem in report.get("problems", []):
        console.print(f"[red]{problem}[/red]", markup=True, highlight=False)
    console.print(f"{'All invariants hold' if report['ok'] else 'Some invariants FAILED'} "
                  f"({report['elapsed_s']} s, load {report['load_avg_1m']}).")
