"""``renkei lag``'s reading of a DescribeGroups answer: state, members, their assigned partitions."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.admin import DescribeGroupsResponse_v0, DescribeGroupsResponse_v3

from infra.ops.lag import assigned_partitions, group_members, group_state


def test_members_and_their_assignment():
    assignment = ConsumerProtocolMemberAssignment(0, [("renkei.hub.ingress", [1, 0])], b"").encode()
    response = DescribeGroupsResponse_v0([(0, "renkei.hub", "Stable", "consumer", "faust", [
        ("m-2", "hub-2", "/127.0.0.1", b"", b""),
        ("m-1", "hub-1", "/127.0.0.1", b"", assignment),
    ])])
    state, members = group_members(response)
    assert state == "Stable" and [m.client_id for m in members] == ["hub-1", "hub-2"]
    assert members[0].partitions == (("renkei.hub.ingress", 0), ("renkei.hub.ingress", 1))
    assert members[1].partitions == ()  # joined, not yet assigned: no partitions, no error
    assert members[0].to_json()["partitions"] == [{"topic": "renkei.hub.ingress", "partition": 0},
                                                   {"topic": "renkei.hub.ingress", "partition": 1}]
    assert group_state(response) == ("Stable", 2)


def test_a_later_response_version_and_a_group_that_does_not_exist():
    response = DescribeGroupsResponse_v3(0, [(0, "renkei.registry", "Dead", "", "", [], 0)])
    assert group_members(response) == ("Dead", [])


def test_an_assignment_of_another_protocol_has_no_partitions():
    assert assigned_partitions(b"") == ()
    assert assigned_partitions(b"\x00\x01garbage") == ()
