"""``renkei chaos``: crash safety, hostile input and a leak scan, on a running platform.

Why this file is long: crash safety and hostile input share one traffic generator and one observer of the
records; the broker and insider attacks are already :mod:`infra.tools.chaos_broker` and
:mod:`infra.tools.chaos_insider`.

1. **Crash safety** (:func:`crash_safety`) — mixed traffic of every flow
   (token issuance, STEP1 registration with the bank's existence check,
   STEP2 inquiries from every agency, numbering via the portal, inheritance
   lookups to every bank, and a few injected bad envelopes) while hub workers
   are SIGKILLed and restarted, the registry worker once and the bank worker
   once; then drain and check the invariants (exactly-once answers, effects
   and provision records; chains verify; no dead letter but the injected
   ones and REPLAYED copies of accepted messages — the outbox re-sends a
   killed participant could not mark as sent).  The invariants are pure
   functions in :mod:`infra.tools.chaos_invariants` over what is collected here:
   every envelope of the run's correlations on the wire, the tables' rows
   as they are (no DISTINCT), the audit topic and the dead letters.
2. **Hostile input** (:func:`bad_input`) — generated and mutated envelopes
   produced straight onto the ingress topic (random bytes, truncations, bit
   flips, wrong fingerprints, forged, swapped and re-addressed signatures,
   whole-envelope replays, expired, unauthorised, oversize), interleaved with
   good traffic: every bad one must be dead-lettered with a reason code, every
   good one delivered, no worker may die and the hub must keep moving.
3. **Insiders** (:mod:`infra.tools.chaos_insider`, alone with ``--insider``) — a
   holder of the hub's keyset, a database superuser and a writer on every
   topic try the attacks of issue 13; each is an invariant (refused/detected).
4. **Leak scan** (:mod:`infra.tools.leakscan`) — every topic, table and log file
   searched for every My Number used, including the demo's.

``run_chaos`` runs the four on its own embedded stack (``<state>/chaos``);
tests call the parts on their own platform with a smaller :class:`ChaosPlan`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.core.settings import Settings
from infra.platform.storage import count_everywhere, everywhere
from infra.tools.chaos_invariants import (
    DeadLetterSeen,
    Observations,
    RecordSeen,
    Request,
    WireMessage,
    check,
    summary,
)
from infra.tools.harness import (
    dead_letter_info,
    print_report,  # noqa: F401 - `renkei chaos` prints its report with chaos.print_report
    quiesce,
    read_topic,
)

log = logging.getLogger("renkei.chaos")


@dataclass(frozen=True)
class ChaosPlan:
    traffic_s: float = 60.0
    hub_kills: int = 3
    registry_kills: int = 1
    bank_kills: int = 1
    broker_kills: int = 1  # Kafka brokers SIGKILLed and restarted (infra.tools.chaos_broker), where a target is given
    hub_workers: int = 2
    inquiry_rate: float = 12.0  # STEP2 inquiries per second
    people: int = 60
    injected_bad: int = 30  # bad envelopes mixed into the crash-safety traffic
    bad_envelopes: int = 100_000
    good_envelopes: int = 2_000
    banks: int = 20


FULL = ChaosPlan()
QUICK = ChaosPlan(traffic_s=15, hub_kills=1, registry_kills=1, bank_kills=1, hub_workers=1, inquiry_rate=6,
                  people=16, injected_bad=10, bad_envelopes=2_000, good_envelopes=200, banks=6)


def _now() -> datetime:
    return datetime.now(UTC)


# -- killing workers ---------------------------------------------------------------------------------


def kill_and_restart(platform: Any, name: str) -> None:
    """SIGKILL one worker of ``platform`` and start a fresh one under the same name."""
    from infra.platform.stack import WORKERS

    component = platform.stack.components[name]
    os.kill(component.pid, signal.SIGKILL)
    proc = platform.stack._procs.get(name)
    if proc is not None:
        proc.wait(timeout=10)  # reap it
    spec = next(w for w in WORKERS if name == w.name or name.startswith(f"{w.name}-"))
    platform.start_worker(spec, name=name)


# -- crash safety ----------------------------------------------------------------------------------


@dataclass
class Sent:
    kind: str
    correlation_id: str
    answer_type: str
    sender: str
    outcome: str = "pending"  # answered | timeout | error:<type>


@dataclass
class CrashReport:
    invariants: dict[str, bool] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _Traffic:
    """The clients of the crash-safety run and what they sent."""

    def __init__(self, platform: Any, plan: ChaosPlan, rng: random.Random) -> None:
        from infra.domain.validation import generate_my_number
        from infra.platform.keystore import KeyStore

        self.platform, self.plan, self.rng = platform, plan, rng
        self.settings = platform.settings
        self.participants = platform.participants
        from infra.domain.procedures import Procedures

        catalogue = Procedures.load()
        # Each agency asks under a procedure it is entitled to (the hub refuses any other).
        self.procedures = {p.id: entitled[0].code for p in self.participants
                           if p.kind.value == "agency" and not p.suspended and (entitled := catalogue.for_agency(p))}
        self.agencies = list(self.procedures)
        self.banks = [b for b in self.participants.banks(participating_only=True) if not b.suspended]
        self.authority = KeyStore.for_settings(self.settings).token_authority()
        self.people = [generate_my_number(rng) for _ in range(plan.people)]
        self.sent: list[Sent] = []
        self.lookups: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.injected = 0
        self.registered: set[int] = set()

    def token(self, i: int, participant: str) -> str:
        return self.authority.token_for(self.people[i], participant)

    async def setup(self, conn: Any) -> None:
        """Bank accounts for everyone; customers known to two banks each for numbering and lookups."""
        from connectors.bank_sim import seed_customer

        for i in range(len(self.people)):
            bank = self.banks[i % len(self.banks)]
            await seed_customer(conn, self.token(i, bank.id), self.account(i))  # the person's own account there
            other = self.banks[(i + 1) % len(self.banks)]
            await seed_customer(conn, self.token(i, other.id), {
                "bank_code": other.bank_code, "branch_code": "202", "account_type": "ORDINARY",
                "account_number": f"{5000000 + i:07d}", "holder_kana": "スズキ イチロウ"})
            assert bank.bank_code is not None

    def account(self, i: int) -> dict:
        return {"bank_code": self.banks[i % len(self.banks)].bank_code, "branch_code": "101",
                "account_type": "ORDINARY", "account_number": f"{3000000 + i:07d}", "holder_kana": "ヤマダ タロウ"}

    def request(self, bus: Any, kind: str, sender: str, answer_type: str, **message: Any) -> None:
        from infra.crypto.envelope import Message

        cid = str(uuid.uuid4())
        entry = Sent(kind, cid, answer_type, sender)
        self.sent.append(entry)

        async def go() -> None:
            try:
                answer = await bus.runtime.request(sender, Message(correlation_id=cid, **message), timeout=300)
                entry.outcome = "answered" if answer.meta.type == answer_type else f"answered:{answer.meta.type}"
            except (TimeoutError, asyncio.TimeoutError):
                entry.outcome = "timeout"
            except Exception as exc:  # counted, and the invariant fails
                entry.outcome = f"error:{type(exc).__name__}"

        self.tasks.append(asyncio.create_task(go()))

    def inquiry(self, bus: Any) -> None:
        from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
        from schemas import types as msg

        agency = self.rng.choice(self.agencies)
        i = self.rng.randrange(len(self.people))
        self.request(bus, "step2", agency, msg.PROVISION_RESPONSE, type=msg.PROVISION_INQUIRY, to="registry",
                     subject=self.token(i, agency), data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION,
                     body={"procedure_code": self.procedures[agency], "purpose": None, "requested_at": _now()},
                     ttl_s=600, procedure=self.procedures[agency])

    def registration(self, bus: Any) -> None:
        from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
        from schemas import types as msg

        todo = [i for i in range(len(self.people)) if i not in self.registered]
        if not todo:
            return
        i = self.rng.choice(todo)
        self.registered.add(i)
        self.request(bus, "step1", "portal", msg.REGISTRATION_RESULT, type=msg.REGISTRATION_REQUEST, to="registry",
                     subject=self.token(i, "portal"), data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION,
                     body={"operation": "REGISTER", "account": self.account(i), "channel": "PORTAL",
                           "requested_at": _now()}, ttl_s=600)

    def token_issuance(self, bus: Any) -> None:
        from infra.crypto.tokens import TokenIssuanceClient
        from infra.domain.policy import BASIS_TOKEN_ISSUANCE, DATA_PERSON_TOKEN
        from schemas import codec
        from schemas import types as msg

        agency = self.rng.choice(self.agencies)
        issuer = TokenIssuanceClient(agency, bus.runtime.directory.encryption_key("hub"))
        body = codec.decode(issuer.request(self.rng.choice(self.people)), "token_issue_request")
        self.request(bus, "token", agency, msg.TOKEN_ISSUE_RESPONSE, type=msg.TOKEN_ISSUE_REQUEST, to="hub", subject="",
                     body=body, data_item=DATA_PERSON_TOKEN, basis=BASIS_TOKEN_ISSUANCE, ttl_s=600)

    def numbering(self, bus: Any) -> None:
        from infra.domain.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
        from schemas import types as msg

        i = self.rng.randrange(len(self.people))
        bank = self.banks[(i + 1) % len(self.banks)]
        self.request(bus, "numbering", "portal", msg.NUMBERING_ACK, type=msg.NUMBERING_REQUEST, to=bank.id,
                     subject=self.token(i, "portal"), data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                     body={"bank_codes": [bank.bank_code], "channel": "PORTAL", "receiving_bank_code": None,
                           "requested_at": _now()}, ttl_s=600)

    async def lookup(self, dicj: Any) -> None:
        """A lookup to every bank, of the disaster kind: its deadline (days) outlasts the kills, where the
        inheritance deadline is the demo's few seconds (its flow shows a slow bank missing, then late)."""
        i = self.rng.randrange(len(self.people))
        self.lookups.append(await dicj.start_lookup("DISASTER", self.token(i, "dicj"), disaster_id="CHAOS"))

    async def inject_bad(self, producer: Any, count: int) -> None:
        """Envelopes the hub must dead-letter: expired, and an agency asking a bank directly (no rule)."""
        from infra.crypto.envelope import Message, Sealer
        from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
        from infra.platform.keystore import KeyStore
        from infra.platform.topics import TopicNames
        from schemas import types as msg

        store = KeyStore.for_settings(self.settings)
        directory = store.local_directory(self.participants)
        agency = self.agencies[0]
        expired = Sealer(store.keyset(agency), directory, clock=lambda: time.time() - 7200)
        current = Sealer(store.keyset(agency), directory)
        ingress = TopicNames(self.settings.kafka.topic_prefix).ingress
        for _ in range(count):
            sealer, to = (expired, "registry") if self.injected % 2 else (current, self.banks[0].id)
            m = Message(body={"procedure_code": "BAD", "purpose": None, "requested_at": _now()},
                        type=msg.PROVISION_INQUIRY, to=to, subject=self.token(self.injected % len(self.people), agency),
                        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION)
            await producer.send_and_wait(ingress, sealer.seal_batch([m])[0], key=m.subject.encode())
            self.injected += 1


