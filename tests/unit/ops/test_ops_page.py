"""The ops page's rule (who may look), what it shows of an audit event, and that it shows it escaped."""

from __future__ import annotations

import time

import pytest

from infra.core.errors import ConfigError
from infra.ops.ops_page import (
    AuditRow,
    ComponentRow,
    GroupRow,
    Overview,
    PageAccess,
    audit_row,
    closed_reason,
    render_page,
)

TOKEN = "s3cret-ops-page-token-0123"


def test_without_a_token_only_loopback_peers_may_look():
    access = PageAccess.for_address("127.0.0.1", None)
    assert access.refusal("127.0.0.1", None) is None
    assert access.refusal("::1", None) is None
    assert access.refusal("10.0.0.5", None)[0] == 403
    assert access.refusal("192.168.1.20", f"Bearer {TOKEN}")[0] == 403  # no token configured: nothing opens it
    assert access.refusal(None, None)[0] == 403


def test_a_page_on_another_address_needs_a_token(tmp_path):
    with pytest.raises(ConfigError, match="token"):
        PageAccess.for_address("0.0.0.0", None)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="16 characters"):
        PageAccess.for_address("0.0.0.0", short)
    with pytest.raises(ConfigError, match="cannot read"):
        PageAccess.for_address("0.0.0.0", tmp_path / "missing")


def test_with_a_token_every_request_must_carry_it_even_from_loopback(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    access = PageAccess.for_address("0.0.0.0", path)
    assert access.refusal("10.0.0.5", f"Bearer {TOKEN}") is None
    assert access.refusal("127.0.0.1", f"bearer {TOKEN}") is None
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "):
        assert access.refusal("127.0.0.1", header)[0] == 401, header
        assert access.refusal("10.0.0.5", header)[0] == 401, header


def test_an_audit_event_shows_who_what_why_and_numbers_only():
    row = audit_row({"id": "e1", "who": "alice", "what": "redrive", "reason": "customer 123456789018 called",
                     "window": {"from": "x"}, "detail": {"subject": "tok_abc"}, "dry_run": True,
                     "counts": {"redriven": 3, "note": "tok_abc", "flag": True}, "at": "2026-01-01T00:00:00Z"})
    assert row == AuditRow(at="2026-01-01T00:00:00Z", who="alice", what="redrive",
                           reason="customer [digits hidden] called", dry_run=True, counts={"redriven": 3})


def test_reason_codes_outside_the_closed_set_show_as_other():
    assert closed_reason("BAD_SIGNATURE") == "BAD_SIGNATURE"
    assert closed_reason("123456789018") == "OTHER"
    assert closed_reason(None) == "OTHER"


def test_the_page_escapes_what_it_shows_and_names_a_section_it_could_not_read():
    view = Overview(prefix="renkei", generated_at=time.time(),
                    components=[ComponentRow("<script>alert(1)</script>", 1, True, "ok", None, 3, 0)],
                    groups=[GroupRow("renkei.hub", "Stable", 1, 0)], dead_letters={"UNKNOWN_KEY": 2},
                    unavailable={"audit": "KafkaConnectionError"})
    page = render_page(view)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "renkei.hub" in page and "UNKNOWN_KEY" in page
    assert "unavailable (KafkaConnectionError)" in page
