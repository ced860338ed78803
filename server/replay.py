"""Replay: the events a resuming connection missed, in pages, from the session room's
ring while it still holds them, else from the store (a page bounded in events and in
bytes, so a session of large events never loads more than a page at once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from bamboo_session.persistence.base import EventStorage

from .outbox import Outbound
from .room import REPLAY_PAGE, SessionRoom

REPLAY_PAGE_BYTES: Final = 1024 * 1024


async def replay_pages(
    room: SessionRoom, storage: EventStorage, session_id: str, after: int, through: int
) -> AsyncIterator[list[Outbound]]:
    """Events in ``(after, through]``, oldest first, a page at a time."""
    position = after
    while position < through:
        page = room.ring_page(position, through)
        if page is None:
            stored = await storage.read_events(
                session_id,
                after_seq=position,
                limit=min(REPLAY_PAGE, through - position),
                max_bytes=REPLAY_PAGE_BYTES,
            )
            page = [Outbound.for_event(event) for event in stored if event.seq <= through]
        if not page:
            return
        yield page
        position = page[-1].seq
