"""The one poll-until helper (``infra.tools.harness.eventually``) that the tools and the integration tests share."""

from __future__ import annotations

import time

import pytest

from infra.tools.harness import eventually


async def test_returns_the_first_truthy_value_of_an_async_check():
    seen = []

    async def check():
        seen.append(len(seen))
        return {"rows": len(seen)} if len(seen) == 3 else None

    assert await eventually(check, timeout=5, interval=0.001) == {"rows": 3}
    assert seen == [0, 1, 2]  # polled until true, and not once more


async def test_takes_a_plain_function_too():
    calls = iter([0, [], "", 7])
    assert await eventually(lambda: next(calls), timeout=5, interval=0.001) == 7


async def test_times_out_saying_what_it_awaited_and_never_the_values_seen():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^timed out after 0\.2 s waiting for the bank's answer$") as caught:
        await eventually(lambda: [] if time.monotonic() - started < 60 else None, timeout=0.2, interval=0.01,
                         what="the bank's answer")
    assert 0.2 <= time.monotonic() - started < 5
    assert "[]" not in str(caught.value)


async def test_checks_once_more_at_the_deadline_before_giving_up():
    """A condition met during the last sleep is not reported as a timeout."""
    started = time.monotonic()

    def check():
        return time.monotonic() - started > 0.15

    assert await eventually(check, timeout=0.1, interval=0.2) is True


async def test_an_error_in_the_check_is_not_swallowed():
    def check():
        raise LookupError("no such table")

    with pytest.raises(LookupError, match="no such table"):
        await eventually(check, timeout=5)
