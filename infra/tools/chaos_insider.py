"""``renkei chaos --insider``: the insiders of issue 13 attack a running platform; each attack is an invariant.

Why this file is long: three insider attacks, each a short scenario with its invariant, on one shared world.

Three insiders, each with exactly what that role holds on a real deployment:

- **the hub's keyset holder** — the hub's signing and encryption keys, its token
  authority (it can mint any participant's token) and the hub's broker rights
  (it writes every inbox): it asks the registry for a person's account and
  deletes the person's registration, sealed as the hub and as a hub
  "forward".  The registry must dead-letter each (``SENDER_NOT_ALLOWED``),
  answer nothing to the hub, and keep the registration.
- **the database superuser** — every table of every component: it deletes an
  agency's provision records of a person, re-hashes the rest and moves the
  chain head (the attack of issue 13), rewrites a record in place, and
  truncates a chain.  Each must be found TAMPERED by the verification the
  person's ``renkei portal records`` runs (signed heads and the signed
  checkpoints on the audit topic, outside the database); the chain is put
  back after each attack and verifies again.
- **a writer on every topic** (no key of anyone) — an unsigned tombstone for the
  hub's signing key and a replayed older directory entry (a participant's
  earlier "resumed" status, after ops suspended it again) on the keys topic;
  a forged existence answer straight into the registry's inbox; an exact
  replay of an accepted inquiry on the ingress topic.  The directory every
  process loads must be unchanged (the bad records skipped and counted), the
  forgery dead-lettered, the replay dead-lettered ``REPLAYED``.

Good traffic (a STEP2 inquiry of the same person, answered REGISTERED with
the person's account) runs after every attack and must still be served.

The report is the crash part's shape: ``invariants`` (name → refused or
detected), ``counts`` (reasons and verdicts seen), ``problems``.  The attacks
use the platform's public primitives (``Sealer``, ``HubForwarder``, the key
store, ``infra.platform.keyadmin``, ``RecordsVerifier``) — nothing that only a test
could do.  :func:`insider_attacks` runs on any :class:`infra.platform.stack.Platform`
(the integration test's); :func:`run_chaos_insider` on its own embedded one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.core.settings import Settings
from infra.tools.harness import eventually, print_report

log = logging.getLogger("renkei.chaos.insider")

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # AGENCY is entitled to it (infra/domain/procedures.toml)
_RECORD_COLUMNS = ("record_id", "message_id", "correlation_id", "person_token", "requester", "provider",
                   "data_item", "legal_basis", "requested_at", "provided_at", "status", "not_disclosed", "seq",
                   "prev_hash", "hash", "person", "procedure")


@dataclass
class InsiderReport:
    invariants: dict[str, bool] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    my_numbers: list[str] = field(default_factory=list)  # for the leak scan


def _now() -> datetime:
    return datetime.now(UTC)


class _World:
    """The victim, the good traffic and the observer's view of one platform."""

    def __init__(self, platform: Any, bus: Any, pg: Any, rng: random.Random) -> None:
        from infra.domain.validation import generate_my_number
        from infra.platform.keystore import KeyStore
        from infra.platform.topics import TopicNames

        self.platform, self.settings, self.bus, self.pg = platform, platform.settings, bus, pg
        self.store = KeyStore.for_settings(self.settings)
        self.authority = self.store.token_authority()
        self.names = TopicNames(self.settings.kafka.topic_prefix)
        self.bank = next(b for b in platform.participants.banks(participating_only=True) if not b.suspended)
        self.my_number = generate_my_number(rng)
        self.account = {"bank_code": self.bank.bank_code, "branch_code": "101", "account_type": "ORDINARY",
                        "account_number": f"{rng.randrange(10**7):07d}", "holder_kana": "ナイブ タロウ"}

    async def register(self) -> str:
        from connectors.bank_sim import enrol_customer, open_account
        from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
        from schemas import types as msg

        await open_account(self.pg, self.account)  # the bank's own records: the person's account
        await enrol_customer(self.pg, self.authority.token_for(self.my_number, self.bank.id), self.account)
        answer = await self.bus.request(
            "portal", type=msg.REGISTRATION_REQUEST, to="registry",
            subject=await self.bus.token_for("portal", self.my_number),
            body={"operation": "REGISTER", "account": self.account, "channel": "PORTAL", "requested_at": _now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=120)
        return answer.body["status"]

    def inquiry(self) -> Any:
        from infra.crypto.envelope import Message
        from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
        from schemas import types as msg

        return Message(body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": _now()},
                       type=msg.PROVISION_INQUIRY, to="registry",
                       subject=self.authority.token_for(self.my_number, AGENCY),
                       data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, correlation_id=str(uuid.uuid4()),
                       procedure=PROCEDURE)

    async def served(self) -> bool:
        """Good traffic: the agency's STEP2 inquiry is answered REGISTERED with the person's account."""
        answer = await self.bus.runtime.request(AGENCY, self.inquiry(), timeout=120)
        body = answer.body
        return body.get("status") == "REGISTERED" and \
            (body.get("account") or {}).get("account_number") == self.account["account_number"]

    async def dead_letters(self, participant: str, message_ids: list[str], timeout: float = 90) -> dict[str, str]:
        """``participant``'s dead letters of these message ids, ``{id: reason}``, once every one is there."""
        from infra.crypto.envelope import peek
        from infra.platform.storage import everywhere

        found: dict[str, str] = {}

        async def all_there() -> bool:
            for r in await self.pg.fetch(f"SELECT reason, envelope FROM "
                                         f"{await everywhere(self.pg, 'participant_dead_letters')} d "
                                         "WHERE participant = $1", participant):
                found[peek(bytes(r["envelope"])).message_id] = r["reason"]
            return set(message_ids) <= set(found)

        await eventually(all_there, timeout=timeout, what=f"{participant}'s dead letters")
        return {m: found[m] for m in message_ids}


# -- the hub's keyset holder -------------------------------------------------------------------------


async def hub_keyset_holder(w: _World, report: InsiderReport) -> None:
    """Asks the registry for the person's account and deletes the registration, as the hub."""
    from infra.crypto.envelope import HubForwarder, Sealer, Verifier, peek
    from infra.domain.policy import BASIS_CHANGE, BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
    from schemas import types as msg

    hub = w.store.keyset("hub")
    directory = w.bus.runtime.directory
    as_hub, countersigner, checks = Sealer(hub, directory), HubForwarder(hub, directory), Verifier(directory)
    token = w.authority.token_for(w.my_number, "registry")  # what the token authority can mint

    def inquiry() -> bytes:
        return as_hub.seal({"procedure_code": PROCEDURE, "purpose": None, "requested_at": _now()},
                           type=msg.PROVISION_INQUIRY, to="registry", subject=token,
                           data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, procedure=PROCEDURE)

    def delete() -> bytes:
        return as_hub.seal({"operation": "DELETE", "account": None, "channel": "PORTAL", "requested_at": _now()},
                           type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
                           data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_CHANGE)

    attacks = {"inquiry": [inquiry(), countersigner.forward(checks.verify(inquiry()), token)],
               "delete": [delete(), countersigner.forward(checks.verify(delete()), token)]}
    inbox = w.names.inbox("registry")
    served = []
    for envelopes in attacks.values():
        for envelope in envelopes:  # straight into the registry's inbox (the hub's broker rights)
            await w.bus.runtime.producer.send_and_wait(inbox, envelope, key=token.encode())
            served.append(await w.served())
    ids = {kind: [peek(e).message_id for e in envelopes] for kind, envelopes in attacks.items()}
    reasons = await w.dead_letters("registry", [i for kind in ids.values() for i in kind])
    report.counts["hub_keyset_holder"] = {"dead_letters": sorted(set(reasons.values())), "good_served": served}
    sent = [peek(bytes(r["envelope"])) for r in await w.pg.fetch(
        "SELECT envelope FROM participant_outbox WHERE sender = 'registry'")]
    answered_hub = [m for m in sent if m.recipient == "hub" or m.correlation_id in reasons]
    kept = await w.pg.fetchval("SELECT status FROM registry_accounts WHERE token = $1", token) == "REGISTERED" \
        and await w.pg.fetchval("SELECT count(*) FROM registry_data_keys WHERE token = $1", token) == 1
    report.invariants["insider_hub_keyset_account_inquiry_refused"] = (
        all(reasons[i] == "SENDER_NOT_ALLOWED" for i in ids["inquiry"]) and not answered_hub)
    report.invariants["insider_hub_keyset_registration_delete_refused"] = (
        all(reasons[i] == "SENDER_NOT_ALLOWED" for i in ids["delete"]) and kept)
    report.invariants["insider_hub_keyset_good_traffic_served"] = all(served) and await w.served()


# -- the database superuser ------------------------------------------------------------------------


def _rehashed(records: list[Any]) -> list[Any]:
    """The chain an attacker computes after removing records: renumbered and re-hashed (the algorithm is public;
    what the attacker lacks is the records key)."""
    from infra.records.provisions import GENESIS_HASH, canonical_bytes, chain_hash

    out, prev = [], GENESIS_HASH
    for seq, r in enumerate(records, start=1):
        r = dataclasses.replace(r, seq=seq, prev_hash=prev)
        r = dataclasses.replace(r, hash=chain_hash(prev, canonical_bytes(r)))
        out.append(r)
        prev = r.hash
    return out


async def _overwrite(pg: Any, person: str, records: list[Any], head: tuple[int, bytes]) -> None:
    """Replace a person's chain with ``records`` and set its head (what the superuser does with SQL)."""
    async with pg.transaction():
        await pg.execute("DELETE FROM provision_records WHERE person_token = $1", person)
        await pg.executemany(
            f"INSERT INTO provision_records ({', '.join(_RECORD_COLUMNS)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(_RECORD_COLUMNS) + 1))})",
            [tuple(getattr(r, c).value if c == "status" else getattr(r, c) for c in _RECORD_COLUMNS)
             for r in records])
        await pg.execute("UPDATE provision_chain_heads SET seq = $2, last_hash = $3 WHERE person_token = $1",
                         person, *head)


async def database_superuser(w: _World, report: InsiderReport) -> None:
    """Deletes (and re-hashes), rewrites and truncates the person's provision records; the verification detects
    each; the chain is put back after each one."""
    from infra.platform.pgdsn import records_dsn
    from infra.platform.storage import create_pool
    from infra.records.provisions import GENESIS_HASH
    from infra.records.records_verify import RecordsVerifier, Verdict

    person = await w.bus.token_for("portal", w.my_number)  # records are kept under the portal's token
    pool = await create_pool(records_dsn(w.settings), min_size=1, max_size=2)  # the portal's read-only view
    verdicts: dict[str, str] = {}
    try:
        async with RecordsVerifier.for_settings(w.settings, pool) as verifier:
            async def checkpointed() -> Any:
                v = await verifier.verify(person)
                return v if v.verdict is Verdict.OK else None

            original = (await eventually(checkpointed, timeout=120, what="a checkpoint covering the person's records")).records
            head = (original[-1].seq, original[-1].hash)
            by_agency = [r for r in original if r.requester == AGENCY]
            attacks: dict[str, tuple[list[Any], tuple[int, bytes]]] = {}
            kept = _rehashed([r for r in original if r.requester != AGENCY])
            attacks["delete_rehash_move_head"] = (kept, (kept[-1].seq, kept[-1].hash) if kept else (0, GENESIS_HASH))
            rewritten = [dataclasses.replace(r, requester="agency-nta") if r is by_agency[0] else r for r in original]
            attacks["rewrite_in_place"] = (rewritten, head)
            attacks["truncate"] = (original[:-2], (original[-3].seq, original[-3].hash))
            for name, (records, moved) in attacks.items():
                await _overwrite(w.pg, person, records, moved)
                try:
                    verdicts[name] = (await verifier.verify(person)).verdict.value
                finally:
                    await _overwrite(w.pg, person, original, head)
                report.invariants[f"insider_db_{name}_detected"] = verdicts[name] == Verdict.TAMPERED.value
            verdicts["restored"] = (await verifier.verify(person)).verdict.value
    finally:
        await pool.close()
    report.counts["database_superuser"] = {"verdicts": verdicts, "records": len(original),
                                           "agency_records": len(by_agency)}
    report.invariants["insider_db_restored_chain_verifies"] = verdicts["restored"] == Verdict.OK.value
    report.invariants["insider_db_good_traffic_served"] = await w.served()


# -- a writer on every topic -----------------------------------------------------------------------


async def _produce(w: _World, topic: str, value: bytes | None, key: str) -> None:
    await w.bus.runtime.producer.send_and_wait(topic, value, key=key.encode())


async def _rejections(w: _World, start: dict[int, int], message_ids: set[str], timeout: float = 90) -> dict[str, str]:
    """Reasons the hub gave on its rejected topic, after ``start``, for these message ids."""
    from aiokafka import TopicPartition

    from infra.ops import high_watermarks, partitions_of, read_range, scan_consumer
    from infra.tools.harness import dead_letter_info

    found: dict[str, str] = {}
    consumer = scan_consumer(w.settings)
    await consumer.start()
    try:
        tps = [TopicPartition(w.names.rejected, p) for p in await partitions_of(consumer, w.names.rejected)]

        async def all_there() -> bool:
            ends = await high_watermarks(consumer, tps)
            for tp in tps:
                async for record in read_range(consumer, tp, start.get(tp.partition, 0), ends[tp]):
                    info = dead_letter_info(record)
                    if info["message_id"] in message_ids:
                        found[info["message_id"]] = info["reason"]
                start[tp.partition] = ends[tp]
            return message_ids <= set(found)

        await eventually(all_there, timeout=timeout, what="the hub's rejections")
    finally:
        await consumer.stop()
    return found


async def _rejected_ends(w: _World) -> dict[int, int]:
    from aiokafka import TopicPartition

    from infra.ops import high_watermarks, partitions_of, scan_consumer

    consumer = scan_consumer(w.settings)
    await consumer.start()
    try:
        tps = [TopicPartition(w.names.rejected, p) for p in await partitions_of(consumer, w.names.rejected)]
        return {tp.partition: end for tp, end in (await high_watermarks(consumer, tps)).items()}
    finally:
        await consumer.stop()


async def topic_writer(w: _World, report: InsiderReport) -> None:
    from infra.crypto.envelope import Sealer, peek
    from infra.crypto.keys import Keyset, status_record_key
    from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
    from infra.platform.keyadmin import set_suspended
    from infra.platform.keystore import load_directory
    from schemas import types as msg

    s, counts = w.settings, {}
    root_key = w.store.root_public_key()
    hub_key = w.store.keyset("hub").signing_key_id

    # 1. An unsigned tombstone for the hub's signing key: every directory loaded afterwards still holds it.
    await _produce(w, w.names.keys, None, hub_key)
    directory = await load_directory(s, root_key)
    entry = directory.entry(hub_key)
    counts["tombstone"] = {"hub_key": entry.status.value if entry else "GONE",
                           "skipped": dict(directory.skipped)}
    report.invariants["insider_topic_unsigned_tombstone_refused"] = (
        entry is not None and entry.status.value == "ACTIVE" and directory.skipped["tombstone"] >= 1
        and await w.served())

    # 2. An older directory entry: ops suspend a participant, resume it, suspend it again; the writer replays
    #    the "resumed" entry to lift the suspension. It stays suspended; ops resume it afterwards.
    target = sorted(p.id for p in w.platform.participants if p.kind.value == "agency" and p.id != AGENCY)[-1]
    record_key = status_record_key(target)
    await set_suspended(s, w.store, w.platform.participants, target, True)
    resumed = (await set_suspended(s, w.store, w.platform.participants, target, False)).directory
    old_entry = resumed.held_value(record_key)
    await set_suspended(s, w.store, w.platform.participants, target, True)
    await _produce(w, w.names.keys, old_entry, record_key)
    directory = await load_directory(s, root_key)
    status = directory.status(target)
    counts["old_entry"] = {"participant": target, "suspended_after_replay": bool(status and status.suspended),
                           "skipped": dict(directory.skipped)}
    await set_suspended(s, w.store, w.platform.participants, target, False)
    report.invariants["insider_topic_old_directory_entry_refused"] = (
        status is not None and status.suspended and old_entry is not None and await w.served())

    # 3. A forged existence answer ("CONFIRMED") straight into the registry's inbox: keys of its own, the bank's
    #    name.
    forger = Keyset.generate(w.bank.id)
    token = w.authority.token_for(w.my_number, "registry")
    forged = Sealer(forger, w.bus.runtime.directory).seal(
        {"bank_code": w.bank.bank_code, "result": "CONFIRMED", "answered_at": _now()},
        type=msg.EXISTENCE_ANSWER, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
        basis=BASIS_REGISTRATION)
    await _produce(w, w.names.inbox("registry"), forged, token)
    reasons = await w.dead_letters("registry", [peek(forged).message_id])
    counts["forged_existence_answer"] = sorted(set(reasons.values()))
    report.invariants["insider_topic_forged_existence_answer_refused"] = bool(reasons) and await w.served()

    # 4. An exact copy of an accepted inquiry, produced again on ingress: REPLAYED, answered once.
    sealed = Sealer(w.store.keyset(AGENCY), w.bus.runtime.directory).seal_batch([w.inquiry()])[0]
    message_id = peek(sealed).message_id
    start = await _rejected_ends(w)
    await _produce(w, w.names.ingress, sealed, peek(sealed).subject)
    await eventually(lambda: w.pg.fetchval("SELECT accepted FROM hub_messages WHERE message_id = $1",
                                           uuid.UUID(message_id)), timeout=90, what="the hub to accept the inquiry")
    await _produce(w, w.names.ingress, sealed, peek(sealed).subject)
    replayed = await _rejections(w, start, {message_id})
    counts["replay"] = sorted(set(replayed.values()))
    report.invariants["insider_topic_replayed_message_refused"] = (
        replayed[message_id] == "REPLAYED" and await w.served())
    report.counts["topic_writer"] = counts


# -- the part --------------------------------------------------------------------------------------


async def insider_attacks(platform: Any, *, rng: random.Random | None = None, say: Any = None) -> InsiderReport:
    """The three insiders' attacks on ``platform`` (running: hub, registry, banks), each an invariant."""
    import asyncpg

    from infra.platform.pgdsn import observer_dsn
    from streams.client import BusClient

    say = say or (lambda _m: None)
    report = InsiderReport()
    prefix = platform.settings.kafka.topic_prefix
    pg = await asyncpg.connect(observer_dsn(platform.settings))  # the superuser, every component's schema
    try:
        async with BusClient(platform.settings, ["portal", AGENCY],
                             group=f"{prefix}.insider-{uuid.uuid4().hex[:6]}") as bus:
            w = _World(platform, bus, pg, rng or random.Random(1313))
            report.my_numbers.append(w.my_number)
            status = await w.register()
            report.counts["victim_registered"] = status
            if status != "DONE" or not await w.served():
                report.problems.append(f"the victim's registration ended {status}: no attack could be tried")
                report.invariants["insider_victim_registered"] = False
                return report
            for name, part in (("hub keyset holder", hub_keyset_holder), ("database superuser", database_superuser),
                               ("topic writer", topic_writer)):
                say(f"insider: {name}")
                try:
                    await part(w, report)
                except Exception as exc:  # noqa: BLE001 - one insider failing to finish is a failed invariant
                    log.exception("insider part %s failed", name)
                    report.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                    report.invariants[f"insider_{name.replace(' ', '_')}_completed"] = False
    finally:
        await pg.close()
    return report


async def run_chaos_insider(settings: Settings, *, quick: bool = False, progress: Any = None) -> dict[str, Any]:
    """The insider part alone, on a fresh embedded platform (``<state>/chaos-insider``)."""
    from infra.platform.embedded import stop_recorded
    from infra.platform.stack import Platform
    from infra.tools.leakscan import scan

    del quick  # one size: the attacks are few and each is waited for
    say = progress or (lambda _m: None)
    insider_settings = dataclasses.replace(settings, state_dir=(settings.state_dir / "chaos-insider").absolute(),
                                           log_level="INFO")
    stop_recorded(insider_settings.state_dir)
    shutil.rmtree(insider_settings.state_dir, ignore_errors=True)
    started = time.perf_counter()
    async with Platform(insider_settings) as platform:
        await platform.wait_ready(180)
        inside = await insider_attacks(platform, say=say)
        say("leak scan")
        leaks = await scan(platform.settings, inside.my_numbers, [platform.stack.logs_dir])
    out: dict[str, Any] = {"invariants": {**inside.invariants, "no_my_number_anywhere": leaks.ok},
                           "counts": {"insider": inside.counts, "leak_scan": leaks.to_json()},
                           "problems": inside.problems}
    out["ok"] = bool(out["invariants"]) and all(out["invariants"].values())
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def register(chaos_parser: Any) -> None:
    """``renkei chaos --insider``: only this part, on its own embedded stack."""
    chaos_parser.add_argument("--insider", action="store_true",
                              help="only the insider attacks (hub keyset holder, database superuser, topic writer)")


__all__ = ["InsiderReport", "database_superuser", "hub_keyset_holder", "insider_attacks", "print_report",
           "register", "run_chaos_insider", "topic_writer"]
