"""The key directory on the running bus (issue 13, item 3): the attacks on it refused, and ops changes live.

One platform for the module (hub, registry and simulated banks as real processes on the real broker and
PostgreSQL). The ops commands run through ``infra.cli.main`` exactly as typed (``renkei keys …``,
``renkei participants …``), pointed at the platform with the configuration flags. Every test interleaves
good traffic from a participant it does not touch (an agency's inquiry answered by the registry) and
checks that it is still delivered.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition

from infra.cli import main
from infra.crypto.envelope import Message
from infra.crypto.keys import KeyDirectory, RootAuthority, Status
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.ops import ops_audit_topic, scan_consumer
from infra.ops.dlq import list_dead_letters
from infra.platform.kafka import admin_client, producer
from infra.platform.keyadmin import revoke
from infra.platform.keystore import KeyStore, load_directory
from infra.platform.metrics_server import fetch_metrics
from infra.platform.stack import bootstrap_keys, settings_env
from infra.platform.topics import TopicNames, TopicSpec, apply_layout
from infra.tools.harness import eventually
from schemas import codec
from schemas import types as msg
from tests.integration.platform_fixtures import ENTITLED_PROCEDURE
from tests.integration.test_flows import person
from tests.integration.test_ops_hub import value
from tests.integration.test_participant_cli import flags  # noqa: F401 - fixture: the platform's CLI flags
from tests.integration.waits import endpoint_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = "agency-nta"  # the good traffic every test interleaves; no test here touches its keys or status
REVOKED = "agency-mhlw"
SUSPENDED = "agency-city-minato"
SPARE = "bank-8999"  # not in lookup fan-outs: its keys can be revoked without disturbing anything


@pytest.fixture
def renkei(capsys, flags, monkeypatch, running_platform):
    """``await renkei("keys", "revoke", …)`` → (exit code, the JSON object, stderr)."""
    monkeypatch.setenv("COLUMNS", "250")
    for name, setting in settings_env(running_platform.settings).items():  # PostgreSQL, as a worker gets it
        monkeypatch.setenv(name, setting)

    async def run(*argv: str, extra: list[str] | None = None) -> tuple[int, dict, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, *(extra if extra is not None else flags), "--json"])
        out, err = capsys.readouterr()
        return code, json.loads(out), err

    return run


def inquiry(agency: str, token: str) -> Message:
    procedure = ENTITLED_PROCEDURE[agency]
    return Message(body={"procedure_code": procedure, "purpose": None, "requested_at": datetime.now(UTC)},
                   type=msg.PROVISION_INQUIRY, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                   basis=BASIS_PROVISION, correlation_id=str(uuid.uuid4()), procedure=procedure)


async def answered(bus, agency: str, token: str, *, timeout: float = 60) -> str:
    """The registry's answer to an inquiry (the good traffic, or proof that a participant is back);
    returns the key id the registry signed it with."""
    opened = await bus.runtime.request(agency, inquiry(agency, token), timeout=timeout)
    assert opened.meta.type == msg.PROVISION_RESPONSE, opened.meta.type
    assert opened.body["status"] in ("REGISTERED", "NOT_REGISTERED")
    return opened.meta.sender_key_id


async def answered_again(bus, agency: str, token: str, *, within: float = 60) -> str:
    """Retry until an inquiry is answered: after a rotation the sender's runtime switches keys by itself,
    after a resumption the hub applies it within a poll (until then: no answer, or a SUSPENDED notice)."""
    async def attempt():
        try:
            opened = await bus.runtime.request(agency, inquiry(agency, token), timeout=8)
        except TimeoutError:
            return None
        if opened.meta.type == msg.REJECTION_NOTICE:
            return None
        assert opened.meta.type == msg.PROVISION_RESPONSE, opened.meta.type
        return opened.meta.sender_key_id

    return await eventually(attempt, timeout=within, interval=0.5)


async def dead_lettered(settings, message_id: str, reason: str) -> bool:
    found = (await list_dead_letters(settings, reason_code=reason)).dead_letters
    return any(d.message_id == message_id for d in found)


async def audit_events(settings) -> list[dict]:
    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(ops_audit_topic(settings.kafka.topic_prefix), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        events = []
        while True:
            batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            events += [json.loads(r.value) for r in batch]
            if not batch:
                return events
    finally:
        await consumer.stop()


async def keys_topic(settings) -> list[tuple[str | None, bytes | None]]:
    """Every record of the keys topic, in order, as ``(Kafka key, value)``."""
    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(TopicNames(settings.kafka.topic_prefix).keys, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        out = []
        while True:
            batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            out += [(r.key.decode() if r.key is not None else None, r.value) for r in batch]
            if not batch:
                return out
    finally:
        await consumer.stop()


def compacted(records: list[tuple[str | None, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """What log compaction keeps: the last record of each Kafka key (tombstones included, until they expire)."""
    last: dict[str, bytes | None] = {}
    for key, value_ in records:
        if key is not None:
            last.pop(key, None)
            last[key] = value_
    return list(last.items())


async def produce_raw(settings, records: list[tuple[str, bytes | None]]) -> None:
    """A writer on the keys topic without the root key (the broker principal of any insider without ACLs)."""
    prod = producer(settings)
    await prod.start()
    try:
        for key, value_ in records:
            await prod.send_and_wait(TopicNames(settings.kafka.topic_prefix).keys, value_, key=key.encode())
    finally:
        await prod.stop()


# --------------------------------------------------------------------------- renkei down / up, as typed
# First in the module: it starts a stack of its own, before the module's platform is up (two stacks
# starting and idling side by side starve the embedded broker on a loaded 2-core machine).


def test_a_revoked_key_stays_revoked_across_renkei_down_and_up(tmp_path):
    """The embedded broker keeps topics in memory: `renkei up` after `down` finds an empty keys topic and
    used to publish every keyset as ACTIVE again. Now the root holder's journal restores it as it was."""
    from tests.integration.test_stack import renkei as typed

    state = str(tmp_path / "s")
    try:
        assert typed("up", "--detach", "--json", "--state-dir", state).returncode == 0
        listed = json.loads(typed("keys", "list", "--owner", GOOD, "--json", "--state-dir", state).stdout)
        (key_id,) = [k["key_id"] for k in listed["keys"] if k["use"] == "sign"]
        revoked = typed("keys", "revoke", key_id, "--reason", "INC-16", "--json", "--state-dir", state)
        assert revoked.returncode == 0, revoked.stderr
        assert typed("down", "--state-dir", state).returncode == 0
        up = typed("up", "--detach", "--json", "--state-dir", state)
        assert up.returncode == 0, up.stderr
        after = json.loads(typed("keys", "list", "--owner", GOOD, "--json", "--state-dir", state).stdout)
        assert {k["key_id"]: (k["state"], k["version"]) for k in after["keys"]}[key_id] == ("REVOKED", 2)
        assert after["skipped"] == {}
    finally:
        typed("down", "--state-dir", state)


