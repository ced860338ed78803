"""server/deadlines.py: a Deadline behaves as asyncio.timeout_at does, case by case
(each test runs both, on a real loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from bamboo_session.server.deadlines import Deadline

Make = Callable[[asyncio.AbstractEventLoop, float], AbstractAsyncContextManager[object]]
KINDS: dict[str, Make] = {
    "asyncio.timeout_at": lambda loop, when: asyncio.timeout_at(when),
    "Deadline": Deadline,
}


@pytest.fixture(params=list(KINDS))
def deadline(request: pytest.FixtureRequest) -> Make:
    return KINDS[request.param]


async def test_a_block_still_waiting_at_its_deadline_raises_timeout_error(deadline: Make) -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    with pytest.raises(TimeoutError):
        async with deadline(loop, loop.time()):
            await never
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its cancellation taken back


async def test_a_block_done_in_time_leaves_its_task_running(deadline: Make) -> None:
    loop = asyncio.get_running_loop()
    async with deadline(loop, loop.time() + 3600):
        await asyncio.sleep(0)
    async with deadline(loop, loop.time()):
        pass  # nothing awaited: done before the timer could fire
    for _ in range(5):  # turns of the loop past both deadlines: nothing cancels us
        await asyncio.sleep(0)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_cancellation_from_outside_goes_through_as_cancelled(deadline: Make) -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def waiting() -> None:
        async with deadline(loop, loop.time() + 3600):
            entered.set()
            await loop.create_future()

    task = asyncio.ensure_future(waiting())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_asked_for_with_the_deadline_is_not_a_timeout(deadline: Make) -> None:
    loop = asyncio.get_running_loop()

    async def cancelled_and_late() -> None:
        async with deadline(loop, loop.time()):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # someone else's cancellation, as the deadline comes
            await loop.create_future()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(cancelled_and_late())


def test_a_deadline_outside_a_task_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        entering = _enter_outside(loop)  # driven by hand: no task of the loop runs it
        with pytest.raises(RuntimeError, match="inside a task"):
            entering.send(None)
    finally:
        loop.close()


async def _enter_outside(loop: asyncio.AbstractEventLoop) -> None:
    async with Deadline(loop, loop.time()):
        pass
