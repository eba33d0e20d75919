"""What a bank files for a person over its HTTP channel: each kind's body, validated, and the message it becomes.

The HTTP server (:mod:`connectors.bankhttp`) authenticates the call, checks the
``Idempotency-Key``, the ``customer_ref`` and the My Number, then calls the
kind's ``build(bank_code, body)``: it validates the rest of the body (raising
:class:`infra.core.errors.ValidationError` that names the field, never the value)
and returns ``make(token, correlation_id) -> Message``, called once the My
Number was exchanged for the bank's token.

- ``registration`` (``/v1/registrations``): STEP3, 口座登録法 §8 → the registry;
- ``numbering`` (``/v1/numbering-requests``): 付番申出 at the counter → DICJ,
  with the bank's own outcome when it is itself named;
- ``lookup`` (``/v1/lookup-applications``): an heir's or a depositor's
  application (相続時・災害時照会) → DICJ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.bank_questions import numbering_outcome
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
from infra.domain.validation import validate_bank_account, validate_bank_code, validate_consent
from schemas import types as msg

__all__ = ["REQUEST_KINDS", "FiledKind"]

Make = Callable[[str, str], Message]
"""``make(token, correlation_id)``: the message a validated request becomes."""


def registration(bank_code: str, body: dict[str, Any]) -> Make:
    operation = body.get("operation")
    if operation not in ("REGISTER", "CHANGE", "DELETE"):
        raise ValidationError("operation", "must be REGISTER, CHANGE or DELETE")
    account = None
    if operation != "DELETE" or body.get("account") is not None:
        raw = body.get("account")
        if not isinstance(raw, dict):
            raise ValidationError("account", "is required")
        account = validate_bank_account({**raw, "bank_code": bank_code})
    consent = validate_consent(body.get("consent"))
    return lambda token, correlation: Message(
        body={"operation": operation, "account": account, "channel": "BANK_COUNTER", "consent": consent,
              "requested_at": datetime.now(UTC)}, type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE, correlation_id=correlation)


def numbering(bank_code: str, body: dict[str, Any]) -> Make:
    """付番申出 at this bank's counter, for the banks named; this bank's own outcome when it is named."""
    codes = body.get("bank_codes")
    if not isinstance(codes, list) or not codes:
        raise ValidationError("bank_codes", "at least one 4-digit bank code")
    codes = sorted({validate_bank_code(c, field="bank_codes") for c in codes})
    own = body.get("own_outcome")
    if bank_code in codes:
        if not isinstance(own, dict):
            raise ValidationError("own_outcome", "this bank is named: {status, accounts_linked} of its own numbering")
        status, linked = numbering_outcome(own.get("status"), own.get("accounts_linked"), field="own_outcome")
        own = {"bank_code": bank_code, "status": status, "accounts_linked": linked}
    elif own is not None:
        raise ValidationError("own_outcome", "only when this bank is among the banks named")
    return lambda token, correlation: Message(
        body={"bank_codes": codes, "channel": "BANK", "receiving_bank_code": bank_code,
              "requested_at": datetime.now(UTC), "receiving_bank_outcome": own},
        type=msg.NUMBERING_REQUEST, to="dicj", subject=token, data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING,
        basis=BASIS_NUMBERING, correlation_id=correlation)


def application(bank_code: str, body: dict[str, Any]) -> Make:
    """An heir's (``INHERITANCE``: the person is the deceased) or a depositor's (``DISASTER``) application."""
    kind = body.get("kind")
    fields = {k: v for k, v in body.items() if k not in ("kind", "customer_ref", "my_number", "applied_at")}
    if kind == "INHERITANCE":
        checked = validate_inheritance_application(fields)
        type_, basis = msg.LOOKUP_APPLICATION_INHERITANCE, BASIS_INHERITANCE_LOOKUP
    elif kind == "DISASTER":
        checked = validate_disaster_application(fields)
        type_, basis = msg.LOOKUP_APPLICATION_DISASTER, BASIS_DISASTER_LOOKUP
    else:
        raise ValidationError("kind", "INHERITANCE or DISASTER")
    return lambda token, correlation: Message(
        body=checked, type=type_, to="dicj", subject=token, data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=basis,
        correlation_id=correlation)


@dataclass(frozen=True)
class FiledKind:
    """One kind of request: its path under ``/v1/``, what it is called, and its builder."""

    path: str
    called: str
    build: Callable[[str, dict[str, Any]], Make]


REQUEST_KINDS = {
    "registration": FiledKind("registrations", "registration", registration),
    "numbering": FiledKind("numbering-requests", "numbering request", numbering),
    "lookup": FiledKind("lookup-applications", "lookup application", application),
}
