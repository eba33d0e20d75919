"""``renkei worker NAME``: the process becomes the worker, configured by the flags it was given."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.cli import build_parser
from infra.cli.worker_commands import WORKER_MODULES, worker_environment


def test_flags_reach_the_worker_as_its_settings_variables():
    args = build_parser().parse_args(["worker", "hub", "--state-dir", "/var/lib/renkei", "--kafka-bootstrap",
                                      "kafka-1:9093", "--banks", "7", "--ops-host", "0.0.0.0", "--ops-port", "9100"])
    env = worker_environment(args, {"RENKEI_BANKS": "3", "PATH": "/bin"})
    assert env["RENKEI_STATE_DIR"] == "/var/lib/renkei" and env["RENKEI_KAFKA_BOOTSTRAP"] == "kafka-1:9093"
    assert env["RENKEI_BANKS"] == "7"  # a flag wins over the environment, as everywhere
    assert (env["RENKEI_OPS_HOST"], env["RENKEI_OPS_PORT"]) == ("0.0.0.0", "9100")
    assert env["PATH"] == "/bin" and "RENKEI_WORKER" not in env and "RENKEI_JSON" not in env


def test_every_worker_renkei_up_starts_is_a_worker_command():
    from infra.platform.stack import WORKERS

    assert {w.name: w.module for w in WORKERS} == {name: module for name, (module, _) in WORKER_MODULES.items()}


def test_a_worker_reports_a_bad_configuration_as_the_cli_does(tmp_path):
    """The exec'd worker got the flag (it names the file) and says what is wrong without a traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    missing = tmp_path / "participants.toml"
    done = subprocess.run([sys.executable, "-m", "infra.cli", "worker", "banks", "--participants-file", str(missing),
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=120,
                          env=clean, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"renkei: configuration error: participants file not found: {missing}"
