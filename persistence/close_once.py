"""CloseOnce: a store's close, run once however many times it is called, each call
returning only once that one close has ended."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class CloseOnce:
    """The first call runs the close; a call that comes while it runs waits for its end
    (however it ends: done, failed or cancelled, each of the stores' closes releases
    what it holds on the way out), so that whoever awaited ``close()`` may reopen the
    store's files, or exit, at once; a call after the end returns at once."""

    __slots__ = ("_ended", "started")

    def __init__(self) -> None:
        self.started = False
        self._ended = asyncio.Event()

    async def run(self, close: Callable[[], Awaitable[None]]) -> None:
        if self.started:
            # Its outcome is the first caller's to hear: this one only waits for it.
            await self._ended.wait()
            return
        self.started = True
        try:
            await close()
        finally:
            self._ended.set()
