"""Operations on the running platform (hub, registry, banks as real processes; real broker and PostgreSQL).

- the workers' metrics and health endpoints move with traffic, and ``renkei status --json`` shows them;
- a re-drive after a key rotation delivers what the hub refused as UNKNOWN_KEY (the hub and the
  registry follow the keys topic), and a dead letter that fails again keeps its re-drive history;
- rewinding the registry's consumer group and reprocessing its whole inbox changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.crypto.envelope import Message, Opener, Sealer
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.ops import Window
from infra.ops.dlq import list_dead_letters, redrive
from infra.ops.replay import rewind_group
from infra.platform.keystore import KeyStore, publish_directory
from infra.platform.metrics_server import WorkerEndpoint, fetch_health, fetch_metrics
from infra.platform.stack import WORKERS, wait_for_groups
from infra.platform.topics import TopicNames
from infra.tools.harness import eventually
from schemas import types as msg
from streams.participant import ClaimedInTransaction, Identity, ParticipantRuntime
from tests.integration.platform_fixtures import hub_pseudonyms
from tests.integration.test_connectors_support import hold_account
from tests.integration.test_flows import AGENCY, account, inquire, person, register
from tests.integration.waits import endpoint_of, hub_barrier, metric, moved_on

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ROTATING_AGENCY = "agency-mhlw"  # only this module's key-rotation test uses it
PROCEDURES = {ROTATING_AGENCY: "national-pension", AGENCY: "child-allowance"}  # infra/domain/procedures.toml


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))


def inquiry(bus, agency: str, token: str):
    return bus.request(agency, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
                       body={"procedure_code": PROCEDURES[agency], "purpose": None, "requested_at": datetime.now(UTC)},
                       data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=60,
                       procedure=PROCEDURES[agency])


# --------------------------------------------------------------------------- metrics, health, status


async def test_hub_metrics_move_with_traffic_and_status_lists_every_worker(bus, pg, running_platform):
    hub = await endpoint_of(running_platform, "hub")
    before = await fetch_metrics(hub.metrics)
    mn, acct = person(), account(bank="9001")
    await hold_account(running_platform.settings, pg, mn, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"
    assert (await inquire(bus, mn))["status"] == "REGISTERED"
    with pytest.raises(RuntimeError):  # a suspended agency's token request is refused by the hub
        await bus.token_for("agency-suspended", mn)

    async def moved():
        now = await fetch_metrics(hub.metrics)
        return now if value(now, "renkei_messages_rejected_total", reason="SUSPENDED") > \
            value(before, "renkei_messages_rejected_total", reason="SUSPENDED") else None

    after = await eventually(moved, timeout=60, interval=0.3)
    grew = lambda name: value(after, name) - value(before, name)  # noqa: E731
    # token x2, registration request, existence check + answer, result, inquiry + response, refused token
    assert grew("renkei_messages_in_total") >= 9
    assert grew("renkei_messages_out_total") >= 8
    assert grew("renkei_provision_records_total") >= 5
    assert grew("renkei_batch_duration_seconds_count") >= 1
    assert grew("renkei_message_duration_seconds_count") == grew("renkei_messages_in_total")
    assert grew("renkei_provision_write_seconds_count") == grew("renkei_batch_duration_seconds_count")
    ingress = TopicNames(running_platform.settings.kafka.topic_prefix).ingress
    assert any(f'topic="{ingress}"' in k for k in after if k.startswith("renkei_consumer_lag{"))
    assert value(after, "renkei_key_directory_entries") > 0
    # No personal data or token in any label or value of the exposition.
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(hub.metrics) as response:
        text = await response.text()
    assert mn not in text and (await bus.token_for(AGENCY, mn)) not in text and acct["account_number"] not in text

    health = await fetch_health(hub)
    assert health["status"] == "ok" and health["worker"] == "hub"
    assert health["processed"] >= value(after, "renkei_messages_in_total")

    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "infra.cli", "status", "--json",
                         "--state-dir", str(running_platform.settings.state_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["components"]}
    for name in ("hub", "registry", "banks"):
        row = rows[name]
        assert {"name", "pid", "alive", "endpoint"} <= set(row)
        assert row["alive"] and row["health"] == "ok", row
        assert row["endpoint"].startswith("http://127.0.0.1:") and row["metrics"] == row["endpoint"] + "/metrics"
        assert isinstance(row["processed"], int) and isinstance(row["rejected"], int)
    assert rows["hub"]["processed"] > 0 and rows["registry"]["processed"] > 0 and rows["hub"]["rejected"] >= 1


# --------------------------------------------------------------------------- re-drive after key rotation


def use_keyset(runtime: ParticipantRuntime, keyset) -> None:
    """What the agency's process does after a rotation: seal and open with the new keyset."""
    old = runtime.identities[keyset.participant_id]
    new = Identity(keyset.participant_id, Sealer(keyset, runtime.directory),
                   Opener(keyset, runtime.directory, ClaimedInTransaction(), participants=runtime.participants), old.inbox)
    runtime.identities[keyset.participant_id] = new
    runtime.by_inbox[old.inbox] = new


