"""Renkei's one exception hierarchy and its stable reason codes.

Every rejection carries a :class:`Reason` (a stable, documented code that
operators filter dead letters by) and a message a person can act on.
Messages must never contain personal data: a My Number, a name, an account
number.  Callers name the *field* and the *rule*, never the value.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Stable reason codes. Never rename or reuse one; add new ones at the end."""

    MALFORMED = "MALFORMED"  # bytes are not a decodable envelope / record
    OVERSIZE = "OVERSIZE"  # larger than the configured maximum
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"  # writer fingerprint not in the catalogue
    INVALID_FIELD = "INVALID_FIELD"  # a field breaks a domain rule
    BAD_SIGNATURE = "BAD_SIGNATURE"  # signature or batch proof does not verify
    UNKNOWN_KEY = "UNKNOWN_KEY"  # key id not in the key directory
    REVOKED_KEY = "REVOKED_KEY"  # key revoked or retired
    EXPIRED = "EXPIRED"  # past expires_at (or created in the future)
    REPLAYED = "REPLAYED"  # message id seen before
    WRONG_RECIPIENT = "WRONG_RECIPIENT"  # envelope not addressed to the opener
    UNDECRYPTABLE = "UNDECRYPTABLE"  # body cannot be decrypted / bound info mismatch
    UNAUTHORISED = "UNAUTHORISED"  # no policy rule allows this combination
    SUSPENDED = "SUSPENDED"  # sender or recipient is suspended
    UNKNOWN_PARTICIPANT = "UNKNOWN_PARTICIPANT"  # sender or recipient not registered
    RECORD_FAILED = "RECORD_FAILED"  # provision record could not be written (fail closed)
    INTERNAL_ERROR = "INTERNAL_ERROR"  # a bug in the processor; dead-lettered so the partition moves on
    SENDER_NOT_ALLOWED = "SENDER_NOT_ALLOWED"  # this sender may not send this type to this recipient (infra.domain.senders)
    UNSOLICITED = "UNSOLICITED"  # an answer from a participant that was not asked
    RATE_LIMITED = "RATE_LIMITED"  # the sender exceeded its message rate at the hub (or a client its login failures)
    UNKNOWN_PROCEDURE = "UNKNOWN_PROCEDURE"  # no procedure named, or one not in the catalogue (infra.domain.procedures)
    PROCEDURE_NOT_ALLOWED = "PROCEDURE_NOT_ALLOWED"  # the agency is not entitled to the procedure it names
    # The portal's card login (connectors.portal_cards): the person acts with a card and a PIN.
    WRONG_PIN = "WRONG_PIN"  # card id or PIN is wrong (an unknown card answers the same)
    CARD_LOCKED = "CARD_LOCKED"  # too many wrong PINs (or locked by the issuer): unlocked at the counter only
    CARD_SUSPENDED = "CARD_SUSPENDED"  # reported lost: every session ended, unusable until unlocked at the counter
    LOGIN_REQUIRED = "LOGIN_REQUIRED"  # no session, or it expired (idle or absolute limit)
    CSRF_REJECTED = "CSRF_REJECTED"  # a state-changing request without this session's token, or from another origin
    CARD_EXISTS = "CARD_EXISTS"  # a card with this id was issued already
    UNKNOWN_CARD = "UNKNOWN_CARD"  # the issuer named a card that was never issued (ops commands only)
    NOT_CARD_HOLDER = "NOT_CARD_HOLDER"  # the My Number shown at the counter is not the card holder's
    # 相続時・災害時照会 applications refused by DICJ (connectors.dicj), told to the applicant in its notification
    DEATH_NOT_CONFIRMED = "DEATH_NOT_CONFIRMED"  # the resident record (J-LIS) does not confirm the stated death
    UNKNOWN_DISASTER = "UNKNOWN_DISASTER"  # no declared disaster has this id (infra.domain.disasters)
    DISASTER_EXPIRED = "DISASTER_EXPIRED"  # the disaster's period for lookups is over (or has not begun)
    OUTSIDE_DISASTER_AREA = "OUTSIDE_DISASTER_AREA"  # the depositor's area is not one the disaster covers
    # Bulk inquiries (connectors.inquiry_batch): the batch as a whole is refused, nothing is asked
    BATCH_MISMATCH = "BATCH_MISMATCH"  # a named batch resumed with another file, agency or procedure
    BATCH_BUSY = "BATCH_BUSY"  # another process is running the same batch right now
    # 番号変更 (infra.domain.identity): a person's My Number was replaced
    NUMBER_RETIRED = "NUMBER_RETIRED"  # a token was asked for a replaced My Number (it no longer resolves)
    NUMBER_IN_USE = "NUMBER_IN_USE"  # a relink named a new number already linked to a person


class RenkeiError(Exception):
    """Base of every error Renkei raises on purpose."""


class ConfigError(RenkeiError):
    """Configuration is missing or inconsistent; the message says what to set."""


def report(exc: RenkeiError) -> int:
    """Say ``exc`` on one line of stderr as every ``renkei`` command does; its exit code (2 for a
    configuration error, 1 for any other)."""
    import sys

    config = isinstance(exc, ConfigError)
    print(f"renkei: {'configuration error: ' if config else ''}{exc}", file=sys.stderr)
    return 2 if config else 1


class StackError(RenkeiError):
    """The embedded broker or database could not be started or reached."""


class Rejection(RenkeiError):
    """A message or input was refused, with a stable reason code.

    ``str(rejection)`` is ``"<CODE>: <message>"``; the message must be safe to
    log (no personal data).
    """

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = Reason(reason)
        self.message = message
        super().__init__(f"{self.reason.value}: {message}")

    @property
    def code(self) -> str:
        return self.reason.value


class CodecError(Rejection):
    """Bytes could not be decoded as a catalogue record (MALFORMED, UNKNOWN_SCHEMA, OVERSIZE)."""


class ValidationError(Rejection):
    """A field broke a domain rule. Carries the field name and the rule, never the value."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(Reason.INVALID_FIELD, f"{field}: {rule}")


class EnvelopeRejection(Rejection):
    """An envelope failed signature, key, freshness, replay, recipient or decryption checks."""


class PolicyDenied(Rejection):
    """The default-deny policy refused the combination (UNAUTHORISED, SUSPENDED, UNKNOWN_PARTICIPANT,
    UNKNOWN_PROCEDURE, PROCEDURE_NOT_ALLOWED)."""
