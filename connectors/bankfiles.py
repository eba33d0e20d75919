"""Bank batch-file channel: the bank's folders, bridged to the bus (Zengin-style CSV with header and trailer).

Why this file is long: the batch-file format (parse, validate, render) and the adapter that bridges it; the
format's rules are only used here.

A channel adapter of :class:`connectors.runtime.ConnectorRuntime` for ONE bank.
Folders under ``root``:

- ``inbound/``  — the bank drops files here.  Only ``*.csv`` are read: a writer
  writes ``NAME.csv.tmp`` (or ``.part``) and renames it to ``NAME.csv`` when
  complete (rename is atomic on one filesystem), so a half-written file is
  never read.
- ``outbound/`` — the connector writes result, reject, question and notice files
  here, the same way (``.tmp`` then rename).
- ``archive/``  — processed inbound files are moved here.

Kinds the bank drops, by file-name prefix (full format in docs/connectors.md):

- ``REG*.csv``  registrations by the bank (STEP3, 口座登録法 §8), each with the person's consent (who,
  how, when, the bank's evidence reference) → ``registration.request`` to the registry;
  ``RES_<name>.csv`` lists each record's result once the registry answered all of them, or when the
  result deadline (``result_deadline_s``, default 300 s) passes: unanswered records are then ``NO_ANSWER``
  and answers that come later go out in ``LATE_<name>_<n>.csv`` (same layout, n = 1, 2, …).
- ``NUM*.csv``  numbering requests taken at the counter (付番申出, 口座管理法 §3), with the bank's own
  outcome when it is itself named → ``numbering.request`` to DICJ; ``RES_<name>.csv`` lists each record
  as ACCEPTED (published), and DICJ's ONE consolidated result per record comes back in ``NRS_*.csv``.
- ``LAP*.csv``  lookup applications taken at the counter: an heir's (相続時照会: relationship, references
  to the identity evidence, date of death) or a depositor's in a declared disaster (災害時照会: disaster
  id, area, designated banks) → ``lookup.application.*`` to DICJ; ACCEPTED in ``RES_``, and DICJ's
  notification (which banks hold numbered accounts, or why it refused) in ``LNT_*.csv``.
- ``ANS*.csv``  the bank's answers to our ``CHK_*.csv`` existence checks (口座実在性確認) → ``existence.answer``.
  A check names the person as the bank knows them (its customer reference when linked, and its token); the
  answer carries the result *and* the holder flag (does the bank's record for this person hold the
  account?): :func:`infra.domain.validation.existence_outcome`.
- ``LAN*.csv``  the bank's answers to our ``LKP_*.csv`` lookups (one record per numbered account, or one
  empty record for none) → ``lookup.answer`` to DICJ; it may come in a later batch (the next morning).
- ``NAK*.csv``  the bank's answers to our ``NRQ_*.csv`` numbering requests → ``numbering.ack``.
- bad records of any file → ``REJ_<name>.csv`` (line number, reason code, reason); good ones flow on.

Kinds the connector writes besides ``RES_``/``LATE_``/``REJ_``: the questions ``CHK_``, ``LKP_``
(a reminder of a lookup has the same reference and its round) and ``NRQ_``, and the notices ``NRS_``
and ``LNT_`` (:mod:`connectors.bank_questions`).

Every record is validated with :mod:`infra.domain.validation` (holder names in
half-width kana, Zengin style).  A file whose structure is broken (no header,
wrong bank, trailer count ≠ records) is rejected whole: a count mismatch means
a truncated or padded file.  A file is identified by its SHA-256 and each
record by (digest, sequence number), so re-dropping a file publishes nothing
twice.  My Numbers in REG/NUM/LAP files are sent only sealed to the token
authority (token-issuance exchange) and never written to any output, log or
dead letter.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.bank_questions import (
    NOTICES,
    QUESTIONS,
    lookup_answer,
    notice_payload,
    numbering_ack,
    numbering_outcome,
    question_payload,
)
from connectors.runtime import ChannelAdapter, Delivery, NotRedrivable
from infra.core.errors import ValidationError
from infra.crypto.envelope import Message
from infra.domain.lookup_applications import validate_disaster_application, validate_inheritance_application
from infra.domain.policy import (
    BASIS_BANK_INTAKE,
    BASIS_DISASTER_LOOKUP,
    BASIS_INHERITANCE_LOOKUP,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.domain.validation import (
    EXISTENCE_RESULTS,
    existence_outcome,
    to_zengin_halfwidth,
    validate_account_type,
    validate_bank_account,
    validate_bank_code,
    validate_consent,
    validate_my_number,
    validate_reference,
)
from schemas import types as msg
from streams.participant import Context

log = logging.getLogger("renkei.connector.bankfiles")

HEADER, DATA, TRAILER, END = "1", "2", "8", "9"
KINDS = ("REG", "NUM", "LAP", "ANS", "LAN", "NAK")
REQUESTS = ("REG", "NUM", "LAP")
"""Kinds that file something for a person (published with a token); the others answer our questions."""
OPERATIONS = {"R": "REGISTER", "C": "CHANGE", "D": "DELETE"}
LOOKUP_CODES = {"I": "INHERITANCE", "D": "DISASTER"}
ACCOUNT_TYPE_CODES = {"ORDINARY": "1", "CURRENT": "2", "SAVINGS": "4"}
DATA_WIDTH = {"REG": (13,), "NUM": (5, 7), "LAP": (11,), "ANS": (4,), "LAN": (6,), "NAK": (4,)}
"""Columns a data record of each kind may have (record type included); NUM: 7 with the bank's own outcome."""
QUESTION_FILES = {msg.EXISTENCE_CHECK: "CHK", msg.LOOKUP_INHERITANCE: "LKP", msg.LOOKUP_DISASTER: "LKP",
                  msg.NUMBERING_REQUEST: "NRQ"}
