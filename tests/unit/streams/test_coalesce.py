"""Group commit of a participant's sends (streams.coalesce): who is stored with whom, and who gets what back."""

from __future__ import annotations

import asyncio

import pytest

from streams.coalesce import SendCoalescer


class Store:
    """A store that records its batches; ``hold`` keeps the next call in flight until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        await self.hold.wait()
        if "bad" in items:
            raise ValueError("no key for the recipient of 'bad'")
        return [f"id-{i}" for i in items]


async def a_send_in_flight() -> tuple[Store, SendCoalescer[str, str], asyncio.Task[list[str]]]:
    """A coalescer whose store of ["a"] is held in flight: what is submitted now queues behind it."""
    store = Store()
    coalescer = SendCoalescer(store)
    store.hold.clear()
    first = asyncio.create_task(coalescer.submit(["a"]))
    await store.entered.wait()
    return store, coalescer, first


async def test_a_lone_send_is_stored_at_once_alone():
    store = Store()
    assert await SendCoalescer(store).submit(["a", "b"]) == ["id-a", "id-b"]
    assert store.batches == [["a", "b"]]


async def test_sends_arriving_while_one_is_stored_go_together_in_order_each_caller_its_own_ids():
    store, coalescer, first = await a_send_in_flight()
    later = [asyncio.create_task(coalescer.submit(items)) for items in (["b"], ["c", "d"], ["e"])]
    await asyncio.sleep(0.01)
    assert store.batches == [["a"]]
    store.hold.set()
    assert await first == ["id-a"]
    assert [await t for t in later] == [["id-b"], ["id-c", "id-d"], ["id-e"]]
    assert store.batches == [["a"], ["b", "c", "d", "e"]] and coalescer.stores == 2


async def test_one_callers_bad_message_fails_that_caller_only():
    store, coalescer, first = await a_send_in_flight()
    good, bad, other = (asyncio.create_task(coalescer.submit([i])) for i in ("b", "bad", "c"))
    await asyncio.sleep(0.01)
    store.hold.set()
    assert await first == ["id-a"] and await good == ["id-b"] and await other == ["id-c"]
    with pytest.raises(ValueError, match="no key"):
        await bad
    assert store.batches == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]  # the batch, then each alone


async def test_a_caller_that_gives_up_before_its_turn_sends_nothing_and_does_not_hold_up_the_others():
    store, coalescer, first = await a_send_in_flight()
    quitter = asyncio.create_task(coalescer.submit(["q"]))
    stayer = asyncio.create_task(coalescer.submit(["s"]))
    await asyncio.sleep(0.01)
    quitter.cancel()
    await asyncio.sleep(0)
    store.hold.set()
    assert await first == ["id-a"] and await stayer == ["id-s"]
    assert quitter.cancelled()
    assert store.batches == [["a"], ["s"]]


async def test_the_first_caller_giving_up_does_not_cancel_the_store_of_the_others():
    store, coalescer, first = await a_send_in_flight()
    first.cancel()  # the store of "a" is shielded: it finishes for nobody
    second = asyncio.create_task(coalescer.submit(["b"]))
    await asyncio.sleep(0.01)
    store.hold.set()
    assert await second == ["id-b"]
    assert store.batches == [["a"], ["b"]]
