"""Message type names: the canonical ``type`` strings an envelope carries.

Each maps to the logical name of its body schema in the catalogue
(``schemas/avsc/<logical_name>/``). Provision records and key directory
entries are not message bodies: they travel on their own topics.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, Mapping

REGISTRATION_REQUEST: Final = "registration.request"
REGISTRATION_RESULT: Final = "registration.result"
EXISTENCE_CHECK: Final = "existence.check"
EXISTENCE_ANSWER: Final = "existence.answer"
PROVISION_INQUIRY: Final = "provision.inquiry"
PROVISION_RESPONSE: Final = "provision.response"
NUMBERING_REQUEST: Final = "numbering.request"
NUMBERING_ACK: Final = "numbering.ack"
NUMBERING_RESULT: Final = "numbering.result"
LOOKUP_INHERITANCE: Final = "lookup.inheritance"
LOOKUP_DISASTER: Final = "lookup.disaster"
LOOKUP_ANSWER: Final = "lookup.answer"
LOOKUP_RESULT: Final = "lookup.result"
LOOKUP_APPLICATION_INHERITANCE: Final = "lookup.application.inheritance"
LOOKUP_APPLICATION_DISASTER: Final = "lookup.application.disaster"
LOOKUP_NOTIFICATION: Final = "lookup.notification"
REJECTION_NOTICE: Final = "rejection.notice"
TOKEN_ISSUE_REQUEST: Final = "token.issue.request"
TOKEN_ISSUE_RESPONSE: Final = "token.issue.response"
NOTICE: Final = "person.notice"  # お知らせ: to the person, read on the portal

BODY_SCHEMA: Final[Mapping[str, str]] = MappingProxyType(
    {
        REGISTRATION_REQUEST: "registration_request",
        REGISTRATION_RESULT: "registration_result",
        EXISTENCE_CHECK: "existence_check",
        EXISTENCE_ANSWER: "existence_answer",
        PROVISION_INQUIRY: "provision_inquiry",
        PROVISION_RESPONSE: "provision_response",
        NUMBERING_REQUEST: "numbering_request",
        NUMBERING_ACK: "numbering_ack",
        NUMBERING_RESULT: "numbering_result",
        LOOKUP_INHERITANCE: "inheritance_lookup",
        LOOKUP_DISASTER: "disaster_lookup",
        LOOKUP_ANSWER: "lookup_answer",
        LOOKUP_RESULT: "lookup_result",
        LOOKUP_APPLICATION_INHERITANCE: "inheritance_lookup_application",
        LOOKUP_APPLICATION_DISASTER: "disaster_lookup_application",
        LOOKUP_NOTIFICATION: "lookup_notification",
        REJECTION_NOTICE: "rejection_notice",
        TOKEN_ISSUE_REQUEST: "token_issue_request",
        TOKEN_ISSUE_RESPONSE: "token_issue_response",
        NOTICE: "notice",
    }
)
"""Message type -> logical name of its body schema."""

MESSAGE_TYPES: Final[frozenset[str]] = frozenset(BODY_SCHEMA)
