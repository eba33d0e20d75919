"""Leak scan: search raw bytes for My Numbers — every topic, every table, every log file.

DESIGN §2: a My Number never appears in a topic, a log line, an exception or
a metric; the hub and the registry store none.  ``scan`` looks for each
given My Number as ASCII digits, UTF-16 (LE and BE), hex of its ASCII (lower
and upper case), hex of its value, and base64 / base64url of its ASCII at
each of the three alignments, in:

* every record (key, value, header names and values) of every topic with
  the platform's prefix, read from offset 0;
* every table of the platform's PostgreSQL schema, dumped with binary COPY
  (the raw bytes of every column);
* every file under the given log folders.

Hits name the person by index and the encoding, never the number.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.core.settings import Settings


def encodings(my_number: str) -> dict[str, list[bytes]]:
    """Every byte pattern ``my_number`` may take: encoding name → patterns."""
    raw = my_number.encode()
    out: dict[str, list[bytes]] = {
        "ascii": [raw],
        "utf-16": [my_number.encode("utf-16-le"), my_number.encode("utf-16-be")],
        "hex": [raw.hex().encode(), raw.hex().upper().encode(), f"{int(my_number):x}".encode(),
                f"{int(my_number):X}".encode()],
        "base64": [],
    }
    for shift in range(3):  # base64 of a substring depends on its offset modulo 3
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw)
            start = (shift * 4 + 2) // 3  # characters that also carry the preceding bytes
            full = (shift + len(raw)) // 3 * 4  # characters fully determined by these bytes
            out["base64"].append(text[start:full])
    return out


@dataclass
class LeakReport:
    people: int
    scanned: dict[str, int] = field(default_factory=lambda: {"topics": 0, "records": 0, "tables": 0, "rows_bytes": 0,
                                                              "log_files": 0, "log_bytes": 0})
    hits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.hits

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "people": self.people, "scanned": self.scanned, "hits": self.hits}


def _table(mapping: dict[bytes, bytes]) -> bytes:
    table = bytearray(b"." * 256)
    for chars, cls in mapping.items():
        for c in chars:
            table[c] = cls[0]
    return bytes(table)


_CLASSES = _table({b"0123456789": b"d", b"\x00": b"z"})
_HEX = _table({b"0123456789abcdefABCDEF": b"h"})
_B64 = _table({b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-": b"b"})


class Scanner:
    """Finds the given My Numbers in bytes, in one pass per encoding (regex candidates, then a set lookup).

    Searching every pattern of every person in every record is O(people × records); instead each blob is
    scanned once per encoding for anything that COULD be a My Number (12 digits, in that encoding) and
    the candidates are looked up in the set of numbers used.
    """

    _DIGITS = re.compile(rb"\d{12,}")
    _UTF16LE = re.compile(rb"(?:\d\x00){12,}")
    _UTF16BE = re.compile(rb"(?:\x00\d){12,}")
    _HEX_ASCII = re.compile(rb"(?:3\d){12,}")
    _HEX_RUN = re.compile(rb"[0-9a-fA-F]{8,}")
    _BASE64 = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")

    def __init__(self, my_numbers: Iterable[str]) -> None:
        numbers = sorted(set(my_numbers))
        self.index = {mn.encode(): i for i, mn in enumerate(numbers)}
        self.by_value = {int(mn): i for i, mn in enumerate(numbers)}
        self.people = len(numbers)

    def _digits(self, run: bytes, encoding: str, hits: set[tuple[int, str]]) -> None:
        for k in range(len(run) - 11):  # every 12-digit window of a longer run
            person = self.index.get(run[k:k + 12])
            if person is not None:
                hits.add((person, encoding))

    def search(self, blob: bytes) -> list[tuple[int, str]]:
        hits: set[tuple[int, str]] = set()
        # Cheap prefilters (C-speed translate + find): ciphertext almost never has the runs the regexes need.
        classes = blob.translate(_CLASSES)
        if b"d" * 12 in classes:  # 12 digits in a row: ASCII, and hex of ASCII (24 digits)
            for m in self._DIGITS.finditer(blob):
                self._digits(m.group(0), "ascii", hits)
            for m in self._HEX_ASCII.finditer(blob):
                self._digits(bytes.fromhex(m.group(0).decode()), "hex", hits)
                self._digits(bytes.fromhex(m.group(0)[1:-1].decode()), "hex", hits)  # odd alignment
        if b"dz" * 12 in classes or b"zd" * 12 in classes:
            for m in self._UTF16LE.finditer(blob):
                self._digits(m.group(0)[::2], "utf-16", hits)
            for m in self._UTF16BE.finditer(blob):
                self._digits(m.group(0)[1::2], "utf-16", hits)
        if b"h" * 8 in blob.translate(_HEX):
            self._hex_values(blob, hits)
        if b"b" * 16 in blob.translate(_B64):
            self._base64(blob, hits)
        return sorted(hits)

    def _hex_values(self, blob: bytes, hits: set[tuple[int, str]]) -> None:
        for m in self._HEX_RUN.finditer(blob):  # the value in hex: 8 to 10 hex digits
            run = m.group(0)
            for size in (8, 9, 10):
                for k in range(len(run) - size + 1):
                    person = self.by_value.get(int(run[k:k + size], 16))
                    if person is not None:
                        hits.add((person, "hex"))
    def _base64(self, blob: bytes, hits: set[tuple[int, str]]) -> None:
        for m in self._BASE64.finditer(blob):
            run = m.group(0).replace(b"-", b"+").replace(b"_", b"/")
            for shift in range(4):  # the encoded number may start at any character
                chunk = run[shift:]
                try:
                    decoded = base64.b64decode(chunk[: len(chunk) // 4 * 4])
                except ValueError:
                    continue
                for d in self._DIGITS.finditer(decoded):
                    self._digits(d.group(0), "base64", hits)


async def scan(settings: Settings, my_numbers: Iterable[str], log_dirs: Iterable[Path]) -> LeakReport:
    scanner = Scanner(my_numbers)
    report = LeakReport(scanner.people)
    await _scan_topics(settings, scanner, report)
    await _scan_tables(settings, scanner, report)
    for folder in log_dirs:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                report.scanned["log_files"] += 1
                report.scanned["log_bytes"] += len(data)
                for person, enc in scanner.search(data):
                    report.hits.append({"where": f"log {path.name}", "person": person, "encoding": enc})
    return report


async def _scan_topics(settings: Settings, scanner: Scanner, report: LeakReport) -> None:
    from aiokafka import TopicPartition

    from infra.platform.kafka import admin_client, consumer

    admin = admin_client(settings)
    await admin.start()
    try:
        prefix = settings.kafka.topic_prefix + "."
        topics = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)} if topics else {}
    finally:
        await admin.close()
    cons = consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await cons.start()
    try:
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in range(described.get(topic, 1))]
            cons.assign(tps)
            for tp in tps:
                cons.seek(tp, 0)
            report.scanned["topics"] += 1
            idle = 0
            while idle < 2:
                batches = await cons.getmany(timeout_ms=150, max_records=5000)
                got = sum(len(r) for r in batches.values())
                idle = 0 if got else idle + 1
                for records in batches.values():
                    for r in records:
                        report.scanned["records"] += 1
                        blob = b"\x00".join([r.key or b"", r.value or b""]
                                            + [k.encode() + b"\x00" + (v or b"") for k, v in (r.headers or ())])
                        for person, enc in scanner.search(blob):
                            report.hits.append({"where": f"topic {topic}[{r.partition}]@{r.offset}",
                                                "person": person, "encoding": enc})
    finally:
        await cons.stop()


async def _scan_tables(settings: Settings, scanner: Scanner, report: LeakReport) -> None:
    import asyncpg

    from infra.platform.pgdsn import ops_dsn

    # As the read-only ops role, every component's schema (infra.platform.pglayout): all it may read is all there is.
    conn = await asyncpg.connect(ops_dsn(settings))
    try:
        tables = [(r["schemaname"], r["tablename"]) for r in await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(current_schemas(false)) "
            "ORDER BY schemaname, tablename")]
        for schema, table in tables:
            buffer = io.BytesIO()
            await conn.copy_from_table(table, schema_name=schema, output=buffer, format="binary")
            data = buffer.getvalue()
            report.scanned["tables"] += 1
            report.scanned["rows_bytes"] += len(data)
            for person, enc in scanner.search(data):
                report.hits.append({"where": f"table {schema}.{table}", "person": person, "encoding": enc})
    finally:
        await conn.close()
