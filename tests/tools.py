"""Tests that need a tool the machine may lack (Chromium, Java, a librdkafka client): skipped on a
developer's machine, failed under CI.

A skipped test is a test that did not run; in CI that must not pass silently.  ``.ci/run`` sets
``RENKEI_CI_REQUIRE=1``, and then :func:`require` fails the test with the reason instead of skipping
it.  Call it first thing in the test (or in its fixture) with why the test cannot run, or ``None``::

    def test_browser(...):
        require(browser_missing())

A skip for any other reason (a broker that behaves differently, a case that does not apply) stays a
skip: use ``pytest.skip`` for those.
"""

from __future__ import annotations

import os

import pytest

CI_FLAG = "RENKEI_CI_REQUIRE"


def require(missing: str | None) -> None:
    """Skip (or, with ``RENKEI_CI_REQUIRE=1``, fail) the current test when ``missing`` names what is missing."""
    if missing is None:
        return
    if os.environ.get(CI_FLAG) == "1":
        pytest.fail(f"{missing} (required here: {CI_FLAG}=1)", pytrace=False)
    pytest.skip(missing)
