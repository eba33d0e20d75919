"""Workers import Renkei's code, never a folder of the same name in the caller's current directory (issue 17.5).

``python -m streams.hub_loop`` puts the current folder first on the import path: started from a folder that has
its own ``streams/``, a worker would run that folder's code. ``renkei up`` starts its workers with ``-P``,
so the caller's folder is not on their path. The test starts the platform from a folder holding a decoy
``streams/`` package whose hub would leave a mark and exit, and shows the real hub and registry running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RENKEI = Path(sys.executable).with_name("renkei")
DECOY = '''import pathlib, sys
pathlib.Path(__file__).with_name("DECOY-RAN").write_text(" ".join(sys.argv))
raise SystemExit(3)
'''


def renkei(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RENKEI), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")})


def test_renkei_up_from_a_folder_with_a_decoy_streams_package_runs_the_real_workers(tmp_path):
    caller = tmp_path / "caller"
    (caller / "streams").mkdir(parents=True)
    # Run as root, the embedded PostgreSQL's tools run as their own user and inherit this working folder:
    # they must be able to enter it (pytest makes tmp_path private to its user).
    for folder in (tmp_path, caller):
        folder.chmod(0o755)
    (caller / "streams" / "__init__.py").write_text("")
    for worker in ("hub", "registry"):
        (caller / "streams" / f"{worker}.py").write_text(DECOY)
    # The decoy is importable from that folder, as the workers' `python -m streams.hub_loop` would find it without -P.
    probe = subprocess.run([sys.executable, "-c", "import streams, sys; print(streams.__file__)"], cwd=caller,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(caller / "streams" / "__init__.py")

    state = str(tmp_path / "state")
    up = renkei(caller, "up", "--detach", "--json", "--state-dir", state, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 90
        while True:  # each worker publishes its metrics endpoint once it serves
            status = renkei(caller, "status", "--json", "--state-dir", state)
            rows = {r["name"]: r for r in json.loads(status.stdout)["components"]}
            if all(rows[w]["endpoint"] for w in ("hub", "registry")) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status.returncode == 0, status.stderr
        for worker in ("hub", "registry"):
            assert rows[worker]["alive"] and rows[worker]["endpoint"], rows[worker]
        assert not (caller / "streams" / "DECOY-RAN").exists()
    finally:
        down = renkei(caller, "down", "--state-dir", state, timeout=180)
    assert down.returncode == 0, down.stderr
