"""The catalogue as Schema Registry subjects (Confluent Schema Registry REST API and compatibles).

Subject naming is RecordNameStrategy: one subject per logical schema, named
after the record's full Avro name, ``renkei.ProvisionInquiry``. Renkei's
topics carry only envelopes, with each body sealed inside, so a topic-named
subject (TopicNameStrategy) would describe nothing but the envelope; the
record name is what identifies a body wherever it travels, and it is the name
Java and Confluent serializers use under RecordNameStrategy.

Each subject gets, in this order, the body of ``PUT /config/{subject}``
(``{"compatibility": "FULL_TRANSITIVE"}``, the catalogue's own rule) and then
the body of ``POST /subjects/{subject}/versions`` for every version, oldest
first, so a registry assigns its version numbers in the catalogue's order and
checks each one against all before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas.catalogue import FULL_TRANSITIVE, Catalogue, SchemaVersion, catalogue

__all__ = ["RegistrySubject", "SubjectVersion", "export", "subject_name"]


def subject_name(entry: SchemaVersion) -> str:
    """RecordNameStrategy: the record's full Avro name, ``renkei.<CamelName>``."""
    name = str(entry.source["name"])
    namespace = entry.source.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


@dataclass(frozen=True)
class SubjectVersion:
    version: int  # the catalogue's version (v<N>.avsc)
    fingerprint: str  # hex of the 8-byte single-object fingerprint, for cross-checking
    schema: str  # the .avsc as written, as one JSON string (what the registry stores)

    def request_body(self) -> dict[str, str]:
        """The body of ``POST /subjects/{subject}/versions``."""
        return {"schema": self.schema, "schemaType": "AVRO"}


@dataclass(frozen=True)
class RegistrySubject:
    subject: str
    logical_name: str
    compatibility: str
    versions: tuple[SubjectVersion, ...]

    def config_body(self) -> dict[str, str]:
        """The body of ``PUT /config/{subject}``."""
        return {"compatibility": self.compatibility}

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "logical_name": self.logical_name,
            "config": self.config_body(),
            "versions": [{"version": v.version, "fingerprint": v.fingerprint, "body": v.request_body()}
                         for v in self.versions],
        }


def export(source: Catalogue | None = None) -> list[RegistrySubject]:
    """Every logical schema as a subject, sorted by subject, its versions oldest first."""
    found = source if source is not None else catalogue()
    subjects = []
    for name, versions in found.by_name.items():
        ordered = [versions[v] for v in sorted(versions)]
        subjects.append(RegistrySubject(
            subject=subject_name(ordered[-1]),
            logical_name=name,
            compatibility=FULL_TRANSITIVE,
            versions=tuple(SubjectVersion(e.version, e.fingerprint.hex(),
                                          json.dumps(e.source, ensure_ascii=False, separators=(",", ":")))
                           for e in ordered),
        ))
    return sorted(subjects, key=lambda s: s.subject)
