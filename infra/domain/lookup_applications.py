"""Lookup applications (相続時・災害時照会の申出): the fields an applicant's channel sends DICJ, validated.

Pure rules, used where an application enters the bus (a bank's files or HTTP
channel, the participant commands) and again where DICJ receives it
(``connectors.dicj``): an application that breaks one is refused with
``INVALID_FIELD`` naming the field, never the value.

- 相続時照会 (``InheritanceLookupApplication``): the applicant's relationship to
  the deceased, references to the identity evidence the bank checked (never
  the documents) — at least one of which shows the death —, and the date of
  death that evidence states (DICJ checks it with the resident record).
- 災害時照会 (``DisasterLookupApplication``): the declared disaster's id, the
  depositor's area, and the banks the depositor designates (at least one).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from infra.core.errors import ValidationError
from infra.domain.disasters import validate_area_code, validate_disaster_id
from infra.domain.validation import validate_bank_code, validate_reference

__all__ = ["DEATH_EVIDENCE", "EVIDENCE_KINDS", "RELATIONSHIPS", "parse_evidence", "validate_disaster_application",
           "validate_inheritance_application"]

RELATIONSHIPS = ("SPOUSE", "CHILD", "PARENT", "SIBLING", "GRANDCHILD", "OTHER_HEIR", "EXECUTOR",
                 "LEGAL_REPRESENTATIVE")
EVIDENCE_KINDS = ("DEATH_CERTIFICATE", "FAMILY_REGISTER", "RESIDENT_RECORD_REMOVAL", "LEGAL_HEIR_INFORMATION")
DEATH_EVIDENCE = frozenset({"DEATH_CERTIFICATE", "FAMILY_REGISTER", "RESIDENT_RECORD_REMOVAL"})
"""Documents that show the death; an application carries at least one (法定相続情報一覧図 alone does not)."""
MAX_EVIDENCE = 8


def _symbol(value: Any, allowed: tuple[str, ...], field: str) -> str:
    text = value.strip().upper().replace("-", "_") if isinstance(value, str) else None
    if text not in allowed:
        raise ValidationError(field, f"one of {', '.join(allowed)}")
    return text


def parse_evidence(value: str) -> dict[str, str]:
    """``death-certificate:DC-2025-0042`` (kind, colon, the bank's reference) → an ``IdentityEvidence``."""
    kind, sep, ref = value.partition(":")
    if not sep:
        raise ValidationError("evidence", "KIND:REFERENCE, e.g. death-certificate:DC-0042")
    return {"kind": _symbol(kind, EVIDENCE_KINDS, "evidence"), "reference": validate_reference(
        ref.strip(), field="evidence")}


def _date(value: Any, field: str) -> date:
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(field, "a date, YYYY-MM-DD") from None
    if not isinstance(value, date):
        raise ValidationError(field, "a date, YYYY-MM-DD")
    return value


def _applied_at(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError("applied_at", "a time with its UTC offset")
    return value


def validate_inheritance_application(record: Any, *, today: date | None = None) -> dict[str, Any]:
    """An ``InheritanceLookupApplication`` body, normalised (``applied_at`` defaults to now)."""
    if not isinstance(record, dict):
        raise ValidationError("application", "must be an object")
    evidence = record.get("evidence")
    if not isinstance(evidence, list) or not 1 <= len(evidence) <= MAX_EVIDENCE:
        raise ValidationError("evidence", f"1 to {MAX_EVIDENCE} references to identity evidence")
    refs = [parse_evidence(e) if isinstance(e, str) else {
        "kind": _symbol(e.get("kind") if isinstance(e, dict) else None, EVIDENCE_KINDS, "evidence"),
        "reference": validate_reference(e.get("reference") if isinstance(e, dict) else None, field="evidence")}
        for e in evidence]
    if not DEATH_EVIDENCE & {e["kind"] for e in refs}:
        raise ValidationError("evidence", "at least one document that shows the death (a death certificate, a "
                                          "family register or a resident-record removal)")
    died = _date(record.get("date_of_death"), "date_of_death")
    if died > (today or datetime.now(UTC).date()):
        raise ValidationError("date_of_death", "not in the future")
    return {"application_ref": validate_reference(record.get("application_ref"), field="application_ref"),
            "relationship": _symbol(record.get("relationship"), RELATIONSHIPS, "relationship"),
            "evidence": refs, "date_of_death": died, "applied_at": _applied_at(record.get("applied_at"))}


def validate_disaster_application(record: Any) -> dict[str, Any]:
    """A ``DisasterLookupApplication`` body, normalised (codes sorted, repeats dropped)."""
    if not isinstance(record, dict):
        raise ValidationError("application", "must be an object")
    codes = record.get("designated_bank_codes")
    if not isinstance(codes, list) or not codes:
        raise ValidationError("designated_bank_codes", "at least one bank the depositor designates")
    return {"application_ref": validate_reference(record.get("application_ref"), field="application_ref"),
            "disaster_id": validate_disaster_id(record.get("disaster_id")),
            "area_code": validate_area_code(record.get("area_code")),
            "designated_bank_codes": sorted({validate_bank_code(c, field="designated_bank_codes") for c in codes}),
            "applied_at": _applied_at(record.get("applied_at"))}
