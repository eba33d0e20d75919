"""Connector processes (``python -m connectors.serve``) on a running platform WITH the bank simulator.

The platform runs the hub, the registry and the simulated banks (every bank, as ``renkei up`` does);
the connectors run as real child processes against the platform's database, as ``renkei bank serve``
does against ``renkei up``.  What is checked: a bank connector takes its bank over from the simulator
under a lease and each message to that bank is handled once (by the connector, not also by the
simulator); a second connector for the bank is refused (exit 2); SIGTERM stops a connector within
seconds (exit 0) and releases the lease, after which the simulator serves the bank again; messages
parked by the simulator while a lease was held go back to it when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from connectors.bank_sim import HANDLERS
from connectors.bankfiles import render_file, write_atomically
from connectors.bankhttp_bank import BankChannelClient
from connectors.serve import BankChannelLease, LeaseHeld
from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.embedded import spawn_python
from infra.platform.metrics_server import fetch_metrics, read_endpoint
from infra.platform.pgdsn import admin_dsn, component_dsn, layout_for, with_search_path
from infra.platform.stack import settings_args, settings_env
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import (
    BankEndpoint,
    account,
    my_number,
    register_through_portal,
    start_platform,
)
from tests.integration.waits import moved_on

pytestmark = pytest.mark.integration

BANK, CODE = "bank-9003", "9003"
CONSENT = {"given_by": "PERSON", "method": "SIGNED_FORM_AT_COUNTER", "given_at": "2025-04-01T10:15:00+09:00",
           "evidence_ref": "FORM-0001"}


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory):
    async with start_platform(endpoints, database, tmp_path_factory.mktemp("platform"), with_bank_sim=True) as p:
        yield p


@pytest.fixture
async def db(platform):
    """The simulated banks' schema (leases, parked messages, the outbox a connector shares), as the operator."""
    conn = await asyncpg.connect(with_search_path(admin_dsn(platform.settings),
                                                  [layout_for(platform.settings).schema("banks")]))
    yield conn
    await conn.close()


class Served:
    """A ``python -m connectors.serve …`` (or ``renkei … serve``: ``module="infra.cli"``) child process, its
    output in a log file."""

    def __init__(self, platform: Any, log: Path, *args: str, module: str = "connectors.serve") -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] = spawn_python(
            module, [*args, *settings_args(platform.settings), "--json"], log, env=settings_env(platform.settings),
            die_with_parent=True)

    def lines(self) -> list[dict]:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    async def started(self, timeout: float = 90) -> dict:
        async def line() -> dict | None:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            return next((x for x in self.lines() if "connector" in x), None)

        return await eventually(line, timeout=timeout, interval=0.2)

    async def exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running after {timeout} s: {self.log.read_text()[-3000:]}"
            await asyncio.sleep(0.1)
        return self.proc.returncode

    async def terminate(self, timeout: float = 20) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self.exited(timeout)
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def answers_from(db: asyncpg.Connection, bank: str) -> int:
    """Existence answers the bank sent (connector and simulator share the outbox: one count for both)."""
    return await db.fetchval("SELECT count(*) FROM participant_outbox WHERE sender = $1 AND type = $2",
                             bank, msg.EXISTENCE_ANSWER)


async def parked_metric(platform: Any, bank: str) -> float:
    endpoint = read_endpoint(platform.settings.state_dir, platform.stack.components["banks"].pid)
    assert endpoint is not None, "the banks worker publishes its metrics endpoint"
    metrics = await fetch_metrics(endpoint.metrics)
    return metrics.get(f'renkei_bank_parked_total{{worker="banks",bank="{bank}"}}', 0.0)


@contextlib.asynccontextmanager
async def portal_registration(platform: Any, acct: dict, mn: str | None = None) -> AsyncIterator[asyncio.Task]:
    """STEP1 at the portal for ``acct`` (the registry then asks the account's bank): the pending answer."""
    async with BusClient(platform.settings, ["portal"],
                         group=f"{platform.settings.kafka.topic_prefix}.serve-{uuid.uuid4().hex[:6]}") as client:
        token = await client.token_for("portal", mn or my_number())
        yield asyncio.create_task(client.request(
            "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
            body={"operation": "REGISTER", "account": acct, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=120))


async def _exists(path: Path) -> Path | None:
    return path if path.exists() else None


async def _first(folder: Path, pattern: str, *, besides: tuple[Path, ...] = ()) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if p not in besides)
    return found[0] if found else None


def _records(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("2,")]


