"""Bank batch files: parsing, validation, reject reasons and rendering (pure, no broker)."""

from __future__ import annotations

from connectors.bankfiles import parse_file, render_file, write_atomically
from connectors.runtime import RetryPolicy

MN = "123456789018"  # check-digit-valid test number (not a real person's)


def reg(records: list[list[str]], count: int | None = None, bank: str = "9001") -> str:
    lines = [f"1,REG,{bank},20250401,0001"] + ["2," + ",".join(r) for r in records]
    lines += [f"8,{len(records) if count is None else count}", "9"]
    return "\r\n".join(lines) + "\r\n"


CONSENT = ["PERSON", "SIGNED_FORM_AT_COUNTER", "2025-04-01T10:15:00+09:00", "FORM-0001"]
GOOD = ["1", "R", "cust-1", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ ﾀﾛｳ", *CONSENT]


def test_valid_check_digit_fixture():
    from infra.domain.validation import validate_my_number

    assert validate_my_number(MN) == MN


def test_good_records_flow_and_bad_ones_are_rejected_with_line_and_reason():
    parsed = parse_file(reg([GOOD,
                             ["2", "X", "cust-2", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", *CONSENT],
                             ["3", "R", "cust-3", "123456789012", "123", "1", "1234567", "ﾔﾏﾀﾞ", *CONSENT],
                             ["4", "R", "cust-4", MN, "12", "1", "1234567", "ﾔﾏﾀﾞ", *CONSENT],
                             ["5", "R", "cust-5", MN, "123", "1", "1234567", "山田", *CONSENT],
                             ["1", "R", "cust-6", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", *CONSENT],
                             ["7", "D", "cust-7", MN, "", "", "", "", *CONSENT]]), "REG", "9001")
    assert parsed.fatal is None
    assert [r.seq for r in parsed.records] == ["1", "7"]
    assert parsed.records[0].fields["account"]["holder_kana"] == "ヤマダ タロウ"
    assert parsed.records[0].fields["consent"]["method"] == "SIGNED_FORM_AT_COUNTER"
    assert parsed.records[0].fields["consent"]["given_at"].isoformat() == "2025-04-01T01:15:00+00:00"
    assert parsed.records[1].fields["account"] is None
    reasons = {line: (code, msg) for line, code, msg in parsed.rejects}
    assert reasons[3] == ("INVALID_FIELD", "operation: must be R (register), C (change) or D (delete)")
    assert reasons[4] == ("INVALID_FIELD", "my_number: check digit does not match")
    assert reasons[5][1].startswith("account.branch_code")
    assert reasons[6][1].startswith("account.holder_kana")
    assert reasons[7][0] == "DUPLICATE"
    # rejects never echo a value
    assert all(MN not in msg and "山田" not in msg for _, _, msg in parsed.rejects)


def test_trailer_count_mismatch_rejects_the_whole_file():
    parsed = parse_file(reg([GOOD], count=2), "REG", "9001")
    assert parsed.fatal is not None and parsed.fatal[1] == "COUNT_MISMATCH"
    assert parsed.records == []


def test_missing_trailer_wrong_bank_and_no_header_are_fatal():
    assert parse_file("1,REG,9001,20250401,1\r\n2," + ",".join(GOOD) + "\r\n", "REG", "9001").fatal[1] == "MALFORMED"
    assert parse_file(reg([GOOD], bank="9002"), "REG", "9001").fatal[1] == "NOT_THIS_BANK"
    assert parse_file("2," + ",".join(GOOD) + "\r\n8,1\r\n9\r\n", "REG", "9001").fatal[1] == "MALFORMED"


def test_numbering_and_answer_records():
    num = "1,NUM,9001,20250401,7\r\n2,1,cust-1," + MN + ",9002 9003 9002\r\n2,2,cust-2," + MN + ",\r\n8,2\r\n9\r\n"
    parsed = parse_file(num, "NUM", "9001")
    assert parsed.records[0].fields["bank_codes"] == ["9002", "9003"]
    assert parsed.rejects[0][0] == 3
    ans = "1,ANS,9001,20250401,9\r\n2,abc,CONFIRMED,Y\r\n2,def,MAYBE,Y\r\n8,2\r\n9\r\n"
    parsed = parse_file(ans, "ANS", "9001")
    assert [r.fields["result"] for r in parsed.records] == ["CONFIRMED"]
    assert parsed.rejects[0][:2] == (3, "INVALID_FIELD")


def test_an_answer_carries_the_holder_check():
    """The bank's answer says whether its customer record for the person holds the account: without the flag
    the line is refused, and CONFIRMED for an account the person does not hold becomes NOT_HOLDER."""
    ans = ("1,ANS,9001,20250401,9\r\n2,a,CONFIRMED,Y\r\n2,b,CONFIRMED,N\r\n2,c,ACCOUNT_CLOSED,N\r\n"
           "2,d,NOT_HOLDER,N\r\n2,e,CONFIRMED,\r\n2,f,CONFIRMED\r\n2,g,NOT_HOLDER,Y\r\n8,7\r\n9\r\n")
    parsed = parse_file(ans, "ANS", "9001")
    assert {r.fields["reference"]: r.fields["result"] for r in parsed.records} == {
        "a": "CONFIRMED", "b": "NOT_HOLDER", "c": "NOT_HOLDER", "d": "NOT_HOLDER"}
    assert [(line, code) for line, code, _ in parsed.rejects] == [
        (6, "INVALID_FIELD"), (7, "MALFORMED"), (8, "INVALID_FIELD")]


def test_a_registration_without_the_persons_consent_is_rejected():
    no_consent = ["1", "R", "cust-1", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", "", "", "", ""]
    unknown_method = ["2", "R", "cust-2", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", "PERSON", "PHONE_CALL",
                      "2025-04-01T10:15:00+09:00", "F-2"]
    no_offset = ["3", "R", "cust-3", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", "PERSON", "ONLINE_BANKING",
                 "2025-04-01T10:15:00", "F-3"]
    future = ["4", "R", "cust-4", MN, "123", "1", "1234567", "ﾔﾏﾀﾞ", "PERSON", "ONLINE_BANKING",
              "2999-01-01T00:00:00+09:00", "F-4"]
    parsed = parse_file(reg([no_consent, unknown_method, no_offset, future]), "REG", "9001")
    assert parsed.records == []
    assert [msg.split(":")[0] for _, _, msg in parsed.rejects] == [
        "consent.given_by", "consent.method", "consent.given_at", "consent.given_at"]


def test_render_round_trips_through_the_parser_shape(tmp_path):
    text = render_file("ANS", "9001", "42", [["ref-1", "CONFIRMED", "Y"]])
    assert text.splitlines() == ["1,ANS,9001," + text.splitlines()[0].split(",")[3] + ",42", "2,ref-1,CONFIRMED,Y",
                                 "8,1", "9"]
    assert parse_file(text, "ANS", "9001").records[0].fields == {"reference": "ref-1", "result": "CONFIRMED"}
    target = tmp_path / "ANS_1.csv"
    write_atomically(target, text)
    assert target.read_bytes() == text.encode() and not list(tmp_path.glob("*.tmp"))


def test_retry_backoff_is_bounded():
    policy = RetryPolicy(max_attempts=4, base_s=0.5, cap_s=3.0)
    assert [policy.ceiling(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.delay(n, rng=lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]  # jitter drawn 0: the ceiling
    assert [policy.delay(n, rng=lambda: 1.0) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]  # drawn 1: half of it
    assert all(1.0 <= policy.delay(3) <= 2.0 for _ in range(200))


def _file(kind: str, records: list[list[str]], bank: str = "9001") -> str:
    lines = [f"1,{kind},{bank},20250401,7"] + ["2," + ",".join(r) for r in records] + [f"8,{len(records)}", "9"]
    return "\r\n".join(lines) + "\r\n"


def test_a_counter_numbering_names_this_banks_own_outcome_when_it_is_named():
    parsed = parse_file(_file("NUM", [["1", "c-1", MN, "9001 9002", "LINKED", "2"],
                                      ["2", "c-2", MN, "9002", "", ""],
                                      ["3", "c-3", MN, "9001", "", ""],  # named, no outcome
                                      ["4", "c-4", MN, "9002", "LINKED", "1"],  # an outcome, not named
                                      ["5", "c-5", MN, "9001", "LINKED", "0"],  # LINKED needs an account
                                      ["6", "c-6", MN, "9001", "DONE", "1"]]), "NUM", "9001")
    assert [(r.seq, r.fields["own"]) for r in parsed.records] == [
        ("1", {"bank_code": "9001", "status": "LINKED", "accounts_linked": 2}), ("2", None)]
    assert [(line, code) for line, code, _ in parsed.rejects] == [(4, "INVALID_FIELD"), (5, "INVALID_FIELD"),
                                                                 (6, "INVALID_FIELD"), (7, "INVALID_FIELD")]


def test_lookup_applications_of_an_heir_and_of_a_depositor():
    parsed = parse_file(_file("LAP", [
        ["A-1", "I", "c-1", MN, "spouse", "DEATH_CERTIFICATE:DC-1 FAMILY_REGISTER:FR-2", "2025-10-01", "", "", ""],
        ["A-2", "D", "c-1", MN, "", "", "", "2026-NOTO-01", "17204", "9000 9002"],
        ["A-3", "I", "c-1", MN, "SPOUSE", "LEGAL_HEIR_INFORMATION:LH-1", "2025-10-01", "", "", ""],
        ["A-4", "D", "c-1", MN, "", "", "", "2026-NOTO-01", "17204", ""],
        ["A-5", "X", "c-1", MN, "", "", "", "", "", ""]]), "LAP", "9001")
    heir, depositor = (r.fields for r in parsed.records)
    assert heir["kind"] == "INHERITANCE" and heir["application"]["relationship"] == "SPOUSE"
    assert [e["kind"] for e in heir["application"]["evidence"]] == ["DEATH_CERTIFICATE", "FAMILY_REGISTER"]
    assert heir["application"]["application_ref"] == "A-1"
    assert depositor["kind"] == "DISASTER" and depositor["application"]["designated_bank_codes"] == ["9000", "9002"]
    assert [(line, code) for line, code, _ in parsed.rejects] == [(4, "INVALID_FIELD"), (5, "INVALID_FIELD"),
                                                                 (6, "INVALID_FIELD")]
    assert all(MN not in msg for _, _, msg in parsed.rejects)


def test_a_lookup_answer_has_a_record_per_account_and_one_bad_record_holds_back_its_reference():
    ref, other = "6f1c1e4e-2f4a-4b8a-9d7e-1b2c3d4e5f60", "7f1c1e4e-2f4a-4b8a-9d7e-1b2c3d4e5f60"
    parsed = parse_file(_file("LAN", [[ref, "101", "1", "1234567", "ﾔﾏﾀﾞ"], [ref, "102", "4", "7654321", "ﾔﾏﾀﾞ"],
                                      [other, "", "", "", ""], [other, "1", "1", "1", "ﾔﾏﾀﾞ"]]), "LAN", "9001")
    assert [(r.seq, r.fields["account"] and r.fields["account"]["account_type"]) for r in parsed.records] == [
        (ref, "ORDINARY"), (ref, "SAVINGS"), (other, None)]
    assert parsed.rejected_refs == {other}  # so no part of other's answer is sent
    acks = parse_file(_file("NAK", [[ref, "LINKED", "2"], [other, "NO_ACCOUNT", "1"]]), "NAK", "9001")
    assert [r.fields["ack"]["status"] for r in acks.records] == ["LINKED"]
    assert acks.rejects[0][1] == "INVALID_FIELD"


def test_a_bank_channel_handles_every_type_the_simulator_would_act_on():
    """Under a lease the simulator parks every such message for the bank: the connector must take each one."""
    from connectors.bank_sim import HANDLERS
    from connectors.bankfiles import BankFiles
    from connectors.bankhttp import BankHttp
    from connectors.httpsig import ChannelKey, ChannelKeys

    keys = ChannelKeys("bank-9001", (ChannelKey("bank-9001.1", b"k" * 32),))
    for adapter in (BankFiles("bank-9001", "9001", "/nonexistent"),
                    BankHttp("bank-9001", "9001", "https://bank.example", keys=keys)):
        assert set(HANDLERS) <= set(adapter.handlers()), adapter.name
