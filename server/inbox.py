"""Inbox: a session actor's command queue, bounded in commands and in bytes, and charged
to the process's memory budget.

A peer's reader whose session is busy waits for room, in arrival order, which pushes
back on that peer's socket; the actor's own timers and the manager never wait. The
items of a ``batch`` frame are taken together (server/commands.py ``BatchReply``).
"""

from __future__ import annotations

import asyncio
import collections

from .budget import NO_LIMIT, MemoryBudget
from .commands import Append, Command


class Inbox:
    """The actor's command queue, bounded in commands and in bytes (and charged to the
    process's memory budget). Peers' frames wait for room (back-pressure on their
    socket); the actor's own timers and the manager never do. An empty inbox always
    has room, so that one large request is never stuck."""

    __slots__ = ("_items", "_room_changed", "_waiters", "budget", "bytes", "limit", "max_bytes")

    def __init__(self, limit: int, max_bytes: int = 0, budget: MemoryBudget | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes if max_bytes > 0 else NO_LIMIT
        self.budget = budget if budget is not None else MemoryBudget(0)
        self.bytes = 0
        # A deque keeps a 760-byte block even when empty: a parked session drops it.
        self._items: collections.deque[Command] | None = None
        # Peers waiting for room, in arrival order, and what wakes them to look again.
        self._waiters: collections.deque[object] | None = None
        self._room_changed: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def has_room(self, count: int = 1) -> bool:
        """Whether ``count`` more commands (a batch's items) may be queued."""
        items = self._items
        if not items and not self.bytes:
            return True  # one command (or batch) always fits, whatever its size
        budget = self.budget
        return (
            len(items or ()) + count <= self.limit
            and self.bytes < self.max_bytes
            and budget.used <= budget.limit
        )

    def append(self, command: Command) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(command)
        if type(command) is Append:
            self.bytes += command.size
            self.budget.used += command.size

    def extend(self, appends: list[Append]) -> None:
        """Queue a batch's items together (counted as :meth:`append` counts each)."""
        if self._items is None:
            self._items = collections.deque()
        self._items.extend(appends)
        size = 0
        for append in appends:
            size += append.size
        self.bytes += size
        self.budget.used += size

    def _released(self, commands: list[Command]) -> None:
        size = 0
        for command in commands:
            if type(command) is Append:
                size += command.size
        self.bytes -= size
        self.budget.used -= size

    def release(self) -> None:
        """Drops the empty queue's storage (a parked session keeps none)."""
        if not self._items:
            self._items = None

    def may_post(self, count: int = 1) -> bool:
        """Whether ``count`` more commands may be queued now: there is room, and no
        peer waits for it (one that does would be overtaken)."""
        return not self._waiters and self.has_room(count)

    async def wait_for_room(self, count: int = 1) -> None:
        """Return once ``count`` commands may be queued, in arrival order: a peer never
        overtakes one that waits before it (so single appends do not starve a batch
        that waits for room for all its items). The caller queues them right away,
        before the next in line looks."""
        if self.may_post(count):
            return
        if self._waiters is None:
            self._waiters = collections.deque()
        me = object()
        self._waiters.append(me)
        try:
            while not (self._waiters[0] is me and self.has_room(count)):
                if self._room_changed is None or self._room_changed.done():
                    self._room_changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._room_changed)
        finally:
            self._waiters.remove(me)
            self._notify()  # the next in line looks, once this one's caller queued

    def _notify(self) -> None:
        room_changed = self._room_changed
        if room_changed is not None and not room_changed.done():
            room_changed.set_result(None)

    def take_all(self) -> list[Command]:
        items = list(self._items or ())
        self._items = None
        self._released(items)
        if self._waiters:
            self._notify()
        return items

    def take_batch(self, max_items: int) -> list[Command]:
        """The next commands, at most ``max_items``, but never part of a batch frame's
        items: those go to the store together. Their bytes stay counted (peers wait for
        room) until :meth:`finished` says the batch was handled: a batch being written
        is in memory as much as one waiting."""
        items = self._items
        if items is None:
            return []
        if len(items) <= max_items:  # all of them: no batch frame is split
            taken = list(items)
            items.clear()
            return taken
        taken = [items.popleft() for _ in range(max_items)]
        last = taken[-1] if taken else None
        if type(last) is Append and last.batch is not None:
            reply = last.batch
            while items and type(head := items[0]) is Append and head.batch is reply:
                taken.append(items.popleft())
        return taken

    def hold(self, append: Append) -> None:
        """An append handled at once, never queued (SessionActor.append_now): its bytes
        count as a taken batch's do, until :meth:`let_go`."""
        self.bytes += append.size
        self.budget.used += append.size

    def let_go(self, append: Append) -> None:
        """The append :meth:`hold` counted was handled: its bytes are free again."""
        self.bytes -= append.size
        self.budget.used -= append.size
        if self._waiters:
            self._notify()

    def finished(self, batch: list[Command]) -> None:
        """A batch from :meth:`take_batch` was handled: its bytes are free again."""
        size = 0
        for command in batch:  # _released's, inline: once per batch an actor handles
            if type(command) is Append:
                size += command.size
        self.bytes -= size
        self.budget.used -= size
        if self._waiters:
            self._notify()
