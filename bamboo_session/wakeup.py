"""Wakeup: one task's wait until another part of the program says there is something
to do, for the loops of every layer (the JSONL writer, a store's subscription, a
session's actor, the client's sender and reader).

Its own future rather than an :class:`asyncio.Event`: ``Event.wait()`` asks for the
running loop at every wait, which on Python 3.11 is a ``getpid()`` system call, and
these waits come once per group commit, per batch delivered, per burst of requests. A
Wakeup asks for the loop once, at its first wait.

It lives in the root package, beside the layers rather than in one of them: the
protocol core imports no asyncio, and ``protocol.client`` would bring the whole client
(websockets included) into every import of a store.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """One waiter at a time: :meth:`wait` returns once :meth:`set` is called after it
    began. A ``set()`` while nobody waits is not remembered (the waiter checks for work
    before it waits, with no await in between)."""

    __slots__ = ("_loop", "_waiter")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def unwoken(self) -> bool:
        """Whether a task waits and nobody has woken it since it began."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def set(self) -> bool:
        """Wakes the waiter; whether there is one (woken now, or already but not yet
        running)."""
        waiter = self._waiter
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_result(None)
        return True