NOTICE_FILES = {msg.NUMBERING_RESULT: "NRS", msg.LOOKUP_NOTIFICATION: "LNT"}
RESULT_DEADLINE_S = 300.0
"""How long a REG file's RES_ file waits for the registry's answers (from the file's intake)."""
NO_ANSWER = "NO_ANSWER"
"""RES_ status of a record whose answer had not come when the deadline passed."""

BANKFILE_MIGRATIONS = [
    """
    CREATE TABLE bankfile_files (
        digest      text PRIMARY KEY,
        bank_code   text NOT NULL,
        name        text NOT NULL,
        kind        text NOT NULL,
        records     integer NOT NULL,
        rejected    integer NOT NULL,
        status      text NOT NULL CHECK (status IN ('PUBLISHED', 'REJECTED', 'RESULTS_WRITTEN')),
        received_at timestamptz NOT NULL DEFAULT now(),
        results_at  timestamptz
    );
    CREATE TABLE bankfile_lines (
        correlation_id uuid PRIMARY KEY,
        digest      text NOT NULL REFERENCES bankfile_files (digest),
        seq         text NOT NULL,
        status      text NOT NULL,
        detail      text,
        answered_at timestamptz,
        UNIQUE (digest, seq)
    );
    """,
    # Result deadline: a line is reported once, in RES_ or (answered after the deadline) in a LATE_ file.
    """
    ALTER TABLE bankfile_lines ADD COLUMN reported_at timestamptz;
    UPDATE bankfile_lines l SET reported_at = f.results_at FROM bankfile_files f
        WHERE f.digest = l.digest AND f.status = 'RESULTS_WRITTEN';
    CREATE INDEX bankfile_lines_unreported ON bankfile_lines (digest) WHERE reported_at IS NULL;
    ALTER TABLE bankfile_files ADD COLUMN late_files integer NOT NULL DEFAULT 0;
    """,
]


# --- parsing (pure) -----------------------------------------------------------------------------


@dataclass
class FileRecord:
    line: int
    seq: str
    fields: dict[str, Any] = field(repr=False)


@dataclass
class ParsedFile:
    """A parsed inbound file: good records, rejected lines, or a whole-file rejection (``fatal``)."""

    kind: str
    bank_code: str | None = None
    serial: str | None = None
    records: list[FileRecord] = field(default_factory=list)
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason code, reason)
    fatal: tuple[int, str, str] | None = None
    rejected_refs: set[str] = field(default_factory=set)  # references with a rejected record


