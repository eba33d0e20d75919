"""Building the ``renkei`` parser loads no key material's code: ops commands (inspect, dlq, replay) run without it.

tests/integration/test_ops.py shows it per command on a real broker; this is the quick check of the parser that
every command builds first (the tools' modules register their commands, so a tool importing the key store at
module level would break it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROBE = (
    "import sys\n"
    "from infra.cli import build_parser\n"
    "build_parser()\n"
    "print(','.join(sorted(m for m in sys.modules if m == 'infra.platform.keystore')))\n"
)


def test_building_the_parser_does_not_load_the_key_store():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "infra.platform.keystore" not in out.stdout.strip().split(",")
