"""Envelope micro-benchmark: µs per message to seal, hub-verify + forward, and open.

Per-message signatures (one Ed25519 signature each) against batch signatures
(one signature over a Merkle root; verifiers cache verified roots) at batch
sizes 1, 16 and 128. Run: ``python -m benchmarks.envelope_bench [--messages N]``.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from infra.envelope import HubForwarder, MemoryReplayGuard, Message, Opener, Sealer, Verifier
from infra.keys import KeyDirectory, Keyset, RootAuthority
from infra.participants import Kind, Participant, Participants
from infra.tokens import TokenAuthority

BODY = {"procedure_code": "KYUFU-0001", "purpose": "benefit payment", "requested_at": datetime(2025, 4, 1, tzinfo=UTC)}
MY_NUMBER = "123456789018"  # synthetic (check digit valid), never a real person's


def run(messages: int, batch_size: int | None, kem: str) -> dict[str, float]:
    root = RootAuthority.generate()
    keys = {p: Keyset.generate(p, kem if p == "registry" else "x25519") for p in ("hub", "agency-a", "registry")}
    directory = KeyDirectory.verify_and_load(
        root.snapshot([e for k in keys.values() for e in k.public_entries()]), root.public_key
    )
    tokens = TokenAuthority(bytes(range(32)), bytes(range(32, 64)))
    subject = tokens.token_for(MY_NUMBER, "agency-a")
    new_subject = tokens.translate(subject, "agency-a", "registry")
    sealer = Sealer(keys["agency-a"], directory)
    ingress = Verifier(directory)
    hub = HubForwarder(keys["hub"], directory)
    participants = Participants([Participant("hub", Kind.HUB, "hub"), Participant("agency-a", Kind.AGENCY, "agency"),
                                 Participant("registry", Kind.REGISTRY, "registry")])
    opener = Opener(keys["registry"], directory, MemoryReplayGuard(), participants=participants)
    message = Message(BODY, "provision.inquiry", "registry", subject, "public_funds_account", "koza-toroku-ho-9")
    size = batch_size or 1

    t = time.perf_counter()
    sealed: list[bytes] = []
    for _ in range(messages // size):
        if batch_size is None:
            sealed.append(sealer.seal(BODY, type=message.type, to="registry", subject=subject,
                                      data_item=message.data_item, basis=message.basis))
        else:
            sealed.extend(sealer.seal_batch([message] * size))
    t_seal = time.perf_counter() - t

    t = time.perf_counter()
    metas = [ingress.verify(s) for s in sealed]
    t_verify = time.perf_counter() - t

    t = time.perf_counter()
    forwarded: list[bytes] = []
    for i in range(0, len(metas), size):
        forwarded.extend(hub.forward_batch([(m, new_subject) for m in metas[i:i + size]]))
    t_forward = time.perf_counter() - t

    t = time.perf_counter()
    for f in forwarded:
        opener.open(f)
    t_open = time.perf_counter() - t
    n = len(sealed)
    return {k: v / n * 1e6 for k, v in
            (("seal", t_seal), ("hub verify", t_verify), ("hub forward", t_forward), ("open", t_open))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1024)
    parser.add_argument("--kem", default="x25519", choices=["x25519", "mlkem768-x25519"])
    args = parser.parse_args()
    print(f"envelope benchmark: {args.messages} messages, recipient KEM {args.kem}, µs per message")
    print(f"{'mode':<22}{'seal':>10}{'hub verify':>12}{'hub forward':>13}{'hub total':>11}{'open':>10}")
    for label, batch_size in (("per-message signature", None), ("batch of 1", 1), ("batch of 16", 16),
                              ("batch of 128", 128)):
        r = run(args.messages, batch_size, args.kem)
        print(f"{label:<22}{r['seal']:>10.1f}{r['hub verify']:>12.1f}{r['hub forward']:>13.1f}"
              f"{r['hub verify'] + r['hub forward']:>11.1f}{r['open']:>10.1f}")


if __name__ == "__main__":
    main()
