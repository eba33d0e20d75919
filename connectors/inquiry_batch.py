"""Bulk inquiry (一括照会): one agency asks the registry for many people's accounts, resumably.

A benefit paid to every resident of a municipality means an inquiry per
resident, hundreds of thousands at once.  A batch is a CSV file of people
(column ``my_number``, optional ``ref`` — the agency's own id for the person,
echoed in the result); every line gets exactly one result line, and a batch
cut short (the process killed, the machine rebooted) is resumed by running the
same command again, without asking the registry twice about anyone.

How "never twice" holds: each line's inquiry is sealed into the agency's
``participant_outbox`` in the SAME transaction as its row in
``inquiry_batch_lines`` (keyed by batch id + line number, holding the
message's id and correlation id).  A resumed run sends only lines without a
row; a line with a row and no answer is waited for — its answer is read from
the agency's inbox from where the batch's first run began listening
(``inquiry_batches.inbox_offsets``), since it may have arrived while no
process was listening.  An answer is stored on its line when it arrives; the
result file is written from the table at the end.

The batch id is a keyed digest of the agency, the procedure and the file's
bytes (the key: a secret of the agency's own key folder), so the same command
on the same file resumes, a different file is a different batch, and the id
says nothing about whose numbers are in it.  ``--batch NAME`` names a batch
explicitly (to ask again about the same file, e.g. next year's round); a
named batch resumed with other content is refused (BATCH_MISMATCH).  Two runs
of one batch at once are refused (BATCH_BUSY, a PostgreSQL advisory lock).

Nothing here stores or prints a My Number: the file is read, each number
checked (a bad one answers INVALID_FIELD on its line, never echoed) and
exchanged for the agency's token through token issuance, as ``agency
inquire`` does.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.core.errors import ValidationError

__all__ = [
    "BATCH_MIGRATIONS",
    "BatchLine",
    "BatchState",
    "BatchStore",
    "LineResult",
    "RESULT_COLUMNS",
    "STOPPING_REASONS",
    "batch_digest",
    "read_people",
    "result_from_answer",
    "write_results",
]

BATCH_MIGRATIONS = [
    """
    CREATE TABLE inquiry_batches (
        batch_id       text PRIMARY KEY,
        agency         text NOT NULL,
        procedure_code text NOT NULL,
        fingerprint    bytea NOT NULL,
        lines          integer NOT NULL,
        inbox_offsets  jsonb NOT NULL,
        runs           integer NOT NULL DEFAULT 1,
        created_at     timestamptz NOT NULL DEFAULT now(),
        finished_at    timestamptz
    );
    CREATE TABLE inquiry_batch_lines (
        batch_id       text NOT NULL REFERENCES inquiry_batches ON DELETE CASCADE,
        line           integer NOT NULL,
        ref            text,
        correlation_id uuid,
        message_id     uuid,
        status         text,
        reason         text,
        detail         text,
        account        jsonb,
        sent_at        timestamptz,
        answered_at    timestamptz,
        PRIMARY KEY (batch_id, line)
    );
    """,
]
"""Component ``inquiry-batch``, in the agency's own schema (where its ``participant_outbox`` is)."""

STOPPING_REASONS = frozenset({"UNKNOWN_PROCEDURE", "PROCEDURE_NOT_ALLOWED", "SUSPENDED", "UNAUTHORISED",
                              "SENDER_NOT_ALLOWED", "UNKNOWN_PARTICIPANT"})
"""A hub refusal with one of these reasons is about the agency or the procedure, not the person: the batch
stops sending (every other line would be refused the same way)."""

RESULT_COLUMNS = ["line", "ref", "status", "reason", "detail", "bank_code", "branch_code", "account_type",
                  "account_number", "holder_kana", "request_id"]
_ACCOUNT_KEYS = RESULT_COLUMNS[5:10]
MAX_REF = 64


@dataclass(frozen=True)
class BatchLine:
    """One person of the input: its line (1-based, data rows), the agency's ref, and the checked number."""

    line: int
    ref: str | None
    my_number: str | None = field(repr=False)  # None when the cell broke a rule: see ``problem``
    problem: str | None = None  # the rule broken (never the value)


@dataclass(frozen=True)
class LineResult:
    """One result line: what ``agency inquire`` would have answered for this person."""

    line: int
    ref: str | None
    status: str  # REGISTERED, NOT_REGISTERED, BLOCKED, REJECTED, TIMEOUT, NOT_SENT
    reason: str | None = None
    detail: str | None = None
    account: dict[str, Any] | None = field(default=None, repr=False)
    request_id: str | None = None

    def row(self) -> list[Any]:
        a = self.account or {}
        return [self.line, self.ref or "", self.status, self.reason or "", self.detail or "",
                *(a.get(k) or "" for k in _ACCOUNT_KEYS), self.request_id or ""]


@dataclass
class BatchState:
    """What the table holds about a batch when a run starts."""

    created: bool
    inbox_offsets: dict[str, int]
    answered: dict[int, LineResult]
    pending: dict[int, str]  # line → correlation id: sent, not yet answered
    runs: int = 1


