"""The log writer's files, one user at a time (:class:`FilesInUse`): a group commit's
steps, or a background sync handing out descriptors (``os`` mode's rounds, the WAL's
retirement, the close), even while a step runs on a thread.

A lock whose free turn is taken without an await (``take_now``): the writer takes it
at every group commit, where an ``asyncio.Lock`` under ``async with`` ran two
coroutines and, once it had had a waiter, a generator over its waiters (about 60
bytecode instructions a commit: bench/RESULTS.md, the forty-fourth round). Turns are
handed over in the order asked for, as ``asyncio.Lock``'s are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType


class FilesInUse:
    """Held by one user at a time; the others wait for their turn, first come first."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        # Waiting for a turn, in order. Only while held: a turn given back goes to the
        # first of them (still held, on its behalf), and is free only when none waits.
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take the files if they are free (no await); whether they were."""
        if self._held:
            return False
        self._held = True
        return True

    async def take(self) -> None:
        """Take the files, once the users before this one gave them back."""
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over as this was cancelled: to the next one
            else:
                with contextlib.suppress(ValueError):  # (a give_back may have dropped it)
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """The files to the first user still waiting, else free."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # (one cancelled meanwhile is passed over)
                waiter.set_result(None)
                return
        self._held = False

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.give_back()