def parse_file(text: str, kind: str, bank_code: str) -> ParsedFile:
    """Parse and validate a REG / NUM / ANS file of bank ``bank_code``. Never raises on bad content."""
    out = ParsedFile(kind)
    rows = list(csv.reader(io.StringIO(text)))
    rows = [(n, r) for n, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if not rows or rows[0][1][0] != HEADER:
        out.fatal = (1, "MALFORMED", "the first record must be a header (record type 1)")
        return out
    n, header = rows[0]
    if len(header) != 5 or header[1] != kind:
        out.fatal = (n, "MALFORMED", f"header must be 1,{kind},<bank code>,<YYYYMMDD>,<serial>")
        return out
    if header[2] != bank_code:
        out.fatal = (n, "NOT_THIS_BANK", "the header's bank code is not this connector's bank")
        return out
    out.bank_code, out.serial = header[2], header[4]
    body, trailer, end = rows[1:], None, None
    if body and body[-1][1][0] == END:
        end, body = body[-1], body[:-1]
    if body and body[-1][1][0] == TRAILER:
        trailer, body = body[-1], body[:-1]
    if trailer is None or end is None:
        out.fatal = (rows[-1][0], "MALFORMED", "the file must end with a trailer (8,<count>) and an end record (9)")
        return out
    if len(trailer[1]) != 2 or not trailer[1][1].isdigit() or int(trailer[1][1]) != len(body):
        out.fatal = (trailer[0], "COUNT_MISMATCH",
                     f"the trailer's record count does not match the {len(body)} data records")
        return out
    seen: set[str] = set()
    for line, row in body:
        if row[0] != DATA or len(row) not in DATA_WIDTH[kind]:
            widths = " or ".join(str(w - 1) for w in DATA_WIDTH[kind])
            out.rejects.append((line, "MALFORMED", f"a data record is 2 followed by {widths} fields"))
            continue
        seq = row[1].strip()
        if not seq or len(seq) > 36 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in seq):
            out.rejects.append((line, "INVALID_FIELD", "reference: 1 to 36 ASCII letters, digits, - or _"))
            continue
        if seq in seen and kind != "LAN":  # a lookup answer has one record per account
            out.rejects.append((line, "DUPLICATE", "this reference appears earlier in the file"))
            continue
        try:
            fields = _validate(kind, row, bank_code)
        except ValidationError as exc:
            out.rejects.append((line, exc.code, exc.message))
            out.rejected_refs.add(seq)
            continue
        seen.add(seq)
        out.records.append(FileRecord(line, seq, fields))
    return out


def _customer_ref(value: str) -> str:
    return validate_reference(value, field="customer_ref", max_length=32)


