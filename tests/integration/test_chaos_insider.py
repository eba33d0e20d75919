"""`renkei chaos`'s insider part (issue 13) on a running platform: every insider's attack refused or detected.

Hub, registry and banks run as real processes on the session's broker and PostgreSQL; the insiders act
with what their role holds (``infra.tools.chaos_insider``): the hub's keyset and broker rights, the database
superuser, a writer on every topic.  Good traffic is served after each attack.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from infra.platform.stack import Platform
from infra.tools.chaos_insider import insider_attacks
from tests.integration.platform_fixtures import isolated_platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {
    "insider_hub_keyset_account_inquiry_refused", "insider_hub_keyset_registration_delete_refused",
    "insider_hub_keyset_good_traffic_served",
    "insider_db_delete_rehash_move_head_detected", "insider_db_rewrite_in_place_detected",
    "insider_db_truncate_detected", "insider_db_restored_chain_verifies", "insider_db_good_traffic_served",
    "insider_topic_unsigned_tombstone_refused", "insider_topic_old_directory_entry_refused",
    "insider_topic_forged_existence_answer_refused", "insider_topic_replayed_message_refused",
}


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("insider"), prefix_letter="i",
                                 workers=["hub", "registry", "banks"]) as p:
        yield p


async def test_every_insider_attack_is_refused_or_detected_and_good_traffic_is_served(platform):
    report = await insider_attacks(platform)
    detail = json.dumps(report.__dict__, default=str, ensure_ascii=False)
    assert set(report.invariants) == EXPECTED, detail  # every attack was tried to its end
    assert all(report.invariants.values()) and not report.problems, detail
    assert report.counts["hub_keyset_holder"]["dead_letters"] == ["SENDER_NOT_ALLOWED"]
    assert report.counts["database_superuser"]["verdicts"] == {
        "delete_rehash_move_head": "TAMPERED", "rewrite_in_place": "TAMPERED", "truncate": "TAMPERED",
        "restored": "OK"}
    assert report.counts["topic_writer"]["replay"] == ["REPLAYED"]
    assert report.counts["topic_writer"]["forged_existence_answer"]  # dead-lettered, with its reason