def read_people(path: Path, normalise: Any) -> tuple[list[BatchLine], bytes]:
    """The people of a CSV file (UTF-8, a BOM allowed) and its bytes.

    The header must name a ``my_number`` column; ``ref`` is optional.  ``normalise(raw)`` checks a number
    (``connectors.commands.normalise_my_number``), raising ValidationError.  Raises ValidationError
    (field ``--in``) when the file has no such column; a bad cell makes a line with a ``problem``.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("--in", "the file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    if "my_number" not in columns:
        raise ValidationError("--in", "the CSV header names no my_number column (optional: ref)")
    number_col, ref_col = columns["my_number"], columns.get("ref")
    people = []
    for i, row in enumerate(reader, start=1):
        ref = (row.get(ref_col) or "").strip()[:MAX_REF] if ref_col else ""
        try:
            people.append(BatchLine(i, ref or None, normalise(row.get(number_col) or "")))
        except ValidationError as exc:
            people.append(BatchLine(i, ref or None, None, exc.message))
    return people, raw


def batch_digest(secret: bytes, agency: str, procedure: str, content: bytes) -> tuple[str, bytes]:
    """``(batch id, fingerprint)`` of a file asked about by ``agency`` under ``procedure``: keyed digests
    (``secret`` is the agency's), so neither reveals the numbers in it."""
    fingerprint = hmac.new(secret, f"batch\0{agency}\0{procedure}\0".encode() + content, hashlib.sha256).digest()
    return "b-" + hashlib.sha256(b"batch id\0" + fingerprint).hexdigest()[:24], fingerprint


def result_from_answer(line: int, ref: str | None, type_: str, body: dict[str, Any], request_id: str) -> LineResult:
    """A line's result from the answer that arrived: the registry's response or the hub's rejection notice."""
    from schemas import types as msg

    if type_ == msg.PROVISION_RESPONSE:
        return LineResult(line, ref, body["status"], None if body["status"] in ("REGISTERED", "NOT_REGISTERED")
                          else body["status"], None, body.get("account"), request_id)
    return LineResult(line, ref, "REJECTED", body["reason_code"], body["message"], None, request_id)


def write_results(path: Path, results: Iterable[LineResult]) -> None:
    """The result file, one line per person in input order; written whole (a temporary file renamed), 0600:
    it holds the people's accounts."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(RESULT_COLUMNS)
        for r in sorted(results, key=lambda r: r.line):
            out.writerow(r.row())
    os.replace(tmp, path)


def _result(row: Any) -> LineResult:
    account = row["account"]
    return LineResult(row["line"], row["ref"], row["status"], row["reason"], row["detail"],
                      json.loads(account) if isinstance(account, str) else account,
                      str(row["correlation_id"]) if row["correlation_id"] else None)


class BatchStore:
    """The batch tables in the agency's schema (a pool of the agency's runtime, or one connection)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def state(self, batch_id: str, fingerprint: bytes) -> BatchState | None:
        """The batch's lines so far, or None when it is new. Raises ValidationError on other content."""
        batch = await self.db.fetchrow("SELECT fingerprint, inbox_offsets, runs FROM inquiry_batches "
                                       "WHERE batch_id = $1", batch_id)
        if batch is None:
            return None
        if not hmac.compare_digest(bytes(batch["fingerprint"]), fingerprint):
            raise ValidationError("--batch", "this batch was started with another file (BATCH_MISMATCH)")
        rows = await self.db.fetch("SELECT * FROM inquiry_batch_lines WHERE batch_id = $1", batch_id)
        offsets = batch["inbox_offsets"]
        return BatchState(
            created=False, inbox_offsets=json.loads(offsets) if isinstance(offsets, str) else offsets,
            answered={r["line"]: _result(r) for r in rows if r["answered_at"] is not None},
            pending={r["line"]: str(r["correlation_id"]) for r in rows if r["answered_at"] is None},
            runs=batch["runs"] + 1)

    async def create(self, batch_id: str, agency: str, procedure: str, fingerprint: bytes, lines: int,
                     inbox_offsets: dict[str, int]) -> None:
        await self.db.execute(
            "INSERT INTO inquiry_batches (batch_id, agency, procedure_code, fingerprint, lines, inbox_offsets) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb)", batch_id, agency, procedure, fingerprint, lines,
            json.dumps(inbox_offsets))

    async def resumed(self, batch_id: str) -> None:
        await self.db.execute("UPDATE inquiry_batches SET runs = runs + 1, finished_at = NULL WHERE batch_id = $1",
                              batch_id)

    async def claim_line(self, conn: Any, batch_id: str, line: BatchLine, correlation_id: str) -> bool:
        """Inside the transaction that seals the line's inquiry: its row, or False if it has one already."""
        return await conn.fetchval(
            "INSERT INTO inquiry_batch_lines (batch_id, line, ref, correlation_id, sent_at) "
            "VALUES ($1, $2, $3, $4, now()) ON CONFLICT DO NOTHING RETURNING true",
            batch_id, line.line, line.ref, uuid.UUID(correlation_id)) is not None

    @staticmethod
    async def sent(conn: Any, batch_id: str, line: int, message_id: str) -> None:
        await conn.execute("UPDATE inquiry_batch_lines SET message_id = $3 WHERE batch_id = $1 AND line = $2",
                           batch_id, line, uuid.UUID(message_id))

    async def answered(self, batch_id: str, result: LineResult, *, sent: bool = True) -> None:
        """Store a line's result (once: a later copy of the answer changes nothing). ``sent`` False: a line
        answered without asking (a bad number)."""
        account = None if result.account is None else json.dumps(result.account, default=str)
        if sent:
            await self.db.execute(
                "UPDATE inquiry_batch_lines SET status = $3, reason = $4, detail = $5, account = $6::jsonb, "
                "answered_at = now() WHERE batch_id = $1 AND line = $2 AND answered_at IS NULL",
                batch_id, result.line, result.status, result.reason, result.detail, account)
        else:
            await self.db.execute(
                "INSERT INTO inquiry_batch_lines (batch_id, line, ref, status, reason, detail, answered_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
                batch_id, result.line, result.ref, result.status, result.reason, result.detail)

    async def finished(self, batch_id: str) -> None:
        await self.db.execute("UPDATE inquiry_batches SET finished_at = now() WHERE batch_id = $1", batch_id)