# --------------------------------------------------------------------------- revoke and rotate, live


async def test_revoked_key_is_refused_by_the_running_hub_within_seconds_then_rotation_restores(
        bus, running_platform, renkei):
    settings = running_platform.settings
    good, bad = await bus.token_for(GOOD, person()), await bus.token_for(REVOKED, person())
    await answered(bus, REVOKED, bad)
    store = KeyStore.for_settings(settings)
    key_id = store.keyset(REVOKED).signing_key_id

    code, out, err = await renkei("keys", "revoke", key_id, "--reason", "INC-13 key copied off a laptop")
    assert code == 0, err
    assert out["status"] == "DONE" and out["changes"] == [
        {"key": key_id, "kind": "key", "participant": REVOKED, "state": "REVOKED", "version": 2}]
    assert any(REVOKED in w and "sign" in w for w in out["warnings"])
    started = time.monotonic()

    async def refused() -> bool:
        (message_id,) = await bus.runtime.send(REVOKED, [inquiry(REVOKED, bad)])
        try:
            return await eventually(lambda: dead_lettered(settings, message_id, "REVOKED_KEY"), timeout=3)
        except TimeoutError:
            return False

    await eventually(refused, timeout=30, interval=0.5)
    assert time.monotonic() - started < 30
    await answered(bus, GOOD, good)  # everyone else's traffic still flows

    listed = await renkei("keys", "list", "--owner", REVOKED)
    assert listed[0] == 0
    assert {k["key_id"]: (k["state"], k["version"]) for k in listed[1]["keys"]}[key_id] == ("REVOKED", 2)

    # Rotate at once (its signing key is gone): the agency's own runtime takes the new keys from its file.
    code, out, err = await renkei("keys", "rotate", REVOKED, "--overlap", "0", "--reason", "after INC-13")
    assert code == 0, err
    assert {c["state"] for c in out["changes"]} == {"ACTIVE", "RETIRED"}  # the revoked key is not touched
    assert all(c["key"] != key_id for c in out["changes"])
    await answered_again(bus, REVOKED, bad)  # signed with the new key, which the hub and registry know
    await answered(bus, GOOD, good)

    events = {e["what"]: e for e in await audit_events(settings)}
    assert events["keys.revoke"]["reason"] == "INC-13 key copied off a laptop"
    assert events["keys.revoke"]["detail"]["key"] == key_id
    assert events["keys.revoke"]["counts"] == {"published": 1, "restored": 0, "status": "done"}
    assert events["keys.rotate"]["detail"]["participant"] == REVOKED