async def test_files_connector_takes_the_bank_over_then_hands_it_back(platform, db, tmp_path):
    root = tmp_path / "bank-9003"
    files = Served(platform, tmp_path / "files.log", "bank", "--bank", CODE, "--channel", "files", "--root", str(root),
                   "--result-deadline", "120")
    try:
        start = await files.started()
        assert start["bank"] == BANK and start["channel"] == "files" and start["inbound"] == str(root / "inbound")
        # every type the simulator would act on for the bank (checks, results, numbering, lookups), and notices
        assert set(start["lease"]["types"]) == set(HANDLERS) | {msg.REJECTION_NOTICE}
        lease = await db.fetchrow("SELECT holder, channel, expires_at > now() AS live FROM bank_channel_leases "
                                  "WHERE bank_id = $1", BANK)
        assert (lease["holder"], lease["channel"], lease["live"]) == (start["lease"]["holder"], "bank-files", True)
        async with aiohttp.ClientSession() as http, http.get(start["health"]) as resp:
            assert resp.status == 200 and (await resp.json())["identities"] == [BANK]

        # a second connector for the same bank is refused while the first holds the lease
        second = Served(platform, tmp_path / "second.log", "bank", "--bank", BANK, "--channel", "http",
                        "--bank-url", "https://127.0.0.1:9")
        try:
            assert await second.exited(60) == 2
            refusal = next(x for x in second.lines() if x.get("reason"))
            assert refusal == {**refusal, "reason": "LEASE_HELD", "bank": BANK, "holder": start["lease"]["holder"]}
        finally:
            second.kill()

        # STEP3 by file: the bank registers its customer's account with the person's consent; the registry
        # checks it with this bank (a CHK file, answered from the bank's records: its customer holds it) and
        # the result comes back to the connector (RES file), not to the simulator
        mn = my_number()
        write_atomically(root / "inbound" / "REG_0001.csv", render_file("REG", CODE, "0001", [
            ["1", "R", "cust-1", mn, "201", "1", "0012345", "ﾀﾅｶ ｲﾁﾛｳ", *CONSENT.values()]]))
        first_check = await eventually(lambda: _first(root / "outbound", "CHK_*.csv"), timeout=90)
        [line] = _records(first_check)
        assert line[6] == "cust-1"  # the check names the customer as the bank knows them
        write_atomically(root / "inbound" / "ANS_0000.csv",
                         render_file("ANS", CODE, "0000", [[line[1], "CONFIRMED", "Y"]]))
        result = await eventually(lambda: _exists(root / "outbound" / "RES_REG_0001.csv"), timeout=90)
        assert [r[2] for r in _records(result)] == ["DONE"]
        assert await db.fetchval("SELECT count(*) FROM bank_registration_results WHERE participant = $1", BANK) == 0

        # STEP1 at the portal with an account at this bank: the existence check becomes a CHK file, the bank's
        # ANS file answers it — once: the simulator (which does not know the account) would say ACCOUNT_NOT_FOUND
        before = await answers_from(db, BANK)
        acct = account(CODE, "タナカ イチロウ")
        async with portal_registration(platform, acct) as pending:
            check = await eventually(lambda: _first(root / "outbound", "CHK_*.csv", besides=(first_check,)),
                                     timeout=90)
            [line] = _records(check)
            write_atomically(root / "inbound" / "ANS_0001.csv",
                             render_file("ANS", CODE, "0001", [[line[1], "CONFIRMED", "Y"]]))
            answer = await pending
        assert answer.meta.type == msg.REGISTRATION_RESULT and answer.body["status"] == "DONE"
        assert await answers_from(db, BANK) == before + 1
        assert await eventually(lambda: parked_metric(platform, BANK)) >= 2  # the simulator parked what it read

        async def parked_rows_gone() -> bool:
            return await db.fetchval("SELECT count(*) FROM bank_parked_messages WHERE bank_id = $1", BANK) == 0

        await eventually(parked_rows_gone)
        for out in (root / "outbound").iterdir():
            assert mn not in out.read_text(encoding="utf-8")
        assert mn not in files.log.read_text(encoding="utf-8")

        # SIGTERM: graceful stop within seconds, lease released
        code, took = await files.terminate()
        assert code == 0 and took < 15, files.log.read_text()[-3000:]
    finally:
        files.kill()
    lease = await db.fetchrow("SELECT expires_at <= now() AS over, released_at FROM bank_channel_leases "
                              "WHERE bank_id = $1", BANK)
    assert lease["over"] and lease["released_at"] is not None

    # the simulator serves the bank again: it answers the next existence check itself (CONFIRMED: the account
    # is its customer's)
    before = await answers_from(db, BANK)
    await register_through_portal(platform.settings, db, my_number(), account(CODE, "スズキ ハナコ"))
    assert await answers_from(db, BANK) == before + 1