def _validate(kind: str, row: list[str], bank_code: str) -> dict[str, Any]:
    if kind == "REG":
        _, _, op, ref, my_number, branch, type_code, number, holder, given_by, method, given_at, evidence = row
        operation = OPERATIONS.get(op.strip())
        if operation is None:
            raise ValidationError("operation", "must be R (register), C (change) or D (delete)")
        fields: dict[str, Any] = {"operation": operation, "customer_ref": _customer_ref(ref.strip()),
                                  "my_number": validate_my_number(my_number.strip()),
                                  "consent": validate_consent({"given_by": given_by.strip(), "method": method.strip(),
                                                               "given_at": given_at.strip(),
                                                               "evidence_ref": evidence.strip()})}
        if operation == "DELETE" and not any(v.strip() for v in (branch, type_code, number, holder)):
            fields["account"] = None
        else:
            fields["account"] = validate_bank_account({
                "bank_code": bank_code, "branch_code": branch.strip(), "account_type": type_code.strip(),
                "account_number": number.strip(), "holder_kana": holder})
        return fields
    if kind == "NUM":
        _, _, ref, my_number, codes, *own = row
        bank_codes = [validate_bank_code(c, field="bank_codes") for c in codes.split()]
        if not bank_codes:
            raise ValidationError("bank_codes", "at least one 4-digit bank code, separated by spaces")
        outcome = None
        if bank_code in bank_codes:  # this bank's own numbering goes on the bus with the request
            if not own or not own[0].strip():
                raise ValidationError("own_status", "this bank is named: give its own outcome (LINKED, NO_ACCOUNT "
                                                    "or REFUSED) and the accounts it linked")
            status, linked = numbering_outcome(own[0].strip(), own[1].strip(), field="own_status")
            outcome = {"bank_code": bank_code, "status": status, "accounts_linked": linked}
        elif any(v.strip() for v in own):
            raise ValidationError("own_status", "only when this bank is among the banks named")
        return {"customer_ref": _customer_ref(ref.strip()), "my_number": validate_my_number(my_number.strip()),
                "bank_codes": sorted(set(bank_codes)), "own": outcome}
    if kind == "LAP":
        _, _, code, ref, my_number, relationship, evidence, died_on, disaster_id, area, designated = row
        lookup = LOOKUP_CODES.get(code.strip())
        if lookup is None:
            raise ValidationError("kind", "I (an heir's 相続時照会) or D (a depositor's 災害時照会)")
        application: dict[str, Any] = {"application_ref": row[1].strip()}
        if lookup == "INHERITANCE":
            application |= validate_inheritance_application({
                **application, "relationship": relationship, "evidence": evidence.split(),
                "date_of_death": died_on})
        else:
            application |= validate_disaster_application({
                **application, "disaster_id": disaster_id.strip(), "area_code": area.strip(),
                "designated_bank_codes": designated.split()})
        return {"customer_ref": _customer_ref(ref.strip()), "my_number": validate_my_number(my_number.strip()),
                "kind": lookup, "application": application}
    if kind == "LAN":
        _, ref, branch, type_code, number, holder = row
        if not any(v.strip() for v in (branch, type_code, number, holder)):
            return {"reference": ref.strip(), "account": None}  # none numbered here
        return {"reference": ref.strip(), "account": validate_bank_account({
            "bank_code": bank_code, "branch_code": branch.strip(), "account_type": type_code.strip(),
            "account_number": number.strip(), "holder_kana": holder}, field="accounts")}
    if kind == "NAK":
        _, ref, status, linked = row
        return {"reference": ref.strip(), "ack": numbering_ack(bank_code, status.strip(), linked.strip())}
    _, ref, result, holder = row
    flag = {"Y": True, "N": False}.get(holder.strip())
    if flag is None:
        raise ValidationError("holder", "must be Y or N: whether the bank's customer record for this person holds "
                                        "the account")
    return {"reference": ref.strip(), "result": existence_outcome(result.strip(), flag)}


