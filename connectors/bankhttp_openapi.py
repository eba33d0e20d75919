"""The bank HTTP channel's API as an OpenAPI 3.1 document, served at ``/openapi.json``.

The copy in ``docs/openapi/bank-http.json`` is this document; regenerate it with
``python -m connectors.bankhttp_openapi > docs/openapi/bank-http.json`` (a test
checks that they match and that every path in it is a route of the server).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from connectors.bank_questions import NUMBERING_STATUSES
from infra.domain.lookup_applications import EVIDENCE_KINDS, RELATIONSHIPS
from infra.domain.validation import CONSENT_GIVERS, CONSENT_METHODS, EXISTENCE_RESULTS

_REF = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return _json(_PROBLEM, description)


ACCOUNT = {
    "type": "object", "additionalProperties": False,
    "required": ["branch_code", "account_type", "account_number", "holder_kana"],
    "description": "An account at this bank (the bank code is the connector's own).",
    "properties": {
        "branch_code": {"type": "string", "pattern": "^[0-9]{3}$", "description": "支店コード"},
        "account_type": {"type": "string", "description": "ORDINARY, CURRENT, SAVINGS (普通/当座/貯蓄, Zengin 1/2/4)"},
        "account_number": {"type": "string", "pattern": "^[0-9]{1,7}$", "description": "口座番号, zero-padded to 7"},
        "holder_kana": {"type": "string", "description": "口座名義 in katakana (half- or full-width, 全銀 characters)"},
    },
}

CONSENT = {
    "type": "object", "additionalProperties": False, "required": ["given_by", "method", "given_at", "evidence_ref"],
    "description": "The person's consent to this request (本人の同意): who gave it, how, when, and the bank's "
                   "reference to its evidence. Required for every operation.",
    "properties": {
        "given_by": {"type": "string", "enum": list(CONSENT_GIVERS)},
        "method": {"type": "string", "enum": list(CONSENT_METHODS)},
        "given_at": {"type": "string", "format": "date-time",
                     "description": "ISO 8601 with its UTC offset, not in the future"},
        "evidence_ref": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                         "description": "form number or confirmation id; never personal data"},
    },
}

STATE = {
    "type": "object", "required": ["request_id", "status", "detail"],
    "properties": {
        "request_id": {"type": "string", "description": "the Idempotency-Key"},
        "status": {"type": "string", "description": "SENT until the registry answered, then its result: DONE, "
                                                    "NOT_HOLDER, HOLDER_MISMATCH, ACCOUNT_NOT_FOUND, ACCOUNT_CLOSED, "
                                                    "NOT_REGISTERED, CONSENT_REQUIRED, TIMEOUT, REFUSED, or "
                                                    "REJECTED:<reason code> (a hub rejection)"},
        "detail": {"type": ["string", "null"]},
    },
}

_CODE = {"type": "string", "pattern": "^[0-9]{4}$", "description": "a bank code (金融機関コード)"}
_CODES = {"type": "array", "items": _CODE}
_MY_NUMBER = {"type": "string", "pattern": "^[0-9]{12}$"}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
_PERSON = {"type": "object", "required": ["token", "customer_ref"], "properties": {
    "token": {"type": "string", "description": "the bank's own token for the person (符号)"},
    "customer_ref": {"type": ["string", "null"], "description": "the bank's customer reference, when linked"}}}

OUTCOME = {
    "type": "object", "additionalProperties": False, "required": ["status", "accounts_linked"],
    "properties": {"status": {"type": "string", "enum": list(NUMBERING_STATUSES)},
                   "accounts_linked": {"type": "integer", "minimum": 0,
                                       "description": "at least 1 with LINKED, 0 otherwise"}}}

NUMBERING_RESULT = {
    "type": "object", "required": ["outcomes", "banks_not_answered"],
    "description": "DICJ's ONE consolidated result of a numbering request: each bank's outcome (this bank's own "
                   "too), and the banks that had not answered by the deadline.",
    "properties": {
        "outcomes": {"type": "array", "items": {"type": "object", "required": ["bank_code", "status",
                                                                              "accounts_linked"],
                                                "properties": {"bank_code": _CODE, **OUTCOME["properties"]}}},
        "banks_not_answered": _CODES}}

NOTIFICATION = {
    "type": "object",
    "required": ["kind", "status", "reason", "banks_with_accounts", "banks_not_answered", "banks_not_asked",
                 "is_supplement"],
    "description": "DICJ's answer to a lookup application: which banks hold numbered accounts of the person — never "
                   "the accounts —, or why no bank was asked. A supplement adds banks that answered after the "
                   "deadline.",
    "properties": {
        "kind": {"type": "string", "enum": ["INHERITANCE", "DISASTER"]},
        "status": {"type": "string", "enum": ["ANSWERED", "REFUSED"]},
        "reason": {"type": ["string", "null"], "description": "when REFUSED: DEATH_NOT_CONFIRMED, UNKNOWN_DISASTER, "
                                                              "DISASTER_EXPIRED, OUTSIDE_DISASTER_AREA, INVALID_FIELD"},
        "banks_with_accounts": _CODES, "banks_not_answered": _CODES,
        "banks_not_asked": {**_CODES, "description": "designated codes of no bank taking part in lookups"},
        "is_supplement": {"type": "boolean"}}}

REQUEST_STATE = {
    "type": "object", "required": ["request_id", "status", "detail", "results"],
    "properties": {
        "request_id": {"type": "string", "description": "the Idempotency-Key"},
        "status": {"type": "string", "description": "SENT until DICJ answered; then DONE (numbering), ANSWERED or "
                                                    "REFUSED (lookups), or REJECTED:<reason code> (a hub rejection)"},
        "detail": {"type": ["string", "null"], "description": "a refusal's reason code"},
        "results": {"type": "array", "description": "DICJ's result (numbering) or notifications (lookups: the "
                                                     "first, then any supplement), as posted to the bank",
                    "items": {"oneOf": [{"$ref": "#/components/schemas/NumberingResult"},
                                        {"$ref": "#/components/schemas/LookupNotification"}]}}}}


def _filed(operation: str, summary: str, description: str, properties: dict[str, Any], required: list[str],
           state: str) -> dict[str, Any]:
    """A person's request filed with an Idempotency-Key: its POST."""
    return {"post": {
        "operationId": operation, "summary": summary, "description": description,
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "required": ["customer_ref", "my_number", *required],
            "properties": {"customer_ref": {**_REF, "description": "the bank's own customer reference"},
                           "my_number": _MY_NUMBER, **properties}}}}},
        "responses": {
            "202": _json({"$ref": f"#/components/schemas/{state}"}, "published once; status SENT"),
            "200": _json({"$ref": f"#/components/schemas/{state}"},
                         "the same Idempotency-Key again: the request's current state, nothing sent twice"),
            "400": _problem("MISSING_IDEMPOTENCY_KEY, MALFORMED or INVALID_FIELD (with field, never the value)"),
            "401": {"$ref": "#/components/responses/Unauthenticated"},
            "409": _problem("KEY_IN_USE: the Idempotency-Key names another kind of request"),
            "503": _problem("UNAVAILABLE: the token authority did not answer; retry with the same key"),
        }}}


