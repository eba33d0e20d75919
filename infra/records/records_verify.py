"""A person's provision records, verified against the published checkpoint: what the portal shows.

:func:`judge` (pure) decides, from one database snapshot of the person's chain
(:class:`infra.records.provisions.ChainState`), the database's checkpoint evidence
(:class:`infra.records.checkpoints.CheckpointEvidence`) and the latest checkpoint read
from the topic (:class:`infra.records.checkpoint_log.CheckpointLog`):

- which checkpoint counts: the database's latest, verified with the records
  key, and never older than the highest one published (a database restored or
  rolled back to an earlier state is caught here);
- the person's checkpointed head, proven by re-hashing the person's bucket up
  to the signed root (deleting a whole chain, moving a checkpointed head or
  altering any bucket breaks the proof);
- the chain: every record re-hashed and linked from its start (genesis, or the
  signed retention anchor of a purge) to the checkpointed head and on to the
  current head, whose records-key seal must verify.

The verdict is ``OK`` (every record is covered by a checkpoint), ``PENDING``
(the records after the latest checkpoint verify against the signed head, and
will be covered by the next checkpoint) or ``TAMPERED`` (with the problems,
located by sequence number, and each record's state).  What it cannot see: a
truncation of records that no checkpoint covers yet back to a head the
database's operator saw earlier (docs/policy-and-records.md).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from itertools import accumulate
from typing import Any

import asyncpg

from infra.crypto.records_keys import RecordsPublicKeys
from infra.records.checkpoint_log import CheckpointLog
from infra.records.checkpoints import Checkpoint, CheckpointError, CheckpointEvidence, open_checkpoint, read_evidence
from infra.records.provisions import (
    ANCHOR_DOMAIN,
    GENESIS_HASH,
    HEAD_DOMAIN,
    ChainProblem,
    ChainState,
    ProvisionRecord,
    ProvisionStore,
    anchor_statement,
    head_statement,
    walk_chain,
)

__all__ = ["CheckpointSeen", "RecordState", "RecordsVerdict", "RecordsVerifier", "Verdict", "judge"]


class Verdict(str, Enum):
    OK = "OK"  # every record is covered by a checkpoint and verifies
    PENDING = "PENDING"  # nothing wrong; some records are not yet covered by a checkpoint
    TAMPERED = "TAMPERED"  # see problems


class RecordState(str, Enum):
    CHECKPOINTED = "CHECKPOINTED"  # verified up to a published checkpoint
    PENDING = "PENDING"  # written after the latest checkpoint; verified against the signed head
    TAMPERED = "TAMPERED"  # this record was altered, inserted, or sits where records were deleted
    UNVERIFIED = "UNVERIFIED"  # cannot be confirmed because of a problem elsewhere in the chain


@dataclass(frozen=True)
class CheckpointSeen:
    """The checkpoint a verdict was reached against."""

    number: int
    issued_at: datetime
    published: bool  # False: made and signed, not yet seen on the topic


@dataclass(frozen=True)
class RecordsVerdict:
    verdict: Verdict
    records: list[ProvisionRecord] = field(repr=False)  # every record, 不開示 ones included, in seq order
    states: dict[int, RecordState]
    problems: list[str]  # located by sequence numbers and checkpoint numbers only
    checkpoint: CheckpointSeen | None
    purged_before: datetime | None  # records before this were removed under the retention period

    @property
    def ok(self) -> bool:
        return self.verdict is not Verdict.TAMPERED

    @property
    def pending(self) -> int:
        return sum(1 for s in self.states.values() if s is RecordState.PENDING)


def _seqs(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def _choose(signed: bytes | None, published: Checkpoint | None,
            keys: RecordsPublicKeys) -> tuple[Checkpoint | None, bool, str]:
    """The checkpoint to verify against, whether it is on the topic, and the problem with it ('' if none)."""
    if signed is None:
        if published is None:
            return None, False, ""  # none made yet: every record is pending
        return None, False, (f"checkpoint #{published.number} is published but the database holds no checkpoint "
                             "(checkpoint state deleted)")
    try:
        stored = open_checkpoint(signed, keys)
    except CheckpointError:
        return None, False, "the database's latest checkpoint is not signed by the records key (forged)"
    if published is None or stored.number > published.number:
        return stored, False, ""  # made and signed just now; the topic will have it in a moment
    if stored.number < published.number:
        return None, False, (f"the database holds checkpoint #{stored.number} but #{published.number} is published "
                             "(the database was rolled back)")
    if stored.body != published.body:
        return None, False, f"the database's checkpoint #{stored.number} is not the published one (forked)"
    return stored, True, ""


def judge(state: ChainState, evidence: CheckpointEvidence, published: Checkpoint | None,
          keys: RecordsPublicKeys) -> RecordsVerdict:
    """The verdict on one person's records (see the module docstring). Pure."""
    token, records = state.person_token, state.records
    problems: list[ChainProblem] = []
    checkpoint, on_topic, trouble = _choose(evidence.signed, published, keys)
    proven = not trouble
    if trouble:
        problems.append(ChainProblem(None, None, trouble))
    cp_seq, cp_hash = 0, GENESIS_HASH
    if checkpoint is not None:
        root, (cp_seq, cp_hash) = evidence.root_for(token)
        if root != checkpoint.root:
            proven, (cp_seq, cp_hash) = False, (0, GENESIS_HASH)
            problems.append(ChainProblem(None, None, f"the database no longer proves checkpoint #{checkpoint.number}: "
                                                     "checkpointed heads were altered, moved or deleted"))
    number = checkpoint.number if checkpoint else 0

    start = state.start
    if state.anchor is not None:
        a = state.anchor
        if not keys.check(ANCHOR_DOMAIN, anchor_statement(token, a.seq, a.last_hash, a.purged_before), a.seal):
            problems.append(ChainProblem(1, a.seq, f"seq {_seqs(1, a.seq)} removed without a signed retention "
                                                   "anchor (deleted)"))
    walk = walk_chain(records, start)
    problems += walk.problems
    last = walk.last_seq

    # The two points a record can be proven against: the checkpointed head (the signed root commits to it) and
    # the current head (the records key sealed it). A record is proven when no problem lies between it and one.
    at_checkpoint, covered = False, last  # covered: up to where missing records are already reported
    if cp_seq > start[0]:
        if cp_seq > last:
            problems.append(ChainProblem(last + 1, cp_seq, f"seq {_seqs(last + 1, cp_seq)} missing: checkpoint "
                                                           f"#{number} covers them (deleted)"))
            covered = cp_seq
        elif cp_seq in walk.hashes:
            at_checkpoint = walk.hashes[cp_seq] == cp_hash
            if not at_checkpoint:
                problems.append(ChainProblem(None, None, f"the records up to seq {cp_seq} are not the ones "
                                                         f"checkpoint #{number} covers (rewritten)"))
    elif cp_seq and cp_seq == start[0]:
        at_checkpoint = cp_hash == start[1]
        if not at_checkpoint:
            problems.append(ChainProblem(None, None, f"the retention anchor does not match checkpoint #{number} "
                                                     "(altered)"))
    checkpointed = cp_seq if at_checkpoint else 0  # records up to here are covered by the checkpoint

    head, at_head = state.head, False
    if head is None:
        if records or cp_seq or state.anchor is not None:
            problems.append(ChainProblem(None, None, "no chain head for this person (head deleted)"))
    else:
        sealed = keys.check(HEAD_DOMAIN, head_statement(token, head.seq, head.last_hash), head.seal)
        if not sealed:
            problems.append(ChainProblem(None, None, "the chain head is not signed by the records key (moved head)"))
        if proven and head.seq < cp_seq:
            problems.append(ChainProblem(None, None, f"the chain head is at seq {head.seq}, before checkpoint "
                                                     f"#{number} (seq {cp_seq}) (moved head)"))
        if head.seq > covered:
            problems.append(ChainProblem(covered + 1, head.seq, f"seq {_seqs(covered + 1, head.seq)} missing "
                                                                "(tail deleted)"))
        elif head.seq < last:
            extra = max(head.seq, checkpointed) + 1  # records the checkpoint covers are not the extra ones
            if extra <= last:
                problems.append(ChainProblem(extra, last, f"seq {_seqs(extra, last)}: after the chain head (records "
                                                          "added outside the store)"))
        elif head.last_hash != walk.last_hash:
            if checkpointed >= last:
                problems.append(ChainProblem(None, None, f"the chain head does not match seq {last} (moved head)"))
            else:
                problems.append(ChainProblem(last, last, f"seq {last}: does not match the chain head (altered)"))
        at_head = sealed and head.seq == last and head.last_hash == walk.last_hash

    spans = sorted((p.first, p.last or p.first) for p in problems if p.first is not None)
    bad = {s for first, last_ in spans for s in range(first, last_ + 1)}
    firsts = [first for first, _ in spans]
    reach = list(accumulate((last_ for _, last_ in spans), max))  # how far the spans starting so far reach

    def linked(seq: int, to: int) -> bool:  # no deleted, inserted or altered record from seq up to ``to``
        i = bisect_right(firsts, to)  # the spans that start at or before ``to`` ...
        return i == 0 or reach[i - 1] < seq  # ... all end before ``seq``

    states: dict[int, RecordState] = {}
    for record in records:
        seq = record.seq
        if seq in bad:
            states[seq] = RecordState.TAMPERED
        elif proven and seq <= checkpointed and linked(seq, checkpointed):
            states[seq] = RecordState.CHECKPOINTED
        elif proven and at_head and seq > cp_seq and linked(seq, head.seq):
            states[seq] = RecordState.PENDING
        else:
            states[seq] = RecordState.UNVERIFIED
    if problems:
        verdict = Verdict.TAMPERED
    elif head is not None and head.seq > cp_seq:
        verdict = Verdict.PENDING
    else:
        verdict = Verdict.OK
    seen = None if checkpoint is None else CheckpointSeen(checkpoint.number, checkpoint.issued_at, on_topic)
    return RecordsVerdict(verdict=verdict, records=records, states=states, problems=[p.text for p in problems],
                          checkpoint=seen, purged_before=state.anchor.purged_before if state.anchor else None)


class RecordsVerifier:
    """Verifies people's records: the database (``pool``), the records public keys and the checkpoint topic.

    Holds a consumer of the checkpoint topic: ``close()`` it (or use ``async with``).
    """

    def __init__(self, pool: asyncpg.Pool, keys: RecordsPublicKeys, log: CheckpointLog) -> None:
        self.pool = pool
        self.keys = keys
        self.log = log

    @classmethod
    def for_settings(cls, settings: Any, pool: asyncpg.Pool) -> RecordsVerifier:
        """Keys from the settings' key store (``records.pub``), checkpoints from the settings' broker."""
        from infra.platform.keystore import KeyStore

        keys = KeyStore.for_settings(settings).records_public_keys()
        return cls(pool, keys, CheckpointLog(settings, keys))

    async def verify(self, person_token: str) -> RecordsVerdict:
        """The person's verdict. Raises StackError when the checkpoint topic cannot be read."""
        published = await self.log.latest()  # first: the database is never behind what was published before it
        async with self.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state = await ProvisionStore.chain_state(conn, person_token)
                evidence = await read_evidence(conn, person_token)
        return judge(state, evidence, published, self.keys)

    async def close(self) -> None:
        await self.log.close()

    async def __aenter__(self) -> RecordsVerifier:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
