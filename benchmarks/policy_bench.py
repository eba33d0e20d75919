"""Policy micro-benchmark: decisions per second on the hub's hot path, next to a baseline.

The hub asks the default-deny policy once per message (``Policy.authorise``).  Printed: decisions/s for
an allowed STEP2 inquiry and for a refused one (the exception path), and the same number of bare dict
lookups of a 5-tuple key taken in the same run, with the ratio — a figure that means the same on a
loaded and on an idle machine.  Speed is measured here, never asserted by a test (docs/testing.md).

    python -m benchmarks.policy_bench [--decisions N]
"""

from __future__ import annotations

import argparse
import time

from infra.core.errors import PolicyDenied
from infra.domain import policy as policy_rules
from infra.domain.participants import Kind, load_participants


def _rate(n: int, step: object) -> float:
    started = time.perf_counter()
    for _ in range(n):
        step()  # type: ignore[operator]
    return n / (time.perf_counter() - started)


def run(decisions: int) -> dict[str, float]:
    participants = load_participants()
    policy = policy_rules.Policy.load()
    agency = next(p for p in participants if p.kind is Kind.AGENCY)
    procedure = policy.procedures.for_agency(agency)[0].code  # STEP2 names a procedure the agency is entitled to
    registry = next(p for p in participants if p.kind is Kind.REGISTRY)
    bank = next(p for p in participants if p.kind is Kind.BANK)
    item, basis = policy_rules.DATA_PUBLIC_FUNDS_ACCOUNT, policy_rules.BASIS_PROVISION
    table = {("provision.inquiry", agency.id, registry.id, item, basis): True}
    key = ("provision.inquiry", agency.id, registry.id, item, basis)

    def refused() -> None:
        try:
            policy.authorise(agency, bank, "provision.inquiry", item, basis)
        except PolicyDenied:
            pass

    baseline = _rate(decisions, lambda: table.get(key))
    allowed = _rate(decisions, lambda: policy.authorise(agency, registry, "provision.inquiry", item, basis,
                                                        procedure))
    denied = _rate(decisions, refused)
    return {"baseline_lookups_per_s": baseline, "allowed_per_s": allowed, "refused_per_s": denied,
            "allowed_ratio": allowed / baseline, "refused_ratio": denied / baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    args = parser.parse_args()
    r = run(args.decisions)
    print(f"policy benchmark: {args.decisions} decisions each")
    print(f"{'':<28}{'per second':>14}{'× dict lookup':>16}")
    print(f"{'bare dict lookup (baseline)':<28}{r['baseline_lookups_per_s']:>14,.0f}{1.0:>16.3f}")
    print(f"{'allowed (STEP2 inquiry)':<28}{r['allowed_per_s']:>14,.0f}{r['allowed_ratio']:>16.3f}")
    print(f"{'refused (agency → bank)':<28}{r['refused_per_s']:>14,.0f}{r['refused_ratio']:>16.3f}")


if __name__ == "__main__":
    main()