# --------------------------------------------------------------------------- suspend and resume, live


async def test_suspended_participant_is_refused_at_once_and_resumed(bus, running_platform, renkei):
    settings = running_platform.settings
    good, token = await bus.token_for(GOOD, person()), await bus.token_for(SUSPENDED, person())
    await answered(bus, SUSPENDED, token)
    registry = await endpoint_of(running_platform, "registry")
    updates = value(await fetch_metrics(registry.metrics), "renkei_key_directory_updates_total")

    code, out, err = await renkei("participants", "suspend", SUSPENDED, "--reason", "INC-14 agency under audit")
    assert code == 0, err
    assert out["changes"] == [{"key": f"participant:{SUSPENDED}", "kind": "participant", "participant": SUSPENDED,
                               "state": "SUSPENDED", "version": 1}]

    async def refused_with_notice():
        try:
            opened = await bus.runtime.request(SUSPENDED, inquiry(SUSPENDED, token), timeout=8)
        except TimeoutError:  # the hub forwarded it before it had the status, and the registry refused it
            return None
        if opened.meta.type == msg.REJECTION_NOTICE:
            return opened.body["reason_code"]
        return None  # answered: neither had applied the suspension yet

    assert await eventually(refused_with_notice, timeout=30, interval=0.5) == "SUSPENDED"
    await answered(bus, GOOD, good)
    # Receivers follow too: the registry applied the status, and a participant runtime refuses its signatures.
    await eventually(lambda: _moved(registry, updates), timeout=30)
    assert bus.runtime.directory.suspensions[SUSPENDED] is True
    listed = await renkei("participants", "list")
    row = next(r for r in listed[1]["participants"] if r["id"] == SUSPENDED)
    assert listed[1]["directory"] is True and row["suspended"] is True and row["status_version"] == 1

    again = await renkei("participants", "suspend", SUSPENDED, "--reason", "twice")
    assert again[0] == 0 and again[1]["status"] == "UNCHANGED" and again[1]["changes"] == []
    hub = await renkei("participants", "suspend", "hub", "--reason", "try")
    assert hub[0] == 2 and hub[1]["reason"] == "PROTECTED"
    nobody = await renkei("participants", "suspend", "agency-nowhere", "--reason", "try")
    assert nobody[0] == 2 and nobody[1]["reason"] == "UNKNOWN_PARTICIPANT"

    code, out, err = await renkei("participants", "resume", SUSPENDED, "--reason", "INC-14 closed")
    assert code == 0, err and out["changes"][0]["version"] == 2
    await answered_again(bus, SUSPENDED, token)
    await answered(bus, GOOD, good)
    events = [e for e in await audit_events(settings) if e["what"].startswith("participants.")]
    assert [(e["what"], e["reason"]) for e in events][:1] == [("participants.suspend", "INC-14 agency under audit")]
    assert ("participants.resume", "INC-14 closed") in [(e["what"], e["reason"]) for e in events]


async def _moved(endpoint, before: float) -> bool:
    return value(await fetch_metrics(endpoint.metrics), "renkei_key_directory_updates_total") > before


# --------------------------------------------------------------------------- a writer on the keys topic