async def crash_safety(platform: Any, plan: ChaosPlan, *, rng: random.Random | None = None,
                       say: Any = None, brokers: Any = None) -> tuple[CrashReport, list[str]]:
    """Traffic + kills + drain + invariants on a running ``platform`` (hub, registry, banks). Returns the report
    and the My Numbers used (for the leak scan).

    ``brokers`` (an ``infra.tools.chaos_broker.BrokerTarget``): Kafka brokers to SIGKILL too, ``plan.broker_kills``
    times among the worker kills, each restarted in the background; an acks=all ledger then proves that no
    acknowledged record was lost."""
    import asyncpg

    from connectors.dicj import DicjDesk
    from infra.platform.kafka import producer as make_producer
    from infra.platform.pgdsn import observer_dsn
    from infra.tools.chaos_broker import AckLedger, BrokerKills
    from streams.client import BusClient

    say = say or (lambda _m: None)
    rng = rng or random.Random(20261126)
    s = platform.settings
    prefix = s.kafka.topic_prefix
    traffic = _Traffic(platform, plan, rng)
    report = CrashReport()
    conn = await asyncpg.connect(observer_dsn(s))  # every component's schema, as the operator
    prod = make_producer(s)
    await prod.start()
    broker_kills = BrokerKills(brokers) if brokers is not None and plan.broker_kills else None
    ledger = AckLedger(s) if broker_kills is not None else None
    try:
        await traffic.setup(conn)
        await conn.execute("DELETE FROM bank_sim_behaviour")  # the demo's slow and double-answering banks
        rejected_from = await _rejected_end(s)
        participant_dead_before = await count_everywhere(conn, "participant_dead_letters")
        async with BusClient(s, ["portal", *traffic.agencies], group=f"{prefix}.chaos-clients") as bus, \
                DicjDesk(s, group=f"{prefix}.chaos-dicj") as dicj:
            hubs = ["hub" if plan.hub_workers == 1 or k % 2 == 0 else "hub-2" for k in range(plan.hub_kills)]
            others = ["registry"] * plan.registry_kills + ["banks"] * plan.bank_kills
            others += ["broker"] * (plan.broker_kills if broker_kills is not None else 0)
            if ledger is not None:
                await ledger.__aenter__()
            order: list[str] = []
            while hubs or others:  # hub kills alternate with the others
                order += [hubs.pop(0)] if hubs else []
                order += [others.pop(0)] if others else []
            times = [plan.traffic_s * (k + 1) / (len(order) + 1) for k in range(len(order))]
            say(f"traffic for {plan.traffic_s:g} s; kills: {', '.join(order)}")
            started = time.monotonic()
            tick = 0
            next_kill = 0
            while (elapsed := time.monotonic() - started) < plan.traffic_s:
                if next_kill < len(order) and elapsed >= times[next_kill]:
                    _kill(platform, order[next_kill], broker_kills)
                    next_kill += 1
                traffic.inquiry(bus)
                if tick % max(1, round(plan.inquiry_rate / 2)) == 0:
                    traffic.registration(bus)
                    traffic.token_issuance(bus)
                if tick % max(1, round(plan.inquiry_rate)) == 0:
                    traffic.numbering(bus)
                if tick % max(1, round(plan.inquiry_rate * 3)) == 0:
                    await traffic.lookup(dicj)
                if traffic.injected < plan.injected_bad and tick % 5 == 0:
                    await traffic.inject_bad(prod, 1)
                tick += 1
                await asyncio.sleep(1 / plan.inquiry_rate)
            while next_kill < len(order):
                _kill(platform, order[next_kill], broker_kills)
                next_kill += 1
            if broker_kills is not None:
                say(f"waiting for the killed brokers to serve again ({', '.join(broker_kills.killed)})")
                await broker_kills.settle()
            if traffic.injected < plan.injected_bad:  # a busy machine ran fewer ticks than planned
                await traffic.inject_bad(prod, plan.injected_bad - traffic.injected)
            say(f"draining {len(traffic.tasks)} requests and {len(traffic.lookups)} lookups")
            await asyncio.gather(*traffic.tasks)
            lookup_views = []
            for cid in traffic.lookups:
                try:
                    lookup_views.append(await dicj.wait_result(cid, timeout=300))
                except TimeoutError:
                    lookup_views.append(None)
            await quiesce(conn)
            seen = await _observe(conn, s, traffic, lookup_views, platform, rejected_from, participant_dead_before)
            report.invariants, report.problems = check(seen)
            report.counts = {**summary(seen), "kills": order}
            if ledger is not None and broker_kills is not None:
                kept = await ledger.check()
                report.invariants.update(kept.invariants)
                report.counts |= {"ledger": kept.to_json(), "brokers_killed": broker_kills.killed,
                                  "broker_outage_s": broker_kills.outage_s}
                if kept.lost or kept.duplicated:
                    report.problems.append(f"ledger: lost {kept.lost[:10]}, duplicated {kept.duplicated[:10]}")
    finally:
        if ledger is not None:
            await ledger.stop()
        await prod.stop()
        await conn.close()
    return report, traffic.people


