"""Pure parts of the ops tools: time parsing and window filtering."""

from __future__ import annotations

import pytest

from infra.core.errors import ConfigError
from infra.ops import SKIP, STOP, TAKE, Window, classify, iso, parse_time


@pytest.mark.parametrize(("text", "ms"), [
    ("2025-04-01T00:00:00Z", 1_743_465_600_000),
    ("2025-04-01T09:00:00+09:00", 1_743_465_600_000),
    ("2025-04-01T09:00:00.250+09:00", 1_743_465_600_250),
    ("1743465600000", 1_743_465_600_000),
    (" 1743465600000 ", 1_743_465_600_000),
])
def test_parse_time_accepts_iso_with_offset_and_epoch_ms(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_parse_time_now_uses_the_given_clock() -> None:
    assert parse_time("now", now_ms=42) == 42


def test_parse_time_refuses_a_time_without_offset_rather_than_guessing_the_zone() -> None:
    with pytest.raises(ConfigError, match="no UTC offset"):
        parse_time("2025-04-01T09:00:00")


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01T00:00Z", "-5", ""])
def test_parse_time_refuses_garbage_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="ISO-8601"):
        parse_time(text)


def test_iso_renders_utc_milliseconds_and_hides_unknown_timestamps() -> None:
    assert iso(1_743_465_600_250) == "2025-04-01T00:00:00.250Z"
    assert iso(-1) is None and iso(None) is None


def test_window_is_half_open_in_time_and_offsets() -> None:
    w = Window(start_ms=1000, end_ms=2000, from_offset=5, to_offset=9)
    assert w.contains(1000, 5) and w.contains(1999, 8)
    assert not w.contains(999, 6) and not w.contains(2000, 6)
    assert not w.contains(1500, 4) and not w.contains(1500, 9)


def test_open_ended_window_contains_everything_after_its_start() -> None:
    assert Window(start_ms=10).contains(10**15, 10**9)
    assert Window().contains(0, 0)


@pytest.mark.parametrize("kwargs", [dict(start_ms=5, end_ms=5), dict(start_ms=6, end_ms=5),
                                    dict(from_offset=3, to_offset=3)])
def test_empty_windows_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="empty"):
        Window(**kwargs)


def test_classify_takes_skips_and_stops_only_past_end_plus_skew() -> None:
    w = Window(start_ms=1000, end_ms=2000)
    assert classify(w, 500, 0, skew_ms=100) == SKIP
    assert classify(w, 1500, 1, skew_ms=100) == TAKE
    # A later timestamp inside the skew margin may be followed by in-window records: keep scanning.
    assert classify(w, 2050, 2, skew_ms=100) == SKIP
    assert classify(w, 2100, 3, skew_ms=100) == STOP
    assert classify(Window(start_ms=0, to_offset=4), 1, 4) == STOP


def test_scan_of_an_unordered_partition_selects_exactly_the_window() -> None:
    w = Window(start_ms=1000, end_ms=2000)
    stamps = [900, 1000, 2010, 1999, 1500, 2200, 1700, 5000, 1800]
    taken = []
    for offset, ts in enumerate(stamps):
        verdict = classify(w, ts, offset, skew_ms=300)
        if verdict == STOP:
            break
        if verdict == TAKE:
            taken.append(offset)
    # 1700 (offset 6) is after 2200 but within the skew; 1800 comes after 5000, past end + skew.
    assert taken == [1, 3, 4, 6]


def test_window_json_names_both_forms() -> None:
    assert Window(start_ms=1_743_465_600_000, to_offset=7).to_json() == {
        "from": "2025-04-01T00:00:00.000Z", "to": None, "from_ms": 1_743_465_600_000, "to_ms": None,
        "from_offset": None, "to_offset": 7}