async def test_bad_records_on_the_keys_topic_are_skipped_counted_and_stop_nothing(bus, running_platform, renkei,
                                                                                    caplog):
    """Junk, a bare tombstone and a forged revocation of the hub's key, another root's entry, a replayed older
    entry: the hub keeps delivering, every CLI command still works, each is counted by reason."""
    settings = running_platform.settings
    good = await bus.token_for(GOOD, person())
    store = KeyStore.for_settings(settings)
    root = store.root()
    hub_key = store.keyset("hub").signing_key_id
    spare_key = store.keyset(SPARE).signing_key_id
    (active_spare,) = [v for k, v in await keys_topic(settings) if k == spare_key][-1:]
    await revoke(settings, store, spare_key)  # the root holder revokes it (version 2) ...
    hub_entry = KeyDirectory(root.public_key)
    hub_entry.apply_record(None, next(v for k, v in await keys_topic(settings) if k == hub_key))
    forged = codec.decode(root.sign_entry(replace(hub_entry.entry(hub_key), status=Status.REVOKED, version=9)),
                          "signed_key_entry")
    forged["root_signature"] = bytes(64)
    metrics_before = await fetch_metrics((await endpoint_of(running_platform, "hub")).metrics)
    await produce_raw(settings, [
        (hub_key, b"\x00 not a signed entry"),                                    # malformed
        (hub_key, None),                                                          # tombstone
        (hub_key, codec.encode("signed_key_entry", forged)),                      # bad_signature
        (hub_key, RootAuthority.generate().sign_entry(
            replace(hub_entry.entry(hub_key), status=Status.REVOKED, version=9))),  # unknown_root
        (spare_key, active_spare),                                                # ... stale: the replay after it
    ])
    hub = await endpoint_of(running_platform, "hub")

    async def counted():
        samples = await fetch_metrics(hub.metrics)
        grew = {r: value(samples, "renkei_key_directory_skipped_total", reason=r)
                - value(metrics_before, "renkei_key_directory_skipped_total", reason=r)
                for r in ("malformed", "tombstone", "bad_signature", "unknown_root", "stale")}
        return grew if all(n >= 1 for n in grew.values()) else None

    await eventually(counted, timeout=30)
    await answered(bus, GOOD, good)  # the hub still verifies its own countersignature: the bus runs
    assert (await endpoint_of(running_platform, "hub", timeout=10)).pid == hub.pid  # healthy, same process

    caplog.clear()
    code, out, err = await renkei("keys", "list")
    assert code == 0, err
    states = {k["key_id"]: k["state"] for k in out["keys"]}
    assert states[hub_key] == "ACTIVE" and states[spare_key] == "REVOKED"
    assert {"malformed", "tombstone", "bad_signature", "unknown_root", "stale"} <= set(out["skipped"])
    skipped_lines = [r for r in caplog.records if r.name == "renkei.keys" and "skipped" in r.getMessage()]
    assert len(skipped_lines) == sum(out["skipped"].values())  # one log line per bad record
    assert (await renkei("participants", "list"))[0] == 0
    code, out, err = await renkei("agency", "inquire", "--agency", GOOD, "--procedure", ENTITLED_PROCEDURE[GOOD],
                                  "--my-number", person())
    assert code == 0 and out["status"] in ("REGISTERED", "NOT_REGISTERED"), err  # a participant's command too
    assert (await endpoint_of(running_platform, "registry", timeout=10)).pid  # every worker still healthy
    assert (await endpoint_of(running_platform, "banks", timeout=10)).pid

    # Compaction keeps the last record per key: here, the bad ones. `renkei keys sync` (and `renkei up`)
    # puts the latest signed state last again, so a reader of the compacted topic sees it.
    code, out, err = await renkei("keys", "sync", "--reason", "INC-15 junk on the keys topic")
    assert code == 0, err and out["restored"] >= 2
    fresh = KeyDirectory(root.public_key)
    for key, record in compacted(await keys_topic(settings)):
        fresh.apply_record(key, record)
    assert fresh.entry(hub_key).status is Status.ACTIVE and fresh.entry(spare_key).status is Status.REVOKED
    await answered(bus, GOOD, good)


# --------------------------------------------------------------------------- renkei up does not undo


