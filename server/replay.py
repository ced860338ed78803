"""Replay: the events a resuming connection missed, a page at a time, from the session
room's ring while it still holds them, else from the store.

A page read from the store is bounded in events and in bytes (a session of large events
never loads more than a page at once), and takes one of the server's page-read slots
while it is read, as ``history`` and ``events`` requests do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from bamboo_session.persistence.base import EventStorage

from .outbox import Outbound
from .room import REPLAY_PAGE, SessionRoom

REPLAY_PAGE_BYTES: Final = 1024 * 1024


class ReplayReads:
    """One session's replay pages."""

    __slots__ = ("room", "session_id", "storage")

    def __init__(self, room: SessionRoom, storage: EventStorage, session_id: str) -> None:
        self.room = room
        self.storage = storage
        self.session_id = session_id

    async def page(
        self, after: int, through: int, slots: asyncio.Semaphore | None = None
    ) -> list[Outbound]:
        """Events in ``(after, through]``, oldest first, a page at most; [] when there
        are none. Raises what the store's ``read_events`` raises."""
        if after >= through:
            return []
        page = self.room.ring_page(after, through)
        if page is not None:
            return page
        if slots is None:
            return await self._read(after, through)
        async with slots:
            return await self._read(after, through)

    async def pages(self, after: int, through: int) -> AsyncIterator[list[Outbound]]:
        """Every page of ``(after, through]`` in turn (the in-process Receiver's replay)."""
        position = after
        while position < through:
            page = await self.page(position, through)
            if not page:
                return
            position = page[-1].seq
            yield page

    async def _read(self, after: int, through: int) -> list[Outbound]:
        stored = await self.storage.read_events(
            self.session_id,
            after_seq=after,
            limit=min(REPLAY_PAGE, through - after),
            max_bytes=REPLAY_PAGE_BYTES,
        )
        return [Outbound.for_event(event) for event in stored if event.seq <= through]
