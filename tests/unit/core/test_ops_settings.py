"""Where workers serve /metrics: the ops_host/ops_port settings, their flags, and the ports `renkei up` hands out."""

from __future__ import annotations

import pytest

from infra.core.arguments import worker_settings
from infra.core.errors import ConfigError
from infra.core.settings import load_settings
from infra.platform.stack import Platform


def test_ops_address_comes_from_settings_environment_and_flags(tmp_path):
    assert (load_settings(environ={}).ops_host, load_settings(environ={}).ops_port) == ("127.0.0.1", 0)
    env = {"RENKEI_OPS_HOST": "0.0.0.0", "RENKEI_OPS_PORT": "9400"}
    from_env = load_settings(environ=env)
    assert (from_env.ops_host, from_env.ops_port) == ("0.0.0.0", 9400)
    flagged = load_settings(cli={"ops_port": 9500}, environ=env)
    assert flagged.ops_port == 9500 and flagged.ops_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="ops_port"):
        load_settings(environ={"RENKEI_OPS_PORT": "70000"})
    with pytest.raises(ConfigError, match="ops_port"):
        load_settings(environ={"RENKEI_OPS_PORT": "-1"})


def test_every_worker_command_line_takes_ops_host_and_port(tmp_path):
    settings = worker_settings(["--state-dir", str(tmp_path), "--ops-host", "10.1.2.3", "--ops-port", "9600"])
    assert (settings.ops_host, settings.ops_port) == ("10.1.2.3", 9600)


def test_up_gives_each_worker_its_own_port_from_the_base_and_keeps_it_across_restarts(tmp_path):
    platform = Platform(load_settings(cli={"ops_port": 9400, "state_dir": str(tmp_path)}, environ={}))
    assert platform.ops_args("hub") == ["--ops-host", "127.0.0.1", "--ops-port", "9400"]
    assert platform.ops_args("registry")[-1] == "9401"
    assert platform.ops_args("banks")[-1] == "9402"
    assert platform.ops_args("hub")[-1] == "9400"  # a restarted worker gets its port again
    assert platform.ops_args("hub-2")[-1] == "9403"
    free = Platform(load_settings(cli={"state_dir": str(tmp_path)}, environ={}))
    assert free.ops_args("hub")[-1] == free.ops_args("registry")[-1] == "0"
