"""Wakeup on its own: one waiter woken by set(), a set() with nobody waiting forgotten,
and a cancelled wait leaving nobody waiting."""

from __future__ import annotations

import asyncio

import pytest

from bamboo_session.wakeup import Wakeup


async def test_set_wakes_the_waiter_and_says_so() -> None:
    wakeup = Wakeup()
    waiting = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert wakeup.set() and wakeup.set()  # woken, not yet running: still counts as waiting
    await waiting
    assert not wakeup.set()  # nobody waits any more


async def test_a_set_with_nobody_waiting_is_not_remembered() -> None:
    wakeup = Wakeup()
    assert not wakeup.set()
    waiting = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    wakeup.set()
    await waiting


async def test_a_cancelled_wait_leaves_nobody_waiting() -> None:
    wakeup = Wakeup()
    waiting = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not wakeup.set()