def render_file(kind: str, bank_code: str, serial: str, records: Sequence[Sequence[str]], *,
                at: datetime | None = None) -> str:
    """A file in the channel's format: header, data records, trailer with the count, end record."""
    at = at or datetime.now(UTC)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([HEADER, kind, bank_code, at.strftime("%Y%m%d"), serial])
    for rec in records:
        w.writerow([DATA, *rec])
    w.writerow([TRAILER, str(len(records))])
    w.writerow([END])
    return buf.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` so that no reader ever sees it half-written (``.tmp`` + fsync + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --- the adapter ----------------------------------------------------------------------------------


class BankFiles(ChannelAdapter):
    """The batch-file channel of one bank (``bank_id`` with 金融機関コード ``bank_code``)."""

    name = "bank-files"
    migrations = BANKFILE_MIGRATIONS
    poll_interval_s = 0.5

    def __init__(self, bank_id: str, bank_code: str, root: Path, *,
                 result_deadline_s: float = RESULT_DEADLINE_S) -> None:
        if result_deadline_s <= 0:
            raise ValueError("result_deadline_s must be positive")
        self.bank_id = bank_id
        self.bank_code = bank_code
        self.root = Path(root)
        self.result_deadline_s = result_deadline_s
        self.inbound, self.outbound, self.archive = (self.root / d for d in ("inbound", "outbound", "archive"))

    async def start(self, runtime: Any) -> None:
        await super().start(runtime)
        for folder in (self.inbound, self.outbound, self.archive):
            folder.mkdir(parents=True, exist_ok=True)

    def handlers(self) -> dict:
        return {**{t: self.on_question for t in QUESTIONS}, **{t: self.on_notice for t in NOTICES},
                msg.REGISTRATION_RESULT: self.on_result, msg.REJECTION_NOTICE: self.on_result}

    # sink: questions become CHK / LKP / NRQ files, notices NRS / LNT files ----------------------
    async def on_question(self, ctx: Context) -> None:
        await self.runtime.enqueue(ctx, self, {"file": QUESTION_FILES[ctx.meta.type], **await question_payload(ctx)})

    async def on_notice(self, ctx: Context) -> None:
        """DICJ's result or notification for a NUM or LAP record of ours: an NRS / LNT record under its ref."""
        await self._notify(ctx, NOTICE_FILES[ctx.meta.type], notice_payload(ctx))

    async def _notify(self, ctx: Context, file: str, notice: dict[str, Any]) -> None:
        line = await ctx.conn.fetchrow(
            "SELECT l.seq, f.name FROM bankfile_lines l JOIN bankfile_files f USING (digest) "
            "WHERE l.correlation_id = $1::uuid", ctx.meta.correlation_id)
        if line is None:  # not filed through these files (e.g. before this channel took the bank over)
            await self.runtime.dead_letter(self, "sink", f"{ctx.meta.type}/{ctx.meta.message_id}",
                                           "UNKNOWN_REFERENCE", "no NUM or LAP record of this channel has this "
                                           "correlation id", ctx.conn)
            return
        await self.runtime.enqueue(ctx, self, {"file": file, "input": line["name"], "ref": line["seq"], **notice})

    def _record(self, d: Delivery) -> list[str]:
        p, file = d.payload, d.payload["file"]
        if file == "CHK":
            a = p["account"]
            return [d.correlation_id, a["branch_code"], ACCOUNT_TYPE_CODES[a["account_type"]], a["account_number"],
                    to_zengin_halfwidth(a["holder_kana"]), p.get("customer_ref") or "", d.subject]
        if file == "LKP":
            return [d.correlation_id, p["kind"][0], p.get("customer_ref") or "", d.subject, str(p["reminder"]),
                    p["deadline"], p.get("receiving_bank_code") or "", p.get("disaster_id") or ""]
        if file == "NRQ":
            return [d.correlation_id, p.get("customer_ref") or "", d.subject, p["channel"],
                    p.get("receiving_bank_code") or ""]
        if file == "LNT":
            return [p["input"], p["ref"], p["kind"][0], p["status"], p.get("reason") or "",
                    " ".join(p["banks_with_accounts"]), " ".join(p["banks_not_answered"]),
                    " ".join(p["banks_not_asked"]), "Y" if p["is_supplement"] else "N"]
        raise ValueError(file)

    def _records(self, d: Delivery) -> list[list[str]]:
        p = d.payload
        if p["file"] != "NRS":
            return [self._record(d)]
        if "status" in p:  # the hub refused the request itself
            return [[p["input"], p["ref"], "", p["status"], "0"]]
        return [[p["input"], p["ref"], o["bank_code"], o["status"], str(o["accounts_linked"])] for o in p["outcomes"]] \
            + [[p["input"], p["ref"], code, "NO_ANSWER", "0"] for code in p["banks_not_answered"]]

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Exception | None]:
        """One file per kind per pass (a CHK, LKP, NRQ, NRS or LNT file of all the deliveries due)."""
        by_file: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_file.setdefault(d.payload["file"], []).append(d)
        now = datetime.now(UTC)
        for file, batch in sorted(by_file.items()):
            serial = f"{now:%Y%m%d%H%M%S}{batch[0].id:08d}"
            write_atomically(self.outbound / f"{file}_{self.bank_code}_{serial}.csv",
                             render_file(file, self.bank_code, serial, [r for d in batch for r in self._records(d)],
                                         at=now))
        return {d.id: None for d in deliveries}

    async def on_result(self, ctx: Context) -> None:
        if ctx.meta.type == msg.REGISTRATION_RESULT:
            status, detail = ctx.body["status"], ctx.body.get("detail")
        else:
            status, detail = f"REJECTED:{ctx.body['reason_code']}", ctx.body["message"]
        kind = await ctx.conn.fetchval(  # the first answer counts; reported in RES_ or, after the deadline, LATE_
            "UPDATE bankfile_lines l SET status = $2, detail = $3, answered_at = now() FROM bankfile_files f "
            "WHERE l.correlation_id = $1::uuid AND l.answered_at IS NULL AND f.digest = l.digest RETURNING f.kind",
            ctx.meta.correlation_id, status, detail)
        if kind in ("NUM", "LAP"):  # reported ACCEPTED already: the refusal goes where the answer would
            await self._notify(ctx, "NRS" if kind == "NUM" else "LNT",
                               {"status": status, "outcomes": [], "banks_not_answered": [], "kind": "?",
                                "reason": ctx.body["reason_code"], "banks_with_accounts": [],
                                "banks_not_asked": [], "is_supplement": False})
        self.runtime.wake(self.name)

    # source: inbound files -------------------------------------------------------------------------
    async def poll(self) -> None:
        for path in sorted(self.inbound.glob("*.csv")):
            await self._take(path)
        await self._write_results()

    async def _take(self, path: Path) -> None:
        rt = self.runtime
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        kind = path.name[:3].upper()
        if await rt.pool.fetchval("SELECT 1 FROM bankfile_files WHERE digest = $1", digest):
            self._archive(path)  # taken before (crash before the move, or dropped twice)
            return
        if kind not in KINDS:
            parsed = ParsedFile(kind, fatal=(0, "UNKNOWN_KIND", "file names start with REG, NUM or ANS"))
        else:
            try:
                parsed = parse_file(raw.decode("utf-8-sig"), kind, self.bank_code)
            except UnicodeDecodeError:
                parsed = ParsedFile(kind, fatal=(0, "MALFORMED", "files are UTF-8"))
        if parsed.fatal is not None:
            async with rt.pool.acquire() as conn, conn.transaction():
                await self._record_file(conn, digest, path.name, parsed, "REJECTED")
                await rt.dead_letter(self, "source", f"file/{digest[:16]}", parsed.fatal[1], parsed.fatal[2], conn)
            self._write_rejects(path, parsed)
            self._archive(path)
            return
        if kind not in REQUESTS:
            await self._take_answers(path, digest, parsed)
            return
        tokens = {}
        for rec in parsed.records:  # the token-issuance exchange: network, outside the transaction
            tokens[rec.seq] = await rt.enrol(self.bank_id, rec.fields["customer_ref"], rec.fields.pop("my_number"))
        async with rt.pool.acquire() as conn, conn.transaction():
            await self._record_file(conn, digest, path.name, parsed, "PUBLISHED")
            for rec in parsed.records:
                message = self._message(kind, rec, tokens[rec.seq])
                ids = await rt.publish(conn, self, self.bank_id, f"{digest}:{rec.seq}", [message])
                if ids is not None:
                    await conn.execute(
                        "INSERT INTO bankfile_lines (correlation_id, digest, seq, status) VALUES ($1::uuid, $2, $3, $4)",
                        message.correlation_id, digest, rec.seq, "SENT" if kind == "REG" else "ACCEPTED")
        self._write_rejects(path, parsed)
        self._archive(path)

    def _message(self, kind: str, rec: FileRecord, token: str) -> Message:
        import uuid

        now = datetime.now(UTC)
        if kind == "REG":
            body = {"operation": rec.fields["operation"], "account": rec.fields["account"],
                    "channel": "BANK_COUNTER", "consent": rec.fields["consent"], "requested_at": now}
            return Message(body=body, type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
                           data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE,
                           correlation_id=str(uuid.uuid4()))
        if kind == "LAP":
            inheritance = rec.fields["kind"] == "INHERITANCE"
            return Message(body={**rec.fields["application"], "applied_at": now},
                           type=msg.LOOKUP_APPLICATION_INHERITANCE if inheritance else msg.LOOKUP_APPLICATION_DISASTER,
                           to="dicj", subject=token, data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
                           basis=BASIS_INHERITANCE_LOOKUP if inheritance else BASIS_DISASTER_LOOKUP,
                           correlation_id=str(uuid.uuid4()))
        body = {"bank_codes": rec.fields["bank_codes"], "channel": "BANK", "receiving_bank_code": self.bank_code,
                "requested_at": now, "receiving_bank_outcome": rec.fields["own"]}
        return Message(body=body, type=msg.NUMBERING_REQUEST, to="dicj", subject=token,
                       data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                       correlation_id=str(uuid.uuid4()))

    async def _take_answers(self, path: Path, digest: str, parsed: ParsedFile) -> None:
        """ANS, LAN and NAK: each reference answers one open question of ours, once."""
        import uuid

        rt = self.runtime
        kind = parsed.kind
        answers: dict[str, tuple[str, dict[str, Any]]] = {}
        lines: dict[str, list[FileRecord]] = {}
        for rec in parsed.records:
            lines.setdefault(rec.fields["reference"], []).append(rec)
        for ref, recs in lines.items():
            if kind == "ANS":
                answers[ref] = (msg.EXISTENCE_ANSWER, {"bank_code": self.bank_code, "result": recs[0].fields["result"],
                                                     "answered_at": datetime.now(UTC)})
            elif kind == "NAK":
                answers[ref] = (msg.NUMBERING_ACK, recs[0].fields["ack"])
            else:
                accounts = [r.fields["account"] for r in recs if r.fields["account"] is not None]
                answers[ref] = (msg.LOOKUP_ANSWER, lookup_answer(self.bank_code, accounts))
        async with rt.pool.acquire() as conn, conn.transaction():
            for ref, recs in lines.items():
                try:
                    reference = str(uuid.UUID(ref))
                except ValueError:
                    reference = None
                whole = ref not in parsed.rejected_refs  # a lookup answer with a bad record is not sent in part
                type_, body = answers[ref]
                answered = whole and reference is not None and await rt.answer(conn, self, reference, type=type_,
                                                                                body=body)
                if not answered:
                    for rec in recs:
                        parsed.records.remove(rec)
                        parsed.rejects.append((rec.line, "UNKNOWN_REFERENCE" if whole else "INVALID_FIELD",
                                               "no open question of ours has this reference (unknown or answered)"
                                               if whole else "another record of this answer is rejected: send the "
                                                             "answer again, whole"))
            await self._record_file(conn, digest, path.name, parsed, "RESULTS_WRITTEN")
        self._write_rejects(path, parsed)
        self._archive(path)

    async def _record_file(self, conn: Any, digest: str, name: str, parsed: ParsedFile, status: str) -> None:
        await conn.execute(
            "INSERT INTO bankfile_files (digest, bank_code, name, kind, records, rejected, status) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", digest, self.bank_code, name, parsed.kind,
            len(parsed.records), len(parsed.rejects) + (parsed.fatal is not None), status)

    def _write_rejects(self, path: Path, parsed: ParsedFile) -> None:
        rejects = ([parsed.fatal] if parsed.fatal else []) + sorted(parsed.rejects)
        if not rejects:
            return
        write_atomically(self.outbound / f"REJ_{path.stem}.csv",
                         render_file("REJ", self.bank_code, path.name, [[str(n), code, text] for n, code, text in rejects]))

    def _archive(self, path: Path) -> None:
        os.replace(path, self.archive / path.name)

    async def _write_results(self) -> None:
        """RES_ for files whose records are all answered or whose deadline passed; LATE_ for answers after it."""
        rt = self.runtime
        async with rt.pool.acquire() as conn, conn.transaction():
            files = await conn.fetch(
                "SELECT f.digest, f.name FROM bankfile_files f WHERE f.status = 'PUBLISHED' AND f.bank_code = $1 "
                "AND (f.received_at <= now() - make_interval(secs => $2) OR NOT EXISTS "
                "(SELECT 1 FROM bankfile_lines l WHERE l.digest = f.digest AND l.status = 'SENT')) "
                "FOR UPDATE SKIP LOCKED", self.bank_code, self.result_deadline_s)
            for f in files:
                stem = Path(f["name"]).stem
                lines = await conn.fetch("SELECT seq, status, detail FROM bankfile_lines WHERE digest = $1 "
                                         "ORDER BY seq", f["digest"])
                late = (f"no answer within {self.result_deadline_s:g} s; a late answer is reported in "
                        f"LATE_{stem}_<n>.csv")
                self._write_result_file(f"RES_{stem}.csv", f["name"], [
                    [r["seq"], NO_ANSWER, late] if r["status"] == "SENT" else [r["seq"], r["status"], r["detail"] or ""]
                    for r in lines])
                await conn.execute("UPDATE bankfile_lines SET reported_at = now() WHERE digest = $1 "
                                   "AND status <> 'SENT'", f["digest"])
                await conn.execute("UPDATE bankfile_files SET status = 'RESULTS_WRITTEN', results_at = now() "
                                   "WHERE digest = $1", f["digest"])
                unanswered = sum(r["status"] == "SENT" for r in lines)
                if unanswered:
                    log.warning("%s: RES_%s written at the deadline with %d record(s) %s", self.bank_id, stem,
                                unanswered, NO_ANSWER)
                    rt.metrics.unanswered.inc(unanswered, connector=self.name)
            overdue = await conn.fetch(
                "SELECT f.digest, f.name, f.late_files FROM bankfile_files f WHERE f.status = 'RESULTS_WRITTEN' "
                "AND f.bank_code = $1 AND EXISTS (SELECT 1 FROM bankfile_lines l WHERE l.digest = f.digest "
                "AND l.reported_at IS NULL AND l.status <> 'SENT') FOR UPDATE SKIP LOCKED", self.bank_code)
            for f in overdue:
                n = f["late_files"] + 1
                lines = await conn.fetch("SELECT seq, status, detail FROM bankfile_lines WHERE digest = $1 "
                                         "AND reported_at IS NULL AND status <> 'SENT' ORDER BY seq", f["digest"])
                self._write_result_file(f"LATE_{Path(f['name']).stem}_{n}.csv", f["name"],
                                        [[r["seq"], r["status"], r["detail"] or ""] for r in lines])
                await conn.execute("UPDATE bankfile_lines SET reported_at = now() WHERE digest = $1 "
                                   "AND reported_at IS NULL AND status <> 'SENT'", f["digest"])
                await conn.execute("UPDATE bankfile_files SET late_files = $2 WHERE digest = $1", f["digest"], n)
                rt.metrics.late_answers.inc(len(lines), connector=self.name)

    def _write_result_file(self, name: str, input_name: str, records: list[list[str]]) -> None:
        """A RES-layout file (written before the transaction commits: a crash rewrites the same file)."""
        write_atomically(self.outbound / name, render_file("RES", self.bank_code, input_name, records))

    @classmethod
    async def redrive_source(cls, conn: Any, ref: str) -> None:
        raise NotRedrivable(
            "a file rejected whole is reported to the bank in REJ_<name>.csv and archived; the bank corrects "
            "it and drops it again (a corrected file is a new file). Bad records of an accepted file are "
            "likewise in REJ_<name>.csv for the bank to resubmit.")


def bank_file_connector(settings: Any, bank_id: str, bank_code: str, root: Path, *,
                        ops_port: int | None = None, result_deadline_s: float = RESULT_DEADLINE_S) -> Any:
    """The runtime with this bank's file channel (one process per bank, or add adapters per bank)."""
    from connectors.runtime import ConnectorRuntime

    return ConnectorRuntime(settings, [bank_id], [BankFiles(bank_id, bank_code, root,
                                                            result_deadline_s=result_deadline_s)],
                            group=f"{settings.kafka.topic_prefix}.connector.{bank_id}", ops_port=ops_port)


__all__ = ["EXISTENCE_RESULTS", "NO_ANSWER", "RESULT_DEADLINE_S", "BankFiles", "ParsedFile", "bank_file_connector", "parse_file",
           "render_file", "write_atomically", "validate_account_type"]