async def test_bootstrap_again_or_on_an_emptied_topic_never_brings_a_revoked_key_back(running_platform, bus):
    settings = running_platform.settings
    store = KeyStore.for_settings(settings)
    key_id = store.keyset(SPARE).encryption_key_id
    await revoke(settings, store, key_id)
    revoked_version = (await load_directory(settings, store.root_public_key())).version(key_id)

    await bootstrap_keys(settings, running_platform.participants)  # what `renkei up` does again
    directory = await load_directory(settings, store.root_public_key())
    assert directory.entry(key_id).status is Status.REVOKED and directory.version(key_id) == revoked_version

    # A memory broker restarted: the keys topic is empty. The journal restores the directory as it was.
    emptied = replace(settings, kafka=replace(settings.kafka, topic_prefix=settings.kafka.topic_prefix + "x"))
    admin = admin_client(emptied)
    await admin.start()
    try:
        await apply_layout(admin, [TopicSpec(TopicNames(emptied.kafka.topic_prefix).keys, 1, "keys",
                                             {"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    await bootstrap_keys(emptied, running_platform.participants)
    restored = await load_directory(emptied, store.root_public_key())
    assert restored.entry(key_id).status is Status.REVOKED and restored.version(key_id) == revoked_version
    assert len(restored) == len(directory) and not restored.skipped


# --------------------------------------------------------------------------- who may change the directory


async def test_without_the_root_key_every_change_is_refused_exit_2(running_platform, renkei, flags, tmp_path,
                                                                    monkeypatch):
    settings = running_platform.settings
    keys = settings.resolved_keys_dir
    ops = tmp_path / "ops"  # an ops machine with the public root key only
    (ops / "keys").mkdir(parents=True)
    shutil.copy(keys / "root.pub", ops / "keys" / "root.pub")
    elsewhere = [f if f != str(settings.state_dir) else str(ops) for f in flags]
    key_id = KeyStore.for_settings(settings).keyset(GOOD).signing_key_id
    for argv in (["keys", "revoke", key_id, "--reason", "x"], ["keys", "rotate", GOOD], ["keys", "retire", key_id],
                 ["participants", "suspend", GOOD, "--reason", "x"], ["keys", "sync"]):
        code, out, err = await renkei(*argv, extra=elsewhere)
        assert code == 2 and out["reason"] == "ROOT_KEY_UNAVAILABLE", (argv, out)
        assert "root key" in err
    code, out, _ = await renkei("keys", "list", extra=elsewhere)  # reading needs only root.pub
    assert code == 0 and any(k["key_id"] == key_id for k in out["keys"])
    # The root key file without its passphrase is no better.
    shutil.copy(keys / "root.key", ops / "keys" / "root.key")
    monkeypatch.setenv("RENKEI_KEYS_PASSPHRASE", "not the passphrase")
    code, out, _ = await renkei("keys", "revoke", key_id, "--reason", "x", extra=elsewhere)
    assert code == 2 and out["reason"] == "ROOT_KEY_UNAVAILABLE"
    assert KeyStore.for_settings(settings).keyset(GOOD).signing_key_id == key_id
    assert (await load_directory(settings, KeyStore.for_settings(settings).root_public_key())).entry(
        key_id).status is Status.ACTIVE


# --------------------------------------------------------------------------- rotating a running worker


async def test_rotating_the_running_registry_keeps_it_answering_and_it_switches_keys(bus, running_platform,
                                                                                     renkei):
    settings = running_platform.settings
    good = await bus.token_for(GOOD, person())
    store = KeyStore.for_settings(settings)
    old = store.keyset("registry").signing_key_id
    assert await answered(bus, GOOD, good) == old
    code, out, err = await renkei("keys", "rotate", "registry", "--overlap", "3", "--reason", "yearly rotation")
    assert code == 0, err
    new = KeyStore.for_settings(settings).keyset("registry").signing_key_id
    assert new != old and {c["key"] for c in out["changes"]} >= {new, old}
    seen = set()
    deadline = time.monotonic() + 60
    while new not in seen and time.monotonic() < deadline:  # answered throughout, by the old key, then the new
        seen.add(await answered(bus, GOOD, good))
        await asyncio.sleep(0.5)
    assert new in seen and seen <= {old, new}
    listed = {k["key_id"]: k for k in (await renkei("keys", "list", "--owner", "registry"))[1]["keys"]}
    assert listed[old]["state"] == "RETIRED" and listed[new]["state"] == "ACTIVE"
