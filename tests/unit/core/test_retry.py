"""infra.core.retry.Backoff: waits grow to a cap, each drawn in [(1 - jitter) * ceiling, ceiling].

And it is the one helper: no module of Renkei doubles a wait of its own (issue 17).
"""

from __future__ import annotations

import ast
from pathlib import Path

from infra.core.retry import Backoff

ROOT = Path(__file__).resolve().parents[3]


def test_waits_double_to_the_cap_and_never_overflow():
    backoff = Backoff(base_s=0.2, cap_s=5.0)
    assert [backoff.ceiling(n) for n in (0, 1, 2, 3, 4, 5, 6)] == [0.2, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert backoff.ceiling(10_000) == 5.0


def test_jitter_spreads_waits_within_its_share():
    backoff = Backoff(base_s=1.0, cap_s=8.0, jitter=0.25)
    waits = [backoff.delay(4) for _ in range(500)]
    assert all(6.0 <= w <= 8.0 for w in waits)
    assert len(set(waits)) > 100  # drawn, not fixed
    assert Backoff(jitter=0.0).delay(3) == Backoff().ceiling(3)


def _hand_written_backoffs(source: str) -> list[int]:
    """Lines of ``x = min(x * 2, cap)``: a retry loop doubling its own wait instead of asking ``Backoff``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        call = node.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "min" and call.args):
            continue
        first = call.args[0]
        if (isinstance(first, ast.BinOp) and isinstance(first.op, ast.Mult) and isinstance(first.left, ast.Name)
                and first.left.id == node.targets[0].id):
            found.append(node.lineno)
    return found


def test_the_finder_sees_a_hand_written_loop():
    assert _hand_written_backoffs("delay = 0.2\nwhile True:\n    delay = min(delay * 2, 5.0)\n") == [3]
    assert _hand_written_backoffs("delay = backoff.delay(n)\nwait = min(other * 2, 5.0)\n") == []


def test_every_retrying_loop_uses_the_one_backoff():
    offenders = [f"{path.relative_to(ROOT)}:{line}"
                 for package in ("infra", "streams", "connectors", "schemas")
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for line in _hand_written_backoffs(path.read_text(encoding="utf-8"))]
    assert offenders == []