async def test_redrive_after_key_rotation_delivers_what_the_hub_refused(bus, pg, running_platform):
    settings = running_platform.settings
    hub = await endpoint_of(running_platform, "hub")
    registry = await endpoint_of(running_platform, "registry")
    mn, acct = person(), account(bank="9002")
    await hold_account(running_platform.settings, pg, mn, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"
    token = await bus.token_for(ROTATING_AGENCY, mn)

    # The agency rotates and seals with its new key before the directory entry is published.
    store = KeyStore.for_settings(settings)
    keyset = store.keyset(ROTATING_AGENCY)
    keyset.rotate()
    store.save_keyset(keyset)
    use_keyset(bus.runtime, keyset)
    # No rejection notice: the hub does not answer a sender it could not verify. The dead letter stands.
    correlation = str(uuid.uuid4())
    (message_id,) = await bus.runtime.send(ROTATING_AGENCY, [Message(
        body={"procedure_code": PROCEDURES[ROTATING_AGENCY], "purpose": None, "requested_at": datetime.now(UTC)},
        type=msg.PROVISION_INQUIRY, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
        basis=BASIS_PROVISION, correlation_id=correlation, procedure=PROCEDURES[ROTATING_AGENCY])])

    async def dead_letters(n: int):
        found = (await list_dead_letters(settings, reason_code="UNKNOWN_KEY")).dead_letters
        return found if len(found) == n else None

    (original,) = await eventually(lambda: dead_letters(1), timeout=60, interval=0.3)
    assert original.message_id == message_id and original.redrive_count == 0

    # A re-drive before the directory knows the key fails again; the new dead letter keeps the history.
    first = await redrive(settings, reason_code="UNKNOWN_KEY", reason="INC-11 too early")
    assert first["redriven"] == 1
    original, again = await eventually(lambda: dead_letters(2), timeout=60, interval=0.3)
    assert again.message_id == message_id and again.redrive_count == 1
    headers = await _headers_at(settings, again.offset)
    assert headers["renkei.redrive"] == str(original.offset)
    assert headers["renkei.redrive.history"] == str(original.offset)
    assert headers["renkei.ops.event"] == first["audit"]["id"]

    # Publish the rotated keys: the hub and the registry follow the keys topic, no restart.
    hub_updates = value(await fetch_metrics(hub.metrics), "renkei_key_directory_updates_total")
    registry_updates = value(await fetch_metrics(registry.metrics), "renkei_key_directory_updates_total")
    await publish_directory(settings, store.root().to_records(keyset.public_entries()))

    async def followed():
        return (value(await fetch_metrics(hub.metrics), "renkei_key_directory_updates_total") > hub_updates
                and value(await fetch_metrics(registry.metrics), "renkei_key_directory_updates_total")
                > registry_updates)

    await eventually(followed, timeout=60, interval=0.3)
    second = await redrive(settings, reason_code="UNKNOWN_KEY", since=str(again.timestamp),
                           reason="INC-11 directory published")
    assert second["matched"] == 1 and second["redriven"] == 1

    async def answered():
        return await pg.fetchval("SELECT count(*) FROM client_inbox WHERE correlation_id = $1 AND type = $2",
                                 correlation, msg.PROVISION_RESPONSE)

    assert await eventually(answered, timeout=60, interval=0.3) == 1
    records = await pg.fetch("SELECT requester, provider, status FROM provision_records WHERE correlation_id = $1",
                             hub_pseudonyms(settings).conversation(correlation, ROTATING_AGENCY))
    assert {(r["requester"], r["provider"], r["status"]) for r in records} == {
        (ROTATING_AGENCY, "registry", "REQUESTED"), (ROTATING_AGENCY, "registry", "PROVIDED")}
    await hub_barrier(settings)  # the hub has been through everything sent so far: the re-drive did not fail too
    assert len((await list_dead_letters(settings, reason_code="UNKNOWN_KEY")).dead_letters) == 2
    # The new keys are used end to end from now on: a fresh inquiry is answered directly.
    assert (await inquiry(bus, ROTATING_AGENCY, token)).body["status"] == "REGISTERED"


async def _headers_at(settings, offset: int) -> dict[str, str]:
    from aiokafka import TopicPartition

    from infra.ops import renkei_headers, scan_consumer

    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(TopicNames(settings.kafka.topic_prefix).rejected, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        records = (await consumer.getmany(tp, timeout_ms=5000, max_records=1))[tp]
        return renkei_headers(records[0].headers)
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- rewind and reprocess


async def test_rewinding_the_registry_group_reprocesses_without_any_new_effect(bus, pg, running_platform):
    settings = running_platform.settings
    people = [person() for _ in range(3)]
    for i, mn in enumerate(people):
        acct = account(bank="9003")
        await hold_account(running_platform.settings, pg, mn, acct)
        assert (await register(bus, mn, acct))["status"] == "DONE"
        assert (await inquire(bus, mn))["status"] == "REGISTERED"

    async def snapshot() -> dict:
        return {
            "accounts": [tuple(r) for r in await pg.fetch(
                "SELECT token, status, channel, updated_at, account_ct FROM registry_accounts ORDER BY token")],
            "data_keys": await pg.fetchval("SELECT count(*) FROM registry_data_keys"),
            "pending": await pg.fetchval("SELECT count(*) FROM registry_pending_checks"),
            "records": await pg.fetchval("SELECT count(*) FROM provision_records"),
            "hub_messages": await pg.fetchval("SELECT count(*) FROM hub_messages"),
            "outbox": await pg.fetchval("SELECT count(*) FROM participant_outbox WHERE sender = 'registry'"),
            "inbox": await pg.fetchval("SELECT count(*) FROM client_inbox"),
        }

    registry = await endpoint_of(running_platform, "registry")
    await eventually(lambda: _caught_up(registry), timeout=60, interval=0.3)
    before = await snapshot()
    assert before["accounts"] and before["records"]

    group = f"{settings.kafka.topic_prefix}.registry"
    inbox = TopicNames(settings.kafka.topic_prefix).inbox("registry")
    await running_platform.stop_worker("registry")
    # Tansu keeps a lone member that left listed (Kafka until its session ends): evict it (the worker is stopped).
    report = await rewind_group(settings, inbox, Window(from_offset=0), group, reason="INC-12 rewind test",
                                evict_stale=True)
    (part,) = report["partitions"]
    assert part["committed_after"] == 0 and part["committed_before"] == part["high_watermark"] > 0
    rewound = part["high_watermark"]

    running_platform.start_worker(next(w for w in WORKERS if w.name == "registry"))
    await wait_for_groups(settings, [group], 120)
    restarted = await endpoint_of(running_platform, "registry")
    assert restarted.pid != registry.pid

    async def reprocessed():
        samples = await fetch_metrics(restarted.metrics)
        return samples if value(samples, "renkei_messages_in_total") >= rewound else None

    samples = await eventually(reprocessed, timeout=120)
    dead = await pg.fetchval("SELECT count(*) FROM participant_dead_letters WHERE participant = 'registry'")
    assert value(samples, "renkei_messages_in_total") == rewound
    assert value(samples, "renkei_messages_duplicate_total") == rewound - dead  # every effect was there already
    assert value(samples, "renkei_messages_out_total") == 0
    # Anything reprocessing put in the outbox is relayed within two relay passes, and is at the hub after the barrier.
    await moved_on(metric(restarted.metrics, "renkei_outbox_relay_passes_total"), what="the registry's relay")
    await hub_barrier(settings)
    after = await snapshot()
    assert after == before
    duplicated = await pg.fetch("SELECT correlation_id, type FROM client_inbox GROUP BY correlation_id, type "
                                "HAVING count(*) > 1")
    assert duplicated == []
    # And the restarted registry still works.
    assert (await inquire(bus, people[0]))["status"] == "REGISTERED"


async def _caught_up(endpoint: WorkerEndpoint) -> bool:
    samples = await fetch_metrics(endpoint.metrics)
    lags = [v for k, v in samples.items() if k.startswith("renkei_consumer_lag{")]
    return bool(lags) and not any(lags)
