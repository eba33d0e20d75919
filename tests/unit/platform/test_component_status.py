"""A stack component's status is typed (infra.platform.embedded.ComponentStatus); its JSON row keeps docs/cli.md's shape."""

from __future__ import annotations

import os

from infra.platform.embedded import Component, ComponentStatus


def test_status_row_keeps_the_documented_keys_in_order():
    row = ComponentStatus("hub", 4242, True, "http://127.0.0.1:9100").to_json()
    assert list(row) == ["name", "pid", "alive", "endpoint"]
    assert row == {"name": "hub", "pid": 4242, "alive": True, "endpoint": "http://127.0.0.1:9100"}


def test_a_component_whose_pid_runs_something_else_is_down():
    other = Component("hub", os.getpid(), "", "/dev/null", "no-such-marker-in-this-command-line")
    assert other.status() == ComponentStatus("hub", os.getpid(), False, "")
