"""The portal's pure parts: the page's words in both languages, the throttle, sessions' secrets, notices, views."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.portal_cards import validate_card_id, validate_pin
from connectors.portal_notices import NoticeVault, numbering_notice
from connectors.portal_sessions import csrf_matches, csrf_token, session_hash
from connectors.portal_throttle import LoginThrottle
from connectors.portal_views import names, notice_view, request_view
from infra.core.errors import Reason, ValidationError
from infra.crypto.sealing import UnsealError
from infra.domain.participants import load_participants
from infra.domain.policy import Policy
from infra.records.provisions import ProvisionStatus
from infra.records.records_verify import RecordState, Verdict
from schemas import codec
from schemas import types as msg
from streams.notices import masked, notice

STATIC = Path(__file__).parents[3] / "connectors" / "static"
WORDS = json.loads((STATIC / "portal-i18n.json").read_text(encoding="utf-8"))


def _symbols(schema: str, enum: str) -> list[str]:
    found: list[str] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            if x.get("type") == "enum" and x.get("name") == enum:
                found.extend(x["symbols"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(codec.schema(schema))
    return found


# --------------------------------------------------------------------------- the page's words


def test_japanese_and_english_say_the_same_things():
    assert WORDS["ja"].keys() == WORDS["en"].keys()
    assert all(WORDS["ja"][k] and WORDS["en"][k] for k in WORDS["ja"])
    # Japanese first: the Japanese texts are Japanese (kana or kanji), not copies of the English
    japanese = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
    assert sum(bool(japanese.search(v)) for v in WORDS["ja"].values()) > 0.95 * len(WORDS["ja"])


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_every_reason_status_and_state_a_person_can_meet_is_translated(lang):
    words = WORDS[lang]
    wanted = {f"reason.{r.value}" for r in Reason}
    wanted |= {f"status.{s}" for s in _symbols("registration_result", "RegistrationStatus")}
    wanted |= {f"status.{s}" for s in _symbols("numbering_ack", "NumberingStatus")}
    wanted |= {f"records.status.{s.value}" for s in ProvisionStatus}
    wanted |= {f"records.state.{s.value}" for s in RecordState}
    wanted |= {f"records.verdict.{v.value}" for v in Verdict}
    wanted |= {f"kind.account.{op.lower()}" for op in ("REGISTER", "CHANGE", "DELETE")} | {"kind.numbering"}
    wanted |= {f"state.{s}" for s in ("PENDING", "CONFIRMED", "REFUSED", "ANSWERED")}
    wanted |= {f"notice.REGISTRATION.{op}.{end}" for op in _symbols("registration_request", "RegistrationOperation")
               for end in ("DONE", "refused")}
    wanted |= {f"notice.LOOKUP.{k}" for k in _symbols("lookup_result", "LookupKind") if k != "UNKNOWN"}
    wanted |= {"notice.PROVISION", "notice.NUMBERING"}
    wanted |= {f"type.{t}" for t in ("ORDINARY", "CURRENT", "SAVINGS")}
    recorded = [r for r in Policy.load().rules if r.records]
    wanted |= {f"item.{r.data_item}" for r in recorded} | {f"basis.{b}" for r in recorded for b in r.bases}
    wanted |= {f"field.account.{f}" for f in ("bank_code", "branch_code", "account_type", "account_number",
                                              "holder_kana")} | {"field.card_id", "field.pin", "field.bank_codes"}
    assert wanted - words.keys() == set()


def test_every_label_of_the_page_and_every_key_the_script_names_exists():
    html = (STATIC / "portal.html").read_text(encoding="utf-8")
    script = (STATIC / "portal.js").read_text(encoding="utf-8")
    keys = set(re.findall(r'data-i18n(?:-aria)?="([^"]+)"', html))
    keys |= set(re.findall(r'\bt\("([a-z_.]+)"', script))
    assert keys and keys - WORDS["ja"].keys() == set()


def test_the_page_is_labelled_and_has_its_landmarks():
    html = (STATIC / "portal.html").read_text(encoding="utf-8")
    assert '<html lang="ja">' in html and 'name="viewport"' in html
    for landmark in ("<header", "<main", "<nav", "<footer", 'class="skip"'):
        assert landmark in html
    ids = set(re.findall(r'<(?:input|select) id="([^"]+)"', html))
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    assert ids and ids <= labelled  # every field has its label (radios are wrapped in theirs)
    assert html.count('aria-live="polite"') >= 4 and 'role="alert"' in html
    assert "onclick" not in html and "<script>" not in html  # CSP default-src 'self': no inline script


# --------------------------------------------------------------------------- the throttle


def test_the_throttle_counts_failures_per_client_in_a_sliding_window():
    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == pytest.approx(60)
    assert throttle.retry_after("10.0.0.2") is None  # another client is not affected
    now[0] += 30
    assert throttle.retry_after("10.0.0.1") == pytest.approx(30)
    now[0] += 30.001
    assert throttle.retry_after("10.0.0.1") is None  # the window slid past the failures


def test_the_throttle_forgets_the_least_recently_seen_clients_first():
    throttle = LoginThrottle(max_failures=1, window_s=60, max_clients=2, clock=lambda: 0.0)
    for client in ("a", "b", "c"):
        throttle.failed(client)
    assert throttle.retry_after("a") is None and throttle.retry_after("c") is not None
    with pytest.raises(ValueError):
        LoginThrottle(max_failures=0)


# --------------------------------------------------------------------------- cards and sessions


def test_card_ids_and_pins_are_checked_without_echoing_them():
    assert validate_card_id("DEMO-0001") == "DEMO-0001" and validate_pin("0042") == "0042"
    for bad in ("abc", "x" * 33, "card 1", "カード", None):
        with pytest.raises(ValidationError) as refused:
            validate_card_id(bad)
        assert refused.value.field == "card_id" and (bad is None or str(bad) not in refused.value.message)
    for bad in ("123", "12345", "12a4", "１２３４", 1234):
        with pytest.raises(ValidationError) as refused:
            validate_pin(bad)
        assert str(bad) not in str(refused.value)


def test_sessions_keep_only_a_hash_and_csrf_tokens_belong_to_one_session():
    one, two = "a" * 43, "b" * 43
    assert len(session_hash(one)) == 32 and session_hash(one) != session_hash(two)
    assert one.encode() not in session_hash(one)
    assert csrf_matches(one, csrf_token(one)) and not csrf_matches(two, csrf_token(one))
    assert not csrf_matches(one, None) and not csrf_matches(one, "")


# --------------------------------------------------------------------------- notices


ACCOUNT = {"bank_code": "9001", "branch_code": "101", "account_type": "ORDINARY", "account_number": "1234567",
           "holder_kana": "ヤマダ タロウ"}


def test_a_notice_masks_the_account_has_its_own_correlation_and_fits_its_schema():
    assert masked(ACCOUNT) == {"bank_code": "9001", "branch_code": "101", "account_type": "ORDINARY",
                               "number_last_digits": "567", "holder_kana": "ヤマダ タロウ"}
    event = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    message = notice(kind="PROVISION", event="REGISTERED", status="PROVIDED", subject="tok", reference=event,
                     basis="account-registration-act/art9", party="agency-nta", procedure_code="P-1",
                     account=ACCOUNT)
    assert message.type == msg.NOTICE and message.to == "portal" and message.data_item == "person_notice"
    assert message.correlation_id != event and message.body["reference"] == event
    assert "1234567" not in json.dumps(message.body, default=str)
    decoded = codec.decode(codec.encode("notice", message.body), "notice")
    assert decoded["account"]["number_last_digits"] == "567" and decoded["bank_codes"] == []


def test_the_notice_vault_binds_each_sealed_notice_to_its_person_and_row():
    vault = NoticeVault(bytes(32))
    sealed = vault.seal("token-a", "notice:1", {"account": masked(ACCOUNT)})
    assert b"9001" not in sealed and "ヤマダ".encode() not in sealed
    assert vault.open("token-a", "notice:1", sealed)["account"]["holder_kana"] == "ヤマダ タロウ"
    for token, where in (("token-b", "notice:1"), ("token-a", "notice:2"), ("token-a", "account")):
        with pytest.raises(UnsealError):  # moved to another person or row: does not open
            vault.open(token, where, sealed)


def test_a_numbering_result_becomes_a_numbering_notice():
    body = {"outcomes": [{"bank_code": "9002", "status": "LINKED", "accounts_linked": 2},
                         {"bank_code": "9003", "status": "NO_ACCOUNT", "accounts_linked": 0}],
            "banks_not_answered": ["9004"], "completed_at": datetime(2026, 4, 1, tzinfo=UTC)}
    made = numbering_notice(body, "cid")
    assert (made["kind"], made["bank_codes"], made["banks_not_answered"]) == ("NUMBERING", ["9002"], ["9004"])


# --------------------------------------------------------------------------- views


def test_views_name_participants_and_say_what_state_a_request_is_in():
    ps = load_participants()
    assert names(ps, "agency-nta") == {"ja": "国税庁 還付金担当", "en": "National Tax Agency refunds"}
    assert names(ps, "bank-9003") == {"ja": "デモ銀行 9003", "en": "Demo Bank 9003"}
    assert names(ps, "someone-unknown") == {"ja": "someone-unknown", "en": "someone-unknown"} and names(ps, None) is None
    shown = notice_view(ps, {"kind": "LOOKUP", "party": "dicj", "account": None, "bank_codes": ["9001"]})
    assert shown["banks"] == [{"bank_code": "9001", "name": {"ja": "デモ銀行 9001", "en": "Demo Bank 9001"}}]
    when = datetime(2026, 4, 1, tzinfo=UTC)

    def row(kind: str, status: str, banks: str | None = None) -> dict:
        return {"correlation_id": "c", "kind": kind, "status": status, "detail": None, "banks": banks,
                "created_at": when, "answered_at": None}

    assert request_view(row("account.register", "SENT"))["state"] == "PENDING"
    assert request_view(row("account.register", "DONE"))["state"] == "CONFIRMED"
    assert request_view(row("account.change", "NOT_HOLDER"))["state"] == "REFUSED"
    assert request_view(row("account.delete", "REJECTED:UNAUTHORISED"))["state"] == "REFUSED"
    assert request_view(row("numbering", "SENT", '{"9000": null}'))["banks"] == {"9000": None}
    assert request_view(row("numbering", "DONE", '{"9000": "LINKED"}'))["state"] == "ANSWERED"
