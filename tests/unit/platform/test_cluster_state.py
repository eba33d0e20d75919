"""The cluster's state file reads back as typed nodes (infra.platform.cluster.RecordedNode), bad files refused."""

from __future__ import annotations

import json
import os

import pytest

from infra.core.errors import StackError
from infra.platform.cluster import STATE_FILE, RecordedNode, read_state, stop_recorded


def write_state(home, nodes) -> None:
    (home / STATE_FILE).write_text(json.dumps({"bootstrap": "x:1", "nodes": nodes}))


def test_recorded_nodes_read_back_typed(tmp_path):
    write_state(tmp_path, [{"node_id": 1, "pid": 4242, "marker": "renkei-node-1", "endpoint": "127.0.0.1:9093",
                            "log": "/tmp/n1.log"}])
    assert read_state(tmp_path) == [RecordedNode(1, 4242, "renkei-node-1", "127.0.0.1:9093", "/tmp/n1.log")]


def test_no_state_file_is_no_nodes(tmp_path):
    assert read_state(tmp_path) == []


@pytest.mark.parametrize("text", ["{not json", '{"nodes": [{"node_id": 1}]}', '{"nodes": [1]}', "[]"])
def test_an_unreadable_state_file_is_a_stack_error(tmp_path, text):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(StackError, match="unreadable"):
        read_state(tmp_path)


def test_a_node_whose_pid_runs_something_else_is_not_alive(tmp_path):
    mine = RecordedNode(1, os.getpid(), "no-such-marker-in-this-command-line", "127.0.0.1:1", "/dev/null")
    assert not mine.alive()
    write_state(tmp_path, [{"node_id": 1, "pid": os.getpid(), "marker": "no-such-marker-in-this-command-line",
                            "endpoint": "127.0.0.1:1", "log": "/dev/null"}])
    assert stop_recorded(tmp_path) == [mine]  # this test's own process: not signalled, the marker does not match
    assert not (tmp_path / STATE_FILE).exists()
