"""The bank HTTP channel's API as an OpenAPI 3.1 document, served at ``/openapi.json``.

The copy in ``docs/openapi/bank-http.json`` is this document; regenerate it with
``python -m connectors.bankhttp_openapi > docs/openapi/bank-http.json`` (a test
checks that they match and that every path in it is a route of the server).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from infra.validation import CONSENT_GIVERS, CONSENT_METHODS, EXISTENCE_RESULTS

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

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Renkei bank HTTP channel",
        "version": "1.0.0",
        "description": (
            "A bank's own systems file STEP3 registrations (公金受取口座登録法 §8) and link their customers here; "
            "the connector calls the bank back for existence checks (口座実在性確認, the webhook below). "
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
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
    },
    "webhooks": {"existenceCheck": {"post": {
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
        },
    },
}


def document() -> str:
    """The document as served and as kept in docs/ (stable key order, UTF-8, trailing newline)."""
    return json.dumps(OPENAPI, ensure_ascii=False, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
