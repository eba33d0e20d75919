"""Envelope micro-benchmark: µs per message to seal, hub-verify + forward, and open.

Per-message signatures (one Ed25519 signature each) against batch signatures
(one signature over a Merkle root; verifiers cache verified roots) at batch
sizes 1, 16 and 128, each forwarded as before (the origin's ids) and as
unlinkable legs (ids of their own, the origin's sealed to the recipient:
``infra.crypto.pseudonyms`` + ``LegIds``). ``--fanout N`` also times one lookup
fanned out to N banks through the hub, both ways, and the banks' opening of
their legs, and the N answers: each bank's seal, the hub's verification and countersignature, DICJ's opening
(the crypto floor of a lookup's legs). Run: ``python -m benchmarks.envelope_bench [--messages N] [--fanout N]``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime

from infra.crypto.envelope import HubForwarder, MemoryReplayGuard, Message, Opener, Sealer, Verifier
from infra.crypto.keys import KeyDirectory, Keyset, RootAuthority
from infra.crypto.pseudonyms import HubPseudonyms
from infra.crypto.tokens import TokenAuthority
from infra.domain.participants import Kind, Participant, Participants

BODY = {"procedure_code": "KYUFU-0001", "purpose": "benefit payment", "requested_at": datetime(2025, 4, 1, tzinfo=UTC)}
MY_NUMBER = "123456789018"  # synthetic (check digit valid), never a real person's


def run(messages: int, batch_size: int | None, kem: str, legs: bool = False) -> dict[str, float]:
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
    verified = [ingress.verify(s) for s in sealed]
    t_verify = time.perf_counter() - t

    names = HubPseudonyms.of(tokens)
    t = time.perf_counter()
    forwarded: list[bytes] = []
    for i in range(0, len(verified), size):
        if legs:  # what the gateway does: the leg's ids, then a forward that seals the origin's
            forwarded.extend(hub.forward_batch([
                (v, new_subject, None, names.legs(v.meta.message_id, v.meta.correlation_id, v.meta.sender,
                                                  ["registry"])[0])
                for v in verified[i:i + size]]))
        else:
            forwarded.extend(hub.forward_batch([(v, new_subject) for v in verified[i:i + size]]))
    t_forward = time.perf_counter() - t

    t = time.perf_counter()
    for f in forwarded:
        opener.receive(f)
    t_open = time.perf_counter() - t
    n = len(sealed)
    return {k: v / n * 1e6 for k, v in
            (("seal", t_seal), ("hub verify", t_verify), ("hub forward", t_forward), ("open", t_open))}


def lookup_world(banks: int) -> tuple[list[str], dict[str, Keyset], KeyDirectory, Participants, TokenAuthority]:
    """A root, the hub, DICJ and ``banks`` banks with their keys in a directory; the participants; a token authority."""
    root = RootAuthority.generate()
    bank_ids = [f"bank-{9000 + i}" for i in range(banks)]
    keys = {p: Keyset.generate(p) for p in ("hub", "dicj", *bank_ids)}
    directory = KeyDirectory.verify_and_load(
        root.snapshot([e for k in keys.values() for e in k.public_entries()]), root.public_key)
    participants = Participants([Participant("hub", Kind.HUB, "hub"), Participant("dicj", Kind.DICJ, "dicj")]
                                + [Participant(b, Kind.BANK, b, bank_code=b[5:]) for b in bank_ids])
    return bank_ids, keys, directory, participants, TokenAuthority(bytes(range(32)), bytes(range(32, 64)))


def fanout(banks: int, rounds: int = 3) -> dict[str, float]:
    """One lookup to ``banks`` banks through the hub, ms: verify + forward as before / as legs; banks' opening."""
    bank_ids, keys, directory, participants, tokens = lookup_world(banks)
    names = HubPseudonyms.of(tokens)
    subject = tokens.token_for(MY_NUMBER, "dicj")
    body = {"receiving_bank_code": None, "requested_at": datetime.now(UTC), "deadline": datetime.now(UTC)}
    ingress = Verifier(directory, max_wraps=len(participants))
    hub = HubForwarder(keys["hub"], directory)
    openers = {b: Opener(keys[b], directory, MemoryReplayGuard(), participants=participants) for b in bank_ids}
    best: dict[str, float] = {}
    for r in range(rounds + 1):  # round 0 warms the leg keys: the figures are the steady state
        sealed = Sealer(keys["dicj"], directory).seal_multi(body, type="lookup.inheritance", to=bank_ids,
                                                            subject=subject, data_item="deposit_account_holdings",
                                                            basis="inheritance")
        times: dict[str, float] = {}
        for label, own_ids in (("as before", False), ("as legs", True)):
            t = time.perf_counter()
            verified = ingress.verify(sealed)
            meta = verified.meta
            subjects = tokens.translate_many(meta.subject, meta.sender, bank_ids)
            ids = names.legs(meta.message_id, meta.correlation_id, meta.sender, bank_ids) if own_ids else [None] * banks
            out = hub.forward_batch([(verified, s, b, i) for b, s, i in zip(bank_ids, subjects, ids, strict=True)])
            times[f"hub {label}"] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            for b, envelope in zip(bank_ids, out, strict=True):
                openers[b].receive(envelope)
            times[f"banks open {label}{' (first: leg keys opened)' if own_ids and r == 0 else ''}"] = (
                time.perf_counter() - t) * 1e3
            for b in bank_ids:  # the next round re-opens the same ids
                openers[b]._guard = MemoryReplayGuard()
        for k, v in times.items():
            if r == 0 and "first" not in k:
                continue
            best[k] = min(best.get(k, v), v)
    return best