def _kill(platform: Any, name: str, brokers: Any) -> None:
    """A worker killed and restarted at once, or (``broker``) a Kafka broker killed and restarted in the background."""
    if name == "broker":
        brokers.kill()
    else:
        kill_and_restart(platform, name)


def _hub_pseudonyms(settings: Settings) -> Any:
    """The hub's ids (legs, records, conversations) for this state folder: the checks find messages by them."""
    from infra.crypto.pseudonyms import HubPseudonyms
    from infra.platform.keystore import KeyStore

    return HubPseudonyms.of(KeyStore.for_settings(settings).token_authority())


async def _observe(conn: Any, settings: Settings, traffic: _Traffic, views: list[Any], platform: Any,
                   rejected_from: dict[int, int], participant_dead_before: int) -> Observations:
    """Collect what the invariants read (:mod:`infra.tools.chaos_invariants`): the wire, the tables, the dead letters."""
    from infra.crypto.envelope import peek
    from infra.platform.pgdsn import observer_dsn
    from infra.platform.storage import create_pool
    from infra.platform.topics import INGRESS_PARTITIONS, TopicNames
    from infra.records.provisions import ProvisionStore
    from schemas import codec
    from schemas import types as msg

    names = TopicNames(settings.kafka.topic_prefix)
    # Each participant sees a conversation under a correlation id of its own and provision records name it by
    # the hub's (infra.crypto.pseudonyms): every correlation below is the hub's conversation id, so one exchange is one
    # key on the ingress topic, in every inbox, in the tables and in the records.
    hub_ids = _hub_pseudonyms(settings)

    def conv(correlation_id: str, participant: str) -> str:
        return str(hub_ids.conversation(str(correlation_id), participant))

    ours = {conv(e.correlation_id, e.sender) for e in traffic.sent} | {conv(c, "dicj") for c in traffic.lookups}

    async def wire(topic: str, partitions: int = 1, *, owner: str | None = None) -> list[WireMessage]:
        """``owner``: the inbox's participant (its correlation ids are its own); None: ingress (the sender's)."""
        out = []
        for record in await read_topic(settings, topic, partitions):
            try:
                m = peek(record.value)
            except Exception:  # noqa: BLE001 - the injected and hostile bytes are not envelopes
                continue
            c = conv(m.correlation_id, owner or m.sender)
            if c in ours:
                out.append(WireMessage(m.message_id, c, m.type, m.sender, m.recipient))
        return out

    inboxes = []
    for requester in sorted({e.sender for e in traffic.sent}):
        inboxes += await wire(names.inbox(requester), owner=requester)
    records = [RecordSeen(str(r["record_id"]), str(r["message_id"]), str(r["correlation_id"]), r["requester"],
                          r["provider"], r["status"]) for r in await conn.fetch(
        "SELECT record_id, message_id, correlation_id, requester, provider, status FROM provision_records")]
    audit = []
    for record in await read_topic(settings, names.audit):
        d = codec.decode(record.value, "provision_record")
        audit.append(RecordSeen(str(d["record_id"]), str(d["message_id"]), str(d["correlation_id"]), d["requester"],
                                d["provider"], d["status"]))
    persons = [x["person_token"] for x in await conn.fetch("SELECT DISTINCT person_token FROM provision_records")]
    pool = await create_pool(observer_dsn(settings), min_size=1, max_size=2)
    try:
        store = ProvisionStore(pool)
        broken = len([p for p in persons if not (await store.verify_chain(p)).ok])
    finally:
        await pool.close()
    dead = [DeadLetterSeen(**{k: v for k, v in dead_letter_info(x).items() if k != "verified"})
            for x in await _records_from(settings, names.rejected, rejected_from)]
    kept = [(conv(x["correlation_id"], x["participant"]), x["type"], str(x["message_id"])) for x in await conn.fetch(
        f"SELECT participant, correlation_id, type, message_id FROM {await everywhere(conn, 'client_inbox')} c")]
    return Observations(
        requests=[Request(e.kind, conv(e.correlation_id, e.sender), e.answer_type, e.sender, e.outcome)
                  for e in traffic.sent],
        lookups=[conv(c, "dicj") for c in traffic.lookups], lookup_views=list(views),
        banks_per_lookup=len(traffic.banks),
        ingress=await wire(names.ingress, INGRESS_PARTITIONS), inboxes=inboxes,
        client_inbox=[row for row in kept if row[0] in ours],
        records=records, audit=audit,
        needing_record={str(hub_ids.record_message_id(x["message_id"])) for x in await conn.fetch(
            "SELECT message_id FROM hub_messages WHERE accepted AND type = ANY($1::text[])",
            [msg.PROVISION_INQUIRY, msg.PROVISION_RESPONSE, msg.REGISTRATION_REQUEST])},
        lookup_results=[(conv(x["correlation_id"], "dicj"), str(x["message_id"]), x["is_supplement"])
                        for x in await conn.fetch("SELECT correlation_id, message_id, is_supplement "
                                                  "FROM dicj_lookup_results")],
        chains_checked=len(persons), chains_broken=broken, dead_letters=dead,
        accepted_ids={str(x["message_id"]) for x in await conn.fetch(
            "SELECT message_id FROM hub_messages WHERE accepted")},
        injected=traffic.injected,
        participant_dead_letters=await count_everywhere(conn, "participant_dead_letters") - participant_dead_before,
        dead_workers=[c.name for c in platform.status() if not c.alive],
    )