async def test_messages_parked_under_a_lease_go_back_to_the_simulator_when_it_ends(platform, db):
    """The handover window: a connector holds the lease but does not read (stopping, crashed) — what the
    simulator parked meanwhile is answered by the simulator once the lease ends (released or expired).

    "Nothing is answered while the lease lives" is checked after two rounds of the simulator's drain,
    each proven by a control: another bank's parked message, whose lease is ended on purpose, answered."""
    bank, code = "bank-9004", "9004"
    controls = ["9000", "9001"]  # banks no other test of this module uses
    from tests.integration.test_connectors_support import hold_account

    async def parked(bank_id: str) -> bool:
        return await db.fetchval("SELECT count(*) FROM bank_parked_messages WHERE bank_id = $1 AND type = $2",
                                 bank_id, msg.EXISTENCE_CHECK) == 1

    async def end_lease(bank_id: str) -> None:
        await db.execute("UPDATE bank_channel_leases SET expires_at = now() WHERE bank_id = $1", bank_id)

    for code_ in [code, *controls]:
        await db.execute(
            "INSERT INTO bank_channel_leases (bank_id, channel, holder, types, expires_at) VALUES ($1, 'bank-files', "
            "'test:0:gone', $2, now() + interval '1 hour')", f"bank-{code_}", [msg.EXISTENCE_CHECK])
    people = {c: (account(c, "サトウ ジロウ"), my_number()) for c in [code, *controls]}
    for acct, mn in people.values():
        await hold_account(platform.settings, db, mn, acct)
    before = await answers_from(db, bank)
    async with contextlib.AsyncExitStack() as stack:
        pending = {c: await stack.enter_async_context(portal_registration(platform, *people[c]))
                   for c in [code, *controls]}
        for c in [code, *controls]:
            await eventually(lambda c=c: parked(f"bank-{c}"), timeout=60)
        for c in controls:  # one drain round of the simulator each, after the bank's message was parked
            await end_lease(f"bank-{c}")
            control = await asyncio.wait_for(pending[c], 60)
            assert control.body["status"] == "DONE"
            assert not pending[code].done() and await answers_from(db, bank) == before  # still parked
        await end_lease(bank)
        answer = await pending[code]
    assert answer.meta.type == msg.REGISTRATION_RESULT and answer.body["status"] == "DONE"
    assert await answers_from(db, bank) == before + 1
    assert await db.fetchval("SELECT count(*) FROM bank_parked_messages WHERE bank_id = $1", bank) == 0


async def test_http_connector_serves_the_bank_and_stops_on_sigterm(platform, db, tmp_path):
    holdings: dict[str, set[str]] = {"cust-h": {"0000765"}}

    async def answer(body: dict) -> web.Response:  # the bank's records: which customer holds which account
        held = body["account"]["account_number"] in holdings.get(body["person"]["customer_ref"] or "", set())
        return web.json_response({"result": "CONFIRMED", "holder": held})

    async with BankEndpoint(platform.settings, BANK, answer) as bank:
        served = Served(platform, tmp_path / "http.log", "bank", "--bank", CODE, "--channel", "http",
                        "--bank-url", bank.url, "--bank-ca", str(bank.ca_file))
        try:
            start = await served.started()
            assert start["channel"] == "http" and start["bank_url"] == bank.url
            assert start["url"].startswith("https://") and start["tls_ca"] == str(bank.ca_file)
            assert start["key_id"] == bank.keys.current.key_id
            async with BankChannelClient(start["url"], bank.keys, ca_file=Path(start["tls_ca"])) as client:
                assert (await client.call("POST", "/v1/registrations", {}, signed=False))[0] == 401
                # STEP3 over HTTP: the bank's registration, checked with the bank and answered to the connector
                body = {"operation": "REGISTER", "customer_ref": "cust-h", "my_number": my_number(), "consent": CONSENT,
                        "account": {"branch_code": "301", "account_type": "1", "account_number": "0000765",
                                    "holder_kana": "ｲﾄｳ ﾕｷ"}}
                status, answer_ = await client.register("serve-1", body)
                assert status == 202, answer_

                async def done() -> dict | None:
                    status, state = await client.state("serve-1")
                    return state if state["status"] != "SENT" else None

                assert (await eventually(done, timeout=90))["status"] == "DONE"
                # STEP1 with an account at this bank, for a customer the bank linked: posted to the bank, once
                mn, acct = my_number(), account(CODE, "イトウ ユキ")
                assert (await client.link_customer("cust-p", mn))[0] == 200
                holdings["cust-p"] = {acct["account_number"]}
            before, calls = await answers_from(db, BANK), len(bank.calls)
            async with portal_registration(platform, acct, mn) as pending:
                answer = await pending
            assert answer.body["status"] == "DONE"
            assert len(bank.calls) == calls + 1 and await answers_from(db, BANK) == before + 1
            assert bank.refused == []  # every call of the connector was signed
            answered = {k: v for k, v in (await fetch_metrics(start["metrics"])).items()
                        if k.startswith("renkei_connector_answered_total{") and 'type="existence.answer"' in k}
            assert list(answered.values()) == [2.0], answered
            code, took = await served.terminate()
            assert code == 0 and took < 15, served.log.read_text()[-3000:]
        finally:
            served.kill()


