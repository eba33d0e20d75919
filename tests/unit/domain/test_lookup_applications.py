"""Lookup applications and the disaster registry's rules, without a broker (infra.domain.lookup_applications, infra.domain.disasters)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from connectors.jlis_sim import death_confirmed
from infra.core.errors import Reason, Rejection, ValidationError
from infra.domain.disasters import Disaster, check_application, covers, today_jst, validate_area_code, validate_areas
from infra.domain.lookup_applications import (
    parse_evidence,
    validate_disaster_application,
    validate_inheritance_application,
)

TODAY = date(2026, 1, 10)
NOTO = Disaster("2026-NOTO-01", "能登地震", ("17", "15202"), date(2026, 1, 1), date(2026, 3, 31))


def heir(**changes) -> dict:
    return {"application_ref": "HEIR-1", "relationship": "child", "date_of_death": "2025-12-24",
            "evidence": ["death-certificate:DC-1", {"kind": "FAMILY_REGISTER", "reference": "FR-1"}], **changes}


def test_an_heirs_application_is_normalised():
    body = validate_inheritance_application(heir(), today=TODAY)
    assert body["relationship"] == "CHILD" and body["date_of_death"] == date(2025, 12, 24)
    assert body["evidence"] == [{"kind": "DEATH_CERTIFICATE", "reference": "DC-1"},
                                {"kind": "FAMILY_REGISTER", "reference": "FR-1"}]
    assert body["applied_at"].tzinfo is not None


@pytest.mark.parametrize("changes, field", [
    ({"relationship": "NEIGHBOUR"}, "relationship"),
    ({"relationship": None}, "relationship"),
    ({"evidence": []}, "evidence"),
    ({"evidence": ["legal-heir-information:LH-1"]}, "evidence"),  # shows the heirs, not the death
    ({"evidence": ["death-certificate"]}, "evidence"),
    ({"evidence": ["death-certificate:山田"]}, "evidence"),  # a reference, never a name
    ({"evidence": ["passport:P-1"]}, "evidence"),
    ({"date_of_death": "2026-02-01"}, "date_of_death"),  # in the future
    ({"date_of_death": "yesterday"}, "date_of_death"),
    ({"application_ref": ""}, "application_ref"),
])
def test_a_bad_heirs_application_names_the_field_never_the_value(changes, field):
    with pytest.raises(ValidationError) as err:
        validate_inheritance_application(heir(**changes), today=TODAY)
    assert err.value.field == field and err.value.code == "INVALID_FIELD"
    assert "山田" not in str(err.value)


def test_a_disaster_application_needs_a_designated_bank_and_an_area():
    body = validate_disaster_application({"application_ref": "D-1", "disaster_id": "2026-NOTO-01",
                                          "area_code": "17204", "designated_bank_codes": ["9002", "9000", "9002"]})
    assert body["designated_bank_codes"] == ["9000", "9002"]
    for changes, field in (({"designated_bank_codes": []}, "designated_bank_codes"),
                           ({"designated_bank_codes": ["90"]}, "designated_bank_codes"),
                           ({"area_code": "1720"}, "area_code"), ({"area_code": "99"}, "area_code"),
                           ({"disaster_id": "-x"}, "disaster_id"), ({"disaster_id": "a" * 41}, "disaster_id")):
        with pytest.raises(ValidationError) as err:
            validate_disaster_application({"application_ref": "D-1", "disaster_id": "2026-NOTO-01",
                                           "area_code": "17204", "designated_bank_codes": ["9000"], **changes})
        assert err.value.field == field


def test_evidence_on_a_command_line_or_in_a_file():
    assert parse_evidence("resident-record-removal:RR-9") == {"kind": "RESIDENT_RECORD_REMOVAL", "reference": "RR-9"}
    with pytest.raises(ValidationError):
        parse_evidence("death-certificate:")


# --- the disaster registry ------------------------------------------------------------------------


def test_areas_a_disaster_covers():
    assert covers(("17",), "17204") and covers(("17",), "17")
    assert covers(("15202",), "15202") and not covers(("15202",), "15")  # a city does not cover its prefecture
    assert not covers(("17",), "15202")
    assert validate_areas(["17", "17", "15202"]) == ("17", "15202")
    for bad in ("", "1", "170", "00", "48", "1720A"):
        with pytest.raises(ValidationError):
            validate_area_code(bad)
    with pytest.raises(ValidationError):
        validate_areas([])


@pytest.mark.parametrize("disaster, area, on, reason", [
    (None, "17204", TODAY, Reason.UNKNOWN_DISASTER),
    (NOTO, "17204", date(2026, 4, 1), Reason.DISASTER_EXPIRED),  # the day after the period
    (NOTO, "17204", date(2025, 12, 31), Reason.DISASTER_EXPIRED),  # before it
    (NOTO, "15100", TODAY, Reason.OUTSIDE_DISASTER_AREA),
])
def test_an_application_outside_a_declared_disaster_is_refused(disaster, area, on, reason):
    with pytest.raises(Rejection) as err:
        check_application(disaster, area=area, on=on)
    assert err.value.reason is reason


def test_an_application_inside_a_declared_disaster_stands_on_both_ends_of_its_period():
    for on in (date(2026, 1, 1), date(2026, 3, 31)):
        assert check_application(NOTO, area="15202", on=on) is NOTO


def test_the_disaster_calendar_is_japans():
    # 2026-01-01 00:30 in Tokyo is still 2025-12-31 in UTC
    assert today_jst(datetime(2025, 12, 31, 15, 30, tzinfo=UTC)) == date(2026, 1, 1)
    assert today_jst(datetime(2025, 12, 31, 14, 30, tzinfo=UTC)) == date(2025, 12, 31)


def test_the_resident_record_confirms_a_death_on_its_stated_date_only():
    died = date(2025, 12, 24)
    assert death_confirmed(died, died)
    assert not death_confirmed(None, died)  # alive, or unknown to the resident record
    assert not death_confirmed(died - timedelta(days=1), died)
