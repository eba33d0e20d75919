"""The catalogue of public-benefit procedures (公的給付の支給等に係る事務) and who may use each.

An agency asks the registry for a person's public-funds account only for a
procedure in this catalogue, and only for one it is entitled to (口座登録法
§9-§10).  Each :class:`Procedure` has a stable ASCII ``code`` — what travels in
the envelope's signed metadata; it names a kind of payment, never a person —,
its name in Japanese and English, its legal basis and the purpose of use the
person reads in their provision records.

Entitlement is default-deny: ``agencies`` lists participant ids or
``kind:agency``; a procedure without any is usable by nobody.  The hub's
policy (:mod:`infra.domain.policy`) asks :meth:`Procedures.check` for every message
whose rule says ``procedure = true``; the answer is one of two reason codes:

- ``UNKNOWN_PROCEDURE`` — no procedure named, or a code the catalogue does not list;
- ``PROCEDURE_NOT_ALLOWED`` — a listed procedure the agency is not entitled to.

Loaded once from ``infra/domain/procedures.toml`` (or a deployment's own file, same
format); a check is two dict/set look-ups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from infra.core.config_files import entry_label, read_toml
from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.domain.participants import Kind, Participant

__all__ = ["DEFAULT_FILE", "Procedure", "Procedures"]

DEFAULT_FILE: Final = Path(__file__).with_name("procedures.toml")
_CODE: Final = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")  # ASCII: safe in headers, logs and CLI flags
_MAX_CODE: Final = 64
_KIND_AGENCY: Final = "kind:" + Kind.AGENCY.value
_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
_TEXT_KEYS: Final = ("name_ja", "name_en", "legal_basis", "purpose_ja", "purpose_en")
_KEYS: Final = {"code", "agencies", *_TEXT_KEYS}


@dataclass(frozen=True, slots=True)
class Procedure:
    """One public-benefit procedure: what it is, under which law, for which purpose, and who may use it."""

    code: str
    name_ja: str
    name_en: str
    legal_basis: str
    purpose_ja: str
    purpose_en: str
    agencies: frozenset[str] = frozenset()  # participant ids and/or "kind:agency"

    def entitles(self, agency: Participant) -> bool:
        return agency.id in self.agencies or (agency.kind is Kind.AGENCY and _KIND_AGENCY in self.agencies)

    def to_json(self) -> dict[str, Any]:
        """The procedure as the portal and the CLI show it (no entitlements: those are the hub's business)."""
        return {"code": self.code, "name_ja": self.name_ja, "name_en": self.name_en,
                "legal_basis": self.legal_basis, "purpose_ja": self.purpose_ja, "purpose_en": self.purpose_en}


class Procedures:
    """The catalogue, by code. Build with :meth:`load`."""

    def __init__(self, items: Iterable[Procedure]) -> None:
        self._by_code: dict[str, Procedure] = {}
        for p in items:
            if p.code in self._by_code:
                raise ConfigError(f"procedures: duplicate code {p.code!r}")
            self._by_code[p.code] = p

    @classmethod
    def load(cls, path: Path | None = None) -> Procedures:
        """Load the catalogue (``infra/domain/procedures.toml`` beside this module by default)."""
        path = path or DEFAULT_FILE
        data = read_toml(path, "procedures file")
        unknown = sorted(set(data) - {"procedure"})
        if unknown:
            raise ConfigError(f"procedures file {path}: unknown tables {', '.join(unknown)}")
        return cls(_parse(raw) for raw in data.get("procedure", []))

    def __iter__(self) -> Iterator[Procedure]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def get(self, code: str | None) -> Procedure | None:
        return None if code is None else self._by_code.get(code)

    def for_agency(self, agency: Participant) -> list[Procedure]:
        """The procedures ``agency`` is entitled to, in catalogue order."""
        return [p for p in self._by_code.values() if p.entitles(agency)]

    def check(self, code: str | None, agency: Participant) -> Procedure:
        """The procedure ``agency`` asks under, or :class:`PolicyDenied` (UNKNOWN_PROCEDURE, PROCEDURE_NOT_ALLOWED).

        Messages name the code (ASCII, validated at load time for listed ones) and the agency id:
        metadata, never personal data.  An unlisted code is not echoed (it is whatever a sender wrote).
        """
        if code is None:
            raise PolicyDenied(Reason.UNKNOWN_PROCEDURE, "the message names no procedure: an agency must state the "
                                                         "public-benefit procedure it asks for (see procedures.toml)")
        procedure = self._by_code.get(code)
        if procedure is None:
            raise PolicyDenied(Reason.UNKNOWN_PROCEDURE, "the procedure named is not in the catalogue of "
                                                         "public-benefit procedures")
        if not procedure.entitles(agency):
            raise PolicyDenied(Reason.PROCEDURE_NOT_ALLOWED,
                               f"{agency.id} is not entitled to procedure {procedure.code!r}")
        return procedure


def _parse(raw: Any) -> Procedure:
    label = entry_label(raw, file="procedures", table="procedure", label="procedure", name="code", allowed=_KEYS)
    code = raw.get("code")
    if not isinstance(code, str) or len(code) > _MAX_CODE or not _CODE.fullmatch(code):
        raise ConfigError(f"{label}: code must be lower-case ASCII letters and digits joined by '-' or '.', "
                          f"at most {_MAX_CODE} characters")
    for key in _TEXT_KEYS:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{label}: {key} must be a non-empty string")
    agencies = raw.get("agencies", [])
    if not isinstance(agencies, list) or not all(isinstance(a, str) for a in agencies):
        raise ConfigError(f"{label}: agencies must be a list of participant ids or 'kind:agency'")
    for a in agencies:
        if a != _KIND_AGENCY and (a.startswith("kind:") or not _ID.fullmatch(a)):
            raise ConfigError(f"{label}: agency {a!r} is neither a participant id nor 'kind:agency'")
    if len(set(agencies)) != len(agencies):
        raise ConfigError(f"{label}: agencies lists an agency twice")
    return Procedure(code=code, agencies=frozenset(agencies), **{k: raw[k] for k in _TEXT_KEYS})
