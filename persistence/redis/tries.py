"""The pub/sub listener's tries to connect (listener.py): the wait before each, and the
watches that found the connection down and wait for one.

- After a lost connection the listener waits a step of its backoff before each try
  (:meth:`Tries.back_off`). A watch that finds the connection down does not wait out
  that step: it has the next try made now (though never sooner than the backoff's
  first step after the last try) and waits for it (:meth:`Tries.next_one`): connected,
  it goes on; failed, it fails with the try's reason (Redis's address and why).
- The watches that come while a try is due share it; one that comes while a try is
  under way shares it if it connects, else waits for the next one (a failure begun
  before the watch asked says nothing of Redis since): a crowd makes one or two.
- :meth:`Tries.close` fails every watch still waiting, at once: the store is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from ..base import StorageError
from .pool import described

Outcome = asyncio.Future[str | None]  # what a try told its watches: None, or why it failed
CLOSING: Final = "the store is closing"


class Tries:
    """Tries to connect of one listener, and the watches waiting for them."""

    def __init__(self, wait: float) -> None:
        self._wait = wait  # seconds a watch waits for a try at most
        self.made = 0  # tries, each: the first, and every one after a loss
        self._next: Outcome | None = None  # of the next try, for the watches waiting
        self._under_way: Outcome | None = None  # of the try being made
        self._hurry = asyncio.Event()  # a watch waits: make the next try now

    async def next_one(self) -> None:
        """Has the next try made now and waits for it, no longer than ``wait``
        (the try's connect and handshake have their own timeouts): StorageError
        unless it connected. A hello waits no longer than its own deadline (the
        server gives up on its attach then)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        outcome = self._next
        self._hurry.set()
        # Not cancelled with this waiter: the others wait for the same outcome.
        await asyncio.wait([outcome], timeout=self._wait)
        failure = outcome.result() if outcome.done() else "the pub/sub connection is down"
        if failure is not None:
            raise StorageError(f"redis unavailable: {failure}")

    async def back_off(self, delay: float, first: float) -> None:
        """Waits ``delay`` before the next try, or only ``first`` (the backoff's first
        step) once a watch asks for a try: a stream of hellos tries a Redis that is
        away no more often than the backoff's fastest."""
        await asyncio.sleep(first)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, delay - first)):
                await self._hurry.wait()

    def begin(self) -> None:
        """A try begins: it is the one the watches so far wait for."""
        self._under_way, self._next = self._next, None
        self._hurry.clear()
        self.made += 1

    def failed(self, exc: BaseException) -> None:
        """The try under way failed with ``exc`` (cancelled: the store closes): so do
        its watches."""
        under_way, self._under_way = self._under_way, None
        _tell(under_way, f"pub/sub: {described(exc)}" if isinstance(exc, Exception) else CLOSING)

    def connected(self) -> None:
        """The try under way connected: so do its watches, and the ones that came
        while it was under way."""
        under_way, self._under_way = self._under_way, None
        late, self._next = self._next, None
        self._hurry.clear()
        _tell(under_way, None)
        _tell(late, None)

    def close(self) -> None:
        """The store closes: every watch waiting for a try fails now, the one under
        way too (its try may yet connect, for nobody)."""
        under_way, self._under_way = self._under_way, None
        waiting, self._next = self._next, None
        _tell(under_way, CLOSING)
        _tell(waiting, CLOSING)


def _tell(outcome: Outcome | None, failure: str | None) -> None:
    if outcome is not None and not outcome.done():
        outcome.set_result(failure)
