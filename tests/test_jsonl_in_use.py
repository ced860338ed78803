"""The log writer's files, one user at a time (persistence/jsonl/in_use.py): a free
turn taken at once, turns handed over in order, and a user cancelled while it waits,
or just as its turn came, never keeps the files from the next."""

from __future__ import annotations

import asyncio

from bamboo_session.persistence.jsonl.in_use import FilesInUse


async def test_a_free_turn_is_taken_at_once_and_not_twice() -> None:
    in_use = FilesInUse()
    assert in_use.take_now()
    assert not in_use.take_now()
    in_use.give_back()
    assert in_use.take_now()


async def test_turns_go_in_the_order_asked_for() -> None:
    in_use = FilesInUse()
    order: list[int] = []

    async def user(n: int) -> None:
        async with in_use:
            order.append(n)
            await asyncio.sleep(0)

    assert in_use.take_now()
    users = [asyncio.ensure_future(user(n)) for n in range(3)]
    await asyncio.sleep(0)  # each asks for its turn
    assert not in_use.take_now()  # held, for the writer and then for them
    in_use.give_back()
    await asyncio.gather(*users)
    assert order == [0, 1, 2]
    assert in_use.take_now()  # free once the last gave it back


async def test_a_user_cancelled_while_it_waits_does_not_keep_the_files() -> None:
    in_use = FilesInUse()
    assert in_use.take_now()
    waiting = asyncio.ensure_future(in_use.take())
    after = asyncio.ensure_future(in_use.take())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    in_use.give_back()
    await after  # the next one's turn came
    in_use.give_back()
    assert in_use.take_now()


async def test_a_turn_handed_to_a_user_cancelled_before_it_ran_goes_to_the_next() -> None:
    in_use = FilesInUse()
    assert in_use.take_now()
    handed = asyncio.ensure_future(in_use.take())
    after = asyncio.ensure_future(in_use.take())
    await asyncio.sleep(0)
    in_use.give_back()  # handed over to the first waiter, not yet run
    handed.cancel()  # cancelled before it ran: it passes the turn on
    await asyncio.gather(handed, return_exceptions=True)
    assert handed.cancelled()
    await after
    in_use.give_back()
    assert in_use.take_now()
