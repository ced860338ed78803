"""EventFeed: the events a client received and its application has not read yet,
bounded in count and in bytes.

:meth:`BambooClient.events` takes from it; :class:`.ClientState` puts into it. It never
refuses an item: whoever puts asks :attr:`EventFeed.full` first and, when it is full,
does not read more from the socket (:mod:`.link`), so the bound holds without anything
being dropped. An event counts its frame's encoded size, as it came off the wire (the
Python objects it becomes take a few times that). One event always fits in an empty
feed, so ``max_bytes`` may be passed by the last event put, at most.

The feed is *full* at ``max_events`` events or ``max_bytes`` bytes, and *drained* once
the application has read it down to half of both: the link stops reading when it is
full and starts again when it is drained, so that a slow reader takes events in
batches rather than one frame at a time.

What happens when an application stops taking events (:meth:`BambooClient.events`)
with the feed at ``max_queued_events`` or ``max_queued_bytes`` (``connect``'s
options); it loses none:

- While the queue is full the client does not read its socket. TCP holds the
  server back; the server closes the connection once its own queue for it is
  full (4429, too slow to read), or when its pings go unanswered (1011). The
  client sees that close when it reads again, and resumes from the last event
  it queued: the server replays exactly those that followed.
- Replies come on the same socket as events, so a request made while the queue
  is full (``publish``, ``history``, ``ping``...) would wait for ever behind
  them if the client read nothing. So while any request waits for its reply,
  the client reads on; an event that finds the queue full is then *skipped*
  (not queued, not counted as seen, ``skipped_events``), and so is every later
  event of that connection. Once the application has taken the queue down to
  half, the client sends nothing more on that connection, closes it (1000)
  once the requests sent on it are answered, and resumes from the last event
  it queued, which brings back every skipped event in order. A request
  is thus never held up by unread events, and memory stays bounded whatever
  the application does.
- Should the session be closed before such a resume (it is refused, 4409),
  the events still due are readable only over HTTP: the client hands over
  what it queued, then ends with :class:`ConnectionLost`, which names the seq
  to read after, rather than end as if it had them all.
- Without ``reconnect``, such a resume cannot happen: the client ends with
  :class:`ConnectionLost` once the queued events are taken.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Final

END: Final = object()  # what get() returns once the feed has ended and is empty

MAX_QUEUED_EVENTS: Final = 10_000
MAX_QUEUED_BYTES: Final = 16 * 1024 * 1024


class EventFeed:
    """Items (events and :class:`.Reset` markers) in order, with their sizes."""

    def __init__(
        self, max_events: int = MAX_QUEUED_EVENTS, max_bytes: int = MAX_QUEUED_BYTES
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_queued_events and max_queued_bytes must be at least 1")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._items: deque[tuple[Any, int]] = deque()
        self.bytes = 0  # the sizes of the items held
        self.ended = False
        self._getters: list[asyncio.Future[None]] = []  # events() waiting for an item
        # Called when a get() leaves the feed drained: the link starts reading again.
        self.on_drained: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_events or self.bytes >= self.max_bytes

    @property
    def drained(self) -> bool:
        return len(self._items) <= self.max_events // 2 and self.bytes <= self.max_bytes // 2

    def put(self, item: Any, size: int) -> None:
        """Queue ``item`` of ``size`` bytes, whether or not the feed is full (the caller
        checks :attr:`full` before reading it)."""
        self._items.append((item, size))
        self.bytes += size
        self._wake()

    def end(self) -> None:
        """No more items: get() returns :data:`END` once the rest is read."""
        self.ended = True
        self._wake()

    async def get(self) -> Any:
        """The oldest item, waiting for one; :data:`END` once ended and empty."""
        while not self._items:
            if self.ended:
                return END
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            finally:
                self._getters.remove(getter)
        return self.get_nowait()

    def get_nowait(self) -> Any:
        """The oldest item; :data:`END` once ended and empty; IndexError when empty."""
        if not self._items and self.ended:
            return END
        item, size = self._items.popleft()
        self.bytes -= size
        if self.drained:
            self.on_drained()
        return item

    def _wake(self) -> None:
        for getter in self._getters:
            if not getter.done():
                getter.set_result(None)
