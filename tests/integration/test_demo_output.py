"""``renkei demo`` (what ``make demo`` runs), as a user runs it: every flow ok, and nothing on the
terminal that is a stray traceback — it used to end with aiokafka's "Task exception was never
retrieved" (a commit cancelled mid-flight racing the shutdown; tests/integration/test_runtime_stop.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_prints_no_stray_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}  # its own embedded stack
    env["COLUMNS"] = "200"
    done = subprocess.run([sys.executable, "-m", "infra.cli", "demo", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=900, env=env)
    seen = done.stdout + done.stderr
    assert done.returncode == 0, seen[-3000:]
    assert "All flows succeeded" in done.stdout
    for stray in ("Traceback", "Task exception was never retrieved", "Exception ignored", "Unclosed"):
        assert stray not in seen, seen[-3000:]