def _state(operation: str, what: str, state: str) -> dict[str, Any]:
    return {"get": {
        "operationId": operation, "summary": f"The state of a {what} filed with this Idempotency-Key",
        "parameters": [_KEY],
        "responses": {"200": _json({"$ref": f"#/components/schemas/{state}"}, f"the {what}'s state"),
                      "401": {"$ref": "#/components/responses/Unauthenticated"},
                      "404": _problem(f"NOT_FOUND: no {what} with this key")}}}


def _later_answer(operation: str, summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"post": {
        "operationId": operation, "summary": summary,
        "description": "The bank's answer to a question it accepted with 202 (the webhook below), when its "
                       "system has it — the next morning's batch, say. Sent on once.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "required": ["reference", *required],
            "properties": {"reference": {"type": "string", "format": "uuid",
                                         "description": "the question's reference"}, **properties}}}}},
        "responses": {
            "200": _json({"type": "object", "required": ["reference", "status"], "properties": {
                "reference": {"type": "string"}, "status": {"type": "string", "enum": ["ANSWERED"]}}},
                "sent on to the question's asker"),
            "400": _problem("MALFORMED or INVALID_FIELD (with field)"),
            "401": {"$ref": "#/components/responses/Unauthenticated"},
            "404": _problem("UNKNOWN_REFERENCE: no open question has this reference (unknown or answered)")}}}


