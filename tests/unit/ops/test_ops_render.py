"""What the ops tools show of a record: metadata only, never a body, a key or any part of a subject token."""

from __future__ import annotations

import json
from collections import namedtuple

from infra.ops import renkei_headers, subject_shown
from infra.ops.dlq import dead_letter, redrive_headers
from infra.ops.inspection import describe_record
from infra.ops.lag import lag_of
from schemas import codec
from tests.unit.envelope_world import World

Rec = namedtuple("Rec", "partition offset timestamp key value headers")


def test_a_subject_shows_only_that_there_is_one() -> None:
    assert subject_shown("abcdefghij") == "present" and subject_shown("") == "none"


def test_only_renkei_headers_are_shown() -> None:
    assert renkei_headers([("renkei.reason", b"EXPIRED"), ("traceparent", b"x"), ("renkei.detail", b"\xff")]) == {
        "renkei.reason": "EXPIRED", "renkei.detail": "\ufffd"}
    assert renkei_headers(None) == {}


def test_describe_record_shows_envelope_metadata_and_sizes_only() -> None:
    world = World()
    subject = world.token("agency-a")
    value = world.seal("agency-a", "registry", "provision.inquiry")
    out = describe_record(Rec(0, 3, 1_743_465_600_000, subject.encode(), value, [("renkei.redrive", b"7")]))
    env = out["envelope"]
    assert out["decodable"] is True and out["key_bytes"] == len(subject) and out["value_bytes"] == len(value)
    assert env["subject"] == "present" and env["countersigned"] is False and env["hub_key_id"] is None
    assert env["type"] == "provision.inquiry" and env["sender"] == "agency-a" and env["recipient"] == "registry"
    body = codec.decode(value, "envelope")["body"]
    assert env["body_bytes"] == len(body)
    text = json.dumps(out, default=str, ensure_ascii=False)
    assert subject[:4] not in text and body.hex()[:32] not in text and out["headers"] == {"renkei.redrive": "7"}
    assert env["forwarded_leg"] is False


def test_a_forwarded_leg_shows_its_procedure_only_to_its_recipient() -> None:
    """On a leg the procedure and the outcome are sealed: the ops view of an inbox shows neither."""
    import uuid

    from infra.crypto.envelope import LegIds

    world = World()
    sealed = world.seal("agency-a", "registry", "provision.inquiry", procedure="child-allowance")
    assert describe_record(Rec(0, 0, 0, None, sealed, []))["envelope"]["procedure"] == "child-allowance"  # ingress
    verified = world.ingress.verify(sealed)
    leg = world.hub.forward(verified, world.token("registry"), leg=LegIds(str(uuid.uuid4()), str(uuid.uuid4())))
    env = describe_record(Rec(0, 0, 0, None, leg, []))["envelope"]
    assert env["forwarded_leg"] is True and env["procedure"] is None and "outcome" not in env


def test_describe_record_marks_non_envelopes_with_the_codec_reason() -> None:
    out = describe_record(Rec(0, 0, 0, None, b"garbage", []))
    assert out["decodable"] is False and out["reason_code"] == "MALFORMED" and "envelope" not in out
    assert out["key_bytes"] is None and "garbage" not in json.dumps(out)


def test_dead_letter_metadata_from_headers_without_the_value() -> None:
    rec = Rec(0, 12, 1_743_465_600_000, b"k", b"original bytes",
              [("renkei.reason", b"REPLAYED"), ("renkei.src.partition", b"3"), ("renkei.src.offset", b"x"),
               ("renkei.sender", b"bank-1"), ("renkei.redrive.count", b"2")])
    d = dead_letter(rec)
    assert (d.reason_code, d.sender, d.source_partition, d.source_offset, d.redrive_count) == (
        "REPLAYED", "bank-1", 3, None, 2)
    assert "original bytes" not in json.dumps(d.to_json())


def test_redrive_headers_count_and_keep_history() -> None:
    first = dict(redrive_headers(Rec(0, 5, 0, None, b"", []), "ev"))
    assert first == {"renkei.redrive": b"5", "renkei.redrive.count": b"1", "renkei.redrive.history": b"5",
                     "renkei.ops.event": b"ev"}
    again = dict(redrive_headers(Rec(0, 9, 0, None, b"", list(first.items())), "ev2"))
    assert again["renkei.redrive.count"] == b"2" and again["renkei.redrive.history"] == b"5,9"


def test_lag_is_none_without_a_commit_and_never_negative() -> None:
    assert lag_of(None, 10) is None and lag_of(-1, 10) is None
    assert lag_of(4, 7) == 3 and lag_of(9, 7) == 0
