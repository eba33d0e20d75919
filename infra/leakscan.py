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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.settings import Settings


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


class Scanner:
    def __init__(self, my_numbers: Iterable[str]) -> None:
        numbers = sorted(set(my_numbers))
        self.patterns = [(i, name, p) for i, mn in enumerate(numbers) for name, ps in encodings(mn).items()
                         for p in ps]
        self.people = len(numbers)

    def search(self, blob: bytes) -> list[tuple[int, str]]:
        return [(i, name) for i, name, p in self.patterns if p in blob]


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

    from infra.kafka import admin_client, consumer

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

    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")]
        for table in tables:
            buffer = io.BytesIO()
            await conn.copy_from_table(table, output=buffer, format="binary")
            data = buffer.getvalue()
            report.scanned["tables"] += 1
            report.scanned["rows_bytes"] += len(data)
            for person, enc in scanner.search(data):
                report.hits.append({"where": f"table {table}", "person": person, "encoding": enc})
    finally:
        await conn.close()