def _webhook(operation: str, summary: str, description: str, properties: dict[str, Any], required: list[str],
             responses: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "operationId": operation, "summary": summary,
        "description": description + " Signed by the connector (direction renkei-to-bank); verify it. The same "
                                     "Idempotency-Key (the message id) on every retry; 408, 429 and 5xx are retried "
                                     "with backoff, other 4xx and unreadable answers dead-lettered.",
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "properties": properties}}}},
        "responses": responses}}


_ACCOUNTS = {"type": "array", "maxItems": 100, "items": ACCOUNT,
             "description": "the person's numbered accounts at this bank (empty: none)"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Renkei bank HTTP channel",
        "version": "1.0.0",
        "description": (
            "A bank's own systems file STEP3 registrations (公金受取口座登録法 §8), numbering requests (付番申出) and "
            "lookup applications (相続時・災害時照会) taken at their counters, and link their customers here; the "
            "connector calls the bank for existence checks (口座実在性確認), lookups and numbering requests, and "
            "posts DICJ's results and notifications to it (the webhooks below). "
            "Served over TLS only. Every request in either direction is signed with the bank's channel key: "
            "`Authorization: RENKEI-HMAC-SHA256 KeyId=<id>, Timestamp=<unix s>, Nonce=<hex>, Signature=<hex>`, "
            "HMAC-SHA256 over `RENKEI-HMAC-SHA256`, the direction (`bank-to-renkei` for these paths, "
            "`renkei-to-bank` for the webhook), the method, the path and query, the timestamp, the nonce, the "
            "key id and the SHA-256 of the body, one per line (docs/connectors.md). A call that does not "
            "authenticate is answered 401 and nothing is published."),
    },
    "servers": [{"url": "https://{host}:{port}", "variables": {"host": {"default": "127.0.0.1"},
                                                                "port": {"default": "8443"}}}],
    "security": [{"RenkeiHmac": []}],
    "paths": {
        "/v1/registrations": {"post": {
            "operationId": "fileRegistration",
            "summary": "File a registration, change or deletion of the person's public-funds account (STEP3)",
            "description": "The My Number is exchanged for the bank's token and never kept or echoed. The registry "
                           "checks the account with this bank's existence-check endpoint before anything changes.",
            "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "required": ["operation", "customer_ref", "my_number", "consent"],
                "properties": {
                    "operation": {"type": "string", "enum": ["REGISTER", "CHANGE", "DELETE"]},
                    "customer_ref": {**_REF, "description": "the bank's own customer reference"},
                    "my_number": {"type": "string", "pattern": "^[0-9]{12}$"},
                    "account": {**ACCOUNT, "description": "required for REGISTER and CHANGE"},
                    "consent": {"$ref": "#/components/schemas/Consent"},
                }}}}},
            "responses": {
                "202": _json({"$ref": "#/components/schemas/RegistrationState"}, "published once; status SENT"),
                "200": _json({"$ref": "#/components/schemas/RegistrationState"},
                             "the same Idempotency-Key again: the request's current state, nothing sent twice"),
                "400": _problem("MISSING_IDEMPOTENCY_KEY, MALFORMED or INVALID_FIELD (with field, never the value)"),
                "401": {"$ref": "#/components/responses/Unauthenticated"},
                "503": _problem("UNAVAILABLE: the token authority did not answer; retry with the same key"),
            }}},
        "/v1/registrations/{key}": {"get": {
            "operationId": "registrationState",
            "summary": "The state of a request filed with this Idempotency-Key",
            "parameters": [{"name": "key", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/RegistrationState"}, "the request's state"),
                "401": {"$ref": "#/components/responses/Unauthenticated"},
                "404": _problem("NOT_FOUND: no request with this key"),
            }}},
        "/v1/customers": {"post": {
            "operationId": "linkCustomer",
            "summary": "Link a customer reference to the person (token issuance; the My Number is not kept)",
            "description": "Existence checks about a linked person carry the bank's customer_ref, so the bank can "
                           "answer whether this customer holds the account.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["customer_ref", "my_number"],
                "properties": {"customer_ref": _REF, "my_number": {"type": "string", "pattern": "^[0-9]{12}$"}}}}}},
            "responses": {
                "200": _json({"type": "object", "required": ["customer_ref", "status"], "properties": {
                    "customer_ref": {"type": "string"}, "status": {"type": "string", "enum": ["LINKED"]}}},
                    "the customer is linked"),
                "400": _problem("MALFORMED or INVALID_FIELD"),
                "401": {"$ref": "#/components/responses/Unauthenticated"},
                "503": _problem("UNAVAILABLE: the token authority did not answer; retry"),
            }}},
        "/v1/numbering-requests": _filed(
            "fileNumberingRequest", "File a numbering request (付番申出) taken at this bank's counter",
            "For the banks named (this bank among them or not). When this bank is named, own_outcome is what it "
            "linked of its own accounts: it goes to DICJ with the request, so it is on the bus and in DICJ's ONE "
            "consolidated result (posted to numbering-results, and in the state).",
            {"bank_codes": {**_CODES, "minItems": 1},
             "own_outcome": {**OUTCOME, "description": "required when this bank is among bank_codes, else absent"}},
            ["bank_codes"], "RequestState"),
        "/v1/numbering-requests/{key}": _state("numberingRequestState", "numbering request", "RequestState"),
        "/v1/lookup-applications": _filed(
            "fileLookupApplication", "File a lookup application taken at this bank's counter (相続時・災害時照会)",
            "INHERITANCE: an heir's application; customer_ref and my_number are the DECEASED's. DICJ checks the "
            "death with the resident record before any bank is asked. DISASTER: the depositor's own application "
            "under a declared disaster, to the banks they designate. DICJ's notification (which banks hold "
            "numbered accounts, never the accounts; or why it was refused) is posted to lookup-notifications and "
            "kept in the state.",
            {"kind": {"type": "string", "enum": ["INHERITANCE", "DISASTER"]},
             "application_ref": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                                 "description": "the bank's reference for the application (echoed by DICJ)"},
             "relationship": {"type": "string", "enum": list(RELATIONSHIPS), "description": "INHERITANCE"},
             "evidence": {"type": "array", "minItems": 1, "maxItems": 8, "description": "INHERITANCE: references to "
                          "the documents checked, at least one showing the death", "items": {
                              "type": "object", "required": ["kind", "reference"], "properties": {
                                  "kind": {"type": "string", "enum": list(EVIDENCE_KINDS)},
                                  "reference": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}}},
             "date_of_death": {"type": "string", "format": "date", "description": "INHERITANCE"},
             "disaster_id": {"type": "string", "description": "DISASTER: a declared disaster's id"},
             "area_code": {"type": "string", "pattern": "^[0-9]{2}([0-9]{3})?$",
                           "description": "DISASTER: where the depositor lives (prefecture or municipality code)"},
             "designated_bank_codes": {**_CODES, "minItems": 1, "description": "DISASTER: the banks designated"}},
            ["kind", "application_ref"], "RequestState"),
        "/v1/lookup-applications/{key}": _state("lookupApplicationState", "lookup application", "RequestState"),
        "/v1/lookup-answers": _later_answer("answerLookup", "Answer a lookup (or its reminder) accepted earlier",
                                            {"accounts": _ACCOUNTS}, ["accounts"]),
        "/v1/numbering-acks": _later_answer("answerNumberingRequest", "Answer a numbering request accepted earlier",
                                            OUTCOME["properties"], ["status", "accounts_linked"]),
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
    },
    "webhooks": {
        "lookup": _webhook(
            "lookup", "Implemented by the bank at POST {bank_url}/v1/lookups: 相続時・災害時照会",
            "Which of the person's accounts at this bank are numbered (付番済み)? Answer 200 {accounts} at once, or "
            "202 and POST /v1/lookup-answers later (before the deadline; after it the answer still counts, as a "
            "supplement). A reminder (reminder > 0) asks again under the same reference: answer it like the first; "
            "only the first answer counts. An inheritance lookup tells of a death: treat it as sensitive.",
            {"reference": {"type": "string", "format": "uuid"},
             "kind": {"type": "string", "enum": ["INHERITANCE", "DISASTER"]}, "person": _PERSON,
             "reminder": {"type": "integer", "minimum": 0}, "deadline": {"type": "string", "format": "date-time"},
             "receiving_bank_code": {"type": ["string", "null"], "description": "where the heir applied"},
             "disaster_id": {"type": ["string", "null"]}},
            ["reference", "kind", "person", "reminder", "deadline"],
            {"200": _json({"type": "object", "required": ["accounts"], "properties": {"accounts": _ACCOUNTS}},
                          "the answer"),
             "202": {"description": "accepted; the answer follows at POST /v1/lookup-answers"}}),
        "numberingRequest": _webhook(
            "numberingRequest", "Implemented by the bank at POST {bank_url}/v1/numbering-requests: 付番申出",
            "Number the person's accounts at this bank (from DICJ, for a request filed at another bank or on the "
            "portal). Answer 200 {status, accounts_linked} at once, or 202 and POST /v1/numbering-acks later.",
            {"reference": {"type": "string", "format": "uuid"}, "person": _PERSON,
             "channel": {"type": "string", "enum": ["BANK", "PORTAL"]},
             "receiving_bank_code": {"type": ["string", "null"]}},
            ["reference", "person", "channel"],
            {"200": _json(OUTCOME, "the outcome"),
             "202": {"description": "accepted; the outcome follows at POST /v1/numbering-acks"}}),
        "numberingResult": _webhook(
            "numberingResult", "Implemented by the bank at POST {bank_url}/v1/numbering-results",
            "DICJ's ONE consolidated result of a numbering request this bank filed (request_id: its "
            "Idempotency-Key).", {"request_id": {"type": "string"}, **NUMBERING_RESULT["properties"]},
            ["request_id", "outcomes", "banks_not_answered"], {"204": {"description": "taken (any 2xx)"}}),
        "lookupNotification": _webhook(
            "lookupNotification", "Implemented by the bank at POST {bank_url}/v1/lookup-notifications",
            "DICJ's notification about a lookup application this bank filed (request_id: its Idempotency-Key).",
            {"request_id": {"type": "string"}, **NOTIFICATION["properties"]},
            ["request_id", *NOTIFICATION["required"]], {"204": {"description": "taken (any 2xx)"}}),
        "existenceCheck": {"post": {
        "operationId": "existenceCheck",
        "summary": "Implemented by the bank at POST {bank_url}/v1/existence-checks: 口座実在性確認",
        "description": "Answer from the bank's own customer data: does the account exist, is it open, does the "
                       "bank's customer record for this person (customer_ref when linked, else the token) hold it, "
                       "does the name match. Signed by the connector (direction renkei-to-bank); verify it. The "
                       "same Idempotency-Key (the message id) on every retry. 408, 429 and 5xx are retried with "
                       "backoff; other 4xx, non-JSON or out-of-range answers are dead-lettered (MALFORMED).",
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["reference", "account", "person"],
            "properties": {
                "reference": {"type": "string", "format": "uuid", "description": "the check's correlation id"},
                "account": {**ACCOUNT, "required": ["bank_code", *ACCOUNT["required"]],
                            "properties": {"bank_code": {"type": "string", "pattern": "^[0-9]{4}$"},
                                           **ACCOUNT["properties"]}},
                "person": {"type": "object", "required": ["token", "customer_ref"], "properties": {
                    "token": {"type": "string", "description": "the bank's own token for the person (符号)"},
                    "customer_ref": {"type": ["string", "null"],
                                     "description": "the bank's customer reference, when linked"}}},
            }}}}},
        "responses": {"200": _json({
            "type": "object", "required": ["result", "holder"],
            "properties": {
                "result": {"type": "string", "enum": list(EXISTENCE_RESULTS)},
                "holder": {"type": "boolean", "description": "whether the bank's customer record for this person "
                                                            "holds the account (required: CONFIRMED needs true)"},
            }}, "the bank's answer")},
    }}},
    "components": {
        "securitySchemes": {"RenkeiHmac": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "RENKEI-HMAC-SHA256 request signature with the bank's channel key (see info)."}},
        "parameters": {"IdempotencyKey": {
            "name": "Idempotency-Key", "in": "header", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}},
        "responses": {"Unauthenticated": _problem(
            "AUTH_REQUIRED, UNKNOWN_KEY, BAD_SIGNATURE, EXPIRED (timestamp more than 300 s off) or REPLAYED "
            "(nonce used before); nothing was read or published")},
        "schemas": {
            "Problem": {"type": "object", "required": ["reason", "message"], "properties": {
                "reason": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}},
            "Consent": CONSENT,
            "RegistrationState": STATE,
            "RequestState": REQUEST_STATE,
            "NumberingResult": NUMBERING_RESULT,
            "LookupNotification": NOTIFICATION,
        },
    },
}


def document() -> str:
    """The document as served and as kept in docs/ (stable key order, UTF-8, trailing newline)."""
    return json.dumps(OPENAPI, ensure_ascii=False, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
