"""``renkei lag`` on a freshly started platform: every worker group, its state and members, from the start.

Before the fix a fresh stack showed an empty table on Tansu (its ListGroups answers nothing) and, on
Apache Kafka, groups without a partition or a member until they first committed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.ops.lag import consumer_lag, platform_groups
from infra.platform.pgdsn import public_dsn

pytestmark = pytest.mark.integration


def _check_worker_groups(report: dict, settings) -> None:
    groups = {g["group"]: g for g in report["groups"]}
    prefix = settings.kafka.topic_prefix
    assert set(platform_groups(settings)) >= {f"{prefix}.hub", f"{prefix}.registry", f"{prefix}.banks"}
    for name in platform_groups(settings):
        group = groups[name]
        assert group["state"] == "Stable", group
        assert group["members"] >= 1 and len(group["member_details"]) == group["members"]
        if settings.kafka.tansu:
            continue  # Tansu describes a member by its id only: no client id, host or assignment
        assigned = [tuple(p.values()) for m in group["member_details"] for p in m["partitions"]]
        assert assigned and all(topic.startswith(prefix + ".") for topic, _ in assigned), group
        assert all(m["client_id"] and m["host"] for m in group["member_details"])
        owned = {(p["topic"], p["partition"]): p for p in group["partitions"]}
        assert set(assigned) <= set(owned)  # every assigned partition has a row, committed or not
        for tp in assigned:
            row = owned[tp]
            assert row["owner"] in {m["client_id"] for m in group["member_details"]}
            assert row["lag"] is None if row["committed"] is None else row["lag"] >= 0


async def test_lag_lists_every_worker_group_with_members_from_the_start(running_platform):
    settings = running_platform.settings
    assert platform_groups(settings) == [w.group(settings) for w in running_platform.workers if w.group]
    _check_worker_groups(await consumer_lag(settings), settings)
    only = await consumer_lag(settings, f"{settings.kafka.topic_prefix}.hub")
    assert [g["group"] for g in only["groups"]] == [f"{settings.kafka.topic_prefix}.hub"]


async def test_renkei_lag_as_a_process(running_platform):
    settings = running_platform.settings
    argv = [sys.executable, "-m", "infra.cli", "lag", "--json", "--kafka-bootstrap", settings.kafka.bootstrap,
            "--topic-prefix", settings.kafka.topic_prefix, "--broker", settings.kafka.broker,
            "--pg-dsn", public_dsn(settings.pg_dsn)]  # lag reads Kafka only; this says "not the embedded one"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    _check_worker_groups(json.loads(done.stdout), settings)
    table = subprocess.run([a for a in argv if a != "--json"], capture_output=True, text=True, timeout=180,
                           env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert table.returncode == 0 and f"{settings.kafka.topic_prefix}.registry" in table.stdout
    assert "Traceback" not in table.stderr