# -- hostile input ----------------------------------------------------------------------------------


@dataclass
class BadInputReport:
    invariants: dict[str, bool] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


def _mutations(valid: list[bytes], sealed: dict[str, list[bytes]], n: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """``n`` bad envelopes: (kind, bytes). ``sealed`` holds pre-sealed expired/unauthorised/replay sources."""
    from infra.crypto.envelope import DEFAULT_MAX_BYTES
    from schemas import codec

    def flip(data: bytes) -> bytes:
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(b))
            b[pos] ^= 1 << rng.randrange(8)
        return bytes(b)

    def reencode(data: bytes, change: Any) -> bytes:
        r = codec.decode(data, "envelope")
        change(r)
        return codec.encode("envelope", r)

    def forge(r: dict) -> None:
        r["signature"]["root_signature"] = rng.randbytes(64)

    def swap_signature(r: dict) -> None:
        other = codec.decode(rng.choice(valid), "envelope")
        r["signature"] = other["signature"]

    def readdress(r: dict) -> None:
        r["sender"] = "agency-nta" if r["sender"] != "agency-nta" else "agency-mhlw"

    kinds = [
        ("random_bytes", 30, lambda: rng.randbytes(rng.randrange(0, 2000))),
        ("random_after_header", 10, lambda: rng.choice(valid)[:10] + rng.randbytes(rng.randrange(0, 1500))),
        ("truncated", 15, lambda: (lambda v: v[:rng.randrange(len(v))])(rng.choice(valid))),
        ("bit_flip", 25, lambda: flip(rng.choice(valid))),
        ("wrong_fingerprint", 4, lambda: (lambda v: v[:2] + rng.randbytes(8) + v[10:])(rng.choice(valid))),
        ("forged_signature", 3, lambda: reencode(rng.choice(valid), forge)),
        ("swapped_signature", 3, lambda: reencode(rng.choice(valid), swap_signature)),
        ("wrong_sender", 3, lambda: reencode(rng.choice(valid), readdress)),
        ("replayed", 3, lambda: rng.choice(sealed["replay"])),
        ("expired", 2, lambda: rng.choice(sealed["expired"])),
        ("unauthorised", 2, lambda: rng.choice(sealed["unauthorised"])),
    ]
    population = [k for k in kinds for _ in range(k[1])]
    out: list[tuple[str, bytes]] = [("oversize", rng.randbytes(DEFAULT_MAX_BYTES + 1)) for _ in range(max(1, n // 20000))]
    while len(out) < n:
        name, _, make = rng.choice(population)
        out.append((name, make()))
    return out


async def bad_input(platform: Any, plan: ChaosPlan, *, rng: random.Random | None = None,
                    say: Any = None) -> BadInputReport:
    """Hostile envelopes interleaved with good ones, straight onto ingress; see the module docstring."""
    from infra.crypto.envelope import Message, Sealer, peek
    from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.platform.keystore import KeyStore
    from infra.platform.topics import TopicNames
    from infra.tools.bench import Arrivals, end_offsets_by_reading, fast_producer, seal_inquiries
    from schemas import types as msg

    say = say or (lambda _m: None)
    rng = rng or random.Random(4242)
    s = platform.settings
    names = TopicNames(s.kafka.topic_prefix)
    report = BadInputReport()
    hub_pids = {c.name: c.pid for c in platform.status() if c.name.startswith("hub")}
    say(f"sealing {plan.good_envelopes} good envelopes and the sources of expired/unauthorised/replayed ones")
    good = seal_inquiries(s, plan.good_envelopes, per_message=False, people=200, rng=rng)
    good_ids = {peek(v).message_id for _, v in good}
    store = KeyStore.for_settings(s)
    directory = store.local_directory(platform.participants)
    agency = "agency-city-minato"
    bank = next(b.id for b in platform.participants.banks(participating_only=True) if not b.suspended)
    subject = store.token_authority().token_for("123456789018", agency)  # synthetic, check digit valid

    def messages(to: str, k: int) -> list[Message]:
        return [Message(body={"procedure_code": "BAD", "purpose": None, "requested_at": _now()},
                        type=msg.PROVISION_INQUIRY, to=to, subject=subject, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                        basis=BASIS_PROVISION) for _ in range(k)]

    k = max(20, plan.bad_envelopes // 200)
    sealed = {
        "expired": Sealer(store.keyset(agency), directory, clock=lambda: time.time() - 7200).seal_batch(
            messages("registry", k)),
        "unauthorised": Sealer(store.keyset(agency), directory).seal_batch(messages(bank, k)),
        "replay": [v for _, v in good[:k]],  # exact copies of good envelopes, produced after them
    }
    say(f"generating {plan.bad_envelopes} bad envelopes")
    bad = _mutations([v for _, v in good], sealed, plan.bad_envelopes, rng)
    kinds = Counter(kind for kind, _ in bad)
    # Interleave: originals first for the replays' sake (same key → same partition → earlier offset).
    stream: list[tuple[bytes | None, bytes, bool]] = [(key, v, True) for key, v in good[:k]]
    rest: list[tuple[bytes | None, bytes, bool]] = [(key, v, True) for key, v in good[k:]]
    rest += [(rng.randbytes(8), v, False) for _, v in bad]
    rng.shuffle(rest)
    # A replayed copy must follow its original in the same partition: key it like its original.
    original_key = {v: key for key, v in good[:k]}
    stream += [(original_key.get(v, key) if not is_good else key, v, is_good) for key, v, is_good in rest]
    rejected_from = await end_offsets_by_reading(s, names.rejected)
    inbox_from = await end_offsets_by_reading(s, names.inbox("registry"))
    dead = Arrivals(s, names.rejected)
    dead.keep = False
    delivered = Arrivals(s, names.inbox("registry"))
    delivered.keep = True
    await dead.start(rejected_from)
    await delivered.start(inbox_from)
    max_gap, stalled_at = 0.0, None
    try:
        say(f"producing {len(stream)} records onto {names.ingress}")
        started = time.monotonic()
        prod = fast_producer(s)
        await prod.start()
        try:
            futures = [await prod.send(names.ingress, v, key=key) for key, v, _ in stream]
            await asyncio.gather(*futures)
        finally:
            await prod.stop()
        want_dead, want_good = len(bad), len(good)
        last_total, last_change = -1, time.monotonic()
        deadline = time.monotonic() + max(300.0, len(stream) / 150)
        while time.monotonic() < deadline:
            total = dead.count + delivered.count
            now = time.monotonic()
            if total != last_total:
                max_gap = max(max_gap, now - last_change)
                last_total, last_change = total, now
            elif now - last_change > 60:
                stalled_at = total
                break
            if dead.count >= want_dead and delivered.count >= want_good:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        await dead.stop()
        await delivered.stop()
    legs = _hub_pseudonyms(s)  # each good one arrives under its leg's own id
    got_ids = {peek(v).message_id for v in delivered.values}
    good_ids = {legs.leg_message_id(m, "registry") for m in good_ids}
    records = await _records_from(s, names.rejected, rejected_from)
    reasons = Counter(dead_letter_info(x)["reason"] for x in records)
    without_reason = sum(1 for x in records if not dead_letter_info(x)["reason"])
    alive = {c.name: c for c in platform.status() if c.name.startswith("hub")}
    crashed = [n for n, pid in hub_pids.items() if n not in alive or alive[n].pid != pid or not alive[n].alive]
    report.invariants = {
        "no_worker_crash": not crashed,
        "every_bad_one_dead_lettered_with_a_reason": len(records) == len(bad) and without_reason == 0,
        "every_good_one_delivered": good_ids <= got_ids,
        "partition_never_stalled": stalled_at is None,
    }
    report.counts = {"bad": len(bad), "good": len(good), "bad_by_kind": dict(kinds), "dead_letters": len(records),
                     "dead_letter_reasons": dict(reasons), "without_reason": without_reason,
                     "good_delivered": len(good_ids & got_ids), "elapsed_s": round(elapsed, 1),
                     "records_per_s": round(len(stream) / elapsed), "longest_pause_s": round(max_gap, 1),
                     "crashed_workers": crashed}
    return report


async def _rejected_end(settings: Settings) -> dict[int, int]:
    from infra.platform.topics import TopicNames
    from infra.tools.bench import end_offsets_by_reading

    return await end_offsets_by_reading(settings, TopicNames(settings.kafka.topic_prefix).rejected)


async def _records_from(settings: Settings, topic: str, offsets: dict[int, int]) -> list[Any]:
    return [r for r in await read_topic(settings, topic) if r.offset >= offsets.get(r.partition, 0)]


# -- the whole run ---------------------------------------------------------------------------------


async def demo_flows(settings: Settings) -> tuple[list[dict], list[str]]:
    """The demo's flows on this platform, recording the My Numbers they generate (for the leak scan)."""
    import infra.tools.demo_accounts as accounts
    import infra.tools.demo_lookups as lookups
    import infra.tools.harness as harness  # LookupWorld.person makes the lookup flows' people

    used: list[str] = []
    original = accounts.generate_my_number

    def recording(rng: random.Random) -> str:
        mn = original(rng)
        used.append(mn)
        return mn

    saved = (accounts.generate_my_number, harness.generate_my_number)
    accounts.generate_my_number = harness.generate_my_number = recording
    try:
        flows, _, _ = await accounts.account_flows(settings)  # flows, records, the demo card
        flows += await lookups.lookup_flows(settings)
    finally:
        accounts.generate_my_number, harness.generate_my_number = saved
    return flows, used


async def run_chaos(settings: Settings, *, quick: bool = False, progress: Any = None,
                    cluster: bool = False) -> dict[str, Any]:
    """Demo flows, crash safety, hostile input and the leak scan on a fresh embedded platform.

    ``cluster``: on a secured three-node cluster instead of the embedded broker (``infra.tools.chaos_broker``:
    each worker its own principal, the prefix's ACLs applied), one of its nodes killed in the crash-safety part.
    """
    from infra.platform.embedded import stop_recorded
    from infra.platform.stack import WORKERS
    from infra.tools.chaos_broker import chaos_platform
    from infra.tools.chaos_insider import insider_attacks
    from infra.tools.leakscan import scan

    plan = QUICK if quick else FULL
    say = progress or (lambda _m: None)
    from infra.tools.demo_lookups import INHERITANCE_DEADLINE_S

    # the demo's flows need the demo's short inheritance deadline (a slow bank shows as missing, then late)
    chaos_settings = dataclasses.replace(settings, state_dir=(settings.state_dir / "chaos").absolute(),
                                         banks=plan.banks, log_level="INFO",
                                         lookup_deadline_inheritance_s=INHERITANCE_DEADLINE_S)
    stop_recorded(chaos_settings.state_dir)
    shutil.rmtree(chaos_settings.state_dir, ignore_errors=True)
    started = time.perf_counter()
    out: dict[str, Any] = {"invariants": {}, "counts": {}, "broker": "cluster" if cluster else "embedded"}
    async with chaos_platform(chaos_settings, cluster=cluster, say=say) as (platform, brokers):
        log_file = platform.stack.logs_dir / "chaos.log"
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            for n in range(2, plan.hub_workers + 1):
                platform.start_worker(next(w for w in WORKERS if w.name == "hub"), name=f"hub-{n}")
            await platform.wait_ready(180)
            say("demo flows")
            flows, demo_numbers = await demo_flows(platform.settings)
            out["invariants"]["demo_flows_ok"] = all(f["ok"] for f in flows)
            out["counts"]["demo_flows"] = {f["name"]: f["ok"] for f in flows}
            say("crash safety")
            crash, numbers = await crash_safety(platform, plan, say=say, brokers=brokers)
            out["invariants"].update(crash.invariants)
            out["counts"]["crash"] = crash.counts
            out["problems"] = crash.problems[:50]  # which correlation, leg or count broke an invariant
            say("hostile input")
            hostile = await bad_input(platform, plan, say=say)
            out["invariants"].update({f"bad_input_{k}": v for k, v in hostile.invariants.items()})
            out["counts"]["bad_input"] = hostile.counts
            if cluster:
                # On the secured cluster the ACLs already refuse the insiders' "writer on every topic" (what
                # tests/integration/test_cluster.py proves); their attacks assume the embedded broker's
                # open topics, so they run there (`renkei chaos` or `renkei chaos --insider`).
                out["counts"]["insider"] = "not run on the cluster: its ACLs refuse a writer on every topic"
            else:
                inside = await insider_attacks(platform, say=say)  # infra.tools.chaos_insider: issue 13's insiders
                out["invariants"].update(inside.invariants)
                out["counts"]["insider"], numbers = inside.counts, [*numbers, *inside.my_numbers]
                out["problems"] += inside.problems
            say("leak scan")
            leaks = await scan(platform.settings, [*demo_numbers, *numbers, "123456789018"],
                               [platform.stack.logs_dir, chaos_settings.state_dir / "logs"])
            out["invariants"]["no_my_number_anywhere"] = leaks.ok
            out["counts"]["leak_scan"] = leaks.to_json()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    out["ok"] = all(out["invariants"].values())
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out
