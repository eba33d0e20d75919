"""The CI flag: a missing tool skips a test on a developer's machine and fails it under CI."""

from __future__ import annotations

import pytest

from tests.tools import CI_FLAG, require


def test_nothing_missing_runs(monkeypatch):
    monkeypatch.setenv(CI_FLAG, "1")
    require(None)  # returns: the test goes on


def test_a_missing_tool_skips_without_the_flag(monkeypatch):
    monkeypatch.delenv(CI_FLAG, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        require("chromium is not installed")


def test_a_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv(CI_FLAG, "1")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed.*RENKEI_CI_REQUIRE=1"):
        require("chromium is not installed")