async def test_portal_and_agency_serve_until_sigterm(platform, tmp_path):
    portal = Served(platform, tmp_path / "portal.log", "portal", "--port", "0")
    # The same handler behind the renkei CLI: `renkei agency serve`.
    agency = Served(platform, tmp_path / "agency.log", "agency", "serve", "--agency", "agency-nta",
                    module="infra.cli")
    try:
        p, a = await asyncio.gather(portal.started(), agency.started())
        assert a["agencies"] == ["agency-nta"]
        async with aiohttp.ClientSession() as http:
            async with http.get(p["url"] + "/") as resp:
                assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            for health in (p["health"], a["health"]):
                async with http.get(health) as resp:
                    assert resp.status == 200, await resp.text()
        # `renkei status` lists connectors started by hand under the same state folder, with their health
        status = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "infra.cli", "status", "--json", *settings_args(platform.settings)],
            capture_output=True, text=True, timeout=60, env={**os.environ, **settings_env(platform.settings)})
        listed = {r["pid"]: r for r in json.loads(status.stdout)["components"]}
        for started in (p, a):
            row = listed[started["pid"]]
            assert row["name"].startswith("connector-") and row["alive"] and row["health"] == "ok", row
        codes = await asyncio.gather(portal.terminate(), agency.terminate())
        assert [c for c, _ in codes] == [0, 0] and all(took < 15 for _, took in codes)
    finally:
        portal.kill()
        agency.kill()


async def test_bad_flags_exit_2_before_anything_starts(platform, tmp_path):
    bad = Served(platform, tmp_path / "bad.log", "bank", "serve", "--bank", CODE, "--channel", "files", "--root",
                 str(tmp_path), "--result-deadline", "0", module="infra.cli")
    assert await bad.exited(60) == 2
    assert "--result-deadline" in bad.log.read_text() and not bad.lines()


async def test_lease_refuses_a_second_holder_lets_a_standby_in_and_tells_the_first_it_lost(platform):
    # A lease far longer than the test: only a release can hand it over, however slow the machine.
    dsn = component_dsn(platform.settings, "bank-9002")  # the bank connector's role, as `renkei bank serve`
    first = BankChannelLease(dsn, "bank-9002", "bank-files", [msg.EXISTENCE_CHECK], ttl_s=60)
    second = BankChannelLease(dsn, "bank-9002", "bank-http", [msg.EXISTENCE_CHECK], ttl_s=60)
    await first.open()
    await second.open()
    tries = 0
    take = second.take

    async def counted_take() -> Any:  # the standby's rounds, counted
        nonlocal tries
        tries += 1
        return await take()

    try:
        await first.acquire(standby=False, stop=asyncio.Event())
        with pytest.raises(LeaseHeld) as refused:
            await second.acquire(standby=False, stop=asyncio.Event())
        assert refused.value.detail["holder"] == first.holder
        second.take = counted_take  # type: ignore[method-assign]
        standby = asyncio.create_task(second.acquire(standby=True, stop=asyncio.Event()))
        await moved_on(lambda: tries, by=2, what="the standby")  # two rounds refused while the first holds it
        assert not standby.done() and await first.renew()  # renewed: the standby keeps waiting
        await first.release()
        await asyncio.wait_for(standby, 30)  # taken at its next round
        assert second.held and not await first.renew()  # the first would now stop (exit 1)
    finally:
        await second.release()
        await first.close()
        await second.close()