def answers(banks: int, rounds: int = 3, batch: int = 500) -> dict[str, float]:
    """The answers of one lookup to ``banks`` banks, ms: each bank seals its own (one HPKE seal and one signature
    per bank), the hub verifies them and countersigns them in batches of ``batch``, DICJ opens them."""
    bank_ids, keys, directory, participants, tokens = lookup_world(banks)
    names = HubPseudonyms.of(tokens)
    sealers = {b: Sealer(keys[b], directory) for b in bank_ids}
    subjects = {b: tokens.token_for(MY_NUMBER, b) for b in bank_ids}
    to_dicj = tokens.token_for(MY_NUMBER, "dicj")
    ingress = Verifier(directory)
    hub = HubForwarder(keys["hub"], directory)
    best: dict[str, float] = {}
    for _ in range(rounds):
        opener = Opener(keys["dicj"], directory, MemoryReplayGuard(), participants=participants)
        t = time.perf_counter()
        sealed = [sealers[b].seal_batch([Message({"bank_code": b[5:], "accounts": [], "answered_at": datetime.now(UTC)},
                                                 "lookup.answer", "dicj", subjects[b], "deposit_account_holdings",
                                                 "disaster", correlation_id=str(uuid.uuid4()))])[0]
                  for b in bank_ids]
        times = {"banks seal (one signature each)": time.perf_counter() - t}
        t = time.perf_counter()
        out: list[bytes] = []
        for i in range(0, banks, batch):
            verified = [ingress.verify(s) for s in sealed[i:i + batch]]
            out += hub.forward_batch([(v, to_dicj, None, names.legs(v.meta.message_id, v.meta.correlation_id,
                                                                    v.meta.sender, ["dicj"])[0]) for v in verified])
        times["hub verify + forward"] = time.perf_counter() - t
        t = time.perf_counter()
        for envelope in out:
            opener.receive(envelope)
        times["dicj open"] = time.perf_counter() - t
        for k, v in times.items():
            best[k] = min(best.get(k, v * 1e3), v * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1024)
    parser.add_argument("--kem", default="x25519", choices=["x25519", "mlkem768-x25519"])
    parser.add_argument("--fanout", type=int, default=0, metavar="BANKS",
                        help="also time one lookup to this many banks, as before and as legs")
    args = parser.parse_args()
    print(f"envelope benchmark: {args.messages} messages, recipient KEM {args.kem}, µs per message")
    print(f"{'mode':<32}{'seal':>10}{'hub verify':>12}{'hub forward':>13}{'hub total':>11}{'open':>10}")
    for label, batch_size in (("per-message signature", None), ("batch of 1", 1), ("batch of 16", 16),
                              ("batch of 128", 128)):
        for legs in (False, True):
            r = run(args.messages, batch_size, args.kem, legs)
            name = f"{label}{', legs' if legs else ''}"
            print(f"{name:<32}{r['seal']:>10.1f}{r['hub verify']:>12.1f}{r['hub forward']:>13.1f}"
                  f"{r['hub verify'] + r['hub forward']:>11.1f}{r['open']:>10.1f}")
    if args.fanout:
        print(f"one lookup to {args.fanout} banks, ms (best of 3):")
        for k, v in fanout(args.fanout).items():
            print(f"  {k:<48}{v:>9.1f}")
        print(f"its {args.fanout} answers, ms (best of 3):")
        for k, v in answers(args.fanout).items():
            print(f"  {k:<48}{v:>9.1f}")


if __name__ == "__main__":
    main()
